//! The reactor: the engine's I/O thread. It moves bytes between sockets and the protocol
//! core ([`Connection`]) and messages between the protocol core and channel groups.
//!
//! One loop iteration:
//! 1. take every queued command at once (posts, group destroys) and dispatch them;
//! 2. resume channels paused at the receive limit;
//! 3. write what the posts queued (one `writev` per channel and batch; no wait for
//!    writability unless the socket is full);
//! 4. delete the channels marked for deletion in this iteration;
//! 5. reconcile interest for every channel touched (where a one-shot backend re-arms) and
//!    open the direct-write gate of channels left with nothing to write;
//! 6. deliver what the iteration produced, once per group (the outbox), and allow one direct
//!    write from a posting thread until the reactor wakes again;
//! 7. sleep in the poller, unless more commands arrived;
//! 8. handle readiness: accept, connect, read, write, errors; deliver again.
//!
//! Nothing here depends on the platform or the backend: the [`Poller`] hides both.
//!
//! This file holds the loop and the channel records; what each step does is in its own file:
//! `commands.rs` (1), `read.rs` (2, 8 and the frame timeout), `write.rs` (3, 8),
//! `close.rs` (4), `delivery.rs` (6).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::channels::{unpend, Direct, Pending, SendState};
use crate::engine::shared::{Command, Frames, GroupShared, Inbound, Shared};
use crate::engine::tls::{self, Session};
use crate::proto::address::Address;
use crate::proto::connection::{Connection, RecvStop, Whole, COPY_MAX, STAGE_CAP};
use crate::proto::message::{Message, OpCode, Origin, PEER_IDENTITY};
use crate::proto::notify;
use crate::proto::status::Status;
use crate::proto::wire::{encoded_len, is_tls_client_hello, DecodeError};
use crate::sys::net::{Listener, Stream};
use crate::sys::poller::{Event, Poller, RawSocket, Token, Triggers};
use crate::util::intmap::IntMap;

mod close;
mod commands;
mod delivery;
mod read;
mod write;

use delivery::{hand_back, Outbox};
use read::ReadEnd;
use write::{write_channel, Writer};

/// Size of the one read buffer all channels share.
const READ_BUF_LEN: usize = 256 * 1024;
/// Frames up to this length received whole are decoded by the application thread (see
/// `Frames`); longer ones by the reactor, straight into pooled messages.
const WHOLE_MAX: usize = crate::engine::channels::ENCODE_MAX;
/// Most reads of one channel per readiness event (fairness between channels).
const READS_PER_EVENT: usize = 8;
/// Most accepts of one listener per readiness event.
const ACCEPTS_PER_EVENT: usize = 64;
/// Most slices per `writev` (small frames are staged into one slice, see
/// `Connection::gather`).
const IOV_LEN: usize = 64;
/// Most messages the reactor keeps for receiving (see `Reactor::spare`).
const SPARE_MAX: usize = 256;
/// Messages taken from the pool at once when the spare ones run out.
const REFILL_BATCH: usize = 32;

/// How long a listener stops accepting after an accept failure (EMFILE, ENFILE, ENOMEM).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long the socket of a failed TLS channel stays open after its alert (see
/// `Reactor::linger`), and how many may at once.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_MAX: usize = 256;

pub(crate) struct Reactor {
    shared: Arc<Shared>,
    poller: Poller,
    events: Vec<Event>,
    /// Channels by number. Boxed: a channel keeps its address for its whole life, which a
    /// completion-based backend relies on.
    channels: IntMap<u16, Box<Channel>>,
    by_token: IntMap<Token, u16>,
    next_token: u64,
    commands: Vec<Command>,
    read_buf: Box<[u8]>,
    touched: Vec<u16>,
    to_write: Vec<u16>,
    marked: Vec<u16>,
    /// Channels paused by their group's receive limit, per group (see `retry_starved`).
    starved: Starved,
    /// Listeners backing off after accept failures, with the time they resume.
    paused: Vec<(Instant, u16)>,
    /// Channels whose peer owes the rest of a frame (see `Connection::poll_timeout`).
    partial: Vec<u16>,
    /// Sockets of closed TLS channels whose alert is on its way, and when to close them
    /// (see `Reactor::linger`).
    lingering: VecDeque<(Instant, Arc<Stream>)>,
    /// Given to every new connection (see `Connection::handle_timeout`).
    frame_timeout: Option<Duration>,
    /// When the last poller wait returned: the time of the bytes read in this iteration.
    now: Instant,
    deliveries: Vec<Message>,
    /// Messages for the application, delivered per group once per loop iteration.
    outbox: Outbox,
    /// Scratch state of the write path.
    writer: Writer,
    /// Messages of this engine's pool kept for receiving: written messages are reused here
    /// and refills take batches, so the pool's lock is taken per batch, not per message.
    spare: Vec<Message>,
}

