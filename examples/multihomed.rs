//! A multi-homed service (tofu's `MultiHomed` recipe): one `Server` listening on TCP and,
//! where the platform has it, a Unix domain socket, running one service for all of them.
//! A client on each address sends Requests; the server stops cleanly and reports.

use std::ops::ControlFlow;
use std::time::Duration;

use tofu::recipes::{Server, Service};
use tofu::{Address, ChannelGroup, Engine, Message, OpCode};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Answers each Request with the number of Requests answered so far, across all addresses.
#[derive(Default)]
struct Counter {
    answered: u64,
    peers: u64,
}

impl Service for Counter {
    fn on_message(&mut self, mut m: Message, group: &ChannelGroup) -> ControlFlow<()> {
        if m.opcode() == OpCode::Request && m.make_echo().is_ok() {
            self.answered += 1;
            m.set_body(&self.answered.to_be_bytes());
            let _ = group.post(m); // fails only if the peer left meanwhile
        }
        ControlFlow::Continue(())
    }

    fn on_connect(&mut self, hello: &Message) -> ControlFlow<()> {
        self.peers += 1;
        println!(
            "peer on channel {} via {:?}",
            hello.channel(),
            hello.header_value("~connect_to")
        );
        ControlFlow::Continue(())
    }
}

fn main() -> Res<()> {
    let engine = Engine::with_defaults()?;
    let mut addrs = vec![Address::tcp("127.0.0.1", 0)];
    if tofu::testing::uds_supported() {
        addrs.push(Address::uds("")); // "" picks a fresh path
    }
    let server = Server::start(&engine, &addrs, Counter::default())?;
    let client = engine.create_group()?;
    for addr in server.addresses() {
        println!("listening on {addr}");
        let ch = client.connect(addr)?;
        for _ in 0..3 {
            let req = Message::with_opcode(OpCode::Request).on_channel(ch);
            let n = client.request(req, Some(Duration::from_secs(5)))?;
            println!(
                "  {addr}: answer number {}",
                u64::from_be_bytes(n.body().try_into()?)
            );
        }
        client.disconnect(ch, Some(Duration::from_secs(5)))?;
    }
    let counter = server.stop(); // listeners closed; the service comes back
    println!(
        "{} peers, {} requests answered",
        counter.peers, counter.answered
    );
    assert_eq!(counter.answered, 3 * addrs.len() as u64);
    Ok(())
}
