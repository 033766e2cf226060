//! The message pool: a LIFO stack of reusable message buffers shared by an engine's groups
//! and its reactor, and the engine's spare byte buffers (`Buffers`: runs of encoded frames
//! and chunks of received ones).
//!
//! A message taken from a pool remembers it and returns on drop (tofu's `defer ampe.put(&msg)`
//! is simply the end of a scope). A returned message keeps the capacity of its buffers, so in
//! steady state neither the application nor the engine allocates per message. When the pool
//! already holds `max` messages, a returned message is freed instead.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::engine::channels::Pending;
use crate::proto::message::{Message, Recycle};
use crate::util::padded::Padded;

/// Pool sizes. `0` means "the default"; `max < initial` is raised to `initial`
/// (tofu's normalisation, so `{1, 1}` stays `{1, 1}`).
///
/// ```
/// use tofu::{EngineOptions, PoolOptions};
/// // More spare messages kept for an engine that moves many at once.
/// let options = EngineOptions { pool: PoolOptions { initial: 256, max: 4096 }, ..Default::default() };
/// assert_eq!(PoolOptions { initial: 8, max: 2 }.normalized().max, 8);
/// # let _ = options;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Messages created up front (tofu `initialPoolMsgs`, default 16).
    pub initial: u16,
    /// Most messages kept in the pool (tofu `maxPoolMsgs`, default 64).
    pub max: u16,
}

impl PoolOptions {
    /// tofu's `DefaultOptions`.
    pub const DEFAULT: PoolOptions = PoolOptions {
        initial: 16,
        max: 64,
    };

    /// The options after tofu's normalisation.
    pub fn normalized(self) -> PoolOptions {
        let initial = if self.initial == 0 {
            PoolOptions::DEFAULT.initial
        } else {
            self.initial
        };
        let max = if self.max == 0 {
            PoolOptions::DEFAULT.max
        } else {
            self.max
        };
        PoolOptions {
            initial,
            max: max.max(initial),
        }
    }
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions::DEFAULT
    }
}

/// How [`Pool::get`] may obtain a message (tofu's `AllocationStrategy`).
///
/// ```
/// use tofu::{Allocation, Pool, PoolOptions};
/// let pool = Pool::new(PoolOptions { initial: 1, max: 1 });
/// let first = pool.get(Allocation::PoolOnly).expect("the one pre-filled message");
/// assert!(pool.get(Allocation::PoolOnly).is_none(), "empty: no allocation");
/// assert!(pool.get(Allocation::Always).is_some(), "allocated");
/// drop(first); // back to the pool
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Take a pooled message, or allocate a new one when the pool is empty.
    Always,
    /// Take a pooled message, or return `None` when the pool is empty.
    PoolOnly,
}

/// A thread-safe LIFO pool of messages. Cloning gives another handle to the same pool.
///
/// Each thread keeps the last message it gave back at hand (one per thread, within `max`)
/// and takes it first: a thread that takes and gives back in turn, as one posting small
/// messages or receiving small frames does, then touches no lock. [`len`](Self::len)
/// counts the calling thread's spare but not other threads'; a thread's spare goes back to
/// the pool when the thread ends.
///
/// Once the last handle is dropped the pool frees what it holds, and messages still out are
/// freed when they are dropped.
///
/// ```
/// let engine = tofu::Engine::with_defaults()?;
/// let mut m = engine.pool().message(); // reuses a pooled message's buffers
/// m.set_body(b"hello");
/// drop(m); // back to the pool, buffers kept
/// # Ok::<(), tofu::Error>(())
/// ```
pub struct Pool {
    shared: Arc<PoolShared>,
}

impl Clone for Pool {
    fn clone(&self) -> Pool {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Pool {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last handle: free the pooled messages. Each holds a reference to the pool,
            // so this also ends that cycle; later returns are freed (see `closed`).
            let spares = {
                let mut free = self.shared.lock();
                free.closed = true;
                self.shared.closed.store(true, Ordering::SeqCst);
                std::mem::take(&mut free.spares)
            };
            drop(spares);
            drop(take_slot(&self.shared)); // this thread's; other threads' go when replaced
            self.shared.buffers.clear();
        }
    }
}

