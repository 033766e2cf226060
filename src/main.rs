//! `tofu`: run and probe the messaging engine from a shell.
//!
//! * `tofu` / `tofu demo`: a self-contained demonstration (echo service, several clients).
//! * `tofu serve ADDR...`: listen, answer Hello and Bye, optionally echo.
//! * `tofu ping ADDR`: send Requests, verify every Response, report throughput and latency.
//!
//! Addresses use tofu's syntax: `tcp|host|port`, `uds|path`, `uds|@name` (Linux abstract).

#![deny(unsafe_code)]

mod cli;

/// Counts live heap bytes and allocations, so `tofu bench` can report engine memory per idle
/// channel and allocations per message. Two relaxed atomic adds per allocation.
#[global_allocator]
static ALLOC: cli::alloc::Counting = cli::alloc::Counting;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use cli::client::{self, ClientOptions, ClientStats};
use cli::{json_str, service};
use tofu::recipes::Server;
use tofu::Backend;
use tofu::{Address, Engine, EngineOptions, PoolOptions};

#[derive(Parser)]
#[command(
    name = "tofu",
    version,
    about = "Asynchronous peer-to-peer messaging engine (tofu for Rust)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log engine events (connects, accepts, closes) to stderr; twice for more.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Run an echo service and several clients over TCP and UDS, then print a summary.
    Demo(DemoArgs),
    /// Listen on addresses and answer peers.
    Serve(ServeArgs),
    /// Connect, send Requests, verify every Response, report throughput and round trips.
    Ping(PingArgs),
    /// Measure tofu against the raw-socket limit in the same run.
    Bench(BenchArgs),
    /// Run many sessions with random sizes, closes, reconnects and aborts; fail on any lost
    /// or corrupted message or on resource growth.
    Soak(SoakArgs),
    /// The client process of `bench`'s many-connections figure (internal).
    #[command(hide = true)]
    BenchClients(BenchClientsArgs),
}

#[derive(Args)]
struct SoakArgs {
    /// How long to run, in minutes (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 60)]
    report_secs: u64,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Poller backend.
    #[arg(long, default_value_t = Backend::default())]
    backend: Backend,
}

