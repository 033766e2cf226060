//! 1000 connect/disconnect cycles (and, with the `tls` feature, 1000 TLS handshake/reset
//! cycles) leave no descriptor, channel, held message or heap behind. In their own test binary
//! and one at a time: they count the process's open descriptors (through `/proc/self/fd`, so
//! on Linux only) and its live heap bytes (the `tofu` command's counting allocator).
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::sync::Mutex;
use std::time::Duration;
use tofu::{Address, OpCode, Status};

#[path = "../src/cli/alloc.rs"]
#[allow(dead_code)]
mod alloc;

#[global_allocator]
static HEAP: alloc::Counting = alloc::Counting;

/// The tests count process-wide resources: one runs at a time.
static ALONE: Mutex<()> = Mutex::new(());

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Receives until `n` channels have closed (final Signals); other messages are dropped.
fn wait_closed(g: &tofu::ChannelGroup, n: usize) {
    let mut closed = 0;
    while closed < n {
        let m = recv(g);
        if m.opcode() == OpCode::Signal && m.status() == Status::ChannelClosed {
            closed += 1;
        }
    }
}

/// What the process holds before the cycles: descriptors and live heap bytes.
struct Held {
    fds: usize,
    heap: usize,
}

impl Held {
    fn now() -> Held {
        Held {
            fds: fds(),
            heap: alloc::live_bytes(),
        }
    }

    /// Once `cycles` channels have closed on `g`: every socket is closed, no message is held,
    /// and the heap is where it was (within [`HEAP_SLACK`]).
    fn expect_back(&self, e: &tofu::Engine, g: &tofu::ChannelGroup, cycles: usize) {
        wait_closed(g, cycles);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(fds(), self.fds, "every accepted socket was closed");
        assert_eq!(e.pool().queued(), 0);
        let heap = alloc::live_bytes();
        assert!(
            heap <= self.heap + HEAP_SLACK,
            "heap grew from {} to {heap} bytes",
            self.heap
        );
    }
}

/// Every other cycle, makes dropping `s` a reset (SO_LINGER 0) instead of a plain close.
fn reset_on_drop_every_other(i: usize, s: &std::net::TcpStream) {
    if i % 2 == 0 {
        socket2::SockRef::from(s)
            .set_linger(Some(Duration::ZERO))
            .unwrap(); // RST
    }
}

/// Heap bytes may wobble (the pool keeps what it made, queues keep their capacity); a leak
/// of one session or socket per cycle would be far beyond this.
const HEAP_SLACK: usize = 256 * 1024;

fn raw_client(addr: &Address) -> std::net::TcpStream {
    let Address::Tcp { host, port } = addr else {
        unreachable!()
    };
    std::net::TcpStream::connect((host.as_str(), *port)).unwrap()
}

/// 1000 connects that end with a reset or a plain close: no descriptor or memory left behind.
#[test]
fn connect_disconnect_cycles_leave_nothing_behind() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    on_every_backend(|b| {
        let (e, g, addr) = tcp_listening(b);
        let Address::Tcp { port, .. } = &addr else {
            unreachable!()
        };
        // Warm up once so lazily created state is not counted as growth.
        drop(raw_client(&addr));
        let m = recv(&g);
        assert_eq!(
            (m.opcode(), m.status()),
            (OpCode::Signal, Status::ChannelClosed)
        );
        let held = Held::now();
        for i in 0..1000 {
            let s = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();
            reset_on_drop_every_other(i, &s);
            drop(s);
        }
        held.expect_back(&e, &g, 1000);
    });
}

/// 1000 TLS handshakes, each followed by a close or a reset: every session and socket is
/// freed, the listener serves on.
#[cfg(feature = "tls")]
#[test]
fn tls_handshake_and_reset_cycles_leave_nothing_behind() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let pki = common::tls::Pki::new();
    on_every_backend(|b| {
        let e = pki.engine(b);
        let g = e.create_group().unwrap();
        let addr = tls_loopback();
        listen(&g, &addr);
        // Warm up once so lazily created state (rustls's, the pool's) is not counted.
        drop(pki.raw_client(&addr));
        wait_closed(&g, 1);
        let held = Held::now();
        for i in 0..1000 {
            let s = pki.raw_client(&addr);
            reset_on_drop_every_other(i, &s.sock); // after the handshake
            drop(s);
        }
        held.expect_back(&e, &g, 1000);
        // The listener still serves a tofu client.
        let ce = pki.engine(b);
        let c = ce.create_group().unwrap();
        connect(&c, &g, &addr);
    });
}
