//! The `tofu` command as a user runs it: serve + ping over TCP and UDS, failures, demo.

mod common;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use tofu::{Engine, OpCode, Status};

const TOFU: &str = env!("CARGO_BIN_EXE_tofu");

fn tofu(args: &[&str]) -> Output {
    Command::new(TOFU).args(args).output().expect("run tofu")
}

/// Starts `tofu serve` and waits until it reports every listener.
fn serve(args: &[&str]) -> Child {
    let mut child = Command::new(TOFU)
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tofu serve");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let want = args.iter().filter(|a| a.contains('|')).count();
    for _ in 0..want {
        let l = lines.next().expect("serve prints its listeners").unwrap();
        assert!(l.starts_with("listening on "), "{l}");
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn serve_and_ping_tcp_and_uds() {
    let tcp = tcp_loopback().to_string();
    let mut addrs = vec![tcp.clone()];
    if uds_available() {
        addrs.push(uds_temp().to_string());
    }
    let mut args: Vec<&str> = addrs.iter().map(String::as_str).collect();
    args.push("--echo");
    let mut server = serve(&args);
    for addr in &addrs {
        for (size, pipeline) in [("0", "1"), ("64", "8"), ("65535", "4")] {
            let o = tofu(&[
                "ping",
                addr,
                "--count",
                "200",
                "--size",
                size,
                "--pipeline",
                pipeline,
                "--header",
                "x-test:yes",
            ]);
            assert!(
                o.status.success(),
                "ping {addr} size {size}: {}",
                stderr(&o)
            );
            let out = stdout(&o);
            assert!(out.contains("200 requests of"), "{out}");
            assert!(out.contains("round trip"), "{out}");
        }
        let o = tofu(&["ping", addr, "--count", "50", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.trim_start().starts_with('{') && out.contains("\"count\":50"),
            "{out}"
        );
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn serve_stops_after_max_conns() {
    let addr = tcp_loopback().to_string();
    let mut server = serve(&[&addr, "--echo", "--max-conns", "2"]);
    for _ in 0..2 {
        assert!(tofu(&["ping", &addr, "--count", "3"]).status.success());
    }
    let status = wait_with_timeout(&mut server, PATIENCE).expect("serve exits by itself");
    assert!(status.success());
}

fn wait_with_timeout(child: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + d;
    while std::time::Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn ping_to_nothing_fails_clearly() {
    let addr = tcp_loopback().to_string();
    let o = tofu(&["ping", &addr, "--count", "1"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("connect to") && err.contains("ConnectFailed"),
        "{err}"
    );
    if cfg!(target_os = "linux") {
        assert!(
            err.contains("ConnectFailed (Connection refused"),
            "the OS's words: {err}"
        );
    }
}

#[test]
fn ping_without_echo_times_out_clearly() {
    let addr = tcp_loopback().to_string();
    let mut server = serve(&[&addr]);
    let o = tofu(&["ping", &addr, "--count", "1", "--timeout", "0.3"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("timeout"), "{}", stderr(&o));
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn ping_detects_a_corrupting_server() {
    let addr = tcp_loopback();
    let engine = Engine::with_defaults().unwrap();
    let g = engine.create_group().unwrap();
    listen(&g, &addr);
    let corrupt = std::thread::spawn(move || {
        // Echo, but flip a byte of every body.
        loop {
            let Ok(Some(mut m)) = g.wait_receive(Some(PATIENCE)) else {
                return;
            };
            match (m.opcode(), m.status()) {
                (OpCode::HelloRequest | OpCode::ByeRequest, Status::Success) => {}
                (OpCode::Request, Status::Success) => {
                    if let Some(b) = m.body_mut().first_mut() {
                        *b ^= 0xff;
                    }
                }
                _ => {
                    if m.status() == Status::ChannelClosed {
                        return;
                    }
                    continue;
                }
            }
            m.make_echo().unwrap();
            let _ = g.post(m);
        }
    });
    let o = tofu(&["ping", &addr.to_string(), "--count", "5", "--size", "16"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("mismatch"), "{}", stderr(&o));
    corrupt.join().unwrap();
}

#[test]
fn bad_arguments_are_explained() {
    let o = tofu(&["ping", "tcp|localhost"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not an address"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("tcp needs a host and a port"),
        "{}",
        stderr(&o)
    );
    let o = tofu(&["serve", "tls|127.0.0.1|0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tcp| and uds| only"), "{}", stderr(&o));
    let o = tofu(&["ping", "tcp|127.0.0.1|1", "--count", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--count"), "{}", stderr(&o));
    let o = tofu(&["ping", "tcp|127.0.0.1|1", "--backend", "kqueue"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("kqueue"), "{}", stderr(&o));
}

#[test]
fn demo_exits_zero_and_reports() {
    for backend in tofu::Backend::available() {
        let o = tofu(&[
            "demo",
            "--messages",
            "500",
            "--backend",
            &backend.to_string(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("errors        0"), "{out}");
        assert!(out.contains("4000 verified responses"), "{out}");
    }
    let o = tofu(&["demo", "--messages", "100", "--json"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("\"responses\":800"), "{}", stdout(&o));
}

#[test]
fn soak_runs_clean_for_a_few_seconds() {
    let o = tofu(&[
        "soak",
        "--minutes",
        "0.05",
        "--report-secs",
        "1",
        "--workers",
        "4",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("soak:") && out.contains(" 0 errors"), "{out}");
}
