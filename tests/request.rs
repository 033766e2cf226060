//! Requests with replies and the listen/connect helpers: answers matched by message_id from
//! many threads and tasks at once, everything else still delivered to the receive loop, the
//! failure shapes folded into one error, the bound address of port 0.

mod common;
use common::*;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tofu::{Address, ChannelGroup, Engine, Message, OpCode, RequestError, Status};

/// Answers Hellos, Byes and Requests on `g` (the Response carries the Request's body), until
/// the group ends. A Request whose body is `b"hold"` gets no answer; `b"late"` is answered
/// after 300 ms; `b"abort"` closes the channel abortively instead.
fn echo(g: &ChannelGroup) {
    while let Ok(Some(mut m)) = g.wait_receive(None) {
        match (m.opcode(), m.body()) {
            (OpCode::Request, b"hold") => {}
            (OpCode::Request, b"abort") => {
                let ch = m.channel();
                let _ = g.post(data(OpCode::ByeSignal, ch, 0, b""));
            }
            (OpCode::Request, b"late") => {
                std::thread::sleep(Duration::from_millis(300));
                m.make_echo().unwrap();
                let _ = g.post(m);
            }
            (OpCode::HelloRequest | OpCode::ByeRequest | OpCode::Request, _) => {
                m.make_echo().unwrap();
                let _ = g.post(m);
            }
            _ => {}
        }
    }
}

/// Two engines: a server group that listens and runs [`echo`] on a thread of its own, and a
/// client group connected to it. `f` gets the client group and its channel. The
/// server group is destroyed when `f` returns or panics, so a failing test fails instead of
/// waiting forever for the echo thread.
fn with_echo_peer(f: impl FnOnce(&Arc<ChannelGroup>, u16)) {
    struct Destroy(Arc<ChannelGroup>);
    impl Drop for Destroy {
        fn drop(&mut self) {
            self.0.destroy();
        }
    }
    let (se, ce) = (
        Engine::with_defaults().unwrap(),
        Engine::with_defaults().unwrap(),
    );
    let server = Arc::new(se.create_group().unwrap());
    let client = Arc::new(ce.create_group().unwrap());
    let l = server.listen(&Address::tcp("127.0.0.1", 0)).unwrap();
    let guard = Destroy(Arc::clone(&server));
    std::thread::scope(|s| {
        s.spawn(|| echo(&server));
        let _guard = guard;
        let ch = client.connect(&l.address).unwrap();
        f(&client, ch);
    });
}

fn request(ch: u16, body: &[u8]) -> Message {
    let mut m = Message::with_opcode(OpCode::Request);
    m.header.channel = ch;
    m.set_body(body);
    m
}

#[test]
fn listen_on_port_0_reports_the_port_and_connect_returns_the_channel() {
    on_every_backend(|b| {
        let e = engine(b);
        let (server, client) = (e.create_group().unwrap(), e.create_group().unwrap());
        let l = server.listen(&Address::tcp("127.0.0.1", 0)).unwrap();
        let port = l.port().expect("a TCP listener");
        assert_ne!(port, 0, "the port the system chose");
        assert_eq!(l.address, Address::tcp("127.0.0.1", port));
        std::thread::scope(|s| {
            s.spawn(|| echo(&server));
            let ch = client.connect(&l.address).unwrap();
            let r = client.request(request(ch, b"hi"), Some(PATIENCE)).unwrap();
            assert_eq!((r.opcode(), r.body()), (OpCode::Response, &b"hi"[..]));
            server.destroy();
        });
    });
}

#[test]
fn the_welcome_response_carries_the_bound_address() {
    let e = Engine::with_defaults().unwrap();
    let g = e.create_group().unwrap();
    let mut m = Message::new();
    Address::tcp("127.0.0.1", 0).format_listen(&mut m).unwrap();
    g.post(m).unwrap();
    let r = recv(&g);
    expect(&r, OpCode::WelcomeResponse, Status::Success);
    let Ok(Address::Tcp { host, port }) = Address::from_message(&r) else {
        panic!("no address in {r:?}");
    };
    assert_eq!(host, "127.0.0.1");
    assert_ne!(port, 0);
    // Something listens there.
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
}

