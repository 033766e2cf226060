//! Pool starvation: reading pauses, one PoolEmpty Signal per episode, reading resumes.

mod common;
use common::*;
use std::time::Duration;
use tofu::{OpCode, Origin, PoolOptions, Status};

#[test]
fn starvation_and_recovery() {
    on_every_backend(|b| {
        for addr in transports() {
            let link = linked(b, &addr, PoolOptions { initial: 4, max: 4 });
            let (server, client, c, s) = (&link.server, &link.client, link.c, link.s);
            const N: u64 = 40;
            for i in 1..=N {
                client
                    .post(data(OpCode::Signal, c, i, &[i as u8; 100]))
                    .unwrap();
            }
            // Hold every message: the pool empties and reading stops.
            let mut held = Vec::new();
            let mut pool_empty = 0;
            while let Some(m) = server
                .wait_receive(Some(Duration::from_millis(300)))
                .unwrap()
            {
                if m.status() == Status::PoolEmpty {
                    assert_eq!(
                        (m.opcode(), m.origin(), m.channel(), m.message_id()),
                        (OpCode::Signal, Origin::Engine, s, 0)
                    );
                    pool_empty += 1;
                }
                held.push(m);
            }
            assert_eq!(pool_empty, 1, "one PoolEmpty Signal per starvation episode");
            let got: Vec<u64> = held
                .iter()
                .filter(|m| m.status() == Status::Success)
                .map(|m| m.message_id())
                .collect();
            assert!((got.len() as u64) < N, "reading paused");
            // Give messages back: reading resumes and everything arrives in order.
            drop(held);
            let mut next = got.len() as u64 + 1;
            while next <= N {
                let m = recv_any(server);
                if m.status() == Status::PoolEmpty {
                    continue;
                }
                assert_eq!(m.message_id(), next, "order kept across starvation");
                next += 1;
            }
        }
    });
}

/// The pool refilled while the reactor was not looking (someone took the returned message
/// straight back): reading still resumes once messages really come back.
#[test]
fn refill_is_not_missed_when_the_pool_empties_again() {
    on_every_backend(|b| {
        let l = linked(b, &tcp_loopback(), PoolOptions { initial: 4, max: 4 });
        let (server, client, c) = (&l.server, &l.client, l.c);
        const N: u64 = 40;
        for i in 1..=N {
            client
                .post(data(OpCode::Signal, c, i, &[1u8; 100]))
                .unwrap();
        }
        let mut held = Vec::new();
        while let Some(m) = server
            .wait_receive(Some(Duration::from_millis(300)))
            .unwrap()
        {
            held.push(m);
        }
        // Return one and take it straight back: the pool is empty again.
        drop(held.pop());
        held.push(l.se.get(tofu::Allocation::Always).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        let got_before = held
            .iter()
            .filter(|m| m.status() == Status::Success)
            .count() as u64;
        drop(held);
        let mut got = got_before;
        while got < N {
            let m = recv_any(server);
            if m.status() == Status::Success {
                got += 1;
            }
        }
    });
}

/// An echo server whose pool is tied up in replies it cannot send yet (the client is not
/// reading) must keep writing while it cannot read: no deadlock between the two peers.
#[test]
fn starving_channel_keeps_sending() {
    on_every_backend(|b| {
        let se = engine_with_pool(b, PoolOptions { initial: 4, max: 4 });
        let ce = engine_with_pool(
            b,
            PoolOptions {
                initial: 64,
                max: 512,
            },
        );
        let server = std::sync::Arc::new(se.create_group().unwrap());
        let client = ce.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&server, &addr);
        let (c, _) = connect(&client, &server, &addr);
        let echo = {
            let server = std::sync::Arc::clone(&server);
            std::thread::spawn(move || {
                while let Ok(Some(mut m)) = server.wait_receive(Some(Duration::from_secs(3))) {
                    if m.opcode() == OpCode::Request {
                        m.make_echo().unwrap();
                        let _ = server.post(m);
                    }
                }
            })
        };
        const N: u64 = 300;
        for i in 1..=N {
            client
                .post(data(OpCode::Request, c, i, &[2u8; 60_000]))
                .unwrap();
        }
        std::thread::sleep(Duration::from_secs(1));
        let mut got = 0;
        while got < N {
            let m = recv(&client);
            assert_eq!(m.opcode(), OpCode::Response, "{m:?}");
            got += 1;
            assert_eq!(m.message_id(), got);
        }
        drop(server);
        echo.join().unwrap();
    });
}

