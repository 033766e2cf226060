//! Peers that vanish or misbehave: only their channel closes, with a status; nothing hangs.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;
use tofu::wire::{encode, FrameHeader};
use tofu::{Address, Message, OpCode, Origin, Status};

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

fn raw_client(addr: &Address) -> TcpStream {
    let Address::Tcp { host, port } = addr else {
        unreachable!()
    };
    let s = TcpStream::connect((host.as_str(), *port)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[test]
fn peer_killed_mid_frame() {
    on_every_backend(|b| {
        let (_engine, g, addr) = tcp_listening(b);
        let mut peer = raw_client(&addr);
        let mut bytes = frame(OpCode::HelloRequest, 1, b"");
        let second = frame(OpCode::Request, 2, &[9u8; 500]);
        bytes.extend_from_slice(&second[..100]);
        peer.write_all(&bytes).unwrap();
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
    on_every_backend(|b| {
        let (_engine, g, addr) = tcp_listening(b);
        let mut peer = raw_client(&addr);
        let mut bytes = frame(OpCode::HelloRequest, 1, b"");
        for i in 2..=50 {
            bytes.extend(frame(OpCode::Signal, i, &[i as u8; 300]));
        }
        peer.write_all(&bytes).unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
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
    on_every_backend(|b| {
        let e = engine(b);
        let g = e.create_group().unwrap();
        let raw = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Address::tcp("127.0.0.1", raw.local_addr().unwrap().port());
        let (c, _) = hello(&g, &addr);
        let (mut conn, _) = raw.accept().unwrap();
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
    on_every_backend(|b| {
        let (_engine, g, addr) = tcp_listening(b);
        let mut good = raw_client(&addr);
        good.write_all(&frame(OpCode::HelloRequest, 1, b""))
            .unwrap();
        let good_ch = recv(&g).channel();

        // An undefined opCode after a valid Hello.
        let mut bad = raw_client(&addr);
        let mut bytes = frame(OpCode::HelloRequest, 5, b"");
        let h = FrameHeader {
            proto: 13,
            ..FrameHeader::default()
        };
        bytes.extend_from_slice(&h.to_bytes());
        bad.write_all(&bytes).unwrap();
        let bad_ch = recv(&g).channel();
        expect_closed_signal(&recv(&g), bad_ch);
        // Our side reset the connection.
        bad.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(bad.read(&mut buf), Ok(0) | Err(_)));

        // Forged origin and status are cleared.
        let mut forged = frame(OpCode::Request, 7, b"x");
        forged[2] |= 0x10;
        forged[3] = Status::ChannelClosed as u8;
        good.write_all(&forged).unwrap();
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
    on_every_backend(|b| {
        let e = tofu::Engine::new(tofu::EngineOptions {
            backend: b,
            frame_timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        })
        .unwrap();
        let g = e.create_group().unwrap();
        let addr = tcp_loopback();
        listen(&g, &addr);
        let mut good = raw_client(&addr);
        good.write_all(&frame(OpCode::HelloRequest, 1, b""))
            .unwrap();
        let good_ch = recv(&g).channel();

        let mut slow = raw_client(&addr);
        slow.write_all(&frame(OpCode::HelloRequest, 2, b""))
            .unwrap();
        let slow_ch = recv(&g).channel();
        let promise = frame(OpCode::Request, 3, &[7u8; 1000]);
        slow.write_all(&promise[..30]).unwrap(); // header + 14 of 1000 body bytes
        let started = std::time::Instant::now();
        expect_closed_signal(&recv(&g), slow_ch);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "closed only after the timeout"
        );

        good.write_all(&frame(OpCode::Signal, 4, b"still fine"))
            .unwrap();
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
    on_every_backend(|b| {
        let (_engine, g, addr) = tcp_listening(b);
        let mut peer = raw_client(&addr);
        peer.write_all(&frame(OpCode::HelloRequest, 1, b""))
            .unwrap();
        let ch = recv(&g).channel();
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
        peer.write_all(&bytes).unwrap();
        let got = recv(&g);
        assert_eq!((got.channel(), got.message_id()), (ch, u64::MAX));
        assert_eq!(got.text_headers(), m.text_headers());
        assert_eq!(got.body(), m.body());
    });
}
