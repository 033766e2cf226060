//! Graceful shutdown: a client pipelines Requests without waiting, then closes its channel
//! with `disconnect` (ByeRequest), which returns once the server's ByeResponse arrives: after
//! every Response to the Requests before it. The Responses wait in the group's queue, the
//! channel's final Signal comes last; then the server stops and the engine is dropped with
//! nothing in flight.

use std::time::Duration;

use tofu::recipes::{Echo, Server};
use tofu::{Address, Engine, Message, OpCode, Origin};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
const N: u64 = 10_000;

fn main() -> Res<()> {
    let engine = Engine::with_defaults()?;
    let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], Echo::default())?;
    let client = engine.create_group()?;
    let ch = client.connect(&server.addresses()[0])?;
    for i in 0..N {
        let req = Message::with_opcode(OpCode::Request).on_channel(ch);
        client.send_timeout(req.with_body(&i.to_be_bytes()), None)?; // no waiting for answers
    }
    client.disconnect(ch, Some(Duration::from_secs(10)))?; // every Response is in by now

    let mut answered: u64 = 0;
    loop {
        let m = client
            .wait_receive(Some(Duration::ZERO))?
            .ok_or("the final Signal is queued")?;
        if m.is_channel_end() {
            break; // the channel's final Signal: the last one
        }
        match (m.opcode(), m.origin(), m.status()) {
            (OpCode::Response, Origin::Application, _) => {
                assert_eq!(m.body(), answered.to_be_bytes(), "in order");
                answered += 1;
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(answered, N);
    let echo = server.stop();
    drop(client);
    drop(engine); // nothing left to hand back
    println!(
        "{answered} Responses before the close; the server echoed {}",
        echo.echoed
    );
    Ok(())
}