impl Pool {
    /// A pool pre-filled with `options.initial` messages (after normalisation).
    pub fn new(options: PoolOptions) -> Pool {
        let options = options.normalized();
        let shared = Arc::new(PoolShared {
            free: Padded::new(Mutex::new(Free {
                spares: Vec::with_capacity(options.max as usize),
                closed: false,
            })),
            handles: AtomicUsize::new(1),
            max: options.max as usize,
            empty_was_returned: AtomicBool::new(false),
            on_refill: OnceLock::new(),
            created: AtomicU64::new(0),
            queued: OnceLock::new(),
            buffers: Padded::new(Buffers::default()),
            closed: AtomicBool::new(false),
            count: AtomicUsize::new(0),
        });
        {
            let mut free = shared.lock();
            for _ in 0..options.initial {
                let (text, body) = Message::new().take_buffers();
                free.spares.push(Spare {
                    text,
                    body,
                    home: Arc::clone(&shared),
                });
            }
        }
        shared
            .created
            .store(u64::from(options.initial), Ordering::Relaxed);
        Pool { shared }
    }

    /// Takes a message (reset to defaults) from the pool. With [`Allocation::PoolOnly`] an
    /// empty pool gives `None`; with [`Allocation::Always`] the result is always `Some`.
    pub fn get(&self, how: Allocation) -> Option<Message> {
        if let Some(spare) = take_slot(&self.shared) {
            return Some(spare.into_message());
        }
        let spare = self.shared.lock().spares.pop();
        match (spare, how) {
            (Some(spare), _) => Some(spare.into_message()),
            (None, Allocation::PoolOnly) => {
                self.shared.empty_was_returned.store(true, Ordering::SeqCst);
                None
            }
            (None, Allocation::Always) => Some(self.allocate()),
        }
    }

    /// A new message of this pool (counted in `created`).
    fn allocate(&self) -> Message {
        self.shared.created.fetch_add(1, Ordering::Relaxed);
        let mut m = Message::new();
        m.home = Some(Arc::clone(&self.shared) as Arc<dyn Recycle>);
        m
    }

    /// Takes a message, allocating when the pool is empty (`get(Allocation::Always)`).
    pub fn message(&self) -> Message {
        // `Always` never returns None; the default only satisfies the type.
        self.get(Allocation::Always).unwrap_or_default()
    }

    /// Puts a message into this pool (reset, capacity kept), or frees it if the pool is full.
    /// Any message may be put, also one made with [`Message::new`]: this is how an
    /// application adds messages to a pool. Dropping a pooled message does the same.
    pub fn put(&self, msg: Message) {
        let refilled = self.stash(&mut self.shared.lock(), msg);
        if refilled {
            self.shared.after_refill();
        }
    }

    /// Puts many messages back with one lock (see [`put`](Self::put)); `msgs` is left empty.
    pub fn put_all(&self, msgs: &mut Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let mut refilled = false;
        {
            let mut free = self.shared.lock();
            for m in msgs.drain(..) {
                refilled |= self.stash(&mut free, m);
            }
        }
        if refilled {
            self.shared.after_refill();
        }
    }

    /// Adds `msg`'s buffers to the free list (under its lock, held by the caller), or frees
    /// them when the pool is full or closed. Keeps the message's own reference to this pool
    /// for the spare, so no reference count changes. True when the spare was kept.
    fn stash(&self, free: &mut Free, mut msg: Message) -> bool {
        msg.release_hold();
        // This thread's kept spare is older than `msg`: it goes in first (LIFO).
        if let Some(old) = take_slot(&self.shared) {
            if !free.closed && free.spares.len() < self.shared.max {
                free.spares.push(old);
            }
        }
        let home = msg.home.take();
        if free.closed || free.spares.len() >= self.shared.max {
            return false; // `msg` and `home` are dropped: the buffers are freed
        }
        let home = match home.map(|h| h.into_any().downcast::<PoolShared>()) {
            Some(Ok(h)) if Arc::ptr_eq(&h, &self.shared) => h,
            _ => Arc::clone(&self.shared), // a message of another pool, or of none
        };
        let (mut text, mut body) = msg.take_buffers();
        text.clear();
        body.clear();
        free.spares.push(Spare { text, body, home });
        true
    }

