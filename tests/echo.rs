//! tofu's echo client/server recipe: one multi-homed server (TCP + UDS) with an echo service
//! on its own thread, 20 clients on their own groups and threads.

mod common;
use common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tofu::{Address, ChannelGroup, OpCode, PoolOptions, Status};

const CLIENTS_PER_ADDRESS: usize = 10;
const ECHOES: u64 = 100;

fn echo_service(server: &ChannelGroup) -> u64 {
    let mut echoed = 0;
    loop {
        let mut m = match server.wait_receive(None) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(_) => return echoed,
        };
        match (m.opcode(), m.status()) {
            (_, Status::ReceiverUpdate) => return echoed,
            (OpCode::Request | OpCode::HelloRequest | OpCode::ByeRequest, Status::Success) => {
                if m.opcode() == OpCode::Request {
                    echoed += 1;
                }
                m.make_echo().unwrap();
                server.post(m).unwrap();
            }
            (OpCode::Signal, Status::Success) => {
                m.make_echo().unwrap();
                server.post(m).unwrap();
            }
            _ => {} // closes: dropping returns the message to the pool
        }
    }
}

fn echo_client(engine: &tofu::Engine, addr: &Address, total: &AtomicU64) {
    let g = engine.create_group().unwrap();
    let (c, _) = hello(&g, addr);
    let r = recv(&g);
    expect(&r, OpCode::HelloResponse, Status::Success);
    for id in 1..=ECHOES {
        let body = format!("echo {id} via {addr}");
        g.post(data(OpCode::Request, c, id, body.as_bytes()))
            .unwrap();
        let r = recv(&g);
        expect(&r, OpCode::Response, Status::Success);
        assert_eq!((r.channel(), r.message_id()), (c, id));
        assert_eq!(r.body(), body.as_bytes());
        total.fetch_add(1, Ordering::Relaxed);
    }
    g.post(data(OpCode::ByeRequest, c, 0, b"")).unwrap();
    expect(&recv(&g), OpCode::ByeResponse, Status::Success);
    expect_closed_signal(&recv(&g), c);
}

#[test]
fn twenty_concurrent_echo_clients() {
    on_every_backend(|b| {
        let server_engine = engine_with_pool(
            b,
            PoolOptions {
                initial: 64,
                max: 256,
            },
        );
        let client_engine = engine_with_pool(
            b,
            PoolOptions {
                initial: 64,
                max: 256,
            },
        );
        let server = Arc::new(server_engine.create_group().unwrap());
        let addrs = transports();
        for a in &addrs {
            listen(&server, a);
        }
        let service = {
            let server = Arc::clone(&server);
            std::thread::spawn(move || echo_service(&server))
        };
        let total = AtomicU64::new(0);
        std::thread::scope(|s| {
            for a in &addrs {
                for _ in 0..CLIENTS_PER_ADDRESS {
                    s.spawn(|| echo_client(&client_engine, a, &total));
                }
            }
        });
        server.update_receiver(None).unwrap();
        let echoed = service.join().unwrap();
        let want = (addrs.len() * CLIENTS_PER_ADDRESS) as u64 * ECHOES;
        assert_eq!(total.load(Ordering::Relaxed), want);
        assert_eq!(echoed, want);
    });
}

#[test]
fn server_group_vanishing_mid_stream_does_not_hang_clients() {
    on_every_backend(|b| {
        let server_engine = engine(b);
        let client_engine = engine(b);
        let server = server_engine.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&server, &addr);
        let client = client_engine.create_group().unwrap();
        let (c, _) = connect(&client, &server, &addr);
        client.post(data(OpCode::Request, c, 1, b"1")).unwrap();
        drop(server); // destroys the group: its channels reset
        loop {
            let m = recv(&client);
            if m.opcode() == OpCode::Signal && m.status() == Status::ChannelClosed {
                expect_closed_signal(&m, c);
                break;
            }
        }
    });
}
