//! HelloRequest/HelloResponse over TCP and UDS, and reconnect loops.

mod common;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use tofu::{Address, Message, OpCode, Origin, PoolOptions, Status};

#[test]
fn connect_and_accept_in_one_group() {
    on_every_backend(|b| {
        for addr in transports() {
            let e = engine(b);
            let g = e.create_group().unwrap();
            let l = listen(&g, &addr);
            let (c, id) = hello(&g, &addr);
            let mut req = recv(&g);
            expect(&req, OpCode::HelloRequest, Status::Success);
            assert_eq!(req.origin(), Origin::Application);
            assert_eq!(req.message_id(), id, "message_id travels end to end");
            let s = req.channel();
            assert!(
                s != l && s != c,
                "server channel {s} differs from listener {l} and client {c}"
            );
            assert_eq!(
                req.header_value("~connect_to"),
                Some(addr.to_string().as_str())
            );
            req.make_echo().unwrap();
            g.post(req).unwrap();
            let resp = recv(&g);
            expect(&resp, OpCode::HelloResponse, Status::Success);
            assert_eq!((resp.channel(), resp.message_id()), (c, id));
            assert_eq!(
                resp.header_value("~connect_to"),
                Some(addr.to_string().as_str())
            );

            // ByeSignal on the listener, then on the client channel.
            g.post(data(OpCode::ByeSignal, l, 0, b"")).unwrap();
            assert_eq!(recv(&g).status(), Status::ChannelClosed);
            expect_closed_signal(&recv(&g), l);
            g.post(data(OpCode::ByeSignal, c, 0, b"")).unwrap();
            let echo = recv(&g);
            expect(&echo, OpCode::ByeSignal, Status::ChannelClosed);
            assert_eq!(echo.origin(), Origin::Engine);
            // The client's own final Signal and the server side's (peer reset) arrive.
            let mut finals = [recv(&g), recv(&g)];
            finals.sort_by_key(|m| m.channel() != c);
            expect_closed_signal(&finals[0], c);
            expect_closed_signal(&finals[1], s);
        }
    });
}

#[test]
fn data_flows_both_ways_in_order() {
    on_every_backend(|b| {
        for addr in transports() {
            let server_engine = engine(b);
            let client_engine = engine(b);
            let server = server_engine.create_group().unwrap();
            let client = client_engine.create_group().unwrap();
            listen(&server, &addr);
            let (c, s) = connect(&client, &server, &addr);
            for i in 1..=300u64 {
                let op = [OpCode::Request, OpCode::Signal][i as usize % 2];
                let mut m = data(op, c, i, &i.to_be_bytes().repeat((i % 50) as usize));
                m.append_header("seq", &i.to_string()).unwrap();
                m.header.more = i % 3 == 0;
                client.post(m).unwrap();
            }
            for i in 1..=300u64 {
                let m = recv(&server);
                assert_eq!(m.channel(), s);
                assert_eq!(m.message_id(), i, "post order kept");
                assert_eq!(m.header_value("seq"), Some(i.to_string().as_str()));
                assert_eq!(
                    m.body(),
                    i.to_be_bytes().repeat((i % 50) as usize).as_slice()
                );
                assert_eq!(m.header.more, i % 3 == 0);
                if m.opcode() == OpCode::Request {
                    let mut m = m;
                    m.make_echo().unwrap();
                    server.post(m).unwrap();
                }
            }
            for i in (2..=300u64).step_by(2) {
                let m = recv(&client);
                expect(&m, OpCode::Response, Status::Success);
                assert_eq!((m.channel(), m.message_id()), (c, i));
            }
        }
    });
}

#[test]
fn message_ids_are_assigned_when_zero() {
    on_every_backend(|b| {
        let e = engine(b);
        let server = e.create_group().unwrap();
        let client = e.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&server, &addr);
        let (c, _) = connect(&client, &server, &addr);
        let h1 = client.post(data(OpCode::Signal, c, 0, b"")).unwrap();
        let h2 = client.post(data(OpCode::Signal, c, 0, b"")).unwrap();
        assert!(h1.message_id != 0 && h2.message_id > h1.message_id);
        assert_eq!(recv(&server).message_id(), h1.message_id);
        assert_eq!(recv(&server).message_id(), h2.message_id);
    });
}

