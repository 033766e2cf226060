//! A data channel's whole protocol life, free of I/O: the send queue with its partially
//! written head, the receive decoder, the Bye rules, the frame timeout, and the ordered
//! hand-back at close. Bytes and the current time come in as values ([`Connection::gather`] /
//! [`Connection::advance`] out, [`Connection::handle_read`] in, [`Connection::poll_timeout`] /
//! [`Connection::handle_timeout`] for the clock, [`Connection::close`] at the end); the
//! reactor only moves bytes and readiness between sockets and connections. The tests below
//! wire two connections to each other in memory, with a fake clock.
//!
//! The send queue holds messages and *runs*: frames that posting threads encoded themselves
//! (small data messages, see `Outbound` in `src/engine/channels.rs`), written as one slice and
//! decoded back into messages only if they must be handed back at close. A run behaves
//! exactly like the messages it holds: every rule below is per frame.
//!
//! Send rules:
//! * frames go out in post order; an `oob` message goes to the front of what is not started;
//! * the HelloRequest of a client channel is the first frame;
//! * once a bye-type frame (ByeRequest, ByeResponse, transmitted ByeSignal) is written, only
//!   one ByeResponse may still be sent, and none once a ByeResponse was written (so
//!   simultaneous ByeRequests from both ends close instead of deadlocking as in Zig tofu);
//!   everything else stays queued and is handed back at close.
//!
//! Receive rules: after a ByeResponse frame nothing more is read. A peer that starts a frame
//! and then sends nothing for the frame timeout has its channel closed with `RecvFailed`
//! (waiting for the pool to give messages back does not count).
//!
//! Close: the application gets back, in order, every queued message not completely written,
//! then the posts the connection never saw, all marked origin engine with the close reason,
//! then the channel's final `ChannelClosed` Signal, which carries the message_id of the
//! peer's first frame (or, before one arrived, the id the channel was opened with).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use crate::proto::message::{Message, MessageType, OpCode};
use crate::proto::notify;
use crate::proto::status::{Error, Status};
use crate::proto::wire::{encoded_len, DecodeError, Decoder, FrameHeader, HEADER_LEN};

/// One queued item: a message with its encoded header, or a run of encoded frames.
enum Outgoing {
    Frame {
        msg: Message,
        header: [u8; HEADER_LEN],
    },
    Run(Run),
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Frame { msg, .. } => HEADER_LEN + msg.text_headers().len() + msg.body().len(),
            Outgoing::Run(r) => r.bytes.len(),
        }
    }

    /// The opcode of a message; `None` for a run (data frames only).
    fn opcode(&self) -> Option<OpCode> {
        match self {
            Outgoing::Frame { msg, .. } => Some(msg.opcode()),
            Outgoing::Run(_) => None,
        }
    }

    fn is_bye(&self) -> bool {
        self.opcode()
            .is_some_and(|op| op.message_type() == MessageType::Bye)
    }
}

/// Frames encoded back to back (data messages only), with the progress of writing them.
struct Run {
    bytes: Vec<u8>,
    /// Frames in `bytes`.
    frames: u32,
    /// Frames completely written.
    done: u32,
    /// Where the first frame not completely written starts.
    start: usize,
}

impl Run {
    /// Counts the frames that `written` bytes complete; returns (frames, bytes) newly done.
    fn note_written(&mut self, written: usize) -> (u64, u64) {
        let (mut frames, mut bytes) = (0, 0);
        while self.start < self.bytes.len() {
            let len = crate::proto::wire::frame_len(&self.bytes[self.start..]);
            if self.start + len > written {
                break;
            }
            self.start += len;
            self.done += 1;
            frames += 1;
            bytes += len as u64;
        }
        (frames, bytes)
    }
}

/// What [`Connection::advance`] completed since the last [`Connection::take_completed`]:
/// frames and their bytes (messages and run frames alike).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completed {
    /// Frames completely written.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Largest frame section (text headers or body) copied into the staging buffer by
/// [`Connection::gather`]; larger ones are written from the message itself.
pub const COPY_MAX: usize = 2048;
/// Bytes [`Connection::gather`] stages at most per call.
pub const STAGE_CAP: usize = 64 * 1024;
/// Bytes of whole frames `Connection::take_whole` hands over at most at once.
pub const CHUNK_CAP: usize = 64 * 1024;
/// Slices [`Connection::gather`] offers at most per call.
const GATHER_ITEMS: usize = 64;

/// One slice of a gather: staged bytes up to an offset of the stage, or a large piece.
#[derive(Clone, Copy)]
enum Item<'a> {
    Staged(usize),
    InPlace(&'a [u8]),
}

/// Where [`Connection::handle_read`] hands whole small frames as bytes.
pub struct Whole<'a> {
    /// Longest frame handed over.
    pub max_len: usize,
    /// How many frames may be handed over now (0: decode them instead).
    pub allowed: &'a dyn Fn() -> usize,
    /// Takes `frames` whole frames encoded back to back.
    pub take: &'a mut dyn FnMut(&[u8], usize),
}

/// What [`Connection::handle_read`] and [`Connection::resume`] stopped on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvStop {
    /// All input was consumed.
    Drained,
    /// A message was needed and none was available; the unconsumed bytes were stashed.
    Starved,
    /// A ByeResponse was received: the channel must close; later bytes were discarded.
    ByeResponse,
}

