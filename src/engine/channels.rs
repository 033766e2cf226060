//! A channel's send side and the engine-wide table of channel numbers.
//!
//! * [`Outbound`]: what posting threads queued for the reactor, small data frames encoded by
//!   the posting thread itself; [`SendState`]: that queue, the send limit's counts, waiting
//!   for room, and the [`Gate`] that lets a posting thread write an idle channel directly.
//! * [`ChannelTable`]: which numbers are live and which group owns them.
//!
//! Numbers are drawn at random from 1..=65534, skipping live numbers and the 1024 most recently
//! released ones (a FIFO quarantine), so a message posted to a channel that just closed is far
//! unlikely to reach a new channel that got the same number. Unlike Zig tofu, a record is
//! released as soon as its channel is deleted (tofu leaks it until the group is destroyed).

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::util::intmap::IntMap;
use std::hash::BuildHasher;

use crate::engine::pool::Buffers;
use crate::engine::tls;
use crate::proto::message::{
    self, Message, OpCode, CHANNEL_RESERVED, CHANNEL_UNASSIGNED, MAX_SECTION_LEN,
};
use crate::proto::status::Error;
use crate::proto::wire::{encoded_len, FrameHeader};
use crate::sys::net::Stream;

/// How many released numbers are kept out of circulation.
pub(crate) const QUARANTINE_LEN: usize = 1024;

/// Frames up to this length that a posting thread encodes itself (see [`Outbound`]).
pub(crate) const ENCODE_MAX: usize = 4096;
/// A run of encoded frames behind other queued items grows to about this many bytes; then
/// a new one starts.
pub(crate) const RUN_CAP: usize = crate::proto::connection::CHUNK_CAP;
/// The first run of a queue may grow to this many bytes (a stream posted faster than the
/// reactor takes it then needs no queue allocation).
pub(crate) const RUN_FIRST_CAP: usize = 4 * RUN_CAP;

/// What posting threads queued on one channel and the reactor has not taken yet, in post
/// order.
///
/// Small data messages (Request, Response and Signal without `oob`, frames of at most
/// [`ENCODE_MAX`] bytes) are **encoded by the posting thread** into a run: their bytes are
/// appended to the run's buffer and the message goes back to the pool at once, from the
/// thread that took it. Only bytes cross to the reactor thread, a few cache lines per frame
/// in one contiguous buffer, which the reactor writes without copying; the message, its
/// buffers and its pool slot stay with the posting thread. Other messages (bye-type,
/// `oob`, large ones) are kept whole. A run is decoded back into messages only if its
/// frames must be handed back (the channel closed before they were written).
///
/// The common case, a stream of small data messages, needs no queue allocation: frames go to
/// `run`, whose buffer comes from the engine's [`Buffers`] and returns there once
/// written, so an idle channel holds no buffer at all.
#[derive(Default, Debug)]
pub(crate) struct Outbound {
    /// Frames encoded before anything in `items` (an unallocated `Vec` when none).
    run: Vec<u8>,
    run_frames: u32,
    /// Later items, in post order.
    items: VecDeque<Pending>,
    /// The channel is closing or gone: nothing more is accepted.
    closed: bool,
    /// Posted and not yet written (here, or taken by the reactor), for the send limit and
    /// for direct writes and seals (which need an empty queue). A TLS channel's frames
    /// count until they are in its session; `bytes` counts sealed frames too.
    messages: u64,
    bytes: u64,
    /// Bytes of frames sealed by posting threads and maybe not yet written (see
    /// [`SendState::seal`]), counted in `bytes` too.
    sealed: u64,
    /// A bye-type message was posted: no frame is sealed any more (it would go behind the
    /// bye).
    no_seal: bool,
    /// The connected socket (and TLS session) for direct writes, set by the reactor once
    /// the channel is connected and dropped when it closes (a `SendState` may outlive its
    /// channel).
    direct: Option<Direct>,
    /// Senders waiting for room (see [`SendState::wait_room`]).
    room: Room,
    /// Buffers of pool-less messages the reactor wrote, for the posting thread (see
    /// [`Returned`]).
    returned: Returned,
}

/// Most bytes of buffer capacity a channel keeps in its [`Returned`]: the send window and
/// one maximal message more, what a sender waiting on a full queue can see written before
/// it is woken (17 bodies of 65000 bytes).
const RETURNED_MAX: usize = super::SEND_WINDOW as usize + 2 * MAX_SECTION_LEN;

/// Most bytes of buffer capacity kept in every channel's [`Returned`] together, in the
/// process: what idle channels keep (the buffers of their last messages, until their next
/// post or their close) stays bounded however many there are.
const RETURNED_TOTAL_MAX: usize = 4 * RETURNED_MAX;

/// Bytes of capacity in every [`Returned`] of the process (see [`RETURNED_TOTAL_MAX`]).
static RETURNED_TOTAL: AtomicUsize = AtomicUsize::new(0);

/// Buffers (text headers, body) of pool-less messages (`Message::new`) the reactor wrote on
/// a channel, for its posting thread: each post of a whole message takes one pair and makes
/// it the thread's spare (or frees it when the thread has one), so a program's loop of
/// `Message::new` and posts allocates no buffer per message although the reactor's thread
/// drops what it wrote. At most [`RETURNED_MAX`] bytes of capacity per channel and
/// [`RETURNED_TOTAL_MAX`] in all; what does not fit goes the way of every written
/// message (the engine's pool, or freed).
#[derive(Default, Debug)]
struct Returned {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes of capacity in `pairs`, counted in [`RETURNED_TOTAL`] too.
    bytes: usize,
}

