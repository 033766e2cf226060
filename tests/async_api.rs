//! The async API: `ChannelGroup::receive` and `ChannelGroup::send` under tokio (current-thread
//! and multi-thread) and the futures executors, cancellation of a pending receive, many tasks
//! on one group; and `send_timeout`, which waits for room instead of failing.

mod common;
use common::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tofu::{ChannelGroup, Engine, EngineOptions, Error, OpCode, PoolOptions, SendLimit, Status};

const N: u64 = 500;

/// A tokio current-thread runtime with timers.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Receives `n` Signals with status Success, returns their message_ids in arrival order;
/// any other message fails the test.
async fn signals(group: &ChannelGroup, n: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.len() < n as usize {
        let m = group.receive().await.expect("a message");
        expect(&m, OpCode::Signal, Status::Success);
        ids.push(m.message_id());
    }
    ids
}

/// Client posts N Signals with `send().await`; server awaits them with `receive()`.
async fn stream_both_ways_async(link: &Linked) {
    let (server, client, c) = (&link.server, &link.client, link.c);
    let recv = signals(server, N);
    let send = async {
        for id in 1..=N {
            client
                .send(data(OpCode::Signal, c, id, &[id as u8; 64]))
                .await
                .expect("sent");
        }
    };
    let ((), ids) = futures_join(send, recv).await;
    assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "all, in order");
}

