//! [`ChannelGroup`]: the application's side of a set of channels: `post` (validation, the
//! per-thread cache of send states, the direct-write path), `send`/`send_timeout` (waiting
//! for room), `wait_receive`/`receive`, and `request`/`connect`/`listen` (answers awaited by
//! message_id), with their futures and errors.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::replies::{Answer, Expect};
use super::shared::{Command, Completion, GroupShared, MailboxState, Shared};
use super::{PostError, SEND_WINDOW};
use crate::engine::channels::{DirectWrite, Posted, SendState};
use crate::proto::address::{Address, AddressError};
use crate::proto::message::{Header, Message, OpCode, Origin, CHANNEL_UNASSIGNED, PEER_IDENTITY};
use crate::proto::notify;
use crate::proto::status::{Error, Status};

/// A set of channels and one receive queue, used from application threads.
///
/// Every channel belongs to the group that created it (by Hello or Welcome) or, for an
/// accepted connection, to its listener's group. All results, statuses and peer messages for
/// those channels arrive through this group's [`wait_receive`](ChannelGroup::wait_receive).
///
/// Share a group between threads with `Arc` or scoped threads. [`destroy`](Self::destroy) (or
/// drop) closes its channels abortively and wakes every blocked `wait_receive` with
/// `ShutdownStarted`.
///
/// A receive loop: what comes in is the peers' messages, and the engine's reports (origin
/// engine, the status says what happened).
///
/// ```
/// use std::time::Duration;
/// use tofu::{Address, Engine, Message, OpCode, Origin, Status};
///
/// let engine = Engine::with_defaults()?;
/// let (server, client) = (engine.create_group()?, engine.create_group()?);
/// let addr = server.listen(&Address::tcp("127.0.0.1", 0))?.address;
/// std::thread::scope(|s| {
///     s.spawn(|| client.connect(&addr).and_then(|ch| client.disconnect(ch, None)));
///     loop {
///         let mut m = server.wait_receive(Some(Duration::from_secs(10)))?.expect("in time");
///         if m.is_channel_end() {
///             break; // the channel's final Signal
///         }
///         match (m.opcode(), m.origin()) {
///             (OpCode::HelloRequest | OpCode::ByeRequest, Origin::Application) => {
///                 m.make_echo()?; // HelloResponse, ByeResponse
///                 server.post(m)?;
///             }
///             _ => {} // data, or a report this loop does not care about
///         }
///     }
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ChannelGroup {
    group: Arc<GroupShared>,
    shared: Arc<Shared>,
    destroyed: AtomicBool,
}

impl ChannelGroup {
    /// The application's handle of a new group of the engine behind `shared`.
    pub(crate) fn new(group: Arc<GroupShared>, shared: Arc<Shared>) -> ChannelGroup {
        ChannelGroup {
            group,
            shared,
            destroyed: AtomicBool::new(false),
        }
    }

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
    /// still written in batches by the reactor. See [`EngineStats::direct_writes`](crate::EngineStats::direct_writes).
    ///
    /// Returns the header as posted: the channel number (new for Hello/Welcome requests) and
    /// the message_id. Success means "accepted" (queued, or written), not "delivered": every
    /// later outcome comes back through `wait_receive`. On failure the message is handed back
    /// with the error:
    /// validation errors, `InvalidChannelNumber` (no such live channel),
    /// `InvalidMessageChannelGroup` (another group's channel), `SendQueueFull` (the channel
    /// already holds [`SendLimit`](crate::SendLimit) worth of unsent messages), `NotificationDisabled`
    /// (the engine has stopped: any post, to a new or an existing channel), `ShutdownStarted`
    /// (this group destroyed), `AllocationFailed` (no free channel number).
    pub fn post(&self, msg: Message) -> Result<Header, PostError> {
        self.post_with(msg, None)
    }

    /// [`post`](Self::post); a Hello or Welcome request with `expect` has its answer awaited
    /// from the moment its channel number is known, before the reactor can see it.
    fn post_with(&self, msg: Message, expect: Option<Expect>) -> Result<Header, PostError> {
        self.post_capped(msg, expect, u64::MAX)
    }

    /// [`post`](Self::post) for a sender that waits for room: `SendQueueFull` already once
    /// the channel holds [`SEND_WINDOW`] bytes of unsent frames (or the send limit).
    fn post_windowed(&self, msg: Message) -> Result<Header, PostError> {
        self.post_capped(msg, None, SEND_WINDOW)
    }

    /// [`post_with`](Self::post_with), the send limit's bytes capped at `cap`.
    fn post_capped(
        &self,
        mut msg: Message,
        expect: Option<Expect>,
        cap: u64,
    ) -> Result<Header, PostError> {
        if msg.header.origin == Origin::Engine {
            // Handed back by the engine and posted again: its error text is not for a peer.
            notify::strip_error_text(&mut msg);
        }
        if msg.header.opcode == OpCode::HelloResponse {
            // Often the received HelloRequest turned around: the client's TLS identity the
            // engine added is not for the peer.
            notify::strip_header(&mut msg, PEER_IDENTITY);
        }
        self.post_unexplained(msg, expect, cap)
            .map_err(|e| self.explain(e))
    }

