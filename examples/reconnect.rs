//! Reconnect (tofu's reconnect recipe): a `Connector` starts before anything listens and
//! retries with backoff; a server comes up and it connects; the server goes away and comes
//! back on the same port, and the connector reconnects by itself. Every state change is
//! printed as it is reported.

use std::time::Duration;

use tofu::recipes::{Backoff, Connector, Echo, Event, Server};
use tofu::{Address, Engine, Message, OpCode};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Drives the connector until it is connected; returns the channel.
fn connected(conn: &mut Connector) -> Res<u16> {
    loop {
        match conn
            .receive(Some(Duration::from_secs(10)))?
            .ok_or("no event in 10 s")?
        {
            Event::Connected { channel } => {
                println!("connected on channel {channel}");
                return Ok(channel);
            }
            Event::Disconnected {
                status,
                reason,
                retry_in,
            } => {
                println!(
                    "not connected: {status} ({}); retry in {retry_in:?}",
                    reason.unwrap_or_default()
                );
            }
            other => println!("{other:?}"),
        }
    }
}

fn main() -> Res<()> {
    let engine = Engine::with_defaults()?;
    let addr = Address::tcp("127.0.0.1", tofu::testing::free_tcp_port()?);
    let backoff = Backoff {
        first: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let mut conn = Connector::new(&engine, addr.clone(), backoff)?;

    // Nothing listens yet: a few failed attempts, then the server comes up.
    let late = std::thread::spawn({
        let (engine, addr) = (Engine::with_defaults()?, addr.clone());
        move || {
            std::thread::sleep(Duration::from_millis(150));
            let server = Server::start(&engine, &[addr], Echo::default()).expect("listen");
            std::thread::sleep(Duration::from_millis(300));
            drop(server); // gone: listener and channel close
        }
    });
    let first = connected(&mut conn)?;
    let ping = Message::with_opcode(OpCode::Request)
        .on_channel(first)
        .with_body(b"ping");
    let pong = conn.group().request(ping, Some(Duration::from_secs(5)))?;
    println!("answer: {:?}", String::from_utf8_lossy(pong.body()));
    late.join().expect("server thread");

    // The server is back on the same port: the connector finds it again.
    let server = Server::start(&engine, std::slice::from_ref(&addr), Echo::default())?;
    let second = connected(&mut conn)?;
    assert_ne!(first, second, "each connection is a new channel");
    conn.post(Message::with_opcode(OpCode::Signal).with_body(b"back"))?;
    loop {
        if let Some(Event::Message(m)) = conn.receive(Some(Duration::from_secs(5)))? {
            println!("echoed: {:?}", String::from_utf8_lossy(m.body()));
            break;
        }
    }
    println!("server saw {} connection(s)", server.stop().connections);
    Ok(())
}