/// Polls both futures until both are done (no runtime's join macro needed).
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(move |cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[test]
fn tokio_current_thread() {
    let link = linked(
        tofu::Backend::default(),
        &tcp_loopback(),
        PoolOptions::default(),
    );
    let rt = current_thread();
    rt.block_on(stream_both_ways_async(&link));
}

#[test]
fn tokio_multi_thread_many_tasks_share_one_group() {
    let link = Arc::new(linked(
        tofu::Backend::default(),
        &tcp_loopback(),
        PoolOptions::default(),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        // Eight tasks receive from the same group until the peer's N Signals are in.
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (link, received) = (Arc::clone(&link), Arc::clone(&received));
            tasks.push(tokio::spawn(async move {
                loop {
                    let m = link.server.receive().await.expect("a message");
                    if m.status() == Status::ReceiverUpdate {
                        return; // the end marker, one per task
                    }
                    expect(&m, OpCode::Signal, Status::Success);
                    received.lock().unwrap().push(m.message_id());
                }
            }));
        }
        for id in 1..=N {
            link.client
                .send(data(OpCode::Signal, link.c, id, b"x"))
                .await
                .unwrap();
        }
        let deadline = Instant::now() + PATIENCE;
        while received.lock().unwrap().len() < N as usize {
            assert!(Instant::now() < deadline, "not all received");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..8 {
            link.server.update_receiver(None).unwrap();
        }
        for t in tasks {
            tokio::time::timeout(PATIENCE, t)
                .await
                .expect("every task got its end marker")
                .unwrap();
        }
        let got = received.lock().unwrap();
        let unique: HashSet<u64> = got.iter().copied().collect();
        assert_eq!(got.len(), N as usize, "each message to exactly one task");
        assert_eq!(unique.len(), N as usize);
    });
}

#[test]
fn futures_executor_block_on_and_thread_pool() {
    let link = Arc::new(linked(
        tofu::Backend::default(),
        &tcp_loopback(),
        PoolOptions::default(),
    ));
    futures_executor::block_on(stream_both_ways_async(&link));
    // On a thread pool: the receiving task runs on a pool thread, the sender here.
    let pool = futures_executor::ThreadPool::builder()
        .pool_size(2)
        .create()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let l = Arc::clone(&link);
    pool.spawn_ok(async move {
        let ids = signals(&l.server, N).await;
        tx.send(ids).unwrap();
    });
    for id in 1..=N {
        link.client
            .post(data(OpCode::Signal, link.c, id, b"p"))
            .unwrap();
    }
    let ids = rx.recv_timeout(PATIENCE).expect("the pool task finished");
    assert_eq!(ids, (1..=N).collect::<Vec<_>>());
}

#[test]
fn a_cancelled_receive_loses_nothing() {
    let link = linked(
        tofu::Backend::default(),
        &tcp_loopback(),
        PoolOptions::default(),
    );
    let rt = current_thread();
    rt.block_on(async {
        for round in 1..=20u64 {
            // A receive that waits, then is dropped by the timeout.
            let r = tokio::time::timeout(Duration::from_millis(2), link.server.receive()).await;
            assert!(r.is_err(), "nothing was sent yet");
            // The message that arrives after the cancellation goes to the next receive.
            link.client
                .post(data(OpCode::Signal, link.c, round, b"after"))
                .unwrap();
            let m = tokio::time::timeout(PATIENCE, link.server.receive())
                .await
                .expect("received")
                .unwrap();
            assert_eq!((m.message_id(), m.body()), (round, &b"after"[..]));
        }
        // A select! that drops the receive the moment a message could be ready.
        for id in 100..200u64 {
            link.client
                .post(data(OpCode::Signal, link.c, id, b""))
                .unwrap();
            tokio::select! {
                biased;
                _ = std::future::ready(()) => {}
                _ = link.server.receive() => panic!("the ready branch is polled first"),
            }
        }
        let ids = tokio::time::timeout(PATIENCE, signals(&link.server, 100))
            .await
            .expect("all there");
        assert_eq!(
            ids,
            (100..200).collect::<Vec<_>>(),
            "nothing lost by the drops"
        );
    });
}

#[test]
fn receive_ends_with_shutdown_when_the_group_is_destroyed() {
    let e = Engine::with_defaults().unwrap();
    let g = Arc::new(e.create_group().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let waiting = {
        let g = Arc::clone(&g);
        rt.spawn(async move { g.receive().await })
    };
    std::thread::sleep(Duration::from_millis(50));
    g.destroy();
    let r = rt.block_on(waiting).unwrap();
    assert_eq!(r.unwrap_err(), Error::ShutdownStarted);
}

/// An engine whose channels hold at most 8 unsent messages, and a client channel to a raw
/// TCP peer that reads nothing until told: the queue fills once the socket buffers do.
/// Returns (engine, group, channel, peer, the next message_id).
fn full_queue() -> (Engine, ChannelGroup, u16, std::net::TcpStream, u64) {
    let e = Engine::new(EngineOptions {
        send_limit: SendLimit {
            messages: 8,
            bytes: u64::MAX,
        },
        ..Default::default()
    })
    .unwrap();
    let g = e.create_group().unwrap();
    let raw = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tofu::Address::tcp("127.0.0.1", raw.local_addr().unwrap().port());
    let (c, _) = hello(&g, &addr);
    let (peer, _) = raw.accept().unwrap();
    let mut refusals = 0;
    for id in 1..=10_000 {
        match g.post(data(OpCode::Signal, c, id, &[1u8; 60_000])) {
            Ok(_) => refusals = 0,
            Err(err) => {
                assert_eq!(err.error, Error::SendQueueFull);
                refusals += 1;
                if refusals == 10 {
                    return (e, g, c, peer, id);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    panic!("the queue never filled");
}

/// Reads and discards everything `peer` receives until the returned flag is set.
fn drain(
    mut peer: std::net::TcpStream,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    use std::io::Read;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let t = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        peer.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        while !s.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = peer.read(&mut buf);
        }
    });
    (stop, t)
}

#[test]
fn send_timeout_waits_for_room_and_gives_up_at_the_timeout() {
    let (_e, g, c, peer, id) = full_queue();
    // Nobody reads: after the timeout the message comes back intact.
    let t0 = Instant::now();
    let err = g
        .send_timeout(
            data(OpCode::Signal, c, id, &[2u8; 60_000]),
            Some(Duration::from_millis(100)),
        )
        .unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(100), "it waited");
    assert_eq!(err.error, Error::SendQueueFull);
    assert_eq!(
        (err.message.message_id(), err.message.body().len()),
        (id, 60_000)
    );
    // The peer reads again: a waiting send goes through without the caller retrying.
    let sender = std::thread::scope(|s| {
        let waiting =
            s.spawn(|| g.send_timeout(data(OpCode::Signal, c, id + 1, &[3u8; 60_000]), None));
        std::thread::sleep(Duration::from_millis(50));
        let (stop, reader) = drain(peer);
        let r = waiting.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.join().unwrap();
        r
    });
    assert_eq!(sender.unwrap().message_id, id + 1);
}

#[test]
fn async_send_waits_for_room() {
    let (_e, g, c, peer, id) = full_queue();
    let rt = current_thread();
    rt.block_on(async {
        // Pending while the queue is full.
        let r = tokio::time::timeout(
            Duration::from_millis(50),
            g.send(data(OpCode::Signal, c, id, b"waits")),
        )
        .await;
        assert!(r.is_err(), "the queue is full: the send waits");
        let (stop, reader) = drain(peer);
        let h = tokio::time::timeout(PATIENCE, g.send(data(OpCode::Signal, c, id + 1, b"in")))
            .await
            .expect("room came")
            .unwrap();
        assert_eq!(h.message_id, id + 1);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.join().unwrap();
    });
}

#[test]
fn send_to_a_closed_channel_fails_at_once() {
    let e = Engine::with_defaults().unwrap();
    let g = e.create_group().unwrap();
    let err = futures_executor::block_on(g.send(data(OpCode::Signal, 9, 1, b""))).unwrap_err();
    assert_eq!(err.error, Error::InvalidChannelNumber);
    let err = g
        .send_timeout(data(OpCode::Signal, 9, 1, b""), None)
        .unwrap_err();
    assert_eq!(err.error, Error::InvalidChannelNumber);
}

#[cfg(feature = "stream")]
#[test]
fn messages_as_a_stream_end_when_the_group_is_destroyed() {
    use futures_core::Stream;
    let link = linked(
        tofu::Backend::default(),
        &tcp_loopback(),
        PoolOptions::default(),
    );
    for id in 1..=N {
        link.client
            .post(data(OpCode::Signal, link.c, id, b"s"))
            .unwrap();
    }
    let mut stream = std::pin::pin!(link.server.messages());
    let mut next =
        || futures_executor::block_on(std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)));
    let mut ids = Vec::new();
    while ids.len() < N as usize {
        let m = next().expect("the stream goes on while the group lives");
        ids.push(m.message_id());
    }
    assert_eq!(ids, (1..=N).collect::<Vec<_>>());
    link.server.destroy();
    assert!(next().is_none(), "the stream ends with the group");
}

