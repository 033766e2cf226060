//! Shared vocabulary of the behaviour tests. Every scenario runs on every poller backend.
#![allow(dead_code)]

use std::time::Duration;

use tofu::Backend;
use tofu::{
    Address, ChannelGroup, Engine, EngineOptions, Message, OpCode, Origin, PoolOptions, Status,
};

pub use tofu::testing::{free_tcp_port, temp_uds_path};

/// Generous bound for anything that should happen "soon"; tests never assert on speed.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `scenario` once per poller backend of this platform.
pub fn on_every_backend(scenario: impl Fn(Backend)) {
    for &b in Backend::available() {
        eprintln!("--- backend {b}");
        scenario(b);
    }
}

pub fn engine(backend: Backend) -> Engine {
    Engine::new(EngineOptions {
        backend,
        ..EngineOptions::default()
    })
    .expect("engine starts")
}

/// An engine with `pool` whose receive limit is the pool's `max` frames, so that tests of
/// reading paused and resumed need only a few messages.
pub fn engine_with_pool(backend: Backend, pool: PoolOptions) -> Engine {
    Engine::new(EngineOptions {
        pool,
        backend,
        receive_limit: tofu::ReceiveLimit {
            messages: usize::from(pool.normalized().max),
            ..tofu::ReceiveLimit::default()
        },
        ..EngineOptions::default()
    })
    .expect("engine starts")
}

/// The next message, or a panic after [`PATIENCE`] (as [`recv_any`]).
pub fn recv(group: &ChannelGroup) -> Message {
    recv_any(group)
}

/// The next message, whatever it is, or a panic after [`PATIENCE`].
pub fn recv_any(group: &ChannelGroup) -> Message {
    match group.wait_receive(Some(PATIENCE)) {
        Ok(Some(m)) => m,
        Ok(None) => panic!("no message within {PATIENCE:?}"),
        Err(e) => panic!("wait_receive failed: {e}"),
    }
}

/// Accepts the next connection on `listener` and asserts that it ends (end of stream or a
/// reset) instead of staying open: what a peer sees of a channel aborted before its Hello
/// was answered. Under Wine, accepting a connection reset in the backlog already reports
/// `NotConnected`.
#[track_caller]
pub fn accepted_connection_ends(listener: &std::net::TcpListener) {
    use std::io::{ErrorKind, Read};
    let ended = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::NotConnected
        )
    };
    let mut peer = match listener.accept() {
        Ok((peer, _)) => peer,
        Err(e) => {
            assert!(ended(&e), "{e}");
            return;
        }
    };
    if let Err(e) = peer.set_read_timeout(Some(PATIENCE)) {
        assert!(ended(&e), "{e}");
        return;
    }
    if let Err(e) = peer.read_to_end(&mut Vec::new()) {
        assert!(ended(&e), "the connection should end, not stay open: {e}");
    }
}

/// Asserts that nothing arrives within `d`.
pub fn expect_silence(group: &ChannelGroup, d: Duration) {
    if let Some(m) = group.wait_receive(Some(d)).expect("group alive") {
        panic!("unexpected message {m:?}");
    }
}

#[track_caller]
pub fn expect(m: &Message, op: OpCode, status: Status) {
    assert_eq!((m.opcode(), m.status()), (op, status), "message {m:?}");
}

#[track_caller]
pub fn expect_closed_signal(m: &Message, channel: u16) {
    assert_eq!(m.opcode(), OpCode::Signal, "{m:?}");
    assert_eq!(m.status(), Status::ChannelClosed, "{m:?}");
    assert_eq!(m.origin(), Origin::Engine, "{m:?}");
    assert_eq!(m.channel(), channel, "{m:?}");
    assert!(
        m.is_channel_end(),
        "the final Signal, not a handed-back one: {m:?}"
    );
}

pub fn tcp_loopback() -> Address {
    Address::tcp("127.0.0.1", free_tcp_port().expect("free port"))
}

pub fn uds_temp() -> Address {
    Address::uds(temp_uds_path().to_string_lossy().into_owned())
}

/// Both transports where this system has them (UDS is left out under Wine 8, which has no
/// AF_UNIX; real Windows has it).
pub fn transports() -> Vec<Address> {
    let mut v = vec![tcp_loopback()];
    if uds_available() {
        v.push(uds_temp());
    }
    v
}

