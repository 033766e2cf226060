//! `tofu bench`: tofu measured against the raw-socket limit in the same run.
//!
//! * raw limit: std sockets, one writer thread coalescing tofu frames through a 64 KiB buffer,
//!   one reader thread parsing them (TCP with TCP_NODELAY, and UDS);
//! * one stream, the user path (the headline rows): the program a user writes first: one
//!   engine with `EngineOptions::default()`, one thread sending Signals in a plain loop
//!   (`send_timeout`, which waits while the send queue is full), another receiving and
//!   dropping them; rate taken on the receiver from the first to the last message;
//! * one stream, tuned (rows marked `/tuned`): two engines, a pool of `window + 1024`
//!   messages, an application-level credit window;
//! * round trip: Request/Response ping-pong, one in flight, all threads pinned to one CPU and
//!   free; the user path is one engine with defaults, the `Server` recipe echoing and the
//!   client's `request` (or `request_async`); `/tuned` is the hand-written loop on two
//!   engines;
//! * many connections: aggregate throughput and memory per idle channel, per backend, and
//!   the same pattern over raw sockets (one writer round-robin, one reader on epoll);
//! * idle: reactor wake-ups of an engine with idle channels;
//! * memory: the heap of an idle engine with default options, and the peak heap of each
//!   user-path run (column `heap KiB`: the engine, both ends of its channel, the messages in
//!   flight), from the `tofu` command's counting allocator.
//!
//! Every figure is the median of `runs` runs, with min and max, except the raw limit: it is
//! the best of at least five runs (the highest rate, the lowest round trip), because a raw
//! run only ever loses to noise. Nothing here asserts speed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tofu::recipes::{Echo, Server};
use tofu::wire::{FrameHeader, HEADER_LEN};
use tofu::Backend;
use tofu::{Address, ChannelGroup, Engine, EngineOptions, Message, OpCode, PoolOptions, Status};

use super::{json_str, os};

/// Which stream transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Uds,
    /// TCP with TLS (feature `tls`, the demo PKI): user-path rows only; its raw figure is
    /// plain TCP's, so the ratio says what TLS and the engine cost together.
    Tls,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Uds => "uds",
            Transport::Tls => "tls",
        })
    }
}

/// How the measured application thread receives: `wait_receive` (blocking), or the future
/// of `ChannelGroup::receive` driven by a minimal executor on the same thread (async).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiving {
    Blocking,
    Async,
}

impl Receiving {
    /// The row label: the transport, with `/async` for the async receive path.
    fn label(self, t: Transport) -> String {
        match self {
            Receiving::Blocking => t.to_string(),
            Receiving::Async => format!("{t}/async"),
        }
    }

    fn json(self) -> &'static str {
        match self {
            Receiving::Blocking => "blocking",
            Receiving::Async => "async",
        }
    }
}

/// Which program produced a tofu figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Harness {
    /// What a user writes first: one engine, default options, a plain loop.
    User,
    /// The user's program with each end in an engine of its own (default options), as
    /// between two machines: each end gets its own reactor (stream only, TCP and TLS).
    TwoEngines,
    /// Two engines, a large pool and a credit window (stream); a hand-written echo loop.
    Tuned,
}

impl Harness {
    fn json(self) -> &'static str {
        match self {
            Harness::User => "user",
            Harness::TwoEngines => "user_two_engines",
            Harness::Tuned => "tuned",
        }
    }
}

/// The row label: transport, `/async` for the async receive path, `/tuned` for the tuned
/// harness.
fn label(t: Transport, receiving: Receiving, harness: Harness) -> String {
    let mut l = receiving.label(t);
    match harness {
        Harness::User => {}
        Harness::TwoEngines => l.push_str("/2 engines"),
        Harness::Tuned => l.push_str("/tuned"),
    }
    l
}

/// Raw runs per figure at least (the best is reported).
const RAW_RUNS_MIN: usize = 5;

/// Median, min and max of a figure.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Spread::default();
        }
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"median\":{:.3},\"min\":{:.3},\"max\":{:.3}}}",
            self.median, self.min, self.max
        )
    }
}

/// Settings of one bench run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub runs: usize,
    pub payloads: Vec<usize>,
    pub round_trip: bool,
    pub quick: bool,
    pub backend: Backend,
    pub many: Vec<usize>,
    pub idle_secs: u64,
    /// One-stream flow-control window: bytes of frames the sender may have in flight.
    pub window_bytes: usize,
    /// Many connections: messages per client channel in a row (1: round-robin).
    pub many_burst: u64,
}

/// One-stream result for one transport and payload.
pub struct StreamRow {
    pub transport: Transport,
    pub receiving: Receiving,
    pub harness: Harness,
    pub payload: usize,
    pub raw: Spread,
    pub tofu: Spread,
    /// Heap allocations per message in the process while tofu streamed (both engines and
    /// both application threads), from the last run.
    pub allocs_per_msg: f64,
    /// Process CPU time (user + system, all four threads) per message while tofu streamed,
    /// in nanoseconds: median of the runs (none where the platform cannot tell).
    pub cpu_ns_per_msg: Option<f64>,
    /// The user path's memory: the most heap bytes in use at once during the last run,
    /// above what was in use before its engine was made (the engine, both ends of the
    /// channel, the messages in flight). None for the tuned harness.
    pub peak_heap: Option<usize>,
}

/// Round-trip result (microseconds).
pub struct RttRow {
    pub transport: Transport,
    pub receiving: Receiving,
    pub harness: Harness,
    pub pinned: bool,
    pub raw_p50: Spread,
    pub p50: Spread,
    pub p99: Spread,
    pub p999: Spread,
}

/// Many-connections result.
pub struct ManyRow {
    pub backend: Backend,
    pub channels: usize,
    pub rate: Spread,
    pub bytes_per_idle_channel: f64,
    /// The same pattern over raw sockets (one writer, round-robin; one reader on a plain
    /// epoll loop), best of the runs; none where the platform has no epoll.
    pub raw: Option<Spread>,
}

/// Everything measured.
pub struct Report {
    pub machine: String,
    pub settings: Settings,
    pub streams: Vec<StreamRow>,
    pub rtts: Vec<RttRow>,
    pub many: Vec<ManyRow>,
    pub idle: Option<(usize, Duration, u64)>,
    /// TLS handshakes per second (connect, handshake, Hello answered, then abort), one at a
    /// time (feature `tls`).
    pub handshakes: Option<Spread>,
    /// Heap bytes of an idle engine with default options and one group.
    pub idle_engine_bytes: usize,
}

fn transports() -> Vec<Transport> {
    let mut v = vec![Transport::Tcp];
    if cfg!(unix) {
        v.push(Transport::Uds);
    }
    if cfg!(feature = "tls") {
        v.push(Transport::Tls);
    }
    v
}

