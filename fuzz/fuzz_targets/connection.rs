//! The per-connection protocol state (`Connection`) driven by an arbitrary sequence of
//! operations, the way the reactor drives it: enqueue (messages, and runs of frames encoded by
//! posting threads), gather + advance with partial writes, peer bytes read in arbitrary pieces
//! with a pool that may run dry, resume, close.
//!
//! Send side, checked against a model of the documented rules (post order; `oob` to the front
//! of what is not started, never before a started frame or an unsent HelloRequest at the head;
//! after a bye-type frame only one ByeResponse):
//! * `wants_send` agrees with the model, and a gather with room makes progress;
//! * what `gather` offers is exactly the model's next bytes (stopping after a bye-type frame,
//!   or early only when its staging buffer is full);
//! * the bytes written, parsed on their own, are the enqueued messages' exact encodings in the
//!   model's order; after the first bye-type frame at most one ByeResponse follows;
//! * every enqueued message is accounted for exactly once: fully written and handed back by
//!   `advance` (unchanged, in write order; a frame of a run is not a message and only counts
//!   as written), refused by `enqueue` (returned), or returned by `close` (origin
//!   engine, the given status, content unchanged, frames of runs decoded back); the queue
//!   never holds more than what was enqueued and not written;
//! * `take_completed` reports exactly the frames the model completed, and their bytes.
//!
//! Receive side, against a one-piece decode of the same bytes (the reference): the delivered
//! messages are the reference's frames in order, nothing after a ByeResponse, the same error
//! in the same place; stop reasons are truthful; `first_received_id` is the first delivered
//! message's id.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::OnceLock;
use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tofu::fuzzing::{Connection, Completed, RecvStop, Whole, COPY_MAX, STAGE_CAP};
use tofu::message::MAX_SECTION_LEN;
use tofu::wire::{encode, DecodeError, Decoder, FrameHeader, HEADER_LEN};
use tofu::{Error, Message, MessageType, OpCode, Origin, Status};

/// The time bytes arrive: fixed, the connections here have no frame timeout.
fn now() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Peer bytes kept per run (the reference decode re-reads them).
const MAX_PEER_BYTES: usize = 1 << 16;
const IOV_MAX: usize = 8;
const CLIENT_TO_SERVER: &[u8] = include_bytes!("../../tests/fixtures/wire/client-to-server.bin");
const SERVER_TO_CLIENT: &[u8] = include_bytes!("../../tests/fixtures/wire/server-to-client.bin");

#[derive(Arbitrary, Debug)]
enum Op {
    /// Queue a message (opcode `op % 10`, sections `text % 200` and `body % 600` bytes).
    Enqueue {
        op: u8,
        oob: bool,
        more: bool,
        text: u8,
        body: u16,
    },
    /// A data message whose first `written % frame length` bytes a posting thread already
    /// wrote (a direct write handed over): queued first, the rest written before anything.
    /// Only when no frame is half-written and no bye-type frame was written, as in the
    /// reactor (the gate opens only then).
    EnqueueStarted {
        op: u8,
        text: u8,
        body: u16,
        written: u16,
    },
    /// Queue `1 + count % 8` data messages encoded back to back (a run, as posting threads
    /// build it: Request/Response/Signal, no `oob`).
    EnqueueRun {
        count: u8,
        op: u8,
        text: u8,
        body: u16,
    },
    /// Queue a message with one section of 65536 bytes: must be refused and handed back.
    EnqueueOversized { text: bool },
    /// One `wants_send` + `gather` into `iov % 9` slices + `advance` by `budget` bytes at most.
    Write { iov: u8, budget: u16 },
    /// Write until `wants_send` is false, `1 + chunk` bytes per write.
    Flush { chunk: u8 },
    /// Append raw bytes to what the peer sent.
    PeerBytes(Vec<u8>),
    /// Append a well-formed frame; `junk` sets origin/internal bits and status on the wire.
    PeerFrame {
        op: u8,
        junk: u8,
        id: u64,
        text: u8,
        body: u16,
    },
    /// Append a slice of a captured Zig tofu stream.
    PeerCapture { server: bool, from: u8, len: u8 },
    /// Read up to `len` sent bytes into `receive`, with `supply % 4` messages in the pool;
    /// with `whole % 8 > 0`, whole frames (up to `whole % 8` at a time, of at most 40, 200 or
    /// 5000 bytes) are handed over as bytes (`receive_with`, as the reactor does).
    Read { len: u16, supply: u8, whole: u8 },
    /// `resume` with `supply % 4` messages in the pool.
    Resume { supply: u8 },
    /// Close: `take_unsent`, after which nothing more is written.
    TakeUnsent { reason: u8 },
}

