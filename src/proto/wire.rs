//! The wire format: a 16-byte big-endian header, then `thl` bytes of text headers, then `bl`
//! bytes of body. No magic, version, checksum or padding; frames follow each other on the
//! stream. This module does no I/O: [`encode`] appends bytes to a buffer and [`Decoder`]
//! turns a byte stream, cut at any point, into messages.
//!
//! ```text
//! offset  size  field
//!      0     2  channel      sender's local channel number (the receiver replaces it)
//!      2     1  proto        bits 0-3 opCode, 4 origin, 5 more, 6 internal A, 7 internal B
//!      3     1  status
//!      4     8  message_id
//!     12     2  thl          text-header length
//!     14     2  bl           body length
//! ```
//!
//! Fields are read and written one by one in network byte order, never as a memory image.

use std::fmt;

use crate::proto::message::{Message, OpCode, Origin, MAX_SECTION_LEN};
use crate::proto::status::{Error, Status};

/// Length of the binary header.
pub const HEADER_LEN: usize = 16;
/// Largest possible frame: header plus two maximal sections (131086 bytes).
pub const MAX_FRAME_LEN: usize = HEADER_LEN + 2 * MAX_SECTION_LEN;

mod field {
    use std::ops::Range;
    pub const CHANNEL: Range<usize> = 0..2;
    pub const PROTO: usize = 2;
    pub const STATUS: usize = 3;
    pub const MESSAGE_ID: Range<usize> = 4..12;
    pub const THL: Range<usize> = 12..14;
    pub const BL: Range<usize> = 14..16;
}

mod proto {
    pub const OPCODE: u8 = 0x0f;
    pub const ORIGIN: u8 = 1 << 4;
    pub const MORE: u8 = 1 << 5;
    pub const INTERNAL_A: u8 = 1 << 6;
}

/// The 16-byte header exactly as on the wire, every bit kept (no validation).
///
/// ```
/// use tofu::{Message, OpCode, wire::FrameHeader};
/// let m = Message::with_opcode(OpCode::Signal).on_channel(9).with_body(b"hi");
/// let h = FrameHeader::for_message(&m)?;
/// assert_eq!((h.channel, h.bl, h.opcode_bits()), (9, 2, OpCode::Signal as u8));
/// assert_eq!(FrameHeader::parse(&h.to_bytes()), h);
/// # Ok::<(), tofu::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameHeader {
    /// Sender's local channel number.
    pub channel: u16,
    /// opCode, origin, more and the two internal bits.
    pub proto: u8,
    /// Status byte.
    pub status: u8,
    /// Correlation id.
    pub message_id: u64,
    /// Text-header length.
    pub thl: u16,
    /// Body length.
    pub bl: u16,
}

impl FrameHeader {
    /// Reads the header from its 16 bytes. Never fails: every bit pattern is a header.
    pub fn parse(b: &[u8; HEADER_LEN]) -> FrameHeader {
        let u16_at = |r: std::ops::Range<usize>| u16::from_be_bytes([b[r.start], b[r.start + 1]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[field::MESSAGE_ID]);
        FrameHeader {
            channel: u16_at(field::CHANNEL),
            proto: b[field::PROTO],
            status: b[field::STATUS],
            message_id: u64::from_be_bytes(id),
            thl: u16_at(field::THL),
            bl: u16_at(field::BL),
        }
    }

    /// Writes the header's 16 bytes.
    pub fn emit(&self, b: &mut [u8; HEADER_LEN]) {
        b[field::CHANNEL].copy_from_slice(&self.channel.to_be_bytes());
        b[field::PROTO] = self.proto;
        b[field::STATUS] = self.status;
        b[field::MESSAGE_ID].copy_from_slice(&self.message_id.to_be_bytes());
        b[field::THL].copy_from_slice(&self.thl.to_be_bytes());
        b[field::BL].copy_from_slice(&self.bl.to_be_bytes());
    }

    /// The 16 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        self.emit(&mut b);
        b
    }