    /// Takes up to `n` messages (reset) with one lock, appending them to `out`; never
    /// allocates. Returns how many were taken.
    pub(crate) fn take_batch(&self, n: usize, out: &mut Vec<Message>) -> usize {
        let mut free = self.shared.lock();
        let k = n.min(free.spares.len());
        let from = free.spares.len() - k;
        out.extend(free.spares.drain(from..).map(Spare::into_message));
        if k == 0 {
            self.shared.empty_was_returned.store(true, Ordering::SeqCst);
        }
        k
    }

    /// Messages to receive frames into, for the reactor: up to `batch` from the pool, else
    /// one newly allocated. Whether a frame may be received at all is the receiving group's
    /// limit (see `GroupShared::may_receive`); counting queued frames rather than looking
    /// at the pool keeps an application that allocates many messages for sending from
    /// starving its own receive path (two peers doing so would each stop reading, then
    /// each stop writing: a deadlock).
    pub(crate) fn for_receive(&self, batch: usize, out: &mut Vec<Message>) {
        if self.take_batch(batch, out) == 0 {
            out.push(self.allocate());
        }
    }

    /// Marks received frames of this pool as held (each with its frame length), to be
    /// counted in the receiving group's queue (see `GroupShared::hold`) until a receive hands
    /// it over. Frames already marked or from another pool are left alone. Returns how many
    /// it marked and their bytes.
    pub(crate) fn hold_all(&self, msgs: &mut [Message]) -> (usize, usize) {
        let (mut n, mut bytes) = (0, 0);
        for m in msgs.iter_mut().filter(|m| m.held == 0 && self.owns(m)) {
            let len = crate::proto::wire::encoded_len(m);
            m.held = len as u32; // at most MAX_FRAME_LEN
            n += 1;
            bytes += len;
        }
        (n, bytes)
    }

    /// The pool's spare byte buffers.
    pub(crate) fn buffers(&self) -> &Buffers {
        &self.shared.buffers
    }

    /// The state every handle and pooled message of this pool refers to.
    pub(crate) fn home(&self) -> Arc<PoolShared> {
        Arc::clone(&self.shared)
    }

    /// Frames received from peers that wait in the engine's group queues, not yet taken by
    /// a receive: the sum over its groups (each group's `ReceiveLimit` bounds its own
    /// share, see `ChannelGroup::queued`).
    pub fn queued(&self) -> usize {
        self.shared.queued.get().map_or(0, |f| f().0)
    }

    /// Bytes of the frames [`queued`](Self::queued) counts.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.get().map_or(0, |f| f().1)
    }

    /// Installs what [`queued`](Self::queued) asks: the sum over the engine's groups. Only
    /// the first call has an effect.
    pub(crate) fn set_queued(&self, f: Box<dyn Fn() -> (usize, usize) + Send + Sync>) {
        let _ = self.shared.queued.set(f);
    }

    /// True when `msg` returns to this pool when dropped.
    pub(crate) fn owns(&self, msg: &Message) -> bool {
        msg.home
            .as_ref()
            .is_some_and(|h| std::ptr::addr_eq(Arc::as_ptr(h), Arc::as_ptr(&self.shared)))
    }

    /// How many messages the pool holds now.
    ///
    /// Counts the message this thread keeps at hand for the pool (see [`Pool`]), not those
    /// other threads keep.
    pub fn len(&self) -> usize {
        let here = usize::from(slot_holds(&self.shared));
        self.shared.lock().spares.len() + here
    }

    /// True when the pool holds no message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most messages the pool keeps.
    pub fn max(&self) -> usize {
        self.shared.max
    }

    /// How many message buffers this pool has allocated in all (pre-filled plus `Always`
    /// allocations on empty). Constant in steady state.
    pub fn created(&self) -> u64 {
        self.shared.created.load(Ordering::Relaxed)
    }

    /// Installs the function called when a message returns to a pool that a `PoolOnly` get
    /// found empty (tofu's freedMemory alert). Only the first call has an effect.
    pub(crate) fn set_on_refill(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.shared.on_refill.set(f);
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("len", &self.len())
            .field("max", &self.shared.max)
            .finish()
    }
}

