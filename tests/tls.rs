//! `tls|` channels (feature `tls`): every flow of the plain transport over TLS on every backend,
//! mutual TLS and the peer identity, each handshake failure as a status with the listener
//! still serving, hostile handshakes, and a third-party TLS client (openssl s_client)
//! exchanging a tofu frame. Certificates are made at test time. Hostile peers after the
//! handshake (bad records, half-frames, vanishing servers) are in `tests/disconnect.rs`, which
//! runs every scenario over TLS too; 1000 handshake/reset cycles are counted in
//! `tests/cycles.rs`.
#![cfg(feature = "tls")]

mod common;
use common::tls::{client_config, server_config, Ca, Pki};
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tofu::message::{ERROR_TEXT, PEER_IDENTITY};
use tofu::{
    Address, ChannelGroup, Engine, EngineOptions, Error, Message, OpCode, Origin, RequestError,
    SendLimit, Status,
};

/// A server and a client engine sharing one PKI; the server listens on a fresh `tls|` port.
struct Pair {
    server: ChannelGroup,
    client: ChannelGroup,
    addr: Address,
    _se: Engine,
    _ce: Engine,
}

fn pair_with(server: EngineOptions, client: EngineOptions) -> Pair {
    let se = Engine::new(server).unwrap();
    let ce = Engine::new(client).unwrap();
    let (s, c) = (se.create_group().unwrap(), ce.create_group().unwrap());
    // Port 0: the listener's own port comes back (a port picked beforehand could be taken
    // meanwhile by another test's connection).
    let addr = s
        .listen(&Address::tls("127.0.0.1", 0))
        .expect("tls| listener")
        .address;
    Pair {
        server: s,
        client: c,
        addr,
        _se: se,
        _ce: ce,
    }
}

fn pair(pki: &Pki, backend: tofu::Backend) -> Pair {
    pair_with(pki.options(backend), pki.options(backend))
}

/// A connect that must fail: the Hello comes back with `status` (handed back by the engine,
/// or refused), the `~error` text names the cause, and the channel's final Signal follows.
#[track_caller]
fn expect_connect_fails(client: &ChannelGroup, addr: &Address, status: Status, words: &str) {
    let (c, _) = hello(client, addr);
    let m = recv(client);
    assert!(
        matches!(m.opcode(), OpCode::HelloRequest | OpCode::HelloResponse),
        "{m:?}"
    );
    assert_eq!((m.status(), m.origin()), (status, Origin::Engine), "{m:?}");
    let why = m.header_value(ERROR_TEXT).unwrap_or_default().to_string();
    assert!(
        why.to_lowercase().contains(&words.to_lowercase()),
        "reason {why:?} should mention {words:?}"
    );
    expect_closed_signal(&recv(client), c);
}

/// The server's side of a connection that failed before any frame: only the final Signal,
/// with rustls's words when `words` is given.
#[track_caller]
fn expect_server_side_closed(server: &ChannelGroup, words: Option<&str>) {
    let m = recv(server);
    assert_eq!(
        (m.opcode(), m.status()),
        (OpCode::Signal, Status::ChannelClosed),
        "{m:?}"
    );
    if let Some(words) = words {
        let why = m
            .header_value(ERROR_TEXT)
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            why.contains(&words.to_lowercase()),
            "{why:?} should mention {words:?}"
        );
    }
}

/// Receives until `ch`'s final Signal; what came before it.
#[track_caller]
fn channel_ends(g: &ChannelGroup, ch: u16) -> Vec<Message> {
    let mut before = Vec::new();
    loop {
        let m = recv(g);
        if m.opcode() == OpCode::Signal && m.status() == Status::ChannelClosed {
            expect_closed_signal(&m, ch);
            return before;
        }
        assert_eq!(m.origin(), Origin::Engine, "only the engine speaks: {m:?}");
        assert_ne!(m.status(), Status::Success, "{m:?}");
        before.push(m);
    }
}

