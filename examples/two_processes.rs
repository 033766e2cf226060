//! Two processes: the README's server and client programs, run together. This program starts
//! itself again as the server (`two_processes serve`), reads the address the server prints,
//! connects, asks, and closes; the server stops when its standard input closes.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use tofu::recipes::{Echo, Server};
use tofu::{Address, Engine, Message, OpCode};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The server process: an echo service on a port the system picks, until stdin closes.
fn serve() -> Res<()> {
    let engine = Engine::with_defaults()?;
    let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], Echo::default())?;
    println!("{}", server.addresses()[0]); // the real port: the client reads it
    std::io::stdin().read_to_end(&mut Vec::new())?; // the client closes it when done
    let echo = server.stop();
    eprintln!("server: {} requests echoed", echo.echoed);
    Ok(())
}

/// The client process: connect, a few requests, a graceful close.
fn client(addr: &Address) -> Res<()> {
    let engine = Engine::with_defaults()?;
    let group = engine.create_group()?;
    let ch = group.connect_timeout(addr, Duration::from_secs(10))?;
    for i in 0..3 {
        let body = format!("ping {i}");
        let req = Message::with_opcode(OpCode::Request)
            .on_channel(ch)
            .with_body(body.as_bytes());
        let reply = group.request(req, Some(Duration::from_secs(10)))?;
        assert_eq!(reply.body(), body.as_bytes());
        println!(
            "client: {} -> {}",
            body,
            String::from_utf8_lossy(reply.body())
        );
    }
    group.disconnect(ch, Some(Duration::from_secs(10)))?;
    Ok(())
}

fn main() -> Res<()> {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        return serve();
    }
    let mut server = Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let stdout = server.stdout.take().ok_or("no stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    let addr: Address = line.trim().parse()?;
    println!("client: the server process listens on {addr}");
    let done = client(&addr);
    drop(server.stdin.take()); // the server stops
    let status = server.wait()?;
    done?;
    if !status.success() {
        return Err(format!("the server process ended with {status}").into());
    }
    Ok(())
}
