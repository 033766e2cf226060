//! A client and an echo server in one process, over TCP: listen, connect, one Request and its
//! Response, then a graceful close with ByeRequest/ByeResponse.
//!
//! Run with `cargo run --example echo`.

use std::time::Duration;

use tofu::{Address, Engine, Message, OpCode, Status};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::with_defaults()?;
    let server = engine.create_group()?;
    let client = engine.create_group()?;
    let wait = Some(Duration::from_secs(5));

    // Listen: a WelcomeRequest (port 0: the OS picks one); success comes back as a
    // WelcomeResponse whose `~listen_on` says where it is bound.
    let mut welcome = engine.pool().message();
    Address::tcp("127.0.0.1", 0).format_listen(&mut welcome)?;
    server.post(welcome)?;
    let answer = server.wait_receive(wait)?.ok_or("no WelcomeResponse")?;
    assert_eq!(answer.status(), Status::Success);
    let addr: Address = answer
        .header_value("~listen_on")
        .ok_or("no ~listen_on")?
        .parse()?;
    println!("server listening on {addr}");

    // Connect: a HelloRequest, answered by the server application.
    let mut hello = engine.pool().message();
    addr.format_connect(&mut hello)?;
    let channel = client.post(hello)?.channel;
    let mut request = server.wait_receive(wait)?.ok_or("no HelloRequest")?;
    request.make_echo()?; // HelloRequest -> HelloResponse, same message_id and headers
    server.post(request)?;
    let hello_response = client.wait_receive(wait)?.ok_or("no HelloResponse")?;
    println!(
        "client connected on channel {channel}: {:?}",
        hello_response.opcode()
    );

    // Data: a Request echoed as a Response.
    let mut ping = Message::with_opcode(OpCode::Request);
    ping.header.channel = channel;
    ping.set_body(b"ping");
    client.post(ping)?;
    let mut got = server.wait_receive(wait)?.ok_or("no Request")?;
    got.make_echo()?;
    server.post(got)?;
    let pong = client.wait_receive(wait)?.ok_or("no Response")?;
    println!(
        "client got {:?} with body {:?}",
        pong.opcode(),
        String::from_utf8_lossy(pong.body())
    );

    // Close: ByeRequest, answered with ByeResponse; the client's channel then closes.
    let mut bye = Message::with_opcode(OpCode::ByeRequest);
    bye.header.channel = channel;
    client.post(bye)?;
    let mut bye = server.wait_receive(wait)?.ok_or("no ByeRequest")?;
    bye.make_echo()?;
    server.post(bye)?;
    let bye_response = client.wait_receive(wait)?.ok_or("no ByeResponse")?;
    let closed = client.wait_receive(wait)?.ok_or("no ChannelClosed")?;
    println!(
        "client got {:?}, then {:?} with status {}",
        bye_response.opcode(),
        closed.opcode(),
        closed.status()
    );
    Ok(())
}
