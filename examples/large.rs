//! A payload larger than one message (a body holds at most 65 535 bytes): the sender cuts it
//! into parts that share one message_id, with `more` set on every part but the last; the
//! receiving service joins the parts and hands each whole payload to the main thread.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::Duration;

use tofu::recipes::Server;
use tofu::{Address, ChannelGroup, Engine, Message, OpCode};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
const PART: usize = 60_000;

/// Sends `payload` on `ch` in parts (waiting for room in the send queue, never refused).
fn send_large(group: &ChannelGroup, ch: u16, payload: &[u8]) -> Res<()> {
    let id = tofu::message::next_message_id();
    let parts = payload.len().div_ceil(PART).max(1);
    for (i, part) in payload
        .chunks(PART)
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let mut m = Message::with_opcode(OpCode::Signal)
            .on_channel(ch)
            .with_body(part);
        m.header.message_id = id;
        m.header.more = i + 1 < parts;
        group.send_timeout(m, None)?;
    }
    Ok(())
}

fn main() -> Res<()> {
    let engine = Engine::with_defaults()?;
    let (whole, received) = mpsc::channel::<Vec<u8>>();
    let mut partial: HashMap<(u16, u64), Vec<u8>> = HashMap::new();
    let join = move |m: Message, _: &ChannelGroup| {
        let key = (m.channel(), m.message_id());
        partial.entry(key).or_default().extend_from_slice(m.body());
        if !m.header.more {
            let _ = whole.send(partial.remove(&key).unwrap_or_default());
        }
        ControlFlow::Continue(())
    };
    let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], join)?;
    let client = engine.create_group()?;
    let ch = client.connect(&server.addresses()[0])?;
    let payloads: Vec<Vec<u8>> = [5_000_000, 60_000, 1, 0]
        .iter()
        .map(|&len| (0..len).map(|i| (i * 7 + len) as u8).collect())
        .collect();
    for p in &payloads {
        send_large(&client, ch, p)?;
    }
    for p in &payloads {
        let got = received.recv_timeout(Duration::from_secs(10))?;
        assert!(got == *p, "payload of {} bytes arrived whole", p.len());
        println!(
            "{} bytes in {} part(s), joined",
            got.len(),
            got.len().div_ceil(PART).max(1)
        );
    }
    client.disconnect(ch, Some(Duration::from_secs(5)))?;
    Ok(())
}
