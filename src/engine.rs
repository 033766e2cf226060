//! The engine (tofu's `Ampe`) and its channel groups: the application-facing half.
//!
//! An [`Engine`] owns one I/O thread running the reactor, a message [`Pool`] and the channel
//! table. Application threads talk to it through [`ChannelGroup`]s: `post` hands a message to
//! the reactor, `wait_receive` takes the next message the engine or a peer produced.
//!
//! Guarantees:
//! * **Order.** Messages posted on one channel are written in post order (an `oob` message
//!   goes ahead of those not yet started, so several `oob` messages go out newest first).
//!   Messages received on a channel are delivered in arrival order. A channel's final
//!   `ChannelClosed` Signal follows everything the engine hands back at its close; only a
//!   message posted while the close was already under way can come back after it.
//! * **Nothing lost silently.** A posted message is either written to the socket or handed
//!   back to its group with an engine status: at channel close (the close reason), when its
//!   channel no longer exists (`ChannelClosed`) or at engine shutdown (`ShutdownStarted`).
//!   A post that fails returns the message with the error.
//! * **Thread safety.** `Engine` and `ChannelGroup` are `Send + Sync`; every method may be
//!   called from any thread. Messages are moved, never shared.
//! * **Teardown.** Dropping a group closes its channels abortively and wakes its waiters with
//!   `ShutdownStarted`; dropping the engine first is also safe (groups then report
//!   `ShutdownStarted` once their queues are empty).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::channels::{ChannelTable, Direct, Posted, SendState};
use crate::message::{Header, Message, OpCode, Origin, CHANNEL_UNASSIGNED};
use crate::padded::Padded;
use crate::poller::{Backend, Poller, Waker};
use crate::pool::{Allocation, Pool, PoolOptions};
use crate::reactor::Reactor;
use crate::status::{Error, Status};

/// Engine settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Message pool sizes (tofu `initialPoolMsgs` / `maxPoolMsgs`).
    pub pool: PoolOptions,
    /// The OS readiness mechanism of the reactor.
    pub backend: Backend,
    /// Per-channel bound on messages posted but not yet written.
    pub send_limit: SendLimit,
    /// A peer that starts a frame and then sends nothing for this long has its channel
    /// closed with `RecvFailed` (a slowloris peer cannot hold a channel forever). `None`
    /// waits forever, as Zig tofu does. Default: 30 s.
    pub frame_timeout: Option<Duration>,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            pool: PoolOptions::default(),
            backend: Backend::default(),
            send_limit: SendLimit::default(),
            frame_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// The send-side high-water mark of every channel: once a channel holds this many posted,
/// not yet written messages (or bytes of their frames), `post` hands further messages back
/// with `SendQueueFull` instead of queueing without bound. A single message is always
/// accepted by an empty queue, whatever its size.
///
/// Zig tofu has no such limit; a peer that stops reading made its queues grow forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendLimit {
    /// Most messages queued per channel.
    pub messages: u64,
    /// Most frame bytes (header, text headers, body) queued per channel.
    pub bytes: u64,
}

impl SendLimit {
    /// No limit (Zig tofu's behaviour).
    pub const UNLIMITED: SendLimit = SendLimit {
        messages: u64::MAX,
        bytes: u64::MAX,
    };
}

impl Default for SendLimit {
    /// 65536 messages or 64 MiB per channel.
    fn default() -> SendLimit {
        SendLimit {
            messages: 65_536,
            bytes: 64 << 20,
        }
    }
}

/// A failed [`ChannelGroup::post`]: the error and the message, handed back to the caller.
#[derive(Debug)]
pub struct PostError {
    /// Why the post failed.
    pub error: Error,
    /// The message, unchanged except for the status byte (and origin) set by validation.
    pub message: Message,
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "post failed: {}", self.error)
    }
}

impl std::error::Error for PostError {}

