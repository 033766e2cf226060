//! Out of file descriptors: the listener backs off instead of spinning, and accepts again once
//! descriptors are free. Alone in its own test binary because it lowers the process's limit.

#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::io::Write;
use std::time::Duration;
use tofu::wire::encode;
use tofu::{Address, Message, OpCode, Status};

fn set_nofile(soft: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim.rlim_cur;
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    }
}

#[test]
fn accept_backs_off_and_resumes() {
    on_every_backend(|b| {
        let (e, g, addr) = tcp_listening(b);
        let Address::Tcp { port, .. } = &addr else {
            unreachable!()
        };
        let mut peer = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();

        let nowhere = tcp_loopback(); // chosen while a descriptor is still free
                                      // Use up every descriptor under a low limit.
        let old = set_nofile(256);
        let mut filler = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            filler.push(f);
        }
        assert!(
            std::fs::File::open("/dev/null").is_err(),
            "descriptors exhausted"
        );

        let before = e.stats().iterations;
        std::thread::sleep(Duration::from_secs(1));
        let spins = e.stats().iterations - before;
        assert!(spins < 100, "the reactor spun {spins} times in a second");

        // A connect that cannot get a socket fails clearly and the channel still ends.
        let (c, _) = hello(&g, &nowhere);
        let r = recv(&g);
        assert_eq!(
            (r.channel(), r.status()),
            (c, Status::ConnectFailed),
            "{r:?}"
        );
        expect_closed_signal(&recv(&g), c);

        drop(filler);
        set_nofile(old);
        let mut hello = Message::with_opcode(OpCode::HelloRequest);
        hello.header.channel = 1;
        hello.header.message_id = 11;
        hello
            .append_header("~connect_to", &addr.to_string())
            .unwrap();
        let mut bytes = Vec::new();
        encode(&hello, &mut bytes).unwrap();
        peer.write_all(&bytes).unwrap();
        let m = recv(&g);
        expect(&m, OpCode::HelloRequest, Status::Success);
        assert_eq!(m.message_id(), 11);
    });
}