/// The send-side high-water mark: a peer that stops reading makes `post` refuse with
/// `SendQueueFull` (message handed back intact) instead of queueing without bound; once the
/// peer reads again, posting works again.
#[test]
fn send_queue_limit() {
    use std::io::Read;
    on_every_backend(|b| {
        let e = tofu::Engine::new(tofu::EngineOptions {
            backend: b,
            send_limit: tofu::SendLimit {
                messages: 32,
                bytes: u64::MAX,
            },
            ..Default::default()
        })
        .unwrap();
        let g = e.create_group().unwrap();
        let raw = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tofu::Address::tcp("127.0.0.1", raw.local_addr().unwrap().port());
        let (c, _) = hello(&g, &addr);
        let (mut peer, _) = raw.accept().unwrap();
        // Post until refusals persist: the peer reads nothing, so the queue stays full.
        let mut posted = 0u64;
        let mut refusals = 0;
        let refused = loop {
            match g.post(data(OpCode::Signal, c, posted + 1, &[9u8; 60_000])) {
                Ok(_) => {
                    posted += 1;
                    refusals = 0;
                }
                Err(e) => {
                    assert_eq!(e.error, tofu::Error::SendQueueFull);
                    refusals += 1;
                    if refusals == 20 {
                        break e;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            assert!(posted < 5_000, "the queue must be bounded");
        };
        assert_eq!(
            refused.message.message_id(),
            posted + 1,
            "handed back intact"
        );
        assert_eq!(refused.message.body().len(), 60_000);
        // The peer reads again: the queue drains and posting is accepted again.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                peer.set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = peer.read(&mut buf);
                }
                peer // keep the connection open until the end
            })
        };
        let mut accepted_again = false;
        for _ in 0..500 {
            match g.post(data(OpCode::Signal, c, 0, b"again")) {
                Ok(_) => {
                    accepted_again = true;
                    break;
                }
                Err(e) => assert_eq!(e.error, tofu::Error::SendQueueFull),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _peer = reader.join().unwrap();
        assert!(accepted_again, "posting resumes once the queue drains");
    });
}

/// Frames delivered to a group and never taken still count as held; destroying the group
/// gives them back, so the engine's other groups keep receiving.
#[test]
fn frames_never_taken_are_released_when_their_group_goes() {
    on_every_backend(|b| {
        let se = engine_with_pool(b, PoolOptions { initial: 8, max: 8 });
        let ce = engine(b);
        let idle = se.create_group().unwrap();
        let busy = se.create_group().unwrap();
        let client = ce.create_group().unwrap();
        let (a1, a2) = (tcp_loopback(), tcp_loopback());
        listen(&idle, &a1);
        listen(&busy, &a2);
        let (c1, _) = connect(&client, &idle, &a1);
        let (c2, _) = connect(&client, &busy, &a2);
        // `idle` never reads: it ends up holding the pool's maximum.
        for i in 1..=100 {
            client.post(data(OpCode::Signal, c1, i, &[1; 20])).unwrap();
        }
        let deadline = std::time::Instant::now() + PATIENCE;
        while se.pool().held() < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "idle group never filled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(idle);
        assert_eq!(
            se.pool().held(),
            0,
            "undelivered frames released with their group"
        );
        for i in 1..=100 {
            client.post(data(OpCode::Signal, c2, i, &[2; 20])).unwrap();
        }
        for i in 1..=100 {
            let m = recv(&busy);
            assert_eq!((m.opcode(), m.message_id()), (OpCode::Signal, i));
        }
    });
}

/// Many channels starve at once; as messages come back they resume one after another, and
/// every channel's messages arrive complete and in order.
#[test]
fn many_starved_channels_all_resume() {
    on_every_backend(|b| {
        let addr = tcp_loopback();
        let l = listening(b, &addr, PoolOptions { initial: 4, max: 4 });
        let (server, client) = (&l.server, &l.client);
        const CHANNELS: usize = 20;
        const N: u64 = 30;
        let links: Vec<(u16, u16)> = (0..CHANNELS)
            .map(|_| connect(client, server, &addr))
            .collect();
        for i in 1..=N {
            for &(c, _) in &links {
                client.post(data(OpCode::Signal, c, i, &[1; 50])).unwrap();
            }
        }
        let mut next = std::collections::HashMap::new();
        let mut got = 0;
        while got < CHANNELS as u64 * N {
            let m = recv_any(server);
            if m.status() == Status::PoolEmpty {
                continue;
            }
            let want = next.entry(m.channel()).or_insert(1u64);
            assert_eq!(m.message_id(), *want, "order on channel {}", m.channel());
            *want += 1;
            got += 1;
        }
        assert!(next.values().all(|&n| n == N + 1));
    });
}