/// Options of the user path: the defaults, with the demo PKI for TLS.
fn user_options(backend: Backend, t: Transport) -> EngineOptions {
    let o = EngineOptions {
        backend,
        ..EngineOptions::default()
    };
    #[cfg(feature = "tls")]
    if t == Transport::Tls {
        return super::tls::with_demo_pki(o, false);
    }
    let _ = t;
    o
}

/// Messages per one-stream run, sized so one run takes well under a second.
fn stream_count(payload: usize, quick: bool) -> u64 {
    let n = match payload {
        0..=64 => 2_000_000,
        65..=1024 => 1_000_000,
        _ => 40_000,
    };
    if quick {
        n / 10
    } else {
        n
    }
}

pub fn run(s: Settings, progress: &dyn Fn(&str)) -> Result<Report, String> {
    let mut streams = Vec::new();
    // The user path for every payload (async receive beside it at 64 B), then the tuned
    // harness; the raw limit once per transport and payload, shared by its rows.
    let mut cases: Vec<(Transport, usize, Receiving, Harness)> = Vec::new();
    for t in transports() {
        for &p in &s.payloads {
            cases.push((t, p, Receiving::Blocking, Harness::User));
            if p == 64 && t != Transport::Tls {
                cases.push((t, p, Receiving::Async, Harness::User));
            }
        }
        for &p in s.payloads.iter().filter(|_| t != Transport::Tls) {
            cases.push((t, p, Receiving::Blocking, Harness::Tuned));
        }
    }
    // TLS against TCP with each end in its own engine, as between machines (with the
    // feature only: it is what the TLS comparison needs).
    if cfg!(feature = "tls") {
        for t in [Transport::Tcp, Transport::Tls] {
            for &p in s.payloads.iter().filter(|&&p| p == 64 || p == 65000) {
                cases.push((t, p, Receiving::Blocking, Harness::TwoEngines));
            }
        }
    }
    // One discarded run first: the process's first stream pays for growing the heap (the
    // first row measured about half its rate without it).
    progress("warm-up");
    user_stream(
        s.backend,
        Transport::Tcp,
        0,
        stream_count(0, s.quick) / 2,
        Receiving::Blocking,
        false,
    )?;
    let mut raws: Vec<((Transport, usize), Spread)> = Vec::new();
    for (t, p, receiving, harness) in cases {
        progress(&format!(
            "one stream {} {p} B",
            label(t, receiving, harness)
        ));
        let n = stream_count(p, s.quick);
        // TLS is compared with the raw TCP limit.
        let raw_t = if t == Transport::Tls {
            Transport::Tcp
        } else {
            t
        };
        let raw = match raws.iter().find(|(k, _)| *k == (raw_t, p)) {
            Some((_, r)) => *r,
            None => {
                let r = Spread::of(
                    (0..s.runs.max(RAW_RUNS_MIN))
                        .map(|_| raw_stream(raw_t, p, n))
                        .collect::<Result<_, _>>()?,
                );
                raws.push(((raw_t, p), r));
                r
            }
        };
        let mut rates = Vec::new();
        let mut allocs_per_msg = 0.0;
        let mut peak_heap = None;
        let mut cpu = Vec::new();
        for _ in 0..s.runs {
            let before = os::cpu_time();
            let (rate, allocs) = match harness {
                Harness::User | Harness::TwoEngines => {
                    let two = harness == Harness::TwoEngines;
                    let (rate, allocs, peak) = user_stream(s.backend, t, p, n, receiving, two)?;
                    peak_heap = Some(peak);
                    (rate, allocs)
                }
                Harness::Tuned => tofu_stream(s.backend, t, p, n, s.window_bytes, receiving)?,
            };
            if let (Some(b), Some(a)) = (before, os::cpu_time()) {
                cpu.push((a - b).as_nanos() as f64 / n as f64);
            }
            rates.push(rate);
            allocs_per_msg = allocs;
        }
        let cpu_ns_per_msg = (!cpu.is_empty()).then(|| Spread::of(cpu).median);
        streams.push(StreamRow {
            transport: t,
            receiving,
            harness,
            payload: p,
            raw,
            tofu: Spread::of(rates),
            allocs_per_msg,
            cpu_ns_per_msg,
            peak_heap,
        });
    }
    let mut rtts = Vec::new();
    for t in transports().into_iter().filter(|_| s.round_trip) {
        let cases = [
            (true, Receiving::Blocking, Harness::User),
            (false, Receiving::Blocking, Harness::User),
            (true, Receiving::Async, Harness::User),
            (true, Receiving::Blocking, Harness::Tuned),
        ];
        let raw_t = if t == Transport::Tls {
            Transport::Tcp
        } else {
            t
        };
        let tls = t == Transport::Tls;
        for (pinned, receiving, harness) in cases {
            if tls && (receiving == Receiving::Async || harness == Harness::Tuned) {
                continue;
            }
            progress(&format!(
                "round trip {} {}",
                label(t, receiving, harness),
                if pinned { "pinned" } else { "free" }
            ));
            let n = if s.quick { 2_000 } else { 20_000 };
            let mut raw = Vec::new();
            for _ in 0..s.runs.max(RAW_RUNS_MIN) {
                raw.push(with_affinity(pinned, || raw_rtt(raw_t, n))??);
            }
            let (mut p50, mut p99, mut p999) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..s.runs {
                let q = with_affinity(pinned, || match harness {
                    Harness::User | Harness::TwoEngines => user_rtt(s.backend, t, n, receiving),
                    Harness::Tuned => tofu_rtt(s.backend, t, n, receiving),
                })??;
                p50.push(q[0]);
                p99.push(q[1]);
                p999.push(q[2]);
            }
            rtts.push(RttRow {
                transport: t,
                receiving,
                harness,
                pinned,
                raw_p50: Spread::of(raw),
                p50: Spread::of(p50),
                p99: Spread::of(p99),
                p999: Spread::of(p999),
            });
        }
    }
    let mut many = Vec::new();
    for &n in &s.many {
        for &b in Backend::available() {
            progress(&format!("{n} channels, {b}"));
            let mut rates = Vec::new();
            let mut mem = 0.0;
            for _ in 0..s.runs {
                let (rate, per) = many_channels(b, n, s.quick, s.many_burst)?;
                rates.push(rate);
                mem = per;
            }
            // The raw pattern does not depend on tofu's backend: measured once per count.
            let raw = match many.iter().find(|m: &&ManyRow| m.channels == n) {
                Some(m) => m.raw,
                None => {
                    progress(&format!("{n} channels, raw"));
                    let runs = (0..s.runs.max(RAW_RUNS_MIN))
                        .map(|_| raw_many(n, many_per_channel(s.quick), s.many_burst))
                        .collect::<Result<Vec<_>, _>>()?;
                    runs.into_iter()
                        .collect::<Option<Vec<f64>>>()
                        .map(Spread::of)
                }
            };
            many.push(ManyRow {
                backend: b,
                channels: n,
                rate: Spread::of(rates),
                bytes_per_idle_channel: mem,
                raw,
            });
        }
    }
    let handshakes = if cfg!(feature = "tls") {
        progress("TLS handshakes");
        let n = if s.quick { 100 } else { 1000 };
        Some(Spread::of(
            (0..s.runs)
                .map(|_| tls_handshakes(s.backend, n))
                .collect::<Result<_, _>>()?,
        ))
    } else {
        None
    };
    let idle = if s.idle_secs > 0 {
        progress("idle engine");
        Some(idle_wakeups(
            s.backend,
            1000,
            Duration::from_secs(s.idle_secs),
        )?)
    } else {
        None
    };
    let idle_engine_bytes = idle_engine(s.backend)?;
    Ok(Report {
        idle_engine_bytes,
        machine: os::machine(),
        settings: s,
        streams,
        rtts,
        many,
        idle,
        handshakes,
    })
}

