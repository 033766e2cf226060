//! The state the application threads and the reactor share: the command queue and wake-up
//! ([`Shared`]), each group's mailbox ([`GroupShared`]), what a mailbox holds ([`Inbound`],
//! [`Frames`]) and the engine's own notifications. The reactor reads and writes it; it never
//! names the reactor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::replies::{Answer, Expect, Replies};
use super::{EngineOptions, ReceiveLimit, SendLimit};
use crate::engine::channels::ChannelTable;
use crate::engine::pool::{unpack, Pool, HELD_ONE};
use crate::proto::message::{Message, OpCode, Origin};
use crate::proto::notify;
use crate::proto::status::{Error, Status};
use crate::sys::poller::{self, Backend};
use crate::util::padded::Padded;

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
    /// Posts wait in the channel's outbound queue (it went from empty to non-empty, or a
    /// posting thread wrote directly while others queued): write them.
    Queued { channel: u16 },
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
                    let m = notify::channel_closed(Message::new(), channel, id);
                    group.deliver(m);
                }
            }
            Command::DestroyGroup { done, .. } => done.complete(),
            Command::Queued { .. } => {}
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
    pub(crate) waker: Arc<poller::Waker>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) table: Padded<Mutex<ChannelTable>>,
    pub(crate) groups: Mutex<Vec<Weak<GroupShared>>>,
    pub(crate) backend: Backend,
    pub(crate) iterations: Padded<AtomicU64>,
    pub(crate) sleeps: AtomicU64,
    /// Set by the reactor while it sleeps: one post may write directly (see `SendState`).
    pub(crate) direct_turn: Padded<AtomicBool>,
    pub(crate) direct_writes: Padded<AtomicU64>,
    pub(crate) handovers: AtomicU64,
    /// Frames posting threads sealed into busy TLS channels (see `SendState`).
    pub(crate) seals: AtomicU64,
    pub(crate) send_limit: SendLimit,
    /// Each group's receive limit (see `GroupShared::may_receive`).
    pub(crate) receive_limit: ReceiveLimit,
    pub(crate) frame_timeout: Option<Duration>,
    /// Configurations of `tls|` channels.
    pub(crate) tls: crate::engine::tls::Configs,
}