/// The listener still serves: a well-configured client connects and gets an answer.
#[track_caller]
fn still_serving(pki: &Pki, p: &Pair) {
    let ce = pki.engine(tofu::Backend::default());
    let g = ce.create_group().unwrap();
    let (c, s) = connect(&g, &p.server, &p.addr);
    p.server
        .post(data(OpCode::Signal, s, 1, b"still here"))
        .unwrap();
    let m = recv(&g);
    assert_eq!((m.channel(), m.body()), (c, &b"still here"[..]));
    drop(g);
    drop(ce);
    expect_closed_signal(&recv(&p.server), s);
}

#[test]
fn hello_data_both_ways_and_bye_both_ways_on_every_backend() {
    let pki = Pki::new();
    on_every_backend(|b| {
        let p = pair(&pki, b);
        // Client-initiated: data both ways, ByeRequest, ByeResponse.
        let (c, s) = connect(&p.client, &p.server, &p.addr);
        let big = vec![0xa5u8; 65000];
        for i in 1..=100u64 {
            let body: &[u8] = if i % 10 == 0 { &big } else { b"ping" };
            p.client.post(data(OpCode::Request, c, i, body)).unwrap();
        }
        for i in 1..=100u64 {
            let mut m = recv(&p.server);
            expect(&m, OpCode::Request, Status::Success);
            assert_eq!(m.message_id(), i, "in order");
            assert_eq!(m.body().len(), if i % 10 == 0 { 65000 } else { 4 });
            m.make_echo().unwrap();
            p.server.post(m).unwrap();
        }
        for i in 1..=100u64 {
            let m = recv(&p.client);
            expect(&m, OpCode::Response, Status::Success);
            assert_eq!(m.message_id(), i);
        }
        let bye = p.client.post(data(OpCode::ByeRequest, c, 0, b"")).unwrap();
        let mut m = recv(&p.server);
        expect(&m, OpCode::ByeRequest, Status::Success);
        m.make_echo().unwrap();
        p.server.post(m).unwrap();
        let r = recv(&p.client);
        expect(&r, OpCode::ByeResponse, Status::Success);
        assert_eq!(r.message_id(), bye.message_id);
        expect_closed_signal(&recv(&p.client), c);
        expect_closed_signal(&recv(&p.server), s);

        // Server-initiated bye on a second channel.
        let (c, s) = connect(&p.client, &p.server, &p.addr);
        p.server
            .post(data(OpCode::Signal, s, 5, b"bye soon"))
            .unwrap();
        let bye = p.server.post(data(OpCode::ByeRequest, s, 0, b"")).unwrap();
        let m = recv(&p.client);
        assert_eq!(m.body(), b"bye soon");
        let mut m = recv(&p.client);
        expect(&m, OpCode::ByeRequest, Status::Success);
        m.make_echo().unwrap();
        p.client.post(m).unwrap();
        let r = recv(&p.server);
        expect(&r, OpCode::ByeResponse, Status::Success);
        assert_eq!(r.message_id(), bye.message_id);
        expect_closed_signal(&recv(&p.server), s);
        expect_closed_signal(&recv(&p.client), c);

        // Abort: a ByeSignal (oob) closes at once; the peer sees the channel end.
        let (c, s) = connect(&p.client, &p.server, &p.addr);
        p.client
            .post(data(OpCode::ByeSignal, c, 0, b""))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut saw_closed = false;
        while !saw_closed {
            let m = recv(&p.client);
            saw_closed = m.opcode() == OpCode::Signal && m.status() == Status::ChannelClosed;
        }
        expect_closed_signal(&recv(&p.server), s);
    });
}