fuzz_target!(|ops: Vec<Op>| {
    let mut h = Harness::new();
    for op in ops {
        h.apply(op);
    }
    h.finish();
});

struct Sent {
    opcode: OpCode,
    bytes: Vec<u8>,
}

struct Harness {
    conn: Connection,
    next_id: u64,
    sent: HashMap<u64, Sent>,
    /// Ids of messages enqueued as frames of runs (no message to hand back once written).
    encoded: std::collections::HashSet<u64>,
    model: Model,
    closed: bool,
    /// Everything advanced, in order, and the start of its unfinished frame.
    written: Vec<u8>,
    parsed: usize,
    written_ids: Vec<u64>,
    /// Messages `advance` handed back after their frame was written.
    returned_ids: Vec<u64>,
    refused_ids: Vec<u64>,
    unsent_ids: Vec<u64>,
    /// What the peer sent, and how much of it was read.
    peer: Vec<u8>,
    read: usize,
    delivered: Vec<Message>,
    starving: bool,
    recv_end: Option<Result<(), DecodeError>>,
    reference: Reference,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            conn: Connection::default(),
            next_id: 1,
            sent: HashMap::new(),
            encoded: std::collections::HashSet::new(),
            model: Model::default(),
            closed: false,
            written: Vec::new(),
            parsed: 0,
            written_ids: Vec::new(),
            returned_ids: Vec::new(),
            refused_ids: Vec::new(),
            unsent_ids: Vec::new(),
            peer: Vec::new(),
            read: 0,
            delivered: Vec::new(),
            starving: false,
            recv_end: None,
            reference: Reference::default(),
        }
    }

    fn apply(&mut self, op: Op) {
        if self.closed
            && matches!(
                op,
                Op::Enqueue { .. }
                    | Op::EnqueueOversized { .. }
                    | Op::EnqueueStarted { .. }
                    | Op::EnqueueRun { .. }
            )
        {
            // The channel is closed: the reactor queues nothing more.
            return;
        }
        match op {
            Op::Enqueue {
                op,
                oob,
                more,
                text,
                body,
            } => {
                let m = self.message(op, oob, more, usize::from(text) % 200, body as usize % 600);
                self.enqueue(m);
            }
            Op::EnqueueStarted {
                op,
                text,
                body,
                written,
            } => {
                if self.model.head_written > 0 || self.model.bye_sent {
                    return;
                }
                let op = [0, 1, 2][usize::from(op) % 3]; // Request, Response, Signal
                let m = self.message(
                    op,
                    false,
                    false,
                    usize::from(text) % 200,
                    body as usize % 600,
                );
                let id = m.message_id();
                let mut bytes = Vec::new();
                encode(&m, &mut bytes).expect("small sections");
                let w = usize::from(written) % bytes.len();
                let opcode = m.opcode();
                if let Err((e, _)) = self.conn.enqueue_started(m, w) {
                    panic!("enqueue_started refused a valid message: {e:?}");
                }
                // The posting thread's part is on the wire already.
                self.written.extend_from_slice(&bytes[..w]);
                self.sent.insert(id, Sent { opcode, bytes });
                self.model.queue.push_front(id);
                self.model.head_written = w;
            }
            Op::EnqueueRun {
                count,
                op,
                text,
                body,
            } => {
                let mut bytes = Vec::new();
                let n = 1 + u32::from(count % 8);
                for k in 0..n {
                    let op = [0, 1, 2][(usize::from(op) + k as usize) % 3];
                    let m = self.message(
                        op,
                        false,
                        (k + u32::from(text)) % 3 == 0,
                        (usize::from(text) + 7 * k as usize) % 200,
                        (body as usize + 13 * k as usize) % 600,
                    );
                    let id = m.message_id();
                    let mut frame = Vec::new();
                    encode(&m, &mut frame).expect("small sections");
                    bytes.extend_from_slice(&frame);
                    self.sent.insert(
                        id,
                        Sent {
                            opcode: m.opcode(),
                            bytes: frame,
                        },
                    );
                    self.encoded.insert(id);
                    self.model.enqueue(id, false, &self.sent);
                    // The posting thread drops the message once encoded.
                }
                self.conn.enqueue_run(bytes, n);
            }
            Op::EnqueueOversized { text } => {
                let mut m = self.message(0, false, false, 0, 0);
                let (section, want) = if text {
                    (m.text_headers_mut(), Error::InvalidHeadersLen)
                } else {
                    (m.body_mut(), Error::InvalidBodyLen)
                };
                section.resize(MAX_SECTION_LEN + 1, b'x');
                let id = m.message_id();
                match self.conn.enqueue(m) {
                    Ok(()) => panic!("an oversized section was queued"),
                    Err((e, back)) => {
                        assert_eq!(e, want);
                        assert_eq!(back.message_id(), id, "another message handed back");
                        self.refused_ids.push(id);
                    }
                }
            }
            Op::Write { iov, budget } => {
                self.write(usize::from(iov) % (IOV_MAX + 1), usize::from(budget));
            }
            Op::Flush { chunk } => {
                let mut rounds = 0;
                while self.write(IOV_MAX, 1 + usize::from(chunk)) {
                    rounds += 1;
                    assert!(rounds < 1 << 20, "flush does not end");
                }
            }
            Op::PeerBytes(bytes) => self.peer_send(&bytes),
            Op::PeerFrame {
                op,
                junk,
                id,
                text,
                body,
            } => {
                let mut m = Message::with_opcode(OpCode::ALL[usize::from(op) % 10]);
                m.header.oob = false;
                m.header.message_id = id;
                m.header.channel = 7;
                m.header.more = junk & 0x20 != 0;
                fill(m.text_headers_mut(), usize::from(text), id);
                fill(m.body_mut(), usize::from(body) % 600, !id);
                let mut frame = Vec::new();
                encode(&m, &mut frame).expect("small sections");
                frame[2] |= junk & (0x10 | 0x40 | 0x80);
                frame[3] = junk >> 3;
                self.peer_send(&frame);
            }
            Op::PeerCapture { server, from, len } => {
                let s = if server {
                    SERVER_TO_CLIENT
                } else {
                    CLIENT_TO_SERVER
                };
                let from = usize::from(from) % s.len();
                let to = (from + usize::from(len)).min(s.len());
                self.peer_send(&s[from..to]);
            }
            Op::Read { len, supply, whole } => self.read(usize::from(len), supply % 4, whole),
            Op::Resume { supply } => self.resume(supply % 4),
            Op::TakeUnsent { reason } => self.take_unsent(Status::from_u8(reason % 32)),
        }
        assert_eq!(self.conn.queued(), self.model.queue.len(), "queue length");
        assert_eq!(self.conn.bye_sent(), self.model.bye_sent, "bye_sent");
    }

    fn finish(&mut self) {
        // Read what is left with a full pool, then close.
        while self.recv_end.is_none() {
            if self.starving {
                self.resume(u8::MAX);
            } else if self.read < self.peer.len() {
                self.read(usize::MAX, u8::MAX, 0);
            } else {
                break;
            }
        }
        self.check_received(true);
        if !self.closed {
            self.take_unsent(Status::ChannelClosed);
        }
        assert_eq!(
            self.returned_ids, self.written_ids,
            "written but not handed back"
        );
        let mut all: Vec<u64> = self
            .returned_ids
            .iter()
            .chain(&self.refused_ids)
            .chain(&self.unsent_ids)
            .copied()
            .collect();
        all.sort_unstable();
        let want: Vec<u64> = (1..self.next_id).collect();
        assert_eq!(all, want, "a message lost or accounted for twice");
    }

    /// A message with a unique id; its expected encoding is recorded on enqueue.
    fn message(&mut self, op: u8, oob: bool, more: bool, text: usize, body: usize) -> Message {
        let id = self.next_id;
        self.next_id += 1;
        let mut m = Message::with_opcode(OpCode::ALL[usize::from(op) % 10]);
        m.header.channel = 1 + (id % 1000) as u16;
        m.header.message_id = id;
        m.header.oob = oob;
        m.header.more = more;
        fill(m.text_headers_mut(), text, id);
        fill(m.body_mut(), body, id.rotate_left(7));
        m
    }

    fn enqueue(&mut self, m: Message) {
        let id = m.message_id();
        let mut bytes = Vec::new();
        encode(&m, &mut bytes).expect("small sections");
        let (opcode, oob) = (m.opcode(), m.header.oob);
        if let Err((e, _)) = self.conn.enqueue(m) {
            panic!("enqueue refused a valid message: {e:?}");
        }
        self.sent.insert(id, Sent { opcode, bytes });
        self.model.enqueue(id, oob, &self.sent);
    }

    /// One write round; false when nothing was to be sent.
    fn write(&mut self, iov_len: usize, budget: usize) -> bool {
        if self.closed {
            return false;
        }
        let wants = self.conn.wants_send();
        assert_eq!(wants, self.model.wants_send(&self.sent), "wants_send");
        if !wants {
            return false;
        }
        let mut iov = [IoSlice::new(&[]); IOV_MAX];
        let mut stage = Vec::new();
        let n = self.conn.gather(&mut stage, &mut iov[..iov_len]);
        assert!(n <= iov_len);
        if iov_len > 0 {
            assert!(n > 0, "nothing offered although wants_send");
        }
        let mut offered = Vec::new();
        for s in &iov[..n] {
            offered.extend_from_slice(s);
        }
        let (want, want_len) = self.model.offer(&self.sent, offered.len());
        assert_eq!(offered, want, "gather offered other bytes");
        if n < iov_len && offered.len() != want_len {
            // Only a full stage may end a gather with free slots.
            assert!(
                offered.len() > STAGE_CAP - COPY_MAX,
                "gather stopped early ({} of {want_len} bytes)",
                offered.len()
            );
        }
        let w = budget.min(offered.len());
        let mut finished = Vec::new();
        self.conn.advance(w, &mut finished);
        self.written.extend_from_slice(&offered[..w]);
        let before = self.model.done.len();
        self.model.advance(w, &self.sent);
        self.parse_written();
        // Completed: exactly the frames completed, with their bytes.
        let done: Vec<u64> = self.model.done[before..].to_vec();
        let bytes: usize = done.iter().map(|id| self.sent[id].bytes.len()).sum();
        assert_eq!(
            self.conn.take_completed(),
            Completed {
                frames: done.len() as u64,
                bytes: bytes as u64
            },
            "take_completed"
        );
        // The messages of exactly the finished frames come back, unchanged, in order; frames
        // of runs were bytes only and count as written.
        let ids: Vec<u64> = finished.iter().map(Message::message_id).collect();
        let want: Vec<u64> = done
            .iter()
            .copied()
            .filter(|id| !self.encoded.contains(id))
            .collect();
        assert_eq!(ids, want, "advance handed back other messages");

        for m in &finished {
            let mut bytes = Vec::new();
            encode(m, &mut bytes).expect("small sections");
            assert_eq!(
                bytes,
                self.sent[&m.message_id()].bytes,
                "a sent message changed"
            );
        }
        self.returned_ids.extend(done);
        w > 0 || iov_len == 0
    }

    /// Parses complete frames of what was written and matches them to the model's order.
    fn parse_written(&mut self) {
        loop {
            let rest = &self.written[self.parsed..];
            if rest.len() < HEADER_LEN {
                break;
            }
            let mut b = [0u8; HEADER_LEN];
            b.copy_from_slice(&rest[..HEADER_LEN]);
            let h = FrameHeader::parse(&b);
            let len = HEADER_LEN + h.payload_len();
            if rest.len() < len {
                break;
            }
            let id = h.message_id;
            let sent = self.sent.get(&id).expect("a frame of an enqueued message");
            assert_eq!(&rest[..len], &sent.bytes[..], "frame bytes of {id}");
            let i = self.written_ids.len();
            assert_eq!(
                self.model.done.get(i),
                Some(&id),
                "frames out of the documented order"
            );
            // The Bye rule of src/proto/connection.rs, independent of the model: after a bye-type
            // frame only one ByeResponse, and nothing after a ByeResponse.
            let after_bye = self
                .written_ids
                .iter()
                .any(|x| self.sent[x].opcode.message_type() == MessageType::Bye);
            let after_bye_response = self
                .written_ids
                .iter()
                .any(|x| self.sent[x].opcode == OpCode::ByeResponse);
            assert!(
                !(after_bye && after_bye_response),
                "{:?} written after a ByeResponse that followed a bye",
                sent.opcode
            );
            if after_bye {
                assert_eq!(
                    sent.opcode,
                    OpCode::ByeResponse,
                    "{:?} after a bye-type frame",
                    sent.opcode
                );
            }
            self.written_ids.push(id);
            self.parsed += len;
        }
        assert_eq!(self.written_ids.len(), self.model.done.len());
    }

    /// `close` without its final Signal (checked here: it always comes, last).
    fn close(&mut self, reason: Status) -> Vec<Message> {
        let mut back = self
            .conn
            .close(reason, &mut std::iter::empty(), 3, &mut Message::new);
        let last = back.pop().expect("the final Signal");
        assert_eq!(
            (last.opcode(), last.origin(), last.status(), last.channel()),
            (OpCode::Signal, Origin::Engine, Status::ChannelClosed, 3)
        );
        assert_eq!(
            last.message_id(),
            self.delivered.first().map_or(0, Message::message_id),
            "the final Signal carries the first received frame's id"
        );
        back
    }

    fn take_unsent(&mut self, reason: Status) {
        if self.closed {
            assert!(self.close(reason).is_empty());
            return;
        }
        let back = self.close(reason);
        let ids: Vec<u64> = back.iter().map(Message::message_id).collect();
        let want: Vec<u64> = self.model.queue.iter().copied().collect();
        assert_eq!(ids, want, "take_unsent: other messages or order");
        for m in &back {
            assert_eq!(m.origin(), Origin::Engine);
            assert_eq!(m.status(), reason);
            let mut bytes = Vec::new();
            encode(m, &mut bytes).expect("small sections");
            let sent = &self.sent[&m.message_id()].bytes;
            // Same content; only origin (proto bit 4) and status changed.
            assert_eq!(bytes[HEADER_LEN..], sent[HEADER_LEN..]);
            assert_eq!(bytes[..2], sent[..2]);
            assert_eq!(bytes[4..HEADER_LEN], sent[4..HEADER_LEN]);
        }
        // A partly written head is returned, and what went out of it is a prefix of its frame.
        let partial = &self.written[self.parsed..];
        if let Some(head) = ids.first() {
            assert!(self.sent[head].bytes.starts_with(partial));
        } else {
            assert!(partial.is_empty());
        }
        assert_eq!(partial.len(), self.model.head_written);
        self.unsent_ids.extend(ids);
        self.model.queue.clear();
        self.model.head_written = 0;
        // The stream now ends in the middle of a frame: the harness stops writing.
        self.closed = true;
        assert_eq!(self.conn.queued(), 0);
    }

    fn peer_send(&mut self, bytes: &[u8]) {
        let room = MAX_PEER_BYTES - self.peer.len();
        self.peer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Like the reactor's read: only while not starving and not finished.
    fn read(&mut self, len: usize, supply: u8, whole: u8) {
        if self.starving || self.recv_end.is_some() {
            return;
        }
        let end = self.read.saturating_add(len).min(self.peer.len());
        let input = &self.peer[self.read..end];
        self.read = end;
        let mut pool = Supply::new(supply);
        let r = if whole % 8 == 0 {
            let delivered = &mut self.delivered;
            self.conn
                .handle_read(input, now(), &mut || pool.get(), &mut |m| delivered.push(m), None)
        } else {
            let allowed = usize::from(whole % 8);
            let max_len = [40, 200, 5000, 5000][usize::from(whole >> 3) % 4];
            let delivered = std::cell::RefCell::new(&mut self.delivered);
            let allowed_now = move || allowed;
            let mut take = |bytes: &[u8], n: usize| {
                // What the application decodes: exactly `n` whole frames, none too long,
                // no ByeResponse (its rule is the decoder's).
                assert!(n >= 1 && n <= allowed, "{n} frames handed over");
                let frames = Decoder::decode_all(bytes).expect("whole valid frames");
                assert_eq!(frames.len(), n);
                let mut at = 0;
                for f in &frames {
                    let flen = HEADER_LEN + f.text_headers().len() + f.body().len();
                    assert!(flen <= max_len, "frame too long");
                    assert_ne!(f.opcode(), OpCode::ByeResponse);
                    at += flen;
                }
                assert_eq!(at, bytes.len(), "only whole frames");
                delivered.borrow_mut().extend(frames);
            };
            let whole = Whole {
                max_len,
                allowed: &allowed_now,
                take: &mut take,
            };
            self.conn.handle_read(
                input,
                now(),
                &mut || pool.get(),
                &mut |m| delivered.borrow_mut().push(m),
                Some(whole),
            )
        };
        self.after_receive(r, &pool);
    }

    fn resume(&mut self, supply: u8) {
        if self.recv_end.is_some() {
            return;
        }
        let before = self.delivered.len();
        let was_starving = self.starving;
        let mut pool = Supply::new(supply);
        let delivered = &mut self.delivered;
        let r = self
            .conn
            .resume(&mut || pool.get(), &mut |m| delivered.push(m));
        if !was_starving {
            assert_eq!(r, Ok(RecvStop::Drained), "resume without starvation");
            assert_eq!(self.delivered.len(), before);
        }
        self.after_receive(r, &pool);
    }

    fn after_receive(&mut self, r: Result<RecvStop, DecodeError>, pool: &Supply) {
        match r {
            Ok(RecvStop::Drained) => {
                assert!(!self.conn.is_starved());
                assert!(!self.conn.bye_received());
                self.starving = false;
            }
            Ok(RecvStop::Starved) => {
                assert!(pool.ran_dry, "starved with messages in the pool");
                assert!(self.conn.is_starved());
                self.starving = true;
            }
            Ok(RecvStop::ByeResponse) => {
                assert!(self.conn.bye_received());
                self.recv_end = Some(Ok(()));
            }
            Err(e) => self.recv_end = Some(Err(e)),
        }
        assert_eq!(
            self.conn.first_received_id(),
            self.delivered.first().map(Message::message_id),
            "first_received_id"
        );
        self.check_received(false);
    }

    /// Delivered messages against the reference decode of the bytes read.
    fn check_received(&mut self, complete: bool) {
        let r = &mut self.reference;
        r.catch_up(&self.peer[..self.read]);
        let bye = r
            .frames
            .iter()
            .position(|m| m.opcode() == OpCode::ByeResponse);
        let expected = &r.frames[..bye.map_or(r.frames.len(), |i| i + 1)];
        assert!(self.delivered.len() <= expected.len(), "delivered too much");
        for (got, want) in self.delivered[r.checked..]
            .iter()
            .zip(&expected[r.checked..])
        {
            assert_eq!(got.header, want.header);
            assert_eq!(got.text_headers(), want.text_headers());
            assert_eq!(got.body(), want.body());
        }
        r.checked = self.delivered.len();
        match self.recv_end {
            Some(Ok(())) => {
                assert!(bye.is_some());
                assert_eq!(self.delivered.len(), expected.len());
            }
            Some(Err(e)) => {
                assert!(bye.is_none(), "decoded past a ByeResponse");
                assert_eq!(r.error, Some(e), "an error the reference does not see");
                assert_eq!(self.delivered.len(), expected.len());
            }
            None if !self.starving => {
                // Everything read was decoded (a trailing partial frame aside).
                assert!(bye.is_none() && r.error.is_none());
                assert_eq!(self.delivered.len(), expected.len());
            }
            None => assert!(!complete, "still starving with a full pool"),
        }
    }
}