/// Listen, connect, a request and a graceful close, all awaited on a current-thread runtime
/// (no thread blocks while the OS connects); a refused connect is one error and leaves
/// nothing in the receive loop.
#[test]
fn listen_connect_and_disconnect_async() {
    let rt = current_thread();
    let e = Engine::with_defaults().unwrap();
    let (server, client) = (e.create_group().unwrap(), e.create_group().unwrap());
    // The futures are `Unpin`: awaited through `&mut` (as a `select` polls them), which
    // compiles only for `Unpin` futures.
    let mut listening = server.listen_async(&tofu::Address::tcp("127.0.0.1", 0));
    let l = rt.block_on(&mut listening).unwrap();
    assert_ne!(l.port(), Some(0));
    std::thread::scope(|s| {
        // The server answers the Hello, the Request and the Bye.
        s.spawn(|| {
            for _ in 0..3 {
                let mut m = recv(&server);
                m.make_echo().unwrap();
                server.post(m).unwrap();
            }
        });
        let ch = rt.block_on(async {
            let mut connecting = client.connect_async(&l.address);
            let ch = (&mut connecting).await.unwrap();
            let req = tofu::Message::with_opcode(OpCode::Request)
                .on_channel(ch)
                .with_body(b"async");
            let reply = client.request_async(req).await.unwrap();
            assert_eq!(reply.body(), b"async");
            let mut closing = client.disconnect_async(ch);
            (&mut closing).await.unwrap();
            ch
        });
        expect_closed_signal(&recv(&client), ch);
    });
    let port = tofu::testing::free_tcp_port().unwrap();
    let err = rt
        .block_on(client.connect_async(&tofu::Address::tcp("127.0.0.1", port)))
        .unwrap_err();
    assert!(
        matches!(
            err.status(),
            Status::ConnectFailed | Status::CommunicationFailed
        ),
        "{err}"
    );
    assert!(client
        .wait_receive(Some(Duration::from_millis(200)))
        .unwrap()
        .is_none());
}
