//! `wire::Decoder` on arbitrary bytes.
//!
//! The input is the byte stream itself (so captured streams are seeds as they are). Cut sizes
//! and pool starvation come from a generator seeded with a hash of the input, so every input
//! replays the same schedule. The stream is decoded twice: in one piece with an endless supply
//! (the reference) and in the generated pieces with a supply that sometimes has nothing.
//!
//! Checked: no panic; every call makes progress or reports starvation; sections of a decoded
//! message are at most 65535 bytes; re-encoding a decoded message gives back its frame bytes
//! with origin, status and the internal bits cleared; both schedules decode the same messages
//! and stop on the same error; mid-frame state matches the bytes left over.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tofu::message::MAX_SECTION_LEN;
use tofu::wire::{encode, DecodeError, Decoder, FrameHeader, HEADER_LEN};
use tofu::{Message, OpCode, Origin, Status};

fuzz_target!(|data: &[u8]| {
    let reference = decode(data, &mut Schedule::whole());
    let chunked = decode(data, &mut Schedule::from_input(data));
    assert_eq!(
        reference.frames, chunked.frames,
        "frames depend on the cuts"
    );
    assert_eq!(reference.error, chunked.error, "errors depend on the cuts");
    assert_eq!(reference.end, chunked.end);
});

#[derive(Debug)]
struct Outcome {
    /// Each decoded message, re-encoded.
    frames: Vec<Vec<u8>>,
    error: Option<DecodeError>,
    /// Where the last complete frame ended.
    end: usize,
}

fn decode(stream: &[u8], schedule: &mut Schedule) -> Outcome {
    let mut d = Decoder::new();
    let mut out = Outcome {
        frames: Vec::new(),
        error: None,
        end: 0,
    };
    let mut pos = 0;
    let mut starved_in_a_row = 0;
    loop {
        let cut = schedule.cut().min(stream.len() - pos);
        let chunk = &stream[pos..pos + cut];
        // One supply decision per call; never starve forever.
        let starve = starved_in_a_row < 3 && schedule.starve();
        let mut asked = false;
        let mut supply = || {
            asked = true;
            if starve {
                None
            } else {
                Some(schedule_message(pos))
            }
        };
        let p = match d.decode(chunk, &mut supply) {
            Ok(p) => p,
            Err(e) => {
                check_error(stream, out.end, e);
                out.error = Some(e);
                return out;
            }
        };
        assert!(p.consumed <= chunk.len(), "consumed more than offered");
        pos += p.consumed;
        match p.frame {
            Some(m) => {
                assert!(!(starve && asked), "a frame without a message");
                check_frame(&stream[out.end..pos], &m);
                out.frames.push(encoded(&m));
                out.end = pos;
                starved_in_a_row = 0;
            }
            None if d.is_starved() => {
                assert!(asked && starve, "starved although supply had a message");
                starved_in_a_row += 1;
            }
            None => {
                // No frame and not starved: every offered byte must have been taken.
                assert_eq!(p.consumed, chunk.len(), "stalled without starvation");
                starved_in_a_row = 0;
            }
        }
        if pos == stream.len() && !d.is_starved() {
            // A zero-length frame may still be finished by one more (empty) call only if
            // the decoder is starved; otherwise the stream is used up.
            break;
        }
    }
    assert_eq!(
        d.is_mid_frame(),
        out.end < stream.len(),
        "mid-frame state does not match the bytes left over"
    );
    out
}

/// The frame bytes `frame` must re-encode `m` to, modulo the fields the decoder clears.
fn check_frame(frame: &[u8], m: &Message) {
    assert!(m.text_headers().len() <= MAX_SECTION_LEN);
    assert!(m.body().len() <= MAX_SECTION_LEN);
    assert_eq!(m.origin(), Origin::Application, "origin not cleared");
    assert_eq!(m.status(), Status::Success, "status not cleared");
    assert!(!m.header.oob, "internal bit not cleared");
    let mut want = frame.to_vec();
    want[2] &= !(0x10 | 0x40 | 0x80); // origin, internal A, internal B
    want[3] = 0; // status
    assert_eq!(encoded(m), want, "re-encoding differs from the frame");
}

/// An error must be an undefined opCode in the header that starts at `start`.
fn check_error(stream: &[u8], start: usize, e: DecodeError) {
    let mut b = [0u8; HEADER_LEN];
    b.copy_from_slice(&stream[start..start + HEADER_LEN]);
    let op = FrameHeader::parse(&b).opcode_bits();
    assert!(OpCode::try_from(op).is_err());
    assert_eq!(e, DecodeError::InvalidOpCode(op));
}

fn encoded(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(m, &mut out).expect("decoded sections fit in u16");
    out
}

/// A supplied message with leftovers from an earlier use: the decoder must reset it.
fn schedule_message(salt: usize) -> Message {
    let mut m = Message::with_opcode(OpCode::ByeSignal);
    if salt % 2 == 1 {
        m.header.origin = Origin::Engine;
        m.header.status = Status::ChannelClosed;
        m.header.more = true;
        m.header.message_id = salt as u64;
        m.text_headers_mut().extend_from_slice(b"stale:1\r\n");
        m.set_body(b"stale body");
    }
    m
}

/// Cut sizes and starvation, from a splitmix64 generator.
struct Schedule {
    state: Option<u64>,
}

impl Schedule {
    fn whole() -> Schedule {
        Schedule { state: None }
    }

    fn from_input(data: &[u8]) -> Schedule {
        // FNV-1a: any change to the input gives another schedule.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Schedule { state: Some(h) }
    }

    fn next(&mut self) -> Option<u64> {
        let s = self.state.as_mut()?;
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Some(z ^ (z >> 31))
    }

    fn cut(&mut self) -> usize {
        match self.next() {
            None => usize::MAX,
            Some(r) => match r % 8 {
                0 => 0,                              // an empty read
                1..=4 => 1 + (r >> 8) as usize % 20, // small pieces cross every field
                5 | 6 => 1 + (r >> 8) as usize % 300,
                _ => usize::MAX,
            },
        }
    }

    fn starve(&mut self) -> bool {
        self.next().is_some_and(|r| r % 4 == 0)
    }
}