    /// The header a message is sent with. Fails if a section is longer than 65535 bytes.
    pub fn for_message(msg: &Message) -> Result<FrameHeader, Error> {
        let thl = u16::try_from(msg.text_headers().len()).map_err(|_| Error::InvalidHeadersLen)?;
        let bl = u16::try_from(msg.body().len()).map_err(|_| Error::InvalidBodyLen)?;
        let h = &msg.header;
        let mut p = h.opcode as u8;
        if h.origin == Origin::Engine {
            p |= proto::ORIGIN;
        }
        if h.more {
            p |= proto::MORE;
        }
        if h.oob {
            p |= proto::INTERNAL_A;
        }
        Ok(FrameHeader {
            channel: h.channel,
            proto: p,
            status: h.status.as_u8(),
            message_id: h.message_id,
            thl,
            bl,
        })
    }

    /// The opCode bits (0..=15; 10..=15 are not opcodes).
    pub fn opcode_bits(&self) -> u8 {
        self.proto & proto::OPCODE
    }

    /// Bytes of text headers plus body that follow this header.
    pub fn payload_len(&self) -> usize {
        usize::from(self.thl) + usize::from(self.bl)
    }
}

/// Appends the frame of `msg` to `out`. Every header field is written as it is in the message
/// (the engine has normalised posted messages before they get here).
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), Error> {
    let h = FrameHeader::for_message(msg)?;
    out.reserve(HEADER_LEN + h.payload_len());
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(msg.text_headers());
    out.extend_from_slice(msg.body());
    Ok(())
}

/// The number of bytes [`encode`] appends for `msg`.
pub fn encoded_len(msg: &Message) -> usize {
    HEADER_LEN + msg.text_headers().len() + msg.body().len()
}

/// A frame the decoder refuses. The caller closes the channel; the stream cannot be resynchronised.
///
/// ```
/// use tofu::wire::{Decoder, DecodeError};
/// let mut frame = [0u8; 16];
/// frame[2] = 0x0F; // opCode 15 is not defined
/// let err = Decoder::decode_all(&frame).unwrap_err();
/// assert_eq!(err, DecodeError::InvalidOpCode(15));
/// assert_eq!(err.status(), tofu::Status::InvalidOpCode);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The opCode bits hold 10..=15.
    InvalidOpCode(u8),
}

