//! WelcomeRequest: listening on TCP and UDS, duplicates, and closing a listener.

mod common;
use common::*;
use tofu::{Address, Message, OpCode, Status};

#[test]
fn listen_tcp_all_interfaces_and_duplicate_port() {
    on_every_backend(|b| {
        let e1 = engine(b);
        let e2 = engine(b);
        let port = free_tcp_port().unwrap();
        let g1 = e1.create_group().unwrap();
        let g2 = e2.create_group().unwrap();
        let mut m = Message::new();
        m.append_header("~listen_on", &format!("tcp||{port}"))
            .unwrap();
        m.header.opcode = OpCode::WelcomeRequest;
        let h = g1.post(m).unwrap();
        let r = recv(&g1);
        expect(&r, OpCode::WelcomeResponse, Status::Success);
        assert_eq!((r.channel(), r.message_id()), (h.channel, h.message_id));
        // The same port again from a second engine is refused (Zig tofu set SO_REUSEPORT
        // and both listeners shared the connections): ListenFailed, with the OS's words.
        let err = g2.listen(&Address::tcp("0.0.0.0", port)).unwrap_err();
        assert_eq!(err.status(), Status::ListenFailed, "{err}");
        // The first listener still works.
        let client = e2.create_group().unwrap();
        let (c, _) = connect(&client, &g1, &Address::tcp("127.0.0.1", port));
        assert_ne!(c, 0);
    });
}

// Unix only: a second listener takes over a path only where a stale socket file can be told
// from other files; on Windows the second bind fails instead (see `Listener::bind`).
#[cfg(unix)]
#[test]
fn listen_uds_and_duplicate_path() {
    on_every_backend(|b| {
        let e1 = engine(b);
        let e2 = engine(b);
        let addr = uds_temp();
        let Address::Uds { path } = &addr else {
            unreachable!()
        };
        let g1 = e1.create_group().unwrap();
        let g2 = e2.create_group().unwrap();
        let l1 = listen(&g1, &addr);
        assert!(std::path::Path::new(path).exists());
        // A live listener's path is refused (Zig tofu unlinked it and took it over).
        let err = g2.listen(&addr).unwrap_err();
        assert_eq!(err.status(), Status::ListenFailed, "{err}");
        // Closing the listener removes its socket file; then the path is free again.
        g1.post(data(OpCode::ByeSignal, l1, 0, b"")).unwrap();
        let m = recv(&g1);
        // The refused listen's probe connection may have reached g1's listener first.
        let m = if m.opcode() == OpCode::Signal && m.channel() != l1 {
            recv(&g1)
        } else {
            m
        };
        expect(&m, OpCode::ByeSignal, Status::ChannelClosed);
        expect_closed_signal(&recv(&g1), l1);
        assert!(
            !std::path::Path::new(path).exists(),
            "UDS path removed after close"
        );
        listen(&g2, &addr);
    });
}

#[cfg(target_os = "linux")]
#[test]
fn listen_on_abstract_uds_name() {
    on_every_backend(|b| {
        let e = engine(b);
        let server = e.create_group().unwrap();
        let client = e.create_group().unwrap();
        let addr = Address::uds(format!("@tofu-test-{}-{b}", std::process::id()));
        listen(&server, &addr);
        connect(&client, &server, &addr);
    });
}

#[test]
fn empty_uds_path_gets_a_temporary_one() {
    if !uds_available() {
        return;
    }
    on_every_backend(|b| {
        let e = engine(b);
        let g = e.create_group().unwrap();
        let mut m = Message::new();
        Address::uds("").format_listen(&mut m).unwrap();
        g.post(m).unwrap();
        expect(&recv(&g), OpCode::WelcomeResponse, Status::Success);
    });
}

#[test]
fn bye_signal_closes_a_listener_but_not_its_connections() {
    on_every_backend(|b| {
        let e = engine(b);
        let server = e.create_group().unwrap();
        let client = e.create_group().unwrap();
        let addr = tcp_loopback();
        let l = listen(&server, &addr);
        let (c, s) = connect(&client, &server, &addr);
        server.post(data(OpCode::ByeSignal, l, 0, b"")).unwrap();
        expect(&recv(&server), OpCode::ByeSignal, Status::ChannelClosed);
        expect_closed_signal(&recv(&server), l);
        // The accepted connection still works.
        client
            .post(data(OpCode::Request, c, 5, b"still here"))
            .unwrap();
        let m = recv(&server);
        expect(&m, OpCode::Request, Status::Success);
        assert_eq!((m.channel(), m.body()), (s, &b"still here"[..]));
        // And new connections are refused.
        let (c2, _) = hello(&client, &addr);
        let r = recv(&client);
        assert_eq!((r.channel(), r.status()), (c2, Status::ConnectFailed));
    });
}