/// Over TLS too, a message posted to an idle channel while the reactor sleeps is encrypted
/// and written by the posting thread itself. A frame larger than the session's buffer (64
/// KiB) is handed to the reactor part-way, which finishes it; the stream stays whole and in
/// order, in request/reply and when one side posts a stream without replies.
#[test]
fn an_idle_tls_channel_is_written_directly_and_the_stream_stays_whole() {
    let pki = Pki::new();
    on_every_backend(|b| {
        let p = pair(&pki, b);
        let (c, _) = connect(&p.client, &p.server, &p.addr);
        let body = |id: u64, len: usize| -> Vec<u8> {
            (0..len).map(|i| (i as u64 * 31 + id) as u8).collect()
        };
        // Every fourth request has a frame of 67 KB: 65000 bytes of body and 2000 of text
        // headers.
        let big = |id: u64| id % 4 == 0;
        let request = |id: u64| {
            let mut m = data(
                OpCode::Request,
                c,
                id,
                &body(id, if big(id) { 65000 } else { 100 }),
            );
            if big(id) {
                m.append_header("padding", &"p".repeat(2000)).unwrap();
            }
            m
        };
        const N: u64 = 200;
        let before = p._ce.stats();
        for id in 1..=N {
            p.client.post(request(id)).unwrap();
            let mut m = recv(&p.server);
            expect(&m, OpCode::Request, Status::Success);
            assert_eq!(m.message_id(), id, "{b}: in order");
            let want = if big(id) { 65000 } else { 100 };
            assert_eq!(m.body(), &body(id, want)[..], "{b}: request {id} intact");
            m.make_echo().unwrap();
            p.server.post(m).unwrap();
            let r = recv(&p.client);
            expect(&r, OpCode::Response, Status::Success);
            assert_eq!(r.message_id(), id);
            assert_eq!(r.body().len(), want, "{b}: response {id}");
        }
        let after = p._ce.stats();
        let (direct, handed) = (
            after.direct_writes - before.direct_writes,
            after.handovers - before.handovers,
        );
        assert!(
            direct + handed >= N * 9 / 10,
            "{b}: {direct} direct writes and {handed} handed over of {N} requests"
        );
        assert!(
            direct >= N / 2,
            "{b}: the small requests are written directly: {direct}"
        );
        assert!(
            handed >= 1,
            "{b}: a 67 KB frame does not fit the session's buffer and is handed over"
        );

        // A stream posted one message at a time, the reactor asleep in between, to a reader
        // that reads only afterwards: every message arrives, whole and in order.
        for id in 1..=100u64 {
            p.client
                .post(data(OpCode::Signal, c, id, &body(id, 30000)))
                .unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        for id in 1..=100u64 {
            let m = recv(&p.server);
            expect(&m, OpCode::Signal, Status::Success);
            assert_eq!(m.message_id(), id, "{b}: stream in order");
            assert_eq!(m.body(), &body(id, 30000)[..], "{b}: signal {id} intact");
        }
    });
}

/// A frame's body: `len` bytes that depend on the message id.
fn pattern(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 131 + id * 7) as u8).collect()
}