#[derive(Args)]
struct BenchClientsArgs {
    #[arg(value_parser = parse_address)]
    addr: Address,
    #[arg(long)]
    channels: usize,
    #[arg(long)]
    messages: u64,
    #[arg(long, default_value_t = 1)]
    burst: u64,
    #[arg(long, default_value_t = Backend::default())]
    backend: Backend,
    /// Plain sockets instead of a tofu engine (the raw baseline).
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Runs per figure (the median is reported, with min and max).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A tenth of the messages per run: a smoke run, not for publishing.
    #[arg(long)]
    quick: bool,
    /// One-stream payload sizes in bytes (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "0,64,1024,65000")]
    payloads: Vec<u16>,
    /// Skip the round-trip figures.
    #[arg(long)]
    no_round_trip: bool,
    /// Channel counts for the many-connections figure (comma separated; 0 to skip).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    many: Vec<usize>,
    /// Seconds to watch an idle engine for wake-ups (0 to skip).
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// One-stream flow-control window in KiB of frames in flight (64 to 16384 messages).
    #[arg(long, default_value_t = 256)]
    window_kib: usize,
    /// Many connections: messages each client channel posts in a row before the next
    /// channel's turn (1: round-robin, one message per channel per round).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    many_burst: u64,
    /// Also write the throughput plot (SVG) to this file.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct Common {
    /// Poller backend: epoll or poll (Linux), iocp (Windows).
    #[arg(long, default_value_t = Backend::default())]
    backend: Backend,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct DemoArgs {
    /// Client sessions (split between TCP and UDS where UDS exists).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests per client.
    #[arg(long, default_value_t = 20000)]
    messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Requests in flight per client.
    #[arg(long, default_value_t = 16)]
    pipeline: usize,
    #[command(flatten)]
    common: Common,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            clients: 8,
            messages: 20000,
            size: 64,
            pipeline: 16,
            common: Common {
                backend: Backend::default(),
                json: false,
            },
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Addresses to listen on, e.g. 'tcp|127.0.0.1|7099' 'uds|/tmp/tofu.sock'.
    #[arg(required = true, value_parser = parse_address)]
    addrs: Vec<Address>,
    /// Answer every Request with a Response (same message_id, headers and body).
    #[arg(long)]
    echo: bool,
    /// Stop after this many connections have closed.
    #[arg(long)]
    max_conns: Option<u64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct PingArgs {
    /// Address to connect to, e.g. 'tcp|127.0.0.1|7099'.
    #[arg(value_parser = parse_address)]
    addr: Address,
    /// Requests to send (at least 1).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Body size in bytes (at most 65535).
    #[arg(long, default_value_t = 64)]
    size: u16,
    /// Requests in flight.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Text header sent with every Request and expected back, NAME:VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Seconds to wait for any answer.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    #[command(flatten)]
    common: Common,
}

fn parse_address(s: &str) -> Result<Address, String> {
    let addr = s.parse::<Address>().map_err(|e| {
        format!(
            "'{s}' is not an address ({}): use 'tcp|host|port', 'uds|path' or 'uds|@name'",
            e.problem()
        )
    })?;
    if addr.is_tls() {
        return Err(format!(
            "'{s}': this command speaks tcp| and uds| only (it has no TLS certificates; \
             `tofu bench`, built with the tls feature, measures TLS with test ones)"
        ));
    }
    Ok(addr)
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() && !v.is_empty() => {
            Ok((n.trim().to_string(), v.to_string()))
        }
        _ => Err(format!("'{s}' is not NAME:VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.verbose > 0 {
        let level = if cli.verbose > 1 {
            tracing::Level::TRACE
        } else {
            tracing::Level::DEBUG
        };
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .init();
    }
    let r = match cli.command {
        None => demo(DemoArgs::default()),
        Some(Command::Demo(a)) => demo(a),
        Some(Command::Serve(a)) => serve(a),
        Some(Command::Ping(a)) => ping(a),
        Some(Command::Bench(a)) => bench(a),
        Some(Command::Soak(a)) => soak(a),
        Some(Command::BenchClients(a)) if a.raw => {
            cli::bench::raw_clients(&a.addr, a.channels, a.messages, a.burst)
        }
        Some(Command::BenchClients(a)) => {
            cli::bench::clients(a.backend, &a.addr, a.channels, a.messages, a.burst)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("tofu: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn start_engine(backend: Backend, pool: PoolOptions) -> Result<Engine, String> {
    Engine::new(EngineOptions {
        pool,
        backend,
        ..EngineOptions::default()
    })
    .map_err(|e| format!("cannot start the engine ({backend}): {e}"))
}

// ---------------------------------------------------------------------------------------------

fn demo(a: DemoArgs) -> Result<(), String> {
    let pool = PoolOptions {
        initial: 256,
        max: 1024,
    };
    let server_engine = start_engine(a.common.backend, pool)?;
    let client_engine = start_engine(a.common.backend, pool)?;
    let port = tofu::testing::free_tcp_port().map_err(|e| format!("no free TCP port: {e}"))?;
    let mut addrs = vec![Address::tcp("127.0.0.1", port)];
    let uds = cfg!(unix).then(|| Address::uds(tofu::testing::temp_uds_path().to_string_lossy()));
    addrs.extend(uds.clone());

    let server = service::echo_server(&server_engine, &addrs)?;

    let opts = ClientOptions {
        count: a.messages,
        size: a.size,
        pipeline: a.pipeline,
        headers: vec![("x-demo".into(), "tofu".into())],
        timeout: Duration::from_secs(10),
        progress: None,
    };
    let started = Instant::now();
    let results: Vec<(Address, Result<ClientStats, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.clients)
            .map(|i| {
                let addr = addrs[i % addrs.len()].clone();
                let (engine, opts) = (&client_engine, &opts);
                s.spawn(move || {
                    let r = client::run(engine, &addr, opts);
                    (addr, r)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (addrs[0].clone(), Err("client thread panicked".into())))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let served = server.stop().stats;

    let mut rtts = Vec::new();
    let mut answered = 0;
    let mut errors = Vec::new();
    for (addr, r) in &results {
        match r {
            Ok(st) => {
                answered += st.received;
                rtts.extend_from_slice(&st.rtts);
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    rtts.sort();
    let expected = a.messages * a.clients as u64;
    let rate = answered as f64 / elapsed.as_secs_f64();
    let (p50, p99) = (client::quantile(&rtts, 0.5), client::quantile(&rtts, 0.99));
    if a.common.json {
        println!(
            "{{\"command\":\"demo\",\"backend\":{},\"clients\":{},\"connections\":{},\"requests\":{},\"responses\":{},\"echoed\":{},\"elapsed_s\":{:.6},\"round_trips_per_s\":{:.1},\"rtt_p50_us\":{:.1},\"rtt_p99_us\":{:.1},\"errors\":[{}]}}",
            json_str(&a.common.backend.to_string()),
            a.clients,
            served.connections,
            expected,
            answered,
            served.echoed,
            elapsed.as_secs_f64(),
            rate,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            errors.iter().map(|e| json_str(e)).collect::<Vec<_>>().join(",")
        );
    } else {
        let transports = if uds.is_some() { "TCP and UDS" } else { "TCP" };
        println!(
            "tofu demo: one echo service listening on {transports}, {} client sessions",
            a.clients
        );
        for addr in &addrs {
            println!("  listening   {addr}");
        }
        println!("  backend     {}", a.common.backend);
        println!(
            "  each client {} requests of {} B, {} in flight, then ByeRequest",
            a.messages, a.size, a.pipeline
        );
        println!();
        println!("connections   {}", served.connections);
        println!("messages      {expected} requests, {answered} verified responses");
        println!("elapsed       {:.3} s", elapsed.as_secs_f64());
        println!("rate          {rate:.0} round trips/s");
        println!(
            "round trip    p50 {:.1} us, p99 {:.1} us",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
        println!("errors        {}", errors.len());
        for e in &errors {
            println!("  {e}");
        }
    }
    if errors.is_empty() && answered == expected {
        Ok(())
    } else {
        Err(format!("{} of {expected} requests answered", answered))
    }
}

// ---------------------------------------------------------------------------------------------

fn serve(a: ServeArgs) -> Result<(), String> {
    let engine = start_engine(
        a.common.backend,
        PoolOptions {
            initial: 256,
            max: 4096,
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    }
    let service = service::Serve {
        stats: service::ServeStats::default(),
        echo: a.echo,
        max_closed: a.max_conns,
        log: !a.common.json,
    };
    let server = Server::start(&engine, &a.addrs, service).map_err(|e| e.to_string())?;
    if !a.common.json {
        for addr in server.addresses() {
            println!("listening on {addr}");
        }
        let _ = std::io::stdout().flush();
    }
    let st = service::run_until(server, &stop);
    if a.common.json {
        println!(
            "{{\"command\":\"serve\",\"connections\":{},\"closed\":{},\"echoed\":{}}}",
            st.connections, st.closed, st.echoed
        );
    } else {
        println!(
            "served {} connections ({} closed), echoed {} messages",
            st.connections, st.closed, st.echoed
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn ping(a: PingArgs) -> Result<(), String> {
    if a.pipeline == 0 {
        return Err("--pipeline must be at least 1".into());
    }
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        return Err("--timeout must be a positive number of seconds".into());
    }
    let engine = start_engine(
        a.common.backend,
        PoolOptions {
            initial: 64,
            max: 1024,
        },
    )?;
    let show_progress = !a.common.json && std::io::stderr().is_terminal() && a.count >= 1000;
    let opts = ClientOptions {
        count: a.count,
        size: usize::from(a.size),
        pipeline: a.pipeline,
        headers: a.headers.clone(),
        timeout: Duration::from_secs_f64(a.timeout),
        progress: show_progress.then_some(progress as fn(u64, u64)),
    };
    let r = client::run(&engine, &a.addr, &opts);
    if show_progress {
        eprint!("\r\x1b[K");
    }
    let st = r?;
    let mut rtts = st.rtts;
    rtts.sort();
    let secs = st.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let rate = st.received as f64 / secs;
    let mbps = (st.received as f64 * f64::from(a.size) * 2.0) / secs / 1e6;
    let (p50, p99) = (client::quantile(&rtts, 0.5), client::quantile(&rtts, 0.99));
    if a.common.json {
        println!(
            "{{\"command\":\"ping\",\"address\":{},\"count\":{},\"size\":{},\"pipeline\":{},\"elapsed_s\":{:.6},\"messages_per_s\":{:.1},\"mb_per_s\":{:.3},\"rtt_p50_us\":{:.1},\"rtt_p99_us\":{:.1}}}",
            json_str(&a.addr.to_string()),
            st.received,
            a.size,
            a.pipeline,
            secs,
            rate,
            mbps,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    } else {
        println!(
            "{} requests of {} B to {} verified ({} in flight)",
            st.received, a.size, a.addr, a.pipeline
        );
        println!("throughput  {rate:.0} round trips/s, {mbps:.2} MB/s both ways");
        println!(
            "round trip  p50 {:.1} us, p99 {:.1} us",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    Ok(())
}

fn soak(a: SoakArgs) -> Result<(), String> {
    if !(a.minutes > 0.0 && a.minutes.is_finite()) || a.workers == 0 || a.report_secs == 0 {
        return Err("--minutes, --workers and --report-secs must be positive".into());
    }
    cli::soak::run(cli::soak::Settings {
        duration: Duration::from_secs_f64(a.minutes * 60.0),
        report_every: Duration::from_secs(a.report_secs),
        workers: a.workers,
        backend: a.backend,
    })
}

fn bench(a: BenchArgs) -> Result<(), String> {
    if a.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let settings = cli::bench::Settings {
        runs: a.runs,
        payloads: a.payloads.into_iter().map(usize::from).collect(),
        round_trip: !a.no_round_trip,
        quick: a.quick,
        backend: a.common.backend,
        many: a.many.into_iter().filter(|&n| n > 0).collect(),
        idle_secs: a.idle_secs,
        window_bytes: a.window_kib.saturating_mul(1024),
        many_burst: a.many_burst,
    };
    let tty = std::io::stderr().is_terminal();
    let report = cli::bench::run(settings, &|step| {
        if tty {
            eprint!("\r\x1b[Kmeasuring {step}...");
        }
    })?;
    if tty {
        eprint!("\r\x1b[K");
    }
    if a.common.json {
        println!("{}", cli::bench::json(&report));
    } else {
        print!("{}", cli::bench::table(&report));
    }
    if let Some(path) = a.svg {
        std::fs::write(&path, cli::bench::svg(&report))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn progress(done: u64, total: u64) {
    if done % 256 == 0 || done == total {
        eprint!("\r{done}/{total} verified");
    }
}
