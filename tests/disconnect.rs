//! Peers that vanish or misbehave: only their channel closes, with a status; nothing hangs.
//! Every scenario runs over plain TCP and, with the `tls` feature, over TLS (the peer's
//! frames then travel inside a real rustls session), on every poller backend.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;
use tofu::wire::{encode, FrameHeader};
use tofu::{
    Address, Backend, ChannelGroup, Engine, EngineOptions, Message, OpCode, Origin, Status,
};

/// The byte stream a raw (non-tofu) peer speaks over.
enum Wire {
    Tcp,
    #[cfg(feature = "tls")]
    Tls(Box<common::tls::Pki>),
}

/// Runs `scenario` over every wire and every backend.
fn on_every_wire(scenario: impl Fn(&Wire, Backend)) {
    on_every_backend(|b| scenario(&Wire::Tcp, b));
    #[cfg(feature = "tls")]
    {
        eprintln!("=== over TLS");
        let wire = Wire::Tls(Box::new(common::tls::Pki::new()));
        on_every_backend(|b| scenario(&wire, b));
    }
}

/// A raw peer's connection: a socket, or a rustls session over one.
trait PeerStream: Read + Write {
    /// Ends our sending side (after a close_notify on TLS) and keeps reading possible.
    fn shutdown_write(&mut self);
    /// The socket under the stream, to write past a TLS session.
    fn socket(&mut self) -> &mut TcpStream;
}

impl PeerStream for TcpStream {
    fn shutdown_write(&mut self) {
        self.shutdown(Shutdown::Write).unwrap();
    }

    fn socket(&mut self) -> &mut TcpStream {
        self
    }
}

#[cfg(feature = "tls")]
impl<C, S> PeerStream for tofu::rustls::StreamOwned<C, TcpStream>
where
    C: std::ops::DerefMut<Target = tofu::rustls::ConnectionCommon<S>>,
    S: tofu::rustls::SideData,
{
    fn shutdown_write(&mut self) {
        self.conn.send_close_notify();
        self.flush().unwrap();
        // The close_notify already ends the stream for the engine, which may have closed the
        // connection by now (then the socket is no longer connected).
        let _ = self.sock.shutdown(Shutdown::Write);
    }

    fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }
}

type Peer = Box<dyn PeerStream>;

impl Wire {
    fn options(&self, backend: Backend) -> EngineOptions {
        match self {
            Wire::Tcp => EngineOptions {
                backend,
                ..EngineOptions::default()
            },
            #[cfg(feature = "tls")]
            Wire::Tls(pki) => pki.options(backend),
        }
    }

    /// An address of this wire on `port` of the loopback.
    fn address(&self, port: u16) -> Address {
        match self {
            Wire::Tcp => Address::tcp("127.0.0.1", port),
            #[cfg(feature = "tls")]
            Wire::Tls(_) => Address::tls("127.0.0.1", port),
        }
    }

    /// An engine (with `options`) with one group listening on a fresh loopback port.
    fn listening_with(&self, options: EngineOptions) -> (Engine, ChannelGroup, Address) {
        let e = Engine::new(options).expect("engine starts");
        let g = e.create_group().unwrap();
        let addr = self.address(free_tcp_port().unwrap());
        listen(&g, &addr);
        (e, g, addr)
    }

    fn listening(&self, backend: Backend) -> (Engine, ChannelGroup, Address) {
        self.listening_with(self.options(backend))
    }

    /// A raw client connected to `addr` (its handshake done on TLS).
    fn client(&self, addr: &Address) -> Peer {
        match self {
            Wire::Tcp => {
                let s = TcpStream::connect(("127.0.0.1", addr.port().unwrap())).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                Box::new(s)
            }
            #[cfg(feature = "tls")]
            Wire::Tls(pki) => Box::new(pki.raw_client(addr)),
        }
    }

