//! Direct writes: a message posted to an idle channel while the reactor sleeps is written
//! by the posting thread. Checked here: the path is really taken, post order holds when
//! direct and queued writes mix, a channel the reactor wrote a batch for is not written
//! directly until it carries single messages again, and a direct write into a full socket
//! hands the rest of its frame to the reactor without corrupting the stream.

mod common;
use common::*;
use std::time::Duration;
use tofu::{OpCode, PoolOptions, Status};

#[test]
fn request_response_on_an_idle_channel_is_written_directly() {
    on_every_backend(|b| {
        for addr in transports() {
            let link = linked(b, &addr, PoolOptions::DEFAULT);
            let (server, client, c, se, ce) =
                (&link.server, &link.client, link.c, &link.se, &link.ce);
            const N: u64 = 200;
            let (client_before, server_before) = (ce.stats(), se.stats());
            for id in 1..=N {
                client.post(data(OpCode::Request, c, id, b"ping")).unwrap();
                let mut req = recv(server);
                assert_eq!((req.opcode(), req.message_id()), (OpCode::Request, id));
                req.make_echo().unwrap();
                server.post(req).unwrap();
                let resp = recv(client);
                assert_eq!((resp.opcode(), resp.message_id()), (OpCode::Response, id));
                assert_eq!(resp.body(), b"ping");
            }
            let direct = |after: tofu::EngineStats, before: tofu::EngineStats| {
                after.direct_writes - before.direct_writes
            };
            let (cd, sd) = (
                direct(ce.stats(), client_before),
                direct(se.stats(), server_before),
            );
            // Each post finds its reactor done writing (the answer it waits for came from
            // that reactor's last iteration), so nearly all are direct.
            assert!(
                cd >= N * 9 / 10,
                "{b} {addr}: client wrote {cd} of {N} directly"
            );
            assert!(
                sd >= N * 9 / 10,
                "{b} {addr}: server wrote {sd} of {N} directly"
            );
        }
    });
}

/// A channel the reactor just wrote several frames for streams: its next post is queued (the
/// reactor writes it), and once the reactor wrote a single frame there, the next post is
/// direct again.
#[test]
fn a_streaming_channel_is_written_by_the_reactor_until_it_carries_single_messages() {
    on_every_backend(|b| {
        for addr in transports() {
            let Listening {
                server,
                client,
                se: _se,
                ce,
            } = listening(b, &addr, PoolOptions::DEFAULT);
            // Data posted right behind the Hello waits for the connection: the reactor then
            // writes the Hello and, mostly, all of it in one batch.
            let (c, _) = hello(&client, &addr);
            const BURST: u64 = 50;
            for id in 1..=BURST {
                client.post(data(OpCode::Signal, c, id, b"burst")).unwrap();
            }
            let mut h = recv(&server);
            expect(&h, OpCode::HelloRequest, Status::Success);
            h.make_echo().unwrap();
            server.post(h).unwrap();
            for id in 1..=BURST {
                assert_eq!(recv(&server).message_id(), id, "{b} {addr}: order");
            }
            expect(&recv(&client), OpCode::HelloResponse, Status::Success);
            let settle = || std::thread::sleep(Duration::from_millis(50));
            // Whether the reactor's last write was a batch depends on the threads' timing:
            // if the posting thread is preempted before its last post, the reactor writes
            // that one alone and the channel no longer streams. So bursts are posted until
            // one ends in a batch; with the rule gone, every single post after a burst would
            // be direct and no round would pass.
            const ROUNDS: u64 = 20;
            let mut next = 100;
            let mut before = 0;
            let queued = (0..ROUNDS).any(|round| {
                if round > 0 {
                    for id in next..next + BURST {
                        client.post(data(OpCode::Signal, c, id, b"burst")).unwrap();
                    }
                    for id in next..next + BURST {
                        assert_eq!(recv(&server).message_id(), id, "{b} {addr}: order");
                    }
                    next += BURST;
                }
                settle();
                before = ce.stats().direct_writes;
                client.post(data(OpCode::Signal, c, next, b"one")).unwrap();
                assert_eq!(recv(&server).message_id(), next);
                next += 1;
                ce.stats().direct_writes == before
            });
            assert!(
                queued,
                "{b} {addr}: written directly right after a batch, in all {ROUNDS} rounds"
            );
            settle();
            client.post(data(OpCode::Signal, c, next, b"two")).unwrap();
            assert_eq!(recv(&server).message_id(), next);
            assert_eq!(
                ce.stats().direct_writes,
                before + 1,
                "{b} {addr}: not written directly after a single frame"
            );
        }
    });
}