/// A messaging engine: one reactor thread, one pool, one channel table.
///
/// Several engines may live in one process. Dropping the engine stops its thread: every
/// channel is closed abortively, unsent messages go back to their groups with
/// `ShutdownStarted`, and groups still alive report `ShutdownStarted` once drained.
#[doc(alias = "Ampe")]
#[doc(alias = "Reactor")]
pub struct Engine {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts an engine and its I/O thread; returns once the thread runs.
    ///
    /// Fails with `CommunicationFailed` when the poller cannot be created (the cause is
    /// logged) and `AllocationFailed` when the thread cannot be started.
    pub fn new(options: EngineOptions) -> Result<Engine, Error> {
        let poller = Poller::new(options.backend).map_err(|e| {
            tracing::debug!(error = %e, backend = %options.backend, "poller creation failed");
            Error::CommunicationFailed
        })?;
        let pool = Pool::new(options.pool);
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            commands: Padded::new(Mutex::new(Commands {
                queue: Vec::new(),
                open: true,
            })),
            sleeping: Padded::new(AtomicBool::new(false)),
            waker: poller.waker(),
            shutdown: AtomicBool::new(false),
            table: Padded::new(Mutex::new(ChannelTable::new())),
            groups: Mutex::new(Vec::new()),
            backend: options.backend,
            iterations: Padded::new(AtomicU64::new(0)),
            direct_turn: Padded::new(AtomicBool::new(false)),
            direct_writes: Padded::new(AtomicU64::new(0)),
            handovers: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            send_limit: options.send_limit,
            frame_timeout: options.frame_timeout,
        });
        let weak = Arc::downgrade(&shared);
        pool.set_on_refill(Box::new(move || {
            if let Some(s) = weak.upgrade() {
                s.wake();
            }
        }));
        let reactor = Reactor::new(Arc::clone(&shared), poller);
        let thread = std::thread::Builder::new()
            .name("tofu-reactor".into())
            .spawn(move || reactor.run())
            .map_err(|e| {
                tracing::debug!(error = %e, "reactor thread spawn failed");
                Error::AllocationFailed
            })?;
        Ok(Engine {
            shared,
            thread: Some(thread),
        })
    }

    /// An engine with default options.
    pub fn with_defaults() -> Result<Engine, Error> {
        Engine::new(EngineOptions::default())
    }

    /// Creates a channel group.
    #[doc(alias = "create")]
    pub fn create_group(&self) -> Result<ChannelGroup, Error> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Err(Error::ShutdownStarted);
        }
        static NEXT_GROUP: AtomicU32 = AtomicU32::new(1);
        let group = Arc::new(GroupShared {
            id: NEXT_GROUP.fetch_add(1, Ordering::Relaxed),
            destroyed: AtomicBool::new(false),
            mailbox: Padded::new(Mutex::new(Mailbox {
                queue: VecDeque::new(),
                waiters: 0,
                state: MailboxState::Open,
            })),
            cond: Condvar::new(),
            taken: Padded::new(Mutex::new(VecDeque::new())),
        });
        let mut groups = self.shared.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.retain(|g| g.strong_count() > 0);
        groups.push(Arc::downgrade(&group));
        drop(groups);
        Ok(ChannelGroup {
            group,
            shared: Arc::clone(&self.shared),
            destroyed: AtomicBool::new(false),
        })
    }

    /// Takes a message from the engine's pool (`None` only for `PoolOnly` on an empty pool).
    /// The message returns to the pool when dropped.
    pub fn get(&self, how: Allocation) -> Option<Message> {
        self.shared.pool.get(how)
    }

    /// Puts a message into the engine's pool (any message, also one not from this pool).
    pub fn put(&self, msg: Message) {
        self.shared.pool.put(msg)
    }

    /// The engine's pool.
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// The poller backend in use.
    pub fn backend(&self) -> Backend {
        self.shared.backend
    }

    /// Counters of the reactor thread, for monitoring and benchmarks.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            iterations: self.shared.iterations.load(Ordering::Relaxed),
            sleeps: self.shared.sleeps.load(Ordering::Relaxed),
            direct_writes: self.shared.direct_writes.load(Ordering::Relaxed),
            handovers: self.shared.handovers.load(Ordering::Relaxed),
        }
    }
}

/// Reactor counters (see [`Engine::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Loop iterations so far.
    pub iterations: u64,
    /// Times the reactor blocked in the poller with no timeout (it has no periodic timer, so
    /// an idle engine's counters stay still: every wake-up has a cause).
    pub sleeps: u64,
    /// Messages written by the posting thread itself: posted to an idle channel while the
    /// reactor slept (at most one per reactor sleep), so no thread hand-off was needed.
    pub direct_writes: u64,
    /// Direct writes that could not write the whole frame (full socket buffer, failing
    /// socket) and handed the message to the reactor, which wrote the rest or reported the
    /// failure. Not counted in `direct_writes`.
    pub handovers: u64,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.force_wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("reactor thread panicked");
            }
        }
        // The reactor is gone: refuse further posts, hand back what is still queued.
        self.shared.close_commands();
        self.shared.close_outbounds();
        let groups =
            std::mem::take(&mut *self.shared.groups.lock().unwrap_or_else(|p| p.into_inner()));
        for g in groups.iter().filter_map(Weak::upgrade) {
            g.close(MailboxState::EngineGone);
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.shared.backend)
            .finish()
    }
}

