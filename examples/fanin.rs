//! Fan-in: one server (the `Server` recipe); 50 clients (threads sharing one client engine,
//! a group each) connect at once, each sends 1 000 Signals as fast as it can and closes
//! gracefully. The service checks that each channel's Signals arrive in order.

use std::collections::HashMap;
use std::ops::ControlFlow;

use tofu::recipes::{Server, Service};
use tofu::{Address, ChannelGroup, Engine, Message, OpCode};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
const CLIENTS: usize = 50;
const SIGNALS: u32 = 1_000;

/// Signals so far per channel.
#[derive(Default)]
struct Count(HashMap<u16, u32>);

impl Service for Count {
    fn on_message(&mut self, m: Message, _: &ChannelGroup) -> ControlFlow<()> {
        let n = self.0.entry(m.channel()).or_default();
        assert_eq!(
            (m.opcode(), m.body()),
            (OpCode::Signal, &n.to_be_bytes()[..])
        );
        *n += 1;
        ControlFlow::Continue(())
    }
}

fn client(engine: &Engine, addr: &Address) -> Res<()> {
    let group = engine.create_group()?;
    let ch = group.connect(addr)?;
    for seq in 0..SIGNALS {
        let s = Message::with_opcode(OpCode::Signal).on_channel(ch);
        group.send_timeout(s.with_body(&seq.to_be_bytes()), None)?; // waits for room
    }
    // The ByeResponse comes after the server handled every Signal before the ByeRequest.
    group.disconnect(ch, None)?;
    Ok(())
}

fn main() -> Res<()> {
    let (server_engine, client_engine) = (Engine::with_defaults()?, Engine::with_defaults()?);
    let addrs = [Address::tcp("127.0.0.1", 0)];
    let server = Server::start(&server_engine, &addrs, Count::default())?;
    let addr = &server.addresses()[0];
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| client(&client_engine, addr).expect("client"));
        }
    });
    let counts = server.stop().0;
    assert!(counts.len() == CLIENTS && counts.values().all(|&n| n == SIGNALS));
    println!(
        "{} Signals from {CLIENTS} clients, each channel in order",
        counts.values().sum::<u32>()
    );
    Ok(())
}