#[test]
fn a_busy_tls_channel_seals_large_frames_and_keeps_each_senders_order() {
    let pki = Pki::new();
    on_every_backend(|b| {
        let p = pair(&pki, b);
        let (c, s) = connect(&p.client, &p.server, &p.addr);
        // Two threads stream 200 messages each: mostly large frames of varied sizes, every
        // fifth a small one (encoded into runs and encrypted by the reactor), so sealed and
        // queued frames alternate. The reader starts late, so the stream starts against a
        // full socket; a large frame is sealed whenever the reactor holds the gate and
        // nothing is queued before it.
        const N: u64 = 200;
        let len = |seq: u64| {
            if seq % 5 == 0 {
                300
            } else {
                4097 + (seq as usize * 7919) % 61000
            }
        };
        let before = p._ce.stats().seals;
        std::thread::scope(|sc| {
            for t in 1..=2u64 {
                let client = &p.client;
                sc.spawn(move || {
                    for seq in 1..=N {
                        let id = t << 32 | seq;
                        let m = data(OpCode::Signal, c, id, &pattern(id, len(seq)));
                        client.send_timeout(m, Some(PATIENCE)).expect("room comes");
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(200));
            let mut next = [1u64; 2];
            for _ in 0..2 * N {
                let m = recv(&p.server);
                expect(&m, OpCode::Signal, Status::Success);
                assert_eq!(m.channel(), s);
                let (t, seq) = (m.message_id() >> 32, m.message_id() & 0xffff_ffff);
                let at = &mut next[t as usize - 1];
                assert_eq!(seq, *at, "{b}: thread {t}'s messages in order");
                *at += 1;
                assert_eq!(
                    m.body(),
                    &pattern(m.message_id(), len(seq))[..],
                    "{b}: message {seq} of thread {t} intact"
                );
            }
        });
        let seals = p._ce.stats().seals - before;
        assert!(
            seals > 0,
            "{b}: large frames posted to a busy channel are sealed"
        );

        // Sealed frames go out before a bye posted after them, and none is lost: posted
        // before the reader reads, then a ByeRequest. A large
        // Signal posted once the bye is out is not sealed behind it: never sent, handed
        // back.
        for seq in 1..=20u64 {
            let m = data(OpCode::Signal, c, seq, &pattern(seq, 60000));
            p.client.send_timeout(m, Some(PATIENCE)).unwrap();
        }
        let bye = p.client.post(data(OpCode::ByeRequest, c, 0, b"")).unwrap();
        for seq in 1..=20u64 {
            let m = recv(&p.server);
            expect(&m, OpCode::Signal, Status::Success);
            assert_eq!(m.message_id(), seq, "{b}: before the bye, in order");
            assert_eq!(m.body(), &pattern(seq, 60000)[..]);
        }
        let mut m = recv(&p.server);
        expect(&m, OpCode::ByeRequest, Status::Success);
        assert_eq!(m.message_id(), bye.message_id, "{b}: the bye comes last");
        // The bye is out and the client's queue empty again.
        p.client
            .post(data(OpCode::Signal, c, 999, &pattern(999, 60000)))
            .unwrap();
        expect_silence(&p.server, Duration::from_millis(100));
        m.make_echo().unwrap();
        p.server.post(m).unwrap();
        let got: Vec<Message> = (0..3).map(|_| recv(&p.client)).collect();
        assert_eq!(got[0].opcode(), OpCode::ByeResponse, "{b}: {got:?}");
        let unsent = got.iter().find(|m| m.message_id() == 999);
        let unsent = unsent.unwrap_or_else(|| panic!("{b}: handed back: {got:?}"));
        expect(unsent, OpCode::Signal, Status::ChannelClosed);
        assert_eq!(unsent.origin(), Origin::Engine);
        let end = recv(&p.server);
        assert_ne!(end.message_id(), 999, "{b}: never sent");
        expect_closed_signal(&end, s);
    });
}

#[test]
fn a_sealing_stream_into_a_stalled_reader_stops_at_the_send_limit() {
    let pki = Pki::new();
    let mut co = pki.options(tofu::Backend::default());
    co.send_limit = SendLimit {
        messages: 1 << 16,
        bytes: 256 << 10,
    };
    let p = pair_with(pki.options(tofu::Backend::default()), co);
    let (c, s) = connect(&p.client, &p.server, &p.addr);
    let check = |id: u64| {
        let m = recv(&p.server);
        assert_eq!(
            (m.channel(), m.message_id()),
            (s, id),
            "in order, none lost"
        );
        assert_eq!(m.body(), &pattern(id, 65000)[..]);
    };
    // A stream the reader keeps up with: the reactor holds the gate and frames are sealed.
    const FLOWING: u64 = 300;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for id in 1..=FLOWING {
                let m = data(OpCode::Signal, c, id, &pattern(id, 65000));
                p.client
                    .send_timeout(m, Some(PATIENCE))
                    .expect("room comes");
            }
        });
        (1..=FLOWING).for_each(check);
    });
    assert!(p._ce.stats().seals > 0, "frames were sealed");
    // Then the reader stops: socket buffers and the server's receive room fill, then the
    // client's queue, sealed frames included, and `post` refuses at the limit.
    let mut accepted = FLOWING;
    let refused = loop {
        let id = accepted + 1;
        match p
            .client
            .post(data(OpCode::Signal, c, id, &pattern(id, 65000)))
        {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 5000, "300 MB accepted: no send limit");
    };
    assert_eq!(refused.error, Error::SendQueueFull);
    assert_eq!(refused.message.message_id(), accepted + 1, "handed back");
    // Reading again, every accepted message arrives in order, and the queue has room again.
    (FLOWING + 1..=accepted).for_each(check);
    p.client
        .send_timeout(refused.message, Some(PATIENCE))
        .expect("room once read");
    check(accepted + 1);
}