/// A set of channels and one receive queue, used from application threads.
///
/// Every channel belongs to the group that created it (by Hello or Welcome) or, for an
/// accepted connection, to its listener's group. All results, statuses and peer messages for
/// those channels arrive through this group's [`wait_receive`](ChannelGroup::wait_receive).
///
/// Share a group between threads with `Arc` or scoped threads. [`destroy`](Self::destroy) (or
/// drop) closes its channels abortively and wakes every blocked `wait_receive` with
/// `ShutdownStarted`.
pub struct ChannelGroup {
    group: Arc<GroupShared>,
    shared: Arc<Shared>,
    destroyed: AtomicBool,
}

impl ChannelGroup {
    /// Validates `msg` (see [`Message::validate_for_post`]) and queues it for the reactor.
    ///
    /// A Request, Response or Signal without `oob` whose frame is at most 4 KiB is encoded
    /// by the calling thread into its channel's queue, and the message returns to the pool
    /// at once: the reactor writes the queued frames in one system call without copying
    /// them. Should the channel close before they are written, they come back through
    /// `wait_receive` decoded into messages with the same content. Other messages (bye-type,
    /// `oob`, larger ones) are queued whole, in the same order.
    ///
    /// A Request, Response or Signal for an idle channel (nothing queued) posted while the
    /// reactor sleeps is written by the calling thread instead: one non-blocking write, and
    /// the message returns to the pool. At most one post per reactor sleep does so, and none
    /// after the reactor wrote more than one frame since it woke, so a stream of posts is
    /// still written in batches by the reactor. See [`EngineStats::direct_writes`].
    ///
    /// Returns the header as posted: the channel number (new for Hello/Welcome requests) and
    /// the message_id. Success means "accepted" (queued, or written), not "delivered": every
    /// later outcome comes back through `wait_receive`. On failure the message is handed back
    /// with the error:
    /// validation errors, `InvalidChannelNumber` (no such live channel),
    /// `InvalidMessageChannelGroup` (another group's channel), `SendQueueFull` (the channel
    /// already holds [`SendLimit`] worth of unsent messages), `NotificationDisabled`
    /// (engine shut down), `ShutdownStarted` (this group destroyed), `AllocationFailed`
    /// (no free channel number).
    pub fn post(&self, mut msg: Message) -> Result<Header, PostError> {
        if let Err(error) = msg.validate_for_post() {
            return Err(PostError {
                error,
                message: msg,
            });
        }
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(PostError {
                error: Error::ShutdownStarted,
                message: msg,
            });
        }
        if msg.header.channel == CHANNEL_UNASSIGNED {
            return self.open(msg);
        }
        let header = msg.header;
        if msg.header.opcode == OpCode::ByeSignal && msg.header.oob {
            // A local abort acts at once instead of waiting behind queued frames (after the
            // checks of the table, which the reactor makes again).
            return match self.send_state(msg.header.channel) {
                Ok(_) => self.submit_post(msg, false),
                Err(error) => Err(refused(Some(msg), error)),
            };
        }
        let limit = (
            self.shared.send_limit.messages,
            self.shared.send_limit.bytes,
        );
        let direct = matches!(
            msg.header.opcode,
            OpCode::Request | OpCode::Response | OpCode::Signal
        );
        let bufs = self.shared.pool.buffers();
        // Posts `slot` to `send`; a direct write needs the send state afterwards.
        let post_to = |send: &Arc<SendState>, slot: &mut Option<Message>| {
            let turn = || self.shared.take_direct_turn();
            let r = send.post(slot, limit, direct, turn, bufs);
            let keep = matches!(r, Ok(Posted::Direct(_))).then(|| Arc::clone(send));
            (r, keep)
        };
        // The channels this thread posted to lately need no lookup in the engine's table;
        // one that closed since is looked up again (its number may be in use once more).
        let mut slot = Some(msg);
        let (outcome, send) = match with_recent(self.group.id, header.channel, |send| {
            post_to(send, &mut slot)
        }) {
            Some((Err(Error::InvalidChannelNumber), _)) | None => {
                let send = match self.send_state(header.channel) {
                    Ok(send) => send,
                    Err(error) => return Err(refused(slot, error)),
                };
                remember(self.group.id, header.channel, &send);
                post_to(&send, &mut slot)
            }
            Some(x) => x,
        };
        let socket = match outcome {
            Ok(Posted::Direct(socket)) => socket,
            Ok(Posted::Queued(was_empty)) => return self.queued(was_empty, header),
            Err(error) => return Err(refused(slot, error)),
        };
        let (Some(msg), Some(send)) = (slot, send) else {
            unreachable!("a direct write leaves the message and its send state to the caller")
        };
        // A data message for an idle channel while the reactor sleeps is written right here
        // (see `SendState`): no hand-off to the reactor and back.
        match send.write_direct(msg, &socket) {
            Direct::Written { flush } => {
                self.shared.direct_writes.fetch_add(1, Ordering::Relaxed);
                if flush {
                    // Not refused unless the engine is gone, and then nothing is queued.
                    let _ = self.shared.submit(Command::Flush {
                        channel: header.channel,
                    });
                }
                Ok(header)
            }
            Direct::HandOver { msg, written } => {
                self.shared.handovers.fetch_add(1, Ordering::Relaxed);
                send.count(crate::wire::encoded_len(&msg) as u64);
                let cmd = Command::HandOver {
                    group: Arc::clone(&self.group),
                    msg,
                    written,
                };
                self.submit_or_refuse(cmd, false)
            }
            // The gate closed meanwhile: queued as usual, and (the queue being empty a
            // moment ago) without the limit check, like any post to an empty queue.
            Direct::NotTaken(msg) => match send.push(msg, bufs) {
                Ok(was_empty) => self.queued(was_empty, header),
                Err(msg) => Err(refused(Some(msg), Error::InvalidChannelNumber)),
            },
        }
    }

    /// The send state of this group's live channel `ch` (one lookup in the engine's table).
    fn send_state(&self, ch: u16) -> Result<Arc<SendState>, Error> {
        match self.shared.lock_table().record(ch) {
            Some(r) if r.group == self.group.id => Ok(Arc::clone(&r.send)),
            None => Err(Error::InvalidChannelNumber),
            Some(_) => Err(Error::InvalidMessageChannelGroup),
        }
    }

    /// A post went to its channel's queue; the reactor is told when the queue was empty.
    fn queued(&self, was_empty: bool, header: Header) -> Result<Header, PostError> {
        if was_empty {
            // The reactor takes the queue when told; the command costs no system call while
            // it is awake. Refused only once the engine is gone, and then the channel was
            // closed (its queue handed back) before.
            let _ = self.shared.submit(Command::Flush {
                channel: header.channel,
            });
        }
        Ok(header)
    }

    /// A Hello or Welcome request: a new channel number, then the reactor opens the channel.
    fn open(&self, mut msg: Message) -> Result<Header, PostError> {
        let allocated = {
            let mut table = self.shared.lock_table();
            let ch = table.allocate(self.group.id);
            if let Some(r) = ch.and_then(|ch| table.record(ch)) {
                r.send.count(crate::wire::encoded_len(&msg) as u64);
            }
            ch
        };
        let Some(ch) = allocated else {
            msg.header.status = Status::AllocationFailed;
            return Err(PostError {
                error: Error::AllocationFailed,
                message: msg,
            });
        };
        msg.header.channel = ch;
        self.submit_post(msg, true)
    }

    /// Queues a message for the reactor as a command.
    fn submit_post(&self, msg: Message, new_channel: bool) -> Result<Header, PostError> {
        let cmd = Command::Post {
            group: Arc::clone(&self.group),
            msg,
        };
        self.submit_or_refuse(cmd, new_channel)
    }

    fn submit_or_refuse(&self, cmd: Command, new_channel: bool) -> Result<Header, PostError> {
        let header = match &cmd {
            Command::Post { msg, .. } | Command::HandOver { msg, .. } => msg.header,
            _ => unreachable!("only posts are submitted here"),
        };
        match self.shared.submit(cmd) {
            Ok(()) => Ok(header),
            Err(cmd) => {
                if new_channel {
                    self.shared.lock_table().release(header.channel);
                }
                let (Command::Post { mut msg, .. } | Command::HandOver { mut msg, .. }) = cmd
                else {
                    unreachable!("submit hands back the command it was given")
                };
                msg.header.status = Status::NotificationDisabled;
                Err(PostError {
                    error: Error::NotificationDisabled,
                    message: msg,
                })
            }
        }
    }

    /// Waits for the next message: `timeout` `None` waits forever, `Some(ZERO)` polls once.
    ///
    /// Small frames a peer sent are handed to the group as bytes and decoded here, on the
    /// calling thread, into a message of the engine's pool (see the README's architecture
    /// notes); the result is the same message either way.
    ///
    /// `Ok(None)` means the timeout passed. `Err(ShutdownStarted)` means the group was
    /// destroyed, or the engine is gone and every queued message has been taken.
    /// The caller owns the message; dropping it returns it to the pool.
    #[doc(alias = "waitReceive")]
    pub fn wait_receive(&self, timeout: Option<Duration>) -> Result<Option<Message>, Error> {
        self.group.wait(timeout)
    }

    /// Puts a message into this group's receive queue, waking a `wait_receive`, without
    /// involving the reactor (tofu's cross-thread wake-up).
    ///
    /// * `None`: the queue gets a Signal with origin engine, status `ReceiverUpdate`,
    ///   channel 0 and message_id 0.
    /// * `Some(msg)`: the message keeps opcode, channel and message_id and gets origin
    ///   application and status `ReceiverUpdate`.
    ///
    /// Fails with `ShutdownStarted` when the group is destroyed or its engine is gone; the
    /// message then returns to the pool.
    #[doc(alias = "updateReceiver")]
    pub fn update_receiver(&self, msg: Option<Message>) -> Result<(), Error> {
        let msg = match msg {
            Some(mut m) => {
                m.header.origin = Origin::Application;
                m.header.status = Status::ReceiverUpdate;
                m
            }
            None => engine_signal(self.shared.pool.message(), Status::ReceiverUpdate, 0, 0),
        };
        if self.group.deliver_if_open(msg) {
            Ok(())
        } else {
            Err(Error::ShutdownStarted)
        }
    }

    /// Closes every channel of this group abortively (RST, no notifications), discards its
    /// queued messages into the pool, and wakes blocked `wait_receive` calls with
    /// `ShutdownStarted`. Blocks until the reactor has done so. Idempotent; drop calls it.
    pub fn destroy(&self) {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Seen by the reactor before anything this group posted from now on (and racing
        // posts): such posts are discarded instead of opening channels nobody owns.
        self.group.destroyed.store(true, Ordering::SeqCst);
        let done = Arc::new(Completion::default());
        let cmd = Command::DestroyGroup {
            group: self.group.id,
            done: Arc::clone(&done),
        };
        if self.shared.submit(cmd).is_ok() {
            done.wait();
        }
        self.group.close(MailboxState::Destroyed);
    }

    /// This group's process-wide id.
    pub fn id(&self) -> u32 {
        self.group.id
    }
}

