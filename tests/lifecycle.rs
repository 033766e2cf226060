//! Creating and tearing down engines and groups, in every order, with traffic in flight.

mod common;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use tofu::{Allocation, Engine, Error, OpCode, Status};

#[test]
fn engine_and_group_create_destroy() {
    on_every_backend(|b| {
        let engine = engine(b);
        assert_eq!(engine.backend(), b);
        let g = engine.create_group().unwrap();
        let m = engine
            .get(Allocation::Always)
            .expect("always gives a message");
        engine.put(m);
        g.destroy();
        g.destroy(); // idempotent
        drop(g);
        drop(engine);
    });
}

#[test]
fn several_engines_in_one_process() {
    on_every_backend(|b| {
        let engines: Vec<Engine> = (0..4).map(|_| engine(b)).collect();
        let groups: Vec<_> = engines.iter().map(|e| e.create_group().unwrap()).collect();
        for g in &groups {
            listen(g, &tcp_loopback());
        }
    });
}

#[test]
fn destroy_wakes_a_blocked_receiver() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = Arc::new(engine.create_group().unwrap());
        let waiter = {
            let g = Arc::clone(&g);
            std::thread::spawn(move || g.wait_receive(None))
        };
        std::thread::sleep(Duration::from_millis(30));
        g.destroy();
        assert_eq!(waiter.join().unwrap().unwrap_err(), Error::ShutdownStarted);
        let e = g.post(data(OpCode::Signal, 1, 0, b"")).unwrap_err();
        assert!(matches!(
            e.error,
            Error::InvalidChannelNumber | Error::ShutdownStarted
        ));
    });
}

#[test]
fn destroying_a_group_closes_its_channels_with_a_reset() {
    on_every_backend(|b| {
        let server_engine = engine(b);
        let client_engine = engine(b);
        let server = server_engine.create_group().unwrap();
        let client = client_engine.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&server, &addr);
        let (_, s) = connect(&client, &server, &addr);
        client.destroy();
        // The server side sees the connection die: its channel closes with a status.
        let m = recv(&server);
        expect_closed_signal(&m, s);
    });
}

#[test]
fn engine_dropped_first_with_traffic_in_flight() {
    on_every_backend(|b| {
        let engine = engine(b);
        let server = engine.create_group().unwrap();
        let client = engine.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&server, &addr);
        let (c, _) = connect(&client, &server, &addr);
        for i in 1..=200u64 {
            client
                .post(data(OpCode::Signal, c, i, &[7u8; 1000]))
                .unwrap();
        }
        drop(engine);
        // Both groups outlive the engine: they drain what was delivered, then report
        // ShutdownStarted. Nothing hangs and posting is refused with the message returned.
        for g in [&server, &client] {
            loop {
                match g.wait_receive(Some(PATIENCE)) {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("a group of a dropped engine must not block"),
                    Err(e) => {
                        assert_eq!(e, Error::ShutdownStarted);
                        break;
                    }
                }
            }
        }
        let e = client
            .post(data(OpCode::Signal, c, 0, b"late"))
            .unwrap_err();
        assert_eq!(
            e.error,
            Error::NotificationDisabled,
            "says the engine stopped"
        );
        assert_eq!(e.message.status(), tofu::Status::NotificationDisabled);
        assert_eq!(e.message.body(), b"late");
    });
}

#[test]
fn engine_dropped_hands_back_unsent_messages() {
    on_every_backend(|b| {
        // A peer that reads almost nothing (tiny pool, never drained) keeps the client's
        // queue full; then the client's engine is dropped.
        let server_engine = engine_with_pool(b, tofu::PoolOptions { initial: 2, max: 2 });
        let server = server_engine.create_group().unwrap();
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&server, &addr);
        let (c, id) = hello(&g, &addr);
        let mut posted = 0u64;
        for i in 1..=1000u64 {
            g.post(data(OpCode::Signal, c, i, &[1u8; 60000])).unwrap();
            posted += 1;
        }
        drop(engine);
        let mut returned = 0u64;
        let mut closed = 0;
        let mut seen = std::collections::BTreeMap::new();
        loop {
            match g.wait_receive(Some(PATIENCE)) {
                Ok(Some(m)) => {
                    *seen
                        .entry(format!(
                            "{:?}/{:?}/{}",
                            m.opcode(),
                            m.status(),
                            m.channel() == c
                        ))
                        .or_insert(0) += 1;
                    if m.opcode() == OpCode::Signal && m.status() == Status::ShutdownStarted {
                        returned += 1;
                    }
                    if m.status() == Status::ChannelClosed
                        && m.opcode() == OpCode::Signal
                        && m.channel() == c
                    {
                        closed += 1;
                    }
                }
                Ok(None) => panic!("blocked"),
                Err(_) => break,
            }
        }
        let _ = id;
        assert!(
            returned > 0,
            "unsent messages came back with ShutdownStarted"
        );
        assert!(returned <= posted);
        assert_eq!(closed, 1, "one final ChannelClosed for the client channel");
    });
}

/// A Welcome posted while another thread destroys the group never leaves a listener behind.
/// UDS paths are private to this test (TCP ports could be reused by other tests), and a live
/// listener keeps its socket file while a closed one removes it.
#[cfg(unix)]
#[test]
fn welcome_racing_destroy_leaves_no_listener() {
    on_every_backend(|b| {
        let engine = engine(b);
        let mut paths = Vec::new();
        for _ in 0..1000 {
            let g = Arc::new(engine.create_group().unwrap());
            let path = temp_uds_path();
            let addr = tofu::Address::uds(path.to_string_lossy());
            paths.push(path);
            let poster = {
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    let mut m = tofu::Message::new();
                    addr.format_listen(&mut m).unwrap();
                    let _ = g.post(m);
                })
            };
            g.destroy();
            poster.join().unwrap();
        }
        // Make sure the reactor has processed everything, then no socket file may remain.
        let g = engine.create_group().unwrap();
        listen(&g, &tcp_loopback());
        for p in paths {
            assert!(
                !p.exists(),
                "a listener on {} outlived its destroyed group",
                p.display()
            );
        }
    });
}