    /// A post refused because its channel is gone, after the engine stopped: it says so
    /// (`NotificationDisabled`, as a Hello or Welcome posted then gets) instead of naming the
    /// channel, which the engine's stop took with it.
    fn explain(&self, mut e: PostError) -> PostError {
        if e.error == Error::InvalidChannelNumber && self.shared.shutdown.load(Ordering::SeqCst) {
            e.error = Error::NotificationDisabled;
            e.message.header.status = Status::NotificationDisabled;
        }
        e
    }

    fn post_unexplained(
        &self,
        mut msg: Message,
        expect: Option<Expect>,
        cap: u64,
    ) -> Result<Header, PostError> {
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
            return self.open(msg, expect);
        }
        let header = msg.header;
        if msg.header.opcode == OpCode::ByeSignal && msg.header.oob {
            // A local abort acts at once instead of waiting behind queued frames (after the
            // checks of the table, which the reactor makes again).
            return match self.send_state(msg.header.channel) {
                Ok(send) => {
                    send.stop_sealing();
                    self.submit_post(msg, false)
                }
                Err(error) => Err(refused(Some(msg), error)),
            };
        }
        let limit = (
            self.shared.send_limit.messages,
            self.shared.send_limit.bytes.min(cap),
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
            let keep =
                matches!(r, Ok(Posted::DirectTurn(_) | Posted::Seal(_))).then(|| Arc::clone(send));
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
        let direct = match outcome {
            Ok(Posted::DirectTurn(direct)) => direct,
            Ok(Posted::Queued(was_empty)) => return self.after_enqueue(was_empty, header),
            Ok(Posted::Seal(direct)) => {
                let Some(send) = send else {
                    unreachable!("a seal leaves the send state to the caller")
                };
                // A large frame for a busy TLS channel is encrypted and written right here
                // (see `SendState`, "Seals").
                return match send.seal(&mut slot, &direct, limit, bufs) {
                    Ok(Posted::Sealed(wake_reactor)) => {
                        self.shared.seals.fetch_add(1, Ordering::Relaxed);
                        if wake_reactor {
                            let _ = self.shared.submit(Command::Queued {
                                channel: header.channel,
                            });
                        }
                        Ok(header)
                    }
                    Ok(Posted::Queued(was_empty)) => self.after_enqueue(was_empty, header),
                    Ok(_) => unreachable!("a seal is sealed or queued"),
                    Err(error) => Err(refused(slot, error)),
                };
            }
            Ok(Posted::Sealed(_)) => unreachable!("post leaves sealing to the caller"),
            Err(error) => return Err(refused(slot, error)),
        };
        let (Some(msg), Some(send)) = (slot, send) else {
            unreachable!("a direct write leaves the message and its send state to the caller")
        };
        // A data message for an idle channel while the reactor sleeps is written right here
        // (see `SendState`): no hand-off to the reactor and back.
        match send.write_direct(msg, &direct) {
            DirectWrite::Written { wake_reactor } => {
                self.shared.direct_writes.fetch_add(1, Ordering::Relaxed);
                if wake_reactor {
                    // Not refused unless the engine is gone, and then nothing is queued.
                    let _ = self.shared.submit(Command::Queued {
                        channel: header.channel,
                    });
                }
                Ok(header)
            }
            DirectWrite::Encrypted => {
                // Encrypted into the TLS session; the reactor, which holds the gate again,
                // writes the records the socket did not take.
                self.shared.handovers.fetch_add(1, Ordering::Relaxed);
                let _ = self.shared.submit(Command::Queued {
                    channel: header.channel,
                });
                Ok(header)
            }
            DirectWrite::HandOver { msg, written } => {
                self.shared.handovers.fetch_add(1, Ordering::Relaxed);
                send.count(crate::proto::wire::encoded_len(&msg) as u64);
                let cmd = Command::HandOver {
                    group: Arc::clone(&self.group),
                    msg,
                    written,
                };
                self.submit_or_refuse(cmd, false)
            }
            // The gate closed meanwhile: queued as usual, and (the queue being empty a
            // moment ago) without the limit check, like any post to an empty queue.
            DirectWrite::NotTaken(msg) => match send.push(msg, bufs) {
                Ok(was_empty) => self.after_enqueue(was_empty, header),
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
    fn after_enqueue(&self, was_empty: bool, header: Header) -> Result<Header, PostError> {
        if was_empty {
            // The reactor takes the queue when told; the command costs no system call while
            // it is awake. Refused only once the engine is gone, and then the channel was
            // closed (its queue handed back) before.
            let _ = self.shared.submit(Command::Queued {
                channel: header.channel,
            });
        }
        Ok(header)
    }

    /// A Hello or Welcome request: a new channel number, then the reactor opens the channel.
    fn open(&self, mut msg: Message, expect: Option<Expect>) -> Result<Header, PostError> {
        if let Some(why) = self.tls_missing(&msg) {
            notify::add_error_text(&mut msg, &why);
            msg.header.status = Status::InvalidAddress;
            return Err(PostError {
                error: Error::InvalidAddress,
                message: msg,
            });
        }
        let allocated = {
            let mut table = self.shared.lock_table();
            let ch = table.allocate(self.group.id);
            if let Some(r) = ch.and_then(|ch| table.record(ch)) {
                r.send.count(crate::proto::wire::encoded_len(&msg) as u64);
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
        let id = msg.message_id();
        if let Some(e) = expect {
            self.group.expect(ch, id, e);
        }
        let r = self.submit_post(msg, true);
        if r.is_err() && expect.is_some() {
            self.group.unexpect(ch, id);
        }
        r
    }

    /// Why a Hello or Welcome to a `tls|` address cannot be served by this engine (no TLS
    /// config for that side, or no `tls` feature), if it cannot.
    fn tls_missing(&self, msg: &Message) -> Option<String> {
        let addr = Address::from_message(msg).ok()?;
        if !addr.is_tls() {
            return None;
        }
        self.shared
            .tls
            .missing(msg.opcode() == OpCode::WelcomeRequest)
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

    /// [`post`](Self::post), waiting while the channel's send queue is full instead of
    /// handing the message back with `SendQueueFull`. For a waiting sender the queue is full
    /// already at [`SEND_WINDOW`](crate::SEND_WINDOW) (1 MiB of unsent frames) or the
    /// [`SendLimit`](crate::SendLimit), whichever comes first: the calling thread then sleeps
    /// (no spinning) until the reactor has written half of it, and posts again. `timeout`
    /// `None` waits as long as it takes; when it passes, the message comes back with
    /// `SendQueueFull`. Every other failure is returned at once, as by `post`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tofu::{Engine, Error, Message, OpCode};
    /// # let engine = Engine::with_defaults()?;
    /// # let group = engine.create_group()?;
    /// let mut m = Message::with_opcode(OpCode::Signal);
    /// m.header.channel = 7; // no such channel: refused at once, however long the timeout
    /// let e = group.send_timeout(m, Some(Duration::from_secs(5))).unwrap_err();
    /// assert_eq!(e.error, Error::InvalidChannelNumber);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_timeout(
        &self,
        msg: Message,
        timeout: Option<Duration>,
    ) -> Result<Header, PostError> {
        let mut deadline = None;
        let mut msg = msg;
        loop {
            let e = match self.post_windowed(msg) {
                Err(e) if e.error == Error::SendQueueFull => e,
                done => return done,
            };
            let Ok(send) = self.send_state(e.message.channel()) else {
                return Err(e);
            };
            msg = e.message;
            let deadline = *deadline
                .get_or_insert_with(|| timeout.and_then(|t| Instant::now().checked_add(t)));
            if !send.wait_room(self.room_level(), deadline) {
                return Err(refused(Some(msg), Error::SendQueueFull));
            }
        }
    }

    /// The queue level (bytes, messages) a waiting sender waits for before it posts again:
    /// half the window (or the send limit), so that it posts a batch per wake-up.
    fn room_level(&self) -> (u64, u64) {
        let limit = self.shared.send_limit;
        (limit.bytes.min(SEND_WINDOW) / 2, limit.messages / 2)
    }

    /// The async form of [`send_timeout`](Self::send_timeout) without a timeout: a future
    /// that posts `msg`, waiting while the channel's send queue is full, and resolves to
    /// what `post` returns. It depends on no runtime (any executor polls it). Dropping it
    /// before it resolves drops the message (back to its pool) unless it was posted.
    pub fn send(&self, msg: Message) -> SendFuture<'_> {
        SendFuture {
            group: self,
            msg: Some(msg),
        }
    }

    /// Waits for the next message without blocking a thread: the async form of
    /// [`wait_receive`](Self::wait_receive) (without a timeout; wrap it in your runtime's
    /// timeout). It depends on no runtime. Many tasks may wait on one group at once, and
    /// threads in `wait_receive` beside them; each message goes to one of them.
    ///
    /// **Cancellation-safe:** a message is taken only when the future resolves, so dropping
    /// a pending future (a lost `select!` branch, a timeout) loses nothing; the next
    /// receive gets the message.
    ///
    /// Resolves to `Err(ShutdownStarted)` when the group was destroyed, or the engine is gone
    /// and every queued message has been taken.
    ///
    /// ```
    /// # use tofu::{Engine, Message, OpCode, Status};
    /// # let engine = Engine::with_defaults()?;
    /// # let group = engine.create_group()?;
    /// // Any executor drives it; here a minimal one from the standard library's `Wake`.
    /// # use std::sync::Arc; use std::task::{Context, Poll, Wake};
    /// # struct Thread(std::thread::Thread);
    /// # impl Wake for Thread { fn wake(self: Arc<Self>) { self.0.unpark() } }
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let waker = Arc::new(Thread(std::thread::current())).into();
    /// #     let mut cx = Context::from_waker(&waker);
    /// #     loop { if let Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } std::thread::park(); }
    /// # }
    /// group.update_receiver(None)?; // something to receive
    /// let m = block_on(group.receive())?;
    /// assert_eq!(m.status(), Status::ReceiverUpdate);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receive(&self) -> ReceiveFuture<'_> {
        ReceiveFuture {
            group: &self.group,
            key: None,
        }
    }

    /// The received messages as a [`futures_core::Stream`] (feature `stream`): each item is
    /// a message [`receive`](Self::receive) would resolve to, and the stream ends (`None`)
    /// where `receive` would fail with `ShutdownStarted`: when the group is destroyed, or the
    /// engine is gone and everything queued was taken. Cancellation-safe as `receive` is.
    #[cfg(feature = "stream")]
    pub fn messages(&self) -> Messages<'_> {
        Messages {
            group: &self.group,
            key: None,
        }
    }

    /// Posts the Request `msg` and waits for the peer's Response with the same message_id
    /// (a ByeRequest: the ByeResponse; the channel then closes)
    /// (`timeout` `None`: as long as it takes). Any number of threads and tasks may have
    /// requests in flight on one group at once; each gets its own answer, and everything
    /// else the group receives (other messages, the channel's Signals) still goes to
    /// `wait_receive`/`receive` in order, so this composes with a receive loop.
    ///
    /// A message_id of 0 is given the next id first (the answer may come before `post`
    /// returns). Fails with [`RequestError::Post`] when `post` refuses, `Refused` when the
    /// engine hands the request back unsent (its status says why), `Closed` when the channel
    /// closes before the answer comes, `TimedOut` (a later answer goes to `wait_receive`).
    ///
    /// While it waits, the calling thread first yields the CPU up to 100 times (an answer
    /// often comes within microseconds, from threads that may share its CPU), then sleeps
    /// until the answer comes: some tens of microseconds of CPU per slow answer, for round
    /// trips about half as long with free threads (see docs/benchmarks.md).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tofu::{Address, Engine, Message, OpCode};
    /// # let engine = Engine::with_defaults()?;
    /// # let (server, client) = (engine.create_group()?, engine.create_group()?);
    /// let port = server.listen(&Address::tcp("127.0.0.1", 0))?.port().unwrap();
    /// # std::thread::scope(|s| {
    /// #   s.spawn(|| { // an echo server: answers the Hello, then the Request
    /// #     for _ in 0..2 { let mut m = server.wait_receive(None).unwrap().unwrap(); m.make_echo().unwrap(); server.post(m).unwrap(); }
    /// #   });
    /// let ch = client.connect(&Address::tcp("127.0.0.1", port))?;
    /// let mut req = Message::with_opcode(OpCode::Request);
    /// req.header.channel = ch;
    /// req.set_body(b"ping");
    /// let reply = client.request(req, Some(Duration::from_secs(5)))?;
    /// assert_eq!((reply.opcode(), reply.body()), (OpCode::Response, &b"ping"[..]));
    /// # Ok::<(), tofu::RequestError>(()) }).unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn request(
        &self,
        msg: Message,
        timeout: Option<Duration>,
    ) -> Result<Message, RequestError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let expect = reply_to(&msg)?;
        let (channel, id) = self.post_expecting(msg, expect)?;
        answer(self.group.await_answer(channel, id, deadline))
    }