impl Drop for ChannelGroup {
    fn drop(&mut self) {
        self.destroy();
    }
}

impl std::fmt::Debug for ChannelGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelGroup")
            .field("id", &self.group.id)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Recently used send states, per thread.

/// Entries of [`RECENT`].
const RECENT_LEN: usize = 16;

/// A recently used send state: its group's process-wide id, its channel number, and
/// whether it was used since the last miss on its slot.
type Recent = Option<(u32, u16, Arc<SendState>, Cell<bool>)>;

thread_local! {
    /// The send states this thread posted to lately, by group id (unique in the process)
    /// and channel number, so that a post to them takes no engine-wide lock. An entry is
    /// only trusted while its channel's queue accepts posts: a closed one makes `post` look
    /// the number up in the engine's table again. Stale entries keep only a small closed
    /// `SendState` alive until they are replaced.
    static RECENT: RefCell<[Recent; RECENT_LEN]> = const { RefCell::new([const { None }; RECENT_LEN]) };
}

/// `f(send state)` if this thread used the send state of (`group`, `channel`) lately.
/// (No reference count changes: `f` borrows the entry.)
fn with_recent<R>(group: u32, channel: u16, f: impl FnOnce(&Arc<SendState>) -> R) -> Option<R> {
    RECENT
        .try_with(|r| {
            let r = r.borrow();
            match &r[usize::from(channel) % RECENT_LEN] {
                Some((g, c, s, used)) if *g == group && *c == channel => {
                    used.set(true);
                    Some(f(s))
                }
                _ => None,
            }
        })
        .ok()
        .flatten()
}