#[test]
fn an_empty_uds_path_reports_the_chosen_one() {
    if !uds_available() {
        return;
    }
    let e = Engine::with_defaults().unwrap();
    let g = e.create_group().unwrap();
    let l = g.listen(&Address::uds("")).unwrap();
    let Address::Uds { path } = &l.address else {
        panic!("{l:?}")
    };
    assert!(!path.is_empty());
    assert!(std::path::Path::new(path).exists(), "{path}");
}

#[test]
fn a_refused_connect_is_one_error_and_leaves_nothing_behind() {
    let e = Engine::with_defaults().unwrap();
    let g = e.create_group().unwrap();
    // Nobody listens on this port: the engine refuses.
    let port = free_tcp_port().unwrap();
    let err = g.connect(&Address::tcp("127.0.0.1", port)).unwrap_err();
    let RequestError::Refused(m) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(m.status(), Status::ConnectFailed);
    assert_eq!(err.status(), Status::ConnectFailed);
    // A host that does not resolve: the other failure shape, the same error.
    let err = g
        .connect(&Address::tcp("no-such-host.invalid", 1))
        .unwrap_err();
    assert_eq!(err.status(), Status::InvalidAddress, "{err}");
    // An address that cannot even be formatted: refused before anything is posted.
    let err = g.connect(&Address::tcp("a|b", 1)).unwrap_err();
    assert!(matches!(err, RequestError::Address(_)), "{err:?}");
    // Port 0 is for a listen: a connect to it is refused, saying so, before it is posted.
    let err = g.connect(&Address::tcp("127.0.0.1", 0)).unwrap_err();
    assert!(matches!(err, RequestError::Address(_)), "{err:?}");
    assert!(
        err.to_string().contains("port 0 cannot be connected to"),
        "{err}"
    );
    assert!(
        g.wait_receive(Some(Duration::ZERO)).unwrap().is_none(),
        "nothing posted"
    );
    // A peer that accepts and closes before it answers the Hello: the channel's final
    // Signal is the refusal (before, `connect` gave `Closed` and the Signal of a channel
    // the caller never got went to the receive loop).
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = Address::from(closer.local_addr().unwrap());
    let closing = std::thread::spawn(move || drop(closer.accept().unwrap()));
    let err = g.connect(&at).unwrap_err();
    closing.join().unwrap();
    let RequestError::Refused(m) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (m.opcode(), m.status()),
        (OpCode::Signal, Status::ChannelClosed)
    );
    assert_eq!(err.status(), Status::ChannelClosed);
    assert!(
        err.to_string().contains("closed before the answer came"),
        "{err}"
    );
    // The failed channels' final Signals were not delivered.
    assert!(g
        .wait_receive(Some(Duration::from_millis(200)))
        .unwrap()
        .is_none());
}

#[test]
fn connect_timeout_gives_up_on_a_silent_peer_and_leaves_nothing_behind() {
    let e = Engine::with_defaults().unwrap();
    let g = e.create_group().unwrap();
    // A peer that accepts and never answers the Hello: `connect` would wait for ever.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = Address::from(silent.local_addr().unwrap());
    let t0 = std::time::Instant::now();
    let err = g
        .connect_timeout(&at, Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, RequestError::TimedOut), "{err:?}");
    assert_eq!(err.reason(), None, "a timeout has no words of its own");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // The channel was aborted: the peer's connection ends instead of staying open.
    accepted_connection_ends(&silent);
    // Nothing of the abandoned channel (the abort, its final Signal) reaches the receive loop.
    assert!(g
        .wait_receive(Some(Duration::from_millis(300)))
        .unwrap()
        .is_none());
    // A peer that answers in time: the channel, as from `connect`.
    let server = e.create_group().unwrap();
    let listening = server.listen(&Address::tcp("127.0.0.1", 0)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| echo(&server));
        let reply = g
            .connect_timeout(&listening.address, PATIENCE)
            .and_then(|ch| g.request(request(ch, b"hi"), Some(PATIENCE)));
        server.destroy(); // ends the echo thread, whatever happened
        assert_eq!(reply.unwrap().body(), b"hi");
    });
}

/// A raw peer that reads the Hello and answers with `first`, a frame of its own making.
fn raw_peer_answering(first: Message) -> (Address, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = Address::from(listener.local_addr().unwrap());
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut h = [0u8; tofu::wire::HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let mut rest = vec![0u8; tofu::wire::FrameHeader::parse(&h).payload_len()];
        s.read_exact(&mut rest).unwrap();
        let mut out = Vec::new();
        tofu::wire::encode(&first, &mut out).unwrap();
        s.write_all(&out).unwrap();
        // Then the peer goes away (its socket closes when the thread ends).
        std::thread::sleep(Duration::from_millis(100));
    });
    (at, peer)
}