/// TLS handshakes per second: a client connects to a `tls|` listener of the same engine
/// (demo PKI, default options), the server answers the Hello, the client aborts; one at a
/// time, so each figure is one full handshake's latency turned into a rate.
fn tls_handshakes(backend: Backend, n: u64) -> Result<f64, String> {
    let engine =
        Engine::new(user_options(backend, Transport::Tls)).map_err(|e| format!("engine: {e}"))?;
    let server = Server::start(&engine, &[address(Transport::Tls)?], Echo::default())
        .map_err(|e| e.to_string())?;
    let client = engine.create_group().map_err(|e| e.to_string())?;
    let started = Instant::now();
    for _ in 0..n {
        let c = client
            .connect(&server.addresses()[0])
            .map_err(|e| format!("TLS connect: {e}"))?;
        let abort = Message::with_opcode(OpCode::ByeSignal).on_channel(c);
        client.post(abort).map_err(|e| e.error.to_string())?;
        // The ByeSignal back, then the channel's final Signal.
        loop {
            let m = next(&client)?;
            if m.is_channel_end() {
                break;
            }
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    server.stop();
    Ok(rate)
}

// ---------------------------------------------------------------------------------------------
// Raw limit

enum RawStream {
    Tcp(TcpStream),
    Uds(os::UdsStream),
}

impl RawStream {
    fn try_clone(&self) -> std::io::Result<RawStream> {
        Ok(match self {
            RawStream::Tcp(s) => RawStream::Tcp(s.try_clone()?),
            RawStream::Uds(s) => RawStream::Uds(s.try_clone()?),
        })
    }
}

impl Read for RawStream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.read(b),
            RawStream::Uds(s) => s.read(b),
        }
    }
}

impl Write for RawStream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.write(b),
            RawStream::Uds(s) => s.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raw_pair(t: Transport) -> Result<(RawStream, RawStream), String> {
    let e = |e: std::io::Error| format!("raw socket pair: {e}");
    match t {
        Transport::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0").map_err(e)?;
            let a = TcpStream::connect(l.local_addr().map_err(e)?).map_err(e)?;
            let (b, _) = l.accept().map_err(e)?;
            a.set_nodelay(true).map_err(e)?;
            b.set_nodelay(true).map_err(e)?;
            Ok((RawStream::Tcp(a), RawStream::Tcp(b)))
        }
        Transport::Uds => {
            let (a, b) = os::uds_pair().map_err(e)?;
            Ok((RawStream::Uds(a), RawStream::Uds(b)))
        }
        Transport::Tls => Err("no raw TLS baseline (TLS rows use the raw TCP one)".into()),
    }
}

fn frame_header(payload: usize, id: u64) -> [u8; HEADER_LEN] {
    FrameHeader {
        channel: 1,
        proto: OpCode::Signal as u8,
        status: 0,
        message_id: id,
        thl: 0,
        bl: payload as u16,
    }
    .to_bytes()
}

/// Frames per second through a plain socket with a coalescing writer.
fn raw_stream(t: Transport, payload: usize, count: u64) -> Result<f64, String> {
    let (mut tx, mut rx) = raw_pair(t)?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let body = vec![0x5au8; payload];
        let mut buf = Vec::with_capacity(64 * 1024);
        for id in 1..=count {
            if buf.len() + HEADER_LEN + payload > buf.capacity() {
                tx.write_all(&buf)?;
                buf.clear();
            }
            buf.extend_from_slice(&frame_header(payload, id));
            buf.extend_from_slice(&body);
        }
        tx.write_all(&buf)
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen = 0u64;
    let mut header = [0u8; HEADER_LEN];
    let mut have = 0usize;
    let mut skip = 0usize;
    let mut first = None;
    while seen < count {
        let n = rx.read(&mut buf).map_err(|e| format!("raw read: {e}"))?;
        if n == 0 {
            return Err("raw stream ended early".into());
        }
        first.get_or_insert_with(Instant::now);
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            if skip > 0 {
                let k = skip.min(chunk.len());
                skip -= k;
                chunk = &chunk[k..];
                if skip == 0 {
                    seen += 1;
                }
                continue;
            }
            let k = (HEADER_LEN - have).min(chunk.len());
            header[have..have + k].copy_from_slice(&chunk[..k]);
            have += k;
            chunk = &chunk[k..];
            if have == HEADER_LEN {
                have = 0;
                let h = FrameHeader::parse(&header);
                skip = h.payload_len();
                if skip == 0 {
                    seen += 1;
                }
            }
        }
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    writer
        .join()
        .map_err(|_| "raw writer panicked".to_string())?
        .map_err(|e| format!("raw write: {e}"))?;
    Ok(count as f64 / secs.max(1e-9))
}

/// Round-trip p50 in microseconds through plain blocking sockets.
fn raw_rtt(t: Transport, count: u64) -> Result<f64, String> {
    let (mut a, b) = raw_pair(t)?;
    let mut b2 = b.try_clone().map_err(|e| e.to_string())?;
    let mut b = b;
    let echo = std::thread::spawn(move || {
        let mut f = [0u8; HEADER_LEN + 64];
        for _ in 0..count {
            if b.read_exact(&mut f).is_err() || b2.write_all(&f).is_err() {
                return;
            }
        }
    });
    let mut f = [0u8; HEADER_LEN + 64];
    f[..HEADER_LEN].copy_from_slice(&frame_header(64, 1));
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let t0 = Instant::now();
        a.write_all(&f).map_err(|e| e.to_string())?;
        a.read_exact(&mut f).map_err(|e| e.to_string())?;
        samples.push(t0.elapsed());
    }
    let _ = echo.join();
    samples.sort();
    Ok(us(quantile(&samples, 0.5)))
}

// ---------------------------------------------------------------------------------------------
// tofu

fn engine(backend: Backend, initial: u16, max: u16) -> Result<Engine, String> {
    Engine::new(EngineOptions {
        pool: PoolOptions { initial, max },
        backend,
        ..EngineOptions::default()
    })
    .map_err(|e| format!("engine: {e}"))
}