/// The post error for a message left in `slot` (its status set to the error's).
fn refused(slot: Option<Message>, error: Error) -> PostError {
    let Some(mut message) = slot else {
        unreachable!("a refused post keeps its message")
    };
    message.header.status = error.status();
    PostError { error, message }
}

/// Remembers `send` as the send state of (`group`, `channel`) for this thread.
///
/// An entry used since the last miss on its slot gets a second chance instead of being
/// replaced, so a thread posting round-robin to many channels does not keep evicting the
/// few it posts to often (nor pay for the churn).
fn remember(group: u32, channel: u16, send: &Arc<SendState>) {
    let _ = RECENT.try_with(|r| {
        let mut r = r.borrow_mut();
        let slot = &mut r[usize::from(channel) % RECENT_LEN];
        match slot {
            Some((_, _, _, used)) if used.get() => used.set(false),
            _ => *slot = Some((group, channel, Arc::clone(send), Cell::new(false))),
        }
    });
}

/// What application threads ask of the reactor.
pub(crate) enum Command {
    /// A validated message for a channel (new for Hello/Welcome requests).
    Post {
        group: Arc<GroupShared>,
        msg: Message,
    },
    /// A message whose frame a posting thread started to write directly (`written` bytes,
    /// maybe none): the reactor writes the rest before anything else on the channel.
    HandOver {
        group: Arc<GroupShared>,
        msg: Message,
        written: usize,
    },
    /// A posting thread wrote directly while messages were queued: write them now.
    Flush { channel: u16 },
    /// Close every channel of a group without notifications, then signal `done`.
    DestroyGroup { group: u32, done: Arc<Completion> },
}