    /// The next connection on a raw listener (its handshake done on TLS).
    fn accept(&self, listener: &TcpListener) -> Peer {
        match self {
            Wire::Tcp => {
                let (s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                Box::new(s)
            }
            #[cfg(feature = "tls")]
            Wire::Tls(pki) => Box::new(pki.raw_server(listener)),
        }
    }

    /// A raw client connected to `addr` whose Hello (message_id `id`) `g` received: the
    /// client and the server's channel number.
    fn greeted(&self, addr: &Address, g: &ChannelGroup, id: u64) -> (Peer, u16) {
        let mut peer = self.client(addr);
        send(&mut peer, &frame(OpCode::HelloRequest, id, b""));
        (peer, recv(g).channel())
    }
}

/// Writes all of `bytes` and flushes (on TLS, the records reach the socket).
fn send(peer: &mut Peer, bytes: &[u8]) {
    peer.write_all(bytes).unwrap();
    peer.flush().unwrap();
}

fn frame(op: OpCode, id: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Message::with_opcode(op);
    m.header.channel = 321;
    m.header.message_id = id;
    m.header.oob = false;
    m.set_body(body);
    if op == OpCode::HelloRequest {
        m.append_header("~connect_to", "tcp|127.0.0.1|1").unwrap();
    }
    let mut out = Vec::new();
    encode(&m, &mut out).unwrap();
    out
}

#[test]
fn peer_killed_mid_frame() {
    on_every_wire(|w, b| {
        let (_engine, g, addr) = w.listening(b);
        let mut peer = w.client(&addr);
        let mut bytes = frame(OpCode::HelloRequest, 1, b"");
        let second = frame(OpCode::Request, 2, &[9u8; 500]);
        bytes.extend_from_slice(&second[..100]);
        send(&mut peer, &bytes);
        let hello = recv(&g);
        expect(&hello, OpCode::HelloRequest, Status::Success);
        let s = hello.channel();
        drop(peer);
        let end = recv(&g);
        expect_closed_signal(&end, s);
        assert_eq!(
            end.message_id(),
            1,
            "final Signal carries the first received id"
        );
    });
}

#[test]
fn half_closed_peer_delivers_everything_then_closes() {
    on_every_wire(|w, b| {
        let (_engine, g, addr) = w.listening(b);
        let mut peer = w.client(&addr);
        let mut bytes = frame(OpCode::HelloRequest, 1, b"");
        for i in 2..=50 {
            bytes.extend(frame(OpCode::Signal, i, &[i as u8; 300]));
        }
        send(&mut peer, &bytes);
        peer.shutdown_write();
        let s = recv(&g).channel();
        for i in 2..=50u64 {
            let m = recv(&g);
            assert_eq!((m.opcode(), m.message_id()), (OpCode::Signal, i));
        }
        expect_closed_signal(&recv(&g), s);
    });
}

#[test]
fn raw_server_vanishes_and_client_channel_closes() {
    on_every_wire(|w, b| {
        let e = Engine::new(w.options(b)).unwrap();
        let g = e.create_group().unwrap();
        let raw = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = w.address(raw.local_addr().unwrap().port());
        let (c, _) = hello(&g, &addr);
        let mut conn = w.accept(&raw);
        let mut head = [0u8; 16];
        conn.read_exact(&mut head).unwrap();
        let h = FrameHeader::parse(&head);
        assert_eq!(h.opcode_bits(), OpCode::HelloRequest as u8);
        assert_eq!(h.channel, c, "the wire carries the sender's channel number");
        drop(conn);
        drop(raw);
        let end = recv(&g);
        expect_closed_signal(&end, c);
        assert_eq!(end.origin(), Origin::Engine);
    });
}

#[test]
fn bad_frames_close_only_that_channel() {
    on_every_wire(|w, b| {
        let (_engine, g, addr) = w.listening(b);
        let (mut good, good_ch) = w.greeted(&addr, &g, 1);

        // An undefined opCode after a valid Hello.
        let mut bad = w.client(&addr);
        let mut bytes = frame(OpCode::HelloRequest, 5, b"");
        let h = FrameHeader {
            proto: 13,
            ..FrameHeader::default()
        };
        bytes.extend_from_slice(&h.to_bytes());
        send(&mut bad, &bytes);
        let bad_ch = recv(&g).channel();
        expect_closed_signal(&recv(&g), bad_ch);
        // Our side reset the connection.
        let mut buf = [0u8; 1];
        assert!(matches!(bad.read(&mut buf), Ok(0) | Err(_)));

        // Forged origin and status are cleared.
        let mut forged = frame(OpCode::Request, 7, b"x");
        forged[2] |= 0x10;
        forged[3] = Status::ChannelClosed as u8;
        send(&mut good, &forged);
        let m = recv(&g);
        assert_eq!((m.channel(), m.message_id()), (good_ch, 7));
        assert_eq!(
            (m.origin(), m.status()),
            (Origin::Application, Status::Success)
        );
        expect_silence(&g, Duration::from_millis(50));
    });
}

/// A peer that starts a frame and never finishes it (slowloris) loses only its channel, after
/// `frame_timeout`; the engine and the other channels keep working.
#[test]
fn incomplete_frame_times_out() {
    on_every_wire(|w, b| {
        let (_engine, g, addr) = w.listening_with(EngineOptions {
            frame_timeout: Some(Duration::from_millis(300)),
            ..w.options(b)
        });
        let (mut good, good_ch) = w.greeted(&addr, &g, 1);

        let (mut slow, slow_ch) = w.greeted(&addr, &g, 2);
        let promise = frame(OpCode::Request, 3, &[7u8; 1000]);
        send(&mut slow, &promise[..30]); // header + 14 of 1000 body bytes
        let started = std::time::Instant::now();
        expect_closed_signal(&recv(&g), slow_ch);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "closed only after the timeout"
        );

        send(&mut good, &frame(OpCode::Signal, 4, b"still fine"));
        let m = recv(&g);
        assert_eq!(
            (m.channel(), m.message_id(), m.body()),
            (good_ch, 4, &b"still fine"[..])
        );
        // A channel that is merely idle between frames is never timed out.
        expect_silence(&g, Duration::from_millis(500));
    });
}