    /// The async form of [`request`](Self::request), without a timeout (wrap it in your
    /// runtime's). The request is posted by this call, not when the future is first polled
    /// (unlike [`send`](Self::send)); the future awaits the answer. Dropping it, polled or
    /// not, stops waiting: the answer then goes to `receive`.
    pub fn request_async(&self, msg: Message) -> RequestFuture<'_> {
        let posted = reply_to(&msg).and_then(|e| self.post_expecting(msg, e));
        RequestFuture {
            group: &self.group,
            posted,
            key: None,
        }
    }

    /// Closes `channel` gracefully: sends a ByeRequest and waits up to `timeout` (`None`:
    /// as long as it takes) for the peer's ByeResponse, which comes after every message the
    /// peer sent before it. The channel's final Signal still reaches the receive loop.
    /// Fails as [`request`](Self::request) does: when the channel was already closing, the
    /// ByeRequest comes back refused ([`RequestError::Refused`], `ChannelClosed`); when it
    /// is closed (or never was), `post` refuses it ([`RequestError::Post`],
    /// `InvalidChannelNumber`); when it closes while this waits, [`RequestError::Closed`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tofu::{Address, Engine};
    /// # let engine = Engine::with_defaults()?;
    /// let server = tofu::recipes::Server::start(
    ///     &engine, &[Address::tcp("127.0.0.1", 0)], tofu::recipes::Echo::default())?;
    /// let client = engine.create_group()?;
    /// let ch = client.connect(&server.addresses()[0])?;
    /// client.disconnect(ch, Some(Duration::from_secs(5)))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn disconnect(&self, channel: u16, timeout: Option<Duration>) -> Result<(), RequestError> {
        let mut bye = self.shared.pool.message();
        bye.header = Header::new(OpCode::ByeRequest);
        bye.header.channel = channel;
        self.request(bye, timeout).map(drop)
    }

    /// Connects a new channel to `addr` and returns its number once the peer's HelloResponse
    /// says Success. The failure shapes of a connect (a HelloRequest handed back refused,
    /// a HelloResponse with a failure status from the engine or the peer, the channel
    /// closing before any answer) come back as one [`RequestError::Refused`] with that
    /// message, and the channel's final Signal is not delivered: the channel never existed
    /// for the caller.
    ///
    /// The HelloResponse comes from the peer's application (a [`Server`](crate::recipes::Server)
    /// answers it by itself), not from its engine, and this waits for it without a time
    /// limit: a listener that receives the HelloRequest and never answers keeps `connect`
    /// waiting. Where the peer may be such a program, use
    /// [`connect_timeout`](Self::connect_timeout).
    pub fn connect(&self, addr: &Address) -> Result<u16, RequestError> {
        let (channel, id) = self.open_address(addr, Expect::Hello)?;
        answer(self.group.await_answer(channel, id, None)).map(|_| channel)
    }

    /// [`connect`](Self::connect) within `timeout` (as `std::net::TcpStream::connect_timeout`
    /// bounds a connect): [`RequestError::TimedOut`] when no answer came in time. The channel
    /// is then aborted (a local ByeSignal: the peer sees the connection reset) and nothing of
    /// it reaches the receive loop; an answer that comes at the deadline still counts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tofu::{Address, Engine, RequestError};
    /// // A peer that accepts the connection and never answers the Hello.
    /// let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let engine = Engine::with_defaults()?;
    /// let group = engine.create_group()?;
    /// let addr = Address::from(silent.local_addr()?);
    /// let err = group.connect_timeout(&addr, Duration::from_millis(100)).unwrap_err();
    /// assert!(matches!(err, RequestError::TimedOut));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_timeout(&self, addr: &Address, timeout: Duration) -> Result<u16, RequestError> {
        let deadline = Instant::now().checked_add(timeout);
        let (channel, id) = self.open_address(addr, Expect::Hello)?;
        match self.group.await_answer_or_abandon(channel, id, deadline) {
            None => {
                // Gone already (its final Signal is dropped too) if this is refused.
                let _ = self.post(Message::with_opcode(OpCode::ByeSignal).on_channel(channel));
                Err(RequestError::TimedOut)
            }
            came => answer(came).map(|_| channel),
        }
    }

    /// The async form of [`connect`](Self::connect) (no thread blocks while the OS connects).
    /// The HelloRequest is posted by this call, not when the future is first polled.
    /// Dropping the future, polled or not, stops waiting; a connection that still succeeds
    /// is then the receive loop's (its HelloResponse and, later, its final Signal arrive
    /// there).
    ///
    /// ```
    /// use tofu::recipes::{Echo, Server};
    /// use tofu::{Address, Engine};
    /// let engine = Engine::with_defaults()?;
    /// let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], Echo::default())?;
    /// let client = engine.create_group()?;
    /// futures_executor::block_on(async {
    ///     let ch = client.connect_async(&server.addresses()[0]).await?;
    ///     client.disconnect_async(ch).await
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_async(
        &self,
        addr: &Address,
    ) -> impl Future<Output = Result<u16, RequestError>> + Unpin + '_ {
        MapAnswer::new(self.open_future(addr, Expect::Hello), |reply| {
            reply.channel()
        })
    }

    /// The async form of [`listen`](Self::listen). The WelcomeRequest is posted by this
    /// call, not when the future is first polled.
    pub fn listen_async(
        &self,
        addr: &Address,
    ) -> impl Future<Output = Result<Listening, RequestError>> + Unpin + '_ {
        let asked = addr.clone();
        MapAnswer::new(self.open_future(addr, Expect::Welcome), move |reply| {
            let address = Address::from_message(&reply).unwrap_or(asked);
            Listening {
                channel: reply.channel(),
                address,
            }
        })
    }

    /// The async form of [`disconnect`](Self::disconnect), without a timeout (wrap it in
    /// your runtime's). The ByeRequest is posted by this call, as with
    /// [`request_async`](Self::request_async).
    pub fn disconnect_async(
        &self,
        channel: u16,
    ) -> impl Future<Output = Result<(), RequestError>> + Unpin + '_ {
        let mut bye = self.shared.pool.message();
        bye.header = Header::new(OpCode::ByeRequest);
        bye.header.channel = channel;
        MapAnswer::new(self.request_async(bye), drop)
    }

    /// Posts the HelloRequest or WelcomeRequest for `addr`; (channel, message_id) to await.
    fn open_address(&self, addr: &Address, expect: Expect) -> Result<(u16, u64), RequestError> {
        match expect {
            Expect::Welcome => addr.check(),
            _ => addr.check_connect(),
        }
        .map_err(RequestError::Address)?;
        let mut m = self.shared.pool.message();
        let formatted = match expect {
            Expect::Welcome => addr.format_listen(&mut m),
            _ => addr.format_connect(&mut m),
        };
        if let Err(e) = formatted {
            return Err(RequestError::Post(refused(Some(m), e)));
        }
        self.post_expecting(m, expect)
    }

    /// [`open_address`](Self::open_address), answered as a future.
    fn open_future(&self, addr: &Address, expect: Expect) -> RequestFuture<'_> {
        RequestFuture {
            group: &self.group,
            posted: self.open_address(addr, expect),
            key: None,
        }
    }

    /// Listens on `addr` and returns the listener once the engine's WelcomeResponse says
    /// Success, with the address it is bound to (the real port for port 0). Failures come
    /// back as [`RequestError::Refused`] with the WelcomeResponse (its status says why), and
    /// the channel's final Signal is not delivered.
    pub fn listen(&self, addr: &Address) -> Result<Listening, RequestError> {
        let (channel, id) = self.open_address(addr, Expect::Welcome)?;
        let reply = answer(self.group.await_answer(channel, id, None))?;
        let address = Address::from_message(&reply).unwrap_or_else(|_| addr.clone());
        Ok(Listening { channel, address })
    }

    /// Posts `msg`, awaiting its answer from before the post (it may come before `post`
    /// returns). Returns its channel and message_id.
    fn post_expecting(&self, mut msg: Message, expect: Expect) -> Result<(u16, u64), RequestError> {
        if msg.message_id() == 0 {
            msg.header.message_id = crate::proto::message::next_message_id();
        }
        let id = msg.message_id();
        match expect {
            Expect::Response | Expect::ByeResponse => {
                let channel = msg.channel();
                self.group.expect(channel, id, expect);
                match self.post(msg) {
                    Ok(_) => Ok((channel, id)),
                    Err(e) => {
                        self.group.unexpect(channel, id);
                        Err(RequestError::Post(e))
                    }
                }
            }
            // The channel number is known once allocated: `open` awaits the answer then,
            // before the command reaches the reactor.
            Expect::Hello | Expect::Welcome => self
                .post_with(msg, Some(expect))
                .map(|h| (h.channel, h.message_id))
                .map_err(RequestError::Post),
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
            None => notify::signal(self.shared.pool.message(), Status::ReceiverUpdate, 0, 0),
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

    /// Frames received from peers that wait in this group's queue, not yet taken by a
    /// receive, and their bytes: what the group's [`ReceiveLimit`](crate::ReceiveLimit)
    /// bounds. At the limit the engine stops reading this group's channels (and only
    /// theirs) until the application receives.
    ///
    /// ```
    /// let engine = tofu::Engine::with_defaults()?;
    /// let group = engine.create_group()?;
    /// assert_eq!(group.queued(), (0, 0)); // nothing received yet
    /// # Ok::<(), tofu::Error>(())
    /// ```
    pub fn queued(&self) -> (usize, usize) {
        self.group.queued()
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

/// What [`ChannelGroup::request`], [`connect`](ChannelGroup::connect) and
/// [`listen`](ChannelGroup::listen) return instead of an answer.
///
/// ```
/// use std::time::Duration;
/// use tofu::{Engine, Message, OpCode, RequestError, Status};
/// let engine = Engine::with_defaults()?;
/// let group = engine.create_group()?;
/// // A request on a channel that does not exist is refused at post.
/// let req = Message::with_opcode(OpCode::Request).on_channel(4242);
/// match group.request(req, Some(Duration::from_secs(1))) {
///     Err(e @ RequestError::Post(_)) => assert_eq!(e.status(), Status::InvalidChannelNumber),
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub enum RequestError {
    /// `post` refused the message (it is handed back with the error).
    Post(PostError),
    /// The engine or the peer said no: the message that says it, whose status says why (a
    /// request handed back unsent, a refused connect's HelloRequest or HelloResponse, a
    /// failed listen's WelcomeResponse), or the final `ChannelClosed` Signal of a channel
    /// that ended before its connect or listen was answered (a peer that closed at once, a
    /// TLS handshake the peer rejected after the Hello left). A `~error` text header, when
    /// there is one, gives the reason in the engine's or the OS's or rustls's words; the
    /// `Display` form includes it.
    Refused(Message),
    /// A request's channel closed (`ChannelClosed`; dropping the engine closes every
    /// channel, so that is what a request waiting then gets), or its group was destroyed
    /// (`ShutdownStarted`), before an answer came.
    Closed(Status),
    /// No answer within the timeout; a later one goes to `wait_receive`.
    TimedOut,
    /// `request` takes a Request or a ByeRequest; this was another opcode (nothing posted).
    NotARequest(OpCode),
    /// `connect` or `listen` was given an address that can never work; the error says what
    /// is wrong with it (nothing posted).
    Address(AddressError),
}

impl RequestError {
    /// The status that says what happened (`TimedOut`, which has none, maps to
    /// `ProcessingFailed`; `NotARequest` to `InvalidOpCode`).
    pub fn status(&self) -> Status {
        match self {
            RequestError::Post(e) => e.error.status(),
            RequestError::Refused(m) => m.status(),
            RequestError::Closed(s) => *s,
            RequestError::TimedOut => Status::ProcessingFailed,
            RequestError::NotARequest(_) => Status::InvalidOpCode,
            RequestError::Address(_) => Status::InvalidAddress,
        }
    }

    /// Why, in the engine's, the OS's or rustls's words, when they said something: the
    /// `~error` text of the message that carries the failure (see
    /// [`ERROR_TEXT`](crate::message::ERROR_TEXT)), or what is wrong with an address. It is
    /// what `Display` adds to the status, and the place to look for a TLS failure's cause,
    /// whose status depends on where the handshake failed (`TlsFailed`, or `ChannelClosed`
    /// when the peer rejected it after the Hello left).
    ///
    /// ```
    /// use tofu::{Address, Engine};
    /// let engine = Engine::with_defaults()?;
    /// let group = engine.create_group()?;
    /// let err = group.connect(&Address::tcp("127.0.0.1", 0)).unwrap_err();
    /// assert!(err.reason().is_some_and(|why| why.contains("port 0")), "{err}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reason(&self) -> Option<&str> {
        match self {
            RequestError::Post(e) => e.message.header_value(crate::proto::message::ERROR_TEXT),
            RequestError::Refused(m) => m.header_value(crate::proto::message::ERROR_TEXT),
            RequestError::Address(e) => Some(e.problem()),
            RequestError::Closed(_) | RequestError::TimedOut | RequestError::NotARequest(_) => None,
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Post(e) => write!(f, "{e}"),
            RequestError::Refused(m) => {
                match m.opcode() {
                    OpCode::HelloRequest | OpCode::HelloResponse => write!(
                        f,
                        "connect to {} failed: {}",
                        m.header_value("~connect_to").unwrap_or("?"),
                        m.status()
                    )?,
                    OpCode::WelcomeResponse => write!(
                        f,
                        "listen on {} failed: {}",
                        m.header_value("~listen_on").unwrap_or("?"),
                        m.status()
                    )?,
                    // The final Signal of a channel that ended before its connect or
                    // listen was answered.
                    OpCode::Signal => write!(
                        f,
                        "channel {} closed before the answer came: {}",
                        m.channel(),
                        m.status()
                    )?,
                    op => write!(f, "{op:?} refused: {}", m.status())?,
                }
                match m.header_value(crate::proto::message::ERROR_TEXT) {
                    Some(why) => write!(f, " ({why})"),
                    None => Ok(()),
                }
            }
            RequestError::Closed(s) => write!(f, "no answer: {s:?} before it came"),
            RequestError::TimedOut => write!(f, "no answer within the timeout"),
            RequestError::NotARequest(op) => write!(
                f,
                "request takes a Request or a ByeRequest, not a {op:?} (use post)"
            ),
            RequestError::Address(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// A listener made by [`ChannelGroup::listen`]: its channel and the address it is bound to
/// (for port 0, the port the system chose).
///
/// ```
/// let engine = tofu::Engine::with_defaults()?;
/// let group = engine.create_group()?;
/// let l = group.listen(&tofu::Address::tcp("127.0.0.1", 0))?;
/// assert_ne!(l.port(), Some(0)); // the port the OS chose
/// println!("listening on {} (channel {})", l.address, l.channel);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    /// The listener's channel (post a ByeSignal to it to stop listening).
    pub channel: u16,
    /// Where it listens.
    pub address: Address,
}

impl Listening {
    /// The TCP port, for a TCP listener.
    pub fn port(&self) -> Option<u16> {
        self.address.port()
    }
}

/// What answers `msg` as a request: a Request's Response, a ByeRequest's ByeResponse.
fn reply_to(msg: &Message) -> Result<Expect, RequestError> {
    match msg.opcode() {
        OpCode::Request => Ok(Expect::Response),
        OpCode::ByeRequest => Ok(Expect::ByeResponse),
        _ => Err(RequestError::NotARequest(msg.opcode())),
    }
}

fn answer(a: Option<Answer>) -> Result<Message, RequestError> {
    match a {
        Some(Answer::Reply(m)) => Ok(m),
        Some(Answer::Refused(m)) => Err(RequestError::Refused(m)),
        Some(Answer::Closed(s)) => Err(RequestError::Closed(s)),
        None => Err(RequestError::TimedOut),
    }
}

/// A [`RequestFuture`] whose answer is turned into what the caller returns
/// (`connect_async`, `listen_async`, `disconnect_async`): `Unpin` like the future it wraps,
/// so it can be polled by `&mut` and passed to `select`s without pinning.
struct MapAnswer<'a, F> {
    fut: RequestFuture<'a>,
    map: Option<F>,
}

impl<'a, T, F: FnOnce(Message) -> T + Unpin> MapAnswer<'a, F> {
    fn new(fut: RequestFuture<'a>, map: F) -> MapAnswer<'a, F> {
        MapAnswer {
            fut,
            map: Some(map),
        }
    }
}

impl<T, F: FnOnce(Message) -> T + Unpin> Future for MapAnswer<'_, F> {
    type Output = Result<T, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.fut).poll(cx) {
            Poll::Ready(r) => {
                let map = this
                    .map
                    .take()
                    .expect("MapAnswer polled after it completed");
                Poll::Ready(r.map(map))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The future of [`ChannelGroup::request_async`].
///
/// ```
/// use tofu::recipes::{Echo, Server};
/// use tofu::{Address, Engine, Message, OpCode};
/// let engine = Engine::with_defaults()?;
/// let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], Echo::default())?;
/// let client = engine.create_group()?;
/// let ch = client.connect(&server.addresses()[0])?;
/// let req = Message::with_opcode(OpCode::Request).on_channel(ch).with_body(b"hi");
/// let reply = futures_executor::block_on(client.request_async(req))?; // any executor
/// assert_eq!(reply.body(), b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "the message is posted already; dropping this future sends its answer to `receive`"]
pub struct RequestFuture<'a> {
    group: &'a GroupShared,
    /// The posted request's channel and id, or why it was not posted (taken when polled).
    posted: Result<(u16, u64), RequestError>,
    key: Option<u64>,
}

impl Future for RequestFuture<'_> {
    type Output = Result<Message, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (channel, id) = match &this.posted {
            Ok(p) => *p,
            Err(_) => {
                let e = std::mem::replace(&mut this.posted, Err(RequestError::TimedOut));
                return Poll::Ready(Err(e.err().unwrap_or(RequestError::TimedOut)));
            }
        };
        match this
            .group
            .poll_answer(channel, id, &mut this.key, cx.waker())
        {
            Poll::Ready(a) => {
                this.posted = Err(RequestError::Closed(Status::ChannelClosed));
                Poll::Ready(answer(a))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for RequestFuture<'_> {
    fn drop(&mut self) {
        if let Ok((channel, id)) = self.posted {
            self.group.unexpect(channel, id);
        }
        self.group.forget(&mut self.key);
    }
}

impl std::fmt::Debug for RequestFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFuture").finish_non_exhaustive()
    }
}

/// The future of [`ChannelGroup::receive`]: the next message of the group, or
/// `ShutdownStarted`. Cancellation-safe: dropping it while pending loses no message.
///
/// ```
/// let engine = tofu::Engine::with_defaults()?;
/// let group = engine.create_group()?;
/// group.update_receiver(None)?; // something to receive
/// let m = futures_executor::block_on(group.receive())?;
/// assert_eq!(m.status(), tofu::Status::ReceiverUpdate);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ReceiveFuture<'a> {
    group: &'a GroupShared,
    /// This future's waker in the group's list, once it waited.
    key: Option<u64>,
}

impl Future for ReceiveFuture<'_> {
    type Output = Result<Message, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.group.poll_receive(&mut this.key, cx.waker())
    }
}

impl Drop for ReceiveFuture<'_> {
    fn drop(&mut self) {
        self.group.forget(&mut self.key);
    }
}

