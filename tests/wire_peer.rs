//! Wire compatibility through real sockets: a raw peer replays the streams captured from Zig
//! tofu, and our engine answers with byte-identical frames (channel numbers aside, which are
//! each side's own).

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use tofu::wire::{encode, Decoder, HEADER_LEN};
use tofu::{Address, Message, OpCode, Status};

const C2S: &[u8] = include_bytes!("fixtures/wire/client-to-server.bin");
const S2C: &[u8] = include_bytes!("fixtures/wire/server-to-client.bin");

/// Frame boundaries of both captures (same sizes on both sides).
const FRAMES: [std::ops::Range<usize>; 3] = [0..49, 49..95, 95..111];

/// Bytes with every frame's channel field zeroed.
fn without_channels(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    for f in FRAMES {
        v[f.start] = 0;
        v[f.start + 1] = 0;
    }
    v
}

fn read_frames(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let fh = tofu::wire::FrameHeader::parse(&h);
        let mut rest = vec![0u8; fh.payload_len()];
        s.read_exact(&mut rest).unwrap();
        out.extend_from_slice(&h);
        out.extend_from_slice(&rest);
    }
    out
}

/// A Zig tofu client (replayed) talks to our engine acting as server.
#[test]
fn zig_client_to_rust_server() {
    on_every_backend(|b| {
        let (_engine, g, addr) = tcp_listening(b);
        let Address::Tcp { port, .. } = &addr else {
            unreachable!()
        };
        let mut zig = TcpStream::connect(("127.0.0.1", *port)).unwrap();
        zig.set_read_timeout(Some(PATIENCE)).unwrap();
        zig.write_all(C2S).unwrap();
        // Our application echoes Hello, Request and Bye exactly as the Zig server did.
        let mut s = 0;
        for want in [OpCode::HelloRequest, OpCode::Request, OpCode::ByeRequest] {
            let mut m = recv(&g);
            expect(&m, want, Status::Success);
            s = m.channel();
            m.make_echo().unwrap();
            g.post(m).unwrap();
        }
        let got = read_frames(&mut zig, 3);
        assert_eq!(without_channels(&got), without_channels(S2C));
        for f in FRAMES {
            assert_eq!(u16::from_be_bytes([got[f.start], got[f.start + 1]]), s);
        }
    });
}

/// Our engine as client talks to a Zig tofu server (replayed).
#[test]
fn rust_client_to_zig_server() {
    on_every_backend(|b| {
        let raw = TcpListener::bind("127.0.0.1:17200")
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = raw.local_addr().unwrap().port();
        let e = engine(b);
        let g = e.create_group().unwrap();
        // Build exactly the frames of the capture: the address header names port 17200.
        let mut hello = Message::new();
        hello
            .text_headers_mut()
            .extend_from_slice(b"~connect_to:tcp|127.0.0.1|17200\r\n");
        hello.header.opcode = OpCode::HelloRequest;
        hello.header.message_id = 1;
        if port != 17200 {
            // The capture's port is busy here: connect elsewhere, compare all but the header.
            hello.text_headers_mut().clear();
            Address::tcp("127.0.0.1", port)
                .format_connect(&mut hello)
                .unwrap();
            hello.header.message_id = 1;
        }
        let c = g.post(hello).unwrap().channel;
        let mut req = data(OpCode::Request, c, 1, &(1..=16).collect::<Vec<u8>>());
        req.append_header("x-peer-seq", "1").unwrap();
        g.post(req).unwrap();
        g.post(data(OpCode::ByeRequest, c, 2, b"")).unwrap();

        let (mut zig, _) = raw.accept().unwrap();
        zig.set_read_timeout(Some(PATIENCE)).unwrap();
        let got = read_frames(&mut zig, 3);
        if port == 17200 {
            assert_eq!(without_channels(&got), without_channels(C2S));
        } else {
            assert_eq!(without_channels(&got[49..]), without_channels(&C2S[49..]));
        }
        zig.write_all(S2C).unwrap();
        let m = recv(&g);
        expect(&m, OpCode::HelloResponse, Status::Success);
        assert_eq!((m.channel(), m.message_id()), (c, 1));
        let m = recv(&g);
        expect(&m, OpCode::Response, Status::Success);
        assert_eq!(m.body(), (1..=16).collect::<Vec<u8>>().as_slice());
        assert_eq!(m.header_value("x-peer-seq"), Some("1"));
        expect(&recv(&g), OpCode::ByeResponse, Status::Success);
        expect_closed_signal(&recv(&g), c);
    });
}

/// Our encoder's output, sent through a real socket pair, decodes to the same messages.
#[test]
fn encoder_output_through_a_socket_pair() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut b, _) = l.accept().unwrap();
    let mut msgs = Vec::new();
    for i in 0..200u64 {
        let mut m = data(
            OpCode::Signal,
            (i % 65534 + 1) as u16,
            i + 1,
            &vec![i as u8; (i * 331 % 65536) as usize],
        );
        m.append_header("i", &i.to_string()).unwrap();
        msgs.push(m);
    }
    let writer = {
        let mut bytes = Vec::new();
        for m in &msgs {
            encode(m, &mut bytes).unwrap();
        }
        std::thread::spawn(move || {
            a.write_all(&bytes).unwrap();
        })
    };
    let mut d = Decoder::new();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 7919];
    while got.len() < msgs.len() {
        let n = b.read(&mut buf).unwrap();
        assert!(n > 0);
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let p = d.decode(chunk, &mut || Some(Message::new())).unwrap();
            chunk = &chunk[p.consumed..];
            got.extend(p.frame);
        }
    }
    writer.join().unwrap();
    for (g, w) in got.iter().zip(&msgs) {
        assert_eq!(g.header, w.header);
        assert_eq!(g.text_headers(), w.text_headers());
        assert_eq!(g.body(), w.body());
    }
}
