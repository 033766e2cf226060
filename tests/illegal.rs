//! Bad input from the application: every error is raised and asserted, and nothing is lost.

mod common;
use common::*;
use std::time::Duration;
use tofu::{Address, Error, Message, OpCode, Origin, Status};

#[test]
fn post_time_errors() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();

        // A fresh pool message is a Request on channel 0.
        let e = g.post(engine.pool().message()).unwrap_err();
        assert_eq!(e.error, Error::InvalidChannelNumber);
        assert_eq!(e.message.status(), Status::InvalidChannelNumber);

        let e = g
            .post(Message::with_opcode(OpCode::ByeRequest))
            .unwrap_err();
        assert_eq!(e.error, Error::InvalidChannelNumber);

        let e = g
            .post(Message::with_opcode(OpCode::HelloRequest))
            .unwrap_err();
        assert_eq!(e.error, Error::WrongAddress);
        let e = g
            .post(Message::with_opcode(OpCode::WelcomeRequest))
            .unwrap_err();
        assert_eq!(e.error, Error::WrongAddress);

        let mut m = Message::with_opcode(OpCode::WelcomeResponse);
        m.header.message_id = 1;
        let e = g.post(m).unwrap_err();
        assert_eq!(e.error, Error::InvalidOpCode);
        assert!(
            e.to_string().contains("WelcomeResponse is the engine's"),
            "{e}"
        );

        // A channel number nobody allocated.
        let e = g.post(data(OpCode::Request, 4242, 0, b"x")).unwrap_err();
        assert_eq!(e.error, Error::InvalidChannelNumber);
        assert_eq!(e.message.body(), b"x", "the message comes back intact");

        // Nothing was sent anywhere: the queue stays empty.
        expect_silence(&g, Duration::from_millis(50));
    });
}

#[test]
fn another_groups_channel() {
    on_every_backend(|b| {
        let engine = engine(b);
        let owner = engine.create_group().unwrap();
        let other = engine.create_group().unwrap();
        let l = listen(&owner, &tcp_loopback());
        let e = other.post(data(OpCode::Signal, l, 0, b"")).unwrap_err();
        assert_eq!(e.error, Error::InvalidMessageChannelGroup);
    });
}

#[test]
fn unresolvable_host_is_invalid_address() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        let port = free_tcp_port().unwrap();
        let (c, id) = hello(&g, &Address::tcp("tofu.server.zig.invalid", port));
        let r = recv(&g);
        expect(&r, OpCode::HelloResponse, Status::InvalidAddress);
        assert_eq!(r.origin(), Origin::Engine);
        assert_eq!((r.channel(), r.message_id()), (c, id));
        let s = recv(&g);
        expect_closed_signal(&s, c);
        assert_eq!(s.message_id(), id);
    });
}

#[test]
fn malformed_address_value_is_invalid_address() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        for value in [
            "tcp|127.0.0.1|1|2",
            "udp|127.0.0.1|5",
            "tcp|127.0.0.1|99999",
            "nonsense",
        ] {
            let mut m = Message::with_opcode(OpCode::HelloRequest);
            m.append_header("~connect_to", value).unwrap();
            let h = g.post(m).unwrap();
            let r = recv(&g);
            expect(&r, OpCode::HelloResponse, Status::InvalidAddress);
            expect_closed_signal(&recv(&g), h.channel);
        }
    });
}

#[test]
fn hello_to_nothing_listening_is_connect_failed() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        let (c, id) = hello(&g, &tcp_loopback());
        let r = recv(&g);
        assert_eq!(r.status(), Status::ConnectFailed, "{r:?}");
        assert!(matches!(
            r.opcode(),
            OpCode::HelloRequest | OpCode::HelloResponse
        ));
        assert_eq!(
            (r.channel(), r.message_id(), r.origin()),
            (c, id, Origin::Engine)
        );
        expect_closed_signal(&recv(&g), c);
    });
}

#[test]
fn hello_to_missing_uds_path() {
    if !uds_available() {
        return;
    }
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        let (c, _) = hello(&g, &uds_temp());
        let r = recv(&g);
        expect(&r, OpCode::HelloResponse, Status::UdsPathNotFound);
        expect_closed_signal(&recv(&g), c);
    });
}

#[test]
fn welcome_on_foreign_address_fails() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        let mut m = Message::new();
        Address::tcp("192.0.2.1", 3298)
            .format_listen(&mut m)
            .unwrap();
        let h = g.post(m).unwrap();
        let r = recv(&g);
        assert_eq!(r.opcode(), OpCode::WelcomeResponse);
        assert!(
            matches!(r.status(), Status::InvalidAddress | Status::ListenFailed),
            "{r:?}"
        );
        assert_eq!(r.origin(), Origin::Engine);
        let s = recv(&g);
        expect_closed_signal(&s, h.channel);
        assert_eq!(s.message_id(), h.message_id);
    });
}

#[test]
fn data_posted_to_a_listener_comes_back_and_listener_survives() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        let addr = tcp_loopback();
        let l = listen(&g, &addr);
        g.post(data(OpCode::Request, l, 77, b"oops")).unwrap();
        let r = recv(&g);
        expect(&r, OpCode::Request, Status::ChannelClosed);
        assert_eq!(
            (r.channel(), r.message_id(), r.origin()),
            (l, 77, Origin::Engine)
        );
        let why = r
            .header_value(tofu::message::ERROR_TEXT)
            .unwrap_or_default();
        assert!(
            why.contains("is a listener") && why.contains("ByeSignal"),
            "{why}"
        );
        // The listener still accepts.
        let client = engine.create_group().unwrap();
        connect(&client, &g, &addr);
    });
}

#[test]
fn post_to_a_closed_channel_is_an_error() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        let l = listen(&g, &tcp_loopback());
        g.post(data(OpCode::ByeSignal, l, 0, b"")).unwrap();
        expect(&recv(&g), OpCode::ByeSignal, Status::ChannelClosed);
        expect_closed_signal(&recv(&g), l);
        // Unlike Zig tofu the record is freed, so the post is refused instead of dropped.
        let e = g.post(data(OpCode::Signal, l, 0, b"")).unwrap_err();
        assert_eq!(e.error, Error::InvalidChannelNumber);
    });
}