fn address(t: Transport) -> Result<Address, String> {
    Ok(match t {
        Transport::Tcp => Address::tcp(
            "127.0.0.1",
            tofu::testing::free_tcp_port().map_err(|e| e.to_string())?,
        ),
        Transport::Uds => Address::uds(tofu::testing::temp_uds_path().to_string_lossy()),
        Transport::Tls => Address::tls(
            "127.0.0.1",
            tofu::testing::free_tcp_port().map_err(|e| e.to_string())?,
        ),
    })
}

fn next(g: &ChannelGroup) -> Result<Message, String> {
    match g.wait_receive(Some(Duration::from_secs(20))) {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err("benchmark stalled (20 s without a message)".into()),
        Err(e) => Err(format!("receive: {e}")),
    }
}

/// The next message the way `receiving` says.
fn next_with(g: &ChannelGroup, receiving: Receiving) -> Result<Message, String> {
    if receiving == Receiving::Blocking {
        return next(g);
    }
    block_on(g.receive()).map_err(|e| format!("receive: {e}"))
}

/// Runs a future to completion on this thread: the thread parks until the future's waker
/// unparks it. The smallest executor there is; the async rows measure `receive()` under it.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    thread_local! {
        // One waker per thread, made once: the executor allocates nothing per future.
        static WAKER: std::task::Waker =
            std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    }
    let waker = WAKER.with(Clone::clone);
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Listens with `server`, connects from `client`; returns (client channel, server channel).
fn pair(
    server: &ChannelGroup,
    client: &ChannelGroup,
    addr: &Address,
) -> Result<(u16, u16), String> {
    let mut m = Message::new();
    addr.format_listen(&mut m).map_err(|e| e.to_string())?;
    server.post(m).map_err(|e| e.error.to_string())?;
    let r = next(server)?;
    if r.status() != Status::Success {
        return Err(format!("listen on {addr}: {}", r.status()));
    }
    let mut m = Message::new();
    addr.format_connect(&mut m).map_err(|e| e.to_string())?;
    let c = client.post(m).map_err(|e| e.error.to_string())?.channel;
    let mut h = next(server)?;
    let s = h.channel();
    h.make_echo().map_err(|e| e.to_string())?;
    server.post(h).map_err(|e| e.error.to_string())?;
    let r = next(client)?;
    if r.opcode() != OpCode::HelloResponse {
        return Err(format!("connect to {addr}: {}", r.status()));
    }
    Ok((c, s))
}

/// The user path: Signals per second on one channel of one engine with default options,
/// sent in a plain loop with `send_timeout` (waiting while the send queue is full) and
/// received and dropped on another thread; measured at the receiver. Returns the rate, the
/// allocations per message and the peak heap above what was in use before (see
/// [`StreamRow::peak_heap`]).
fn user_stream(
    backend: Backend,
    t: Transport,
    payload: usize,
    count: u64,
    receiving: Receiving,
    two_engines: bool,
) -> Result<(f64, f64, usize), String> {
    let heap_before = super::alloc::live_bytes();
    super::alloc::reset_peak();
    let engine = Engine::new(user_options(backend, t)).map_err(|e| format!("engine: {e}"))?;
    let sender = if two_engines {
        Some(Engine::new(user_options(backend, t)).map_err(|e| format!("engine: {e}"))?)
    } else {
        None
    };
    let (rx, tx) = (
        engine.create_group().map_err(|e| e.to_string())?,
        sender
            .as_ref()
            .unwrap_or(&engine)
            .create_group()
            .map_err(|e| e.to_string())?,
    );
    let (c, _) = pair(&rx, &tx, &address(t)?)?;
    let body = vec![0x5au8; payload];
    let allocs_before = super::alloc::allocations();
    let rate = std::thread::scope(|scope| -> Result<f64, String> {
        let rx = &rx;
        let receiver = std::thread::Builder::new()
            .name("bench-receiver".into())
            .spawn_scoped(scope, move || -> Result<f64, String> {
                let mut first = None;
                for _ in 0..count {
                    let m = next_with(rx, receiving)?;
                    first.get_or_insert_with(Instant::now);
                    if m.opcode() != OpCode::Signal || m.status() != Status::Success {
                        return Err(format!("unexpected {:?} {}", m.opcode(), m.status()));
                    }
                }
                let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
                Ok(count as f64 / secs.max(1e-9))
            })
            .map_err(|e| e.to_string())?;
        for _ in 0..count {
            let m = Message::with_opcode(OpCode::Signal)
                .on_channel(c)
                .with_body(&body);
            tx.send_timeout(m, None).map_err(|e| e.error.to_string())?;
        }
        receiver
            .join()
            .map_err(|_| "receiver panicked".to_string())?
    })?;
    let allocs = (super::alloc::allocations() - allocs_before) as f64 / count as f64;
    let peak = super::alloc::peak_bytes().saturating_sub(heap_before);
    Ok((rate, allocs, peak))
}

/// Heap bytes of an engine with default options and one group, once its reactor has
/// settled (thread stacks are not heap and not counted).
fn idle_engine(backend: Backend) -> Result<usize, String> {
    let before = super::alloc::live_bytes();
    let engine =
        Engine::new(user_options(backend, Transport::Tcp)).map_err(|e| format!("engine: {e}"))?;
    let group = engine.create_group().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(50));
    let bytes = super::alloc::live_bytes().saturating_sub(before);
    drop(group);
    drop(engine);
    Ok(bytes)
}

/// The user path's round trip: one engine with default options, the `Server` recipe
/// echoing, the client's `request` (or `request_async`); quantiles (p50, p99, p99.9) in
/// microseconds.
fn user_rtt(
    backend: Backend,
    t: Transport,
    count: u64,
    receiving: Receiving,
) -> Result<[f64; 3], String> {
    let engine = Engine::new(user_options(backend, t)).map_err(|e| format!("engine: {e}"))?;
    let server =
        Server::start(&engine, &[address(t)?], Echo::default()).map_err(|e| e.to_string())?;
    let client = engine.create_group().map_err(|e| e.to_string())?;
    let c = client
        .connect(&server.addresses()[0])
        .map_err(|e| e.to_string())?;
    let body = [1u8; 64];
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let req = Message::with_opcode(OpCode::Request)
            .on_channel(c)
            .with_body(&body);
        let t0 = Instant::now();
        let r = match receiving {
            Receiving::Blocking => client.request(req, Some(Duration::from_secs(20))),
            Receiving::Async => block_on(client.request_async(req)),
        }
        .map_err(|e| format!("request: {e}"))?;
        samples.push(t0.elapsed());
        if r.opcode() != OpCode::Response {
            return Err(format!("unexpected {:?}", r.opcode()));
        }
    }
    server.stop();
    samples.sort();
    Ok([
        us(quantile(&samples, 0.5)),
        us(quantile(&samples, 0.99)),
        us(quantile(&samples, 0.999)),
    ])
}