/// A group's count of held frames is kept above this bit, their bytes below it (up to
/// 1 TiB of bytes and 16 M frames: far beyond any receive limit in use).
const HELD_SHIFT: u32 = 40;
/// One held frame in a group's count.
pub(crate) const HELD_ONE: u64 = 1 << HELD_SHIFT;

/// A group's count of held frames as (frames, bytes).
pub(crate) fn unpack(held: u64) -> (usize, usize) {
    (
        (held >> HELD_SHIFT) as usize,
        (held & (HELD_ONE - 1)) as usize,
    )
}

/// Capacity of a new byte buffer (it grows as it is filled).
const BUFFER_FIRST: usize = 4096;
/// Byte buffers (and item queues) a pool keeps for reuse.
const BUFFERS_MAX: usize = 32;
/// Item queues with more room are freed instead of kept.
const QUEUE_KEEP_MAX: usize = 256;
/// Larger buffers are freed instead of kept (chunks hold about 64 KiB, runs at most 256 KiB
/// and a frame).
const BUFFER_KEEP_MAX: usize = 512 * 1024;

/// An engine's spare byte buffers: runs of frames that posting threads encode (see
/// `Outbound` in `src/engine/channels.rs`) and chunks of received frames that applications decode
/// (see `Frames` in `src/engine/shared.rs`). Taken and given back once per batch, not per message.
///
/// It also keeps the spare item queues of channels' `Outbound`s: a channel that queues a
/// message whole takes one, the reactor gives it back once it took the items, so an idle
/// channel holds no queue and a busy one allocates none.
#[derive(Default)]
pub(crate) struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
    queues: Mutex<Vec<VecDeque<Pending>>>,
}

impl Buffers {
    fn lock(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // Push and pop only: a panic cannot leave the list inconsistent.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer: a spare one, else a new one.
    pub(crate) fn get(&self) -> Vec<u8> {
        self.lock()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_FIRST))
    }

    /// Keeps `b` for reuse (up to a bound).
    pub(crate) fn put(&self, b: Vec<u8>) {
        if b.capacity() == 0 || b.capacity() > BUFFER_KEEP_MAX {
            return;
        }
        let mut free = self.lock();
        if free.len() < BUFFERS_MAX {
            let mut b = b;
            b.clear();
            free.push(b);
        }
    }

    /// Keeps buffers for reuse (up to a bound); `bufs` is left empty.
    pub(crate) fn put_all(&self, bufs: &mut Vec<Vec<u8>>) {
        if bufs.is_empty() {
            return;
        }
        let mut free = self.lock();
        for mut b in bufs.drain(..) {
            if free.len() < BUFFERS_MAX && b.capacity() > 0 && b.capacity() <= BUFFER_KEEP_MAX {
                b.clear();
                free.push(b);
            }
        }
    }

    /// Frees every kept buffer and queue.
    fn clear(&self) {
        drop(std::mem::take(&mut *self.lock()));
        drop(std::mem::take(&mut *self.lock_queues()));
    }

    fn lock_queues(&self) -> MutexGuard<'_, Vec<VecDeque<Pending>>> {
        // Push and pop only: a panic cannot leave the list inconsistent.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty item queue: a spare one, else a new one.
    pub(crate) fn queue(&self) -> VecDeque<Pending> {
        self.lock_queues().pop().unwrap_or_default()
    }

    /// Keeps an emptied item queue for reuse (up to a bound; large ones are freed).
    pub(crate) fn put_queue(&self, q: VecDeque<Pending>) {
        if q.capacity() == 0 || q.capacity() > QUEUE_KEEP_MAX || !q.is_empty() {
            return;
        }
        let mut free = self.lock_queues();
        if free.len() < BUFFERS_MAX {
            free.push(q);
        }
    }

    /// Buffers kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A free message: its buffers and a reference to the pool it belongs to. Taking it out
/// and putting it back moves that reference along, so the pool's reference count (a cache
/// line every thread would otherwise write per message) stays still.
struct Spare {
    text: Vec<u8>,
    body: Vec<u8>,
    home: Arc<PoolShared>,
}

impl Spare {
    fn into_message(self) -> Message {
        let mut m = Message::with_buffers(self.text, self.body);
        m.home = Some(self.home);
        m
    }
}