#[test]
fn backpressure_a_sender_waits_while_the_reader_is_slow() {
    let pki = Pki::new();
    let mut so = pki.options(tofu::Backend::default());
    so.send_limit = SendLimit {
        messages: 16,
        bytes: 1 << 20,
    };
    let p = pair_with(pki.options(tofu::Backend::default()), so);
    let (c, s) = connect(&p.client, &p.server, &p.addr);
    const N: u64 = 20_000;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for i in 1..=N {
                let m = data(OpCode::Signal, c, i, &[7u8; 512]);
                p.client
                    .send_timeout(m, Some(PATIENCE))
                    .expect("room comes");
            }
        });
        for i in 1..=N {
            if i % 2000 == 0 {
                std::thread::sleep(Duration::from_millis(20)); // a slow reader
            }
            let m = recv(&p.server);
            assert_eq!((m.channel(), m.message_id()), (s, i), "in order, none lost");
        }
    });
}

#[test]
fn mutual_tls_the_server_sees_the_verified_client_identity() {
    let pki = Pki::new();
    let server = EngineOptions {
        tls_server: Some(server_config(&pki.server, Some(&pki.ca))),
        ..EngineOptions::default()
    };
    let client = EngineOptions {
        tls_client: Some(client_config(&pki.ca, Some(&pki.client))),
        ..EngineOptions::default()
    };
    let p = pair_with(server, client);
    let (c, id) = hello(&p.client, &p.addr);
    let mut h = recv(&p.server);
    expect(&h, OpCode::HelloRequest, Status::Success);
    assert_eq!(h.message_id(), id);
    assert_eq!(
        h.header_value(PEER_IDENTITY),
        Some("CN=node-7, DNS=node-7.tofu.test"),
        "{h:?}"
    );
    h.make_echo().unwrap();
    p.server.post(h).unwrap();
    let r = recv(&p.client);
    expect(&r, OpCode::HelloResponse, Status::Success);
    assert_eq!(r.channel(), c);
    assert_eq!(
        r.header_value(PEER_IDENTITY),
        None,
        "local only: never sent back"
    );

    // A client without a certificate is turned away; the listener keeps serving.
    let anon = Engine::new(pki.options(tofu::Backend::default())).unwrap();
    let g = anon.create_group().unwrap();
    let (ac, _) = hello(&g, &p.addr);
    // TLS 1.3: the client's side of the handshake ends first and its Hello goes out; the
    // server refuses it, sends an alert and closes. The client's channel ends.
    channel_ends(&g, ac);
    expect_server_side_closed(&p.server, Some("certificate"));

    // The same through `connect`: one error that carries the reason, and no Signal of a
    // channel the caller never got in the receive loop.
    let err = g.connect(&p.addr).unwrap_err();
    let RequestError::Refused(m) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (m.opcode(), m.status()),
        (OpCode::Signal, Status::ChannelClosed)
    );
    // The reason: rustls's words for the server's alert (the server's reset comes only
    // after the client read it: see `a_refused_client_learns_why_from_the_alert`).
    let why = m.header_value(ERROR_TEXT).unwrap_or_default();
    assert!(why.contains("CertificateRequired"), "{m:?}");
    assert!(err.to_string().contains(why), "{err}");
    assert_eq!(err.reason(), Some(why), "reason() is the same text");
    expect_server_side_closed(&p.server, Some("certificate"));
    assert!(g
        .wait_receive(Some(Duration::from_millis(200)))
        .unwrap()
        .is_none());
}