/// Protocol state of one data channel.
pub struct Connection {
    queue: VecDeque<Outgoing>,
    head_written: usize,
    /// Frames and bytes completed by `advance`, until taken.
    completed: Completed,
    /// Buffers of runs that are written (or handed back), for reuse.
    spent: Vec<Vec<u8>>,
    bye_sent: bool,
    /// A bye-type message was queued (it may not be written yet).
    bye_queued: bool,
    /// A ByeResponse was written: after a bye nothing more, not even another ByeResponse.
    bye_response_sent: bool,
    bye_received: bool,
    decoder: Decoder,
    stash: Vec<u8>,
    first_id: Option<u64>,
    /// The final Signal's message_id until the peer's first frame replaces it.
    opened_id: u64,
    frame_timeout: Option<Duration>,
    /// When bytes last arrived.
    last_input: Option<Instant>,
}

impl Default for Connection {
    /// A connection opened with message_id 0 and no frame timeout.
    fn default() -> Connection {
        Connection::new(0, None)
    }
}

impl Connection {
    /// A connection at the start of both streams. `opened_id` is the message_id the final
    /// `ChannelClosed` Signal carries until the peer's first frame replaces it (a client
    /// channel's HelloRequest id; 0 for an accepted one). `frame_timeout`: see
    /// [`handle_timeout`](Self::handle_timeout); `None` waits forever.
    pub fn new(opened_id: u64, frame_timeout: Option<Duration>) -> Connection {
        Connection {
            queue: VecDeque::new(),
            head_written: 0,
            completed: Completed::default(),
            spent: Vec::new(),
            bye_sent: false,
            bye_queued: false,
            bye_response_sent: false,
            bye_received: false,
            decoder: Decoder::new(),
            stash: Vec::new(),
            first_id: None,
            opened_id,
            frame_timeout,
            last_input: None,
        }
    }

    /// Queues a validated message. Sections over 65535 bytes are refused (post validates this,
    /// so it only guards the invariant).
    pub fn enqueue(&mut self, msg: Message) -> Result<(), (Error, Message)> {
        let header = match FrameHeader::for_message(&msg) {
            Ok(h) => h.to_bytes(),
            Err(e) => return Err((e, msg)),
        };
        let front = msg.header.oob;
        self.bye_queued |= msg.opcode().message_type() == MessageType::Bye;
        let out = Outgoing::Frame { msg, header };
        if front {
            self.end_head_run();
            // Never in front of a started frame or a not-yet-sent HelloRequest.
            let at = match self.queue.front() {
                Some(h) if self.head_written > 0 || h.opcode() == Some(OpCode::HelloRequest) => 1,
                _ => 0,
            };
            self.queue.insert(at, out);
        } else {
            self.queue.push_back(out);
        }
        Ok(())
    }

    /// Queues `frames` data frames encoded back to back in `bytes` (by posting threads; each
    /// one the encoding of a validated Request, Response or Signal without `oob`).
    pub fn enqueue_run(&mut self, bytes: Vec<u8>, frames: u32) {
        if frames == 0 {
            self.spent.push(bytes);
            return;
        }
        self.queue.push_back(Outgoing::Run(Run {
            bytes,
            frames,
            done: 0,
            start: 0,
        }));
    }

    /// Makes a started run at the head end with its started frame, so that what follows can
    /// be put in front of the rest (an `oob` message). The rest becomes a run of its own.
    fn end_head_run(&mut self) {
        if self.head_written == 0 {
            return;
        }
        let Some(Outgoing::Run(r)) = self.queue.front_mut() else {
            return;
        };
        let cut = if self.head_written > r.start {
            r.start + crate::proto::wire::frame_len(&r.bytes[r.start..])
        } else {
            r.start // at a frame boundary: nothing of the rest is written
        };
        if cut == r.bytes.len() {
            return;
        }
        let rest = r.bytes[cut..].to_vec();
        r.bytes.truncate(cut);
        let rest_frames = r.frames - r.done - u32::from(cut > r.start);
        r.frames -= rest_frames;
        let head_done = cut == r.start;
        self.queue.insert(
            1,
            Outgoing::Run(Run {
                bytes: rest,
                frames: rest_frames,
                done: 0,
                start: 0,
            }),
        );
        if head_done {
            // Every frame of the head run is written: it leaves the queue.
            if let Some(Outgoing::Run(r)) = self.queue.pop_front() {
                self.spent.push(r.bytes);
            }
            self.head_written = 0;
        }
    }

    /// Queues a message whose first `written` bytes were already written by someone else
    /// (a direct write from a posting thread): it goes to the front, ahead of everything.
    /// Only valid while no other frame is partially written.
    pub fn enqueue_started(
        &mut self,
        msg: Message,
        written: usize,
    ) -> Result<(), (Error, Message)> {
        let header = match FrameHeader::for_message(&msg) {
            Ok(h) => h.to_bytes(),
            Err(e) => return Err((e, msg)),
        };
        debug_assert_eq!(
            self.head_written, 0,
            "a started frame is already at the head"
        );
        self.bye_queued |= msg.opcode().message_type() == MessageType::Bye;
        let out = Outgoing::Frame { msg, header };
        debug_assert!(written < out.len());
        self.queue.push_front(out);
        self.head_written = written;
        Ok(())
    }