/// The tuned harness: Signals per second on one channel, measured at the receiver. The
/// receiver returns a credit every quarter window so the sender never queues without bound.
///
/// The window (frames in flight) decides how many pooled messages cycle through the two
/// engines: a window far beyond what keeps the pipe full only makes every message colder in
/// the CPU caches by the time it is reused.
fn tofu_stream(
    backend: Backend,
    t: Transport,
    payload: usize,
    count: u64,
    window_bytes: usize,
    receiving: Receiving,
) -> Result<(f64, f64), String> {
    let frame = HEADER_LEN + payload;
    let window = (window_bytes / frame).clamp(64, 16384) as u64;
    let credit_every = (window / 4).max(1);
    let pool_max = (window as usize + 1024).min(u16::MAX as usize) as u16;
    let tx_engine = engine(backend, 1024, pool_max)?;
    let rx_engine = engine(backend, 1024, pool_max)?;
    let tx = tx_engine.create_group().map_err(|e| e.to_string())?;
    let rx = rx_engine.create_group().map_err(|e| e.to_string())?;
    let (c, s) = pair(&rx, &tx, &address(t)?)?;
    let allocs_before = super::alloc::allocations();
    let receiver = std::thread::scope(|scope| -> Result<f64, String> {
        let (rx, rx_engine) = (&rx, &rx_engine);
        let receive = move || -> Result<f64, String> {
            let mut first = None;
            for i in 1..=count {
                let m = next_with(rx, receiving)?;
                first.get_or_insert_with(Instant::now);
                if m.opcode() != OpCode::Signal || m.status() != Status::Success {
                    return Err(format!("unexpected {:?} {}", m.opcode(), m.status()));
                }
                drop(m);
                if i % credit_every == 0 {
                    let mut credit = rx_engine.pool().message();
                    credit.header.opcode = OpCode::Signal;
                    credit.header.channel = s;
                    rx.post(credit).map_err(|e| e.error.to_string())?;
                }
            }
            let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
            Ok(count as f64 / secs.max(1e-9))
        };
        let handle = std::thread::Builder::new()
            .name("bench-receiver".into())
            .spawn_scoped(scope, receive)
            .map_err(|e| e.to_string())?;
        let mut credits = window;
        let mut sent = 0u64;
        while sent < count {
            while sent < credits.min(count) {
                let mut m = tx_engine.pool().message();
                m.header.opcode = OpCode::Signal;
                m.header.channel = c;
                m.header.message_id = sent + 1;
                m.body_mut().resize(payload, 0x5a);
                tx.post(m).map_err(|e| e.error.to_string())?;
                sent += 1;
            }
            if sent < count {
                let _credit = next(&tx)?;
                credits += credit_every;
            }
        }
        handle.join().map_err(|_| "receiver panicked".to_string())?
    })?;
    let allocs = (super::alloc::allocations() - allocs_before) as f64 / count as f64;
    if std::env::var_os("TOFU_BENCH_DEBUG").is_some() {
        eprintln!(
            "tx {:?} rx {:?} per msg: tx iter {:.3} rx iter {:.3}",
            tx_engine.stats(),
            rx_engine.stats(),
            tx_engine.stats().iterations as f64 / count as f64,
            rx_engine.stats().iterations as f64 / count as f64
        );
    }
    Ok((receiver, allocs))
}