/// tofu's peers answer a Hello with its own message_id (`make_echo`); one that does not
/// still answers it, and one whose first frame is something else and then closes refuses
/// it (the channel's final Signal carries that frame's id), instead of leaving `connect`
/// waiting for ever.
#[test]
fn a_hello_answered_with_another_id_or_not_at_all() {
    let e = Engine::with_defaults().unwrap();
    let g = e.create_group().unwrap();
    let mut other = Message::with_opcode(OpCode::HelloResponse);
    other.header.message_id = 123_456_789;
    let (at, peer) = raw_peer_answering(other);
    let ch = g.connect_timeout(&at, PATIENCE).expect("the peer answered");
    peer.join().unwrap();
    let end = g
        .wait_receive(Some(PATIENCE))
        .unwrap()
        .expect("the channel's end");
    assert_eq!((end.opcode(), end.channel()), (OpCode::Signal, ch));

    let mut early = Message::with_opcode(OpCode::Signal);
    early.header.message_id = 987_654_321;
    let (at, peer) = raw_peer_answering(early);
    let err = g.connect_timeout(&at, PATIENCE).unwrap_err();
    assert!(matches!(err, RequestError::Refused(_)), "{err:?}");
    peer.join().unwrap();
    let m = g
        .wait_receive(Some(PATIENCE))
        .unwrap()
        .expect("the peer's frame");
    assert_eq!((m.opcode(), m.message_id()), (OpCode::Signal, 987_654_321));
}

#[test]
fn many_threads_each_get_their_own_answer_while_other_messages_go_to_the_receive_loop() {
    const THREADS: u64 = 8;
    const EACH: u64 = 200;
    let (se, ce) = (
        Engine::with_defaults().unwrap(),
        Engine::with_defaults().unwrap(),
    );
    let (server, client) = (se.create_group().unwrap(), ce.create_group().unwrap());
    let l = server.listen(&Address::tcp("127.0.0.1", 0)).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| echo(&server));
        let ch = client.connect(&l.address).unwrap();
        // The receive loop: unsolicited Signals posted to the client's channel by a peer
        // would come here; the client's own Signals to itself are not possible, so the
        // server's update_receiver stands in: a message nobody awaits.
        let done = &done;
        let client = &client;
        let others = s.spawn(move || {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                if let Some(m) = client
                    .wait_receive(Some(Duration::from_millis(20)))
                    .unwrap()
                {
                    assert_eq!(m.status(), Status::ReceiverUpdate, "only the others: {m:?}");
                    n += 1;
                }
            }
            n
        });
        let mut askers = Vec::new();
        for t in 0..THREADS {
            askers.push(s.spawn(move || {
                for i in 0..EACH {
                    let body = format!("{t}-{i}");
                    let r = client
                        .request(request(ch, body.as_bytes()), Some(PATIENCE))
                        .unwrap();
                    assert_eq!(r.body(), body.as_bytes(), "its own answer");
                    if i % 20 == 0 {
                        client.update_receiver(None).unwrap();
                    }
                }
            }));
        }
        for a in askers {
            a.join().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        done.store(true, Ordering::SeqCst);
        assert_eq!(others.join().unwrap(), THREADS * EACH / 20);
        server.destroy();
    });
}

#[test]
fn no_answer_when_the_channel_closes_or_in_time() {
    with_echo_peer(|client, ch| {
        // Too slow: TimedOut, and the late answer goes to the receive loop.
        let err = client
            .request(request(ch, b"late"), Some(Duration::from_millis(50)))
            .unwrap_err();
        assert!(matches!(err, RequestError::TimedOut), "{err:?}");
        let m = recv(client);
        assert_eq!((m.opcode(), m.body()), (OpCode::Response, &b"late"[..]));
        // The peer closes the channel instead of answering: Closed, at once.
        let err = client
            .request(request(ch, b"abort"), Some(PATIENCE))
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Closed(Status::ChannelClosed)),
            "{err:?}"
        );
        // The channel's final Signal still reaches the application.
        let closed = std::iter::from_fn(|| client.wait_receive(Some(PATIENCE)).unwrap())
            .find(|m| m.opcode() == OpCode::Signal && m.status() == Status::ChannelClosed);
        assert_eq!(closed.map(|m| m.channel()), Some(ch));
        // A request to the closed channel is refused at post.
        let err = client
            .request(request(ch, b"x"), Some(PATIENCE))
            .unwrap_err();
        assert!(matches!(err, RequestError::Post(_)), "{err:?}");
    });
}