impl std::fmt::Debug for ReceiveFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiveFuture")
            .field("group", &self.group.id)
            .finish()
    }
}

/// The stream of [`ChannelGroup::messages`] (feature `stream`).
///
/// ```
/// use futures_core::Stream;
/// let engine = tofu::Engine::with_defaults()?;
/// let group = engine.create_group()?;
/// group.update_receiver(None)?;
/// let mut messages = std::pin::pin!(group.messages());
/// let next = std::future::poll_fn(|cx| messages.as_mut().poll_next(cx));
/// let m = futures_executor::block_on(next).expect("the stream goes on while the group lives");
/// assert_eq!(m.status(), tofu::Status::ReceiverUpdate);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "stream")]
#[must_use = "streams do nothing unless polled"]
pub struct Messages<'a> {
    group: &'a GroupShared,
    key: Option<u64>,
}

#[cfg(feature = "stream")]
impl futures_core::Stream for Messages<'_> {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let this = self.get_mut();
        this.group
            .poll_receive(&mut this.key, cx.waker())
            .map(Result::ok)
    }
}

#[cfg(feature = "stream")]
impl Drop for Messages<'_> {
    fn drop(&mut self) {
        self.group.forget(&mut self.key);
    }
}

#[cfg(feature = "stream")]
impl std::fmt::Debug for Messages<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("group", &self.group.id)
            .finish()
    }
}