impl Shared {
    /// The state of a new engine: its pool, the waker of its poller and its options.
    pub(crate) fn new(pool: Pool, waker: Arc<poller::Waker>, options: &EngineOptions) -> Shared {
        Shared {
            pool,
            commands: Padded::new(Mutex::new(Commands {
                queue: Vec::new(),
                open: true,
            })),
            sleeping: Padded::new(AtomicBool::new(false)),
            waker,
            shutdown: AtomicBool::new(false),
            table: Padded::new(Mutex::new(ChannelTable::new())),
            groups: Mutex::new(Vec::new()),
            backend: options.backend,
            iterations: Padded::new(AtomicU64::new(0)),
            direct_turn: Padded::new(AtomicBool::new(false)),
            direct_writes: Padded::new(AtomicU64::new(0)),
            handovers: AtomicU64::new(0),
            seals: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            send_limit: options.send_limit,
            receive_limit: ReceiveLimit {
                messages: options.receive_limit.messages.max(1),
                bytes: options.receive_limit.bytes.max(1),
            },
            frame_timeout: options.frame_timeout,
            tls: crate::engine::tls::Configs {
                #[cfg(feature = "tls")]
                server: options.tls_server.clone(),
                #[cfg(feature = "tls")]
                client: options.tls_client.clone(),
            },
        }
    }

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
    pub(crate) fn take_direct_turn(&self) -> bool {
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
    pub(crate) fn close_outbounds(&self) {
        let sends: Vec<(u32, Arc<crate::engine::channels::SendState>)> = self
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
            let msgs = crate::engine::channels::unpend(&mut pending, &self.pool, &mut spent);
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

    pub(crate) fn force_wake(&self) {
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

    pub(crate) fn wait(&self) {
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

/// Times [`GroupShared::await_answer`] (`request`, `connect`, `disconnect`) yields the CPU
/// before it sleeps on the mailbox. An answer often comes within microseconds, from threads
/// that may share this thread's CPU: yielding lets them run at once, and a thread that is
/// not asleep on the condition variable costs the reactor no wake-up call and the scheduler
/// no extra switch. Bounded: 100 `sched_yield`s are some tens of microseconds of CPU when
/// the answer is slow. `tofu bench`, pinned round trip: TCP 28.7 -> 24.1 us, UDS 20.6 ->
/// 18.1 us; free threads: TCP 66-75 -> 31 us, UDS 57-62 -> 26-35 us (docs/benchmarks.md).
const ANSWER_YIELDS: u32 = 100;

pub(crate) struct Mailbox {
    queue: VecDeque<Inbound>,
    /// Threads blocked in `wait`.
    waiters: usize,
    /// Tasks waiting in `poll_receive`.
    tasks: Tasks,
    state: MailboxState,
}

/// The wakers of tasks waiting for a message, each under the key of its future, so that a
/// future dropped while pending takes its waker out (cancellation leaves nothing behind).
#[derive(Default)]
struct Tasks {
    next_key: u64,
    wakers: Vec<(u64, Waker)>,
}

impl Tasks {
    /// Registers `waker` under `key` (given a new key the first time), replacing the one a
    /// previous poll of the same future left.
    fn register(&mut self, key: &mut Option<u64>, waker: &Waker) {
        if let Some(k) = *key {
            if let Some((_, w)) = self.wakers.iter_mut().find(|(kk, _)| *kk == k) {
                if !w.will_wake(waker) {
                    w.clone_from(waker);
                }
                return;
            }
        }
        let k = *key.get_or_insert_with(|| {
            self.next_key += 1;
            self.next_key
        });
        self.wakers.push((k, waker.clone()));
    }

    fn remove(&mut self, key: u64) {
        if let Some(i) = self.wakers.iter().position(|(k, _)| *k == key) {
            self.wakers.swap_remove(i);
        }
    }

    /// Takes every waker, to be woken once the lock is released ([`wake_all`]). The list
    /// left in its place is this thread's spare, so neither side allocates per delivery.
    fn take(&mut self) -> Vec<(u64, Waker)> {
        if self.wakers.is_empty() {
            return Vec::new(); // allocates nothing
        }
        let spare = SPARE_WAKERS.try_with(|s| s.take()).unwrap_or_default();
        std::mem::replace(&mut self.wakers, spare)
    }
}

thread_local! {
    /// An emptied waker list kept by the thread that woke it, for its next [`Tasks::take`].
    static SPARE_WAKERS: std::cell::Cell<Vec<(u64, Waker)>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Wakes the tasks [`Tasks::take`] took, outside the mailbox lock, and keeps the emptied list.
fn wake_all(mut tasks: Vec<(u64, Waker)>) {
    for (_, w) in tasks.drain(..) {
        w.wake();
    }
    if tasks.capacity() > 0 && tasks.capacity() <= 1024 {
        let _ = SPARE_WAKERS.try_with(|s| s.set(tasks));
    }
}

/// The receive side of a group, shared with the reactor.
pub(crate) struct GroupShared {
    pub(crate) id: u32,
    pub(crate) destroyed: AtomicBool,
    mailbox: Padded<Mutex<Mailbox>>,
    cond: Condvar,
    /// Messages a `wait_receive` moved out of the mailbox in one go, older than anything
    /// still in the mailbox. Only application threads lock it, so taking a message does not
    /// touch the lock the reactor delivers through (lock order: mailbox, then taken).
    taken: Padded<Mutex<VecDeque<Inbound>>>,
    /// Answers awaited by `request`, `connect` and `listen` (lock order: mailbox, taken,
    /// replies).
    replies: Mutex<Replies>,
    /// `replies` is active: messages taken from the mailbox must be routed.
    routing: AtomicBool,
    /// The group's side of the receive limit (see [`ReceiveRoom`]).
    room: ReceiveRoom,
}

/// A group's receive limit: the frames received from peers that wait in the group's
/// queues (the reactor's outbox, the mailbox, `taken`), with their bytes, packed as the
/// pool packs its count. The reactor counts frames as it decodes them ([`hold`]) and stops
/// reading a channel of the group while the count is at the limit; a frame is uncounted
/// when it leaves the queues ([`leave`]): handed to a receive, or routed to a request.
/// So a group whose application does not receive stops only its own channels.
///
/// [`hold`]: GroupShared::hold
/// [`leave`]: GroupShared::leave
struct ReceiveRoom {
    held: Padded<AtomicU64>,
    limit: ReceiveLimit,
    /// The reactor found no room: the next frame to leave calls `wake`.
    alert: Padded<AtomicBool>,
    wake: Option<Box<dyn Fn() + Send + Sync>>,
}

impl GroupShared {
    /// A new group's receive side, with a process-wide unique id and the default receive
    /// limit, waking nobody when room frees (for tests).
    #[cfg(test)]
    pub(crate) fn new() -> GroupShared {
        GroupShared::with_limit(ReceiveLimit::default(), None)
    }

    /// A new group's receive side, with a process-wide unique id; `wake` wakes the reactor
    /// when room frees after it found none.
    pub(crate) fn with_limit(
        limit: ReceiveLimit,
        wake: Option<Box<dyn Fn() + Send + Sync>>,
    ) -> GroupShared {
        static NEXT_GROUP: AtomicU32 = AtomicU32::new(1);
        GroupShared {
            id: NEXT_GROUP.fetch_add(1, Ordering::Relaxed),
            destroyed: AtomicBool::new(false),
            mailbox: Padded::new(Mutex::new(Mailbox {
                queue: VecDeque::new(),
                waiters: 0,
                tasks: Tasks::default(),
                state: MailboxState::Open,
            })),
            cond: Condvar::new(),
            taken: Padded::new(Mutex::new(VecDeque::new())),
            replies: Mutex::new(Replies::default()),
            routing: AtomicBool::new(false),
            room: ReceiveRoom {
                held: Padded::new(AtomicU64::new(0)),
                limit,
                alert: Padded::new(AtomicBool::new(false)),
                wake,
            },
        }
    }

    /// Counts `frames` received frames of `bytes` bytes in all as waiting in this group's
    /// queues (the reactor, as it decodes them; the same frames the pool holds).
    pub(crate) fn hold(&self, frames: usize, bytes: usize) {
        if frames > 0 {
            let add = frames as u64 * HELD_ONE + bytes as u64;
            self.room.held.fetch_add(add, Ordering::SeqCst);
        }
    }

    /// A message left the group's queues (to a receive, or to a request's answer slot): if
    /// it is a held frame (`held` is its `Message::held`), it no longer counts, and a
    /// reactor that found no room is woken.
    fn leave(&self, held: u32) {
        if held == 0 {
            return;
        }
        let r = &self.room;
        r.held
            .fetch_sub(HELD_ONE + u64::from(held), Ordering::SeqCst);
        // SeqCst: ordered after the count update, as the reactor sets the flag before it
        // reads the count (see `may_receive`), so one of the two sees the other.
        if r.alert.load(Ordering::SeqCst) && r.alert.swap(false, Ordering::SeqCst) {
            if let Some(wake) = &r.wake {
                wake();
            }
        }
    }

    /// How many more received frames may wait in this group's queues (0 once they hold the
    /// receive limit's frames or bytes); `pending` frames are about to be counted.
    pub(crate) fn receive_room(&self, pending: usize) -> usize {
        let (count, bytes) = unpack(self.room.held.load(Ordering::SeqCst));
        let limit = self.room.limit;
        if bytes >= limit.bytes {
            return 0;
        }
        limit.messages.saturating_sub(count + pending)
    }

    /// True when a frame more may be queued (`pending` are about to be); otherwise the
    /// next frame to leave the queues wakes the reactor, and false.
    pub(crate) fn may_receive(&self, pending: usize) -> bool {
        if self.receive_room(pending) > 0 {
            return true;
        }
        self.room.alert.store(true, Ordering::SeqCst);
        // A frame that left since the check above found the alert clear.
        self.receive_room(pending) > 0
    }

    /// Frames (and bytes) received from peers waiting in this group's queues.
    pub(crate) fn queued(&self) -> (usize, usize) {
        unpack(self.room.held.load(Ordering::SeqCst))
    }

    fn lock(&self) -> MutexGuard<'_, Mailbox> {
        // Queue operations cannot panic half-way.
        self.mailbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_replies(&self) -> MutexGuard<'_, Replies> {
        // Map operations cannot panic half-way.
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Awaits the answer to the message (`channel`, `id`) that is about to be posted.
    ///
    /// For a Hello or Welcome, what the mailbox holds is routed first, without the new
    /// slot: it was delivered before the channel number was handed out, so it belongs to an
    /// earlier channel that had the same number (its final Signal, say, which the
    /// application has not taken yet), never to this one.
    pub(crate) fn expect(&self, channel: u16, id: u64, expect: Expect) {
        // Held until the slot exists, so that nothing is delivered in between.
        let _drained = matches!(expect, Expect::Hello | Expect::Welcome).then(|| {
            let mut mb = self.lock();
            let mut taken = self.lock_taken();
            self.drain_mailbox(&mut mb, &mut taken);
            (mb, taken)
        });
        self.lock_replies().add(channel, id, expect);
        self.routing.store(true, Ordering::SeqCst);
    }

    /// Stops awaiting it (the post failed, the wait timed out or was dropped). An answer that
    /// came meanwhile goes to the application like any other message.
    pub(crate) fn unexpect(&self, channel: u16, id: u64) {
        let mut mb = self.lock();
        let mut taken = self.lock_taken();
        let mut r = self.lock_replies();
        let came = r.remove(channel, id);
        self.routing.store(r.is_active(), Ordering::SeqCst);
        drop(r);
        let (Some(Answer::Reply(m)) | Some(Answer::Refused(m))) = came else {
            return;
        };
        // Handed over already (see `Replies::remove`): it no longer counts, as in the pool.
        taken.push_back(Inbound::Msg(m));
        drop(taken);
        let task = mb.tasks.wakers.pop();
        let threads = mb.waiters > 0;
        drop(mb);
        if threads {
            self.cond.notify_one();
        }
        if let Some((_, w)) = task {
            w.wake();
        }
    }

    /// Moves `incoming` (what the reactor delivered) behind `taken`, routing it on the way
    /// when answers are awaited: answers go to their waiters, the rest keeps its order.
    /// Returns whether an answer came, and pushes the wakers of the tasks to wake to `wake`.
    ///
    /// Each message is routed once, when it leaves the mailbox, never again while it waits
    /// in `taken`: an answer cannot be there before its slot exists (a slot is added before
    /// its message is posted, and the mailbox lock is held from the `routing` check to the
    /// move), and a channel's final Signal left there must not fail a later request on a
    /// channel that got the same number. It also keeps routing linear when the application
    /// leaves messages queued.
    fn admit(
        &self,
        incoming: &mut VecDeque<Inbound>,
        taken: &mut VecDeque<Inbound>,
        wake: &mut Vec<Waker>,
    ) -> bool {
        if !self.routing.load(Ordering::SeqCst) {
            if taken.is_empty() {
                std::mem::swap(taken, incoming);
            } else {
                taken.extend(incoming.drain(..));
            }
            return false;
        }
        let mut r = self.lock_replies();
        let before = wake.len();
        let mut answered = false;
        while let Some(m) = take_one(incoming) {
            let held = m.held;
            match r.route(m, wake) {
                Some(m) => taken.push_back(Inbound::Msg(m)),
                None => {
                    answered = true;
                    self.leave(held);
                }
            }
        }
        self.routing.store(r.is_active(), Ordering::SeqCst);
        answered || wake.len() > before
    }

    /// Moves what the reactor delivered into `taken` and routes it: answers go to their
    /// requests, whose threads and tasks are woken.
    fn drain_mailbox(&self, mb: &mut Mailbox, taken: &mut VecDeque<Inbound>) {
        let mut answers = Vec::new();
        if self.admit(&mut mb.queue, taken, &mut answers) {
            self.cond.notify_all(); // a thread awaiting its answer
        }
        for w in answers {
            w.wake();
        }
    }

    /// One step of awaiting the answer to (`channel`, `id`): routes what the mailbox holds,
    /// then `Ready` with the answer (`None`: the slot is gone), or `Pending` with `waker`
    /// (for a task) kept until something may have changed. Threads pass no waker and wait
    /// on the mailbox's condition variable (see [`await_answer`](Self::await_answer)).
    fn answer_step(
        &self,
        mb: &mut MutexGuard<'_, Mailbox>,
        channel: u16,
        id: u64,
        task: Option<(&mut Option<u64>, &Waker)>,
    ) -> Poll<Option<Answer>> {
        let mut wake = Vec::new();
        let answered;
        let left;
        // Only messages moved now need telling: what `taken` held before was announced
        // when it came (and every receiver looks there before it waits).
        let arrived = !mb.queue.is_empty();
        {
            let mut taken = self.lock_taken();
            answered = self.admit(&mut mb.queue, &mut taken, &mut wake);
            left = arrived && !taken.is_empty();
        }
        let mut r = self.lock_replies();
        if mb.state == MailboxState::Destroyed || mb.state == MailboxState::EngineGone {
            r.fail_all(&mut wake);
        }
        let waker = task.as_ref().map(|(_, w)| *w);
        let answer = r.take(channel, id, waker);
        let gone = answer.is_none() && !r.contains(channel, id);
        self.routing.store(r.is_active(), Ordering::SeqCst);
        drop(r);
        if answer.is_none() && !gone {
            if let Some((key, w)) = task {
                mb.tasks.register(key, w);
            }
        }
        // Messages for the application, or answers for other waiters, are waiting now.
        if answered || left {
            if mb.waiters > 0 {
                self.cond.notify_all();
            }
            if left {
                if let Some((_, w)) = mb.tasks.wakers.pop() {
                    wake.push(w);
                }
            }
        }
        for w in wake {
            w.wake();
        }
        match answer {
            Some(a) => Poll::Ready(Some(a)),
            None if gone => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// Blocks until the answer to (`channel`, `id`) comes or `deadline` passes (`None`; the
    /// slot is then removed, so a late answer goes to the application).
    pub(crate) fn await_answer(
        &self,
        channel: u16,
        id: u64,
        deadline: Option<Instant>,
    ) -> Option<Answer> {
        self.await_answer_or(channel, id, deadline, false)
    }

    /// [`await_answer`](Self::await_answer) for a caller that gives the channel up at the
    /// deadline: an answer that came meanwhile is still returned; otherwise nothing more of
    /// `channel` reaches the application, up to and including its final Signal.
    pub(crate) fn await_answer_or_abandon(
        &self,
        channel: u16,
        id: u64,
        deadline: Option<Instant>,
    ) -> Option<Answer> {
        self.await_answer_or(channel, id, deadline, true)
    }

    fn await_answer_or(
        &self,
        channel: u16,
        id: u64,
        deadline: Option<Instant>,
        abandon: bool,
    ) -> Option<Answer> {
        let mut mb = self.lock();
        let mut yields = ANSWER_YIELDS;
        loop {
            if let Poll::Ready(a) = self.answer_step(&mut mb, channel, id, None) {
                return a;
            }
            if yields > 0 && deadline.map_or(true, |d| Instant::now() < d) {
                yields -= 1;
                drop(mb);
                std::thread::yield_now();
                mb = self.lock();
                continue;
            }
            mb = match self.wait_mailbox(mb, deadline) {
                Some(mb) => mb,
                None if abandon => return self.abandon(channel, id),
                None => {
                    self.unexpect(channel, id);
                    return None;
                }
            };
        }
    }

    /// Stops awaiting (`channel`, `id`) and gives the channel up: the answer, if it came
    /// meanwhile; else every later message of `channel` is dropped, its final Signal too.
    fn abandon(&self, channel: u16, id: u64) -> Option<Answer> {
        let mut r = self.lock_replies();
        let came = r.remove(channel, id);
        if came.is_none() {
            r.swallow_channel(channel);
        }
        self.routing.store(r.is_active(), Ordering::SeqCst);
        came
    }

    /// [`await_answer`](Self::await_answer) for a task, without a deadline.
    pub(crate) fn poll_answer(
        &self,
        channel: u16,
        id: u64,
        key: &mut Option<u64>,
        waker: &Waker,
    ) -> Poll<Option<Answer>> {
        let mut mb = self.lock();
        let r = self.answer_step(&mut mb, channel, id, Some((key, waker)));
        if r.is_ready() {
            if let Some(k) = key.take() {
                mb.tasks.remove(k);
            }
        }
        r
    }

    /// Sleeps on the mailbox (counted as a waiter) until woken or `deadline` (`None`: no
    /// deadline) passes; `None` when it had passed, with the lock released.
    fn wait_mailbox<'a>(
        &self,
        mut mb: MutexGuard<'a, Mailbox>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, Mailbox>> {
        mb.waiters += 1;
        mb = match deadline {
            None => self.cond.wait(mb).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    mb.waiters -= 1;
                    return None;
                }
                self.cond
                    .wait_timeout(mb, d - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        mb.waiters -= 1;
        Some(mb)
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
        let tasks = mb.tasks.take();
        drop(mb);
        if wake {
            self.cond.notify_all();
        }
        wake_all(tasks);
    }

    pub(crate) fn deliver_if_open(&self, msg: Message) -> bool {
        let mut mb = self.lock();
        if mb.state != MailboxState::Open {
            return false;
        }
        mb.queue.push_back(Inbound::Msg(msg));
        let wake = mb.waiters > 0;
        let tasks = mb.tasks.take();
        drop(mb);
        if wake {
            self.cond.notify_one();
        }
        wake_all(tasks);
        true
    }

    /// The next message for a task: `Ready` with a message or `ShutdownStarted` (as
    /// [`wait`](Self::wait) returns), else `Pending` with `waker` registered under `key`
    /// until a delivery or the end of the group wakes it. A message is only taken when
    /// `Ready` is returned, so dropping a pending future loses nothing.
    pub(crate) fn poll_receive(
        &self,
        key: &mut Option<u64>,
        waker: &Waker,
    ) -> Poll<Result<Message, Error>> {
        self.poll_next(key, waker).map(|r| {
            r.map(|m| {
                self.leave(m.held);
                handed(m)
            })
        })
    }

    /// [`poll_receive`](Self::poll_receive) before the message is handed over.
    fn poll_next(&self, key: &mut Option<u64>, waker: &Waker) -> Poll<Result<Message, Error>> {
        let fast = {
            let mut taken = self.lock_taken();
            take_one(&mut taken).map(|m| (m, !taken.is_empty()))
        };
        if let Some((m, more)) = fast {
            let mut mb = self.lock();
            if let Some(k) = key.take() {
                mb.tasks.remove(k);
            }
            // Messages are left for others: wake one more waiting task, so none sleeps
            // while there is something to take.
            let next = if more { mb.tasks.wakers.pop() } else { None };
            drop(mb);
            if let Some((_, w)) = next {
                w.wake();
            }
            return Poll::Ready(Ok(m));
        }
        let mut mb = self.lock();
        if mb.state == MailboxState::Destroyed {
            return Poll::Ready(Err(Error::ShutdownStarted));
        }
        let m = {
            let mut taken = self.lock_taken();
            self.drain_mailbox(&mut mb, &mut taken);
            take_one(&mut taken)
        };
        if let Some(m) = m {
            if let Some(k) = key.take() {
                mb.tasks.remove(k);
            }
            // Others may be left in `taken`: let one more waiting task or thread look.
            let next = mb.tasks.wakers.pop();
            let threads = mb.waiters > 0;
            drop(mb);
            if let Some((_, w)) = next {
                w.wake();
            }
            if threads {
                self.cond.notify_one();
            }
            return Poll::Ready(Ok(m));
        }
        if mb.state == MailboxState::EngineGone {
            return Poll::Ready(Err(Error::ShutdownStarted));
        }
        mb.tasks.register(key, waker);
        Poll::Pending
    }

    /// A future that polled [`poll_receive`](Self::poll_receive) is gone: its waker too.
    pub(crate) fn forget(&self, key: &mut Option<u64>) {
        if let Some(k) = key.take() {
            self.lock().tasks.remove(k);
        }
    }

    /// The next message for a thread, waiting up to `timeout` (`None`: no limit);
    /// `Ok(None)` when it passed, `ShutdownStarted` once the group or engine is gone.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> Result<Option<Message>, Error> {
        self.wait_next(timeout).map(|m| {
            m.map(|m| {
                self.leave(m.held);
                handed(m)
            })
        })
    }

    /// [`wait`](Self::wait) before the message is handed over.
    fn wait_next(&self, timeout: Option<Duration>) -> Result<Option<Message>, Error> {
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
                self.drain_mailbox(&mut mb, &mut taken);
                let Some(m) = take_one(&mut taken) else {
                    continue; // everything was an answer for someone else
                };
                let m = Some(m);
                let more = !taken.is_empty();
                drop(taken);
                // Another waiting thread or task can take the rest from `taken`.
                let thread = more && mb.waiters > 0;
                let task = if more { mb.tasks.wakers.pop() } else { None };
                drop(mb);
                if thread {
                    self.cond.notify_one();
                }
                if let Some((_, w)) = task {
                    w.wake();
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
            mb = match self.wait_mailbox(mb, deadline) {
                Some(mb) => mb,
                None => return Ok(None),
            };
        }
    }

    pub(crate) fn close(&self, state: MailboxState) {
        let tasks;
        let drained = {
            let mut mb = self.lock();
            if mb.state == MailboxState::Destroyed {
                return;
            }
            mb.state = state;
            tasks = mb.tasks.take();
            let mut answers = Vec::new();
            self.lock_replies().fail_all(&mut answers);
            wake_all(answers.into_iter().map(|w| (0, w)).collect());
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
        wake_all(tasks);
    }
}

/// A received message leaves the group's queue for the application: it no longer counts
/// against the receive limit, which bounds what waits in queues, not what the application
/// keeps (see `ReceiveLimit`).
pub(crate) fn handed(mut m: Message) -> Message {
    m.release_hold();
    m
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
/// Every frame counts in the group's queue (see `GroupShared::hold`) from delivery until a
/// receive takes its message.
pub(crate) struct Frames {
    bytes: Vec<u8>,
    pos: usize,
    left: usize,
    /// The receiving channel's number (frames carry the sender's).
    channel: u16,
    home: Arc<crate::engine::pool::PoolShared>,
}

impl Frames {
    /// `count` whole frames in `bytes`, received on `channel` (the reactor counts them in
    /// the group's queue, see `GroupShared::hold`).
    pub(crate) fn new(pool: &Pool, bytes: Vec<u8>, count: usize, channel: u16) -> Frames {
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
        let len = crate::proto::wire::frame_len(&self.bytes[self.pos..]);
        let mut m = self.home.message();
        crate::proto::wire::decode_own(&self.bytes[self.pos..self.pos + len], &mut m);
        m.header.channel = self.channel;
        m.held = len as u32; // counted at delivery; released when given back
        self.pos += len;
        self.left -= 1;
        Some(m)
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.home.buffers.put(std::mem::take(&mut self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::replies::tests::{end, msg};

    #[test]
    fn a_final_signal_left_queued_does_not_fail_a_request_on_a_reused_number() {
        let g = GroupShared::new();
        // Channel 4's final Signal arrives while another request is awaited; the
        // application does not take it, so it waits in the queue.
        g.expect(9, 1, Expect::Response);
        g.deliver(end(4, 77));
        let soon = Some(Instant::now() + Duration::from_millis(10));
        assert!(
            g.await_answer(9, 1, soon).is_none(),
            "no answer was delivered"
        );
        // A later channel got number 4 again: a request on it gets its own Response.
        g.expect(4, 5, Expect::Response);
        g.deliver(msg(
            OpCode::Response,
            Origin::Application,
            Status::Success,
            4,
            5,
        ));
        let later = Some(Instant::now() + Duration::from_secs(5));
        match g.await_answer(4, 5, later) {
            Some(Answer::Reply(m)) => assert_eq!((m.channel(), m.message_id()), (4, 5)),
            other => panic!("the request got {other:?}, not its Response"),
        }
        // The old Signal still reaches the application, once.
        let first = g.wait(Some(Duration::ZERO)).unwrap().expect("the Signal");
        assert_eq!((first.opcode(), first.channel()), (OpCode::Signal, 4));
        assert!(g.wait(Some(Duration::ZERO)).unwrap().is_none());
    }

    #[test]
    fn what_an_earlier_channel_left_queued_does_not_answer_a_connect() {
        let g = GroupShared::new();
        // An earlier channel 4: its peer's first frame and its final Signal (which carries
        // that frame's id) wait in the mailbox; the application has not taken them.
        let early = msg(OpCode::Signal, Origin::Application, Status::Success, 4, 50);
        g.deliver(early);
        g.deliver(end(4, 50));
        // A connect gets number 4 again; its answer comes.
        g.expect(4, 1, Expect::Hello);
        let reply = msg(
            OpCode::HelloResponse,
            Origin::Application,
            Status::Success,
            4,
            1,
        );
        g.deliver(reply);
        let later = Some(Instant::now() + Duration::from_secs(5));
        match g.await_answer(4, 1, later) {
            Some(Answer::Reply(m)) => assert_eq!(m.opcode(), OpCode::HelloResponse),
            other => panic!("the connect got {other:?}, not its HelloResponse"),
        }
        for id in [50, 50] {
            let m = g
                .wait(Some(Duration::ZERO))
                .unwrap()
                .expect("the old messages");
            assert_eq!((m.channel(), m.message_id()), (4, id));
        }
        assert!(g.wait(Some(Duration::ZERO)).unwrap().is_none());
    }

    #[test]
    fn a_hello_never_taken_by_the_stopped_engine_still_ends_its_channel() {
        let g = Arc::new(GroupShared::new());
        let mut hello = Message::with_opcode(OpCode::HelloRequest);
        hello.header.channel = 5;
        hello.header.message_id = 9;
        let cmd = Command::Post {
            group: Arc::clone(&g),
            msg: hello,
        };
        cmd.abandon(Status::ShutdownStarted);
        let back = g
            .wait(Some(Duration::ZERO))
            .unwrap()
            .expect("the Hello back");
        assert_eq!(
            (back.opcode(), back.status(), back.is_channel_end()),
            (OpCode::HelloRequest, Status::ShutdownStarted, false)
        );
        let end = g
            .wait(Some(Duration::ZERO))
            .unwrap()
            .expect("the final Signal");
        assert!(end.is_channel_end(), "{end:?}");
        assert_eq!((end.channel(), end.message_id()), (5, 9));
    }

    /// A received frame counts in its group from the reactor's `hold` until it leaves the
    /// queues: to a receive, or routed to a request.
    /// A reactor that found no room is woken when one leaves.
    #[test]
    fn held_frames_count_in_their_group_until_they_leave_its_queues() {
        use std::sync::atomic::AtomicUsize;
        let woken = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        let limit = ReceiveLimit {
            messages: 1,
            bytes: 1 << 20,
        };
        let wake: Box<dyn Fn() + Send + Sync> = Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        let g = GroupShared::with_limit(limit, Some(wake));
        let held = |op, id, len: u32| {
            let mut m = msg(op, Origin::Application, Status::Success, 5, id);
            m.held = len;
            g.hold(1, len as usize);
            m
        };
        g.deliver(held(OpCode::Signal, 1, 40));
        assert_eq!(g.queued(), (1, 40));
        assert!(!g.may_receive(0), "at the limit");
        let m = g.wait(Some(Duration::ZERO)).unwrap().expect("the Signal");
        assert_eq!((m.message_id(), m.held), (1, 0), "handed over");
        assert_eq!(g.queued(), (0, 0));
        assert_eq!(woken.load(Ordering::SeqCst), 1, "the reactor is told once");
        assert!(g.may_receive(0));

        // An answer leaves when it is routed to its request...
        g.expect(5, 9, Expect::Response);
        g.deliver(held(OpCode::Response, 9, 30));
        assert!(g.wait(Some(Duration::ZERO)).unwrap().is_none(), "routed");
        assert_eq!(g.queued(), (0, 0));
        // ... and stays uncounted when the request stops waiting before taking it: it goes
        // to the receive loop as handed over (the pool no longer counts it either).
        g.unexpect(5, 9);
        let m = g
            .wait(Some(Duration::ZERO))
            .unwrap()
            .expect("the late answer");
        assert_eq!((m.message_id(), m.held), (9, 0));
        assert_eq!(g.queued(), (0, 0));
        assert_eq!(woken.load(Ordering::SeqCst), 1, "no alert was armed");
    }
}
