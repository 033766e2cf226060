//! A multi-homed server: one group listening on several addresses, a thread receiving for
//! it, Hello and Bye answered, everything else passed to a [`Service`] (tofu's `MultiHomed`
//! and `Services`).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::{Address, ChannelGroup, Engine, Error, Message, OpCode, Origin, RequestError, Status};

/// What a [`Server`] does with what its peers send. The server's thread calls it, one
/// message at a time; return [`ControlFlow::Break`] to stop the server.
///
/// The server answers HelloRequest and ByeRequest itself; the service sees everything
/// else: the peers' Requests, Signals and Responses, and its own messages handed back by the
/// engine (origin engine, the status says why, as every receive loop sees them). Channel
/// ends come as calls: [`on_close`](Self::on_close) for a peer that said Hello,
/// [`on_failed_connect`](Self::on_failed_connect) for a connection that ended before it
/// did (a refused TLS client, say).
///
/// ```
/// use std::ops::ControlFlow;
/// use tofu::recipes::Service;
/// use tofu::{ChannelGroup, Message, OpCode};
///
/// /// Answers every Request with its body reversed.
/// struct Reverse;
///
/// impl Service for Reverse {
///     fn on_message(&mut self, mut m: Message, group: &ChannelGroup) -> ControlFlow<()> {
///         if m.opcode() == OpCode::Request {
///             let body: Vec<u8> = m.body().iter().rev().copied().collect();
///             m.set_body(&body);
///             m.make_echo().expect("a Request has a Response");
///             let _ = group.post(m); // fails only if the channel closed meanwhile
///         }
///         ControlFlow::Continue(())
///     }
/// }
/// ```
pub trait Service: Send + 'static {
    /// A message for the service (see the trait's documentation). `group` is the server's:
    /// post replies (or anything) through it.
    fn on_message(&mut self, msg: Message, group: &ChannelGroup) -> ControlFlow<()>;

    /// A peer connected: its HelloRequest, answered with a HelloResponse right after this
    /// returns (so post nothing to `hello.channel()` here). Default: nothing.
    fn on_connect(&mut self, hello: &Message) -> ControlFlow<()> {
        let _ = hello;
        ControlFlow::Continue(())
    }

    /// The channel to a peer whose Hello was answered closed (gracefully or not; its final
    /// Signal came): once per such channel. Default: nothing.
    fn on_close(&mut self, channel: u16) -> ControlFlow<()> {
        let _ = channel;
        ControlFlow::Continue(())
    }

    /// A connection ended before it said Hello, so it never came to
    /// [`on_connect`](Self::on_connect) (nor will it to `on_close`): a failed TLS handshake
    /// (a client certificate missing or refused, a plain `tcp|` client at a `tls|` listener),
    /// or a peer that connected and closed, or whose first frame was not a valid
    /// HelloRequest. `end` is the channel's final Signal; its `~error` text
    /// ([`ERROR_TEXT`](crate::message::ERROR_TEXT)) gives the reason when there is one (a
    /// peer that just closed gives none). Once per such connection. Default: nothing.
    ///
    /// A connect the service makes itself through the server's group is not reported here
    /// once its HelloResponse came or its Hello was handed back; one whose TLS peer refused
    /// it after the Hello left (a final Signal is all that comes) is.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use tofu::message::ERROR_TEXT;
    /// use tofu::recipes::{Server, Service};
    /// use tofu::{Address, ChannelGroup, Engine, Message};
    ///
    /// struct Logged;
    /// impl Service for Logged {
    ///     fn on_message(&mut self, _: Message, _: &ChannelGroup) -> ControlFlow<()> {
    ///         ControlFlow::Continue(())
    ///     }
    ///     fn on_failed_connect(&mut self, end: &Message) -> ControlFlow<()> {
    ///         let why = end.header_value(ERROR_TEXT).unwrap_or("closed before its Hello");
    ///         eprintln!("a peer did not connect: {why}");
    ///         ControlFlow::Break(()) // stop the server, for this example
    ///     }
    /// }
    ///
    /// let engine = Engine::with_defaults()?;
    /// let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], Logged)?;
    /// let port = server.addresses()[0].port().unwrap();
    /// drop(std::net::TcpStream::connect(("127.0.0.1", port))?); // no Hello
    /// server.join();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn on_failed_connect(&mut self, end: &Message) -> ControlFlow<()> {
        let _ = end;
        ControlFlow::Continue(())
    }
}

/// A closure is a service that sees only the messages (Hello and Bye are still answered).
///
/// ```
/// use std::ops::ControlFlow;
/// use tofu::recipes::Server;
/// use tofu::{Address, ChannelGroup, Engine, Message};
///
/// let engine = Engine::with_defaults()?;
/// let mut seen = 0;
/// let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], move |m: Message, _: &ChannelGroup| {
///     seen += 1;
///     println!("{seen}: {m:?}");
///     ControlFlow::Continue(())
/// })?;
/// # drop(server);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<F> Service for F
where
    F: FnMut(Message, &ChannelGroup) -> ControlFlow<()> + Send + 'static,
{
    fn on_message(&mut self, msg: Message, group: &ChannelGroup) -> ControlFlow<()> {
        self(msg, group)
    }
}