/// tofu's single-threaded reconnect recipe: Hello until a server appears.
#[test]
fn reconnect_single_threaded() {
    on_every_backend(|b| {
        for addr in transports() {
            let pool = PoolOptions {
                initial: 16,
                max: 32,
            };
            let client_engine = engine_with_pool(b, pool);
            let server_engine = engine_with_pool(b, pool);
            let client = client_engine.create_group().unwrap();
            let server = server_engine.create_group().unwrap();
            let mut failures = 0;
            let mut current = hello(&client, &addr).0;
            let mut connected = false;
            for attempt in 0..1000 {
                if attempt == 10 {
                    listen(&server, &addr);
                }
                // Answer any Hello that reached the server.
                while let Some(mut m) = server.wait_receive(Some(Duration::ZERO)).unwrap() {
                    if m.opcode() == OpCode::HelloRequest {
                        m.make_echo().unwrap();
                        server.post(m).unwrap();
                    }
                }
                let Some(m) = client
                    .wait_receive(Some(Duration::from_millis(20)))
                    .unwrap()
                else {
                    continue;
                };
                match (m.opcode(), m.status()) {
                    (OpCode::HelloResponse, Status::Success) => {
                        assert_eq!(m.channel(), current);
                        connected = true;
                        break;
                    }
                    (OpCode::Signal, Status::ChannelClosed) if m.channel() == current => {
                        std::thread::sleep(Duration::from_millis(1));
                        current = hello(&client, &addr).0;
                    }
                    (_, Status::ConnectFailed | Status::UdsPathNotFound) => failures += 1,
                    (_, Status::ChannelClosed) => {} // an older channel
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(connected, "connected once the server listened");
            assert!(failures >= 1, "attempts before the listener existed failed");

            // ByeRequest: the client must get ByeResponse on its channel before anything else.
            client
                .post(data(OpCode::ByeRequest, current, 0, b""))
                .unwrap();
            let mut m = recv(&server);
            expect(&m, OpCode::ByeRequest, Status::Success);
            m.make_echo().unwrap();
            server.post(m).unwrap();
            let r = recv(&client);
            expect(&r, OpCode::ByeResponse, Status::Success);
            assert_eq!(r.channel(), current);
            expect_closed_signal(&recv(&client), current);
        }
    });
}

/// tofu's multithreaded reconnect recipe: one engine, a client and a server thread.
#[test]
fn reconnect_multi_threaded() {
    on_every_backend(|b| {
        for addr in transports() {
            let e = engine_with_pool(
                b,
                PoolOptions {
                    initial: 1024,
                    max: 1024,
                },
            );
            let server = Arc::new(e.create_group().unwrap());
            let client = Arc::new(e.create_group().unwrap());
            let server_thread = {
                let server = Arc::clone(&server);
                let addr = addr.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(200));
                    listen(&server, &addr);
                    let mut echoed = 0;
                    loop {
                        let mut m = server.wait_receive(None).unwrap().unwrap();
                        if m.status() == Status::ReceiverUpdate {
                            return echoed;
                        }
                        if m.opcode() == OpCode::HelloRequest {
                            m.make_echo().unwrap();
                            server.post(m).unwrap();
                            echoed += 1;
                        }
                    }
                })
            };
            let client_thread = {
                let client = Arc::clone(&client);
                std::thread::spawn(move || {
                    let mut current = hello(&client, &addr).0;
                    loop {
                        let m = client
                            .wait_receive(Some(PATIENCE))
                            .unwrap()
                            .expect("progress");
                        match (m.opcode(), m.status()) {
                            (OpCode::HelloResponse, Status::Success) => {
                                client
                                    .post(data(OpCode::ByeSignal, current, 0, b""))
                                    .unwrap();
                                return true;
                            }
                            (OpCode::Signal, Status::ChannelClosed) if m.channel() == current => {
                                std::thread::sleep(Duration::from_millis(5));
                                current = hello(&client, &addr).0;
                            }
                            _ => {}
                        }
                    }
                })
            };
            assert!(client_thread.join().unwrap());
            server.update_receiver(None).unwrap();
            assert_eq!(server_thread.join().unwrap(), 1);
        }
    });
}

#[test]
fn hello_carries_application_headers() {
    on_every_backend(|b| {
        let e = engine(b);
        let server = e.create_group().unwrap();
        let client = e.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&server, &addr);
        let mut m = Message::new();
        m.append_header("x-app", "hello-world").unwrap();
        addr.format_connect(&mut m).unwrap();
        m.set_body(b"greeting");
        client.post(m).unwrap();
        let r = recv(&server);
        assert_eq!(r.header_value("x-app"), Some("hello-world"));
        assert_eq!(r.body(), b"greeting");
        assert_eq!(Address::from_message(&r).unwrap(), addr);
    });
}

/// Without the `tls` feature a `tls|` address is refused at post, saying what to enable.
#[cfg(not(feature = "tls"))]
#[test]
fn a_tls_address_without_the_feature_is_refused_with_what_to_enable() {
    let engine = tofu::Engine::with_defaults().unwrap();
    let g = engine.create_group().unwrap();
    let e = g.connect(&tofu::Address::tls("localhost", 1)).unwrap_err();
    assert!(e.to_string().contains("`tls` feature"), "{e}");
    let e = g.listen(&tofu::Address::tls("127.0.0.1", 0)).unwrap_err();
    assert!(e.to_string().contains("`tls` feature"), "{e}");
}
