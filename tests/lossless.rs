//! Lossless close under load: a stream of messages then ByeRequest, over TCP and UDS, on every
//! backend. The receiver gets every message, in order, before the ByeRequest; the initiator
//! gets the ByeResponse. Also with both ends sending ByeRequest at once.
//!
//! 10^6 messages per stream in an optimised build (`cargo test --release --test lossless`,
//! which `.ci/run` runs, with the `tls` feature: then over `tls|` too), 10^5 in a debug build.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tofu::{ChannelGroup, Engine, Error, OpCode, PoolOptions, Status};

const N: u64 = if cfg!(debug_assertions) {
    100_000
} else {
    1_000_000
};

/// Posts `n` Signals carrying their sequence number, retrying while the send queue is full,
/// then a ByeRequest.
fn send_stream(engine: &Engine, g: &ChannelGroup, ch: u16, n: u64) {
    for i in 1..=n {
        let mut m = engine.pool().message();
        m.header.opcode = OpCode::Signal;
        m.header.channel = ch;
        m.header.message_id = i;
        m.set_body(&i.to_be_bytes());
        loop {
            match g.post(m) {
                Ok(_) => break,
                Err(e) if e.error == Error::SendQueueFull => {
                    m = e.message;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("post {i} on {ch}: {}", e.error),
            }
        }
    }
    g.post(data(OpCode::ByeRequest, ch, n + 1, b"")).unwrap();
}

/// Receives the peer's `n` Signals in order, then its ByeRequest, answered once `done_sending`
/// is set (a ByeResponse tells the peer that nothing more will come: its receiver closes).
/// Returns what followed: messages until this side's channel closed.
fn receive_stream(
    g: &ChannelGroup,
    ch: u16,
    n: u64,
    done_sending: &AtomicBool,
) -> Vec<(OpCode, Status)> {
    let mut next = 1u64;
    loop {
        let m = recv(g);
        match m.opcode() {
            OpCode::Signal if m.status() == Status::Success => {
                assert_eq!(m.channel(), ch);
                assert_eq!(m.message_id(), next, "in order, none missing");
                assert_eq!(m.body(), next.to_be_bytes());
                next += 1;
            }
            OpCode::ByeRequest => {
                assert_eq!(next, n + 1, "every message arrived before the ByeRequest");
                while !done_sending.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut m = m;
                m.make_echo().unwrap();
                if let Err(e) = g.post(m) {
                    assert_eq!(e.error, Error::InvalidChannelNumber); // peer closed first
                }
                break;
            }
            // Our own ByeResponse may arrive mixed in when both ends close at once.
            OpCode::ByeResponse => {}
            _ => panic!("unexpected {m:?} after {} messages on {ch}", next - 1),
        }
    }
    let mut rest = Vec::new();
    loop {
        let m = recv(g);
        rest.push((m.opcode(), m.status()));
        if m.opcode() == OpCode::Signal && m.status() == Status::ChannelClosed && m.channel() == ch
        {
            return rest;
        }
    }
}

fn engines(b: tofu::Backend) -> (Engine, Engine) {
    let pool = PoolOptions {
        initial: 1024,
        max: 8192,
    };
    #[cfg(feature = "tls")]
    {
        let pki = common::tls::Pki::new();
        let options = || tofu::EngineOptions {
            pool,
            receive_limit: tofu::ReceiveLimit {
                messages: 8192,
                ..tofu::ReceiveLimit::default()
            },
            ..pki.options(b)
        };
        (
            Engine::new(options()).unwrap(),
            Engine::new(options()).unwrap(),
        )
    }
    #[cfg(not(feature = "tls"))]
    (engine_with_pool(b, pool), engine_with_pool(b, pool))
}

/// TCP, UDS where there is AF_UNIX, and with the `tls` feature TLS.
fn addresses() -> Vec<tofu::Address> {
    #[allow(unused_mut)]
    let mut v = transports();
    #[cfg(feature = "tls")]
    v.push(tls_loopback());
    v
}

#[test]
fn stream_then_bye_loses_nothing() {
    on_every_backend(|b| {
        for addr in addresses() {
            let (se, re) = engines(b);
            let sender = se.create_group().unwrap();
            let receiver = Arc::new(re.create_group().unwrap());
            listen(&receiver, &addr);
            let (c, s) = connect(&sender, &receiver, &addr);
            let rx = {
                let receiver = Arc::clone(&receiver);
                std::thread::spawn(move || receive_stream(&receiver, s, N, &AtomicBool::new(true)))
            };
            send_stream(&se, &sender, c, N);
            let r = recv(&sender);
            expect(&r, OpCode::ByeResponse, Status::Success);
            expect_closed_signal(&recv(&sender), c);
            rx.join().unwrap();
        }
    });
}

#[test]
fn both_ends_stream_then_bye_at_once() {
    on_every_backend(|b| {
        for addr in addresses() {
            let (e1, e2) = engines(b);
            let a = Arc::new(e1.create_group().unwrap());
            let z = Arc::new(e2.create_group().unwrap());
            listen(&z, &addr);
            let (ca, cz) = connect(&a, &z, &addr);
            let n = N / 2;
            let done = [AtomicBool::new(false), AtomicBool::new(false)];
            std::thread::scope(|s| {
                for (i, (engine, g, ch)) in [(&e1, &a, ca), (&e2, &z, cz)].into_iter().enumerate() {
                    let done = &done[i];
                    s.spawn(move || {
                        send_stream(engine, g, ch, n);
                        done.store(true, Ordering::SeqCst);
                    });
                    s.spawn(move || receive_stream(g, ch, n, done));
                }
            });
        }
    });
}