impl Returned {
    /// Keeps `msg`'s buffers (emptying it) if they fit both bounds; false otherwise.
    fn keep(&mut self, msg: &mut Message) -> bool {
        let (text, body) = msg.capacities();
        let size = text + body;
        if size == 0 || text > MAX_SECTION_LEN || body > MAX_SECTION_LEN {
            return false;
        }
        if self.bytes + size > RETURNED_MAX {
            return false;
        }
        let reserved = RETURNED_TOTAL.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            (t + size <= RETURNED_TOTAL_MAX).then_some(t + size)
        });
        if reserved.is_err() {
            return false;
        }
        self.pairs.push(msg.take_buffers());
        self.bytes += size;
        true
    }

    fn take(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        let (text, body) = self.pairs.pop()?;
        let size = text.capacity() + body.capacity();
        self.bytes -= size;
        RETURNED_TOTAL.fetch_sub(size, Ordering::Relaxed);
        Some((text, body))
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        RETURNED_TOTAL.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Who waits for a full send queue to shrink, and to which level.
#[derive(Default, Debug)]
struct Room {
    threads: usize,
    tasks: Vec<Waker>,
    /// The queue level (bytes, messages) at or below which the waiters want to be woken:
    /// the most permissive level any of them asked for since the last wake-up.
    wake_at: (u64, u64),
}
impl Outbound {
    fn is_empty(&self) -> bool {
        self.run_frames == 0 && self.items.is_empty()
    }

    /// Appends the frame of `msg` (encodable, see [`encodable`]) to the last run.
    fn encode(&mut self, msg: &Message, bufs: &Buffers) {
        let len = encoded_len(msg);
        let fits = |run: &Vec<u8>| run.len() + len <= RUN_CAP;
        // Sections were validated by post and are small: encoding cannot fail.
        if self.items.is_empty() {
            if self.run_frames == 0 || self.run.len() + len <= RUN_FIRST_CAP {
                if self.run.capacity() == 0 {
                    self.run = bufs.get();
                }
                let _ = crate::proto::wire::encode(msg, &mut self.run);
                self.run_frames += 1;
                return;
            }
            let full = std::mem::take(&mut self.run);
            let frames = std::mem::take(&mut self.run_frames);
            self.items.push_back(Pending::Run {
                bytes: full,
                frames,
            });
        }
        match self.items.back_mut() {
            Some(Pending::Run { bytes, frames }) if fits(bytes) => {
                let _ = crate::proto::wire::encode(msg, bytes);
                *frames += 1;
            }
            _ => {
                let mut bytes = bufs.get();
                let _ = crate::proto::wire::encode(msg, &mut bytes);
                self.push_item(Pending::Run { bytes, frames: 1 }, bufs);
            }
        }
    }

    /// Moves everything to `into`, in order; keeps no allocation.
    fn take(&mut self, into: &mut VecDeque<Pending>, bufs: &Buffers) {
        if self.run_frames > 0 {
            into.push_back(Pending::Run {
                bytes: std::mem::take(&mut self.run),
                frames: std::mem::take(&mut self.run_frames),
            });
        }
        if self.items.capacity() > 0 {
            let mut items = std::mem::take(&mut self.items);
            into.extend(items.drain(..));
            bufs.put_queue(items);
        }
    }

    /// Appends an item after everything queued.
    fn push_item(&mut self, item: Pending, bufs: &Buffers) {
        if self.items.capacity() == 0 {
            self.items = bufs.queue();
        }
        self.items.push_back(item);
    }
}

/// One item of an [`Outbound`] queue.
#[derive(Debug)]
pub(crate) enum Pending {
    /// `frames` data frames encoded back to back.
    Run { bytes: Vec<u8>, frames: u32 },
    /// Any other message, kept whole.
    Message(Message),
}

/// Most bytes of sealed frames a channel's TLS session holds unwritten (see
/// [`SendState::seal`]); a large frame posted beyond it is queued for the reactor instead.
///
/// Sealed frames count as sent, like frames in the kernel's socket buffer: when the channel
/// fails or is aborted, what is still in the session is lost instead of handed back. The
/// socket keeps the stream going; a deeper backlog would only lose more.
const SEAL_MAX: u64 = 256 * 1024;

/// True when a posting thread may seal `msg` into a busy `tls|` channel's session (see
/// [`SendState::seal`]): data frames too large for a run. Small ones are encoded into runs,
/// which the reactor encrypts many to a record.
fn sealable(msg: &Message) -> bool {
    matches!(
        msg.header.opcode,
        OpCode::Request | OpCode::Response | OpCode::Signal
    ) && !msg.header.oob
        && encoded_len(msg) > ENCODE_MAX
}

/// True when a posting thread encodes `msg` into a run instead of queueing it whole.
pub(crate) fn encodable(msg: &Message) -> bool {
    matches!(
        msg.header.opcode,
        OpCode::Request | OpCode::Response | OpCode::Signal
    ) && !msg.header.oob
        && encoded_len(msg) <= ENCODE_MAX
}

/// The messages of taken [`Outbound`] items, frames of runs decoded back into messages from
/// `pool` (their buffers go to `spent`); `pending` is left empty.
pub(crate) fn unpend(
    pending: &mut VecDeque<Pending>,
    pool: &crate::engine::pool::Pool,
    spent: &mut Vec<Vec<u8>>,
) -> Vec<Message> {
    let mut out = Vec::new();
    for p in pending.drain(..) {
        match p {
            Pending::Message(m) => out.push(m),
            Pending::Run { bytes, .. } => {
                crate::proto::wire::decode_own_all(&bytes, &mut || pool.message(), &mut out);
                spent.push(bytes);
            }
        }
    }
    out
}

/// The send side of a channel shared by posting threads and the reactor: what posts queued
/// for the reactor ([`Outbound`]), the size of its send queue (what `post` accepted and the
/// reactor has not yet written or handed back), and the gate and socket of direct writes.
///
/// **Direct writes.** A message posted to an idle channel while the reactor sleeps is
/// written by the posting thread itself, saving two thread hand-offs per hop (post to
/// reactor, reactor back to sleep); over TLS it encrypts the frame into the channel's
/// session first, under the session's lock (see [`Direct`]). The [`Gate`] says who may
/// write the socket:
/// * `Reactor`: only the reactor (its queue holds frames, the channel is not connected yet,
///   a bye-type frame was queued or written, or the channel is closing);
/// * `Free`: nobody is writing and the reactor's queue is empty; a posting thread may take
///   the gate (`Free` to `Poster`), and the reactor takes it (`Free` to `Reactor`) before
///   it writes;
/// * `Poster`: a posting thread is writing one whole frame; it frees the gate again, then
///   asks the reactor to write if messages were queued meanwhile;
/// * `HandingOver`: the posting thread could not write the whole frame (full socket
///   buffer, error); its message is on its way to the reactor with the count of bytes
///   already written, and nothing else may be written before it.
///
/// Only the reactor frees the gate, at the end of a loop iteration in which the channel's
/// queue ended empty. Frames never interleave: whoever writes holds the gate.
///
/// **Seals.** Over TLS the reactor's encryption is most of its work on large frames, and
/// a streaming channel keeps its gate with the reactor. So a posting thread **seals** a
/// large data frame posted to a `tls|` channel whose queue is empty: it encrypts the frame
/// into the channel's session, behind the records there, and the reactor only writes it
/// ([`seal`](SendState::seal)), then writes the session's records until the socket is full
/// (every write of a TLS channel's socket is made under the session's lock). Order holds
/// because frames enter the session in post order: a seal happens only when no posted frame
/// waits to go into the session (`messages` is 0), under the session's lock, which the
/// reactor holds while it encrypts; only while the reactor holds the gate (not while a
/// posting thread writes directly or hands a frame over); and never behind a bye-type
/// message or a local abort. Sealed bytes count in the send queue until written, and at
/// most [`SEAL_MAX`] of them wait in the session. A posting thread does not wait for the
/// session's lock, and does not seal on a channel that received since its last seal (see
/// `tls::Session::quiet`): there the reactor needs the session to decrypt.
///
/// Aligned to its own cache lines: posting threads and the reactor both write it, and it
/// must not share a line with unrelated data.
#[derive(Default, Debug)]
#[repr(align(128))]
pub(crate) struct SendState {
    gate: AtomicGate,
    outbound: Mutex<Outbound>,
    /// Threads in [`wait_room`](SendState::wait_room).
    room_cond: Condvar,
}

/// Who may write a channel's socket (see [`SendState`]). Frames never interleave: whoever
/// writes holds the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Gate {
    /// The reactor holds it: its queue holds frames, the channel is not connected yet, a
    /// bye-type frame was queued or written, or the channel is closing. Only the reactor
    /// gives it up ([`SendState::free_gate`]).
    Reactor = 0,
    /// Nobody holds it and the reactor's queue is empty: a posting thread may take it to
    /// write one frame, and the reactor takes it back before it writes.
    Free = 1,
    /// A posting thread is writing one whole frame; it frees the gate when done.
    Poster = 2,
    /// A posting thread could not write its whole frame and hands it to the reactor with
    /// the count of bytes written; nothing else may be written before it.
    HandingOver = 3,
}