#[test]
fn bursts_after_idle_keep_post_order() {
    on_every_backend(|b| {
        for addr in transports() {
            let link = linked(
                b,
                &addr,
                PoolOptions {
                    initial: 64,
                    max: 4096,
                },
            );
            let (server, client, c, ce) = (&link.server, &link.client, link.c, &link.ce);
            let mut next = 1u64;
            for burst in 0..20u64 {
                // Idle: the reactor sleeps, so the burst's first post may go direct and the
                // rest queue behind it.
                std::thread::sleep(Duration::from_millis(5));
                let len = 1 + burst * 37;
                for id in next..next + len {
                    client
                        .post(data(OpCode::Signal, c, id, &id.to_le_bytes()))
                        .unwrap();
                }
                for id in next..next + len {
                    let m = recv(server);
                    assert_eq!(m.message_id(), id, "{b} {addr}: post order");
                    assert_eq!(m.body(), id.to_le_bytes());
                }
                next += len;
            }
            assert!(
                ce.stats().direct_writes >= 1,
                "{b} {addr}: no burst started with a direct write"
            );
        }
    });
}

#[test]
fn direct_write_into_a_full_socket_hands_the_frame_over() {
    on_every_backend(|b| {
        for addr in transports() {
            // The server holds at most 4 received frames: while the test does not take
            // them, its reactor stops reading and the socket buffers fill up.
            let link = linked(b, &addr, PoolOptions { initial: 4, max: 4 });
            let (server, client, c, ce) = (&link.server, &link.client, link.c, &link.ce);
            // 30-60 kB, a different size for each message: with one size the buffers filled
            // after the same number of frames in every round, so the same kind of write met
            // them round after round (under Wine the reactor's, 40 times in a row in one run
            // of five).
            let body = |id: u64| -> Vec<u8> {
                let len = 30_000 + id * 7919 % 30_000;
                (0..len).map(|i| (i * 7 + id) as u8).collect()
            };
            // One message at a time, each after the reactor went idle, so posts alternate
            // between direct and queued (one direct write per reactor sleep), and nothing is
            // read: the socket buffers fill. Whether the write that meets the full buffer is
            // a direct one is a coin toss; when it was the reactor's, read everything (its
            // queue empties, direct writes are allowed again) and fill once more.
            let mut posted = 0u64;
            let mut received = 0u64;
            let take = |received: &mut u64| {
                let m = recv(server);
                *received += 1;
                assert_eq!(m.status(), Status::Success);
                assert_eq!(m.message_id(), *received, "{b} {addr}: order");
                assert!(
                    m.body() == body(*received).as_slice(),
                    "{b} {addr}: body of {received}"
                );
            };
            for round in 0.. {
                assert!(
                    round < 40,
                    "{b} {addr}: 40 times the socket filled and never on a direct write"
                );
                // 400 x 30 kB is more than loopback socket buffers hold.
                for _ in 0..400 {
                    posted += 1;
                    let before = ce.stats();
                    client
                        .post(data(OpCode::Signal, c, posted, &body(posted)))
                        .unwrap();
                    // Written directly, or else queued: then wait until the reactor has written
                    // it and gone back to sleep, so that the next post may go direct (waiting by
                    // the reactor's own count, not a guessed time: a loaded machine or Wine
                    // take longer).
                    let t = std::time::Instant::now();
                    let mut blocked = false;
                    loop {
                        let now = ce.stats();
                        if now.direct_writes > before.direct_writes
                            || now.sleeps > before.sleeps
                            || now.handovers > 0
                        {
                            break;
                        }
                        if t.elapsed() > Duration::from_millis(100) {
                            // Queued behind a write the reactor could not finish: the socket
                            // filled on the reactor's write this time.
                            blocked = true;
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    if blocked || ce.stats().handovers > 0 {
                        break;
                    }
                }
                if ce.stats().handovers > 0 {
                    break;
                }
                while received < posted {
                    take(&mut received);
                }
            }
            // A few more queue behind the handed-over frame.
            for _ in 0..3 {
                posted += 1;
                client
                    .post(data(OpCode::Signal, c, posted, &body(posted)))
                    .unwrap();
            }
            // Now read everything: whole frames, in order, nothing lost or torn.
            while received < posted {
                take(&mut received);
            }
            expect_silence(client, Duration::from_millis(50));
        }
    });
}