/// The peer's bytes decoded with a pool that never runs dry, extended as more are read.
#[derive(Default)]
struct Reference {
    decoder: Decoder,
    pos: usize,
    frames: Vec<Message>,
    error: Option<DecodeError>,
    /// Delivered messages already compared.
    checked: usize,
}

impl Reference {
    fn catch_up(&mut self, bytes: &[u8]) {
        while self.error.is_none() && self.pos < bytes.len() {
            match self
                .decoder
                .decode(&bytes[self.pos..], &mut || Some(Message::new()))
            {
                Ok(p) => {
                    self.pos += p.consumed;
                    self.frames.extend(p.frame);
                }
                Err(e) => self.error = Some(e),
            }
        }
    }
}

/// The documented send rules, on message ids.
#[derive(Default)]
struct Model {
    queue: VecDeque<u64>,
    head_written: usize,
    bye_sent: bool,
    /// A ByeResponse was written: nothing more goes out after a bye.
    bye_response_sent: bool,
    /// Ids of completely written frames, in order.
    done: Vec<u64>,
}

impl Model {
    fn enqueue(&mut self, id: u64, oob: bool, sent: &HashMap<u64, Sent>) {
        if !oob {
            self.queue.push_back(id);
            return;
        }
        let at = match self.queue.front() {
            Some(h) if self.head_written > 0 || sent[h].opcode == OpCode::HelloRequest => 1,
            _ => 0,
        };
        self.queue.insert(at, id);
    }