impl Gate {
    fn from_u8(v: u8) -> Gate {
        match v {
            0 => Gate::Reactor,
            1 => Gate::Free,
            2 => Gate::Poster,
            _ => Gate::HandingOver,
        }
    }
}

/// A [`Gate`] shared by posting threads and the reactor.
#[derive(Debug, Default)]
struct AtomicGate(AtomicU8);

impl AtomicGate {
    fn load(&self, order: Ordering) -> Gate {
        Gate::from_u8(self.0.load(order))
    }

    fn store(&self, gate: Gate, order: Ordering) {
        self.0.store(gate as u8, order);
    }

    fn compare_exchange(
        &self,
        current: Gate,
        new: Gate,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Gate, Gate> {
        self.0
            .compare_exchange(current as u8, new as u8, success, failure)
            .map(Gate::from_u8)
            .map_err(Gate::from_u8)
    }
}

/// What [`SendState::post`] did with a message.
pub(crate) enum Posted {
    /// Queued for the reactor; `true` when the queue was empty (the reactor must be told).
    Queued(bool),
    /// Not queued: the channel is idle and the caller has the direct-write turn, so it
    /// writes the message itself to the socket ([`SendState::write_direct`]).
    DirectTurn(Direct),
    /// Not queued: the caller seals the message into this channel's TLS session
    /// ([`SendState::seal`]).
    Seal(Direct),
    /// Sealed: encrypted into the channel's session; `true` when the reactor must be told
    /// to write it (nothing else was waiting in the session).
    Sealed(bool),
}

/// Where a posting thread writes directly: the channel's socket and, for a `tls|` channel,
/// its TLS session (the frame is encrypted by the posting thread, under the session's lock).
#[derive(Clone)]
pub(crate) struct Direct {
    pub(crate) socket: Arc<Stream>,
    pub(crate) tls: Option<tls::Shared>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("socket", &self.socket)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// How a [`SendState::write_direct`] ended.
pub(crate) enum DirectWrite {
    /// The gate was not open: queue the message as usual.
    NotTaken(Message),
    /// The whole frame was written; `wake_reactor` asks the reactor to write messages queued
    /// meanwhile (it could not while the gate was taken).
    Written { wake_reactor: bool },
    /// `written` bytes of the frame went out (maybe none): the message must go to the
    /// reactor, which writes the rest before anything else (the gate is `HANDOVER`).
    HandOver { msg: Message, written: usize },
    /// A TLS channel's whole frame went into its session, but not all of the session's
    /// records went out (a full socket buffer, or an error the reactor meets again): the
    /// reactor, which holds the gate again, must be asked to write the rest.
    Encrypted,
}

impl SendState {
    /// Counts a message the reactor gets by a command (a Hello or Welcome request, a
    /// handed-over direct write), so the queue is not idle until it is written.
    pub(crate) fn count(&self, bytes: u64) {
        let mut ob = self.lock_outbound();
        ob.messages += 1;
        ob.bytes += bytes;
    }

    /// `messages` frames of `bytes` bytes were written or handed back.
    pub(crate) fn sub(&self, messages: u64, bytes: u64) {
        let mut ob = self.lock_outbound();
        ob.messages = ob.messages.saturating_sub(messages);
        ob.bytes = ob.bytes.saturating_sub(bytes);
        self.room_made(ob);
    }

    /// `messages` frames of `bytes` bytes were written, among them the messages of
    /// `written` from index `from` on: the buffers of the pool-less ones are kept for the
    /// posting thread (see [`Returned`]) before a waiting sender is woken, and those
    /// messages leave `written`; the rest stay.
    pub(crate) fn sub_written(
        &self,
        messages: u64,
        bytes: u64,
        written: &mut Vec<Message>,
        from: usize,
    ) {
        let mut ob = self.lock_outbound();
        ob.messages = ob.messages.saturating_sub(messages);
        ob.bytes = ob.bytes.saturating_sub(bytes);
        let mut i = if ob.closed { written.len() } else { from };
        while i < written.len() {
            if written[i].home.is_none() && ob.returned.keep(&mut written[i]) {
                written.swap_remove(i); // emptied: nothing to free
            } else {
                i += 1;
            }
        }
        self.room_made(ob);
    }

    /// The queue shrank or closed: waiters are woken once it is at or below the level they
    /// wait for (not at every shrink: a sender woken at every written batch would sleep and
    /// wake once per batch).
    fn room_made(&self, mut ob: MutexGuard<'_, Outbound>) {
        if ob.room.threads == 0 && ob.room.tasks.is_empty() {
            return;
        }
        let (bytes, messages) = ob.room.wake_at;
        if !ob.closed && (ob.bytes > bytes || ob.messages > messages) {
            return;
        }
        ob.room.wake_at = (0, 0); // whoever still waits after this asks again
        let tasks = std::mem::take(&mut ob.room.tasks);
        let threads = ob.room.threads > 0;
        drop(ob);
        if threads {
            self.room_cond.notify_all();
        }
        for w in tasks {
            w.wake();
        }
    }

    /// True when the queue is at or below `level` (bytes, messages) or closed; otherwise
    /// `level` is added to what the waiters want.
    fn room_at(ob: &mut Outbound, level: (u64, u64)) -> bool {
        if ob.closed || (ob.bytes <= level.0 && ob.messages <= level.1) {
            return true;
        }
        ob.room.wake_at = (
            ob.room.wake_at.0.max(level.0),
            ob.room.wake_at.1.max(level.1),
        );
        false
    }