thread_local! {
    /// One spare message of the pool this thread gave one back to last. A thread that takes
    /// a message and gives one back in turn (posting small messages, which return to the pool
    /// at once; receiving small frames, decoded on the receiving thread) then takes no lock
    /// and writes no line another thread reads. At most one message per thread and pool
    /// beyond the pool's `max` is kept this way.
    static SLOT: Slot = const { Slot(RefCell::new(None)) };
}

/// See [`SLOT`]; what it holds when the thread ends goes back to its pool. (Written and
/// read in place: moving a spare through a `Cell` cost a store-forwarding stall per message.)
struct Slot(RefCell<Option<Spare>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(sp) = self.0.get_mut().take() {
            PoolShared::recycle_locked(sp.home, sp.text, sp.body);
        }
    }
}

/// This thread's kept spare, if it belongs to `shared`.
fn take_slot(shared: &Arc<PoolShared>) -> Option<Spare> {
    SLOT.try_with(|s| {
        let mut s = s.0.try_borrow_mut().ok()?;
        if s.as_ref().is_some_and(|sp| Arc::ptr_eq(&sp.home, shared)) {
            s.take()
        } else {
            None
        }
    })
    .ok()
    .flatten()
}

/// The locked free list; publishes its length (`PoolShared::count`) when unlocked.
struct FreeGuard<'a> {
    free: MutexGuard<'a, Free>,
    count: &'a AtomicUsize,
}

impl std::ops::Deref for FreeGuard<'_> {
    type Target = Free;
    fn deref(&self) -> &Free {
        &self.free
    }
}

impl std::ops::DerefMut for FreeGuard<'_> {
    fn deref_mut(&mut self) -> &mut Free {
        &mut self.free
    }
}

impl Drop for FreeGuard<'_> {
    fn drop(&mut self) {
        self.count.store(self.free.spares.len(), Ordering::Relaxed);
    }
}

/// True when this thread keeps a spare of `shared`.
fn slot_holds(shared: &Arc<PoolShared>) -> bool {
    SLOT.try_with(|s| {
        s.0.try_borrow()
            .is_ok_and(|s| s.as_ref().is_some_and(|sp| Arc::ptr_eq(&sp.home, shared)))
    })
    .unwrap_or(false)
}

/// The free list.
struct Free {
    spares: Vec<Spare>,
    /// The last [`Pool`] handle is gone: returned messages are freed, not kept.
    closed: bool,
}

/// The state behind every [`Pool`] handle and every pooled [`Message`].
pub(crate) struct PoolShared {
    /// Taken by the application (get, drop) and the reactor (refills, returns): a line of
    /// its own.
    free: Padded<Mutex<Free>>,
    /// Live [`Pool`] handles.
    handles: AtomicUsize,
    max: usize,
    /// A `PoolOnly` get found the pool empty since the last refill alert.
    empty_was_returned: AtomicBool,
    on_refill: OnceLock<Box<dyn Fn() + Send + Sync>>,
    created: AtomicU64,
    /// The frames (and bytes) waiting in the engine's groups' queues (`Pool::queued`).
    queued: OnceLock<Box<dyn Fn() -> (usize, usize) + Send + Sync>>,
    /// Spare byte buffers.
    pub(crate) buffers: Padded<Buffers>,
    /// The last handle is gone (`Free::closed`, readable without the lock).
    closed: AtomicBool,
    /// Spares in the free list, as of the last unlock (read without the lock).
    count: AtomicUsize,
}