/// tofu's `EchoService`: every Request comes back as a Response, every Signal as a Signal,
/// with the same body; it counts what it saw.
///
/// ```
/// use tofu::recipes::{Echo, Server};
/// use tofu::{Address, Engine};
///
/// let engine = Engine::with_defaults()?;
/// let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], Echo::default())?;
/// println!("echoing on {}", server.addresses()[0]);
/// let echo: Echo = server.stop();
/// assert_eq!(echo.connections, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// Peers that connected.
    pub connections: u64,
    /// Channels to peers that closed.
    pub closed: u64,
    /// Requests and Signals echoed.
    pub echoed: u64,
    /// Stop the server once this many channels closed (`None`: never).
    pub stop_after_closed: Option<u64>,
}

impl Service for Echo {
    fn on_message(&mut self, mut m: Message, group: &ChannelGroup) -> ControlFlow<()> {
        let data = matches!(m.opcode(), OpCode::Request | OpCode::Signal);
        if data && m.origin() == Origin::Application && m.make_echo().is_ok() {
            self.echoed += 1;
            // A failed post means the channel closed meanwhile; its close comes anyway.
            let _ = group.post(m);
        }
        ControlFlow::Continue(())
    }

    fn on_connect(&mut self, _hello: &Message) -> ControlFlow<()> {
        self.connections += 1;
        ControlFlow::Continue(())
    }

    fn on_close(&mut self, _channel: u16) -> ControlFlow<()> {
        self.closed += 1;
        match self.stop_after_closed {
            Some(n) if self.closed >= n => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Why [`Server::start`] failed.
///
/// ```
/// use tofu::recipes::{Echo, Server, ServerError};
/// use tofu::Address;
/// let engine = tofu::Engine::with_defaults()?;
/// let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let busy = Address::from(taken.local_addr()?);
/// match Server::start(&engine, &[busy.clone()], Echo::default()) {
///     Err(ServerError::Listen { address, error }) => {
///         assert_eq!(address, busy);
///         println!("{}", error.status()); // ListenFailed
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub enum ServerError {
    /// The engine could not give a group or a thread (it is shutting down, or out of
    /// resources).
    Engine(Error),
    /// Listening on `address` failed; nothing listens on the others either.
    Listen {
        /// The address that failed.
        address: Address,
        /// What happened (`error.status()` says why, `ListenFailed` or `InvalidAddress`
        /// typically; a refusal's `~error` text header has the OS's words).
        error: Box<RequestError>,
    },
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Engine(e) => write!(f, "cannot start the server: {e}"),
            ServerError::Listen { address, error } => {
                write!(f, "cannot listen on {address}: {error}")
            }
        }
    }
}

impl std::error::Error for ServerError {}

/// A server: a group of its own listening on every given address and a thread that answers
/// Hello and Bye and passes everything else to a [`Service`] (tofu's `MultiHomed`).
///
/// It runs until the service returns `Break`, [`stop`](Self::stop) is called or it is
/// dropped, or the engine shuts down. Ending destroys its group: the listeners close and
/// every connected peer sees its channel closed.
///
/// ```
/// use tofu::recipes::{Echo, Server};
/// use tofu::{Address, Engine, Message, OpCode};
/// use std::time::Duration;
///
/// let engine = Engine::with_defaults()?;
/// let mut addrs = vec![Address::tcp("127.0.0.1", 0)];
/// if tofu::testing::uds_supported() {
///     addrs.push(Address::uds("")); // an automatic path
/// }
/// let server = Server::start(&engine, &addrs, Echo::default())?;
///
/// let client = engine.create_group()?;
/// for addr in server.addresses() {
///     let channel = client.connect(addr)?;
///     let mut req = Message::with_opcode(OpCode::Request);
///     req.header.channel = channel;
///     req.set_body(b"ping");
///     let reply = client.request(req, Some(Duration::from_secs(10)))?;
///     assert_eq!(reply.body(), b"ping");
/// }
/// assert_eq!(server.stop().echoed as usize, addrs.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server<S: Service> {
    group: Arc<ChannelGroup>,
    addresses: Vec<Address>,
    listeners: Vec<u16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<S>>,
}

