//! Posts the posting thread encodes itself (small data messages, written by the reactor as
//! runs of frames) and posts kept whole (large, `oob`, bye-type) share one queue per channel:
//! they reach the peer whole and in post order, and what could not be sent comes back as the
//! messages that were posted.

mod common;
use common::*;
use tofu::{Error, Message, OpCode, Origin, PoolOptions, Status};

/// Message `i` of a mixed stream: mostly small frames (encoded at post), some with text
/// headers or `more`, every seventh over 4 KiB (queued whole).
fn mixed(channel: u16, i: u64) -> Message {
    let op = [OpCode::Signal, OpCode::Request, OpCode::Response][(i % 3) as usize];
    let len = if i % 7 == 0 {
        5000 + (i % 300) as usize
    } else {
        (i % 200) as usize
    };
    let mut m = data(op, channel, i, &body(i, len));
    m.header.more = i % 5 == 0;
    if i % 4 == 0 {
        m.append_header("seq", &i.to_string()).unwrap();
    }
    m
}

fn body(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
}

#[track_caller]
fn check_mixed(m: &Message, i: u64) {
    let want = mixed(m.channel(), i);
    assert_eq!(m.message_id(), i, "post order");
    assert_eq!(m.opcode(), want.opcode(), "message {i}");
    assert_eq!(m.header.more, want.header.more, "message {i}");
    assert_eq!(m.text_headers(), want.text_headers(), "message {i}");
    assert_eq!(m.body(), want.body(), "message {i}");
}

#[test]
fn small_and_large_posts_arrive_whole_in_post_order() {
    on_every_backend(|b| {
        for addr in transports() {
            let pool = PoolOptions {
                initial: 256,
                max: 4096,
            };
            let l = linked(b, &addr, pool);
            const N: u64 = 20_000;
            std::thread::scope(|s| {
                s.spawn(|| {
                    for i in 1..=N {
                        let m = recv(&l.server);
                        check_mixed(&m, i);
                    }
                });
                for i in 1..=N {
                    l.client.post(mixed(l.c, i)).unwrap();
                }
            });
        }
    });
}

#[test]
fn oob_overtakes_queued_small_posts() {
    on_every_backend(|b| {
        // A server that reads nothing yet: everything stays queued on the client.
        let pool = PoolOptions {
            initial: 16,
            max: 64,
        };
        let l = linked(b, &tcp_loopback(), pool);
        // Enough to fill the socket buffers (10 MB), so the last ones wait in the client's
        // queue, and within the default send limit (65536 messages).
        let n = 50_000;
        for i in 1..=n {
            l.client
                .post(data(OpCode::Signal, l.c, i, &[1; 200]))
                .unwrap();
        }
        let mut urgent = data(OpCode::Signal, l.c, n + 1, b"urgent");
        urgent.header.oob = true;
        l.client.post(urgent).unwrap();
        let mut last = 0;
        let mut urgent_after = None;
        while urgent_after.is_none() || last < n {
            let m = recv(&l.server);
            if m.message_id() == n + 1 {
                assert_eq!(m.body(), b"urgent");
                urgent_after = Some(last);
            } else {
                assert_eq!(m.message_id(), last + 1, "the others keep their order");
                last = m.message_id();
            }
        }
        let after = urgent_after.unwrap();
        assert!(
            after < n,
            "the oob message went ahead of queued ones ({after} of {n})"
        );
    });
}