/// [`tofu::testing::uds_supported`], saying so on stderr when a UDS test is skipped.
pub fn uds_available() -> bool {
    let ok = tofu::testing::uds_supported();
    if !ok {
        eprintln!("skipped: no AF_UNIX on this system (Wine 8)");
    }
    ok
}

/// Posts a WelcomeRequest and waits for its successful WelcomeResponse; returns the listener.
pub fn listen(group: &ChannelGroup, addr: &Address) -> u16 {
    let mut m = Message::new();
    addr.format_listen(&mut m).unwrap();
    let posted = group.post(m).expect("post welcome");
    let r = recv(group);
    expect(&r, OpCode::WelcomeResponse, Status::Success);
    assert_eq!(
        r.origin(),
        Origin::Application,
        "successful Welcome keeps origin application"
    );
    assert_eq!(r.channel(), posted.channel);
    assert_eq!(r.message_id(), posted.message_id);
    posted.channel
}

/// Posts a HelloRequest; returns (client channel, message_id).
pub fn hello(group: &ChannelGroup, addr: &Address) -> (u16, u64) {
    let mut m = Message::new();
    addr.format_connect(&mut m).unwrap();
    let h = group.post(m).expect("post hello");
    (h.channel, h.message_id)
}

/// Full handshake between a client group and a server group whose listener is up.
/// Returns (client channel, server channel).
pub fn connect(client: &ChannelGroup, server: &ChannelGroup, addr: &Address) -> (u16, u16) {
    let (c, id) = hello(client, addr);
    let mut req = recv(server);
    expect(&req, OpCode::HelloRequest, Status::Success);
    assert_eq!(req.message_id(), id);
    let s = req.channel();
    req.make_echo().unwrap();
    server.post(req).expect("post hello response");
    let resp = recv(client);
    expect(&resp, OpCode::HelloResponse, Status::Success);
    assert_eq!(resp.channel(), c);
    assert_eq!(resp.message_id(), id);
    (c, s)
}

/// A data message for `channel`.
pub fn data(op: OpCode, channel: u16, id: u64, body: &[u8]) -> Message {
    let mut m = Message::with_opcode(op);
    m.header.channel = channel;
    m.header.message_id = id;
    m.set_body(body);
    m
}

/// An engine with one group listening on a fresh TCP loopback port.
pub fn tcp_listening(backend: Backend) -> (Engine, ChannelGroup, Address) {
    let e = engine(backend);
    let g = e.create_group().unwrap();
    let addr = tcp_loopback();
    listen(&g, &addr);
    (e, g, addr)
}

/// Two engines joined by one channel: a server group listening on `addr` and a client group
/// connected to it. Groups drop before their engines (field order).
pub struct Linked {
    pub server: ChannelGroup,
    pub client: ChannelGroup,
    /// The client's channel number.
    pub c: u16,
    /// The server's channel number.
    pub s: u16,
    pub se: Engine,
    pub ce: Engine,
}

/// Starts a server engine (with `server_pool`) and a client engine (default pool) and
/// connects them over `addr`.
pub fn linked(backend: Backend, addr: &Address, server_pool: PoolOptions) -> Linked {
    let Listening {
        server,
        client,
        se,
        ce,
    } = listening(backend, addr, server_pool);
    let (c, s) = connect(&client, &server, addr);
    Linked {
        server,
        client,
        c,
        s,
        se,
        ce,
    }
}

/// A server engine (with `server_pool`) whose group listens on an address, and a client
/// engine with a group, not connected yet. Groups drop before their engines (field order).
pub struct Listening {
    pub server: ChannelGroup,
    pub client: ChannelGroup,
    pub se: Engine,
    pub ce: Engine,
}

/// See [`Listening`]: the server group listens on `addr`.
pub fn listening(backend: Backend, addr: &Address, server_pool: PoolOptions) -> Listening {
    let se = engine_with_pool(backend, server_pool);
    let ce = engine(backend);
    let server = se.create_group().unwrap();
    let client = ce.create_group().unwrap();
    listen(&server, addr);
    Listening {
        server,
        client,
        se,
        ce,
    }
}

/// Certificates and rustls configurations for the TLS tests (feature `tls`).
#[cfg(feature = "tls")]
pub mod tls;

/// A `tls|` address on a fresh loopback port (the test certificates name 127.0.0.1).
#[cfg(feature = "tls")]
pub fn tls_loopback() -> Address {
    Address::tls("127.0.0.1", free_tcp_port().expect("free port"))
}
