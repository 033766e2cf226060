//! Byte streams captured between two Zig tofu processes (see tests/fixtures/wire/README.md):
//! our decoder splits them into exactly the captured frames and our encoder reproduces them.

use tofu::message::Origin;
use tofu::wire::{encode, Decoder};
use tofu::{Message, OpCode, Status};

const C2S: &[u8] = include_bytes!("fixtures/wire/client-to-server.bin");
const S2C: &[u8] = include_bytes!("fixtures/wire/server-to-client.bin");

struct Want {
    op: OpCode,
    channel: u16,
    id: u64,
    headers: &'static [u8],
    body: &'static [u8],
    len: usize,
}

const BODY: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

fn client_frames() -> [Want; 3] {
    [
        Want {
            op: OpCode::HelloRequest,
            channel: 24005,
            id: 1,
            headers: b"~connect_to:tcp|127.0.0.1|17200\r\n",
            body: b"",
            len: 49,
        },
        Want {
            op: OpCode::Request,
            channel: 24005,
            id: 1,
            headers: b"x-peer-seq:1\r\n",
            body: BODY,
            len: 46,
        },
        Want {
            op: OpCode::ByeRequest,
            channel: 24005,
            id: 2,
            headers: b"",
            body: b"",
            len: 16,
        },
    ]
}

fn server_frames() -> [Want; 3] {
    [
        Want {
            op: OpCode::HelloResponse,
            channel: 9001,
            id: 1,
            headers: b"~connect_to:tcp|127.0.0.1|17200\r\n",
            body: b"",
            len: 49,
        },
        Want {
            op: OpCode::Response,
            channel: 9001,
            id: 1,
            headers: b"x-peer-seq:1\r\n",
            body: BODY,
            len: 46,
        },
        Want {
            op: OpCode::ByeResponse,
            channel: 9001,
            id: 2,
            headers: b"",
            body: b"",
            len: 16,
        },
    ]
}

fn check(got: &[Message], want: &[Want]) {
    assert_eq!(got.len(), want.len(), "frame count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.opcode(), w.op);
        assert_eq!(g.channel(), w.channel);
        assert_eq!(g.message_id(), w.id);
        assert_eq!(g.text_headers(), w.headers);
        assert_eq!(g.body(), w.body);
        assert_eq!(g.origin(), Origin::Application);
        assert_eq!(g.status(), Status::Success);
        assert!(!g.header.more);
        assert_eq!(tofu::wire::encoded_len(g), w.len);
    }
}

fn reencode(frames: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        encode(f, &mut out).unwrap();
    }
    out
}

#[test]
fn client_stream_decodes_to_captured_frames() {
    let frames = Decoder::decode_all(C2S).unwrap();
    check(&frames, &client_frames());
    assert_eq!(reencode(&frames), C2S, "re-encoding reproduces the capture");
}

#[test]
fn server_stream_decodes_to_captured_frames() {
    let frames = Decoder::decode_all(S2C).unwrap();
    check(&frames, &server_frames());
    assert_eq!(reencode(&frames), S2C);
}

fn decode_byte_by_byte(stream: &[u8]) -> Vec<Message> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for b in stream.chunks(1) {
        let p = d.decode(b, &mut || Some(Message::new())).unwrap();
        assert_eq!(p.consumed, 1);
        out.extend(p.frame);
    }
    assert!(!d.is_mid_frame());
    out
}

#[test]
fn one_byte_at_a_time() {
    check(&decode_byte_by_byte(C2S), &client_frames());
    check(&decode_byte_by_byte(S2C), &server_frames());
}

#[test]
fn built_from_fields_matches_capture() {
    // An encoder given the same header fields produces the same bytes.
    let mut out = Vec::new();
    for w in client_frames() {
        let mut m = Message::with_opcode(w.op);
        m.header.channel = w.channel;
        m.header.message_id = w.id;
        m.text_headers_mut().extend_from_slice(w.headers);
        m.set_body(w.body);
        encode(&m, &mut out).unwrap();
    }
    assert_eq!(out, C2S);
}