impl DecodeError {
    /// The status a channel is closed with.
    pub fn status(self) -> Status {
        match self {
            DecodeError::InvalidOpCode(_) => Status::InvalidOpCode,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::InvalidOpCode(op) => write!(f, "peer sent undefined opCode {op}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// What one [`Decoder::decode`] call did.
///
/// ```
/// use tofu::{Message, OpCode, wire};
/// let mut bytes = Vec::new();
/// wire::encode(&Message::with_opcode(OpCode::Signal).with_body(b"x"), &mut bytes)?;
/// let p = wire::Decoder::new().decode(&bytes, &mut || Some(Message::new()))?;
/// assert_eq!((p.consumed, p.frame.map(|m| m.body().to_vec())), (bytes.len(), Some(b"x".to_vec())));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Progress {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// A complete frame, if one was finished.
    pub frame: Option<Message>,
}

/// Incremental frame decoder: feed it any slices of a stream (one byte at a time works) and
/// it yields complete messages, one per [`decode`](Decoder::decode) call that finishes a frame.
///
/// Received messages are made safe for the application: origin is forced to application,
/// the status to success and the internal bits cleared, so a peer cannot forge engine
/// notifications. The channel number is the sender's; the engine replaces it with its own.
///
/// ```
/// use tofu::{Message, OpCode, wire};
/// let mut stream = Vec::new();
/// for body in [&b"one"[..], b"two"] {
///     wire::encode(&Message::with_opcode(OpCode::Signal).with_body(body), &mut stream)?;
/// }
/// // Bytes may come in any pieces: here one at a time.
/// let (mut decoder, mut got) = (wire::Decoder::new(), Vec::new());
/// for byte in stream.chunks(1) {
///     if let Some(m) = decoder.decode(byte, &mut || Some(Message::new()))?.frame {
///         got.push(m.body().to_vec());
///     }
/// }
/// assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    header: [u8; HEADER_LEN],
    have: usize,
    parsed: Option<FrameHeader>,
    current: Option<Message>,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Consumes bytes from `input` until one frame is complete, the input is used up, or a
    /// message is needed and `supply` has none (pool starvation: `consumed` stops after the
    /// header and the call can be repeated later with the rest of the input).
    ///
    /// `supply` is asked for one message per frame, once the header is known.
    /// Never panics; an undefined opCode is an error and the decoder must not be used again.
    pub fn decode(
        &mut self,
        input: &[u8],
        supply: &mut dyn FnMut() -> Option<Message>,
    ) -> Result<Progress, DecodeError> {
        if self.have == 0 && self.parsed.is_none() {
            if let Some(head) = input.first_chunk::<HEADER_LEN>() {
                return self.decode_whole(head, input, supply);
            }
        }
        let mut used = 0;
        if self.parsed.is_none() {
            let take = (HEADER_LEN - self.have).min(input.len());
            self.header[self.have..self.have + take].copy_from_slice(&input[..take]);
            self.have += take;
            used += take;
            if self.have < HEADER_LEN {
                return Ok(Progress {
                    consumed: used,
                    frame: None,
                });
            }
            let h = FrameHeader::parse(&self.header);
            OpCode::try_from(h.opcode_bits())
                .map_err(|_| DecodeError::InvalidOpCode(h.opcode_bits()))?;
            self.parsed = Some(h);
            self.have = 0;
        }
        let Some(h) = self.parsed else {
            return Ok(Progress {
                consumed: used,
                frame: None,
            });
        };
        if self.current.is_none() {
            let Some(mut m) = supply() else {
                return Ok(Progress {
                    consumed: used,
                    frame: None,
                });
            };
            m.reset();
            m.text_headers_mut().reserve(h.thl.into());
            m.body_mut().reserve(h.bl.into());
            self.current = Some(m);
        }
        let Some(m) = self.current.as_mut() else {
            return Ok(Progress {
                consumed: used,
                frame: None,
            });
        };
        let rest = &input[used..];
        let text_need = usize::from(h.thl) - m.text_headers().len();
        let t = text_need.min(rest.len());
        m.text_headers_mut().extend_from_slice(&rest[..t]);
        let rest = &rest[t..];
        used += t;
        if t < text_need {
            return Ok(Progress {
                consumed: used,
                frame: None,
            });
        }
        let body_need = usize::from(h.bl) - m.body().len();
        let b = body_need.min(rest.len());
        m.body_mut().extend_from_slice(&rest[..b]);
        used += b;
        if b < body_need {
            return Ok(Progress {
                consumed: used,
                frame: None,
            });
        }
        self.parsed = None;
        let mut m = self.current.take();
        if let Some(m) = m.as_mut() {
            set_header(m, &h);
        }
        Ok(Progress {
            consumed: used,
            frame: m,
        })
    }

    /// The common case of a large read: nothing carried over and a header at the start of
    /// `input`. A frame that lies whole in `input` is copied out in one go; otherwise the
    /// header is taken and the incremental path goes on from there.
    fn decode_whole(
        &mut self,
        head: &[u8; HEADER_LEN],
        input: &[u8],
        supply: &mut dyn FnMut() -> Option<Message>,
    ) -> Result<Progress, DecodeError> {
        let h = FrameHeader::parse(head);
        OpCode::try_from(h.opcode_bits())
            .map_err(|_| DecodeError::InvalidOpCode(h.opcode_bits()))?;
        let text_end = HEADER_LEN + usize::from(h.thl);
        let end = text_end + usize::from(h.bl);
        if input.len() < end {
            self.parsed = Some(h);
            let rest = self.decode(&input[HEADER_LEN..], supply)?;
            return Ok(Progress {
                consumed: HEADER_LEN + rest.consumed,
                frame: rest.frame,
            });
        }
        let Some(mut m) = supply() else {
            // Starved: the header is taken, the frame waits for a message.
            self.parsed = Some(h);
            return Ok(Progress {
                consumed: HEADER_LEN,
                frame: None,
            });
        };
        m.reset();
        m.text_headers_mut()
            .extend_from_slice(&input[HEADER_LEN..text_end]);
        m.body_mut().extend_from_slice(&input[text_end..end]);
        set_header(&mut m, &h);
        Ok(Progress {
            consumed: end,
            frame: Some(m),
        })
    }

    /// True when part of a frame has been consumed.
    pub fn is_mid_frame(&self) -> bool {
        self.have > 0 || self.parsed.is_some()
    }

    /// True when a frame header is complete and waits for a message from `supply`.
    pub fn is_starved(&self) -> bool {
        self.parsed.is_some() && self.current.is_none()
    }

    /// Decodes a whole buffer, allocating a new message per frame (for tests and tools).
    pub fn decode_all(input: &[u8]) -> Result<Vec<Message>, DecodeError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let p = d.decode(&input[pos..], &mut || Some(Message::new()))?;
            pos += p.consumed;
            out.extend(p.frame);
        }
        Ok(out)
    }
}

