//! Closing: ByeRequest/ByeResponse in both directions, crossing ByeRequests, ByeSignal.

mod common;
use common::*;
use tofu::message::ERROR_TEXT;
use tofu::{ChannelGroup, Message, OpCode, Origin, Status};

/// `initiator` closes channel `a` gracefully; `responder` owns `b`. Checks the whole sequence.
fn graceful_close(initiator: &ChannelGroup, a: u16, responder: &ChannelGroup, b: u16) {
    for i in 1..=5u64 {
        initiator
            .post(data(OpCode::Signal, a, i, b"before bye"))
            .unwrap();
    }
    let bye = initiator.post(data(OpCode::ByeRequest, a, 0, b"")).unwrap();
    // Posted after the ByeRequest: never sent, handed back at close.
    initiator
        .post(data(OpCode::Signal, a, 99, b"after bye"))
        .unwrap();

    for i in 1..=5u64 {
        let m = recv(responder);
        expect(&m, OpCode::Signal, Status::Success);
        assert_eq!(
            m.message_id(),
            i,
            "data before the ByeRequest arrives first"
        );
    }
    let mut m = recv(responder);
    expect(&m, OpCode::ByeRequest, Status::Success);
    assert_eq!((m.channel(), m.message_id()), (b, bye.message_id));
    // The responder may still send before answering.
    responder
        .post(data(OpCode::Signal, b, 7, b"last words"))
        .unwrap();
    m.make_echo().unwrap();
    responder.post(m).unwrap();

    let last = recv(initiator);
    expect(&last, OpCode::Signal, Status::Success);
    assert_eq!(last.body(), b"last words");
    let resp = recv(initiator);
    expect(&resp, OpCode::ByeResponse, Status::Success);
    assert_eq!((resp.channel(), resp.message_id()), (a, bye.message_id));
    assert_eq!(resp.origin(), Origin::Application);
    // The Signal posted after the ByeRequest is handed back, normally before the channel's
    // final Signal. If the test thread was descheduled between the two posts long enough for
    // the whole bye exchange to finish, it reached the reactor after the close and comes
    // back just after the final Signal (the documented exception); either way it is never
    // sent and never lost.
    let (first, second) = (recv(initiator), recv(initiator));
    let (unsent, last) = if first.message_id() == 99 {
        (first, second)
    } else {
        (second, first)
    };
    expect(&unsent, OpCode::Signal, Status::ChannelClosed);
    assert_eq!((unsent.message_id(), unsent.origin()), (99, Origin::Engine));
    // It looks like the final Signal (Signal, origin engine, ChannelClosed) but is not.
    assert!(!unsent.is_channel_end(), "{unsent:?}");
    expect_closed_signal(&last, a);

    // The responder sees the initiator's reset: the end of the exchange, not a failure,
    // so its final Signal carries no reason (a reset at any other time does).
    let end = recv(responder);
    expect_closed_signal(&end, b);
    assert_eq!(end.header_value(ERROR_TEXT), None, "{end:?}");
    assert_eq!(last.header_value(ERROR_TEXT), None, "{last:?}");
}

#[test]
fn client_initiated_bye() {
    on_every_backend(|backend| {
        for addr in transports() {
            let se = engine(backend);
            let ce = engine(backend);
            let server = se.create_group().unwrap();
            let client = ce.create_group().unwrap();
            listen(&server, &addr);
            let (c, s) = connect(&client, &server, &addr);
            graceful_close(&client, c, &server, s);
        }
    });
}

#[test]
fn server_initiated_bye() {
    on_every_backend(|backend| {
        for addr in transports() {
            let se = engine(backend);
            let ce = engine(backend);
            let server = se.create_group().unwrap();
            let client = ce.create_group().unwrap();
            listen(&server, &addr);
            let (c, s) = connect(&client, &server, &addr);
            graceful_close(&server, s, &client, c);
        }
    });
}