#[test]
fn a_peer_cannot_forge_the_identity_header() {
    let pki = Pki::new();
    let p = pair(&pki, tofu::Backend::default());
    let mut m = Message::new();
    p.addr.format_connect(&mut m).unwrap();
    m.append_header(PEER_IDENTITY, "CN=admin").unwrap();
    p.client.post(m).unwrap();
    let h = recv(&p.server);
    expect(&h, OpCode::HelloRequest, Status::Success);
    assert_eq!(
        h.header_value(PEER_IDENTITY),
        None,
        "no client certificate, no identity"
    );
}

#[test]
fn handshake_failures_are_statuses_and_the_listener_keeps_serving() {
    let pki = Pki::new();
    let p = pair(&pki, tofu::Backend::default());

    // Unknown CA: the client trusts another authority.
    let other = Ca::new("another CA");
    let stranger = Engine::new(EngineOptions {
        tls_client: Some(client_config(&other, None)),
        ..EngineOptions::default()
    })
    .unwrap();
    let g = stranger.create_group().unwrap();
    expect_connect_fails(&g, &p.addr, Status::TlsFailed, "UnknownIssuer");
    expect_server_side_closed(&p.server, None);
    still_serving(&pki, &p);

    // Name mismatch: the certificate names another host than the one connected to.
    let elsewhere = pki.ca.leaf("elsewhere", &["elsewhere.example"]);
    let wrong = pair_with(
        EngineOptions {
            tls_server: Some(server_config(&elsewhere, None)),
            ..EngineOptions::default()
        },
        pki.options(tofu::Backend::default()),
    );
    expect_connect_fails(
        &wrong.client,
        &wrong.addr,
        Status::TlsFailed,
        "not valid for name",
    );
    expect_server_side_closed(&wrong.server, None);

    // Expired certificate.
    let expired = pki
        .ca
        .leaf_with("old", &["localhost", "127.0.0.1"], |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
    let old = pair_with(
        EngineOptions {
            tls_server: Some(server_config(&expired, None)),
            ..EngineOptions::default()
        },
        pki.options(tofu::Backend::default()),
    );
    expect_connect_fails(&old.client, &old.addr, Status::TlsFailed, "Expired");
    expect_server_side_closed(&old.server, None);
    still_serving(&pki, &p);
}

#[test]
fn plain_and_tls_peers_do_not_mix() {
    let pki = Pki::new();
    // Either side may take a mixed-up peer's bytes for the start of something long and wait
    // for the rest: the frame timeout (and the handshake's) ends that.
    let quick = || EngineOptions {
        frame_timeout: Some(Duration::from_millis(300)),
        ..pki.options(tofu::Backend::default())
    };
    let p = pair_with(quick(), quick());
    // A plain tcp| client at a TLS listener: its Hello is not a TLS record.
    let port = p.addr.port().unwrap();
    let (c, _) = hello(&p.client, &Address::tcp("127.0.0.1", port));
    channel_ends(&p.client, c);
    expect_server_side_closed(&p.server, Some("TLS"));
    still_serving(&pki, &p);

    // A TLS client at a plain tcp| listener: its ClientHello is not a tofu frame.
    let plain = tcp_loopback();
    listen(&p.server, &plain);
    let port = plain.port().unwrap();
    let (c, _) = hello(&p.client, &Address::tls("127.0.0.1", port));
    let before = channel_ends(&p.client, c);
    assert!(
        before.iter().any(|m| m.opcode() == OpCode::HelloRequest),
        "the Hello never went out (the handshake did not end): handed back, {before:?}"
    );
    let m = recv(&p.server);
    assert_eq!(
        (m.opcode(), m.status()),
        (OpCode::Signal, Status::ChannelClosed),
        "{m:?}"
    );
    still_serving(&pki, &p);
}

#[test]
fn tls_without_a_config_is_refused_at_post_with_what_to_set() {
    let engine = Engine::with_defaults().unwrap();
    let g = engine.create_group().unwrap();
    let e = g.connect(&Address::tls("localhost", 1)).unwrap_err();
    assert!(e.to_string().contains("EngineOptions::tls_client"), "{e}");
    let e = g.listen(&Address::tls("127.0.0.1", 0)).unwrap_err();
    assert!(e.to_string().contains("EngineOptions::tls_server"), "{e}");
    let mut m = Message::new();
    Address::tls("localhost", 1).format_connect(&mut m).unwrap();
    let e = g.post(m).unwrap_err();
    assert_eq!(e.error, Error::InvalidAddress);
    assert!(e.to_string().contains("tls_client"), "{e}");
}

/// A HelloRequest frame as bytes (`wire::encode`), for clients that are not tofu engines.
fn hello_frame(addr: &Address, id: u64) -> Vec<u8> {
    let mut m = Message::new();
    addr.format_connect(&mut m).unwrap();
    m.header.message_id = id;
    let mut out = Vec::new();
    tofu::wire::encode(&m, &mut out).unwrap();
    out
}

#[test]
fn garbage_and_a_stalled_handshake_close_with_tls_failed() {
    let pki = Pki::new();
    let p = pair_with(
        EngineOptions {
            frame_timeout: Some(Duration::from_millis(300)),
            ..pki.options(tofu::Backend::default())
        },
        pki.options(tofu::Backend::default()),
    );
    let port = p.addr.port().unwrap();
    // Garbage instead of a ClientHello.
    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    expect_server_side_closed(&p.server, Some("TLS"));
    // A slowloris handshake: a ClientHello's first bytes, then nothing.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    expect_server_side_closed(&p.server, Some("handshake not completed"));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "not before the timeout"
    );
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(slow.read(&mut buf), Ok(0) | Err(_)),
        "the server closed the stalled connection"
    );
    still_serving(&pki, &p);
}

