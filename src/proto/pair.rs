//! Two [`Connection`]s wired to each other in memory, with a fake clock: the protocol's
//! behaviours (Hello, data, Bye from either side, crossing Byes, ByeSignal, frame timeout,
//! starvation and resume, peer garbage, the hand-back at close) driven end to end without a
//! socket. Each direction has a byte pipe standing in for the socket: a write moves at most
//! `chunk` bytes into it, and the receiving end reads the pipe unless it is starved (no
//! messages to read into, as the reactor stops reading) or its stream ended.
#![cfg(test)]

use std::io::IoSlice;
use std::time::{Duration, Instant};

use crate::proto::connection::{Connection, RecvStop};
use crate::proto::message::{Message, OpCode, Origin};
use crate::proto::status::Status;
use crate::proto::wire::{encode, DecodeError, HEADER_LEN};

/// One side: its connection, what it received, and the receive state the reactor would keep.
struct End {
    conn: Connection,
    /// Bytes written by the peer and not yet read (the socket's receive buffer).
    pipe: Vec<u8>,
    received: Vec<Message>,
    /// Messages left to read into; `None`: as many as needed.
    budget: Option<usize>,
    starved: bool,
    /// How the stream ended: a ByeResponse or a bad frame; nothing is read after it.
    end: Option<Result<RecvStop, DecodeError>>,
}

impl End {
    fn new(opened_id: u64, timeout: Option<Duration>) -> End {
        End {
            conn: Connection::new(opened_id, timeout),
            pipe: Vec::new(),
            received: Vec::new(),
            budget: None,
            starved: false,
            end: None,
        }
    }

    /// Reads what the pipe holds, as the reactor reads a readable socket.
    fn read(&mut self, now: Instant) {
        if self.end.is_some() || self.pipe.is_empty() {
            return;
        }
        let input = std::mem::take(&mut self.pipe);
        let budget = &mut self.budget;
        let received = &mut self.received;
        let r = self.conn.handle_read(
            &input,
            now,
            &mut || take(budget),
            &mut |m| received.push(m),
            None,
        );
        self.after(r);
    }

    /// Messages came back: decoding goes on where it stopped.
    fn resume(&mut self, more: usize) {
        self.budget = self.budget.map(|b| b + more);
        if !self.starved {
            return;
        }
        let budget = &mut self.budget;
        let received = &mut self.received;
        let r = self
            .conn
            .resume(&mut || take(budget), &mut |m| received.push(m));
        self.after(r);
    }

    fn after(&mut self, r: Result<RecvStop, DecodeError>) {
        match r {
            Ok(RecvStop::Drained) => self.starved = false,
            Ok(RecvStop::Starved) => self.starved = true,
            other => self.end = Some(other),
        }
    }

    fn opcodes(&self) -> Vec<(OpCode, u64)> {
        self.received
            .iter()
            .map(|m| (m.opcode(), m.message_id()))
            .collect()
    }
}