    /// Blocks until the queue is at or below `level` (bytes, messages) or closed (true), or
    /// `deadline` passed (false). The check and the wait are under the queue's lock: a
    /// shrink cannot slip between them.
    pub(crate) fn wait_room(&self, level: (u64, u64), deadline: Option<Instant>) -> bool {
        let mut ob = self.lock_outbound();
        while !Self::room_at(&mut ob, level) {
            ob.room.threads += 1;
            ob = match deadline {
                None => self.room_cond.wait(ob).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        ob.room.threads -= 1;
                        return false;
                    }
                    self.room_cond
                        .wait_timeout(ob, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            ob.room.threads -= 1;
        }
        true
    }

    /// [`wait_room`](Self::wait_room) for a task: `Ready` once the queue is at or below
    /// `level` (or closed), else `Pending` with `waker` kept until it is.
    pub(crate) fn poll_room(&self, level: (u64, u64), waker: &Waker) -> Poll<()> {
        let mut ob = self.lock_outbound();
        if Self::room_at(&mut ob, level) {
            return Poll::Ready(());
        }
        if !ob.room.tasks.iter().any(|w| w.will_wake(waker)) {
            ob.room.tasks.push(waker.clone());
        }
        Poll::Pending
    }

    /// Messages currently counted.
    #[cfg(test)]
    pub(crate) fn messages(&self) -> u64 {
        self.lock_outbound().messages
    }

    /// Gives the socket (and TLS session) for direct writes (once, when the channel is
    /// connected; a TLS channel's once its handshake is over).
    pub(crate) fn set_socket(&self, direct: Direct) {
        let mut ob = self.lock_outbound();
        if !ob.closed && ob.direct.is_none() {
            ob.direct = Some(direct);
        }
    }

    /// The reactor takes the gate before writing. True when it holds it (it was free or
    /// already the reactor's); false while a posting thread writes or hands a message over.
    pub(crate) fn take_gate(&self) -> bool {
        match self.gate.compare_exchange(
            Gate::Free,
            Gate::Reactor,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => true,
            Err(holder) => holder == Gate::Reactor,
        }
    }

    /// The reactor received the handed-over message: the gate is its own again.
    pub(crate) fn take_handover(&self) {
        self.gate.store(Gate::Reactor, Ordering::SeqCst);
    }

    /// The reactor's queue is empty and direct writes are allowed: frees the gate (if the
    /// reactor holds it).
    pub(crate) fn free_gate(&self) {
        if self.gate.load(Ordering::Relaxed) != Gate::Reactor {
            return; // free already, or taken by a posting thread: nothing to do
        }
        let _ = self.gate.compare_exchange(
            Gate::Reactor,
            Gate::Free,
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
    }

    /// The reactor keeps the gate from now on (channel closing, bye-type frame queued: the
    /// reactor never frees it again).
    pub(crate) fn keep_gate(&self) {
        self.gate.store(Gate::Reactor, Ordering::SeqCst);
    }

    fn lock_outbound(&self) -> MutexGuard<'_, Outbound> {
        // Queue operations and encoding cannot panic half-way.
        self.outbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the post in `slot`: when `direct` is allowed for it, the queue is empty, the
    /// gate open and `turn` grants the direct-write turn, the caller writes it itself
    /// ([`Posted::DirectTurn`], the message stays in `slot`); otherwise it is queued for the
    /// reactor within `limit` (messages, bytes; a message is always accepted by an empty
    /// queue), encoded into a run when [`encodable`], else whole (see [`Outbound`]), and
    /// `slot` is emptied. Fails with `InvalidChannelNumber` when the channel is closing or
    /// gone and `SendQueueFull` at the limit, the message left in `slot`.
    ///
    /// (The message is passed by reference and the results are small: moving 80-byte
    /// messages and large results through the layers of `post` cost more than the rest.)
    pub(crate) fn post(
        &self,
        slot: &mut Option<Message>,
        limit: (u64, u64),
        direct: bool,
        turn: impl FnOnce() -> bool,
        bufs: &Buffers,
    ) -> Result<Posted, Error> {
        let Some(msg) = slot.as_ref() else {
            unreachable!("post is given a message")
        };
        let ob = self.lock_outbound();
        if ob.closed {
            return Err(Error::InvalidChannelNumber);
        }
        if direct && ob.messages == 0 && self.gate.load(Ordering::Relaxed) == Gate::Free {
            if let Some(direct) = ob.direct.as_ref().filter(|_| turn()) {
                return Ok(Posted::DirectTurn(direct.clone()));
            }
        }
        Self::check_limit(&ob, msg, limit)?;
        if let Some(session) = self.seal_turn(&ob, msg) {
            return Ok(Posted::Seal(session));
        }
        Ok(Posted::Queued(Self::queue(ob, slot, bufs)))
    }

    /// `SendQueueFull` when the queue holds `limit` (messages, bytes) with `msg`; a message
    /// is always accepted by an empty queue.
    fn check_limit(ob: &Outbound, msg: &Message, limit: (u64, u64)) -> Result<(), Error> {
        let len = encoded_len(msg) as u64;
        let empty = ob.messages == 0 && ob.sealed == 0;
        if ob.messages >= limit.0 || (!empty && ob.bytes + len > limit.1) {
            return Err(Error::SendQueueFull);
        }
        Ok(())
    }

    /// Where to seal `msg`, when the caller may (see [`SendState`], "Seals"): a large data
    /// frame, nothing queued before it, no bye-type message or abort posted, room under
    /// [`SEAL_MAX`], the gate with the reactor, and a TLS channel whose handshake is over
    /// (its session is shared only then).
    fn seal_turn(&self, ob: &Outbound, msg: &Message) -> Option<Direct> {
        if ob.messages > 0 || ob.no_seal || !sealable(msg) {
            return None;
        }
        if ob.sealed + encoded_len(msg) as u64 > SEAL_MAX {
            return None;
        }
        if self.gate.load(Ordering::SeqCst) != Gate::Reactor {
            // Free: the post writes directly or the reactor, awake, takes it; a posting
            // thread writes or hands a frame over otherwise.
            return None;
        }
        ob.direct.as_ref().filter(|d| d.tls.is_some()).cloned()
    }

    /// No frame is sealed from now on (a local abort was posted: what follows it is handed
    /// back, as on a channel without seals).
    pub(crate) fn stop_sealing(&self) {
        self.lock_outbound().no_seal = true;
    }

    /// Seals the message in `slot` (a [`Posted::Seal`]): under the session's lock (if free)
    /// and with the queue checked again, the calling thread encrypts its frame into `session`, and
    /// the message goes back to its pool (a pool-less one's buffers become the thread's
    /// spare). [`Posted::Sealed`] then, `slot` emptied. Queued as by [`post`](Self::post)
    /// when the session is locked, the queue changed meanwhile or the session takes
    /// nothing; the errors are `post`'s.
    ///
    /// The session's lock is taken before the queue's, as the reactor takes them; the
    /// queue's is not held while the frame is encrypted.
    pub(crate) fn seal(
        &self,
        slot: &mut Option<Message>,
        direct: &Direct,
        limit: (u64, u64),
        bufs: &Buffers,
    ) -> Result<Posted, Error> {
        let Some(msg) = slot.as_ref() else {
            unreachable!("seal is given a message")
        };
        let Some(session) = direct.tls.as_ref() else {
            unreachable!("only a TLS channel's frames are sealed")
        };
        // Not waited for: while the reactor decrypts what the peer sent (or another thread
        // writes), the frame goes to the reactor as usual, and neither waits for the other.
        let session = tls::try_lock(session);
        let mut ob = self.lock_outbound();
        if ob.closed {
            return Err(Error::InvalidChannelNumber);
        }
        Self::check_limit(&ob, msg, limit)?;
        let header = FrameHeader::for_message(msg).map(|h| h.to_bytes());
        let (Some(mut s), Some(_), Ok(header)) = (session, self.seal_turn(&ob, msg), header) else {
            return Ok(Posted::Queued(Self::queue(ob, slot, bufs)));
        };
        if !s.quiet() {
            return Ok(Posted::Queued(Self::queue(ob, slot, bufs)));
        }
        let len = encoded_len(msg) as u64;
        ob.sealed += len;
        ob.bytes += len;
        drop(ob);
        match s.seal(
            [&header[..], msg.text_headers(), msg.body()],
            &direct.socket,
        ) {
            tls::Sealed::All { tell } => {
                let drained = s.take_drained();
                drop(s);
                if let Some(mut msg) = slot.take() {
                    if msg.home.is_none() {
                        let (text, body) = msg.take_buffers();
                        message::offer_thread_spare(text, body);
                    }
                }
                self.sealed_written(drained);
                Ok(Posted::Sealed(tell))
            }
            tls::Sealed::Nothing => {
                let mut ob = self.lock_outbound();
                ob.sealed = ob.sealed.saturating_sub(len);
                ob.bytes = ob.bytes.saturating_sub(len);
                if ob.closed {
                    return Err(Error::InvalidChannelNumber);
                }
                Ok(Posted::Queued(Self::queue(ob, slot, bufs)))
            }
        }
    }

    /// `bytes` of sealed frames were written (see `tls::Session::take_drained`): the queue
    /// shrank.
    pub(crate) fn sealed_written(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut ob = self.lock_outbound();
        let bytes = bytes.min(ob.sealed);
        ob.sealed -= bytes;
        ob.bytes = ob.bytes.saturating_sub(bytes);
        self.room_made(ob);
    }

    /// Queues a message without the limit check (a direct write that did not happen: the
    /// queue was empty a moment ago). Hands it back when the channel is closing or gone.
    pub(crate) fn push(&self, msg: Message, bufs: &Buffers) -> Result<bool, Message> {
        let ob = self.lock_outbound();
        if ob.closed {
            return Err(msg);
        }
        Ok(Self::queue(ob, &mut Some(msg), bufs))
    }

    /// Counts the message in `slot` and appends it to the locked queue, emptying `slot`;
    /// true when the queue was empty.
    fn queue(mut ob: MutexGuard<'_, Outbound>, slot: &mut Option<Message>, bufs: &Buffers) -> bool {
        let Some(msg) = slot.as_mut() else {
            unreachable!("queue is given a message")
        };
        msg.release_hold(); // the application gave it to the engine
        ob.messages += 1;
        ob.bytes += encoded_len(msg) as u64;
        ob.no_seal |= msg.opcode().message_type() == message::MessageType::Bye;
        let was_empty = ob.is_empty();
        if encodable(msg) {
            ob.encode(msg, bufs);
            drop(ob);
            *slot = None; // back to its pool, from the thread that took it
        } else if let Some(msg) = slot.take() {
            ob.push_item(Pending::Message(msg), bufs);
            // Buffers of an earlier written one for this thread's next `Message::new`; freed
            // when the thread has a spare (it builds messages elsewhere).
            if let Some((text, body)) = ob.returned.take() {
                drop(ob);
                message::offer_thread_spare(text, body);
            }
        }
        was_empty
    }

    /// Moves everything queued to `into` (the reactor takes it).
    pub(crate) fn take_outbound(&self, into: &mut VecDeque<Pending>, bufs: &Buffers) {
        self.lock_outbound().take(into, bufs);
    }

    /// Refuses every later post (they are handed back to their callers) and moves what is
    /// queued to `into`: the channel is closing.
    pub(crate) fn close_outbound(&self, into: &mut VecDeque<Pending>, bufs: &Buffers) {
        let mut ob = self.lock_outbound();
        ob.closed = true;
        ob.direct = None;
        ob.returned = Returned::default();
        ob.take(into, bufs);
        self.room_made(ob);
    }

    /// Writes `msg`'s frame from the calling thread if the gate is open (see [`SendState`]);
    /// over TLS, encrypts it into the session first. Never blocks on the socket (it is
    /// non-blocking); over TLS it may wait for the session's lock while the reactor
    /// decrypts what it read, and the reactor for this thread's encryption and `writev` (as
    /// it waits for any posting thread that holds a channel's queue lock).
    pub(crate) fn write_direct(&self, msg: Message, direct: &Direct) -> DirectWrite {
        if self
            .gate
            .compare_exchange(
                Gate::Free,
                Gate::Poster,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return DirectWrite::NotTaken(msg);
        }
        let header = match FrameHeader::for_message(&msg) {
            Ok(h) => h.to_bytes(),
            Err(_) => {
                // Validated by post; the reactor reports it the usual way.
                self.gate.store(Gate::HandingOver, Ordering::SeqCst);
                return DirectWrite::HandOver { msg, written: 0 };
            }
        };
        let parts = [&header[..], msg.text_headers(), msg.body()];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let iov = [
            IoSlice::new(parts[0]),
            IoSlice::new(parts[1]),
            IoSlice::new(parts[2]),
        ];
        if let Some(session) = direct.tls.as_ref() {
            let out = tls::lock(session).write_direct(&direct.socket, &iov);
            return self.direct_tls_end(msg, session, out, total);
        }
        match direct.socket.write_vectored(&iov) {
            Ok(n) if n == total => {
                self.gate.store(Gate::Free, Ordering::SeqCst);
                // A post queued while the gate was taken found it closed and left the
                // writing to the reactor, which could not take the gate either: ask it to
                // write. (A post either counted its message before this lock, or takes the
                // lock after it and finds the gate open.)
                DirectWrite::Written {
                    wake_reactor: self.lock_outbound().messages > 0,
                }
            }
            Ok(n) => {
                self.gate.store(Gate::HandingOver, Ordering::SeqCst);
                DirectWrite::HandOver { msg, written: n }
            }
            Err(_) => {
                // Full socket buffer or a failing socket: the reactor retries the write and
                // handles what follows (readiness wait, or closing with SendFailed).
                self.gate.store(Gate::HandingOver, Ordering::SeqCst);
                DirectWrite::HandOver { msg, written: 0 }
            }
        }
    }

    /// The end of a [`write_direct`](Self::write_direct) over TLS, the gate taken: the
    /// frame went into the session (all of it, or the session's buffer was full and the
    /// rest is handed over as a started frame), then the session's records to the socket.
    fn direct_tls_end(
        &self,
        msg: Message,
        session: &tls::Shared,
        out: tls::DirectOutcome,
        total: usize,
    ) -> DirectWrite {
        self.sealed_written(out.drained); // sealed frames written with this one
        if out.taken < total {
            self.gate.store(Gate::HandingOver, Ordering::SeqCst);
            return DirectWrite::HandOver {
                msg,
                written: out.taken,
            };
        }
        drop(msg); // all of it is in the session
        if !out.flushed {
            self.gate.store(Gate::Reactor, Ordering::SeqCst);
            return DirectWrite::Encrypted;
        }
        self.gate.store(Gate::Free, Ordering::SeqCst);
        // Records the reactor made meanwhile (it reads under the same lock, and could not
        // write them while the gate was taken), or posts queued meanwhile: the reactor
        // writes them.
        let records = tls::lock(session).wants_write();
        DirectWrite::Written {
            wake_reactor: records || self.lock_outbound().messages > 0,
        }
    }
}

/// One live channel number.
pub(crate) struct Record {
    pub(crate) group: u32,
    pub(crate) send: Arc<SendState>,
}

/// Live channel numbers and their owning group ids.
pub(crate) struct ChannelTable {
    owners: IntMap<u16, Record>,
    quarantine: VecDeque<u16>,
    quarantined: Vec<u64>,
    quarantine_cap: usize,
    random: RandomState,
    draws: u64,
}

impl ChannelTable {
    pub(crate) fn new() -> ChannelTable {
        ChannelTable::with_quarantine(QUARANTINE_LEN)
    }

    pub(crate) fn with_quarantine(quarantine_cap: usize) -> ChannelTable {
        ChannelTable {
            owners: IntMap::default(),
            quarantine: VecDeque::with_capacity(quarantine_cap),
            quarantined: vec![0; 65536 / 64],
            quarantine_cap,
            random: RandomState::new(),
            draws: 0,
        }
    }

    /// A fresh number owned by `group`, or `None` when every number is live or quarantined.
    pub(crate) fn allocate(&mut self, group: u32) -> Option<u16> {
        // Random draws: SipHash with random keys over a counter is unpredictable enough for
        // spreading numbers; a bounded number of tries, then a scan, so a nearly full table
        // neither loops forever (tofu's bug) nor fails while a number is free.
        for _ in 0..64 {
            self.draws += 1;
            let cand = (self.random.hash_one(self.draws) & 0xffff) as u16;
            if self.is_free(cand) {
                self.insert(cand, group);
                return Some(cand);
            }
        }
        let start = (self.random.hash_one(!self.draws) & 0xffff) as u16;
        let found = (0..=u16::MAX)
            .map(|i| start.wrapping_add(i))
            .find(|&c| self.is_free(c))?;
        self.insert(found, group);
        Some(found)
    }

    fn insert(&mut self, ch: u16, group: u32) {
        self.owners.insert(
            ch,
            Record {
                group,
                send: Arc::default(),
            },
        );
    }

    fn is_free(&self, ch: u16) -> bool {
        ch != CHANNEL_UNASSIGNED
            && ch != CHANNEL_RESERVED
            && !self.owners.contains_key(&ch)
            && !self.is_quarantined(ch)
    }

    fn is_quarantined(&self, ch: u16) -> bool {
        self.quarantined[usize::from(ch) / 64] & (1 << (ch % 64)) != 0
    }

    fn set_quarantined(&mut self, ch: u16, on: bool) {
        let word = &mut self.quarantined[usize::from(ch) / 64];
        if on {
            *word |= 1 << (ch % 64);
        } else {
            *word &= !(1 << (ch % 64));
        }
    }

    /// The group owning a live number.
    #[cfg(test)]
    pub(crate) fn owner(&self, ch: u16) -> Option<u32> {
        self.owners.get(&ch).map(|r| r.group)
    }

    /// The record of a live number.
    pub(crate) fn record(&self, ch: u16) -> Option<&Record> {
        self.owners.get(&ch)
    }

    /// Releases a number into quarantine. Releasing a number that is not live does nothing.
    pub(crate) fn release(&mut self, ch: u16) {
        if self.owners.remove(&ch).is_none() {
            return;
        }
        if self.quarantine_cap == 0 {
            return;
        }
        if self.quarantine.len() == self.quarantine_cap {
            if let Some(old) = self.quarantine.pop_front() {
                self.set_quarantined(old, false);
            }
        }
        self.quarantine.push_back(ch);
        self.set_quarantined(ch, true);
    }

    /// Every live number's owning group and send state.
    pub(crate) fn records(&self) -> impl Iterator<Item = (u32, &Arc<SendState>)> + '_ {
        self.owners.values().map(|r| (r.group, &r.send))
    }

    /// Number of live channels.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_limit_counts_until_written() {
        let b = SendState::default();
        let bufs = Buffers::default();
        let post = |id, len, limit| {
            let mut slot = Some(data(OpCode::Signal, id, len));
            b.post(&mut slot, limit, false, || false, &bufs)
                .map(|_| ())
                .map_err(|e| (e, slot.map_or(0, |m| m.message_id())))
        };
        // An empty queue takes one message whatever its size.
        assert_eq!(post(1, 100_000, (3, 100)), Ok(()));
        assert_eq!(
            post(2, 1, (3, 100)),
            Err((Error::SendQueueFull, 2)),
            "bytes over the limit"
        );
        b.sub(1, encoded_len(&data(OpCode::Signal, 1, 100_000)) as u64);
        assert_eq!(b.messages(), 0);
        for i in 0..3 {
            assert_eq!(post(10 + i, 10, (3, 1000)), Ok(()));
        }
        assert_eq!(
            post(20, 10, (3, 1000)),
            Err((Error::SendQueueFull, 20)),
            "messages at the limit"
        );
        b.sub(1, 26);
        assert_eq!(post(21, 10, (3, 1000)), Ok(()));
        assert_eq!(b.messages(), 3);
    }