#[test]
fn openssl_s_client_exchanges_a_tofu_frame() {
    use std::process::{Command, Stdio};
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: no openssl command on this system");
        return;
    }
    let pki = Pki::new();
    let p = pair(&pki, tofu::Backend::default());
    let dir = std::env::temp_dir().join(format!("tofu-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let port = p.addr.port().unwrap();
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-servername",
            "localhost",
        ])
        .args(["-verify_hostname", "localhost", "-CAfile"])
        .arg(&ca)
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&hello_frame(&p.addr, 42)).unwrap();
    stdin.flush().unwrap();
    let mut h = recv(&p.server);
    expect(&h, OpCode::HelloRequest, Status::Success);
    assert_eq!(h.message_id(), 42);
    h.make_echo().unwrap();
    let s = h.channel();
    p.server.post(h).unwrap();
    // The HelloResponse comes back through openssl, decrypted: a tofu frame.
    let mut out = child.stdout.take().unwrap();
    let mut head = [0u8; 16];
    out.read_exact(&mut head).unwrap();
    let resp = tofu::wire::FrameHeader::parse(&head);
    assert_eq!(resp.message_id, 42);
    p.server.post(data(OpCode::ByeSignal, s, 0, b"")).unwrap();
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `recipes::Server` on a `tls|` listener tells its service about a client it refused
/// (another CA's client, a plain `tcp|` client), with rustls's words, and goes on serving.
#[test]
fn a_server_reports_refused_tls_clients_to_its_service() {
    use std::ops::ControlFlow;
    use std::sync::{Arc, Mutex};
    use tofu::recipes::{Server, Service};

    #[derive(Default)]
    struct Refusals(Arc<Mutex<Vec<Option<String>>>>);
    impl Service for Refusals {
        fn on_message(&mut self, _: Message, _: &ChannelGroup) -> ControlFlow<()> {
            ControlFlow::Continue(())
        }
        fn on_failed_connect(&mut self, end: &Message) -> ControlFlow<()> {
            let why = end.header_value(ERROR_TEXT).map(str::to_string);
            self.0.lock().unwrap().push(why);
            ControlFlow::Continue(())
        }
    }
    let wait_for = |seen: &Mutex<Vec<Option<String>>>, n: usize| {
        let deadline = Instant::now() + PATIENCE;
        while seen.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "no failed connect reported");
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    let pki = Pki::new();
    let se = pki.engine(tofu::Backend::default());
    let service = Refusals::default();
    let seen = Arc::clone(&service.0);
    let server = Server::start(&se, &[Address::tls("127.0.0.1", 0)], service).unwrap();
    let addr = server.addresses()[0].clone();

    // A client that trusts another authority: it refuses the server's certificate and says
    // so with an alert.
    let other = Ca::new("another CA");
    let stranger = Engine::new(EngineOptions {
        tls_client: Some(client_config(&other, None)),
        ..EngineOptions::default()
    })
    .unwrap();
    let g = stranger.create_group().unwrap();
    assert!(g.connect(&addr).is_err());
    wait_for(&seen, 1);
    // A plain client: its Hello is no TLS record.
    let plain = Address::tcp("127.0.0.1", addr.port().unwrap());
    let _ = g.connect_timeout(&plain, Duration::from_millis(500));
    wait_for(&seen, 2);

    // Still serving a good client, which is no failed connect.
    let ce = pki.engine(tofu::Backend::default());
    let good = ce.create_group().unwrap();
    let c = good.connect(&addr).unwrap();
    good.disconnect(c, Some(PATIENCE)).unwrap();
    drop(server.stop());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for why in &seen {
        let why = why.as_deref().unwrap_or_default().to_lowercase();
        assert!(why.contains("tls"), "{why:?}");
    }
}