impl PoolShared {
    fn lock(&self) -> FreeGuard<'_> {
        // A panic while holding this lock cannot leave the list inconsistent (push/pop
        // only), so a poisoned lock is still usable.
        FreeGuard {
            free: self.free.lock().unwrap_or_else(|p| p.into_inner()),
            count: &self.count,
        }
    }

    /// Takes back the buffers of a dropped message of this pool (`home`), or frees them
    /// when the pool is full or closed.
    fn recycle(home: Arc<PoolShared>, mut text: Vec<u8>, mut body: Vec<u8>) {
        // This thread keeps it at hand unless the pool is closed or someone waits for a
        // refill (the pool itself must see it then).
        if !home.closed.load(Ordering::Relaxed)
            && !home.empty_was_returned.load(Ordering::Relaxed)
            && home.count.load(Ordering::Relaxed) < home.max
        {
            text.clear();
            body.clear();
            let mut parts = Some((text, body, home));
            let old = SLOT.try_with(|s| {
                let mut s = s.0.try_borrow_mut().ok()?;
                let (text, body, home) = parts.take()?;
                s.replace(Spare { text, body, home })
            });
            match (old, parts) {
                // The one it replaces goes to its own pool.
                (Ok(Some(old)), _) => Self::recycle_locked(old.home, old.text, old.body),
                // The thread is ending and its slot is gone: the pool takes it.
                (_, Some((text, body, home))) => Self::recycle_locked(home, text, body),
                _ => {}
            }
            return;
        }
        Self::recycle_locked(home, text, body)
    }

    /// [`recycle`](Self::recycle) into the shared list.
    fn recycle_locked(home: Arc<PoolShared>, mut text: Vec<u8>, mut body: Vec<u8>) {
        // The spare this thread keeps for the pool counts toward its `max` as well.
        let at_hand = usize::from(slot_holds(&home));
        let kept = {
            let mut free = home.lock();
            if free.closed || free.spares.len() + at_hand >= home.max {
                false // dropping the buffers frees them
            } else {
                text.clear();
                body.clear();
                // The spare needs its own reference while `home` is borrowed by the lock;
                // `home` is dropped below, on this thread, so the count ends where it was.
                let spare_home = Arc::clone(&home);
                free.spares.push(Spare {
                    text,
                    body,
                    home: spare_home,
                });
                true
            }
        };
        if kept {
            home.after_refill();
        }
    }

    /// A message of this pool: a spare one, else a new one (as [`Pool::message`]).
    pub(crate) fn message(self: &Arc<PoolShared>) -> Message {
        if let Some(spare) = take_slot(self) {
            return spare.into_message();
        }
        if let Some(spare) = self.lock().spares.pop() {
            return spare.into_message();
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        let mut m = Message::new();
        m.home = Some(Arc::clone(self) as Arc<dyn Recycle>);
        m
    }

    fn after_refill(&self) {
        // A load first: while nobody waits for a refill, giving messages back writes no
        // cache line the reactor reads.
        if self.empty_was_returned.load(Ordering::SeqCst)
            && self.empty_was_returned.swap(false, Ordering::SeqCst)
        {
            if let Some(f) = self.on_refill.get() {
                f();
            }
        }
    }
}

