//! 1000 connect/disconnect cycles leave no descriptor, channel or held message behind.
//! Alone in its own test binary: it counts the process's open descriptors (through
//! `/proc/self/fd`, so on Linux only).
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::time::Duration;
use tofu::{Address, OpCode, Status};

fn raw_client(addr: &Address) -> std::net::TcpStream {
    let Address::Tcp { host, port } = addr else {
        unreachable!()
    };
    std::net::TcpStream::connect((host.as_str(), *port)).unwrap()
}

/// 1000 connects that end with a reset or a plain close: no descriptor or memory left behind.
#[test]
fn connect_disconnect_cycles_leave_nothing_behind() {
    fn fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }
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
        let before = fds();
        for i in 0..1000 {
            let s = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();
            if i % 2 == 0 {
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap(); // RST
            }
            drop(s);
        }
        let mut closed = 0;
        while closed < 1000 {
            let m = recv(&g);
            if m.opcode() == OpCode::Signal && m.status() == Status::ChannelClosed {
                closed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(fds(), before, "every accepted socket was closed");
        assert_eq!(e.pool().queued(), 0);
    });
}