    /// The buffers of written pool-less messages stay with the channel, up to the send
    /// window and one message more (the rest stay with the written messages, for the pool);
    /// each post of a whole message takes one pair: the posting thread's spare (what its
    /// next `Message::new` takes) when it has none, else freed; a closed channel keeps
    /// none; all channels together keep at most `RETURNED_TOTAL_MAX`. (The only test of
    /// this process-wide count: no other test may keep buffers meanwhile.)
    #[test]
    fn written_pool_less_buffers_go_back_to_the_posting_thread() {
        let b = SendState::default();
        let bufs = Buffers::default();
        let mut written: Vec<Message> = (0..40).map(|i| data(OpCode::Signal, i, 65000)).collect();
        let bytes = written.iter().map(|m| encoded_len(m) as u64).sum();
        b.sub_written(40, bytes, &mut written, 1);
        let kept = RETURNED_MAX / 65000;
        assert_eq!(
            written.len(),
            40 - kept,
            "messages before `from` and over the bound stay"
        );
        assert!(written.iter().all(|m| m.capacities().1 == 65000));
        assert_eq!(b.lock_outbound().returned.bytes, kept * 65000);
        assert_eq!(RETURNED_TOTAL.load(Ordering::Relaxed), kept * 65000);

        let post = |mut slot: Option<Message>| {
            assert!(b
                .post(&mut slot, (100, 1 << 30), false, || false, &bufs)
                .is_ok());
            assert!(slot.is_none(), "queued whole");
        };
        let msg = data(OpCode::Signal, 100, 65000); // takes whatever this thread kept
        post(Some(msg));
        assert_eq!(b.lock_outbound().returned.pairs.len(), kept - 1);
        assert_eq!(Message::new().capacities().1, 65000, "the thread's spare");
        // A thread that has a spare frees the pair it takes.
        let msg = data(OpCode::Signal, 101, 65000);
        drop(Message::new()); // empty buffers, but this thread's spare now
        post(Some(msg));
        assert_eq!(b.lock_outbound().returned.pairs.len(), kept - 2);
        assert_eq!(Message::new().capacities(), (0, 0), "the spare it had");

        // Other channels keep up to the process-wide bound.
        let others: Vec<SendState> = (0..5).map(|_| SendState::default()).collect();
        for o in &others {
            let mut w: Vec<Message> = (0..20).map(|i| data(OpCode::Signal, i, 65000)).collect();
            o.sub_written(20, 0, &mut w, 0);
        }
        let total = RETURNED_TOTAL.load(Ordering::Relaxed);
        assert!(
            total <= RETURNED_TOTAL_MAX && total + 65000 > RETURNED_TOTAL_MAX,
            "{total}"
        );
        drop(others);
        assert_eq!(RETURNED_TOTAL.load(Ordering::Relaxed), (kept - 2) * 65000);

        b.close_outbound(&mut VecDeque::new(), &bufs);
        assert_eq!(b.lock_outbound().returned.bytes, 0);
        assert_eq!(RETURNED_TOTAL.load(Ordering::Relaxed), 0);
    }

