//! The recipes: a multi-homed server running a service, and a connector that reconnects.

mod common;
use common::*;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tofu::recipes::{Backoff, Connector, Echo, Event, Server, ServerError, Service};
use tofu::{Address, ChannelGroup, Message, OpCode, Status};

const T: Option<Duration> = Some(Duration::from_secs(10));

fn request(group: &ChannelGroup, channel: u16, body: &[u8]) -> Message {
    let mut m = Message::with_opcode(OpCode::Request);
    m.header.channel = channel;
    m.set_body(body);
    group.request(m, T).expect("a Response")
}

/// Every address answers; Hello and Bye are answered by the server; the service counts what
/// it saw and comes back from `stop`.
#[test]
fn server_listens_on_every_address_and_runs_the_service() {
    on_every_backend(|b| {
        let e = engine(b);
        let mut addrs = vec![Address::tcp("127.0.0.1", 0), Address::tcp("127.0.0.1", 0)];
        if uds_available() {
            addrs.push(uds_temp());
        }
        let service = Echo {
            stop_after_closed: Some(addrs.len() as u64),
            ..Echo::default()
        };
        let server = Server::start(&e, &addrs, service).unwrap();
        assert_eq!(server.addresses().len(), addrs.len());
        assert!(server.addresses()[..2]
            .iter()
            .all(|a| matches!(a, Address::Tcp { port, .. } if *port != 0)));
        let client = e.create_group().unwrap();
        for (i, addr) in server.addresses().iter().enumerate() {
            let ch = client.connect(addr).unwrap();
            let r = request(&client, ch, format!("to {i}").as_bytes());
            assert_eq!(
                (r.opcode(), r.body()),
                (OpCode::Response, format!("to {i}").as_bytes())
            );
            let mut bye = Message::with_opcode(OpCode::ByeRequest);
            bye.header.channel = ch;
            let r = client.request(bye, T).unwrap();
            assert_eq!(r.opcode(), OpCode::ByeResponse);
        }
        // The server stops itself once every channel closed (`Echo::stop_after_closed`).
        let echo = server.join();
        let n = addrs.len() as u64;
        assert_eq!((echo.connections, echo.echoed), (n, n));
        assert_eq!(echo.closed, n, "one on_close per connection");
    });
}

/// Counts what a `Server` tells its service, and keeps the peers' channels.
#[derive(Default)]
struct Tally {
    peers: Arc<Mutex<Vec<u16>>>,
    connects: u64,
    closes: Arc<AtomicU64>,
    handed_back: Arc<AtomicU64>,
    /// The reason (`~error`) of each `on_failed_connect`, in order.
    failed: Arc<Mutex<Vec<Option<String>>>>,
}

impl Service for Tally {
    fn on_message(&mut self, m: Message, _: &ChannelGroup) -> ControlFlow<()> {
        if (m.opcode(), m.origin(), m.status())
            == (OpCode::Signal, tofu::Origin::Engine, Status::ChannelClosed)
        {
            self.handed_back.fetch_add(1, Ordering::SeqCst);
        }
        ControlFlow::Continue(())
    }
    fn on_connect(&mut self, hello: &Message) -> ControlFlow<()> {
        self.connects += 1;
        self.peers.lock().unwrap().push(hello.channel());
        ControlFlow::Continue(())
    }
    fn on_close(&mut self, _: u16) -> ControlFlow<()> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        ControlFlow::Continue(())
    }
    fn on_failed_connect(&mut self, end: &Message) -> ControlFlow<()> {
        assert!(end.is_channel_end(), "{end:?}");
        let why = end.header_value(tofu::message::ERROR_TEXT);
        self.failed.lock().unwrap().push(why.map(str::to_string));
        ControlFlow::Continue(())
    }
}

