//! The reactor: the engine's I/O thread. It moves bytes between sockets and the protocol
//! core ([`Connection`]) and messages between the protocol core and channel groups.
//!
//! One loop iteration:
//! 1. take every queued command at once (posts, group destroys) and dispatch them;
//! 2. retry channels starved of pool messages;
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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::channels::{unpend, Pending, SendState};
use crate::engine::shared::{pool_empty_signal, Command, Frames, GroupShared, Inbound, Shared};
use crate::proto::address::Address;
use crate::proto::connection::{Connection, RecvStop, Whole, COPY_MAX, STAGE_CAP};
use crate::proto::message::{Message, OpCode, Origin};
use crate::proto::notify;
use crate::proto::status::Status;
use crate::proto::wire::encoded_len;
use crate::sys::net::{Listener, Stream};
use crate::sys::poller::{Event, Poller, RawSocket, Token, Triggers};
use crate::util::intmap::IntMap;

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
    starved: Vec<u16>,
    /// Listeners backing off after accept failures, with the time they resume.
    paused: Vec<(Instant, u16)>,
    /// Channels whose peer owes the rest of a frame (see `Connection::poll_timeout`).
    partial: Vec<u16>,
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

/// How a [`Reactor::read`] ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    NotRead,
    WouldBlock,
    Budget,
    Starved,
    Closed,
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
                if io.write_blocked && io.conn.wants_send() {
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

    /// Delivers what was produced since the last delivery. The writes before it are done:
    /// until the reactor wakes up again, one post may write directly (see `SendState`), e.g.
    /// the answer of a thread these deliveries wake, unless the reactor wrote more than one
    /// frame since it woke up. A channel that streams is better served by batches than by
    /// a system call of the posting thread per reactor sleep.
    fn deliver(&mut self) {
        if self.writer.frames <= 1 {
            self.shared.direct_turn.store(true, Ordering::Release);
        }
        self.outbox.deliver();
    }

    /// `None` (sleep until woken) when there is nothing to do; zero when more work waits.
    /// Publishes `sleeping` first, so a post either sees it and wakes us, or is seen here.
    fn sleep_timeout(&self) -> Option<Duration> {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        if !self.starved.is_empty() {
            // Ask the pool to wake us on its next refill, whoever emptied it meanwhile.
            self.shared.pool.arm_refill_alert();
        }
        let pending = !self.shared.lock_commands().queue.is_empty()
            || self.shared.shutdown.load(Ordering::SeqCst)
            || (!self.starved.is_empty()
                && (!self.spare.is_empty() || self.shared.pool.can_receive()));
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
                Kind::Io(io) => io.conn.poll_timeout(),
                Kind::Listener(_) => None,
            })
            .min();
        self.paused
            .iter()
            .map(|&(at, _)| at)
            .chain(partial)
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    /// Closes channels whose peer started a frame and then sent nothing for the frame
    /// timeout (a slowloris peer would otherwise hold the channel and its receive message
    /// forever); the connection decides, the reactor only asks the ones that owe bytes.
    fn expire_partial(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.partial.len() {
            let number = self.partial[i];
            let Some(ch) = self.channels.get_mut(&number) else {
                self.partial.swap_remove(i);
                continue;
            };
            let Kind::Io(io) = &mut ch.kind else {
                self.partial.swap_remove(i);
                continue;
            };
            if io.conn.poll_timeout().is_none() || ch.closing.is_some() {
                io.in_partial = false;
                self.partial.swap_remove(i);
                continue;
            }
            if let Some(status) = io.conn.handle_timeout(now) {
                tracing::debug!(channel = number, "incomplete frame timed out");
                io.in_partial = false;
                self.partial.swap_remove(i);
                mark(&mut self.marked, ch, status);
                continue;
            }
            i += 1;
        }
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

    fn dispatch_commands(&mut self) {
        {
            let mut c = self.shared.lock_commands();
            std::mem::swap(&mut c.queue, &mut self.commands);
        }
        let mut cmds = std::mem::take(&mut self.commands);
        for cmd in cmds.drain(..) {
            match cmd {
                Command::Post { group, msg } => self.dispatch_post(group, msg, None),
                Command::HandOver {
                    group,
                    msg,
                    written,
                } => self.dispatch_post(group, msg, Some(written)),
                Command::Queued { channel } => self.schedule_write(channel),
                Command::DestroyGroup { group, done } => {
                    self.destroy_group(group);
                    done.complete();
                }
            }
        }
        self.commands = cmds;
    }

    /// Queues a channel for `write_scheduled`: posts were queued in its `Outbound`, or a
    /// posting thread wrote directly while others queued. Posts to a listener come back.
    fn schedule_write(&mut self, number: u16) {
        let Some(ch) = self.channels.get_mut(&number) else {
            return; // closed meanwhile: its queue was handed back at the close
        };
        match &mut ch.kind {
            Kind::Io(io) => {
                if io.connected && !io.scheduled && ch.closing.is_none() {
                    io.scheduled = true;
                    self.to_write.push(number);
                }
            }
            Kind::Listener(_) => {
                // Data for a listener: returned, and unlike Zig tofu the listener stays.
                ch.send
                    .take_outbound(&mut self.writer.pending, self.shared.pool.buffers());
                let (pool, group) = (&self.shared.pool, &ch.group);
                for msg in unpend(&mut self.writer.pending, pool, &mut self.writer.spent) {
                    ch.send.sub(1, encoded_len(&msg) as u64);
                    hand_back(&mut self.outbox, group, msg, Status::ChannelClosed);
                }
            }
        }
    }

    /// A posted message; `handed_over` is `Some(bytes already written)` for a message a
    /// posting thread started to write directly.
    fn dispatch_post(
        &mut self,
        group: Arc<GroupShared>,
        mut msg: Message,
        handed_over: Option<usize>,
    ) {
        msg.release_hold(); // the application gave it to the engine
        let number = msg.channel();
        if group.is_destroyed() {
            // Posted while the group was being destroyed: nobody can receive an answer.
            if matches!(msg.opcode(), OpCode::HelloRequest | OpCode::WelcomeRequest) {
                self.shared.lock_table().release(number);
            }
            return;
        }
        match msg.opcode() {
            OpCode::HelloRequest => self.open_client(group, msg),
            OpCode::WelcomeRequest => self.open_listener(group, msg),
            OpCode::ByeSignal if msg.header.oob => {
                tracing::debug!(channel = number, "ByeSignal: local abort");
                msg.header.origin = Origin::Engine;
                msg.header.status = Status::ChannelClosed;
                self.outbox.push(&group, msg);
                if let Some(ch) = self.channels.get_mut(&number) {
                    if ch.group.id == group.id {
                        mark(&mut self.marked, ch, Status::ChannelClosed);
                    }
                }
            }
            _ => {
                let ch = self
                    .channels
                    .get_mut(&number)
                    .filter(|ch| ch.group.id == group.id);
                let Some(ch) = ch else {
                    return hand_back(&mut self.outbox, &group, msg, Status::ChannelClosed);
                };
                let Kind::Io(io) = &mut ch.kind else {
                    // Data for a listener: returned, and unlike Zig tofu the listener stays.
                    ch.send.sub(1, encoded_len(&msg) as u64);
                    return hand_back(&mut self.outbox, &group, msg, Status::ChannelClosed);
                };
                let queued = match handed_over {
                    None => io.conn.enqueue(msg),
                    Some(written) => {
                        // Its first bytes may be on the wire: it goes first, and the
                        // reactor holds the gate again.
                        ch.send.take_handover();
                        io.conn.enqueue_started(msg, written)
                    }
                };
                if let Err((e, msg)) = queued {
                    ch.send.sub(1, encoded_len(&msg) as u64);
                    return hand_back(&mut self.outbox, &group, msg, e.status());
                }
                if io.conn.bye_queued() {
                    ch.send.keep_gate(); // no direct write once a bye-type frame is queued
                }
                if io.connected && !io.scheduled && ch.closing.is_none() {
                    io.scheduled = true;
                    self.to_write.push(number);
                }
            }
        }
    }

    fn open_client(&mut self, group: Arc<GroupShared>, msg: Message) {
        let number = msg.channel();
        let addr = match Address::from_message(&msg) {
            Ok(a) => a,
            Err(e) => return self.refuse(group, msg, OpCode::HelloResponse, e.status()),
        };
        let (stream, connected) = match Stream::connect(&addr) {
            Ok(s) => s,
            Err((status, e)) => {
                tracing::debug!(channel = number, address = %addr, error = %e, ?status, "connect failed");
                return self.refuse(group, msg, OpCode::HelloResponse, status);
            }
        };
        let mut conn = Connection::new(msg.message_id(), self.frame_timeout);
        if let Err((e, msg)) = conn.enqueue(msg) {
            return self.refuse(group, msg, OpCode::HelloResponse, e.status());
        }
        tracing::debug!(channel = number, address = %addr, connected, "connecting");
        let io = Io {
            stream: Arc::new(stream),
            conn,
            connected,
            write_blocked: false,
            starving: false,
            scheduled: connected,
            hangup: false,
            in_partial: false,
            socket_shared: false,
        };
        if connected {
            self.to_write.push(number);
        }
        self.insert(number, group, Kind::Io(Box::new(io)));
    }

    fn open_listener(&mut self, group: Arc<GroupShared>, mut msg: Message) {
        let number = msg.channel();
        let addr = match Address::from_message(&msg) {
            Ok(a) => a,
            Err(e) => return self.refuse(group, msg, OpCode::WelcomeResponse, e.status()),
        };
        let listener = match Listener::bind(&addr) {
            Ok(l) => l,
            Err((status, e)) => {
                tracing::debug!(channel = number, address = %addr, error = %e, ?status, "listen failed");
                return self.refuse(group, msg, OpCode::WelcomeResponse, status);
            }
        };
        tracing::debug!(channel = number, address = %listener.local_addr_string(), "listening");
        let listener = ListenerState {
            listener,
            opened_id: msg.message_id(),
            paused: false,
        };
        // Success comes back with origin application (tofu's behaviour).
        msg.header.opcode = OpCode::WelcomeResponse;
        msg.header.origin = Origin::Application;
        msg.header.status = Status::Success;
        self.outbox.push(&group, msg);
        self.insert(number, group, Kind::Listener(listener));
    }

    /// A Hello/Welcome request that could not even start: the request comes back as `reply`
    /// with the status, then the channel's final Signal.
    fn refuse(&mut self, group: Arc<GroupShared>, msg: Message, reply: OpCode, status: Status) {
        let number = msg.channel();
        let mid = msg.message_id();
        self.outbox
            .push(&group, notify::refusal(msg, reply, status));
        // Posted to the channel meanwhile: it never opened.
        let send = self
            .shared
            .lock_table()
            .record(number)
            .map(|r| Arc::clone(&r.send));
        if let Some(send) = send {
            send.close_outbound(&mut self.writer.pending, self.shared.pool.buffers());
            let pool = &self.shared.pool;
            for msg in unpend(&mut self.writer.pending, pool, &mut self.writer.spent) {
                hand_back(&mut self.outbox, &group, msg, Status::ChannelClosed);
            }
        }
        let closed = notify::channel_closed(self.shared.pool.message(), number, mid);
        self.outbox.push(&group, closed);
        self.shared.lock_table().release(number);
    }

    fn insert(&mut self, number: u16, group: Arc<GroupShared>, kind: Kind) {
        let token = Token(self.next_token);
        self.next_token += 1;
        let send = self
            .shared
            .lock_table()
            .record(number)
            .map(|r| Arc::clone(&r.send))
            .unwrap_or_default();
        let mut ch = Box::new(Channel {
            number,
            token,
            group,
            send,
            registered: false,
            touched: false,
            closing: None,
            kind,
        });
        let interest = ch.interest();
        match self.poller.register(ch.raw(), token, interest) {
            Ok(()) => ch.registered = true,
            Err(e) => {
                tracing::warn!(channel = number, error = %e, "poller registration failed");
                mark(&mut self.marked, &mut ch, Status::CommunicationFailed);
            }
        }
        self.by_token.insert(token, number);
        if let Some(old) = self.channels.insert(number, ch) {
            // The table never hands out a live number; keep the old one's messages anyway.
            tracing::error!(channel = number, "channel number reused while live");
            self.finish(old, Status::ChannelClosed, true);
        }
    }

    fn destroy_group(&mut self, group: u32) {
        let numbers: Vec<u16> = self
            .channels
            .values()
            .filter(|c| c.group.id == group)
            .map(|c| c.number)
            .collect();
        for n in numbers {
            if let Some(ch) = self.channels.remove(&n) {
                self.finish(ch, Status::ShutdownStarted, false);
            }
        }
    }

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
                    mark(&mut self.marked, ch, Status::ConnectFailed);
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
                    mark(&mut self.marked, ch, Status::CommunicationFailed);
                }
            }
        }
        if let Some(ch) = self.channels.get(&number) {
            if ch.closing.is_some() && !self.marked.contains(&number) {
                self.marked.push(number);
            }
        }
    }

    fn accept(&mut self, number: u16) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let Some(ch) = self.channels.get(&number) else {
                return;
            };
            let Kind::Listener(l) = &ch.kind else { return };
            let stream = match l.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    // Out of descriptors or memory: the pending connection stays pending and
                    // level-triggered readiness would spin. Stop watching for a while.
                    tracing::warn!(listener = number, error = %e, "accept failed; backing off");
                    if let Some(ch) = self.channels.get_mut(&number) {
                        if let Kind::Listener(l) = &mut ch.kind {
                            l.paused = true;
                        }
                        touch(&mut self.touched, ch);
                        self.paused.push((Instant::now() + ACCEPT_BACKOFF, number));
                    }
                    return;
                }
            };
            let group = Arc::clone(&ch.group);
            let Some(new) = self.shared.lock_table().allocate(group.id) else {
                tracing::warn!(
                    listener = number,
                    "no free channel number; connection dropped"
                );
                continue;
            };
            tracing::debug!(listener = number, channel = new, peer = %stream.peer_string(), "accepted");
            let io = Io {
                stream: Arc::new(stream),
                conn: Connection::new(0, self.frame_timeout),
                connected: true,
                write_blocked: false,
                starving: false,
                scheduled: false,
                hangup: false,
                in_partial: false,
                socket_shared: false,
            };
            self.insert(new, group, Kind::Io(Box::new(io)));
        }
    }

    /// Reads and decodes until the socket is drained, the per-event budget is spent, the
    /// pool runs dry, or the channel must close.
    fn read(&mut self, number: u16) -> ReadEnd {
        let Some(ch) = self.channels.get_mut(&number) else {
            return ReadEnd::NotRead;
        };
        let Kind::Io(io) = &mut ch.kind else {
            return ReadEnd::NotRead;
        };
        if io.starving || io.conn.bye_received() {
            return ReadEnd::NotRead;
        }
        let pool = &self.shared.pool;
        let deliveries = &mut self.deliveries;
        let spare = &mut self.spare;
        // Frames decoded and not yet counted as held (counted per batch by `hold_all`).
        let pending = std::cell::Cell::new(0);
        let mut supply = || take_spare(spare, pool, pending.get());
        let mut outcome = None;
        let mut end = ReadEnd::Budget;
        for _ in 0..READS_PER_EVENT {
            let n = match io.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    outcome = Some(Status::PeerDisconnected);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    end = ReadEnd::WouldBlock;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(channel = number, error = %e, "receive failed");
                    outcome = Some(Status::RecvFailed);
                    break;
                }
            };
            let out = RefCell::new((&mut *deliveries, &mut self.outbox));
            let group = &ch.group;
            let allowed = || pool.max().saturating_sub(pool.held() + pending.get());
            // Small frames received whole go to the application as chunks it decodes itself
            // (see `Frames`), as many as it may still hold; after the messages before them.
            let mut take = |bytes: &[u8], k: usize| {
                let (d, o) = &mut *out.borrow_mut();
                pool.hold_all(d);
                pending.set(0);
                o.extend(group, d);
                let mut chunk = pool.buffers().get();
                chunk.reserve(bytes.len());
                chunk.extend_from_slice(bytes);
                o.push_frames(group, Frames::new(pool, chunk, k, number));
            };
            let whole = Whole {
                max_len: WHOLE_MAX,
                allowed: &allowed,
                take: &mut take,
            };
            let r = io.conn.handle_read(
                &self.read_buf[..n],
                self.now,
                &mut supply,
                &mut |mut m| {
                    m.header.channel = number;
                    pending.set(pending.get() + 1);
                    out.borrow_mut().0.push(m);
                },
                Some(whole),
            );
            match r {
                // A short read almost always means the socket is drained; level-triggered
                // readiness (or a re-armed one-shot poll) reports any rest. After a hang-up,
                // read on to the end of stream to learn how it ended.
                Ok(RecvStop::Drained) if n < self.read_buf.len() && !io.hangup => {
                    end = ReadEnd::WouldBlock;
                    break;
                }
                Ok(RecvStop::Drained) => {}
                Ok(RecvStop::Starved) => {
                    // Read interest is dropped until messages come back (see reconcile).
                    tracing::debug!(channel = number, "pool empty: reading paused");
                    io.starving = true;
                    self.starved.push(number);
                    end = ReadEnd::Starved;
                    break;
                }
                Ok(RecvStop::ByeResponse) => {
                    tracing::debug!(channel = number, "ByeResponse received; closing");
                    outcome = Some(Status::ChannelClosed);
                    break;
                }
                Err(e) => {
                    tracing::debug!(channel = number, error = %e, "peer sent an invalid frame");
                    outcome = Some(e.status());
                    break;
                }
            }
        }
        if !io.in_partial && io.conn.poll_timeout().is_some() {
            io.in_partial = true;
            self.partial.push(number);
        }
        pool.hold_all(&mut self.deliveries);
        if end == ReadEnd::Starved {
            // Not a received frame: not counted as held.
            self.deliveries.push(pool_empty_signal(pool, number));
        }
        self.outbox.extend(&ch.group, &mut self.deliveries);
        if let Some(status) = outcome {
            mark(&mut self.marked, ch, status);
            end = ReadEnd::Closed;
        }
        end
    }

    fn retry_starved(&mut self) {
        if self.starved.is_empty() || (self.spare.is_empty() && !self.shared.pool.can_receive()) {
            return;
        }
        // In order, until one starves again: then there is nothing to read into for the
        // rest either (they wait, and that one goes last, so each gets its turn). Trying
        // them all would cost a pass over every starved channel per message given back.
        let starved = std::mem::take(&mut self.starved);
        let mut again = None;
        for (i, &number) in starved.iter().enumerate() {
            if again.is_some() {
                break;
            }
            let Some(ch) = self.channels.get_mut(&number) else {
                continue;
            };
            let Kind::Io(io) = &mut ch.kind else { continue };
            let pool = &self.shared.pool;
            let deliveries = &mut self.deliveries;
            let spare = &mut self.spare;
            let pending = std::cell::Cell::new(0);
            let r = io.conn.resume(
                &mut || take_spare(spare, pool, pending.get()),
                &mut |mut m| {
                    m.header.channel = number;
                    pending.set(pending.get() + 1);
                    deliveries.push(m);
                },
            );
            let mut close = None;
            match r {
                Ok(RecvStop::Starved) => again = Some(i),
                Ok(RecvStop::Drained) => {
                    tracing::debug!(channel = number, "reading resumed");
                    io.starving = false;
                    touch(&mut self.touched, ch);
                }
                Ok(RecvStop::ByeResponse) => close = Some(Status::ChannelClosed),
                Err(e) => close = Some(e.status()),
            }
            self.shared.pool.hold_all(&mut self.deliveries);
            self.outbox.extend(&ch.group, &mut self.deliveries);
            if let Some(s) = close {
                mark(&mut self.marked, ch, s);
            }
        }
        if let Some(i) = again {
            self.starved.extend_from_slice(&starved[i + 1..]);
            self.starved.push(starved[i]);
        }
    }

    fn write_scheduled(&mut self) {
        let to_write = std::mem::take(&mut self.to_write);
        for &number in &to_write {
            let Some(ch) = self.channels.get_mut(&number) else {
                continue;
            };
            if let Kind::Io(io) = &mut ch.kind {
                io.scheduled = false;
            }
            let blocked = matches!(&ch.kind, Kind::Io(io) if io.write_blocked);
            if ch.closing.is_none() && !blocked {
                // A write-blocked channel waits for SEND readiness instead of a failing writev.
                write_channel(ch, &mut self.writer, self.shared.pool.buffers());
                touch(&mut self.touched, ch);
                if ch.closing.is_some() {
                    self.marked.push(number);
                }
            }
        }
        self.to_write = to_write;
        self.to_write.clear();
        self.recycle_sent();
    }

    /// Written messages: keep some for receiving, return the rest to the pool in one go;
    /// written run buffers go back to the engine's spares.
    fn recycle_sent(&mut self) {
        let w = &mut self.writer;
        for (group, msg, status) in w.refused.drain(..) {
            hand_back(&mut self.outbox, &group, msg, status);
        }
        self.shared.pool.buffers().put_all(&mut w.spent);
        if w.sent.is_empty() {
            return;
        }
        let mut i = 0;
        while i < w.sent.len() && self.spare.len() < SPARE_MAX {
            if self.shared.pool.owns(&w.sent[i]) {
                self.spare.push(w.sent.swap_remove(i));
            } else {
                i += 1;
            }
        }
        self.shared.pool.put_all(&mut w.sent);
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

    fn delete_marked(&mut self) {
        while let Some(number) = self.marked.pop() {
            if let Some(ch) = self.channels.remove(&number) {
                let reason = ch.closing.unwrap_or(Status::ChannelClosed);
                self.finish(ch, reason, true);
            }
        }
    }

    /// Removes a channel: deregisters it, hands its unsent messages back with `reason` and
    /// sends the final ChannelClosed Signal (when `report`), closes the socket (RST) and frees
    /// its number.
    fn finish(&mut self, mut ch: Box<Channel>, reason: Status, report: bool) {
        ch.send.keep_gate();
        self.by_token.remove(&ch.token);
        if ch.registered {
            if let Err(e) = self.poller.deregister(ch.raw(), ch.token) {
                tracing::debug!(channel = ch.number, error = %e, "deregister failed");
            }
        }
        // Posts still queued for the reactor come back after those it had taken; later
        // posts are refused (the channel is gone).
        let pool = &self.shared.pool;
        let number = ch.number;
        ch.send
            .close_outbound(&mut self.writer.pending, pool.buffers());
        let mut later = unpend(&mut self.writer.pending, pool, &mut self.writer.spent).into_iter();
        match &mut ch.kind {
            Kind::Io(io) => {
                let back = io
                    .conn
                    .close(reason, &mut later, number, &mut || pool.message());
                io.conn.take_spent(&mut self.writer.spent);
                self.deliveries.extend(back);
            }
            Kind::Listener(l) => {
                for mut msg in later {
                    notify::mark_handed_back(&mut msg, reason);
                    self.deliveries.push(msg);
                }
                let closed = notify::channel_closed(pool.message(), number, l.opened_id);
                self.deliveries.push(closed);
            }
        }
        let group = Arc::clone(&ch.group);
        // Close the socket (SO_LINGER {on, 0} makes it a reset; a UDS listener unlinks its
        // path) and free the number before the final Signal is delivered: once the
        // application sees it, the socket is gone and posts to the channel are refused.
        drop(ch);
        self.shared.lock_table().release(number);
        tracing::debug!(channel = number, ?reason, "channel closed");
        if report {
            self.outbox.extend(&group, &mut self.deliveries);
        } else {
            self.deliveries.clear();
        }
    }

    fn exit(&mut self) {
        // What is already produced goes out before the commands handed back below.
        self.outbox.deliver();
        self.shared.close_commands();
        let numbers: Vec<u16> = self.channels.keys().copied().collect();
        for n in numbers {
            if let Some(ch) = self.channels.remove(&n) {
                self.finish(ch, Status::ShutdownStarted, true);
            }
        }
        self.outbox.deliver();
        tracing::debug!("reactor stopped");
    }
}