/// A client the server refuses (mutual TLS, no certificate, or one of another authority)
/// learns why from the server's alert, every time: the server ends its side after the
/// alert and resets the connection only later. Before, it reset at once, and most clients'
/// OS took the reset before their application read the alert ("connection reset by peer",
/// 8 of 12 tries in a trial).
#[test]
fn a_refused_client_learns_why_from_the_alert() {
    let pki = Pki::new();
    let server = EngineOptions {
        tls_server: Some(server_config(&pki.server, Some(&pki.ca))),
        ..EngineOptions::default()
    };
    let se = Engine::new(server).unwrap();
    let s = se.create_group().unwrap();
    let addr = s.listen(&Address::tls("127.0.0.1", 0)).unwrap().address;
    let other = Ca::new("another CA");
    let stranger = other.leaf("stranger", &["stranger.example"]);
    let cases = [
        (client_config(&pki.ca, None), "CertificateRequired"),
        (client_config(&pki.ca, Some(&stranger)), "alert"),
    ];
    for (config, words) in cases {
        let ce = Engine::new(EngineOptions {
            tls_client: Some(config),
            ..EngineOptions::default()
        })
        .unwrap();
        let g = ce.create_group().unwrap();
        for _ in 0..50 {
            let err = g.connect(&addr).unwrap_err();
            let why = err.reason().unwrap_or_default();
            assert!(why.contains(words), "{why:?} should say {words:?}: {err}");
            expect_server_side_closed(&s, Some("certificate"));
        }
    }
}

/// A `tls|` client at a plain `tcp|` listener fails at once, not after the frame timeout
/// (30 s by default): the listener knows a ClientHello when it sees one, closes that
/// connection and says why; the client's handshake ends with the connection.
#[test]
fn a_tls_client_at_a_plain_listener_fails_at_once() {
    let pki = Pki::new();
    let se = Engine::with_defaults().unwrap();
    let server = se.create_group().unwrap();
    let plain = server
        .listen(&Address::tcp("127.0.0.1", 0))
        .unwrap()
        .address;
    let ce = pki.engine(tofu::Backend::default());
    let client = ce.create_group().unwrap();
    let started = Instant::now();
    let err = client
        .connect(&Address::tls("127.0.0.1", plain.port().unwrap()))
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed after {:?} (the frame timeout is 30 s): {err}",
        started.elapsed()
    );
    expect_server_side_closed(&server, Some("tls| client needs a tls| listener"));
}