fn take(budget: &mut Option<usize>) -> Option<Message> {
    match budget {
        None => Some(Message::new()),
        Some(0) => None,
        Some(n) => {
            *n -= 1;
            Some(Message::new())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

struct Pair {
    a: End,
    b: End,
    /// The fake clock.
    now: Instant,
    /// Most bytes one write moves (partial writes below the frame size).
    chunk: usize,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl Pair {
    /// A is the client (opened with `HELLO_ID`), B the accepted end.
    fn new(chunk: usize) -> Pair {
        Pair {
            a: End::new(HELLO_ID, Some(TIMEOUT)),
            b: End::new(0, Some(TIMEOUT)),
            now: crate::util::test_epoch(),
            chunk,
        }
    }

    fn end(&mut self, side: Side) -> &mut End {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn post(&mut self, side: Side, m: Message) {
        self.end(side).conn.enqueue(m).expect("a valid message");
    }

    /// Writes and reads both ways until nothing moves.
    fn run(&mut self) {
        loop {
            let moved = write(&mut self.a, &mut self.b, self.chunk)
                | write(&mut self.b, &mut self.a, self.chunk);
            self.a.read(self.now);
            self.b.read(self.now);
            if !moved {
                return;
            }
        }
    }
}

/// One write of at most `chunk` bytes from `from` into `to`'s pipe; true if any moved.
fn write(from: &mut End, to: &mut End, chunk: usize) -> bool {
    if !from.conn.wants_send() {
        return false;
    }
    let mut stage = Vec::new();
    let mut iov = [IoSlice::new(&[]); 8];
    let n = from.conn.gather(&mut stage, &mut iov);
    let mut bytes: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
    bytes.truncate(chunk);
    from.conn.advance(bytes.len(), &mut Vec::new());
    to.pipe.extend_from_slice(&bytes);
    !bytes.is_empty()
}

const HELLO_ID: u64 = 1;

fn msg(op: OpCode, id: u64, body: &[u8]) -> Message {
    let mut m = Message::with_opcode(op);
    m.header.message_id = id;
    m.body_mut().extend_from_slice(body);
    m
}

fn hello(p: &mut Pair) {
    p.post(Side::A, msg(OpCode::HelloRequest, HELLO_ID, b""));
    p.run();
    p.post(Side::B, msg(OpCode::HelloResponse, HELLO_ID, b""));
    p.run();
    assert_eq!(p.b.opcodes(), [(OpCode::HelloRequest, HELLO_ID)]);
    assert_eq!(p.a.opcodes(), [(OpCode::HelloResponse, HELLO_ID)]);
    p.a.received.clear();
    p.b.received.clear();
}

/// Closes `side`'s connection and returns (handed back, final Signal).
fn close(p: &mut Pair, side: Side, reason: Status, later: Vec<Message>) -> (Vec<Message>, Message) {
    let mut back = p
        .end(side)
        .conn
        .close(reason, &mut later.into_iter(), 5, &mut Message::new);
    let last = back.pop().expect("the final Signal");
    assert_eq!(
        (last.opcode(), last.origin(), last.status(), last.channel()),
        (OpCode::Signal, Origin::Engine, Status::ChannelClosed, 5)
    );
    for m in &back {
        assert_eq!((m.origin(), m.status()), (Origin::Engine, reason));
    }
    (back, last)
}

fn ids(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().map(Message::message_id).collect()
}

#[test]
fn hello_then_data_both_ways_in_order_through_partial_writes() {
    // Light enough for Miri: fewer cuts and messages there.
    let (chunks, last): (&[usize], u64) = if cfg!(miri) {
        (&[HEADER_LEN + 3, 100_000], 13)
    } else {
        (&[1, 7, HEADER_LEN + 3, 100_000], 20)
    };
    for &chunk in chunks {
        let mut p = Pair::new(chunk);
        hello(&mut p);
        for id in 10..last {
            p.post(Side::A, msg(OpCode::Request, id, &[id as u8; 300]));
        }
        p.run();
        for id in 10..last {
            p.post(Side::B, msg(OpCode::Response, id, &[id as u8; 5]));
        }
        p.post(Side::B, msg(OpCode::Signal, 99, b""));
        p.run();
        let want_b: Vec<_> = (10..last).map(|id| (OpCode::Request, id)).collect();
        assert_eq!(p.b.opcodes(), want_b, "chunk {chunk}");
        let mut want_a: Vec<_> = (10..last).map(|id| (OpCode::Response, id)).collect();
        want_a.push((OpCode::Signal, 99));
        assert_eq!(p.a.opcodes(), want_a, "chunk {chunk}");
        assert!(p.b.received.iter().all(|m| m.body().len() == 300));
        assert!(p.a.end.is_none() && p.b.end.is_none());
    }
}

#[test]
fn bye_from_either_side_ends_both_streams_and_hands_back_what_was_not_sent() {
    for (from, to) in [(Side::A, Side::B), (Side::B, Side::A)] {
        let mut p = Pair::new(64);
        hello(&mut p);
        p.post(from, msg(OpCode::ByeRequest, 50, b""));
        p.post(from, msg(OpCode::Request, 51, b"too late"));
        p.run();
        assert_eq!(p.end(to).opcodes(), [(OpCode::ByeRequest, 50)], "{from:?}");
        // The answer goes out; what is posted after it never does.
        p.post(to, msg(OpCode::ByeResponse, 50, b""));
        p.post(to, msg(OpCode::Signal, 52, b"after the answer"));
        p.run();
        assert_eq!(p.end(from).opcodes(), [(OpCode::ByeResponse, 50)]);
        assert_eq!(p.end(from).end, Some(Ok(RecvStop::ByeResponse)));
        assert_eq!(p.end(to).received.len(), 1, "nothing after the ByeRequest");
        let (back, _) = close(&mut p, from, Status::ChannelClosed, vec![]);
        assert_eq!(ids(&back), [51]);
        let (back, _) = close(&mut p, to, Status::ChannelClosed, vec![]);
        assert_eq!(ids(&back), [52]);
    }
}

#[test]
fn crossing_byes_close_both_ends_instead_of_deadlocking() {
    let mut p = Pair::new(1000);
    hello(&mut p);
    p.post(Side::A, msg(OpCode::ByeRequest, 60, b""));
    p.post(Side::B, msg(OpCode::ByeRequest, 61, b""));
    p.run();
    assert_eq!(p.a.opcodes(), [(OpCode::ByeRequest, 61)]);
    assert_eq!(p.b.opcodes(), [(OpCode::ByeRequest, 60)]);
    // Each answers the other's; one ByeResponse may still follow a written bye.
    p.post(Side::A, msg(OpCode::ByeResponse, 61, b""));
    p.post(Side::B, msg(OpCode::ByeResponse, 60, b""));
    p.run();
    assert_eq!(p.a.end, Some(Ok(RecvStop::ByeResponse)));
    assert_eq!(p.b.end, Some(Ok(RecvStop::ByeResponse)));
    // A second ByeResponse is not sent.
    p.post(Side::A, msg(OpCode::ByeResponse, 62, b""));
    p.run();
    assert_eq!(p.b.received.len(), 2);
    let (back, _) = close(&mut p, Side::A, Status::ChannelClosed, vec![]);
    assert_eq!(ids(&back), [62]);
}

#[test]
fn a_bye_signal_is_the_last_frame_sent() {
    let mut p = Pair::new(10);
    hello(&mut p);
    p.post(Side::A, msg(OpCode::Signal, 70, b"before"));
    // The transmitted form (A=0); with A=1, the default, it is a local abort the engine
    // handles before any connection sees it.
    let mut bye = msg(OpCode::ByeSignal, 71, b"");
    bye.header.oob = false;
    p.post(Side::A, bye);
    p.post(Side::A, msg(OpCode::Signal, 72, b"after"));
    p.run();
    assert_eq!(
        p.b.opcodes(),
        [(OpCode::Signal, 70), (OpCode::ByeSignal, 71)]
    );
    let (back, _) = close(&mut p, Side::A, Status::ChannelClosed, vec![]);
    assert_eq!(ids(&back), [72]);
}

#[test]
fn an_unfinished_frame_times_out_and_new_bytes_push_the_deadline() {
    let mut p = Pair::new(HEADER_LEN + 10);
    hello(&mut p);
    let t0 = p.now;
    assert_eq!(
        p.b.conn.poll_timeout(),
        None,
        "nothing owed at a frame boundary"
    );
    p.post(Side::A, msg(OpCode::Request, 80, &[1; 100]));
    write(&mut p.a, &mut p.b, p.chunk);
    p.b.read(t0);
    assert_eq!(p.b.conn.poll_timeout(), Some(t0 + TIMEOUT));
    assert_eq!(p.b.conn.handle_timeout(t0 + TIMEOUT / 2), None);
    // More of the frame arrives later: the peer is slow, not silent.
    let t1 = t0 + TIMEOUT / 2;
    write(&mut p.a, &mut p.b, p.chunk);
    p.b.read(t1);
    assert_eq!(p.b.conn.poll_timeout(), Some(t1 + TIMEOUT));
    assert_eq!(p.b.conn.handle_timeout(t0 + TIMEOUT), None);
    assert_eq!(
        p.b.conn.handle_timeout(t1 + TIMEOUT),
        Some(Status::RecvFailed)
    );
    // The rest arrives: the frame is whole and nothing is due any more.
    p.now = t1 + Duration::from_secs(1);
    p.run();
    assert_eq!(p.b.opcodes(), [(OpCode::Request, 80)]);
    assert_eq!(p.b.conn.poll_timeout(), None);
    assert_eq!(p.b.conn.handle_timeout(t1 + 10 * TIMEOUT), None);
}

#[test]
fn no_frame_timeout_when_none_is_set_or_when_waiting_for_messages() {
    // No timeout configured: an unfinished frame waits forever (Zig tofu's behaviour).
    let mut c = Connection::new(0, None);
    let mut bytes = Vec::new();
    encode(&msg(OpCode::Signal, 1, &[0; 50]), &mut bytes).unwrap();
    let t0 = crate::util::test_epoch();
    c.handle_read(
        &bytes[..20],
        t0,
        &mut || Some(Message::new()),
        &mut |_| {},
        None,
    )
    .unwrap();
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.handle_timeout(t0 + Duration::from_secs(3600)), None);
    // Starved (the pool is what is missing, not the peer's bytes): nothing is due either.
    let mut c = Connection::new(0, Some(TIMEOUT));
    let r = c.handle_read(&bytes, t0, &mut || None, &mut |_| {}, None);
    assert_eq!(r, Ok(RecvStop::Starved));
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn starvation_pauses_and_resume_delivers_the_rest_in_order() {
    let mut p = Pair::new(1 << 20);
    hello(&mut p);
    p.b.budget = Some(2);
    for id in 1..=6 {
        p.post(Side::A, msg(OpCode::Signal, id, &[id as u8; 40]));
    }
    p.run();
    assert!(p.b.starved);
    assert_eq!(ids(&p.b.received), [1, 2]);
    p.b.resume(1);
    assert!(p.b.starved, "one message is not enough for four frames");
    assert_eq!(ids(&p.b.received), [1, 2, 3]);
    p.b.resume(10);
    assert!(!p.b.starved);
    assert_eq!(ids(&p.b.received), [1, 2, 3, 4, 5, 6]);
    assert!(p
        .b
        .received
        .iter()
        .all(|m| m.body() == [m.message_id() as u8; 40]));
}

#[test]
fn peer_garbage_ends_only_that_stream_with_a_status() {
    let mut p = Pair::new(1000);
    hello(&mut p);
    p.post(Side::A, msg(OpCode::Signal, 90, b"fine"));
    p.run();
    // A frame whose opCode bits hold an undefined value (10..=15).
    let mut bad = Vec::new();
    encode(&msg(OpCode::Signal, 91, b"x"), &mut bad).unwrap();
    bad[2] = (bad[2] & !0x0f) | 0x0f;
    p.b.pipe.extend_from_slice(&bad);
    p.b.read(p.now);
    let Some(Err(e)) = p.b.end else {
        panic!("garbage accepted: {:?}", p.b.end)
    };
    assert_eq!(e.status(), Status::InvalidOpCode);
    assert_eq!(ids(&p.b.received), [90], "what came before is delivered");
    // The other direction still works: B's sending side is not affected.
    p.post(Side::B, msg(OpCode::Signal, 92, b""));
    p.run();
    assert_eq!(ids(&p.a.received), [92]);
}

#[test]
fn close_hands_back_unsent_then_later_posts_then_the_final_signal() {
    let mut p = Pair::new(HEADER_LEN - 4);
    p.post(Side::A, msg(OpCode::HelloRequest, HELLO_ID, b""));
    p.post(Side::A, msg(OpCode::Request, 2, &[2; 64]));
    p.post(Side::A, msg(OpCode::Request, 3, &[3; 64]));
    // Only part of the HelloRequest's frame leaves.
    write(&mut p.a, &mut p.b, p.chunk);
    let later = vec![msg(OpCode::Signal, 4, b""), msg(OpCode::Signal, 5, b"")];
    let (back, last) = close(&mut p, Side::A, Status::PeerDisconnected, later);
    assert_eq!(ids(&back), [HELLO_ID, 2, 3, 4, 5]);
    assert_eq!(back[1].body(), [2; 64], "content unchanged");
    assert_eq!(
        last.message_id(),
        HELLO_ID,
        "no frame from the peer yet: the Hello's id"
    );
    // Once the peer's first frame arrived, the final Signal carries its id instead.
    let mut p = Pair::new(1000);
    p.post(Side::A, msg(OpCode::Signal, 33, b""));
    p.post(Side::B, msg(OpCode::Signal, 44, b""));
    p.post(Side::B, msg(OpCode::Signal, 45, b""));
    p.run();
    let (_, last) = close(&mut p, Side::A, Status::ChannelClosed, vec![]);
    assert_eq!(last.message_id(), 44, "A was opened with {HELLO_ID}");
    let (_, last) = close(&mut p, Side::B, Status::ChannelClosed, vec![]);
    assert_eq!(last.message_id(), 33, "B was opened with 0");
}

#[test]
fn a_local_abort_hands_everything_back_and_leaves_the_peer_owed_a_frame() {
    // A ByeSignal with A=1 (the default) is a local abort: the engine ends the connection at
    // once with `close`, whatever is queued or half written; only the peer's socket learns
    // of it (a reset), and its connection is left owing the rest of the frame.
    let mut p = Pair::new(HEADER_LEN + 10);
    hello(&mut p);
    p.post(Side::A, msg(OpCode::Request, 1, &[1; 100]));
    p.post(Side::A, msg(OpCode::Signal, 2, b""));
    write(&mut p.a, &mut p.b, p.chunk);
    p.b.read(p.now);
    let (back, _) = close(&mut p, Side::A, Status::ChannelClosed, vec![]);
    assert_eq!(ids(&back), [1, 2], "the half-written frame comes back too");
    assert_eq!(back[0].body(), [1; 100]);
    assert!(
        p.a.conn
            .close(
                Status::ChannelClosed,
                &mut std::iter::empty(),
                5,
                &mut Message::new
            )
            .len()
            == 1,
        "a second close hands back only the final Signal"
    );
    assert!(p.b.received.is_empty());
    assert_eq!(p.b.conn.poll_timeout(), Some(p.now + TIMEOUT));
}
