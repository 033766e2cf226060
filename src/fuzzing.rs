//! Crate internals the fuzz targets in `fuzz/` drive. Compiled only with the `fuzzing` cargo
//! feature (off by default) and hidden from the docs: this is not part of the API and may
//! change with any release.
//!
//! The per-connection protocol state stays `pub(crate)`; [`Connection`] is a thin public
//! wrapper that forwards every call unchanged, so the fuzzers exercise exactly the code the
//! reactor runs.

use std::io::IoSlice;

use crate::proto::connection;
use crate::proto::message::Message;
use crate::proto::status::{Error, Status};
use crate::proto::wire::DecodeError;

/// Largest section `Connection::gather` copies into its stage (mirrors the internal constant).
pub const COPY_MAX: usize = connection::COPY_MAX;
/// Bytes `Connection::gather` stages at most per call (mirrors the internal constant).
pub const STAGE_CAP: usize = connection::STAGE_CAP;

/// What [`Connection::receive`] and [`Connection::resume`] stopped on (mirrors the internal
/// `RecvStop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvStop {
    /// All input was consumed.
    Drained,
    /// A message was needed and none was available; the unconsumed bytes were stashed.
    Starved,
    /// A ByeResponse was received: the channel must close; later bytes were discarded.
    ByeResponse,
}

impl From<connection::RecvStop> for RecvStop {
    fn from(s: connection::RecvStop) -> RecvStop {
        match s {
            connection::RecvStop::Drained => RecvStop::Drained,
            connection::RecvStop::Starved => RecvStop::Starved,
            connection::RecvStop::ByeResponse => RecvStop::ByeResponse,
        }
    }
}

/// The sans-I/O protocol state of one data channel (send queue, receive decoder, Bye rules).
/// Each method forwards to the engine's own implementation; see `src/proto/connection.rs` for the
/// rules.
pub struct Connection(connection::Connection);

impl Default for Connection {
    fn default() -> Connection {
        Connection::new()
    }
}

impl Connection {
    /// A connection with an empty queue at the start of both streams.
    pub fn new() -> Connection {
        Connection(connection::Connection::new())
    }

    /// Queues a message; a section over 65535 bytes is refused and the message handed back.
    pub fn enqueue(&mut self, msg: Message) -> Result<(), (Error, Message)> {
        self.0.enqueue(msg)
    }

    /// Queues a message whose first `written` bytes someone else wrote (a direct write
    /// handed over to the reactor); it goes first.
    pub fn enqueue_started(
        &mut self,
        msg: Message,
        written: usize,
    ) -> Result<(), (Error, Message)> {
        self.0.enqueue_started(msg, written)
    }

    /// True when a frame can be written now (may reorder a ByeResponse to the front).
    pub fn wants_send(&mut self) -> bool {
        self.0.wants_send()
    }

    /// Fills `iov` with the bytes to write next, small pieces copied into `stage`; returns
    /// how many slices were used.
    pub fn gather<'a>(&'a self, stage: &'a mut Vec<u8>, iov: &mut [IoSlice<'a>]) -> usize {
        self.0.gather(stage, iov)
    }

    /// Records that `n` bytes of what [`gather`](Self::gather) offered were written; the
    /// messages of finished frames are pushed to `sent`.
    pub fn advance(&mut self, n: usize, sent: &mut Vec<Message>) {
        self.0.advance(n, sent)
    }

    /// Feeds received bytes; complete frames go to `deliver`, `supply` provides messages.
    pub fn receive(
        &mut self,
        input: &[u8],
        supply: &mut dyn FnMut() -> Option<Message>,
        deliver: &mut dyn FnMut(Message),
    ) -> Result<RecvStop, DecodeError> {
        self.0.receive(input, supply, deliver).map(RecvStop::from)
    }

    /// `receive`, handing whole frames of at most `max_len` bytes to `take` as bytes (up to
    /// `allowed` at a time) wherever the stream is at a frame boundary, as the reactor does.
    pub fn receive_with(
        &mut self,
        input: &[u8],
        supply: &mut dyn FnMut() -> Option<Message>,
        deliver: &mut dyn FnMut(Message),
        max_len: usize,
        allowed: usize,
        take: &mut dyn FnMut(&[u8], usize),
    ) -> Result<RecvStop, DecodeError> {
        let allowed = move || allowed;
        let whole = connection::Whole {
            max_len,
            allowed: &allowed,
            take,
        };
        self.0
            .receive_with(input, supply, deliver, Some(whole))
            .map(RecvStop::from)
    }

    /// Continues decoding stashed bytes after starvation.
    pub fn resume(
        &mut self,
        supply: &mut dyn FnMut() -> Option<Message>,
        deliver: &mut dyn FnMut(Message),
    ) -> Result<RecvStop, DecodeError> {
        self.0.resume(supply, deliver).map(RecvStop::from)
    }

    /// True while decoding waits for a message.
    pub fn is_starved(&self) -> bool {
        self.0.is_starved()
    }

    /// True once a ByeResponse was received.
    pub fn bye_received(&self) -> bool {
        self.0.bye_received()
    }

    /// True once a bye-type frame was written.
    pub fn bye_sent(&self) -> bool {
        self.0.bye_sent()
    }

    /// message_id of the first frame received, if any.
    pub fn first_received_id(&self) -> Option<u64> {
        self.0.first_received_id()
    }

    /// Number of queued frames.
    pub fn queued(&self) -> usize {
        self.0.queued()
    }

    /// The queued messages not (completely) sent, marked origin engine and status `reason`
    /// (frames of runs decoded back into new messages).
    pub fn take_unsent(&mut self, reason: Status) -> Vec<Message> {
        self.0.take_unsent(reason, &mut Message::new)
    }

    /// Queues `frames` data frames encoded back to back by posting threads (a run).
    pub fn enqueue_run(&mut self, bytes: Vec<u8>, frames: u32) {
        self.0.enqueue_run(bytes, frames)
    }

    /// Frames and bytes completely written since the last call.
    pub fn take_progress(&mut self) -> (u64, u64) {
        let p = self.0.take_progress();
        (p.frames, p.bytes)
    }
}