/// The largest frame the format allows arrives intact.
#[test]
fn maximum_lengths_from_a_raw_peer() {
    on_every_wire(|w, b| {
        let (_engine, g, addr) = w.listening(b);
        let (mut peer, ch) = w.greeted(&addr, &g, 1);
        let mut m = Message::with_opcode(OpCode::Request);
        m.header.channel = 1;
        m.header.message_id = u64::MAX;
        m.text_headers_mut()
            .extend(std::iter::repeat_n(b'h', 65_533));
        m.text_headers_mut().extend_from_slice(b"\r\n");
        m.set_body(&vec![0xAB; 65_535]);
        let mut bytes = Vec::new();
        encode(&m, &mut bytes).unwrap();
        assert_eq!(bytes.len(), tofu::wire::MAX_FRAME_LEN);
        send(&mut peer, &bytes);
        let got = recv(&g);
        assert_eq!((got.channel(), got.message_id()), (ch, u64::MAX));
        assert_eq!(got.text_headers(), m.text_headers());
        assert_eq!(got.body(), m.body());
    });
}

/// Garbage after a good Hello: on TCP, bytes that are no frame; on TLS, bytes that are no TLS
/// record, written past the session straight onto the socket. Only that channel closes.
#[test]
fn garbage_after_the_hello_closes_only_that_channel() {
    on_every_wire(|w, b| {
        let (_engine, g, addr) = w.listening(b);
        let (mut good, good_ch) = w.greeted(&addr, &g, 1);
        let (mut bad, bad_ch) = w.greeted(&addr, &g, 2);
        let garbage: Vec<u8> = match w {
            // A frame header with an undefined protocol version.
            Wire::Tcp => vec![0xff; 64],
            // A TLS application-data record header and 32 bytes no session encrypted.
            #[cfg(feature = "tls")]
            Wire::Tls(_) => [&[0x17, 0x03, 0x03, 0x00, 0x20][..], &[0xee; 32]].concat(),
        };
        bad.socket().write_all(&garbage).unwrap();
        expect_closed_signal(&recv(&g), bad_ch);
        send(&mut good, &frame(OpCode::Signal, 3, b"still fine"));
        let m = recv(&g);
        assert_eq!((m.channel(), m.message_id()), (good_ch, 3));
    });
}