/// The future of [`ChannelGroup::send`]: posts its message, waiting while the channel's
/// send queue is full.
///
/// ```
/// use tofu::recipes::{Echo, Server};
/// use tofu::{Address, Engine, Message, OpCode};
/// let engine = Engine::with_defaults()?;
/// let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], Echo::default())?;
/// let client = engine.create_group()?;
/// let ch = client.connect(&server.addresses()[0])?;
/// futures_executor::block_on(async {
///     for i in 0..1000u32 {
///         let s = Message::with_opcode(OpCode::Signal).on_channel(ch).with_body(&i.to_be_bytes());
///         client.send(s).await?; // waits while the send queue is full
///     }
///     Ok::<(), tofu::PostError>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct SendFuture<'a> {
    group: &'a ChannelGroup,
    msg: Option<Message>,
}

impl Future for SendFuture<'_> {
    type Output = Result<Header, PostError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let Some(msg) = this.msg.take() else {
                panic!("SendFuture polled after it resolved");
            };
            let e = match this.group.post_windowed(msg) {
                Err(e) if e.error == Error::SendQueueFull => e,
                done => return Poll::Ready(done),
            };
            let Ok(send) = this.group.send_state(e.message.channel()) else {
                return Poll::Ready(Err(e));
            };
            this.msg = Some(e.message);
            if send
                .poll_room(this.group.room_level(), cx.waker())
                .is_pending()
            {
                return Poll::Pending;
            }
        }
    }
}

impl std::fmt::Debug for SendFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFuture")
            .field("channel", &self.msg.as_ref().map(Message::channel))
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