/// Round-trip quantiles (p50, p99, p99.9) in microseconds, one Request in flight.
fn tofu_rtt(
    backend: Backend,
    t: Transport,
    count: u64,
    receiving: Receiving,
) -> Result<[f64; 3], String> {
    let ce = engine(backend, 64, 256)?;
    let se = engine(backend, 64, 256)?;
    let client = ce.create_group().map_err(|e| e.to_string())?;
    let server = Arc::new(se.create_group().map_err(|e| e.to_string())?);
    let (c, _) = pair(&server, &client, &address(t)?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(mut m)) = server.wait_receive(Some(Duration::from_millis(100))) else {
                    continue;
                };
                if m.opcode() == OpCode::Request && m.make_echo().is_ok() {
                    let _ = server.post(m);
                }
            }
        })
    };
    let mut samples = Vec::with_capacity(count as usize);
    for id in 1..=count {
        let mut m = ce.pool().message();
        m.header.opcode = OpCode::Request;
        m.header.channel = c;
        m.header.message_id = id;
        m.body_mut().resize(64, 1);
        let t0 = Instant::now();
        client.post(m).map_err(|e| e.error.to_string())?;
        let r = next_with(&client, receiving)?;
        samples.push(t0.elapsed());
        if r.message_id() != id {
            return Err("round trip out of order".into());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    if std::env::var_os("TOFU_BENCH_DEBUG").is_some() {
        eprintln!("rtt: client {:?} server {:?}", ce.stats(), se.stats());
    }
    samples.sort();
    Ok([
        us(quantile(&samples, 0.5)),
        us(quantile(&samples, 0.99)),
        us(quantile(&samples, 0.999)),
    ])
}

/// Aggregate Signals per second into one engine holding `n` connections, and the heap memory
/// that engine spends per idle connection (socket buffers are kernel memory, not counted).
///
/// The clients run in a child process (`tofu bench-clients`), so each process needs only `n`
/// descriptors and the server engine's memory is measured alone.
fn many_channels(
    backend: Backend,
    n: usize,
    quick: bool,
    burst: u64,
) -> Result<(f64, f64), String> {
    raise_fd_limit(n + 256)?;
    let pool = (n + 1024).min(u16::MAX as usize) as u16;
    let se = engine(backend, 1024, pool)?;
    let server = se.create_group().map_err(|e| e.to_string())?;
    let addr = address(Transport::Tcp)?;
    let mut m = Message::new();
    addr.format_listen(&mut m).map_err(|e| e.to_string())?;
    server.post(m).map_err(|e| e.error.to_string())?;
    if next(&server)?.status() != Status::Success {
        return Err("listen failed".into());
    }
    let per_channel = many_per_channel(quick);
    let heap_before = super::alloc::live_bytes();
    let mut clients = ClientProcess::start(
        &addr,
        n,
        per_channel,
        burst,
        &["--backend", &backend.to_string()],
    )?;

    let mut answered = 0;
    while answered < n {
        let mut h = next(&server)?;
        if h.opcode() == OpCode::HelloRequest {
            h.make_echo().map_err(|e| e.to_string())?;
            server.post(h).map_err(|e| e.error.to_string())?;
            answered += 1;
        }
    }
    clients.ready()?;
    std::thread::sleep(Duration::from_millis(100));
    let per_idle = super::alloc::live_bytes().saturating_sub(heap_before) as f64 / n as f64;

    clients.go()?;
    let total = per_channel * n as u64;
    let mut first = None;
    let mut got = 0;
    while got < total {
        let m = next(&server)?;
        first.get_or_insert_with(Instant::now);
        if m.opcode() == OpCode::Signal && m.status() == Status::Success {
            got += 1;
        }
    }
    let rate = total as f64 / first.map_or(1e-9, |f| f.elapsed().as_secs_f64());
    clients.finish();
    Ok((rate, per_idle))
}

/// A `tofu bench-clients` child process (the client side of the many-connections figures):
/// it connects, says `ready`, sends on `go`, and exits once its stdin closes.
struct ClientProcess {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    stdin: std::process::ChildStdin,
}

impl ClientProcess {
    /// Starts `n` connections to `addr`, `per_channel` messages each, `burst` per turn;
    /// `extra` arguments choose the kind of client.
    fn start(
        addr: &Address,
        n: usize,
        per_channel: u64,
        burst: u64,
        extra: &[&str],
    ) -> Result<ClientProcess, String> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args([
                "bench-clients",
                &addr.to_string(),
                "--channels",
                &n.to_string(),
            ])
            .args([
                "--messages",
                &per_channel.to_string(),
                "--burst",
                &burst.to_string(),
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the client process: {e}"))?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let stdin = child.stdin.take().ok_or("no child stdin")?;
        Ok(ClientProcess {
            child,
            lines: std::io::BufReader::new(stdout).lines(),
            stdin,
        })
    }

    /// Waits until every connection is made.
    fn ready(&mut self) -> Result<(), String> {
        match self.lines.next() {
            Some(Ok(l)) if l == "ready" => Ok(()),
            other => Err(format!("client process failed: {other:?}")),
        }
    }

    /// Starts the sending.
    fn go(&mut self) -> Result<(), String> {
        writeln!(self.stdin, "go").map_err(|e| e.to_string())
    }

    /// Lets the process end (its connections close) and waits for it.
    fn finish(self) {
        let ClientProcess {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let _ = child.wait();
    }
}

/// The client side of [`many_channels`], run in its own process: connects `n` channels,
/// prints `ready`, waits for `go` on stdin, sends `messages` Signals per channel (`burst` to
/// one channel before the next one's turn), and exits when stdin closes.
pub fn clients(
    backend: Backend,
    addr: &Address,
    n: usize,
    messages: u64,
    burst: u64,
) -> Result<(), String> {
    raise_fd_limit(n + 256)?;
    let pool = (n + 1024).min(u16::MAX as usize) as u16;
    let ce = engine(backend, 1024, pool)?;
    let client = ce.create_group().map_err(|e| e.to_string())?;
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let mut m = ce.pool().message();
        addr.format_connect(&mut m).map_err(|e| e.to_string())?;
        channels.push(client.post(m).map_err(|e| e.error.to_string())?.channel);
    }
    let mut connected = 0;
    while connected < n {
        let r = next(&client)?;
        if r.opcode() == OpCode::HelloResponse && r.status() == Status::Success {
            connected += 1;
        } else if r.status() != Status::Success {
            return Err(format!("connect failed: {}", r.status()));
        }
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let burst = burst.max(1);
    for first in (0..messages).step_by(burst as usize) {
        for &c in &channels {
            for id in first + 1..=(first + burst).min(messages) {
                let mut m = ce.pool().message();
                m.header.opcode = OpCode::Signal;
                m.header.channel = c;
                m.header.message_id = id;
                m.body_mut().resize(64, 3);
                client.post(m).map_err(|e| e.error.to_string())?;
            }
        }
    }
    // Stay until the parent has counted everything (it closes our stdin).
    let _ = std::io::stdin().read_line(&mut line);
    Ok(())
}

/// Messages each client channel sends in the many-connections figure.
fn many_per_channel(quick: bool) -> u64 {
    if quick {
        20
    } else {
        100
    }
}

/// The many-connections pattern over raw sockets: `n` TCP connections on the loopback from
/// a child process (`tofu bench-clients --raw`, as the tofu clients are) writing
/// `per_channel` frames of 64-byte Signals on each, round-robin with `burst` frames per
/// connection per turn (one `write` each turn), and one reader thread here on a plain
/// level-triggered epoll loop reading each ready socket once per wake-up. Messages per
/// second at the reader, first byte to last; `None` without epoll.
fn raw_many(n: usize, per_channel: u64, burst: u64) -> Result<Option<f64>, String> {
    let mut set = match os::ReadSet::new(1024) {
        Ok(set) => set,
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return Ok(None),
        Err(e) => return Err(format!("epoll: {e}")),
    };
    raise_fd_limit(n + 256)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let addr = Address::tcp("127.0.0.1", port);
    let mut clients = ClientProcess::start(&addr, n, per_channel, burst, &["--raw"])?;
    let mut readers = Vec::with_capacity(n);
    for key in 0..n {
        let (r, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        r.set_nonblocking(true).map_err(|e| e.to_string())?;
        set.add(&r, key as u64)
            .map_err(|e| format!("epoll add: {e}"))?;
        readers.push(r);
    }
    clients.ready()?;
    let total = per_channel * n as u64 * (HEADER_LEN + 64) as u64;
    clients.go()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut first = None;
    while got < total {
        let mut err = None;
        set.wait(|key| match (&readers[key as usize]).read(&mut buf) {
            Ok(0) => err = Some("a raw client closed early".to_string()),
            Ok(k) => {
                first.get_or_insert_with(Instant::now);
                got += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => err = Some(e.to_string()),
        })
        .map_err(|e| format!("epoll wait: {e}"))?;
        if let Some(e) = err {
            return Err(format!("raw read: {e}"));
        }
    }
    let secs = first.map_or(1e-9, |f| f.elapsed().as_secs_f64());
    clients.finish();
    Ok(Some((per_channel * n as u64) as f64 / secs))
}

/// The client process of [`raw_many`]: `n` plain TCP connections to `addr`; on "go" from
/// stdin, `messages` 64-byte Signal frames on each, round-robin, `burst` per connection per
/// turn in one `write`; then waits for stdin to close (the connections stay open until the
/// reader has everything).
pub fn raw_clients(addr: &Address, n: usize, messages: u64, burst: u64) -> Result<(), String> {
    let Address::Tcp { host, port } = addr else {
        return Err("the raw clients connect to a tcp| address".into());
    };
    raise_fd_limit(n + 256)?;
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        let w = TcpStream::connect((host.as_str(), *port)).map_err(|e| format!("connect: {e}"))?;
        w.set_nodelay(true).map_err(|e| e.to_string())?;
        writers.push(w);
    }
    let frame = {
        let m = Message::with_opcode(OpCode::Signal).with_body(&[0x5a; 64]);
        let mut out = Vec::new();
        tofu::wire::encode(&m, &mut out).map_err(|e| e.to_string())?;
        out
    };
    let burst = burst.max(1);
    let turn: Vec<u8> = frame.repeat(burst as usize);
    println!("ready");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let mut sent = 0;
    while sent < messages {
        let k = burst.min(messages - sent);
        for w in writers.iter_mut() {
            w.write_all(&turn[..k as usize * frame.len()])
                .map_err(|e| format!("raw write: {e}"))?;
        }
        sent += k;
    }
    // Until the reader is done (it closes our stdin).
    let _ = std::io::stdin().read_line(&mut line);
    Ok(())
}

/// Reactor wake-ups of an engine holding `n` idle connections for `d`.
fn idle_wakeups(backend: Backend, n: usize, d: Duration) -> Result<(usize, Duration, u64), String> {
    raise_fd_limit(2 * n + 256)?;
    let e = engine(backend, 1024, (n * 2 + 64) as u16)?;
    let server = e.create_group().map_err(|e| e.to_string())?;
    let client = e.create_group().map_err(|e| e.to_string())?;
    let addr = address(Transport::Tcp)?;
    let mut m = Message::new();
    addr.format_listen(&mut m).map_err(|e| e.to_string())?;
    server.post(m).map_err(|e| e.error.to_string())?;
    next(&server)?;
    for _ in 0..n {
        let mut m = e.pool().message();
        addr.format_connect(&mut m).map_err(|e| e.to_string())?;
        client.post(m).map_err(|e| e.error.to_string())?;
    }
    for _ in 0..n {
        let mut h = next(&server)?;
        h.make_echo().map_err(|e| e.to_string())?;
        server.post(h).map_err(|e| e.error.to_string())?;
    }
    for _ in 0..n {
        next(&client)?;
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = e.stats().iterations;
    std::thread::sleep(d);
    let after = e.stats().iterations;
    Ok((n, d, after - before))
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    super::client::quantile(sorted, q)
}

fn with_affinity<T: Send>(pinned: bool, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    if !pinned {
        return Ok(f());
    }
    // Threads inherit the affinity of the thread that creates them: run the measurement on a
    // fresh thread pinned to CPU 0, so its engines' reactor threads are pinned too.
    std::thread::scope(|s| {
        s.spawn(|| {
            os::pin_to_cpu0()?;
            Ok(f())
        })
        .join()
        .map_err(|_| "pinned run panicked".to_string())?
    })
}

fn raise_fd_limit(want: usize) -> Result<(), String> {
    os::raise_fd_limit(want as u64).map_err(|e| {
        format!("{want} file descriptors are needed and the limit cannot be raised: {e}")
    })
}

// ---------------------------------------------------------------------------------------------
// Output

pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let p = |o: &mut String, s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    p(&mut o, format!("machine: {}", r.machine));
    p(
        &mut o,
        format!(
            "backend: {}, runs per figure: {} (median [min..max]), one-stream window: {} KiB, many-connections burst: {}{}",
            r.settings.backend,
            r.settings.runs,
            r.settings.window_bytes / 1024,
            r.settings.many_burst,
            if r.settings.quick { ", quick" } else { "" }
        ),
    );
    p(&mut o, String::new());
    p(
        &mut o,
        "one stream (Signals, one channel), messages/s; headline rows: the user path (one engine, \
         default options, plain send loop); /tuned: the tuned harness; raw: best of the runs"
            .into(),
    );
    p(
        &mut o,
        format!(
            "{:<15} {:>7} {:>12} {:>28} {:>7} {:>10} {:>11} {:>8} {:>9}",
            "",
            "payload",
            "raw best",
            "tofu",
            "ratio",
            "tofu MB/s",
            "allocs/msg",
            "CPU ns",
            "heap KiB"
        ),
    );
    for s in &r.streams {
        p(
            &mut o,
            format!(
                "{:<15} {:>7} {:>12.0} {:>28} {:>7.3} {:>10.1} {:>11.3} {:>8} {:>9}",
                label(s.transport, s.receiving, s.harness),
                s.payload,
                s.raw.max,
                fmt_spread(&s.tofu, 0),
                s.tofu.median / s.raw.max,
                s.tofu.median * (s.payload + HEADER_LEN) as f64 / 1e6,
                s.allocs_per_msg,
                s.cpu_ns_per_msg
                    .map_or_else(|| "-".to_string(), |c| format!("{c:.0}")),
                s.peak_heap
                    .map_or_else(|| "-".to_string(), |b| format!("{}", b / 1024))
            ),
        );
    }
    p(&mut o, String::new());
    p(
        &mut o,
        "round trip (Request/Response, 64 B, one in flight), microseconds; user path: `Server` \
         recipe and `request`; raw: best p50 of the runs"
            .into(),
    );
    p(
        &mut o,
        format!(
            "{:<15} {:<7} {:>8} {:>24} {:>7} {:>24} {:>24}",
            "", "threads", "raw p50", "tofu p50", "ratio", "tofu p99", "tofu p99.9"
        ),
    );
    for t in &r.rtts {
        p(
            &mut o,
            format!(
                "{:<15} {:<7} {:>8.1} {:>24} {:>7.2} {:>24} {:>24}",
                label(t.transport, t.receiving, t.harness),
                if t.pinned { "pinned" } else { "free" },
                t.raw_p50.min,
                fmt_spread(&t.p50, 1),
                t.p50.median / t.raw_p50.min,
                fmt_spread(&t.p99, 1),
                fmt_spread(&t.p999, 1)
            ),
        );
    }
    if !r.many.is_empty() {
        p(&mut o, String::new());
        p(
            &mut o,
            "many connections (TCP, 64 B Signals), aggregate messages/s".into(),
        );
        p(
            &mut o,
            format!(
                "{:<8} {:>9} {:>28} {:>12} {:>7} {:>16} {:>22}",
                "backend",
                "channels",
                "aggregate",
                "raw best",
                "ratio",
                "vs one stream",
                "bytes per idle channel"
            ),
        );
        let one = r
            .streams
            .iter()
            .find(|s| {
                s.transport == Transport::Tcp
                    && s.payload == 64
                    && s.receiving == Receiving::Blocking
                    && s.harness == Harness::User
            })
            .map_or(f64::NAN, |s| s.tofu.median);
        for m in &r.many {
            p(
                &mut o,
                format!(
                    "{:<8} {:>9} {:>28} {:>12} {:>7} {:>16.2} {:>22.0}",
                    m.backend.to_string(),
                    m.channels,
                    fmt_spread(&m.rate, 0),
                    m.raw
                        .map_or_else(|| "-".to_string(), |r| format!("{:.0}", r.max)),
                    m.raw.map_or_else(
                        || "-".to_string(),
                        |r| format!("{:.3}", m.rate.median / r.max)
                    ),
                    m.rate.median / one,
                    m.bytes_per_idle_channel
                ),
            );
        }
    }
    if r.streams.iter().any(|s| s.transport == Transport::Tls) {
        p(&mut o, String::new());
        p(
            &mut o,
            "TLS vs plain TCP, the user path (same run): tls / tcp messages/s; '2 engines': \
             each end in its own engine, as between machines"
                .into(),
        );
        for s in r.streams.iter().filter(|s| s.transport == Transport::Tls) {
            let tcp = r.streams.iter().find(|x| {
                x.transport == Transport::Tcp
                    && x.payload == s.payload
                    && x.receiving == Receiving::Blocking
                    && x.harness == s.harness
            });
            if let Some(tcp) = tcp {
                p(
                    &mut o,
                    format!(
                        "{:>7} B{:<11} {:>10.0} / {:>10.0} = {:.2}",
                        s.payload,
                        if s.harness == Harness::TwoEngines {
                            ", 2 engines"
                        } else {
                            ""
                        },
                        s.tofu.median,
                        tcp.tofu.median,
                        s.tofu.median / tcp.tofu.median
                    ),
                );
            }
        }
    }
    if let Some(h) = &r.handshakes {
        p(
            &mut o,
            format!(
                "TLS handshakes (connect, Hello answered, abort; one at a time): {} per second",
                fmt_spread(h, 0)
            ),
        );
    }
    if let Some((n, d, w)) = r.idle {
        p(&mut o, String::new());
        p(
            &mut o,
            format!(
                "idle: {n} idle channels for {} s: {w} reactor wake-ups ({:.1} per minute)",
                d.as_secs(),
                w as f64 * 60.0 / d.as_secs_f64()
            ),
        );
    }
    p(
        &mut o,
        format!(
            "memory: an idle engine with default options and one group: {:.1} KiB of heap (the \
             reactor thread's stack aside); a busy channel: the `heap KiB` column of the user-path \
             rows (both ends, peak)",
            r.idle_engine_bytes as f64 / 1024.0
        ),
    );
    o
}

fn fmt_spread(s: &Spread, decimals: usize) -> String {
    format!(
        "{:.*} [{:.*}..{:.*}]",
        decimals, s.median, decimals, s.min, decimals, s.max
    )
}

pub fn json(r: &Report) -> String {
    let streams: Vec<String> = r
        .streams
        .iter()
        .map(|s| {
            format!(
                "{{\"transport\":\"{}\",\"receive\":\"{}\",\"harness\":\"{}\",\"payload\":{},\"raw\":{},\"tofu\":{},\"ratio_to_raw_best\":{:.4},\"allocs_per_msg\":{:.4},\"cpu_ns_per_msg\":{},\"peak_heap_bytes\":{}}}",
                s.transport,
                s.receiving.json(),
                s.harness.json(),
                s.payload,
                s.raw.json(),
                s.tofu.json(),
                s.tofu.median / s.raw.max,
                s.allocs_per_msg,
                s.cpu_ns_per_msg
                    .map_or_else(|| "null".to_string(), |c| format!("{c:.1}")),
                s.peak_heap
                    .map_or_else(|| "null".to_string(), |b| b.to_string())
            )
        })
        .collect();
    let rtts: Vec<String> = r
        .rtts
        .iter()
        .map(|t| {
            format!(
                "{{\"transport\":\"{}\",\"receive\":\"{}\",\"harness\":\"{}\",\"pinned\":{},\"raw_p50_us\":{},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
                t.transport,
                t.receiving.json(),
                t.harness.json(),
                t.pinned,
                t.raw_p50.json(),
                t.p50.json(),
                t.p99.json(),
                t.p999.json()
            )
        })
        .collect();
    let many: Vec<String> = r
        .many
        .iter()
        .map(|m| {
            format!(
                "{{\"backend\":\"{}\",\"channels\":{},\"rate\":{},\"bytes_per_idle_channel\":{:.0},\"raw\":{}}}",
                m.backend,
                m.channels,
                m.rate.json(),
                m.bytes_per_idle_channel,
                m.raw.as_ref().map_or_else(|| "null".to_string(), Spread::json)
            )
        })
        .collect();
    let idle = match r.idle {
        Some((n, d, w)) => format!(
            "{{\"channels\":{n},\"seconds\":{},\"wakeups\":{w}}}",
            d.as_secs()
        ),
        None => "null".into(),
    };
    format!(
        "{{\"command\":\"bench\",\"machine\":{},\"backend\":\"{}\",\"runs\":{},\"window_bytes\":{},\"many_burst\":{},\"one_stream\":[{}],\"round_trip\":[{}],\"many\":[{}],\"idle\":{},\"tls_handshakes_per_s\":{},\"idle_engine_bytes\":{}}}",
        json_str(&r.machine),
        r.settings.backend,
        r.settings.runs,
        r.settings.window_bytes,
        r.settings.many_burst,
        streams.join(","),
        rtts.join(","),
        many.join(","),
        idle,
        r.handshakes.as_ref().map_or_else(|| "null".to_string(), Spread::json),
        r.idle_engine_bytes
    )
}

/// An SVG bar chart of one-stream throughput (MB/s) by payload, tofu next to the raw limit.
pub fn svg(r: &Report) -> String {
    let (w, h) = (880.0, 420.0);
    let (left, right, top, bottom) = (70.0, 20.0, 50.0, 70.0);
    // The plot shows the user path, blocking, at every payload (the async rows are 64 B
    // only; the tuned rows are in the table).
    let rows: Vec<&StreamRow> = r
        .streams
        .iter()
        .filter(|s| s.receiving == Receiving::Blocking && s.harness == Harness::User)
        .filter(|s| s.transport != Transport::Tls)
        .collect();
    let mbps = |rate: f64, payload: usize| rate * (payload + HEADER_LEN) as f64 / 1e6;
    let max = rows
        .iter()
        .map(|s| mbps(s.raw.max, s.payload).max(mbps(s.tofu.median, s.payload)))
        .fold(1.0, f64::max);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let group_w = plot_w / rows.len().max(1) as f64;
    let bar_w = group_w * 0.35;
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">tofu one-stream throughput, the user path, vs the raw-socket limit (MB/s, tofu median of {}, raw best)</text>\n",
        w / 2.0,
        r.settings.runs
    );
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = top + plot_h - plot_h * i as f64 / 4.0;
        o.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            w - right,
            left - 6.0,
            y + 4.0
        ));
    }
    for (i, s) in rows.iter().enumerate() {
        let x0 = left + group_w * i as f64 + group_w * 0.15;
        for (j, (v, color)) in [
            (mbps(s.raw.max, s.payload), "#9aa5b1"),
            (mbps(s.tofu.median, s.payload), "#2f7ed8"),
        ]
        .iter()
        .enumerate()
        {
            let bh = plot_h * v / max;
            let x = x0 + bar_w * j as f64;
            o.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{color}\"/>\n",
                top + plot_h - bh,
                bar_w - 2.0
            ));
        }
        o.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} {} B</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{:.2}x</text>\n",
            x0 + bar_w,
            top + plot_h + 18.0,
            s.transport,
            s.payload,
            x0 + bar_w,
            top + plot_h + 34.0,
            s.tofu.median / s.raw.max
        ));
    }
    o.push_str(&format!(
        "<rect x=\"{left}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#9aa5b1\"/><text x=\"{}\" y=\"{}\">raw limit (std sockets, 64 KiB coalescing writer)</text>\n\
         <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#2f7ed8\"/><text x=\"{}\" y=\"{}\">tofu (engine to engine, Signals on one channel)</text>\n</svg>\n",
        h - 24.0,
        left + 16.0,
        h - 14.0,
        left + 360.0,
        h - 24.0,
        left + 376.0,
        h - 14.0
    ));
    o
}