    /// A waiting sender is woken when the queue is down to its level (or closed), not at
    /// every shrink; the level is checked under the lock, so a shrink before the wait counts.
    #[test]
    fn room_waiters_wake_at_their_level() {
        use std::sync::atomic::AtomicBool;
        use std::time::Duration;
        let b = Arc::new(SendState::default());
        let bufs = Buffers::default();
        for id in 0..10 {
            let mut slot = Some(data(OpCode::Signal, id, 84)); // 100-byte frames
            assert!(b
                .post(&mut slot, (u64::MAX, u64::MAX), false, || false, &bufs)
                .is_ok());
        }
        assert_eq!(b.messages(), 10);
        let soon = || Some(Instant::now() + Duration::from_millis(30));
        assert!(
            !b.wait_room((500, 10), soon()),
            "1000 bytes queued, 500 wanted"
        );
        assert!(
            b.wait_room((1000, 10), soon()),
            "already at the level: no wait"
        );
        let woke = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (b, woke) = (Arc::clone(&b), Arc::clone(&woke));
            std::thread::spawn(move || {
                let r = b.wait_room((500, 5), None);
                woke.store(true, Ordering::SeqCst);
                r
            })
        };
        b.sub(2, 200); // 800 bytes, 8 messages: above the level, the waiter sleeps on
        std::thread::sleep(Duration::from_millis(50));
        assert!(!woke.load(Ordering::SeqCst), "woken above its level");
        b.sub(3, 300); // 500 bytes, 5 messages: at the level
        assert!(waiter.join().unwrap());

