//! The engine layer: threads and the state they share. The [`Engine`] handle (this file),
//! [`ChannelGroup`] (`group.rs`), the state both sides share (`shared.rs`), the channel table,
//! outbound queues and send gates (`channels.rs`), the awaited answers of requests
//! (`replies.rs`), the pool and byte buffers (`pool.rs`), and the I/O thread (`reactor/`).
//!
//! **May use:** `proto`, `sys`, `util`, std's threads and locks. **Never:** a platform
//! `#[cfg]` or `unsafe` (those live in `sys`). Only this file names the reactor, to start it.
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

pub(crate) mod channels;
mod group;
pub mod pool;
mod reactor;
mod replies;
pub(crate) mod shared;
pub(crate) mod tls;

#[cfg(feature = "stream")]
pub use group::Messages;
pub use group::{ChannelGroup, Listening, ReceiveFuture, RequestError, RequestFuture, SendFuture};
use shared::{GroupShared, MailboxState, Shared};

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::pool::{Allocation, Pool, PoolOptions};
use crate::engine::reactor::Reactor;
use crate::proto::message::{Message, Origin};
use crate::proto::status::Error;
use crate::sys::poller::{Backend, Poller};

/// Engine settings.
///
/// ```
/// use std::time::Duration;
/// use tofu::{Backend, Engine, EngineOptions};
/// // The last backend of this platform: poll(2) on Linux, where epoll is the default.
/// let backend = *Backend::available().last().expect("at least one");
/// let engine = Engine::new(EngineOptions {
///     backend,
///     frame_timeout: Some(Duration::from_secs(5)), // a stalled half-frame closes its channel
///     ..EngineOptions::default()
/// })?;
/// assert_eq!(engine.backend(), backend);
/// # Ok::<(), tofu::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Message pool sizes (tofu `initialPoolMsgs` / `maxPoolMsgs`).
    pub pool: PoolOptions,
    /// The OS readiness mechanism of the reactor.
    pub backend: Backend,
    /// Per-channel bound on messages posted but not yet written.
    pub send_limit: SendLimit,
    /// Per-group bound on received frames waiting for the application to receive them.
    pub receive_limit: ReceiveLimit,
    /// A peer that starts a frame and then sends nothing for this long has its channel
    /// closed with `RecvFailed` (a slowloris peer cannot hold a channel forever). `None`
    /// waits forever, as Zig tofu does. Default: 30 s.
    pub frame_timeout: Option<Duration>,
    /// The server side of `tls|` listeners (feature `tls`): certificate chain, key, and
    /// whether clients must present a certificate (a rustls client verifier; mutual TLS).
    /// `None`, the default: a listen on a `tls|` address is refused at post. The handshake
    /// of an accepted connection must end within `frame_timeout`.
    #[cfg(feature = "tls")]
    pub tls_server: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The client side of `tls|` connects (feature `tls`): the root certificates the server
    /// is checked against (its name is the address's host part), and a client certificate
    /// for mutual TLS. `None`, the default: a connect to a `tls|` address is refused at post.
    #[cfg(feature = "tls")]
    pub tls_client: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            pool: PoolOptions::default(),
            backend: Backend::default(),
            send_limit: SendLimit::default(),
            receive_limit: ReceiveLimit::default(),
            frame_timeout: Some(Duration::from_secs(30)),
            #[cfg(feature = "tls")]
            tls_server: None,
            #[cfg(feature = "tls")]
            tls_client: None,
        }
    }
}

/// How many bytes of unsent frames a channel holds before a *waiting* sender
/// ([`ChannelGroup::send_timeout`], [`ChannelGroup::send`]) waits for the reactor to write
/// some: 1 MiB, or the [`SendLimit`]'s bytes when lower. `post` is not affected; it hands a
/// message back only at the send limit.
///
/// A sender that can wait gains nothing by queueing more than keeps the socket busy: a
/// deeper queue only adds latency and memory, and messages that leave the caches before
/// they are written cost more to write (65000-byte Signals on the one-engine user path
/// of `tofu bench` went from about 34 k/s to about 68 k/s with the window, 1 KiB ones from
/// 2.0 M/s to 2.6 M/s; see docs/benchmarks.md).
///
/// ```
/// assert_eq!(tofu::SEND_WINDOW, 1 << 20);
/// ```
pub const SEND_WINDOW: u64 = 1 << 20;

/// The send-side high-water mark of every channel: once a channel holds this many posted,
/// not yet written messages (or bytes of their frames), `post` hands further messages back
/// with `SendQueueFull` instead of queueing without bound. A single message is always
/// accepted by an empty queue, whatever its size.
///
/// Zig tofu has no such limit; a peer that stops reading made its queues grow forever.
///
/// ```
/// use tofu::{EngineOptions, SendLimit};
/// // At most 1000 unsent messages or 1 MiB per channel; `post` then says SendQueueFull.
/// let options = EngineOptions {
///     send_limit: SendLimit { messages: 1000, bytes: 1 << 20 },
///     ..EngineOptions::default()
/// };
/// # let _ = options;
/// ```
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