#[test]
fn async_requests_from_many_tasks() {
    with_echo_peer(|client, ch| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..16u32 {
                let client = Arc::clone(client);
                tasks.push(tokio::spawn(async move {
                    for i in 0..50u32 {
                        let body = format!("{t}/{i}");
                        let r = client
                            .request_async(request(ch, body.as_bytes()))
                            .await
                            .unwrap();
                        assert_eq!(r.body(), body.as_bytes());
                    }
                }));
            }
            for t in tasks {
                tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap();
            }
            // A dropped request stops waiting; its answer then goes to receive().
            let r = tokio::time::timeout(
                Duration::from_millis(20),
                client.request_async(request(ch, b"late")),
            )
            .await;
            assert!(r.is_err());
            let m = tokio::time::timeout(PATIENCE, client.receive())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(m.body(), b"late");
        });
    });
}

#[test]
fn an_answer_that_came_for_a_dropped_request_goes_to_the_receive_loop() {
    with_echo_peer(|client, ch| {
        struct Nobody;
        impl std::task::Wake for Nobody {
            fn wake(self: Arc<Self>) {}
        }
        let waker = std::task::Waker::from(Arc::new(Nobody));
        let mut cx = std::task::Context::from_waker(&waker);
        // Poll once: the request is posted and awaited. On a busy machine the answer can
        // come before that first poll (the request is posted when the future is made):
        // then it is taken, and another request tries again.
        let mut attempts = 0;
        let fut = loop {
            let mut fut = Box::pin(client.request_async(request(ch, b"kept")));
            if fut.as_mut().poll(&mut cx).is_pending() {
                break fut;
            }
            attempts += 1;
            assert!(attempts < 100, "every answer came before the first poll");
        };
        // A receive loop routes the answer to the request; nothing else is there.
        std::thread::sleep(Duration::from_millis(100));
        assert!(client
            .wait_receive(Some(Duration::from_millis(100)))
            .unwrap()
            .is_none());
        // The request is dropped before it took its answer: the answer is not lost.
        drop(fut);
        let m = recv(client);
        assert_eq!((m.opcode(), m.body()), (OpCode::Response, &b"kept"[..]));
    });
}

#[test]
fn failures_carry_the_os_words_in_a_local_header_that_is_never_sent() {
    let e = Engine::with_defaults().unwrap();
    let g = e.create_group().unwrap();
    // A refused connect: the OS's words come with the refusal.
    let port = free_tcp_port().unwrap();
    let err = g.connect(&Address::tcp("127.0.0.1", port)).unwrap_err();
    let why = err.reason().expect("the OS's words").to_string();
    assert!(!why.is_empty());
    assert!(err.to_string().ends_with(&format!("({why})")), "{err}");
    let RequestError::Refused(m) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        m.header_value(tofu::message::ERROR_TEXT),
        Some(why.as_str())
    );
    // A listen on an address that is not local: the same.
    let err = g.listen(&Address::tcp("192.0.2.1", 1)).unwrap_err();
    let RequestError::Refused(m) = err else {
        panic!("{err:?}")
    };
    assert!(m.header_value(tofu::message::ERROR_TEXT).is_some(), "{m:?}");
    // A handed-back message posted again leaves its error text behind.
    let se = Engine::with_defaults().unwrap();
    let sg = se.create_group().unwrap();
    let l = sg.listen(&Address::tcp("127.0.0.1", 0)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| echo(&sg));
        let ch = g.connect(&l.address).unwrap();
        let mut m = request(ch, b"again");
        m.header.origin = tofu::Origin::Engine; // as the engine hands messages back
        m.append_header(tofu::message::ERROR_TEXT, "old trouble")
            .unwrap();
        m.append_header("keep", "me").unwrap();
        let r = g.request(m, Some(PATIENCE)).unwrap();
        assert_eq!(
            r.header_value("keep"),
            Some("me"),
            "the peer echoed the rest"
        );
        assert_eq!(
            r.header_value(tofu::message::ERROR_TEXT),
            None,
            "never sent"
        );
        sg.destroy();
    });
}

