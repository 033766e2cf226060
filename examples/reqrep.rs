//! Request/reply: a service and a client, each with its own engine. The client sends 10 000
//! Requests (text headers and a body) from 32 threads at once, checks every Response, and
//! closes the channel with ByeRequest/ByeResponse.

use std::time::Duration;

use tofu::{Address, ChannelGroup, Engine, Message, OpCode};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
const N: u64 = 10_000;
const THREADS: u64 = 32;

/// Answers Hellos, Byes and Requests (upper-cased, with a header) until the group ends.
fn serve(group: &ChannelGroup) -> Res<()> {
    while let Ok(Some(mut m)) = group.wait_receive(None) {
        if matches!(
            m.opcode(),
            OpCode::HelloRequest | OpCode::ByeRequest | OpCode::Request
        ) {
            let upper = m.body().to_ascii_uppercase();
            m.make_echo()?; // keeps the message_id and the text headers
            m.set_body(&upper);
            group.post(m)?;
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    let (server_engine, client_engine) = (Engine::with_defaults()?, Engine::with_defaults()?);
    let (server, client) = (server_engine.create_group()?, client_engine.create_group()?);
    let listening = server.listen(&Address::tcp("127.0.0.1", 0))?;
    std::thread::scope(|s| -> Res<()> {
        let service = s.spawn(|| serve(&server));
        let ch = client.connect(&listening.address)?;
        let askers: Vec<_> = (0..THREADS)
            .map(|t| {
                let client = &client;
                s.spawn(move || -> Res<()> {
                    for seq in (t..N).step_by(THREADS as usize) {
                        let mut req = Message::with_opcode(OpCode::Request);
                        req.header.channel = ch;
                        req.append_header("seq", &seq.to_string())?;
                        req.set_body(format!("hello number {seq}").as_bytes());
                        let resp = client.request(req, Some(Duration::from_secs(10)))?;
                        assert_eq!(resp.header_value("seq"), Some(seq.to_string().as_str()));
                        assert_eq!(resp.body(), format!("HELLO NUMBER {seq}").as_bytes());
                    }
                    Ok(())
                })
            })
            .collect();
        for a in askers {
            a.join().expect("no panic")?;
        }
        let mut bye = Message::with_opcode(OpCode::ByeRequest);
        bye.header.channel = ch;
        let answer = client.request(bye, Some(Duration::from_secs(10)))?;
        assert_eq!(answer.opcode(), OpCode::ByeResponse);
        server.destroy();
        service.join().expect("no panic")
    })?;
    println!("{N} requests answered and checked; channel closed gracefully");
    Ok(())
}