/// The receive-side high-water mark of each channel group: once this many frames received
/// from peers (or bytes of them) wait in a group's queue, not yet taken by `wait_receive` /
/// `receive`, the engine stops reading that group's sockets, so those peers' send queues
/// fill (their `post` meets `SendQueueFull`, their `send` waits) instead of this process's
/// memory. Reading resumes by itself as the application receives. Like a bounded channel,
/// it needs nothing from the receive loop: no message tells of the pause, and what the
/// application keeps after receiving does not count. Groups do not share it: a group
/// nobody receives from pauses only its own channels, and a server in another group of
/// the same engine goes on (see [`ChannelGroup::queued`]).
///
/// What it costs: memory only while an application falls behind, at most `bytes` of
/// frames per group plus about 100 bytes per frame decoded by the engine (large frames;
/// small ones wait as bytes). Fifty threads streaming small Signals to one receive loop (see
/// `examples/fanin.rs`, with 10 000 each) reach the default's 65536 frames (about 2 MiB)
/// on a 2-CPU machine: the reactor copies frames out faster than one thread decodes them.
/// Zig tofu paused when its pool (64 messages) ran dry and sent a `PoolEmpty` Signal each
/// time.
///
/// ```
/// use tofu::{EngineOptions, ReceiveLimit};
/// // A small device: pause reading once 1 MiB of received frames is waiting.
/// let options = EngineOptions {
///     receive_limit: ReceiveLimit { messages: 4096, bytes: 1 << 20 },
///     ..EngineOptions::default()
/// };
/// let engine = tofu::Engine::new(options)?;
/// # Ok::<(), tofu::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveLimit {
    /// Most received frames held (at least 1).
    pub messages: usize,
    /// Most bytes of received frames held (header, text headers, body; at least 1). A
    /// frame is read whole even if it goes past this.
    pub bytes: usize,
}

impl Default for ReceiveLimit {
    /// 65536 frames or 64 MiB per group.
    fn default() -> ReceiveLimit {
        ReceiveLimit {
            messages: 65_536,
            bytes: 64 << 20,
        }
    }
}

/// A failed [`ChannelGroup::post`]: the error and the message, handed back to the caller.
///
/// ```
/// use tofu::{Engine, Error, Message, OpCode};
/// let engine = Engine::with_defaults()?;
/// let group = engine.create_group()?;
/// let err = group.post(Message::with_opcode(OpCode::Request).with_body(b"keep me")).unwrap_err();
/// assert_eq!(err.error, Error::InvalidChannelNumber); // channel 0: not a channel
/// assert_eq!(err.message.body(), b"keep me");         // handed back, to fix and post again
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PostError {
    /// Why the post failed.
    pub error: Error,
    /// The message, unchanged except for the status byte (and origin) set by validation.
    pub message: Message,
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "post failed: {}", self.error)?;
        if self.error == Error::InvalidOpCode {
            // The only opcode `post` refuses.
            return write!(
                f,
                ": a {:?} is the engine's answer to a listen, never posted",
                self.message.opcode()
            );
        }
        match self.message.header_value(crate::proto::message::ERROR_TEXT) {
            // Why, in more words (a `tls|` address without a TLS config, for example).
            Some(why) if self.message.header.origin == Origin::Application => {
                write!(f, ": {why}")
            }
            _ => Ok(()),
        }
    }
}

impl std::error::Error for PostError {}

/// A messaging engine: one reactor thread, one pool, one channel table.
///
/// Several engines may live in one process. Dropping the engine stops its thread: every
/// channel is closed abortively, unsent messages go back to their groups with
/// `ShutdownStarted`, and groups still alive report `ShutdownStarted` once drained.
///
/// ```
/// let engine = tofu::Engine::with_defaults()?; // its I/O thread runs from here
/// let group = engine.create_group()?;
/// let listening = group.listen(&tofu::Address::tcp("127.0.0.1", 0))?;
/// println!("{} on {}", engine.backend(), listening.address);
/// drop(group);
/// drop(engine); // stops the thread, closes every channel
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
        let shared = Arc::new(Shared::new(pool.clone(), poller.waker(), &options));
        let weak = Arc::downgrade(&shared);
        pool.set_on_refill(Box::new(move || {
            if let Some(s) = weak.upgrade() {
                s.wake();
            }
        }));
        let weak = Arc::downgrade(&shared);
        pool.set_queued(Box::new(move || {
            let Some(s) = weak.upgrade() else {
                return (0, 0);
            };
            let groups = s.groups.lock().unwrap_or_else(|p| p.into_inner());
            groups
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|g| !g.is_destroyed())
                .map(|g| g.queued())
                .fold((0, 0), |(n, b), (gn, gb)| (n + gn, b + gb))
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
        let weak = Arc::downgrade(&self.shared);
        let group = Arc::new(GroupShared::with_limit(
            self.shared.receive_limit,
            Some(Box::new(move || {
                if let Some(s) = weak.upgrade() {
                    s.wake();
                }
            })),
        ));
        let mut groups = self.shared.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.retain(|g| g.strong_count() > 0);
        groups.push(Arc::downgrade(&group));
        drop(groups);
        Ok(ChannelGroup::new(group, Arc::clone(&self.shared)))
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
            seals: self.shared.seals.load(Ordering::Relaxed),
        }
    }
}

/// Reactor counters (see [`Engine::stats`]).
///
/// ```
/// let engine = tofu::Engine::with_defaults()?;
/// let s = engine.stats();
/// println!("{} loop iterations, {} sleeps", s.iterations, s.sleeps);
/// # Ok::<(), tofu::Error>(())
/// ```
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
    /// socket; over TLS also a frame larger than the session's buffer) and handed the
    /// message, or the records of it the socket did not take, to the reactor, which wrote
    /// the rest or reported the failure. Not counted in `direct_writes`.
    pub handovers: u64,
    /// Large frames (over 4096 bytes) posted to a busy `tls|` channel that the posting
    /// thread encrypted itself into the channel's TLS session, so that the reactor only
    /// wrote them.
    pub seals: u64,
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