/// Waits until `f` holds, or panics after [`PATIENCE`].
#[track_caller]
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A connection that ends before its Hello is an `on_failed_connect`, with the reason when
/// there is one; a peer that connects and leaves is an `on_connect` and an `on_close`, and
/// the listener's own end (at stop) is neither.
#[test]
fn a_connection_that_ends_before_its_hello_is_a_failed_connect() {
    let e = engine(tofu::Backend::default());
    let tally = Tally::default();
    let (failed, closes) = (Arc::clone(&tally.failed), Arc::clone(&tally.closes));
    let server = Server::start(&e, &[Address::tcp("127.0.0.1", 0)], tally).unwrap();
    let port = server.addresses()[0].port().unwrap();
    // Connects and closes, saying nothing: no reason.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    wait_for("the first failed connect", || {
        failed.lock().unwrap().len() == 1
    });
    // Says something that is not a tofu frame: the reason names the bad frame.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&[0xff; 64]).unwrap();
        wait_for("the second failed connect", || {
            failed.lock().unwrap().len() == 2
        });
    }
    // A real peer: connects, is served, leaves.
    let client = e.create_group().unwrap();
    let c = client.connect(&server.addresses()[0]).unwrap();
    client.disconnect(c, T).unwrap();
    wait_for("the peer's close", || closes.load(Ordering::SeqCst) == 1);
    let tally = server.stop();
    assert_eq!(tally.connects, 1);
    assert_eq!(tally.closes.load(Ordering::SeqCst), 1);
    let failed = tally.failed.lock().unwrap().clone();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0], None, "a peer that just closed gives no reason");
    let why = failed[1].as_deref().expect("a reason for the bad frame");
    assert!(why.to_lowercase().contains("opcode"), "{why}");
}

/// `on_close` comes once per `on_connect`: not for the service's own Signals handed back
/// at a close (Signal, origin engine, `ChannelClosed`, like the final Signal), nor for a
/// connection that closed before it said Hello.
#[test]
fn on_close_comes_once_per_peer() {
    let e = engine(tofu::Backend::default());
    let tally = Tally::default();
    let (peers, closes) = (Arc::clone(&tally.peers), Arc::clone(&tally.closes));
    let handed_back = Arc::clone(&tally.handed_back);
    let server = Server::start(&e, &[Address::tcp("127.0.0.1", 0)], tally).unwrap();
    let Address::Tcp { port, .. } = server.addresses()[0].clone() else {
        unreachable!()
    };
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()); // no Hello
    let client = e.create_group().unwrap();
    let mut rounds = 0;
    // Until the engine has handed back at least one of the service's Signals (it nearly
    // always does in the first round): the service posts a burst, then aborts the channel.
    while handed_back.load(Ordering::SeqCst) == 0 && rounds < 20 {
        rounds += 1;
        let c = client.connect(&server.addresses()[0]).unwrap();
        let s = *peers.lock().unwrap().last().unwrap();
        for _ in 0..200 {
            let m = Message::with_opcode(OpCode::Signal)
                .on_channel(s)
                .with_body(&[7; 512]);
            let _ = server.group().post(m);
        }
        server
            .group()
            .post(Message::with_opcode(OpCode::ByeSignal).on_channel(s))
            .unwrap();
        loop {
            let m = recv(&client);
            if m.is_channel_end() {
                assert_eq!(m.channel(), c);
                break;
            }
        }
    }
    assert!(
        handed_back.load(Ordering::SeqCst) > 0,
        "nothing was handed back"
    );
    // The service sees the last close (and any stray, wrong one) before it is stopped.
    let deadline = Instant::now() + PATIENCE;
    while closes.load(Ordering::SeqCst) < rounds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let tally = server.stop();
    assert_eq!(tally.connects, rounds);
    let closes = closes.load(Ordering::SeqCst);
    assert_eq!(closes, rounds, "one on_close per connected peer");
}

