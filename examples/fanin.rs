//! Fan-in: one listener; 50 clients (threads sharing one client engine, a group each) connect
//! at once, each sends 1 000 Signals and closes with ByeRequest. The server counts per
//! channel, checks the order, and stops when all 50 channels have closed.

use std::collections::HashMap;
use std::time::Duration;

use tofu::{Address, ChannelGroup, Engine, Message, OpCode, Origin, Status};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
const CLIENTS: usize = 50;
const SIGNALS: u32 = 1_000;

fn server(group: &ChannelGroup) -> Res<u64> {
    let mut count: HashMap<u16, u32> = HashMap::new(); // channel -> Signals so far
    let (mut total, mut closed) = (0, 0);
    while closed < CLIENTS {
        let mut m = group
            .wait_receive(Some(Duration::from_secs(10)))?
            .ok_or("timed out")?;
        match (m.opcode(), m.origin(), m.status()) {
            (OpCode::HelloRequest | OpCode::ByeRequest, Origin::Application, _) => {
                m.make_echo()?;
                group.post(m)?;
            }
            (OpCode::Signal, Origin::Application, _) => {
                let n = count.entry(m.channel()).or_default();
                assert_eq!(u32::from_be_bytes(m.body().try_into()?), *n, "in order");
                *n += 1;
                total += 1;
            }
            (OpCode::Signal, Origin::Engine, Status::ChannelClosed) => {
                assert_eq!(count.remove(&m.channel()), Some(SIGNALS));
                closed += 1;
            }
            other => return Err(format!("server: unexpected {other:?}").into()),
        }
    }
    Ok(total)
}

fn client(engine: &Engine, addr: &Address) -> Res<()> {
    let group = engine.create_group()?;
    let ch = group.connect(addr)?;
    for seq in 0..SIGNALS {
        let mut s = Message::with_opcode(OpCode::Signal);
        s.header.channel = ch;
        s.set_body(&seq.to_be_bytes());
        group.send_timeout(s, None)?; // waits if the send queue is full
    }
    let mut bye = Message::with_opcode(OpCode::ByeRequest);
    bye.header.channel = ch;
    group.request(bye, Some(Duration::from_secs(10)))?;
    Ok(())
}

fn main() -> Res<()> {
    let (server_engine, client_engine) = (Engine::with_defaults()?, Engine::with_defaults()?);
    let group = server_engine.create_group()?;
    let addr = group.listen(&Address::tcp("127.0.0.1", 0))?.address;
    let total = std::thread::scope(|s| -> Res<u64> {
        let srv = s.spawn(|| server(&group));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| s.spawn(|| client(&client_engine, &addr)))
            .collect();
        for c in clients {
            c.join().expect("no panic")?;
        }
        srv.join().expect("no panic")
    })?;
    println!("{total} Signals from {CLIENTS} clients, each channel in order");
    Ok(())
}