impl Command {
    /// Gives a command up (engine gone): posted messages go back to their group.
    pub(crate) fn abandon(self, status: Status) {
        match self {
            Command::Post { group, mut msg } | Command::HandOver { group, mut msg, .. } => {
                let opened = matches!(msg.opcode(), OpCode::HelloRequest | OpCode::WelcomeRequest);
                let (channel, id) = (msg.channel(), msg.message_id());
                msg.header.origin = Origin::Engine;
                msg.header.status = status;
                group.deliver(msg);
                if opened {
                    // Its channel never opened; it still ends with the final Signal.
                    let m = engine_signal(Message::new(), Status::ChannelClosed, channel, id);
                    group.deliver(m);
                }
            }
            Command::DestroyGroup { done, .. } => done.complete(),
            Command::Flush { .. } => {}
        }
    }
}

pub(crate) struct Commands {
    pub(crate) queue: Vec<Command>,
    /// False once the reactor stopped taking commands.
    pub(crate) open: bool,
}

/// Engine state shared by the handles and the reactor thread.
///
/// Fields written often by different threads sit on cache lines of their own ([`Padded`]):
/// the command queue (posters and the reactor), `sleeping` (the reactor; read per post), the
/// channel table (posters) and the reactor's counters; the rest is read-mostly.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) commands: Padded<Mutex<Commands>>,
    /// The reactor is (about to be) blocked in the poller and needs a wake-up.
    pub(crate) sleeping: Padded<AtomicBool>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) table: Padded<Mutex<ChannelTable>>,
    groups: Mutex<Vec<Weak<GroupShared>>>,
    backend: Backend,
    pub(crate) iterations: Padded<AtomicU64>,
    pub(crate) sleeps: AtomicU64,
    /// Set by the reactor while it sleeps: one post may write directly (see `SendState`).
    pub(crate) direct_turn: Padded<AtomicBool>,
    direct_writes: Padded<AtomicU64>,
    handovers: AtomicU64,
    send_limit: SendLimit,
    pub(crate) frame_timeout: Option<Duration>,
}

impl Shared {
    pub(crate) fn lock_commands(&self) -> MutexGuard<'_, Commands> {
        // Commands are pushed and swapped whole; a panic cannot leave them half-updated.
        self.commands.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_table(&self) -> MutexGuard<'_, ChannelTable> {
        // Table operations complete before any call that could panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the one direct write allowed per reactor sleep. One, not all: a thread posting
    /// a stream of messages would otherwise make a system call per message instead of
    /// letting the reactor write them in batches.
    fn take_direct_turn(&self) -> bool {
        self.direct_turn.load(Ordering::Relaxed) && self.direct_turn.swap(false, Ordering::AcqRel)
    }

    /// Queues a command; hands it back if the reactor no longer takes commands.
    /// Costs no syscall when the reactor is awake.
    pub(crate) fn submit(&self, cmd: Command) -> Result<(), Command> {
        {
            let mut c = self.lock_commands();
            if !c.open || self.shutdown.load(Ordering::SeqCst) {
                return Err(cmd);
            }
            c.queue.push(cmd);
        }
        self.wake();
        Ok(())
    }

    /// Stops taking commands and hands back those still queued (engine shutdown).
    pub(crate) fn close_commands(&self) {
        let leftovers = {
            let mut c = self.lock_commands();
            c.open = false;
            std::mem::take(&mut c.queue)
        };
        for cmd in leftovers {
            cmd.abandon(Status::ShutdownStarted);
        }
    }

    /// After the reactor stopped: closes the `Outbound` queue of every channel it did not
    /// close itself (a Hello still in the command queue, a post that raced the shutdown) and
    /// hands what they hold back to their groups with `ShutdownStarted`. Later posts to
    /// them are refused.
    fn close_outbounds(&self) {
        let sends: Vec<(u32, Arc<crate::channels::SendState>)> = self
            .lock_table()
            .records()
            .map(|(g, s)| (g, Arc::clone(s)))
            .collect();
        let groups: Vec<Arc<GroupShared>> = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let (mut pending, mut spent) = (VecDeque::new(), Vec::new());
        for (g, send) in sends {
            send.close_outbound(&mut pending, self.pool.buffers());
            let msgs = crate::channels::unpend(&mut pending, &self.pool, &mut spent);
            let Some(group) = groups.iter().find(|x| x.id == g) else {
                continue; // the group is gone: nobody to hand them to
            };
            for mut m in msgs {
                m.header.origin = Origin::Engine;
                m.header.status = Status::ShutdownStarted;
                group.deliver(m);
            }
        }
    }