        // A task: Pending above its level, woken and Ready at it, Ready once closed.
        let waker = Arc::new(Flag(AtomicBool::new(false)));
        let w = Waker::from(Arc::clone(&waker));
        assert!(b.poll_room((100, 1), &w).is_pending());
        b.sub(1, 100);
        assert!(!waker.0.load(Ordering::SeqCst), "400 bytes: not yet");
        b.sub(3, 300);
        assert!(waker.0.load(Ordering::SeqCst));
        assert!(b.poll_room((100, 1), &w).is_ready());
        assert!(b.poll_room((0, 0), &w).is_pending());
        b.close_outbound(&mut VecDeque::new(), &bufs);
        assert!(
            b.poll_room((0, 0), &w).is_ready(),
            "closed: nothing to wait for"
        );
    }

    /// A waker that records that it was woken.
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_direct_write_needs_an_empty_queue_an_open_gate_and_the_turn() {
        let b = SendState::default();
        let bufs = Buffers::default();
        let unlimited = (u64::MAX, u64::MAX);
        let direct = |b: &SendState, turn: bool| {
            let mut slot = Some(data(OpCode::Signal, 1, 1));
            matches!(
                b.post(&mut slot, unlimited, true, || turn, &bufs),
                Ok(Posted::DirectTurn(..))
            )
        };
        let addr = crate::Address::tcp("127.0.0.1", crate::testing::free_tcp_port().unwrap());
        let _listener = crate::sys::net::Listener::bind(&addr).unwrap();
        let socket = Arc::new(Stream::connect(&addr).unwrap().0);
        let fresh = || {
            let b = SendState::default();
            b.set_socket(Direct {
                socket: Arc::clone(&socket),
                tls: None,
            });
            b
        };
        // Each refusal queues the message instead, so every case starts afresh.
        assert!(
            !direct(&b, true),
            "the gate is closed until the reactor opens it (and no socket yet)"
        );
        assert_eq!(b.messages(), 1, "queued instead");
        let b = SendState::default();
        b.free_gate();
        assert!(!direct(&b, true), "no socket yet");
        let b = fresh();
        b.free_gate();
        assert!(!direct(&b, false), "no turn");
        let b = fresh();
        b.free_gate();
        assert!(direct(&b, true));
        assert_eq!(b.messages(), 0, "a direct write is not counted");
        b.post(
            &mut Some(data(OpCode::Signal, 2, 1)),
            unlimited,
            false,
            || true,
            &bufs,
        )
        .ok()
        .unwrap();
        assert!(!direct(&b, true), "something is queued");
        let b = fresh();
        b.free_gate();
        b.close_outbound(&mut VecDeque::new(), &bufs);
        assert_eq!(
            Arc::strong_count(&socket),
            3,
            "a closed channel lets its socket go"
        );
    }