#[test]
fn abort_hands_back_queued_small_posts_as_posted() {
    on_every_backend(|b| {
        for addr in transports() {
            // A server that reads almost nothing (tiny pool, never drained): the client's
            // queue cannot empty into the socket. 10 MB are more than loopback socket
            // buffers hold.
            let l = linked(b, &addr, PoolOptions { initial: 2, max: 2 });
            const N: u64 = 50_000;
            for i in 1..=N {
                let mut m = data(OpCode::Signal, l.c, i, &body(i, 200));
                m.append_header("seq", &i.to_string()).unwrap();
                l.client.post(m).unwrap();
            }
            l.client.post(data(OpCode::ByeSignal, l.c, 0, b"")).unwrap();
            let m = recv(&l.client);
            expect(&m, OpCode::ByeSignal, Status::ChannelClosed);
            let mut returned = Vec::new();
            loop {
                let m = recv(&l.client);
                if m.message_id() == 0 || m.body().is_empty() {
                    expect_closed_signal(&m, l.c);
                    break;
                }
                assert_eq!(
                    (m.origin(), m.status()),
                    (Origin::Engine, Status::ChannelClosed)
                );
                let i = m.message_id();
                assert_eq!(m.opcode(), OpCode::Signal);
                assert_eq!(m.channel(), l.c);
                assert_eq!(m.body(), &body(i, 200)[..], "content of {i} unchanged");
                assert_eq!(m.text_headers(), format!("seq:{i}\r\n").as_bytes());
                returned.push(i);
            }
            // What comes back is every message after those that reached the socket, in order.
            let first = *returned.first().expect("most of the queue comes back");
            assert!(first > 1, "the socket took some");
            let want: Vec<u64> = (first..=N).collect();
            assert_eq!(returned, want, "nothing missing in between, in post order");
            // The channel is gone: a later post is refused with the message.
            let e = l
                .client
                .post(data(OpCode::Signal, l.c, 1, b"late"))
                .unwrap_err();
            assert_eq!(e.error, Error::InvalidChannelNumber);
            assert_eq!(e.message.body(), b"late");
        }
    });
}

/// Data frames (body `x`) in what a raw peer read, by message_id.
#[cfg(unix)]
fn ids_in(bytes: &[u8]) -> Vec<u64> {
    tofu::wire::Decoder::decode_all(bytes)
        .unwrap()
        .iter()
        .filter(|m| m.opcode() == OpCode::Signal && m.body() == b"x")
        .map(Message::message_id)
        .collect()
}

#[cfg(unix)] // a Unix socket keeps what was written after the abortive close
#[test]
fn posts_racing_an_engine_drop_are_sent_handed_back_or_refused() {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    // The data may reach the reactor's queue before or after the engine stops, and the
    // Hello may or may not have been taken: in every case each message is written, handed
    // back once or refused at post.
    let path = temp_uds_path();
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = tofu::Address::uds(path.to_string_lossy().into_owned());
    on_every_backend(|b| {
        for round in 0..200u64 {
            let e = engine(b);
            let g = e.create_group().unwrap();
            let (c, _) = hello(&g, &addr);
            let mut refused = Vec::new();
            for i in 1..=3u64 {
                if g.post(data(OpCode::Signal, c, i, b"x")).is_err() {
                    refused.push(i);
                }
                if i == round % 4 {
                    std::thread::yield_now();
                }
            }
            drop(e);
            let mut back = Vec::new();
            loop {
                match g.wait_receive(Some(PATIENCE)) {
                    Ok(Some(m)) => {
                        if m.opcode() == OpCode::Signal && m.body() == b"x" {
                            assert_eq!(m.origin(), Origin::Engine);
                            assert_ne!(m.status(), Status::Success);
                            back.push(m.message_id());
                        }
                    }
                    Ok(None) => panic!("a group of a dropped engine must not block"),
                    Err(e) => {
                        assert_eq!(e, Error::ShutdownStarted);
                        break;
                    }
                }
            }
            let mut sent = Vec::new();
            if let Ok((mut s, _)) = listener.accept() {
                s.set_nonblocking(false).unwrap();
                let mut bytes = Vec::new();
                let _ = s.read_to_end(&mut bytes);
                sent = ids_in(&bytes);
            }
            let mut all: Vec<u64> = sent.iter().chain(&back).chain(&refused).copied().collect();
            all.sort_unstable();
            assert_eq!(
                all,
                vec![1, 2, 3],
                "round {round}: sent {sent:?}, back {back:?}, refused {refused:?}"
            );
        }
    });
    let _ = std::fs::remove_file(&path);
}