/// `disconnect` returns once the peer's ByeResponse came, after every message the peer sent
/// before it; the final Signal follows in the receive loop; a second `disconnect` on the
/// closed channel fails at once instead of waiting.
#[test]
fn disconnect_waits_for_the_bye_response_after_the_peers_messages() {
    on_every_backend(|b| {
        let e = engine(b);
        let server = tofu::recipes::Server::start(
            &e,
            &[Address::tcp("127.0.0.1", 0)],
            tofu::recipes::Echo::default(),
        )
        .unwrap();
        let client = e.create_group().unwrap();
        let ch = client.connect(&server.addresses()[0]).unwrap();
        for i in 1..=100u64 {
            let m = Message::with_opcode(OpCode::Signal)
                .on_channel(ch)
                .with_body(&i.to_be_bytes());
            client.send_timeout(m, None).unwrap();
        }
        client.disconnect(ch, Some(PATIENCE)).unwrap();
        for i in 1..=100u64 {
            let m = client.wait_receive(Some(Duration::ZERO)).unwrap();
            let m = m.expect("every echo arrived before the ByeResponse");
            assert_eq!(
                (m.opcode(), m.body()),
                (OpCode::Signal, &i.to_be_bytes()[..])
            );
        }
        expect_closed_signal(&recv(&client), ch);
        // Closed: `post` refuses the ByeRequest, as the docs say.
        let again = client.disconnect(ch, Some(PATIENCE)).unwrap_err();
        assert!(
            matches!(&again, RequestError::Post(p) if p.error == tofu::Error::InvalidChannelNumber),
            "{again:?}"
        );
    });
}

/// `connect` and `listen` say what is wrong with an address before posting anything, and a
/// refused connect or listen says where and what the OS said.
#[test]
fn connect_and_listen_errors_say_what_went_wrong() {
    let e = engine(tofu::Backend::default());
    let g = e.create_group().unwrap();
    let err = g.connect(&Address::tcp("127.0.0.1:80", 0)).unwrap_err();
    assert!(matches!(err, RequestError::Address(_)), "{err:?}");
    assert!(err.to_string().contains("host:port"), "{err}");
    assert_eq!(err.status(), Status::InvalidAddress);

    let port = tofu::testing::free_tcp_port().unwrap();
    let err = g.connect(&Address::tcp("127.0.0.1", port)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&format!("tcp|127.0.0.1|{port}")), "{text}");
    assert!(text.contains('('), "the OS's words: {text}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = Address::from(taken.local_addr().unwrap());
    let err = g.listen(&busy).unwrap_err();
    assert_eq!(err.status(), Status::ListenFailed);
    assert!(
        err.to_string().contains(&format!("listen on {busy}")),
        "{err}"
    );
}

/// CPU time this process has used (user and system), from `/proc/self/stat` (Linux reports
/// it in ticks of 1/100 s to user space).
#[cfg(target_os = "linux")]
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // After the command name's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Threads asleep in `request` while a message for the receive loop waits unreceived must
/// stay asleep until their answers come: each one's look at the mailbox used to wake all the
/// others because that message was still there, and they kept waking each other (a CPU
/// burnt for as long as the answers took).
#[cfg(target_os = "linux")]
#[test]
fn requests_asleep_beside_an_unreceived_message_do_not_wake_each_other() {
    with_echo_peer(|client, ch| {
        // Its Response is awaited by no `request`: it goes to the receive loop, which this
        // test never runs. The echo answers it at once, then each "late" after 300 ms.
        client.post(request(ch, b"stray")).unwrap();
        let cpu = process_cpu();
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let reply = client
                        .request(request(ch, b"late"), Some(Duration::from_secs(10)))
                        .unwrap();
                    assert_eq!(reply.body(), b"late");
                });
            }
        });
        let (cpu, wall) = (process_cpu() - cpu, start.elapsed());
        assert!(
            wall >= Duration::from_millis(850),
            "three late answers one after another: {wall:?}"
        );
        assert!(
            cpu < wall / 4,
            "{cpu:?} of CPU in {wall:?} while three requests waited: they kept waking each other"
        );
        // The stray answer is still there for the receive loop.
        let m = client
            .wait_receive(Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        assert_eq!((m.opcode(), m.body()), (OpCode::Response, &b"stray"[..]));
    });
}