    /// True when nothing is queued or half-written and no bye-type frame was queued: a
    /// whole new frame may be written by someone else (see `SendState`).
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.head_written == 0 && !self.bye_queued
    }

    /// True once a bye-type message was queued.
    pub fn bye_queued(&self) -> bool {
        self.bye_queued
    }

    /// True when a frame can be written now.
    pub fn wants_send(&mut self) -> bool {
        if self.queue.is_empty() {
            return false;
        }
        if !self.bye_sent {
            return true;
        }
        if self.bye_response_sent {
            return false; // the channel's last word has been said
        }
        // After a bye only one ByeResponse may go out: bring the first one to the front.
        match self
            .queue
            .iter()
            .position(|o| o.opcode() == Some(OpCode::ByeResponse))
        {
            Some(0) => true,
            Some(i) => {
                if let Some(o) = self.queue.remove(i) {
                    self.queue.push_front(o);
                }
                true
            }
            None => false,
        }
    }

    /// Fills `iov` with the bytes to write next (call after `wants_send` returned true);
    /// returns how many slices were used. Stops after a bye-type frame.
    ///
    /// Frame headers and sections of at most [`COPY_MAX`] bytes are copied into `stage`
    /// (cleared first, filled to about [`STAGE_CAP`] bytes), so a batch of small frames is
    /// one contiguous slice: the kernel's per-slice cost dominates small writes. Larger
    /// sections are offered in place, without a copy. Offers nothing more once `stage` is
    /// full or `iov` has no free slot, so the result may be a prefix of what is queued.
    pub fn gather<'a>(&'a self, stage: &'a mut Vec<u8>, iov: &mut [IoSlice<'a>]) -> usize {
        stage.clear();
        // Pass 1: copy the small pieces, remember the order of staged runs and large pieces.
        let mut items = [Item::Staged(0); GATHER_ITEMS];
        let max_items = iov.len().min(GATHER_ITEMS);
        let mut n = 0;
        let mut run_open = false;
        let mut skip = self.head_written;
        'frames: for (i, o) in self.queue.iter().enumerate() {
            if self.bye_sent && (i > 0 || o.opcode() != Some(OpCode::ByeResponse)) {
                break;
            }
            let parts: [&[u8]; 3] = match o {
                Outgoing::Frame { msg, header } => [&header[..], msg.text_headers(), msg.body()],
                Outgoing::Run(r) => [&r.bytes[..], &[], &[]],
            };
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                let piece = &part[skip..];
                skip = 0;
                if piece.len() <= COPY_MAX {
                    if !stage.is_empty() && stage.len() + piece.len() > STAGE_CAP {
                        break 'frames;
                    }
                    if !run_open {
                        if n == max_items {
                            break 'frames;
                        }
                        n += 1;
                        run_open = true;
                    }
                    stage.extend_from_slice(piece);
                    items[n - 1] = Item::Staged(stage.len());
                } else {
                    if n == max_items {
                        break 'frames;
                    }
                    items[n] = Item::InPlace(piece);
                    n += 1;
                    run_open = false;
                }
            }
            if o.is_bye() {
                break;
            }
        }
        // Pass 2: the staged bytes no longer change; hand out the slices in order.
        let stage: &'a Vec<u8> = stage;
        let mut from = 0;
        for (slot, item) in iov.iter_mut().zip(&items[..n]) {
            *slot = match *item {
                Item::Staged(to) => {
                    let s = IoSlice::new(&stage[from..to]);
                    from = to;
                    s
                }
                Item::InPlace(piece) => IoSlice::new(piece),
            };
        }
        n
    }

    /// Records that `n` bytes of what [`gather`](Self::gather) offered were written: finished
    /// frames leave the queue, their messages go to `sent` (for reuse or the pool) and the
    /// buffers of finished runs are kept for [`take_spent`](Self::take_spent).
    pub fn advance(&mut self, mut n: usize, sent: &mut Vec<Message>) {
        while n > 0 {
            let Some(head) = self.queue.front_mut() else {
                return;
            };
            let left = head.len() - self.head_written;
            if n < left {
                self.head_written += n;
                if let Outgoing::Run(r) = head {
                    let (f, b) = r.note_written(self.head_written);
                    self.completed.frames += f;
                    self.completed.bytes += b;
                }
                return;
            }
            n -= left;
            self.head_written = 0;
            match self.queue.pop_front() {
                Some(Outgoing::Frame { msg, .. }) => {
                    self.completed.frames += 1;
                    self.completed.bytes += encoded_len(&msg) as u64;
                    if msg.opcode().message_type() == MessageType::Bye {
                        self.bye_sent = true;
                    }
                    if msg.opcode() == OpCode::ByeResponse {
                        self.bye_response_sent = true;
                    }
                    sent.push(msg);
                }
                Some(Outgoing::Run(mut r)) => {
                    let (f, b) = r.note_written(r.bytes.len());
                    self.completed.frames += f;
                    self.completed.bytes += b;
                    self.spent.push(r.bytes);
                }
                None => {}
            }
        }
    }

    /// Frames and bytes completely written since the last call.
    pub fn take_completed(&mut self) -> Completed {
        std::mem::take(&mut self.completed)
    }

    /// Moves the buffers of written runs to `into` (for reuse).
    pub fn take_spent(&mut self, into: &mut Vec<Vec<u8>>) {
        into.append(&mut self.spent);
    }

    /// Feeds bytes received at `now`. Each complete frame goes to `deliver` (channel number
    /// still the sender's). `supply` provides receive messages; when it has none the rest of
    /// `input` is stashed until [`resume`](Self::resume). With `whole`, small frames received
    /// whole are handed to `whole.take` as bytes wherever the stream is at a frame boundary
    /// (see [`take_whole`](Self::take_whole)), the others decoded into messages; order is
    /// kept: `whole.take` and `deliver` are called in stream order.
    pub fn handle_read(
        &mut self,
        input: &[u8],
        now: Instant,
        supply: &mut dyn FnMut() -> Option<Message>,
        deliver: &mut dyn FnMut(Message),
        whole: Option<Whole<'_>>,
    ) -> Result<RecvStop, DecodeError> {
        if !input.is_empty() {
            self.last_input = Some(now);
        }
        if !self.stash.is_empty() {
            // Starved with bytes kept for `resume`: these come after them. (A TLS channel
            // feeds every piece of plaintext it decrypted, starved or not.)
            self.stash.extend_from_slice(input);
            return Ok(RecvStop::Starved);
        }
        self.decode_input(input, supply, deliver, whole)
    }

    fn decode_input(
        &mut self,
        mut input: &[u8],
        supply: &mut dyn FnMut() -> Option<Message>,
        deliver: &mut dyn FnMut(Message),
        mut whole: Option<Whole<'_>>,
    ) -> Result<RecvStop, DecodeError> {
        while !input.is_empty() {
            if self.bye_received {
                return Ok(RecvStop::ByeResponse);
            }
            if let Some(w) = whole.as_mut() {
                let k = (w.allowed)();
                if k > 0 {
                    let (used, n) = self.take_whole(input, k, w.max_len);
                    if n > 0 {
                        (w.take)(&input[..used], n);
                        input = &input[used..];
                        continue;
                    }
                }
            }
            let p = self.decoder.decode(input, supply)?;
            input = &input[p.consumed..];
            if let Some(m) = p.frame {
                self.note_received(&m);
                deliver(m);
            } else if self.decoder.is_starved() {
                self.stash.extend_from_slice(input);
                return Ok(RecvStop::Starved);
            }
        }
        Ok(if self.bye_received {
            RecvStop::ByeResponse
        } else {
            RecvStop::Drained
        })
    }

    /// How many bytes of whole frames at the start of `input` the application may decode
    /// itself (see `Frames` in `src/engine/shared.rs`), and how many frames they are: at most
    /// `max_frames`, each at most `max_len` bytes, together at most [`CHUNK_CAP`] bytes
    /// (the first frame aside). Only at a frame boundary with nothing
    /// stashed; stops before an incomplete frame, a ByeResponse and an undefined opCode (left
    /// to the decoder, which applies their rules). The caller copies the bytes and feeds the
    /// rest of `input` to the decoder.
    fn take_whole(&mut self, input: &[u8], max_frames: usize, max_len: usize) -> (usize, usize) {
        if self.bye_received || self.decoder.is_mid_frame() || !self.stash.is_empty() {
            return (0, 0);
        }
        let (mut pos, mut n) = (0, 0);
        while n < max_frames {
            let Some(head) = input[pos..].first_chunk::<HEADER_LEN>() else {
                break;
            };
            let h = FrameHeader::parse(head);
            match OpCode::try_from(h.opcode_bits()) {
                Ok(OpCode::ByeResponse) | Err(_) => break,
                Ok(_) => {}
            }
            let len = HEADER_LEN + h.payload_len();
            if len > max_len || pos + len > input.len() || (n > 0 && pos + len > CHUNK_CAP) {
                break;
            }
            if self.first_id.is_none() {
                self.first_id = Some(h.message_id);
            }
            pos += len;
            n += 1;
        }
        (pos, n)
    }

    /// Continues decoding stashed bytes after starvation.
    pub fn resume(
        &mut self,
        supply: &mut dyn FnMut() -> Option<Message>,
        deliver: &mut dyn FnMut(Message),
    ) -> Result<RecvStop, DecodeError> {
        let stash = std::mem::take(&mut self.stash);
        if stash.is_empty() && self.decoder.is_starved() {
            // Only the header was pending: one empty feed asks supply again.
            let p = self.decoder.decode(&[], supply)?;
            if let Some(m) = p.frame {
                self.note_received(&m);
                deliver(m);
            }
            if self.decoder.is_starved() {
                return Ok(RecvStop::Starved);
            }
            return Ok(if self.bye_received {
                RecvStop::ByeResponse
            } else {
                RecvStop::Drained
            });
        }
        let r = self.decode_input(&stash, supply, deliver, None);
        // `receive` re-stashes what it could not decode; reuse the old allocation next time.
        if self.stash.is_empty() {
            let mut stash = stash;
            stash.clear();
            if stash.capacity() <= 64 * 1024 {
                self.stash = stash;
            }
        }
        r
    }

    /// True while decoding waits for a message.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn is_starved(&self) -> bool {
        self.decoder.is_starved()
    }

    /// True while the peer owes the rest of a frame (not while the pool is what is missing).
    pub fn is_mid_frame(&self) -> bool {
        self.decoder.is_mid_frame() && !self.decoder.is_starved()
    }

    /// True once a ByeResponse was received (reading stops).
    pub fn bye_received(&self) -> bool {
        self.bye_received
    }

    /// How the channel ends when the peer's side of the link goes (end of stream, reset,
    /// hang-up): `failure`, unless a ByeResponse was written. That was the channel's last
    /// word, and the initiator closes the connection next (tofu's peers with a reset): the
    /// end of the Bye exchange, `ChannelClosed`, not a failure.
    pub fn link_end(&self, failure: Status) -> Status {
        if self.bye_response_sent {
            Status::ChannelClosed
        } else {
            failure
        }
    }

    /// True once a bye-type frame was written.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn bye_sent(&self) -> bool {
        self.bye_sent
    }

    /// message_id of the first frame received, if any.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn first_received_id(&self) -> Option<u64> {
        self.first_id
    }

    /// The message_id the final `ChannelClosed` Signal carries: the peer's first frame's,
    /// or the one the channel was opened with.
    pub fn closing_id(&self) -> u64 {
        self.first_id.unwrap_or(self.opened_id)
    }

    /// When the frame the peer started must be complete: the last input plus the frame
    /// timeout, while a frame is incomplete for want of bytes (not of messages). `None`
    /// when nothing is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.is_mid_frame() {
            return None;
        }
        Some(self.last_input? + self.frame_timeout?)
    }

    /// `Some(RecvFailed)` when the peer left a frame incomplete for the frame timeout at
    /// `now`: the channel must close (a slowloris peer cannot hold it forever).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Status> {
        let due = self.poll_timeout()?;
        (now >= due).then_some(Status::RecvFailed)
    }

    /// Ends the connection and returns what the application gets back, in order: the
    /// queued messages not (completely) written, then `later` (posts this connection never
    /// saw), all marked origin engine with status `reason`, then the channel's final
    /// `ChannelClosed` Signal (on `channel`, with [`closing_id`](Self::closing_id)). Frames of
    /// runs are decoded back into messages taken from `supply`, which also provides the
    /// Signal. Buffers of runs go to [`take_spent`](Self::take_spent).
    pub fn close(
        &mut self,
        reason: Status,
        later: &mut dyn Iterator<Item = Message>,
        channel: u16,
        supply: &mut dyn FnMut() -> Message,
    ) -> Vec<Message> {
        self.head_written = 0;
        let mut out = Vec::new();
        for o in self.queue.drain(..) {
            match o {
                Outgoing::Frame { msg, .. } => out.push(msg),
                Outgoing::Run(r) => {
                    crate::proto::wire::decode_own_all(&r.bytes[r.start..], supply, &mut out);
                    self.spent.push(r.bytes);
                }
            }
        }
        out.extend(later);
        for m in &mut out {
            notify::mark_handed_back(m, reason);
        }
        let id = self.closing_id();
        out.push(notify::channel_closed(supply(), channel, id));
        out
    }

    /// Number of queued frames not completely written (each frame of a run counts).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn queued(&self) -> usize {
        self.queue
            .iter()
            .map(|o| match o {
                Outgoing::Frame { .. } => 1,
                Outgoing::Run(r) => (r.frames - r.done) as usize,
            })
            .sum()
    }

    /// Bookkeeping for every received frame, whether `receive` or `resume` finished it.
    fn note_received(&mut self, m: &Message) {
        if self.first_id.is_none() {
            self.first_id = Some(m.message_id());
        }
        if m.opcode() == OpCode::ByeResponse {
            self.bye_received = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::Origin;

    /// Any instant: these tests do not look at the frame timeout.
    fn t0() -> Instant {
        crate::util::test_epoch()
    }

    /// The calls of the single-connection tests, in the words they were written in.
    trait Drive {
        fn receive(
            &mut self,
            input: &[u8],
            supply: &mut dyn FnMut() -> Option<Message>,
            deliver: &mut dyn FnMut(Message),
        ) -> Result<RecvStop, DecodeError>;
        /// `close` without its final Signal (checked here).
        fn take_unsent(
            &mut self,
            reason: Status,
            supply: &mut dyn FnMut() -> Message,
        ) -> Vec<Message>;
    }

    impl Drive for Connection {
        fn receive(
            &mut self,
            input: &[u8],
            supply: &mut dyn FnMut() -> Option<Message>,
            deliver: &mut dyn FnMut(Message),
        ) -> Result<RecvStop, DecodeError> {
            self.handle_read(input, t0(), supply, deliver, None)
        }

        fn take_unsent(
            &mut self,
            reason: Status,
            supply: &mut dyn FnMut() -> Message,
        ) -> Vec<Message> {
            let mut back = self.close(reason, &mut std::iter::empty(), 1, supply);
            let last = back.pop().expect("the final Signal");
            assert_eq!(
                (last.opcode(), last.status(), last.origin()),
                (OpCode::Signal, Status::ChannelClosed, Origin::Engine)
            );
            back
        }
    }

    fn msg(op: OpCode, id: u64, body: &[u8]) -> Message {
        let mut m = Message::with_opcode(op);
        m.header.channel = 1;
        m.header.message_id = id;
        m.header.oob = false;
        m.set_body(body);
        m
    }

    /// Writes everything `c` offers, `chunk` bytes per call.
    fn write_all(c: &mut Connection, chunk: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        while c.wants_send() {
            let mut iov = [IoSlice::new(&[]); 8];
            let mut stage = Vec::new();
            let n = c.gather(&mut stage, &mut iov);
            assert!(n > 0);
            // The "socket" takes at most `chunk` bytes of what is offered.
            let before = wire.len();
            for s in &iov[..n] {
                let room = chunk - (wire.len() - before);
                wire.extend_from_slice(&s[..s.len().min(room)]);
            }
            let w = wire.len() - before;
            c.advance(w, &mut Vec::new());
        }
        wire
    }

    fn decode(bytes: &[u8]) -> Vec<(OpCode, u64)> {
        crate::proto::wire::Decoder::decode_all(bytes)
            .unwrap()
            .iter()
            .map(|m| (m.opcode(), m.message_id()))
            .collect()
    }

    #[test]
    fn frames_in_post_order_with_partial_writes() {
        for chunk in [1, 3, 17, 1000] {
            let mut c = Connection::default();
            for i in 1..=5 {
                c.enqueue(msg(OpCode::Request, i, &[i as u8; 40])).unwrap();
            }
            let wire = write_all(&mut c, chunk);
            assert_eq!(
                decode(&wire),
                (1..=5).map(|i| (OpCode::Request, i)).collect::<Vec<_>>()
            );
            assert_eq!(c.queued(), 0);
        }
    }

    #[test]
    fn small_sections_staged_large_ones_in_place() {
        let sizes = [0, 10, COPY_MAX, COPY_MAX + 1, 3, 70_000, 65_535, 1];
        // Under Miri one chunk size does (every gather re-stages up to 64 KiB).
        let chunks: &[usize] = if cfg!(miri) {
            &[16_384]
        } else {
            &[333, 4096, 1 << 20]
        };
        for &chunk in chunks {
            let mut c = Connection::default();
            for (i, &len) in sizes.iter().enumerate() {
                let mut m = msg(
                    OpCode::Signal,
                    i as u64 + 1,
                    &vec![i as u8; len.min(65_535)],
                );
                if len > 100 {
                    m.text_headers_mut().extend_from_slice(&[b'a'; 200]);
                }
                c.enqueue(m).unwrap();
            }
            let wire = write_all(&mut c, chunk);
            let got = crate::proto::wire::Decoder::decode_all(&wire).unwrap();
            assert_eq!(got.len(), sizes.len());
            for (i, m) in got.iter().enumerate() {
                assert_eq!(m.message_id(), i as u64 + 1);
                assert_eq!(m.body(), &vec![i as u8; sizes[i].min(65_535)][..]);
            }
        }
    }

    #[test]
    fn gather_offers_small_frames_as_one_slice_up_to_the_cap() {
        let mut c = Connection::default();
        let count = 2 * STAGE_CAP / (HEADER_LEN + 64);
        for i in 0..count {
            c.enqueue(msg(OpCode::Signal, i as u64, &[7; 64])).unwrap();
        }
        let (mut iov, mut stage) = ([IoSlice::new(&[]); 8], Vec::new());
        let n = c.gather(&mut stage, &mut iov);
        assert_eq!(n, 1, "small frames are coalesced");
        let offered = iov[0].len();
        assert!(offered <= STAGE_CAP && offered > STAGE_CAP - (HEADER_LEN + 64));
        // A large body interrupts the run and is offered in place.
        let mut c = Connection::default();
        c.enqueue(msg(OpCode::Signal, 1, &[1; 5])).unwrap();
        c.enqueue(msg(OpCode::Signal, 2, &[2; COPY_MAX + 1]))
            .unwrap();
        c.enqueue(msg(OpCode::Signal, 3, &[3; 5])).unwrap();
        let (mut iov, mut stage) = ([IoSlice::new(&[]); 8], Vec::new());
        let n = c.gather(&mut stage, &mut iov);
        let lens: Vec<usize> = iov[..n].iter().map(|s| s.len()).collect();
        assert_eq!(
            lens,
            vec![2 * HEADER_LEN + 5, COPY_MAX + 1, HEADER_LEN + 5],
            "staged run, large body, staged run"
        );
        // With one slot only the first staged run is offered.
        let (mut iov, mut stage) = ([IoSlice::new(&[]); 8], Vec::new());
        let n = c.gather(&mut stage, &mut iov[..1]);
        assert_eq!((n, iov[0].len()), (1, 2 * HEADER_LEN + 5));
    }

    #[test]
    fn a_started_frame_goes_first_from_where_it_stopped() {
        for written in [0, 1, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 7] {
            let mut c = Connection::default();
            assert!(c.is_idle());
            c.enqueue(msg(OpCode::Signal, 2, b"queued meanwhile"))
                .unwrap();
            let started = msg(OpCode::Request, 1, b"started by a posting thread");
            let mut wire = Vec::new();
            crate::proto::wire::encode(&started, &mut wire).unwrap();
            wire.truncate(written); // what the posting thread got out
            c.enqueue_started(started, written).unwrap();
            assert!(!c.is_idle());
            wire.extend(write_all(&mut c, 5));
            assert_eq!(
                decode(&wire),
                vec![(OpCode::Request, 1), (OpCode::Signal, 2)],
                "written {written}"
            );
            assert!(c.is_idle());
        }
    }

    #[test]
    fn a_queued_bye_ends_idleness_for_good() {
        let mut c = Connection::default();
        c.enqueue(msg(OpCode::ByeRequest, 1, b"")).unwrap();
        assert!(c.bye_queued());
        write_all(&mut c, 100);
        assert!(!c.is_idle(), "no direct write after a bye");
    }

    #[test]
    fn oob_goes_to_front_but_not_before_hello_or_started_frame() {
        let mut c = Connection::default();
        c.enqueue(msg(OpCode::HelloRequest, 1, b"")).unwrap();
        c.enqueue(msg(OpCode::Request, 2, b"")).unwrap();
        let mut urgent = msg(OpCode::Signal, 3, b"");
        urgent.header.oob = true;
        c.enqueue(urgent).unwrap();
        let wire = write_all(&mut c, 1000);
        assert_eq!(
            decode(&wire).iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![1, 3, 2]
        );
    }

    #[test]
    fn nothing_after_bye_except_bye_response() {
        let mut c = Connection::default();
        c.enqueue(msg(OpCode::Request, 1, b"a")).unwrap();
        c.enqueue(msg(OpCode::ByeRequest, 2, b"")).unwrap();
        c.enqueue(msg(OpCode::Request, 3, b"late")).unwrap();
        let wire = write_all(&mut c, 7);
        assert_eq!(
            decode(&wire),
            vec![(OpCode::Request, 1), (OpCode::ByeRequest, 2)]
        );
        assert!(c.bye_sent());
        // The peer's ByeRequest crossed ours: our application answers, and that still goes out.
        c.enqueue(msg(OpCode::ByeResponse, 9, b"")).unwrap();
        let wire = write_all(&mut c, 1000);
        assert_eq!(decode(&wire), vec![(OpCode::ByeResponse, 9)]);
        // A second ByeResponse is not sent.
        c.enqueue(msg(OpCode::ByeResponse, 10, b"")).unwrap();
        assert!(write_all(&mut c, 1000).is_empty());
        let unsent = c.take_unsent(Status::ChannelClosed, &mut Message::new);
        assert_eq!(unsent.len(), 2);
        assert_eq!(unsent[0].message_id(), 3);
        assert_eq!(unsent[1].message_id(), 10);
        assert_eq!(unsent[0].status(), Status::ChannelClosed);
        assert_eq!(unsent[0].origin(), Origin::Engine);
    }

    /// `ids` as data frames encoded back to back, as posting threads build a run.
    fn run(ids: std::ops::RangeInclusive<u64>) -> (Vec<u8>, u32) {
        let mut bytes = Vec::new();
        let mut n = 0;
        for id in ids {
            crate::proto::wire::encode(&msg(OpCode::Signal, id, &[id as u8; 30]), &mut bytes)
                .unwrap();
            n += 1;
        }
        (bytes, n)
    }

    #[test]
    fn runs_and_messages_keep_post_order_through_partial_writes() {
        for chunk in [1, 7, 46, 47, 1000] {
            let mut c = Connection::default();
            let (b, n) = run(1..=3);
            c.enqueue_run(b, n);
            c.enqueue(msg(OpCode::Request, 4, &[4; COPY_MAX + 10]))
                .unwrap();
            let (b, n) = run(5..=6);
            c.enqueue_run(b, n);
            assert_eq!(c.queued(), 6);
            let mut sent = Vec::new();
            let mut wire = Vec::new();
            let mut frames = 0;
            while c.wants_send() {
                let mut iov = [IoSlice::new(&[]); 8];
                let mut stage = Vec::new();
                let k = c.gather(&mut stage, &mut iov);
                let before = wire.len();
                for s in &iov[..k] {
                    let room = chunk - (wire.len() - before);
                    wire.extend_from_slice(&s[..s.len().min(room)]);
                }
                c.advance(wire.len() - before, &mut sent);
                let p = c.take_completed();
                frames += p.frames;
                // Frames are counted as soon as they are complete, runs or not.
                assert_eq!(c.queued() as u64, 6 - frames, "chunk {chunk}");
            }
            assert_eq!(
                decode(&wire),
                (1..=6)
                    .map(|i| (
                        if i == 4 {
                            OpCode::Request
                        } else {
                            OpCode::Signal
                        },
                        i
                    ))
                    .collect::<Vec<_>>()
            );
            // Only the message comes back from `advance`; the two run buffers are spent.
            assert_eq!(
                sent.iter().map(Message::message_id).collect::<Vec<_>>(),
                vec![4]
            );
            let mut spent = Vec::new();
            c.take_spent(&mut spent);
            assert_eq!(spent.len(), 2);
            assert!(c.is_idle());
        }
    }

    #[test]
    fn progress_counts_every_frame_and_its_bytes() {
        let mut c = Connection::default();
        let (b, n) = run(1..=4);
        let total = b.len() as u64;
        c.enqueue_run(b, n);
        let mut sent = Vec::new();
        // Half of the second frame: one frame done.
        let frame = total / 4;
        c.advance(frame as usize + 3, &mut sent);
        assert_eq!(
            c.take_completed(),
            Completed {
                frames: 1,
                bytes: frame
            }
        );
        c.advance((total - frame - 3) as usize, &mut sent);
        assert_eq!(
            c.take_completed(),
            Completed {
                frames: 3,
                bytes: 3 * frame
            }
        );
        assert_eq!(c.take_completed(), Completed::default());
    }

    #[test]
    fn unsent_frames_of_runs_come_back_as_messages() {
        let mut c = Connection::default();
        let (b, n) = run(1..=3);
        let frame = b.len() / 3;
        c.enqueue_run(b, n);
        c.enqueue(msg(OpCode::ByeRequest, 4, b"")).unwrap();
        let (b, n) = run(5..=5);
        c.enqueue_run(b, n);
        // The first frame and part of the second are written.
        c.advance(frame + 1, &mut Vec::new());
        let back = c.take_unsent(Status::PeerDisconnected, &mut Message::new);
        let ids: Vec<u64> = back.iter().map(Message::message_id).collect();
        assert_eq!(
            ids,
            vec![2, 3, 4, 5],
            "the partly written frame comes back too"
        );
        for m in &back {
            assert_eq!(m.status(), Status::PeerDisconnected);
            assert_eq!(m.origin(), Origin::Engine);
            assert_eq!(m.channel(), 1);
        }
        let want = msg(OpCode::Signal, 2, &[2; 30]);
        assert_eq!(back[0].opcode(), OpCode::Signal);
        assert_eq!(back[0].body(), want.body());
        assert_eq!(c.queued(), 0);
        let mut spent = Vec::new();
        c.take_spent(&mut spent);
        assert_eq!(spent.len(), 2, "run buffers are kept for reuse");
    }

    #[test]
    fn oob_goes_ahead_of_the_unstarted_frames_of_a_started_run() {
        // Mid-frame: the started frame finishes first, then the oob, then the rest.
        for written in [0, 1, 46, 47, 60] {
            let mut c = Connection::default();
            let (b, n) = run(1..=3);
            let frame = b.len() / 3;
            let whole = b.clone();
            c.enqueue_run(b, n);
            let mut wire = Vec::new();
            if written > 0 {
                wire.extend_from_slice(&whole[..written]);
                c.advance(written, &mut Vec::new());
            }
            let mut urgent = msg(OpCode::Signal, 9, b"now");
            urgent.header.oob = true;
            c.enqueue(urgent).unwrap();
            wire.extend(write_all(&mut c, 11));
            let ids: Vec<u64> = decode(&wire).iter().map(|x| x.1).collect();
            let want = match written {
                0 => vec![9, 1, 2, 3],
                w if w < frame => vec![1, 9, 2, 3],
                w if w == frame => vec![1, 9, 2, 3],
                _ => vec![1, 2, 9, 3],
            };
            assert_eq!(ids, want, "written {written}");
            assert!(c.is_idle());
        }
    }

    #[test]
    fn receive_stops_after_bye_response() {
        let mut wire = Vec::new();
        for (op, id) in [
            (OpCode::Response, 1),
            (OpCode::ByeResponse, 2),
            (OpCode::Request, 3),
        ] {
            crate::proto::wire::encode(&msg(op, id, b"xy"), &mut wire).unwrap();
        }
        let mut c = Connection::default();
        let mut got = Vec::new();
        let stop = c
            .receive(&wire, &mut || Some(Message::new()), &mut |m| {
                got.push(m.message_id())
            })
            .unwrap();
        assert_eq!(stop, RecvStop::ByeResponse);
        assert_eq!(got, vec![1, 2]);
        assert_eq!(c.first_received_id(), Some(1));
    }

    #[test]
    fn starvation_stashes_and_resumes_in_order() {
        let mut wire = Vec::new();
        for id in 1..=4 {
            crate::proto::wire::encode(&msg(OpCode::Signal, id, &[id as u8; 10]), &mut wire)
                .unwrap();
        }
        let mut c = Connection::default();
        let mut budget = 1;
        let mut got = Vec::new();
        let stop = c
            .receive(
                &wire,
                &mut || {
                    if budget > 0 {
                        budget -= 1;
                        Some(Message::new())
                    } else {
                        None
                    }
                },
                &mut |m| got.push(m.message_id()),
            )
            .unwrap();
        assert_eq!(stop, RecvStop::Starved);
        assert_eq!(got, vec![1]);
        assert!(c.is_starved());
        let stop = c
            .resume(&mut || None, &mut |m| got.push(m.message_id()))
            .unwrap();
        assert_eq!(stop, RecvStop::Starved);
        let stop = c
            .resume(&mut || Some(Message::new()), &mut |m| {
                got.push(m.message_id())
            })
            .unwrap();
        assert_eq!(stop, RecvStop::Drained);
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[test]
    fn bytes_fed_while_starved_queue_behind_the_stash() {
        // A TLS channel feeds every decrypted piece, also after a starvation: the later
        // piece must not be decoded before the stashed bytes, even when messages are back.
        let mut wire = Vec::new();
        for id in 1..=4 {
            crate::proto::wire::encode(&msg(OpCode::Signal, id, &[id as u8; 3]), &mut wire)
                .unwrap();
        }
        let half = wire.len() / 2 + 5; // in the middle of frame 3
        let mut c = Connection::default();
        let mut got = Vec::new();
        let mut one = 1;
        let stop = c
            .receive(
                &wire[..half],
                &mut || (std::mem::take(&mut one) == 1).then(Message::new),
                &mut |m| got.push((m.message_id(), m.body().to_vec())),
            )
            .unwrap();
        assert_eq!(stop, RecvStop::Starved);
        let stop = c
            .receive(&wire[half..], &mut || Some(Message::new()), &mut |m| {
                got.push((m.message_id(), m.body().to_vec()))
            })
            .unwrap();
        assert_eq!(stop, RecvStop::Starved, "kept behind the stash");
        assert_eq!(got.len(), 1);
        let stop = c
            .resume(&mut || Some(Message::new()), &mut |m| {
                got.push((m.message_id(), m.body().to_vec()))
            })
            .unwrap();
        assert_eq!(stop, RecvStop::Drained);
        let want: Vec<(u64, Vec<u8>)> = (1..=4).map(|id| (id, vec![id as u8; 3])).collect();
        assert_eq!(got, want, "in order, bodies intact");
    }

    #[test]
    fn first_id_of_a_frame_finished_by_resume() {
        // The pool ran dry right after the header of a frame without payload, so `resume`
        // finishes it without new bytes; it is still the first frame received (found by
        // fuzz/fuzz_targets/connection.rs).
        let mut wire = Vec::new();
        crate::proto::wire::encode(&msg(OpCode::HelloRequest, 7, b""), &mut wire).unwrap();
        crate::proto::wire::encode(&msg(OpCode::Request, 8, b"x"), &mut wire).unwrap();
        let mut c = Connection::default();
        let mut got = Vec::new();
        let stop = c
            .receive(&wire[..HEADER_LEN], &mut || None, &mut |m| {
                got.push(m.message_id())
            })
            .unwrap();
        assert_eq!(stop, RecvStop::Starved);
        let stop = c
            .resume(&mut || Some(Message::new()), &mut |m| {
                got.push(m.message_id())
            })
            .unwrap();
        assert_eq!(stop, RecvStop::Drained);
        let stop = c
            .receive(
                &wire[HEADER_LEN..],
                &mut || Some(Message::new()),
                &mut |m| got.push(m.message_id()),
            )
            .unwrap();
        assert_eq!(stop, RecvStop::Drained);
        assert_eq!(got, vec![7, 8]);
        assert_eq!(c.first_received_id(), Some(7));
    }

    #[test]
    fn bad_opcode_is_an_error() {
        let mut bytes = FrameHeader::default().to_bytes();
        bytes[2] = 12;
        let mut c = Connection::default();
        let r = c.receive(&bytes, &mut || Some(Message::new()), &mut |_| {});
        assert_eq!(r, Err(DecodeError::InvalidOpCode(12)));
    }
}
