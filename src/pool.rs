//! The message pool: a LIFO stack of reusable message buffers shared by an engine's groups
//! and its reactor.
//!
//! A message taken from a pool remembers it and returns on drop (tofu's `defer ampe.put(&msg)`
//! is simply the end of a scope). A returned message keeps the capacity of its buffers, so in
//! steady state neither the application nor the engine allocates per message. When the pool
//! already holds `max` messages, a returned message is freed instead.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::message::Message;
use crate::padded::Padded;

/// Pool sizes. `0` means "the default"; `max < initial` is raised to `initial`
/// (tofu's normalisation, so `{1, 1}` stays `{1, 1}`).
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Take a pooled message, or allocate a new one when the pool is empty.
    Always,
    /// Take a pooled message, or return `None` when the pool is empty.
    PoolOnly,
}

/// A thread-safe LIFO pool of messages. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<PoolShared>,
}

impl Pool {
    /// A pool pre-filled with `options.initial` messages (after normalisation).
    pub fn new(options: PoolOptions) -> Pool {
        let options = options.normalized();
        let shared = Arc::new(PoolShared {
            free: Padded::new(Mutex::new(Vec::with_capacity(options.max as usize))),
            max: options.max as usize,
            empty_was_returned: AtomicBool::new(false),
            on_refill: OnceLock::new(),
            created: AtomicU64::new(0),
            held: Padded::new(AtomicUsize::new(0)),
        });
        {
            let mut free = shared.lock();
            for _ in 0..options.initial {
                let m = Message::new();
                free.push(m.into_parts_unpooled());
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
        let parts = self.shared.lock().pop();
        let (text, body) = match parts {
            Some(p) => p,
            None => match how {
                Allocation::PoolOnly => {
                    self.shared.empty_was_returned.store(true, Ordering::SeqCst);
                    return None;
                }
                Allocation::Always => {
                    self.shared.created.fetch_add(1, Ordering::Relaxed);
                    Message::new().into_parts_unpooled()
                }
            },
        };
        let mut m = Message::with_buffers(text, body);
        m.home = Some(Arc::clone(&self.shared));
        Some(m)
    }

    /// Takes a message, allocating when the pool is empty (`get(Allocation::Always)`).
    pub fn message(&self) -> Message {
        // `Always` never returns None; the default only satisfies the type.
        self.get(Allocation::Always).unwrap_or_default()
    }

    /// Puts a message into this pool (reset, capacity kept), or frees it if the pool is full.
    /// Any message may be put, also one made with [`Message::new`]: this is how an
    /// application adds messages to a pool. Dropping a pooled message does the same.
    pub fn put(&self, mut msg: Message) {
        msg.release_hold();
        msg.home = None;
        let (text, body) = msg.take_buffers();
        self.shared.recycle(text, body);
    }

    /// Puts many messages back with one lock (see [`put`](Self::put)); `msgs` is left empty.
    pub fn put_all(&self, msgs: &mut Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        {
            let mut free = self.shared.lock();
            for mut m in msgs.drain(..) {
                m.release_hold();
                m.home = None;
                if free.len() < self.shared.max {
                    let (mut text, mut body) = m.take_buffers();
                    text.clear();
                    body.clear();
                    free.push((text, body));
                }
            }
        }
        self.shared.after_refill();
    }

    /// Takes up to `n` messages (reset) with one lock, appending them to `out`; never
    /// allocates. Returns how many were taken.
    pub(crate) fn take_batch(&self, n: usize, out: &mut Vec<Message>) -> usize {
        let mut free = self.shared.lock();
        let k = n.min(free.len());
        let from = free.len() - k;
        for (text, body) in free.drain(from..) {
            let mut m = Message::with_buffers(text, body);
            m.home = Some(Arc::clone(&self.shared));
            out.push(m);
        }
        if k == 0 {
            self.shared.empty_was_returned.store(true, Ordering::SeqCst);
        }
        k
    }

    /// A message to receive a frame into, for the reactor: from the pool, else newly
    /// allocated as long as the application holds fewer than `max` received frames. `None`
    /// means the application holds too many: reading pauses until it gives some back.
    ///
    /// Counting held frames rather than looking at the pool keeps an application that
    /// allocates many messages for sending from starving its own receive path (two peers
    /// doing so would each stop reading, then each stop writing: a deadlock).
    ///
    /// `pending` counts frames decoded but not yet counted by [`hold_all`](Self::hold_all).
    pub(crate) fn for_receive(&self, batch: usize, out: &mut Vec<Message>, pending: usize) -> bool {
        if self.take_batch(batch, out) > 0 {
            return true;
        }
        let max = self.shared.max;
        if self.shared.held.load(Ordering::SeqCst) + pending >= max {
            self.shared.empty_was_returned.store(true, Ordering::SeqCst);
            // A frame released since the check above would have found the flag clear.
            if self.shared.held.load(Ordering::SeqCst) + pending >= max {
                return false;
            }
        }
        self.shared.created.fetch_add(1, Ordering::Relaxed);
        let mut m = Message::new();
        m.home = Some(Arc::clone(&self.shared));
        out.push(m);
        true
    }

    /// Counts received frames of this pool as held by the application (one atomic update
    /// for the whole batch); they are released when given back. Frames already counted or
    /// from another pool are left alone.
    pub(crate) fn hold_all(&self, msgs: &mut [Message]) {
        let mut n = 0;
        for m in msgs.iter_mut().filter(|m| !m.held && self.owns(m)) {
            m.held = true;
            n += 1;
        }
        if n > 0 {
            self.shared.held.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// True when [`for_receive`](Self::for_receive) would give a message now.
    pub(crate) fn can_receive(&self) -> bool {
        self.shared.held.load(Ordering::SeqCst) < self.shared.max || !self.is_empty()
    }

    /// Received frames the application holds now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// True when `msg` returns to this pool when dropped.
    pub(crate) fn owns(&self, msg: &Message) -> bool {
        msg.home
            .as_ref()
            .is_some_and(|h| Arc::ptr_eq(h, &self.shared))
    }

    /// How many messages the pool holds now.
    pub fn len(&self) -> usize {
        self.shared.lock().len()
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

    /// Makes the next message returned to the pool call the refill function, as if a
    /// `PoolOnly` get had just found the pool empty.
    pub(crate) fn arm_refill_alert(&self) {
        self.shared.empty_was_returned.store(true, Ordering::SeqCst);
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

type Parts = (Vec<u8>, Vec<u8>);

/// The state behind every [`Pool`] handle and every pooled [`Message`].
pub(crate) struct PoolShared {
    /// Taken by the application (get, drop) and the reactor (refills, returns): a line of
    /// its own, as is `held`.
    free: Padded<Mutex<Vec<Parts>>>,
    max: usize,
    /// A `PoolOnly` get found the pool empty since the last refill alert.
    empty_was_returned: AtomicBool,
    on_refill: OnceLock<Box<dyn Fn() + Send + Sync>>,
    created: AtomicU64,
    /// Received frames the application holds (see `Pool::for_receive`).
    held: Padded<AtomicUsize>,
}

impl PoolShared {
    fn lock(&self) -> MutexGuard<'_, Vec<Parts>> {
        // A panic while holding this lock cannot leave the Vec inconsistent (push/pop only),
        // so a poisoned lock is still usable.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn recycle(&self, mut text: Vec<u8>, mut body: Vec<u8>) {
        text.clear();
        body.clear();
        {
            let mut free = self.lock();
            if free.len() >= self.max {
                return; // dropping the buffers frees them
            }
            free.push((text, body));
        }
        self.after_refill();
    }

    pub(crate) fn release(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        self.after_refill();
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

impl Message {
    fn into_parts_unpooled(mut self) -> Parts {
        self.home = None;
        self.take_buffers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

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
        assert_eq!(m.header, crate::message::Header::default());
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