struct Channel {
    number: u16,
    token: Token,
    group: Arc<GroupShared>,
    /// Posted and not yet written (shared with `post`, which enforces the send limit).
    send: Arc<SendState>,
    registered: bool,
    touched: bool,
    closing: Option<Status>,
    /// The OS's (or the decoder's) words for why it is closing, for the application.
    why: Option<String>,
    kind: Kind,
}

enum Kind {
    Listener(ListenerState),
    Io(Box<Io>),
}

struct ListenerState {
    listener: Listener,
    /// message_id of the WelcomeRequest, for the final ChannelClosed Signal.
    opened_id: u64,
    /// Backing off after an accept failure such as EMFILE: no ACCEPT interest meanwhile.
    paused: bool,
    /// A `tls|` listener: every accepted connection gets a server session.
    tls: bool,
}

struct Io {
    /// Shared with posting threads for direct writes once connected (see `SendState`).
    stream: Arc<Stream>,
    conn: Connection,
    connected: bool,
    write_blocked: bool,
    starving: bool,
    scheduled: bool,
    /// The poller reported an error or hang-up.
    hangup: bool,
    /// Listed in `Reactor::partial`.
    in_partial: bool,
    /// `stream` was given to the channel's `SendState` for direct writes.
    socket_shared: bool,
    /// The TLS session of a `tls|` channel, between the socket and `conn`; shared with the
    /// channel's `SendState` for direct writes once the handshake is over.
    tls: Option<tls::Shared>,
    /// An accepted channel whose peer's first frame is not yet delivered: that frame gets
    /// the local-only headers fixed (see `read`).
    first_in: bool,
    /// A TLS client's verified names, for its first frame (see `PEER_IDENTITY`).
    identity: Option<String>,
    /// Frames the reactor wrote since the channel was last reconciled (see `streaming`).
    written: u64,
    /// The reactor last wrote several frames at once here, not a single one: the channel
    /// streams, and its gate stays with the reactor (see `Channel::free_gate`).
    streaming: bool,
}

/// Channels paused by their group's receive limit, grouped by group, in the order they
/// paused.
type Starved = Vec<(Arc<GroupShared>, Vec<u16>)>;

impl Io {
    /// A data channel's state around its socket and protocol core.
    fn new(stream: Stream, conn: Connection, connected: bool, tls: Option<Session>) -> Io {
        Io {
            stream: Arc::new(stream),
            conn,
            connected,
            write_blocked: false,
            starving: false,
            scheduled: false,
            hangup: false,
            in_partial: false,
            socket_shared: false,
            tls: tls.map(tls::share),
            first_in: false,
            identity: None,
            written: 0,
            streaming: false,
        }
    }