#[test]
fn crossing_bye_requests_do_not_deadlock() {
    on_every_backend(|backend| {
        for addr in transports() {
            let se = engine(backend);
            let ce = engine(backend);
            let server = se.create_group().unwrap();
            let client = ce.create_group().unwrap();
            listen(&server, &addr);
            let (c, s) = connect(&client, &server, &addr);
            client.post(data(OpCode::ByeRequest, c, 0, b"")).unwrap();
            server.post(data(OpCode::ByeRequest, s, 0, b"")).unwrap();
            for g in [&client, &server] {
                let mut m = recv(g);
                expect(&m, OpCode::ByeRequest, Status::Success);
                m.make_echo().unwrap();
                if let Err(e) = g.post(m) {
                    // The peer's ByeResponse may already have closed this side's channel.
                    assert_eq!(e.error, tofu::Error::InvalidChannelNumber);
                }
            }
            // Each side ends with its channel closed (after a ByeResponse or the peer's reset).
            for (g, ch) in [(&client, c), (&server, s)] {
                loop {
                    let m = recv(g);
                    if m.opcode() == OpCode::Signal && m.status() == Status::ChannelClosed {
                        expect_closed_signal(&m, ch);
                        break;
                    }
                    assert!(
                        m.opcode() == OpCode::ByeResponse || m.origin() == Origin::Engine,
                        "{m:?}"
                    );
                }
            }
        }
    });
}

#[test]
fn transmitted_bye_signal_reaches_the_peer() {
    on_every_backend(|backend| {
        let e = engine(backend);
        let server = e.create_group().unwrap();
        let client = e.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&server, &addr);
        let (c, s) = connect(&client, &server, &addr);
        let mut m = Message::with_opcode(OpCode::ByeSignal);
        m.header.oob = false; // transmit instead of aborting locally
        m.header.channel = c;
        client.post(m).unwrap();
        let r = recv(&server);
        expect(&r, OpCode::ByeSignal, Status::Success);
        assert_eq!(r.channel(), s);
        // Then a local abort closes the client side; the server sees the reset.
        client.post(data(OpCode::ByeSignal, c, 0, b"")).unwrap();
        expect(&recv(&client), OpCode::ByeSignal, Status::ChannelClosed);
        expect_closed_signal(&recv(&client), c);
        expect_closed_signal(&recv(&server), s);
    });
}

#[test]
fn bye_signal_abort_returns_unsent_messages() {
    on_every_backend(|backend| {
        // A server that reads almost nothing (tiny pool, never drained), so the client's
        // queue cannot empty into the socket.
        let se = engine_with_pool(backend, tofu::PoolOptions { initial: 2, max: 2 });
        let server = se.create_group().unwrap();
        let e = engine(backend);
        let g = e.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&server, &addr);
        let (c, _) = hello(&g, &addr);
        // Queue far more than the socket can take, then abort at the head of the queue.
        let mut posted = 0;
        for i in 1..=1000u64 {
            g.post(data(OpCode::Signal, c, i, &[0u8; 60000])).unwrap();
            posted += 1;
        }
        g.post(data(OpCode::ByeSignal, c, 0, b"")).unwrap();
        let mut returned = 0;
        let mut saw_echo = false;
        loop {
            let m = recv(&g);
            if m.opcode() == OpCode::ByeSignal {
                assert_eq!(m.status(), Status::ChannelClosed);
                saw_echo = true;
            } else if m.opcode() == OpCode::Signal
                && m.channel() == c
                && m.message_id() != 0
                && m.status() == Status::ChannelClosed
                && m.body().len() == 60000
            {
                returned += 1;
            } else if m.opcode() == OpCode::Signal
                && m.channel() == c
                && m.status() == Status::ChannelClosed
            {
                break;
            }
        }
        assert!(saw_echo);
        assert!(
            returned > 0 && returned <= posted,
            "returned {returned} of {posted}"
        );
    });
}