/// True when `bytes`, the first a peer sent on a plain (`tcp|`, `uds|`) connection, are
/// the start of a TLS ClientHello: a handshake record of TLS 1.0-1.3 (`16 03 0x`) whose
/// first message is a ClientHello (`01 00`) offering version 3.x (`03 0x`). As a tofu
/// header that would be a HelloRequest from channel 5635 with a message_id no tofu
/// counter makes (its bytes are the record's length, `01 00` and more lengths), so a
/// peer that matches is a TLS client at the wrong listener.
///
/// ```
/// // The first bytes of a ClientHello as rustls and OpenSSL send them.
/// let hello = [0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03, 0x5a];
/// assert!(tofu::wire::is_tls_client_hello(&hello));
/// // A tofu HelloRequest from channel 5635 with message_id 1.
/// let tofu = [0x16, 0x03, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 1, 0, 20, 0, 0];
/// assert!(!tofu::wire::is_tls_client_hello(&tofu));
/// ```
pub fn is_tls_client_hello(bytes: &[u8]) -> bool {
    matches!(
        bytes,
        [
            0x16,
            0x03,
            0x00..=0x04,
            _,
            _,
            0x01,
            0x00,
            _,
            _,
            0x03,
            0x00..=0x04,
            ..
        ]
    )
}

/// The length of the frame whose header starts `frame` (which holds at least the header).
pub(crate) fn frame_len(frame: &[u8]) -> usize {
    let mut b = [0u8; HEADER_LEN];
    b.copy_from_slice(&frame[..HEADER_LEN]);
    HEADER_LEN + FrameHeader::parse(&b).payload_len()
}

/// Fills `m` from one whole frame that this engine [`encode`]d from a validated data message
/// (the reverse of `encode` for such messages: origin application, status success, no `oob`).
pub(crate) fn decode_own(frame: &[u8], m: &mut Message) {
    let mut b = [0u8; HEADER_LEN];
    b.copy_from_slice(&frame[..HEADER_LEN]);
    let h = FrameHeader::parse(&b);
    let text_end = HEADER_LEN + usize::from(h.thl);
    m.reset();
    m.text_headers_mut()
        .extend_from_slice(&frame[HEADER_LEN..text_end]);
    m.body_mut()
        .extend_from_slice(&frame[text_end..text_end + usize::from(h.bl)]);
    set_header(m, &h);
}

/// Decodes the frames this engine encoded back to back in `bytes` (see [`decode_own`]),
/// each into a message from `supply`, appended to `out`.
pub(crate) fn decode_own_all(
    bytes: &[u8],
    supply: &mut dyn FnMut() -> Message,
    out: &mut Vec<Message>,
) {
    let mut at = 0;
    while at < bytes.len() {
        let len = frame_len(&bytes[at..]);
        let mut m = supply();
        decode_own(&bytes[at..at + len], &mut m);
        out.push(m);
        at += len;
    }
}