impl Channel {
    /// Lets posting threads write directly when the reactor has nothing to write here:
    /// connected, send queue empty, no bye-type frame queued or written, not closing, not
    /// waiting for writability, no hang-up seen.
    fn free_gate(&mut self) {
        let Kind::Io(io) = &mut self.kind else { return };
        if !io.connected || io.write_blocked || io.hangup || self.closing.is_some() {
            return;
        }
        if !io.conn.is_idle() {
            return;
        }
        if !io.socket_shared {
            io.socket_shared = true;
            self.send.set_socket(Arc::clone(&io.stream));
        }
        self.send.free_gate();
    }
}

/// A message to receive into: a spare one, else from the pool (see `Pool::for_receive`).
fn take_spare(
    spare: &mut Vec<Message>,
    pool: &crate::engine::pool::Pool,
    pending: usize,
) -> Option<Message> {
    if spare.is_empty() && !pool.for_receive(REFILL_BATCH, spare, pending) {
        return None;
    }
    spare.pop()
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

fn hand_back(outbox: &mut Outbox, group: &Arc<GroupShared>, mut msg: Message, status: Status) {
    notify::mark_handed_back(&mut msg, status);
    outbox.push(group, msg);
}

/// Messages for the application gathered during a loop iteration, one queue per group, so
/// each group's mailbox is locked (and a waiting thread woken) once per iteration instead of
/// once per channel event. Order within a group is the order of production.
#[derive(Default)]
struct Outbox {
    groups: Vec<(Arc<GroupShared>, Vec<Inbound>)>,
    /// Emptied queues kept for reuse.
    spare: Vec<Vec<Inbound>>,
}

impl Outbox {
    fn queue(&mut self, group: &Arc<GroupShared>) -> &mut Vec<Inbound> {
        let i = match self.groups.iter().rposition(|(g, _)| Arc::ptr_eq(g, group)) {
            Some(i) => i,
            None => {
                let q = self.spare.pop().unwrap_or_default();
                self.groups.push((Arc::clone(group), q));
                self.groups.len() - 1
            }
        };
        &mut self.groups[i].1
    }

    fn push(&mut self, group: &Arc<GroupShared>, msg: Message) {
        self.queue(group).push(Inbound::Msg(msg));
    }

    /// Frames the application decodes itself (see `Frames`).
    fn push_frames(&mut self, group: &Arc<GroupShared>, frames: Frames) {
        self.queue(group).push(Inbound::Frames(frames));
    }

    /// Moves all of `msgs` (emptied) to `group`'s queue.
    fn extend(&mut self, group: &Arc<GroupShared>, msgs: &mut Vec<Message>) {
        if !msgs.is_empty() {
            self.queue(group).extend(msgs.drain(..).map(Inbound::Msg));
        }
    }

    /// Delivers every queue to its group.
    fn deliver(&mut self) {
        for (group, mut q) in self.groups.drain(..) {
            group.deliver_all(&mut q);
            if self.spare.len() < 16 {
                self.spare.push(q);
            }
        }
    }
}

/// Scratch state of the write path, kept across loop iterations.
struct Writer {
    /// Where small frames are copied to be written as one slice (see `Connection::gather`).
    stage: Vec<u8>,
    /// Messages whose frames were written, waiting to be reused or pooled.
    sent: Vec<Message>,
    /// What is taken from a channel's `Outbound` on its way into the connection.
    pending: VecDeque<Pending>,
    /// Buffers of written runs, for the engine's spares.
    spent: Vec<Vec<u8>>,
    /// Messages the connection refused (cannot happen for validated posts), to hand back.
    refused: Vec<(Arc<GroupShared>, Message, Status)>,
    /// Frames completely written since the reactor last woke up.
    frames: u64,
}

/// Writes as much of the channel's queue as the socket takes, one `writev` per batch. First
/// takes what posting threads queued since (see `Outbound`).
fn write_channel(ch: &mut Channel, w: &mut Writer, bufs: &crate::engine::pool::Buffers) {
    if !ch.send.take_gate() {
        // A posting thread is writing (it asks the reactor to write when done) or handing a
        // started frame over (its command follows).
        return;
    }
    let Kind::Io(io) = &mut ch.kind else { return };
    if !io.connected {
        return; // taken once connected
    }
    ch.send.take_outbound(&mut w.pending, bufs);
    for p in w.pending.drain(..) {
        match p {
            Pending::Run { bytes, frames } => io.conn.enqueue_run(bytes, frames),
            Pending::Message(msg) => {
                if let Err((e, msg)) = io.conn.enqueue(msg) {
                    ch.send.sub(1, encoded_len(&msg) as u64);
                    w.refused.push((Arc::clone(&ch.group), msg, e.status()));
                }
            }
        }
    }
    if io.conn.bye_queued() {
        ch.send.keep_gate(); // no direct write once a bye-type frame is queued
    }
    write_queue(ch, &mut w.stage, &mut w.sent);
    if let Kind::Io(io) = &mut ch.kind {
        let done = io.conn.take_completed();
        if done.frames > 0 {
            ch.send.sub(done.frames, done.bytes);
            w.frames += done.frames;
        }
        io.conn.take_spent(&mut w.spent);
    }
}

fn write_queue(ch: &mut Channel, stage: &mut Vec<u8>, sent: &mut Vec<Message>) {
    let Kind::Io(io) = &mut ch.kind else { return };
    if !io.connected {
        return;
    }
    loop {
        if !io.conn.wants_send() {
            io.write_blocked = false;
            return;
        }
        let mut iov = [IoSlice::new(&[]); IOV_LEN];
        let n = io.conn.gather(stage, &mut iov);
        let offered: usize = iov[..n].iter().map(|s| s.len()).sum();
        match io.stream.write_vectored(&iov[..n]) {
            Ok(w) => {
                io.conn.advance(w, sent);
                if w < offered {
                    // The socket buffer is full: wait for writability.
                    io.write_blocked = true;
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.write_blocked = true;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(channel = ch.number, error = %e, "send failed");
                if ch.closing.is_none() {
                    ch.closing = Some(Status::SendFailed);
                }
                return;
            }
        }
    }
}