impl<S: Service> Server<S> {
    /// Listens on every address (port 0 and an empty UDS path pick one: see
    /// [`addresses`](Self::addresses)), then serves on a thread of its own. With no
    /// address it listens nowhere and serves only what its group connects to itself.
    pub fn start(
        engine: &Engine,
        addresses: &[Address],
        service: S,
    ) -> Result<Server<S>, ServerError> {
        let group = Arc::new(engine.create_group().map_err(ServerError::Engine)?);
        let mut bound = Vec::with_capacity(addresses.len());
        let mut listeners = Vec::with_capacity(addresses.len());
        for address in addresses {
            let l = group.listen(address).map_err(|error| ServerError::Listen {
                address: address.clone(),
                error: Box::new(error),
            })?; // dropping `group` closes the listeners opened so far
            bound.push(l.address);
            listeners.push(l.channel);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (group, stop) = (Arc::clone(&group), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("tofu-server".into())
                .spawn({
                    let listeners = listeners.clone();
                    move || serve(&group, &stop, &listeners, service)
                })
                .map_err(|_| ServerError::Engine(Error::AllocationFailed))?
        };
        Ok(Server {
            group,
            addresses: bound,
            listeners,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the server listens, in the order given to [`start`](Self::start), with the
    /// real port or path where the OS picked one.
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// The listeners' channels, in the same order.
    pub fn listeners(&self) -> &[u16] {
        &self.listeners
    }

    /// The server's group: post through it (to a connected peer's channel, for example);
    /// clone the `Arc` to post from another thread. Receiving from it steals the service's
    /// messages.
    pub fn group(&self) -> &Arc<ChannelGroup> {
        &self.group
    }

    /// True once the serving thread ended (the service returned `Break`, or the engine shut
    /// down).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().map_or(true, |t| t.is_finished())
    }

    /// Stops the server after the message in hand, closes its listeners and channels, and
    /// returns the service (with whatever it counted). The channels close abortively (RST),
    /// as [`ChannelGroup::destroy`] does: replies not yet written are dropped, and so are
    /// the peers' messages received and not yet taken by the service (and what they sent
    /// that had not arrived); the peers see a reset. For a
    /// graceful end, [`disconnect`](ChannelGroup::disconnect) each peer channel through
    /// [`group`](Self::group) first.
    ///
    /// # Panics
    ///
    /// If the service panicked (the panic is passed on).
    pub fn stop(mut self) -> S {
        self.end(true)
    }

    /// Waits until the service stops the server itself (returns `Break`) or the engine shuts
    /// down, then closes the listeners and channels and returns the service.
    ///
    /// # Panics
    ///
    /// If the service panicked (the panic is passed on).
    pub fn join(mut self) -> S {
        self.end(false)
    }

    fn end(&mut self, stop: bool) -> S {
        if stop {
            self.stop.store(true, Ordering::SeqCst);
            // Wakes the thread; fails only when the group already ended, which ends it too.
            let _ = self.group.update_receiver(None);
        }
        let thread = self.thread.take().expect("a server ends once");
        let service = thread.join();
        self.group.destroy();
        service.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl<S: Service> Drop for Server<S> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = self.group.update_receiver(None);
            let _ = thread.join(); // a panic in the service is not passed on from a drop
            self.group.destroy();
        }
    }
}

impl<S: Service> std::fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addresses", &self.addresses)
            .field("listeners", &self.listeners)
            .finish()
    }
}

/// The serving thread's loop.
fn serve<S: Service>(
    group: &ChannelGroup,
    stop: &AtomicBool,
    listeners: &[u16],
    mut service: S,
) -> S {
    // Peers whose Hello was answered: only their channels' ends are `on_close`s. The end of
    // any other channel but a listener or one the service connected itself (a HelloResponse
    // came, or its Hello was handed back) is that of a connection that closed before its
    // Hello.
    let mut connected = std::collections::HashSet::new();
    let mut outgoing = std::collections::HashSet::new();
    loop {
        let m = match group.wait_receive(None) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(_) => break, // the group or the engine ended
        };
        if m.status() == Status::ReceiverUpdate && stop.load(Ordering::SeqCst) {
            break;
        }
        let app = m.origin() == Origin::Application;
        let flow = match m.opcode() {
            OpCode::HelloRequest if app && m.status() == Status::Success => {
                let flow = service.on_connect(&m);
                connected.insert(m.channel());
                answer(group, m);
                flow
            }
            OpCode::HelloResponse | OpCode::HelloRequest => {
                outgoing.insert(m.channel());
                service.on_message(m, group)
            }
            OpCode::ByeRequest if app => {
                answer(group, m);
                ControlFlow::Continue(())
            }
            _ if m.is_channel_end() => {
                if connected.remove(&m.channel()) {
                    service.on_close(m.channel())
                } else if listeners.contains(&m.channel()) || outgoing.remove(&m.channel()) {
                    ControlFlow::Continue(())
                } else {
                    service.on_failed_connect(&m)
                }
            }
            _ => service.on_message(m, group),
        };
        if flow.is_break() {
            break;
        }
    }
    service
}

/// Posts the HelloResponse or ByeResponse to `m`.
fn answer(group: &ChannelGroup, mut m: Message) {
    if m.make_echo().is_ok() {
        // A failed post means the channel closed meanwhile; its close is reported anyway.
        let _ = group.post(m);
    }
}