    /// Wakes the reactor if it sleeps (or is about to).
    pub(crate) fn wake(&self) {
        // A plain load first: while the reactor is awake a post writes no shared cache line.
        // (The command queue's mutex orders this load after the reactor's `sleeping` store
        // whenever the reactor could have missed the queued command.)
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.force_wake();
        }
    }

    fn force_wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "waking the reactor failed");
        }
    }
}

/// Signals one waiting thread once.
#[derive(Default)]
pub(crate) struct Completion {
    done: Mutex<bool>,
    cond: Condvar,
}

impl Completion {
    pub(crate) fn complete(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cond.notify_all();
    }

    fn wait(&self) {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*d {
            d = self.cond.wait(d).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum MailboxState {
    Open,
    /// The engine stopped: queued messages can still be taken, then `ShutdownStarted`.
    EngineGone,
    /// The group was destroyed: nothing more is delivered or taken.
    Destroyed,
}

struct Mailbox {
    queue: VecDeque<Inbound>,
    waiters: usize,
    state: MailboxState,
}

/// The receive side of a group, shared with the reactor.
pub(crate) struct GroupShared {
    pub(crate) id: u32,
    destroyed: AtomicBool,
    mailbox: Padded<Mutex<Mailbox>>,
    cond: Condvar,
    /// Messages a `wait_receive` moved out of the mailbox in one go, older than anything
    /// still in the mailbox. Only application threads lock it, so taking a message does not
    /// touch the lock the reactor delivers through (lock order: mailbox, then taken).
    taken: Padded<Mutex<VecDeque<Inbound>>>,
}

impl GroupShared {
    fn lock(&self) -> MutexGuard<'_, Mailbox> {
        // Queue operations cannot panic half-way.
        self.mailbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_taken(&self) -> MutexGuard<'_, VecDeque<Inbound>> {
        // Queue operations cannot panic half-way.
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the group's destruction started.
    pub(crate) fn is_destroyed(&self) -> bool {
        self.destroyed.load(Ordering::SeqCst)
    }

    /// Appends a message from the reactor. A destroyed group drops it (back to the pool):
    /// its application has given the group up.
    pub(crate) fn deliver(&self, msg: Message) {
        let _ = self.deliver_if_open(msg);
    }

    /// Appends several messages with one lock and at most one wake-up.
    pub(crate) fn deliver_all(&self, msgs: &mut Vec<Inbound>) {
        if msgs.is_empty() {
            return;
        }
        let mut mb = self.lock();
        if mb.state == MailboxState::Destroyed {
            drop(mb);
            msgs.clear();
            return;
        }
        mb.queue.extend(msgs.drain(..));
        let wake = mb.waiters > 0;
        drop(mb);
        if wake {
            self.cond.notify_all();
        }
    }

    fn deliver_if_open(&self, msg: Message) -> bool {
        let mut mb = self.lock();
        if mb.state != MailboxState::Open {
            return false;
        }
        mb.queue.push_back(Inbound::Msg(msg));
        let wake = mb.waiters > 0;
        drop(mb);
        if wake {
            self.cond.notify_one();
        }
        true
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Option<Message>, Error> {
        // Fast path: a message an earlier call already moved out of the mailbox.
        if let Some(m) = take_one(&mut self.lock_taken()) {
            return Ok(Some(m));
        }
        // The deadline is computed when the first wait starts (no clock read otherwise);
        // a timeout too large to represent is as good as none.
        let mut deadline: Option<Option<Instant>> = None;
        let mut mb = self.lock();
        loop {
            if mb.state == MailboxState::Destroyed {
                return Err(Error::ShutdownStarted);
            }
            if !mb.queue.is_empty() {
                // Take everything at once: the next calls find it in `taken` without
                // touching the mailbox the reactor delivers to.
                let mut taken = self.lock_taken();
                if taken.is_empty() {
                    std::mem::swap(&mut *taken, &mut mb.queue);
                } else {
                    taken.extend(mb.queue.drain(..));
                }
                let m = take_one(&mut taken);
                let more = !taken.is_empty() && mb.waiters > 0;
                drop(taken);
                drop(mb);
                if more {
                    self.cond.notify_one(); // another waiter can take from `taken`
                }
                return Ok(m);
            }
            if let Some(m) = take_one(&mut self.lock_taken()) {
                return Ok(Some(m)); // moved there by another thread meanwhile
            }
            if mb.state == MailboxState::EngineGone {
                return Err(Error::ShutdownStarted);
            }
            let deadline = *deadline
                .get_or_insert_with(|| timeout.and_then(|t| Instant::now().checked_add(t)));
            mb.waiters += 1;
            mb = match deadline {
                None => self.cond.wait(mb).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        mb.waiters -= 1;
                        return Ok(None);
                    }
                    self.cond
                        .wait_timeout(mb, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            mb.waiters -= 1;
        }
    }

    fn close(&self, state: MailboxState) {
        let drained = {
            let mut mb = self.lock();
            if mb.state == MailboxState::Destroyed {
                return;
            }
            mb.state = state;
            if state == MailboxState::Destroyed {
                let mut q = std::mem::take(&mut mb.queue);
                q.extend(self.lock_taken().drain(..));
                q
            } else {
                VecDeque::new()
            }
        };
        drop(drained); // messages return to the pool outside the lock
        self.cond.notify_all();
    }
}

/// What a group's receive queue holds, in arrival order.
pub(crate) enum Inbound {
    Msg(Message),
    Frames(Frames),
}

/// The next message of `q`: a queued one, or the next frame of a chunk decoded now.
fn take_one(q: &mut VecDeque<Inbound>) -> Option<Message> {
    loop {
        let m = match q.front_mut()? {
            Inbound::Msg(_) => match q.pop_front() {
                Some(Inbound::Msg(m)) => Some(m),
                _ => None,
            },
            Inbound::Frames(f) => {
                let m = f.next();
                if f.left == 0 {
                    q.pop_front(); // the buffer goes back to the pool's spares
                }
                m
            }
        };
        if m.is_some() {
            return m;
        }
    }
}

/// Frames received whole on one channel, copied back to back by the reactor and decoded by
/// the application thread that takes them (see `Connection::take_whole`): the reactor hands
/// over one buffer instead of a message per frame, and each message is taken from the pool
/// and given back to it by the same thread. Only the frames' bytes cross between threads.
///
/// Every frame counts as held by the application (see `Pool::for_receive`) from delivery
/// until its message is given back; frames dropped undecoded (a destroyed group) are
/// released at once.
pub(crate) struct Frames {
    bytes: Vec<u8>,
    pos: usize,
    left: usize,
    /// The receiving channel's number (frames carry the sender's).
    channel: u16,
    home: Arc<crate::pool::PoolShared>,
}

impl Frames {
    /// `count` whole frames in `bytes`, received on `channel`; counted as held at once.
    pub(crate) fn new(pool: &Pool, bytes: Vec<u8>, count: usize, channel: u16) -> Frames {
        pool.hold_n(count);
        Frames {
            bytes,
            pos: 0,
            left: count,
            channel,
            home: pool.home(),
        }
    }

    /// The next frame as a message of the pool (sanitised as every received frame is).
    fn next(&mut self) -> Option<Message> {
        if self.left == 0 {
            return None;
        }
        let len = crate::wire::frame_len(&self.bytes[self.pos..]);
        let mut m = self.home.message();
        crate::wire::decode_own(&self.bytes[self.pos..self.pos + len], &mut m);
        m.header.channel = self.channel;
        m.held = true; // counted at delivery; released when given back
        self.pos += len;
        self.left -= 1;
        Some(m)
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.home.release_n(self.left);
        self.home.buffers.put(std::mem::take(&mut self.bytes));
    }
}

/// Builds the engine Signal that ends every channel: origin engine, status `ChannelClosed`.
pub(crate) fn channel_closed_signal(pool: &Pool, channel: u16, message_id: u64) -> Message {
    engine_signal(pool.message(), Status::ChannelClosed, channel, message_id)
}

/// Turns `m` into a Signal from the engine (its buffers are cleared).
fn engine_signal(mut m: Message, status: Status, channel: u16, message_id: u64) -> Message {
    m.reset();
    m.header = Header::new(OpCode::Signal);
    m.header.origin = Origin::Engine;
    m.header.status = status;
    m.header.channel = channel;
    m.header.message_id = message_id;
    m
}

/// Builds the `PoolEmpty` Signal for a starved channel. It comes from the pool's `Always`
/// path, so the application dropping it adds a message to the pool.
pub(crate) fn pool_empty_signal(pool: &Pool, channel: u16) -> Message {
    let m = pool.get(Allocation::Always).unwrap_or_default();
    engine_signal(m, Status::PoolEmpty, channel, 0)
}
