//! `tofu soak`: many channels, mixed sizes, random closes and reconnects, random ByeSignal
//! aborts, for minutes. Every Request must come back as its Response (same id and body) or,
//! after an abort, be handed back with a status; anything else is a lost or corrupted
//! message. Resources (heap, RSS, descriptors) must return to where they were.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tofu::Backend;
use tofu::{Address, Engine, EngineOptions, OpCode, Origin, PoolOptions, Status};

use super::client::fill_body;
use super::{os, service};

/// Soak settings.
pub struct Settings {
    pub duration: Duration,
    pub report_every: Duration,
    pub workers: usize,
    pub backend: Backend,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    responses: AtomicU64,
    handed_back: AtomicU64,
    connects: AtomicU64,
    graceful: AtomicU64,
    aborts: AtomicU64,
    errors: AtomicU64,
}

/// A tiny deterministic generator (xorshift), seeded per worker.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs the soak; returns Err with the reasons when a message was lost or corrupted or a
/// resource grew.
pub fn run(s: Settings) -> Result<(), String> {
    let pool = PoolOptions {
        initial: 256,
        max: 2048,
    };
    // Reading pauses at 2048 held frames, so the soak also runs through pauses and resumes.
    let opts = |backend| {
        let o = EngineOptions {
            pool,
            backend,
            receive_limit: tofu::ReceiveLimit {
                messages: 2048,
                ..tofu::ReceiveLimit::default()
            },
            ..EngineOptions::default()
        };
        // Built with TLS: every session may also run over tls|, with mutual authentication.
        #[cfg(feature = "tls")]
        let o = super::tls::with_demo_pki(o, true);
        o
    };
    let server_engine = Engine::new(opts(s.backend)).map_err(|e| e.to_string())?;
    let client_engine = Engine::new(opts(s.backend)).map_err(|e| e.to_string())?;
    let port = tofu::testing::free_tcp_port().map_err(|e| e.to_string())?;
    let mut addrs = vec![Address::tcp("127.0.0.1", port)];
    if cfg!(unix) {
        addrs.push(Address::uds(
            tofu::testing::temp_uds_path().to_string_lossy(),
        ));
    }
    #[cfg(feature = "tls")]
    addrs.push(Address::tls(
        "127.0.0.1",
        tofu::testing::free_tcp_port().map_err(|e| e.to_string())?,
    ));
    let server = service::echo_server(&server_engine, &addrs)?;

    let fds_start = os::open_fds();
    let counters = Counters::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut baseline_heap = None;
    let mut problems = Vec::new();
    println!(
        "{:>6} {:>12} {:>10} {:>9} {:>8} {:>7} {:>7} {:>10} {:>10} {:>5}",
        "secs",
        "requests",
        "handed",
        "connects",
        "aborts",
        "bye",
        "errors",
        "heap KiB",
        "rss KiB",
        "fds"
    );
    std::thread::scope(|scope| {
        for w in 0..s.workers {
            let (engine, addrs, counters, stop) = (&client_engine, &addrs, &counters, &stop);
            scope.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1234_5678_9ABC_DEF1));
                while !stop.load(Ordering::Relaxed) {
                    let addr = &addrs[rng.below(addrs.len() as u64) as usize];
                    if let Err(e) = session(engine, addr, &mut rng, counters) {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("soak: {e}");
                    }
                }
            });
        }
        let mut next_report = s.report_every;
        while started.elapsed() < s.duration {
            std::thread::sleep(Duration::from_millis(100));
            if started.elapsed() >= next_report {
                next_report += s.report_every;
                let heap = super::alloc::live_bytes();
                baseline_heap.get_or_insert(heap);
                report(&counters, started, heap);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Every session has closed its channels; give the engines a moment to finish.
    std::thread::sleep(Duration::from_millis(300));
    let heap_end = super::alloc::live_bytes();
    report(&counters, started, heap_end);
    let fds_end = os::open_fds();
    server.stop();

    let errors = counters.errors.load(Ordering::Relaxed);
    if errors > 0 {
        problems.push(format!("{errors} sessions lost or corrupted a message"));
    }
    if let (Some(a), Some(b)) = (fds_start, fds_end) {
        if b > a + 2 {
            problems.push(format!("open descriptors grew from {a} to {b}"));
        }
    }
    if let Some(base) = baseline_heap {
        if heap_end > base + base / 2 + (8 << 20) {
            problems.push(format!(
                "heap grew from {} KiB to {} KiB",
                base / 1024,
                heap_end / 1024
            ));
        }
    }
    println!(
        "soak: {} requests, {} responses, {} handed back after aborts, {} connections ({} graceful closes, {} aborts), {} errors",
        counters.requests.load(Ordering::Relaxed),
        counters.responses.load(Ordering::Relaxed),
        counters.handed_back.load(Ordering::Relaxed),
        counters.connects.load(Ordering::Relaxed),
        counters.graceful.load(Ordering::Relaxed),
        counters.aborts.load(Ordering::Relaxed),
        errors
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn report(c: &Counters, started: Instant, heap: usize) {
    println!(
        "{:>6.0} {:>12} {:>10} {:>9} {:>8} {:>7} {:>7} {:>10} {:>10} {:>5}",
        started.elapsed().as_secs_f64(),
        c.requests.load(Ordering::Relaxed),
        c.handed_back.load(Ordering::Relaxed),
        c.connects.load(Ordering::Relaxed),
        c.aborts.load(Ordering::Relaxed),
        c.graceful.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        heap / 1024,
        os::rss_kib().map_or_else(|| "?".into(), |v| v.to_string()),
        os::open_fds().map_or_else(|| "?".into(), |v| v.to_string()),
    );
}

/// One connection: a random number of pipelined Requests of mixed sizes, every Response
/// checked, then a graceful close, a ByeSignal abort with Requests in flight, or an abort
/// right after connecting.
fn session(engine: &Engine, addr: &Address, rng: &mut Rng, c: &Counters) -> Result<(), String> {
    let g = engine.create_group().map_err(|e| e.to_string())?;
    let wait = Some(Duration::from_secs(20));
    let next = || match g.wait_receive(wait) {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(format!("{addr}: no message for 20 s")),
        Err(e) => Err(format!("{addr}: {e}")),
    };
    let mut hello = engine.pool().message();
    addr.format_connect(&mut hello).map_err(|e| e.to_string())?;
    let ch = g.post(hello).map_err(|e| e.error.to_string())?.channel;
    let r = next()?;
    if r.opcode() != OpCode::HelloResponse || r.status() != Status::Success {
        return Err(format!(
            "{addr}: connect failed: {:?} {}",
            r.opcode(),
            r.status()
        ));
    }
    c.connects.fetch_add(1, Ordering::Relaxed);
    let total = rng.below(400);
    let pipeline = 1 + rng.below(32) as usize;
    let abort_at = (rng.below(4) == 0).then(|| rng.below(total + 1));
    let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
    let mut scratch = Vec::new();
    let mut sent = 0u64;
    let mut aborted = false;
    loop {
        while !aborted && in_flight.len() < pipeline && sent < total {
            sent += 1;
            let size = match rng.below(20) {
                0 => 65_000,
                1..=4 => rng.below(8192) as usize,
                _ => rng.below(256) as usize,
            };
            let mut m = engine.pool().message();
            m.header.opcode = OpCode::Request;
            m.header.channel = ch;
            m.header.message_id = sent;
            fill_body(m.body_mut(), sent, size);
            g.post(m).map_err(|e| format!("post: {}", e.error))?;
            c.requests.fetch_add(1, Ordering::Relaxed);
            in_flight.push_back((sent, size));
            if abort_at == Some(sent) {
                let mut bye = engine.pool().message();
                bye.header.opcode = OpCode::ByeSignal; // oob: local abort, head of the queue
                bye.header.oob = true;
                bye.header.channel = ch;
                g.post(bye).map_err(|e| format!("abort: {}", e.error))?;
                aborted = true;
                c.aborts.fetch_add(1, Ordering::Relaxed);
            }
        }
        if in_flight.is_empty() && (aborted || sent >= total) {
            break;
        }
        let m = next()?;
        match (m.opcode(), m.status(), m.origin()) {
            (OpCode::Response, Status::Success, Origin::Application) => {
                let Some((id, size)) = in_flight.pop_front() else {
                    return Err(format!("{addr}: unexpected Response {}", m.message_id()));
                };
                fill_body(&mut scratch, id, size);
                if m.message_id() != id || m.body() != scratch.as_slice() {
                    return Err(format!("{addr}: corrupted or reordered Response {id}"));
                }
                c.responses.fetch_add(1, Ordering::Relaxed);
            }
            (OpCode::Request, st, Origin::Engine) if aborted && st != Status::Success => {
                // Handed back by the abort: it must be one we still wait for.
                let Some(pos) = in_flight.iter().position(|&(id, _)| id == m.message_id()) else {
                    return Err(format!(
                        "{addr}: handed back an unknown Request {}",
                        m.message_id()
                    ));
                };
                in_flight.remove(pos);
                c.handed_back.fetch_add(1, Ordering::Relaxed);
            }
            (OpCode::ByeSignal, Status::ChannelClosed, _) if aborted => {}
            _ if aborted && m.is_channel_end() => {
                // Final Signal: whatever is still in flight was answered before the abort
                // and the answers were discarded with the socket.
                c.handed_back
                    .fetch_add(in_flight.len() as u64, Ordering::Relaxed);
                return Ok(());
            }
            other => {
                return Err(format!(
                    "{addr}: unexpected {other:?} with {} in flight",
                    in_flight.len()
                ))
            }
        }
    }
    if aborted {
        // Wait for the final Signal.
        loop {
            let m = next()?;
            if m.is_channel_end() {
                return Ok(());
            }
        }
    }
    let mut bye = engine.pool().message();
    bye.header.opcode = OpCode::ByeRequest;
    bye.header.channel = ch;
    g.post(bye).map_err(|e| format!("bye: {}", e.error))?;
    let r = next()?;
    if r.opcode() != OpCode::ByeResponse {
        return Err(format!(
            "{addr}: expected ByeResponse, got {:?} {}",
            r.opcode(),
            r.status()
        ));
    }
    let r = next()?;
    if !r.is_channel_end() {
        return Err(format!(
            "{addr}: expected the final Signal, got {:?}",
            r.opcode()
        ));
    }
    c.graceful.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
