//! Request/reply: a server (the `Server` recipe) and a client, each with its own engine. The
//! client sends 10 000 Requests (a text header and a body) from 32 threads at once, checks
//! every Response, and closes the channel with ByeRequest/ByeResponse.

use std::ops::ControlFlow;
use std::time::Duration;

use tofu::recipes::Server;
use tofu::{Address, ChannelGroup, Engine, Message, OpCode};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
const N: u64 = 10_000;
const THREADS: u64 = 32;

/// Requests come back upper-cased, message_id and headers kept (Server answers Hello, Bye).
fn upper(mut m: Message, group: &ChannelGroup) -> ControlFlow<()> {
    if m.opcode() == OpCode::Request {
        let upper = m.body().to_ascii_uppercase();
        m.make_echo().expect("a Request has a Response");
        m.set_body(&upper);
        let _ = group.post(m); // fails only if the channel closed meanwhile
    }
    ControlFlow::Continue(())
}

/// One of the client's threads: every THREADS-th request from `first` on.
fn ask(client: &ChannelGroup, ch: u16, first: u64) -> Res<()> {
    for seq in (first..N).step_by(THREADS as usize) {
        let mut req = Message::with_opcode(OpCode::Request);
        req.header.channel = ch;
        req.append_header("seq", &seq.to_string())?;
        req.set_body(format!("hello number {seq}").as_bytes());
        let resp = client.request(req, Some(Duration::from_secs(10)))?;
        assert_eq!(resp.header_value("seq"), Some(seq.to_string().as_str()));
        assert_eq!(resp.body(), format!("HELLO NUMBER {seq}").as_bytes());
    }
    Ok(())
}

fn main() -> Res<()> {
    let (server_engine, client_engine) = (Engine::with_defaults()?, Engine::with_defaults()?);
    let server = Server::start(&server_engine, &[Address::tcp("127.0.0.1", 0)], upper)?;
    let client = &client_engine.create_group()?;
    let ch = client.connect(&server.addresses()[0])?;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || ask(client, ch, t).expect("every request answered"));
        }
    });
    let mut bye = Message::with_opcode(OpCode::ByeRequest);
    bye.header.channel = ch;
    assert_eq!(client.request(bye, None)?.opcode(), OpCode::ByeResponse);
    println!("{N} requests answered and checked; channel closed gracefully");
    Ok(())
}