    fn data(op: OpCode, id: u64, body: usize) -> Message {
        let mut m = Message::with_opcode(op);
        m.header.channel = 3;
        m.header.message_id = id;
        m.body_mut().resize(body, id as u8);
        m
    }

    #[test]
    fn small_data_is_encoded_at_post_others_kept_whole() {
        let s = SendState::default();
        let bufs = Buffers::default();
        let pool =
            crate::engine::pool::Pool::new(crate::engine::pool::PoolOptions { initial: 4, max: 4 });
        let mut m = pool.message();
        m.header.opcode = OpCode::Signal;
        m.header.channel = 3;
        m.header.message_id = 1;
        assert_eq!(s.push(m, &bufs).ok(), Some(true), "the queue was empty");
        assert_eq!(
            pool.len(),
            4,
            "an encoded message goes back to the pool at once"
        );
        assert_eq!(
            s.push(data(OpCode::Request, 2, 100), &bufs).ok(),
            Some(false)
        );
        let big = ENCODE_MAX; // its frame is longer than ENCODE_MAX
        s.push(data(OpCode::Signal, 3, big), &bufs).unwrap();
        s.push(data(OpCode::ByeRequest, 4, 0), &bufs).unwrap();
        let mut oob = data(OpCode::Signal, 5, 1);
        oob.header.oob = true;
        s.push(oob, &bufs).unwrap();
        s.push(data(OpCode::Response, 6, 10), &bufs).unwrap();
        let mut got = VecDeque::new();
        s.take_outbound(&mut got, &bufs);
        let shape: Vec<String> = got
            .iter()
            .map(|p| match p {
                Pending::Run { frames, .. } => format!("run {frames}"),
                Pending::Message(m) => format!("msg {}", m.message_id()),
            })
            .collect();
        assert_eq!(shape, ["run 2", "msg 3", "msg 4", "msg 5", "run 1"]);
        let Some(Pending::Run { bytes, .. }) = got.front() else {
            unreachable!()
        };
        let frames = crate::proto::wire::Decoder::decode_all(bytes).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            (frames[1].opcode(), frames[1].message_id()),
            (OpCode::Request, 2)
        );
        assert_eq!(frames[1].body(), &[2u8; 100][..]);
    }

    #[test]
    fn a_run_ends_at_its_cap() {
        let s = SendState::default();
        let bufs = Buffers::default();
        let frame = crate::proto::wire::HEADER_LEN + 1000;
        let n = 3 * RUN_FIRST_CAP / frame;
        for i in 0..n {
            s.push(data(OpCode::Signal, i as u64 + 1, 1000), &bufs)
                .unwrap();
        }
        let mut got = VecDeque::new();
        s.take_outbound(&mut got, &bufs);
        assert!(got.len() >= 3);
        let mut frames = 0;
        for p in &got {
            let Pending::Run { bytes, frames: f } = p else {
                panic!("only runs")
            };
            assert!(bytes.len() <= RUN_FIRST_CAP);
            frames += *f as usize;
        }
        assert_eq!(frames, n);
        // Written runs come back as spares and are reused.
        let mut spent: Vec<Vec<u8>> = got
            .into_iter()
            .map(|p| match p {
                Pending::Run { bytes, .. } => bytes,
                Pending::Message(_) => unreachable!(),
            })
            .collect();
        let k = spent.len();
        bufs.put_all(&mut spent);
        assert_eq!(bufs.len(), k);
        s.push(data(OpCode::Signal, 99, 10), &bufs).unwrap();
        assert_eq!(bufs.len(), k - 1);
    }

    #[test]
    fn a_taken_outbound_keeps_no_allocation() {
        // An idle channel costs no buffer: what a post needed leaves with the reactor.
        let s = SendState::default();
        let bufs = Buffers::default();
        s.push(data(OpCode::Signal, 1, 10), &bufs).unwrap();
        s.push(data(OpCode::ByeRequest, 2, 0), &bufs).unwrap();
        s.push(data(OpCode::Signal, 3, 10), &bufs).unwrap();
        let mut got = VecDeque::new();
        s.take_outbound(&mut got, &bufs);
        assert_eq!(got.len(), 3);
        let ob = s.lock_outbound();
        assert!(ob.is_empty());
        assert_eq!((ob.run.capacity(), ob.items.capacity()), (0, 0));
        // The item queue went to the spares, for the next channel that needs one.
        assert!(bufs.queue().capacity() > 0);
    }

    #[test]
    fn a_closed_outbound_hands_posts_back() {
        let s = SendState::default();
        let bufs = Buffers::default();
        s.push(data(OpCode::Signal, 1, 10), &bufs).unwrap();
        let mut got = VecDeque::new();
        s.close_outbound(&mut got, &bufs);
        assert_eq!(got.len(), 1, "what was queued is taken");
        let back = s.push(data(OpCode::Signal, 2, 10), &bufs).unwrap_err();
        assert_eq!(back.message_id(), 2);
        let back = s.push(data(OpCode::ByeRequest, 3, 0), &bufs).unwrap_err();
        assert_eq!(back.message_id(), 3);
    }

    #[test]
    fn numbers_are_valid_and_owned() {
        let mut t = ChannelTable::new();
        let a = t.allocate(7).unwrap();
        let b = t.allocate(8).unwrap();
        assert_ne!(a, b);
        for c in [a, b] {
            assert!(c != 0 && c != 65535);
        }
        assert_eq!(t.owner(a), Some(7));
        assert_eq!(t.owner(b), Some(8));
        t.release(a);
        assert_eq!(t.owner(a), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn quarantine_keeps_released_numbers_out() {
        let mut t = ChannelTable::with_quarantine(3);
        // Fill the table completely, then free four numbers one by one.
        let all: Vec<u16> = (0..65534).map(|_| t.allocate(1).unwrap()).collect();
        assert_eq!(t.allocate(1), None, "full table fails instead of looping");
        for &c in &all[..4] {
            t.release(c);
        }
        // Only the oldest released number has left the 3-slot quarantine.
        assert_eq!(t.allocate(1), Some(all[0]));
        assert_eq!(t.allocate(1), None);
    }

    #[test]
    fn released_records_are_freed_so_numbers_never_run_out() {
        let mut t = ChannelTable::new();
        for _ in 0..200_000 {
            let c = t
                .allocate(1)
                .expect("records are released, so numbers never run out");
            t.release(c);
        }
        assert_eq!(t.len(), 0);
    }
}
