//! Pool starvation: reading pauses, one PoolEmpty Signal per episode, reading resumes.

mod common;
use common::*;
use std::time::Duration;
use tofu::{OpCode, Origin, PoolOptions, Status};

#[test]
fn starvation_and_recovery() {
    on_every_backend(|b| {
        for addr in transports() {
            let se = engine_with_pool(b, PoolOptions { initial: 4, max: 4 });
            let ce = engine(b);
            let server = se.create_group().unwrap();
            let client = ce.create_group().unwrap();
            listen(&server, &addr);
            let (c, s) = connect(&client, &server, &addr);
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
                let m = recv_any(&server);
                if m.status() == Status::PoolEmpty {
                    continue;
                }
                assert_eq!(m.message_id(), next, "order kept across starvation");
                next += 1;
            }
        }
    });
}