/// A pooled message's way back (see [`Recycle`]).
impl Recycle for PoolShared {
    fn recycle(self: Arc<Self>, text: Vec<u8>, body: Vec<u8>) {
        PoolShared::recycle(self, text, body);
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn last_handle_frees_the_pool_and_later_returns() {
        let pool = Pool::new(PoolOptions { initial: 4, max: 8 });
        let weak = Arc::downgrade(&pool.shared);
        let second = pool.clone();
        let out = pool.message();
        drop(pool);
        // Another handle keeps the pool working.
        assert_eq!(second.len(), 3);
        second.put(Message::new());
        assert_eq!(second.len(), 4);
        drop(second);
        // No handle left: the spares are freed, only the message out keeps the state alive,
        // and its return does not re-create a pool nobody can reach.
        assert!(weak.upgrade().is_some());
        drop(out);
        assert!(
            weak.upgrade().is_none(),
            "pooled messages must not keep the pool alive"
        );
    }

    #[test]
    fn spares_keep_no_extra_references() {
        let pool = Pool::new(PoolOptions { initial: 2, max: 4 });
        // Each spare holds one reference, the handle one.
        assert_eq!(Arc::strong_count(&pool.shared), 3);
        let a = pool.message();
        let b = pool.message();
        let c = pool.message(); // allocated
        assert_eq!(Arc::strong_count(&pool.shared), 4);
        drop((a, b, c));
        assert_eq!(Arc::strong_count(&pool.shared), 4);
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn a_thread_keeps_one_spare_at_hand_within_max() {
        let pool = Pool::new(PoolOptions { initial: 2, max: 3 });
        // Take and give back in turn: the same message comes back each time.
        let m = pool.message();
        let p = m.body().as_ptr();
        drop(m);
        assert_eq!(pool.len(), 2, "the one at hand counts");
        for _ in 0..10 {
            let m = pool.message();
            assert_eq!(m.body().as_ptr(), p, "the spare at hand first");
            drop(m);
        }
        // Never more than `max` in all.
        let msgs: Vec<Message> = (0..6).map(|_| pool.message()).collect();
        drop(msgs);
        assert_eq!(pool.len(), 3);
        // Another thread's spare is its own: it does not show here, and it returns to the
        // pool when that thread ends.
        let other = pool.clone();
        std::thread::spawn(move || drop(other.message()))
            .join()
            .unwrap();
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.created(), 6, "nothing allocated for the round trips");
    }

    #[test]
    fn options_normalisation() {
        let n = |initial, max| PoolOptions { initial, max }.normalized();
        assert_eq!(n(0, 0), PoolOptions::DEFAULT);
        assert_eq!(n(1, 1), PoolOptions { initial: 1, max: 1 });
        assert_eq!(
            n(100, 10),
            PoolOptions {
                initial: 100,
                max: 100
            }
        );
        assert_eq!(
            n(0, 4),
            PoolOptions {
                initial: 16,
                max: 16
            }
        );
        assert_eq!(
            n(2, 0),
            PoolOptions {
                initial: 2,
                max: 64
            }
        );
    }

    #[test]
    fn prefilled_then_pool_only_on_empty_gives_none() {
        let pool = Pool::new(PoolOptions { initial: 2, max: 4 });
        assert_eq!(pool.len(), 2);
        let a = pool.get(Allocation::PoolOnly).expect("first");
        let b = pool.get(Allocation::PoolOnly).expect("second");
        assert!(pool.get(Allocation::PoolOnly).is_none());
        let c = pool.get(Allocation::Always).expect("always allocates");
        assert_eq!(pool.created(), 3);
        drop((a, b, c));
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn lifo_order() {
        let pool = Pool::new(PoolOptions { initial: 1, max: 8 });
        let _ = pool.get(Allocation::PoolOnly); // empty it (returns on drop here)
        let mut m1 = Message::new();
        m1.body_mut().reserve(1000);
        let cap1 = m1.body().as_ptr();
        let mut m2 = Message::new();
        m2.body_mut().reserve(5000);
        let cap2 = m2.body().as_ptr();
        pool.put(m1);
        pool.put(m2);
        let first = pool.get(Allocation::PoolOnly).unwrap();
        let second = pool.get(Allocation::PoolOnly).unwrap();
        assert_eq!(first.body().as_ptr(), cap2, "last put comes out first");
        assert_eq!(second.body().as_ptr(), cap1);
        assert!(first.body().is_empty() && first.header.message_id == 0);
    }

    #[test]
    fn max_enforced_and_drop_returns() {
        let pool = Pool::new(PoolOptions { initial: 1, max: 2 });
        let msgs: Vec<Message> = (0..5).map(|_| pool.message()).collect();
        assert_eq!(pool.len(), 0);
        drop(msgs);
        assert_eq!(pool.len(), 2, "beyond max messages are freed");
        for _ in 0..3 {
            pool.put(Message::new());
        }
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn returned_message_is_reset_but_keeps_capacity() {
        let pool = Pool::new(PoolOptions { initial: 1, max: 1 });
        let mut m = pool.message();
        m.header.message_id = 5;
        m.header.channel = 9;
        m.set_body(&[1u8; 4096]);
        m.append_header("a", "b").unwrap();
        drop(m);
        let m = pool.message();
        assert_eq!(m.header, crate::proto::message::Header::default());
        assert!(m.body().is_empty() && m.text_headers().is_empty());
        assert!(m.body_capacity() >= 4096);
        assert_eq!(pool.created(), 1, "no allocation in steady state");
    }

    #[test]
    fn refill_alert_after_empty_pool_only() {
        let pool = Pool::new(PoolOptions { initial: 1, max: 4 });
        let hits = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        pool.set_on_refill(Box::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        }));
        let m = pool.get(Allocation::PoolOnly).unwrap();
        drop(pool.message()); // put without a prior empty PoolOnly: no alert
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        let _m2 = pool.get(Allocation::PoolOnly).unwrap();
        assert!(pool.get(Allocation::PoolOnly).is_none());
        drop(m);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        pool.put(Message::new());
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "one alert per empty episode"
        );
    }
}