/// A service that says Break stops the server; its peers see their channels closed.
#[test]
fn a_service_can_stop_the_server() {
    struct StopAfter(u32);
    impl Service for StopAfter {
        fn on_message(&mut self, mut m: Message, group: &ChannelGroup) -> ControlFlow<()> {
            m.make_echo().unwrap();
            let _ = group.post(m);
            self.0 -= 1;
            if self.0 == 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    on_every_backend(|b| {
        let e = engine(b);
        let server = Server::start(&e, &[Address::tcp("127.0.0.1", 0)], StopAfter(3)).unwrap();
        let client = e.create_group().unwrap();
        let ch = client.connect(&server.addresses()[0]).unwrap();
        for i in 0..3u8 {
            assert_eq!(request(&client, ch, &[i]).body(), [i]);
        }
        let left = server.join();
        assert_eq!(left.0, 0);
        // The server's group is gone: the client's channel closes.
        let m = recv(&client);
        expect_closed_signal(&m, ch);
    });
}

/// A failed listen names the address and leaves nothing listening.
#[test]
fn a_failed_listen_names_the_address() {
    let e = engine(tofu::Backend::default());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let busy = Address::tcp("127.0.0.1", port);
    let err = Server::start(
        &e,
        &[Address::tcp("127.0.0.1", 0), busy.clone()],
        Echo::default(),
    )
    .unwrap_err();
    match &err {
        ServerError::Listen { address, error } => {
            assert_eq!(address, &busy);
            assert_eq!(error.status(), Status::ListenFailed);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(&busy.to_string()), "{err}");
}

/// Collects the connector's events until `stop` says so (or panics after PATIENCE).
fn until(conn: &mut Connector, mut stop: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = conn.receive(Some(left)).unwrap().expect("an event in time");
        let done = stop(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

/// Nothing listens at first: the Hello fails and is retried with growing waits; a server
/// appears and the connector connects; the server goes away and comes back on the same port:
/// the connector reports the loss and connects again, on a new channel.
#[test]
fn connector_retries_and_reconnects() {
    on_every_backend(|b| {
        let e = engine(b);
        let port = tofu::testing::free_tcp_port().unwrap();
        let addr = Address::tcp("127.0.0.1", port);
        let backoff = Backoff {
            first: Duration::from_millis(5),
            max: Duration::from_millis(40),
        };
        let mut conn = Connector::new(&e, addr.clone(), backoff).unwrap();
        let mut failures = Vec::new();
        until(&mut conn, |ev| {
            if let Event::Disconnected {
                status, retry_in, ..
            } = ev
            {
                failures.push((*status, *retry_in));
            }
            failures.len() == 4
        });
        // Windows may report a refused connect as CommunicationFailed (SPEC, test 1.5).
        assert!(
            failures
                .iter()
                .all(|(s, _)| matches!(s, Status::ConnectFailed | Status::CommunicationFailed)),
            "{failures:?}"
        );
        let waits: Vec<_> = failures.iter().map(|f| f.1.as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 40], "doubling up to the maximum");
        assert_eq!(conn.channel(), None);

        let server = Server::start(&e, std::slice::from_ref(&addr), Echo::default()).unwrap();
        let seen = until(&mut conn, |ev| matches!(ev, Event::Connected { .. }));
        let Some(Event::Connected { channel: first }) = seen.last() else {
            unreachable!()
        };
        let first = *first;
        assert_eq!(conn.channel(), Some(first));
        assert_eq!(request(conn.group(), first, b"one").body(), b"one");

        drop(server); // the listener and the channel close
        let seen = until(&mut conn, |ev| matches!(ev, Event::Disconnected { .. }));
        match seen.last() {
            Some(Event::Disconnected { retry_in, .. }) => {
                assert_eq!(*retry_in, Duration::from_millis(5), "backoff starts over")
            }
            _ => unreachable!(),
        }
        assert_eq!(conn.channel(), None);
        let mut m = Message::with_opcode(OpCode::Signal);
        m.set_body(b"while down");
        let back = conn.post(m).unwrap_err();
        assert_eq!(back.error, tofu::Error::ChannelClosed);
        assert_eq!(back.message.body(), b"while down", "handed back intact");

        let server = Server::start(&e, std::slice::from_ref(&addr), Echo::default()).unwrap();
        let seen = until(&mut conn, |ev| matches!(ev, Event::Connected { .. }));
        let Some(Event::Connected { channel: second }) = seen.last() else {
            unreachable!()
        };
        assert_ne!(*second, first, "a new channel");
        let mut s = Message::with_opcode(OpCode::Signal);
        s.set_body(b"two");
        conn.post(s).unwrap();
        let echoed = until(&mut conn, |ev| matches!(ev, Event::Message(_)));
        match echoed.last() {
            Some(Event::Message(m)) => {
                assert_eq!((m.opcode(), m.body()), (OpCode::Signal, &b"two"[..]))
            }
            _ => unreachable!(),
        }
        assert_eq!(server.stop().connections, 1);
    });
}

/// The peer closes gracefully (`disconnect`): the connector answers its ByeRequest inside
/// `receive`, and reports the end as `ChannelClosed` with no reason, unlike a reset.
#[test]
fn connector_reports_a_graceful_close_without_a_reason() {
    on_every_backend(|b| {
        for addr in transports() {
            let e = engine(b);
            let server = e.create_group().unwrap();
            let listening = server.listen(&addr).unwrap();
            let mut conn = Connector::new(&e, listening.address, Backoff::default()).unwrap();
            let s = std::thread::scope(|scope| {
                let answer = scope.spawn(|| {
                    let mut hello = recv(&server);
                    assert_eq!(hello.opcode(), OpCode::HelloRequest);
                    let s = hello.channel();
                    hello.make_echo().unwrap();
                    server.post(hello).unwrap();
                    s
                });
                until(&mut conn, |ev| matches!(ev, Event::Connected { .. }));
                answer.join().unwrap()
            });
            std::thread::scope(|scope| {
                let closing = scope.spawn(|| server.disconnect(s, T));
                let seen = until(&mut conn, |ev| matches!(ev, Event::Disconnected { .. }));
                match seen.last() {
                    Some(Event::Disconnected { status, reason, .. }) => {
                        assert_eq!(*status, Status::ChannelClosed, "{seen:?}");
                        assert_eq!(*reason, None, "a graceful close is no failure: {seen:?}");
                    }
                    _ => unreachable!(),
                }
                closing
                    .join()
                    .unwrap()
                    .expect("the connector answered the ByeRequest");
            });
        }
    });
}

/// A peer that accepts and never answers the Hello: the attempt ends at the hello timeout
/// (its channel aborted, `ConnectFailed` with the reason), and the next one follows.
#[test]
fn connector_gives_up_on_a_hello_nobody_answers() {
    let e = engine(tofu::Backend::default());
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::from(silent.local_addr().unwrap());
    let backoff = Backoff {
        first: Duration::from_millis(20),
        max: Duration::from_millis(20),
    };
    let mut conn = Connector::new(&e, addr, backoff).unwrap();
    conn.set_hello_timeout(Some(Duration::from_millis(200)));
    let seen = until(&mut conn, |ev| {
        matches!(ev, Event::Connecting { attempt: 2 })
    });
    let reasons: Vec<_> = seen
        .iter()
        .filter_map(|ev| match ev {
            Event::Disconnected { status, reason, .. } => Some((*status, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 1, "{seen:?}");
    assert_eq!(reasons[0].0, Status::ConnectFailed);
    let why = reasons[0].1.clone().unwrap_or_default();
    assert!(why.contains("no HelloResponse"), "{why:?}");
    // The first attempt's connection was aborted: it ends instead of staying open.
    accepted_connection_ends(&silent);
}

/// A bad address is refused at once: no attempt could ever succeed.
#[test]
fn connector_refuses_a_bad_address() {
    let e = engine(tofu::Backend::default());
    let err =
        Connector::new(&e, Address::tcp("127.0.0.1:7099", 0), Backoff::default()).unwrap_err();
    assert_eq!(err.status(), Status::InvalidAddress);
    assert!(
        err.to_string().contains("host:port"),
        "says what is wrong: {err}"
    );
}