    /// When the channel must have made progress: the end of its frame timeout while its
    /// peer owes the rest of a frame, and the end of a TLS handshake.
    fn deadline(&self) -> Option<Instant> {
        let handshake = self.tls.as_ref().and_then(|s| tls::lock(s).deadline());
        match (self.conn.poll_timeout(), handshake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes wait to be written: frames in `conn`, or records the TLS session made.
    fn wants_write(&mut self) -> bool {
        self.conn.wants_send()
            || self
                .tls
                .as_ref()
                .is_some_and(|s| tls::lock(s).wants_write())
    }
}

/// A TLS channel with something to write now: records the session made (a handshake
/// answer), or frames that waited for the handshake to end.
fn io_wants_tls_write(ch: &mut Channel) -> bool {
    let Kind::Io(io) = &mut ch.kind else {
        return false;
    };
    let Some(s) = io.tls.as_ref() else {
        return false;
    };
    let s = tls::lock(s);
    !io.write_blocked && (s.wants_write() || (!s.is_handshaking() && io.conn.wants_send()))
}

impl Channel {
    fn raw(&self) -> RawSocket {
        match &self.kind {
            Kind::Listener(l) => l.listener.raw(),
            Kind::Io(io) => io.stream.raw(),
        }
    }

    fn interest(&mut self) -> Triggers {
        match &mut self.kind {
            Kind::Listener(l) if l.paused => Triggers::NONE,
            Kind::Listener(_) => Triggers::ACCEPT,
            Kind::Io(io) if !io.connected => Triggers::CONNECT,
            Kind::Io(io) => {
                let mut t = Triggers::NONE;
                // A TLS channel waits for writability whenever a write found the socket full:
                // posting threads that seal frames write its socket too (see `SendState`), so
                // whether records are still waiting can change at any time, and a writable
                // socket with nothing left costs one wake-up that clears `write_blocked`.
                if io.write_blocked && (io.tls.is_some() || io.wants_write()) {
                    t |= Triggers::SEND;
                }
                if !io.starving && !io.conn.bye_received() {
                    t |= Triggers::RECV;
                }
                t
            }
        }
    }
}

impl Reactor {
    pub(crate) fn new(shared: Arc<Shared>, poller: Poller) -> Reactor {
        let frame_timeout = shared.frame_timeout;
        Reactor {
            shared,
            poller,
            events: Vec::with_capacity(1024),
            channels: IntMap::default(),
            by_token: IntMap::default(),
            next_token: 1,
            commands: Vec::new(),
            read_buf: vec![0u8; READ_BUF_LEN].into_boxed_slice(),
            touched: Vec::new(),
            to_write: Vec::new(),
            marked: Vec::new(),
            starved: Vec::new(),
            paused: Vec::new(),
            partial: Vec::new(),
            lingering: VecDeque::new(),
            frame_timeout,
            now: Instant::now(),
            deliveries: Vec::new(),
            outbox: Outbox::default(),
            writer: Writer {
                stage: Vec::with_capacity(STAGE_CAP + COPY_MAX),
                sent: Vec::new(),
                pending: VecDeque::new(),
                spent: Vec::new(),
                refused: Vec::new(),
                frames: 0,
            },
            spare: Vec::with_capacity(SPARE_MAX),
        }
    }

    pub(crate) fn run(mut self) {
        tracing::debug!(backend = %self.poller.backend(), "reactor started");
        // A bug must not leave a dead engine behind: on a panic the exit path still closes
        // the command queue, hands messages back and completes waiting group destroys.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_loop()));
        if r.is_err() {
            tracing::error!("reactor panicked; the engine stops");
        }
        self.exit();
    }

    fn run_loop(&mut self) {
        loop {
            self.resume_paused();
            self.expire_partial();
            self.end_lingering();
            if self.shared.shutdown.load(Ordering::SeqCst) {
                break;
            }
            self.dispatch_commands();
            self.retry_starved();
            self.write_scheduled();
            self.delete_marked();
            self.reconcile();
            self.delete_marked();

            self.deliver();
            let timeout = self.sleep_timeout();
            self.shared.iterations.fetch_add(1, Ordering::Relaxed);
            if timeout.is_none() {
                self.shared.sleeps.fetch_add(1, Ordering::Relaxed);
            }
            let r = self.poller.wait(&mut self.events, timeout);
            self.now = Instant::now();
            self.shared.direct_turn.store(false, Ordering::Relaxed);
            self.shared.sleeping.store(false, Ordering::SeqCst);
            self.writer.frames = 0;
            if let Err(e) = r {
                tracing::error!(error = %e, "poller wait failed; the engine stops");
                break;
            }
            if timeout.is_none() && self.events.iter().all(|e| e.token == Token::WAKER) {
                // Woken by a post and nothing else: give the CPU back once before taking
                // the work. Where the reactor shares a CPU with the posting thread, that
                // thread then finishes its burst and the reactor writes it in one system
                // call, instead of being scheduled (and writing) every few messages; on a
                // CPU of its own this returns at once.
                std::thread::yield_now();
            }
            let events = std::mem::take(&mut self.events);
            for ev in &events {
                if ev.token != Token::WAKER {
                    self.handle_event(ev.token, ev.triggers);
                }
            }
            self.events = events;
            self.recycle_sent();
            self.delete_marked();
            self.deliver();
        }
    }

    /// `None` (sleep until woken) when there is nothing to do; zero when more work waits.
    /// Publishes `sleeping` first, so a post either sees it and wakes us, or is seen here.
    fn sleep_timeout(&self) -> Option<Duration> {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        // Each group with paused channels wakes us when a frame leaves its queues; one
        // that has room already means work now.
        let room = self.starved.iter().any(|(group, _)| group.may_receive(0));
        let pending = !self.shared.lock_commands().queue.is_empty()
            || self.shared.shutdown.load(Ordering::SeqCst)
            || room;
        if pending {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return Some(Duration::ZERO);
        }
        // The only timers: listeners backing off after accept failures, and channels in the
        // middle of a frame (see `expire_partial`). An idle engine has neither.
        let now = Instant::now();
        let partial = self
            .partial
            .iter()
            .filter_map(|n| match &self.channels.get(n)?.kind {
                Kind::Io(io) => io.deadline(),
                Kind::Listener(_) => None,
            })
            .min();
        let lingering = self.lingering.front().map(|&(at, _)| at);
        self.paused
            .iter()
            .map(|&(at, _)| at)
            .chain(partial)
            .chain(lingering)
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    /// Gives listeners whose back-off has expired their ACCEPT interest back.
    fn resume_paused(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.paused.len() {
            if self.paused[i].0 > now {
                i += 1;
                continue;
            }
            let (_, number) = self.paused.swap_remove(i);
            if let Some(ch) = self.channels.get_mut(&number) {
                if let Kind::Listener(l) = &mut ch.kind {
                    l.paused = false;
                }
                touch(&mut self.touched, ch);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Commands

    // -----------------------------------------------------------------------------------------
    // I/O

    fn handle_event(&mut self, token: Token, t: Triggers) {
        let Some(&number) = self.by_token.get(&token) else {
            return; // stale: the channel is gone
        };
        let Some(ch) = self.channels.get_mut(&number) else {
            return;
        };
        if ch.closing.is_some() {
            return;
        }
        touch(&mut self.touched, ch);
        let failed = t.intersects(Triggers::ERR | Triggers::HUP);
        if let Kind::Io(io) = &mut ch.kind {
            io.hangup |= failed;
        }
        match &mut ch.kind {
            Kind::Listener(_) => {
                if t.contains(Triggers::ACCEPT) {
                    self.accept(number);
                } else if failed {
                    mark(&mut self.marked, ch, Status::AcceptFailed);
                }
            }
            Kind::Io(io) if !io.connected => match io.stream.finish_connect() {
                Ok(true) => {
                    io.connected = true;
                    tracing::debug!(channel = number, peer = %io.stream.peer_string(), "connected");
                    write_channel(ch, &mut self.writer, self.shared.pool.buffers());
                }
                Ok(false) if !failed => {}
                Ok(false) => mark(&mut self.marked, ch, Status::ConnectFailed),
                Err(e) => {
                    tracing::debug!(channel = number, error = %e, "connect failed");
                    mark_because(&mut self.marked, ch, Status::ConnectFailed, e.to_string());
                }
            },
            Kind::Io(io) if io.starving => {
                // No read interest (no messages to read into); writes go on.
                if t.contains(Triggers::SEND) {
                    write_channel(ch, &mut self.writer, self.shared.pool.buffers());
                }
                if ch.closing.is_none() && failed && ch.registered {
                    // The peer is gone, but data it sent may still wait in the socket: stop
                    // watching (the hang-up would be reported again and again) and read it
                    // once messages come back.
                    if let Err(e) = self.poller.deregister(ch.raw(), ch.token) {
                        tracing::debug!(channel = number, error = %e, "deregister failed");
                    }
                    ch.registered = false;
                }
            }
            Kind::Io(_) => {
                let mut end = ReadEnd::NotRead;
                if t.intersects(Triggers::RECV | Triggers::HUP | Triggers::ERR) {
                    end = self.read(number);
                }
                let Some(ch) = self.channels.get_mut(&number) else {
                    return;
                };
                if ch.closing.is_none() && t.contains(Triggers::SEND) {
                    write_channel(ch, &mut self.writer, self.shared.pool.buffers());
                }
                if ch.closing.is_none() && failed && end == ReadEnd::WouldBlock {
                    // Error or hang-up, yet no end of stream to read: the link is dead.
                    let end = match &ch.kind {
                        Kind::Io(io) => io.conn.link_end(Status::CommunicationFailed),
                        Kind::Listener(_) => Status::CommunicationFailed,
                    };
                    mark(&mut self.marked, ch, end);
                }
            }
        }
        if let Some(ch) = self.channels.get(&number) {
            if ch.closing.is_some() && !self.marked.contains(&number) {
                self.marked.push(number);
            }
        }
    }

    fn reconcile(&mut self) {
        for number in self.touched.drain(..) {
            let Some(ch) = self.channels.get_mut(&number) else {
                continue;
            };
            ch.touched = false;
            if ch.closing.is_some() {
                continue;
            }
            ch.free_gate();
            let interest = ch.interest();
            let r = if ch.registered {
                self.poller.reregister(ch.raw(), ch.token, interest)
            } else if matches!(&ch.kind, Kind::Io(io) if io.starving) {
                continue; // hung up while starving: registered again once reading resumes
            } else {
                let r = self.poller.register(ch.raw(), ch.token, interest);
                ch.registered = r.is_ok();
                r
            };
            if let Err(e) = r {
                tracing::warn!(channel = number, error = %e, "poller update failed");
                mark(&mut self.marked, ch, Status::CommunicationFailed);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Closing
}

impl Channel {
    /// Lets posting threads write directly when the reactor has nothing to write here:
    /// connected, send queue empty, no bye-type frame queued or written, not closing, not
    /// waiting for writability, no hang-up seen, and not streaming: a channel for which the
    /// reactor last wrote more than one frame at once keeps its gate with the reactor, so a
    /// stream of posts is written in batches instead of a system call of the posting thread
    /// now and then; the gate opens again once the reactor writes a single frame there (the
    /// next request of a request/reply exchange, say).
    fn free_gate(&mut self) {
        let Kind::Io(io) = &mut self.kind else { return };
        match std::mem::take(&mut io.written) {
            0 => {}
            1 => io.streaming = false,
            _ => io.streaming = true,
        }
        if io.streaming || !io.connected || io.write_blocked || io.hangup || self.closing.is_some()
        {
            return;
        }
        // A TLS session is kept locked until the gate is freed: a posting thread that took
        // the gate earlier and left records in the session hands the gate back to the
        // reactor after it unlocked it, and the gate must not be freed over those records.
        // A posting thread holding it holds the gate too (or has just freed it): nothing to
        // free then, and the reactor does not wait for it.
        let session = match io.tls.as_ref().map(tls::try_lock) {
            Some(None) => return,
            session => session.flatten(),
        };
        if session
            .as_ref()
            .is_some_and(|s| s.is_handshaking() || s.wants_write())
        {
            return; // a posting thread writes only after the handshake, behind nothing
        }
        if !io.conn.is_idle() {
            return;
        }
        if !io.socket_shared {
            io.socket_shared = true;
            self.send.set_socket(Direct {
                socket: Arc::clone(&io.stream),
                tls: io.tls.clone(),
            });
        }
        self.send.free_gate();
        drop(session);
    }
}

fn touch(touched: &mut Vec<u16>, ch: &mut Channel) {
    if !ch.touched {
        ch.touched = true;
        touched.push(ch.number);
    }
}

fn mark(marked: &mut Vec<u16>, ch: &mut Channel, reason: Status) {
    if ch.closing.is_none() {
        ch.closing = Some(reason);
        marked.push(ch.number);
    }
}

/// [`mark`], with the words for why (see `ERROR_TEXT`).
fn mark_because(marked: &mut Vec<u16>, ch: &mut Channel, reason: Status, why: String) {
    if ch.closing.is_none() {
        ch.why = Some(why);
    }
    mark(marked, ch, reason);
}
