//! Nothing is lost silently: an engine dropped with thousands of messages in flight accounts
//! for every posted message. Each one is received by the peer, handed back to its group with
//! a status, or refused at post; the only exception is TCP data already written to the
//! kernel when the abortive close (RST, which tofu requires) discards it, and that can only
//! be a contiguous run between the last received and the first handed-back message.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use tofu::{Address, Error, OpCode, PoolOptions, Status};

const N: u64 = 20_000;

fn run(b: tofu::Backend, addr: &Address) {
    let receiver_engine = engine_with_pool(
        b,
        PoolOptions {
            initial: 1024,
            max: 8192,
        },
    );
    let receiver = Arc::new(receiver_engine.create_group().unwrap());
    listen(&receiver, addr);
    let sender_engine = engine(b);
    let sender = sender_engine.create_group().unwrap();
    let (c, s) = connect(&sender, &receiver, addr);

    let rx = {
        let receiver = Arc::clone(&receiver);
        std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                let m = recv(&receiver);
                match (m.opcode(), m.status()) {
                    (OpCode::Signal, Status::Success) => got.push(m.message_id()),
                    (OpCode::Signal, Status::ChannelClosed) if m.channel() == s => return got,
                    other => panic!("receiver got {other:?}"),
                }
            }
        })
    };

    let mut refused = BTreeSet::new();
    let mut engine = Some(sender_engine);
    for id in 1..=N {
        if id == N / 2 {
            drop(engine.take()); // abort mid-stream
        }
        let mut m = data(OpCode::Signal, c, id, &id.to_be_bytes());
        loop {
            match sender.post(m) {
                Ok(_) => break,
                Err(e) if e.error == Error::SendQueueFull => {
                    m = e.message;
                    std::thread::yield_now();
                }
                Err(e) => {
                    assert!(
                        matches!(
                            e.error,
                            Error::NotificationDisabled | Error::InvalidChannelNumber
                        ),
                        "{:?}",
                        e.error
                    );
                    assert_eq!(
                        e.message.message_id(),
                        id,
                        "a refused post hands the message back"
                    );
                    refused.insert(id);
                    break;
                }
            }
        }
    }
    let mut returned = BTreeSet::new();
    loop {
        match sender.wait_receive(Some(PATIENCE)) {
            Ok(Some(m)) => {
                if m.opcode() == OpCode::Signal && m.message_id() >= 1 && m.body().len() == 8 {
                    assert_eq!(m.origin(), tofu::Origin::Engine);
                    assert_ne!(m.status(), Status::Success);
                    assert!(returned.insert(m.message_id()), "handed back twice");
                }
            }
            Ok(None) => panic!("a group of a dropped engine must not block"),
            Err(e) => {
                assert_eq!(e, Error::ShutdownStarted);
                break;
            }
        }
    }
    let received = rx.join().unwrap();
    // Received: in order, none twice, from the start.
    for (i, id) in received.iter().enumerate() {
        assert_eq!(*id, i as u64 + 1, "received in order without gaps");
    }
    let k = received.len() as u64;
    assert!(
        returned.iter().chain(&refused).all(|&id| id > k),
        "nothing both received and returned"
    );
    assert!(returned.is_disjoint(&refused));
    // Whatever is neither received, returned nor refused is one contiguous run right after the
    // received ones: frames the kernel had accepted when the reset discarded them.
    let lost: Vec<u64> = (k + 1..=N)
        .filter(|id| !returned.contains(id) && !refused.contains(id))
        .collect();
    if let Some((first, last)) = lost.first().zip(lost.last()) {
        assert_eq!(*first, k + 1, "lost frames follow the received ones");
        assert_eq!(
            last - first + 1,
            lost.len() as u64,
            "lost frames are contiguous"
        );
    }
    eprintln!(
        "{addr}: received {k}, handed back {}, refused {}, discarded by the reset {}",
        returned.len(),
        refused.len(),
        lost.len()
    );
    if matches!(addr, Address::Uds { .. }) {
        assert!(
            lost.is_empty(),
            "a Unix socket keeps what was written after the close"
        );
    }
    assert_eq!(
        k + returned.len() as u64 + refused.len() as u64 + lost.len() as u64,
        N
    );
}

#[test]
fn engine_dropped_mid_stream_accounts_for_every_message() {
    on_every_backend(|b| {
        for addr in transports() {
            run(b, &addr);
        }
    });
}
