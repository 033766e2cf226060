//! A client session: connect, send Requests with a checkable body (several in flight), verify
//! every Response, close with ByeRequest.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tofu::{Address, Engine, Message, OpCode, Origin, Status};

/// What one session does.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub count: u64,
    pub size: usize,
    pub pipeline: usize,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Called after each verified response with (done, total).
    pub progress: Option<fn(u64, u64)>,
}

/// What one session measured.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub received: u64,
    pub rtts: Vec<Duration>,
    pub elapsed: Duration,
}

/// The body of request `id`: `size` bytes derived from the id, so any corruption shows.
pub fn fill_body(body: &mut Vec<u8>, id: u64, size: usize) {
    body.clear();
    let seed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    body.extend((0..size).map(|i| (seed >> ((i % 8) * 8)) as u8 ^ i as u8));
}

fn body_matches(body: &[u8], id: u64, size: usize, scratch: &mut Vec<u8>) -> bool {
    fill_body(scratch, id, size);
    body == scratch.as_slice()
}

/// Runs one session against `addr`. Every failure is an error message for people.
pub fn run(engine: &Engine, addr: &Address, o: &ClientOptions) -> Result<ClientStats, String> {
    let g = engine
        .create_group()
        .map_err(|e| format!("cannot create a channel group: {e}"))?;
    let mut hello = engine.pool().message();
    addr.format_connect(&mut hello)
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let ch = g
        .post(hello)
        .map_err(|e| format!("cannot post HelloRequest: {}", e.error))?
        .channel;
    let started = Instant::now();
    let next = |what: &str| -> Result<Message, String> {
        match g.wait_receive(Some(o.timeout)) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(format!(
                "timeout: no {what} from {addr} within {:?}",
                o.timeout
            )),
            Err(e) => Err(format!("receive failed: {e}")),
        }
    };
    let m = next("HelloResponse")?;
    if m.opcode() != OpCode::HelloResponse || m.status() != Status::Success {
        let why = m
            .header_value(tofu::message::ERROR_TEXT)
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        return Err(format!("connect to {addr} failed: {}{why}", m.status()));
    }
    drop(m);

    let mut stats = ClientStats::default();
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(o.pipeline);
    let mut next_id = 1u64;
    let mut scratch = Vec::with_capacity(o.size);
    let pipeline = o.pipeline.max(1);
    while stats.received < o.count {
        while in_flight.len() < pipeline && next_id <= o.count {
            let mut m = engine.pool().message();
            m.header.opcode = OpCode::Request;
            m.header.channel = ch;
            m.header.message_id = next_id;
            for (n, v) in &o.headers {
                m.append_header(n, v)
                    .map_err(|e| format!("bad header {n}:{v}: {e}"))?;
            }
            fill_body(m.body_mut(), next_id, o.size);
            g.post(m)
                .map_err(|e| format!("cannot post Request {next_id}: {}", e.error))?;
            in_flight.push_back((next_id, Instant::now()));
            next_id += 1;
        }
        let m = next("Response")?;
        if m.origin() == Origin::Engine || m.status() != Status::Success {
            return Err(format!(
                "connection to {addr} closed: {} ({} of {} answered)",
                m.status(),
                stats.received,
                o.count
            ));
        }
        let Some((id, sent_at)) = in_flight.pop_front() else {
            return Err(format!(
                "unexpected {:?} with no request outstanding",
                m.opcode()
            ));
        };
        if m.opcode() != OpCode::Response || m.channel() != ch || m.message_id() != id {
            return Err(format!(
                "mismatch: expected Response to request {id} on channel {ch}, got {:?} id {} on channel {}",
                m.opcode(),
                m.message_id(),
                m.channel()
            ));
        }
        if !body_matches(m.body(), id, o.size, &mut scratch) {
            return Err(format!(
                "mismatch: body of response {id} differs from the request ({} bytes, want {})",
                m.body().len(),
                o.size
            ));
        }
        for (n, v) in &o.headers {
            if m.header_value(n) != Some(v.as_str()) {
                return Err(format!("mismatch: response {id} lacks header {n}:{v}"));
            }
        }
        stats.rtts.push(sent_at.elapsed());
        stats.received += 1;
        if let Some(p) = o.progress {
            p(stats.received, o.count);
        }
    }
    stats.elapsed = started.elapsed();

    let mut bye = engine.pool().message();
    bye.header.opcode = OpCode::ByeRequest;
    bye.header.channel = ch;
    g.post(bye)
        .map_err(|e| format!("cannot post ByeRequest: {}", e.error))?;
    let m = next("ByeResponse")?;
    if m.opcode() != OpCode::ByeResponse {
        return Err(format!(
            "expected ByeResponse, got {:?} ({})",
            m.opcode(),
            m.status()
        ));
    }
    Ok(stats)
}

/// The `q`-quantile of sorted durations.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