/// The header of a received frame: fields from the wire, origin application, status
/// success, `oob` clear (origin, status and the internal bits on the wire are ignored).
fn set_header(m: &mut Message, h: &FrameHeader) {
    let hdr = &mut m.header;
    hdr.channel = h.channel;
    hdr.opcode = OpCode::try_from(h.opcode_bits()).unwrap_or(OpCode::Request); // checked before
    hdr.origin = Origin::Application;
    hdr.more = h.proto & proto::MORE != 0;
    hdr.oob = false;
    hdr.status = Status::Success;
    hdr.message_id = h.message_id;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::Header;

    #[test]
    fn header_round_trip_from_tofu_tests() {
        let h = FrameHeader {
            channel: 0x1234,
            proto: OpCode::Request as u8,
            status: 0xff,
            message_id: 0xAABB_CCDD_EEFF_0011,
            thl: 0x5678,
            bl: 0x9ABC,
        };
        let b = h.to_bytes();
        assert_eq!(
            b,
            [
                0x12, 0x34, 0x00, 0xff, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0x00, 0x11, 0x56, 0x78,
                0x9A, 0xBC
            ]
        );
        assert_eq!(FrameHeader::parse(&b), h);
    }

    #[test]
    fn spec_example_hello_request() {
        let mut m = Message::with_opcode(OpCode::HelloRequest);
        m.header.channel = 0x1234;
        m.header.message_id = 5;
        m.append_header("~connect_to", "tcp|127.0.0.1|7099")
            .unwrap();
        let mut out = Vec::new();
        encode(&m, &mut out).unwrap();
        let mut want = vec![
            0x12, 0x34, 0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0x05, 0x00, 0x20, 0x00, 0x00,
        ];
        want.extend_from_slice(b"~connect_to:tcp|127.0.0.1|7099\r\n");
        assert_eq!(out, want);
    }

    #[test]
    fn spec_example_request_ping() {
        let mut m = Message::new();
        m.header.channel = 7;
        m.header.message_id = 42;
        m.set_body(b"ping");
        let mut out = Vec::new();
        encode(&m, &mut out).unwrap();
        assert_eq!(
            out,
            [
                0x00, 0x07, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0x2A, 0x00, 0x00, 0x00, 0x04, b'p',
                b'i', b'n', b'g'
            ]
        );
        assert_eq!(encoded_len(&m), out.len());
    }

    #[test]
    fn proto_bits() {
        let mut h = Header::new(OpCode::Response);
        h.more = true;
        let mut m = Message::new();
        m.header = h;
        assert_eq!(FrameHeader::for_message(&m).unwrap().proto, 0x21);
        m.header = Header::new(OpCode::ByeSignal);
        assert_eq!(FrameHeader::for_message(&m).unwrap().proto, 0x47);
        m.header.origin = Origin::Engine;
        m.header.oob = false;
        assert_eq!(FrameHeader::for_message(&m).unwrap().proto, 0x17);
    }

    #[test]
    fn oversized_sections_refused() {
        let mut m = Message::new();
        m.body_mut().resize(MAX_SECTION_LEN + 1, 0);
        assert_eq!(encode(&m, &mut Vec::new()), Err(Error::InvalidBodyLen));
        let mut m = Message::new();
        m.text_headers_mut().resize(MAX_SECTION_LEN + 1, b'a');
        assert_eq!(encode(&m, &mut Vec::new()), Err(Error::InvalidHeadersLen));
    }

    #[test]
    fn undefined_opcodes_are_errors() {
        for op in 10..16u8 {
            let h = FrameHeader {
                proto: op,
                ..FrameHeader::default()
            };
            assert_eq!(
                Decoder::decode_all(&h.to_bytes()).unwrap_err(),
                DecodeError::InvalidOpCode(op)
            );
        }
    }

    #[test]
    fn forged_local_fields_are_cleared() {
        let h = FrameHeader {
            channel: 3,
            proto: OpCode::Request as u8 | 0x10 | 0x40 | 0x80 | 0x20,
            status: Status::ChannelClosed.as_u8(),
            message_id: 9,
            thl: 0,
            bl: 0,
        };
        let m = Decoder::decode_all(&h.to_bytes()).unwrap().pop().unwrap();
        assert_eq!(m.origin(), Origin::Application);
        assert_eq!(m.status(), Status::Success);
        assert!(!m.header.oob);
        assert!(m.header.more, "more is an application flag and is kept");
    }

    #[test]
    fn starvation_resumes() {
        let mut m = Message::new();
        m.header.channel = 1;
        m.set_body(b"hello");
        let mut bytes = Vec::new();
        encode(&m, &mut bytes).unwrap();
        let mut d = Decoder::new();
        let p = d.decode(&bytes, &mut || None).unwrap();
        assert_eq!(p.consumed, HEADER_LEN);
        assert!(p.frame.is_none());
        assert!(d.is_starved());
        let p = d
            .decode(&bytes[HEADER_LEN..], &mut || Some(Message::new()))
            .unwrap();
        assert_eq!(p.consumed, 5);
        assert_eq!(p.frame.unwrap().body(), b"hello");
        assert!(!d.is_mid_frame());
    }
}