    fn wants_send(&mut self, sent: &HashMap<u64, Sent>) -> bool {
        if !self.bye_sent {
            return !self.queue.is_empty();
        }
        if self.bye_response_sent {
            return false;
        }
        let Some(i) = self
            .queue
            .iter()
            .position(|id| sent[id].opcode == OpCode::ByeResponse)
        else {
            return false;
        };
        if i > 0 {
            assert_eq!(self.head_written, 0, "a started frame overtaken");
            let id = self.queue.remove(i).expect("found above");
            self.queue.push_front(id);
        }
        true
    }

    /// The first `limit` bytes the rules allow to be written now, and how many there are.
    fn offer(&self, sent: &HashMap<u64, Sent>, limit: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        let mut skip = self.head_written;
        for (i, id) in self.queue.iter().enumerate() {
            let s = &sent[id];
            if self.bye_sent && (i > 0 || s.opcode != OpCode::ByeResponse || self.bye_response_sent)
            {
                break;
            }
            let frame = &s.bytes[skip.min(s.bytes.len())..];
            skip = 0;
            total += frame.len();
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(&frame[..frame.len().min(room)]);
            if s.opcode.message_type() == MessageType::Bye {
                break;
            }
        }
        (out, total)
    }

    fn advance(&mut self, mut n: usize, sent: &HashMap<u64, Sent>) {
        while n > 0 {
            let id = *self.queue.front().expect("advance within the offer");
            let left = sent[&id].bytes.len() - self.head_written;
            if n < left {
                self.head_written += n;
                return;
            }
            n -= left;
            self.head_written = 0;
            self.queue.pop_front();
            self.done.push(id);
            if sent[&id].opcode.message_type() == MessageType::Bye {
                self.bye_sent = true;
            }
            if sent[&id].opcode == OpCode::ByeResponse {
                self.bye_response_sent = true;
            }
        }
    }
}

/// A pool with a few messages, some with leftovers from an earlier use.
struct Supply {
    left: u8,
    ran_dry: bool,
}

impl Supply {
    fn new(left: u8) -> Supply {
        Supply {
            left,
            ran_dry: false,
        }
    }

    fn get(&mut self) -> Option<Message> {
        if self.left == 0 {
            self.ran_dry = true;
            return None;
        }
        self.left -= 1;
        let mut m = Message::with_opcode(OpCode::ByeSignal);
        if self.left % 2 == 1 {
            m.header.origin = Origin::Engine;
            m.header.status = Status::PoolEmpty;
            m.header.message_id = 99;
            m.text_headers_mut().extend_from_slice(b"stale:1\r\n");
            m.set_body(b"stale");
        }
        Some(m)
    }
}

/// `len` bytes that differ between seeds (the header's message_id already tells frames apart).
fn fill(buf: &mut Vec<u8>, len: usize, seed: u64) {
    buf.clear();
    buf.resize(len, seed as u8);
    let tag = seed.to_be_bytes();
    let n = tag.len().min(len);
    buf[..n].copy_from_slice(&tag[..n]);
}
