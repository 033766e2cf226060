//! Receive-side flow control: reading pauses at the receive limit and resumes as the
//! application receives; the send-side limit.

mod common;
use common::*;
use std::time::Duration;
use tofu::{OpCode, Origin, PoolOptions, Status};

/// Frames wait in the group's queue up to the receive limit; then reading pauses (the rest
/// stays in the sockets) and resumes as the application receives, in order, with nothing in
/// between for the receive loop to skip.
#[test]
fn reading_pauses_at_the_receive_limit_and_resumes_on_receive() {
    on_every_backend(|b| {
        for addr in transports() {
            // The server's receive limit is 4 frames (see `engine_with_pool`).
            let link = linked(b, &addr, PoolOptions { initial: 4, max: 4 });
            let (server, client, c) = (&link.server, &link.client, link.c);
            const N: u64 = 40;
            for i in 1..=N {
                client
                    .post(data(OpCode::Signal, c, i, &[i as u8; 100]))
                    .unwrap();
            }
            let deadline = std::time::Instant::now() + PATIENCE;
            while link.se.pool().queued() < 4 {
                assert!(std::time::Instant::now() < deadline, "frames never queued");
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(link.se.pool().queued(), 4, "reading paused at the limit");
            for i in 1..=N {
                let m = recv_any(server);
                assert_eq!(
                    (m.opcode(), m.origin(), m.status(), m.message_id()),
                    (OpCode::Signal, Origin::Application, Status::Success, i),
                    "order kept across pauses, nothing in between"
                );
            }
            assert_eq!(link.se.pool().queued(), 0);
        }
    });
}

/// What the application keeps after receiving does not count: a receiver that holds every
/// message still gets them all.
#[test]
fn messages_kept_after_receive_do_not_pause_reading() {
    on_every_backend(|b| {
        let l = linked(b, &tcp_loopback(), PoolOptions { initial: 4, max: 4 });
        let (server, client, c) = (&l.server, &l.client, l.c);
        const N: u64 = 100;
        for i in 1..=N {
            client
                .post(data(OpCode::Signal, c, i, &[1u8; 100]))
                .unwrap();
        }
        let kept: Vec<_> = (1..=N).map(|_| recv_any(server)).collect();
        assert!(kept
            .iter()
            .zip(1..=N)
            .all(|(m, i)| m.message_id() == i && m.status() == Status::Success));
    });
}

/// A receiver that takes one message now and then: reading pauses and resumes many times,
/// and no wake-up is missed (each hand-over below the limit wakes the paused reactor).
#[test]
fn slow_receiver_resumes_after_every_pause() {
    on_every_backend(|b| {
        let l = linked(b, &tcp_loopback(), PoolOptions { initial: 2, max: 2 });
        let (server, client, c) = (&l.server, &l.client, l.c);
        const N: u64 = 30;
        for i in 1..=N {
            // Large frames are decoded by the reactor, small ones by the receiver: both.
            let len = if i % 2 == 0 { 100 } else { 60_000 };
            client
                .post(data(OpCode::Signal, c, i, &vec![1u8; len]))
                .unwrap();
        }
        for i in 1..=N {
            std::thread::sleep(Duration::from_millis(10));
            assert!(l.se.pool().queued() <= 2, "never above the limit");
            assert_eq!(recv_any(server).message_id(), i);
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

/// An engine with a receive limit of 8 frames per group and two listening groups, each with
/// a channel from one client group: `idle`, sent 100 Signals it never receives (filled to
/// its limit when this returns, the rest waiting in its socket), and `busy`. Fields drop in
/// order: the groups before their engines.
struct IdleAndBusy {
    client: tofu::ChannelGroup,
    busy: tofu::ChannelGroup,
    idle: tofu::ChannelGroup,
    _ce: tofu::Engine,
    se: tofu::Engine,
    c2: u16,
    a2: tofu::Address,
}

fn idle_and_busy(b: tofu::Backend) -> IdleAndBusy {
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
    for i in 1..=100 {
        client.post(data(OpCode::Signal, c1, i, &[1; 20])).unwrap();
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    while idle.queued().0 < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle group never filled"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    IdleAndBusy {
        client,
        busy,
        idle,
        _ce: ce,
        se,
        c2,
        a2,
    }
}

/// Frames delivered to a group and never taken count as queued in the engine's pool (the
/// sum over its groups) until the group is destroyed.
#[test]
fn frames_never_taken_are_released_when_their_group_goes() {
    on_every_backend(|b| {
        let IdleAndBusy {
            client,
            busy,
            idle,
            _ce,
            se,
            c2,
            ..
        } = idle_and_busy(b);
        assert_eq!(se.pool().queued(), 8, "{b}");
        drop(idle);
        assert_eq!(
            se.pool().queued(),
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

/// The receive limit is each group's: a group nobody receives from pauses at it, and
/// another group of the same engine goes on receiving, and accepting, meanwhile. Once the
/// first group receives, everything arrives in order and nothing stays counted.
#[test]
fn an_undrained_group_does_not_stop_the_others() {
    on_every_backend(|b| {
        let IdleAndBusy {
            client,
            busy,
            idle,
            _ce,
            se,
            c2,
            a2,
        } = idle_and_busy(b);
        // The other group receives more than a limit's worth, and a new peer's Hello.
        for i in 1..=100 {
            client.post(data(OpCode::Signal, c2, i, &[2; 20])).unwrap();
        }
        for i in 1..=100 {
            let m = recv(&busy);
            assert_eq!((m.opcode(), m.message_id()), (OpCode::Signal, i), "{b}");
        }
        connect(&client, &busy, &a2);
        assert_eq!(
            idle.queued().0,
            8,
            "{b}: the idle group stayed paused at its limit"
        );
        for i in 1..=100 {
            let m = recv(&idle);
            assert_eq!((m.opcode(), m.message_id()), (OpCode::Signal, i), "{b}");
        }
        assert_eq!(idle.queued(), (0, 0), "{b}");
        assert_eq!(busy.queued(), (0, 0), "{b}");
        assert_eq!(se.pool().queued(), 0, "{b}");
    });
}

/// Many channels pause at once; as the application receives they resume one after another, and
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
            let want = next.entry(m.channel()).or_insert(1u64);
            assert_eq!(m.message_id(), *want, "order on channel {}", m.channel());
            *want += 1;
            got += 1;
        }
        assert!(next.values().all(|&n| n == N + 1));
    });
}

/// A waiting sender keeps at most [`tofu::SEND_WINDOW`] of frames queued, far below the send
/// limit: `send_timeout` times out there while `post` still accepts; once the peer reads, the
/// waiting sender goes on.
#[test]
fn a_waiting_sender_stops_at_the_send_window() {
    use std::io::Read;
    on_every_backend(|b| {
        let e = engine(b);
        let g = e.create_group().unwrap();
        let raw = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tofu::Address::tcp("127.0.0.1", raw.local_addr().unwrap().port());
        let (c, _) = hello(&g, &addr);
        let (mut peer, _) = raw.accept().unwrap();
        let body = [7u8; 60_000];
        let mut id = 0;
        // The peer reads nothing: the socket buffers fill, then the queue up to the window.
        let timed_out = loop {
            id += 1;
            match g.send_timeout(
                data(OpCode::Signal, c, id, &body),
                Some(Duration::from_millis(200)),
            ) {
                Ok(_) => assert!(id < 10_000, "a waiting sender must stop"),
                Err(e) => break e,
            }
        };
        assert_eq!(timed_out.error, tofu::Error::SendQueueFull);
        assert_eq!(timed_out.message.message_id(), id, "handed back intact");
        // `post` still has the send limit's room (64 MiB): many windows more.
        let window_msgs = tofu::SEND_WINDOW / body.len() as u64;
        for k in 0..4 * window_msgs {
            g.post(data(OpCode::Signal, c, id + 1 + k, &body))
                .unwrap_or_else(|e| panic!("post {k} beyond the window: {}", e.error));
        }
        // The peer reads: a waiting sender is let through again.
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0usize;
            peer.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            while let Ok(n) = peer.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        g.send_timeout(data(OpCode::Signal, c, 0, b"after"), Some(PATIENCE))
            .expect("room once the peer reads");
        assert!(reader.join().unwrap() > 0);
    });
}
