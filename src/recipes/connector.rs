//! A connection that keeps itself up: the Hello is retried with backoff until it succeeds,
//! and sent again after the channel is lost (tofu's reconnect recipes, as a type).

use std::time::{Duration, Instant};

use crate::message::ERROR_TEXT;
use crate::{
    Address, ChannelGroup, Engine, Error, Header, Message, OpCode, Origin, PostError, RequestError,
    Status,
};

/// How long a [`Connector`] waits before the next attempt: `first` after the first failure,
/// doubling with every failure in a row up to `max`; back to `first` once connected.
///
/// ```
/// use std::time::Duration;
/// use tofu::recipes::Backoff;
///
/// let b = Backoff { first: Duration::from_millis(100), max: Duration::from_secs(1) };
/// assert_eq!(b.delay(0), Duration::from_millis(100));
/// assert_eq!(b.delay(3), Duration::from_millis(800));
/// assert_eq!(b.delay(10), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures + 1` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    /// 10 ms, doubling up to 2 s.
    fn default() -> Backoff {
        Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_secs(2),
        }
    }
}

/// What [`Connector::receive`] reports: each change of the connection's state, and the
/// messages for the application.
///
/// ```
/// use tofu::recipes::Event;
/// fn describe(e: &Event) -> String {
///     match e {
///         Event::Connecting { attempt } => format!("attempt {attempt}"),
///         Event::Connected { channel } => format!("up on channel {channel}"),
///         Event::Disconnected { status, retry_in, .. } => format!("{status}, again in {retry_in:?}"),
///         Event::Message(m) => format!("{:?} from the peer", m.opcode()),
///     }
/// }
/// assert_eq!(describe(&Event::Connected { channel: 7 }), "up on channel 7");
/// ```
#[derive(Debug)]
pub enum Event {
    /// A HelloRequest was posted (`attempt` counts from 1 since the last connection). An
    /// attempt the peer does not answer within the hello timeout
    /// ([`Connector::set_hello_timeout`]) ends as `Disconnected` with `ConnectFailed`.
    Connecting {
        /// Attempts since the connector was last connected.
        attempt: u32,
    },
    /// The peer answered the Hello: post to `channel` (or use [`Connector::post`]).
    Connected {
        /// The new channel; it changes with every connection.
        channel: u16,
    },
    /// Not connected: the attempt failed or the channel was lost. The next attempt starts
    /// after `retry_in`.
    Disconnected {
        /// Why: the failure's status (`ConnectFailed`, `PeerDisconnected`, ...), else
        /// `ChannelClosed`.
        status: Status,
        /// What the OS or the engine said, when it said something (the `~error` text);
        /// `None` after the peer's graceful close.
        reason: Option<String>,
        /// The wait before the next attempt ([`Backoff::delay`]).
        retry_in: Duration,
    },
    /// A message from the peer, or one of the application's handed back by the engine
    /// (origin engine; its status says why, as in any receive loop).
    Message(Message),
}

/// The state of the connection.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// Waiting for the time of the next attempt.
    Waiting { until: Instant },
    /// A Hello is out on `channel`, to be answered by `until` (`None`: no limit); once
    /// `given_up`, its channel is aborted and only its end is awaited.
    Connecting {
        channel: u16,
        until: Option<Instant>,
        given_up: bool,
    },
    /// Connected on `channel`.
    Connected { channel: u16 },
}

/// One connection to `address` that is re-established whenever it is lost, with a group of
/// its own. Drive it with [`receive`](Self::receive) from one thread: it reports each state
/// change as an [`Event`] and passes the peer's messages through, and reconnects inside
/// `receive` when due. Nothing is retried behind the application's back except the Hello:
/// messages handed back when a channel is lost come out as `Event::Message`.
///
/// The peer's ByeRequest is answered inside `receive` too, so a peer's graceful
/// [`disconnect`](ChannelGroup::disconnect) completes only while the application calls
/// `receive`. Its end is reported as `Disconnected` with `ChannelClosed` and no `reason`;
/// a reset or another failure comes with the OS's words.
///
/// ```no_run
/// use std::time::Duration;
/// use tofu::recipes::{Backoff, Connector, Event};
/// use tofu::{Address, Engine, Message, OpCode};
///
/// let engine = Engine::with_defaults()?;
/// let mut conn = Connector::new(&engine, Address::tcp("127.0.0.1", 7099), Backoff::default())?;
/// loop {
///     match conn.receive(None)? {
///         Some(Event::Connected { channel }) => {
///             let mut hi = Message::with_opcode(OpCode::Signal);
///             hi.header.channel = channel;
///             conn.post(hi)?;
///         }
///         Some(Event::Disconnected { status, retry_in, .. }) => {
///             eprintln!("{status}; again in {retry_in:?}");
///         }
///         Some(Event::Message(m)) => println!("{m:?}"),
///         _ => {}
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Connector {
    group: ChannelGroup,
    address: Address,
    backoff: Backoff,
    link: Link,
    /// Failures in a row since the last connection.
    failures: u32,
    /// Why the current attempt or channel is failing, as its messages said so far.
    why: Option<(Status, Option<String>)>,
    /// An event to report before waiting for messages.
    ready: Option<Event>,
    /// How long an attempt waits for the peer's HelloResponse.
    hello_timeout: Option<Duration>,
}

/// How long a [`Connector`] waits for the peer's HelloResponse by default (as long as the
/// engine's default frame timeout).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

impl Connector {
    /// A connector with a group of `engine`; the first HelloRequest is posted at once.
    ///
    /// Fails with [`RequestError::Address`] when `address` can never be connected to (it
    /// says what is wrong; nothing is posted), and with `Closed(ShutdownStarted)` when the
    /// engine is shutting down.
    pub fn new(
        engine: &Engine,
        address: Address,
        backoff: Backoff,
    ) -> Result<Connector, RequestError> {
        address.check_connect().map_err(RequestError::Address)?;
        if let Err(e) = address.format_connect(&mut Message::new()) {
            return Err(RequestError::Closed(e.status())); // a listen-only address
        }
        let group = engine
            .create_group()
            .map_err(|e| RequestError::Closed(e.status()))?;
        let mut c = Connector {
            group,
            address,
            backoff,
            link: Link::Waiting {
                until: Instant::now(),
            },
            failures: 0,
            why: None,
            ready: None,
            hello_timeout: Some(HELLO_TIMEOUT),
        };
        c.ready = Some(c.attempt().map_err(|e| RequestError::Closed(e.status()))?);
        Ok(c)
    }

    /// The next event, waiting up to `timeout` (`None`: until there is one); `Ok(None)`
    /// when the time passed. Posts the next Hello when one is due.
    ///
    /// Fails with `ShutdownStarted` once the engine is gone.
    pub fn receive(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, Error> {
        if let Some(e) = self.ready.take() {
            return Ok(Some(e));
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let now = Instant::now();
            match self.link {
                Link::Waiting { until } if now >= until => return self.attempt().map(Some),
                Link::Connecting {
                    channel,
                    until: Some(until),
                    given_up: false,
                } if now >= until => self.give_up(channel),
                _ => {}
            }
            let due = match self.link {
                Link::Waiting { until }
                | Link::Connecting {
                    until: Some(until),
                    given_up: false,
                    ..
                } => Some(until),
                _ => None,
            };
            let wake = match (due, deadline) {
                (Some(u), Some(d)) => Some(u.min(d)),
                (u, d) => u.or(d),
            };
            let wait = wake.map(|w| w.saturating_duration_since(now));
            match self.group.wait_receive(wait)? {
                Some(m) => {
                    if let Some(e) = self.handle(m) {
                        return Ok(Some(e));
                    }
                }
                // The caller's time is up; an attempt or a give-up due by now is made
                // first (each moves `due` on, so this goes round at most twice).
                None if deadline.is_some_and(|d| Instant::now() >= d)
                    && !due.is_some_and(|u| Instant::now() >= u) =>
                {
                    return Ok(None)
                }
                None => {}
            }
        }
    }

    /// How long each attempt waits for the peer's HelloResponse ([`HELLO_TIMEOUT`] by
    /// default; `None`: without a limit), the current attempt included. A peer that accepts
    /// the connection and never answers would otherwise hold the connector in `Connecting`:
    /// at the limit the attempt's channel is aborted and reported as `Disconnected` with
    /// `ConnectFailed`, and the next attempt follows the backoff.
    pub fn set_hello_timeout(&mut self, timeout: Option<Duration>) {
        self.hello_timeout = timeout;
        if let Link::Connecting { until, .. } = &mut self.link {
            *until = timeout.and_then(|t| Instant::now().checked_add(t));
        }
    }

    /// The connected channel, if any.
    pub fn channel(&self) -> Option<u16> {
        match self.link {
            Link::Connected { channel } => Some(channel),
            _ => None,
        }
    }

    /// Posts `msg` on the connected channel (its channel number is set here). Without a
    /// connection the message comes back with `ChannelClosed`: wait for
    /// `Event::Connected`.
    pub fn post(&self, mut msg: Message) -> Result<Header, PostError> {
        match self.link {
            Link::Connected { channel } => {
                msg.header.channel = channel;
                self.group.post(msg)
            }
            _ => Err(PostError {
                error: Error::ChannelClosed,
                message: msg,
            }),
        }
    }

    /// The connector's group: for `request`, `send` and the other calls of a group on the
    /// connected [`channel`](Self::channel). Receiving from it steals the connector's
    /// messages: receive through [`receive`](Self::receive).
    pub fn group(&self) -> &ChannelGroup {
        &self.group
    }

    /// Where it connects.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Posts a HelloRequest.
    fn attempt(&mut self) -> Result<Event, Error> {
        let mut hello = Message::with_opcode(OpCode::HelloRequest);
        self.address
            .format_connect(&mut hello)
            .map_err(|_| Error::InvalidAddress)?;
        let channel = self.group.post(hello).map_err(|e| e.error)?.channel;
        self.link = Link::Connecting {
            channel,
            until: self
                .hello_timeout
                .and_then(|t| Instant::now().checked_add(t)),
            given_up: false,
        };
        self.why = None;
        Ok(Event::Connecting {
            attempt: self.failures + 1,
        })
    }

    /// The current attempt had no answer in time: its channel is aborted, and its final
    /// Signal reports the failure (see `handle`).
    fn give_up(&mut self, channel: u16) {
        self.link = Link::Connecting {
            channel,
            until: None,
            given_up: true,
        };
        let waited = self.hello_timeout.unwrap_or_default();
        self.why = Some((
            Status::ConnectFailed,
            Some(format!("no HelloResponse within {waited:?}")),
        ));
        let abort = Message::with_opcode(OpCode::ByeSignal).on_channel(channel);
        // Refused only when the channel is gone already: its final Signal is on its way.
        let _ = self.group.post(abort);
    }

    /// A received message: an event to report, or `None` (taken in silently).
    fn handle(&mut self, m: Message) -> Option<Event> {
        let ours = match self.link {
            Link::Connecting { channel, .. } | Link::Connected { channel } => {
                channel == m.channel()
            }
            Link::Waiting { .. } => false,
        };
        let engine = m.origin() == Origin::Engine;
        let closed = m.is_channel_end();
        if !ours {
            // Earlier channels' final Signals are old news; anything else is the
            // application's (a message of an earlier channel handed back, say).
            return (!closed).then_some(Event::Message(m));
        }
        if closed {
            let reason = m.header_value(ERROR_TEXT).map(str::to_owned);
            let (status, why) = self.why.take().unwrap_or((Status::ChannelClosed, None));
            let retry_in = self.backoff.delay(self.failures);
            if let Link::Connecting { .. } = self.link {
                self.failures = self.failures.saturating_add(1); // a lost channel is not
            }
            self.link = Link::Waiting {
                until: Instant::now() + retry_in,
            };
            return Some(Event::Disconnected {
                status,
                reason: why.or(reason),
                retry_in,
            });
        }
        if m.opcode() == OpCode::ByeRequest && !engine {
            // The peer closes: answer, and the final Signal follows.
            let mut m = m;
            if m.make_echo().is_ok() {
                let _ = self.group.post(m);
            }
            return None;
        }
        if let Link::Connecting {
            channel, given_up, ..
        } = self.link
        {
            if m.opcode() == OpCode::HelloResponse && m.status() == Status::Success {
                if given_up {
                    return None; // an answer after the attempt was given up: its abort follows
                }
                self.link = Link::Connected { channel };
                self.failures = 0;
                return Some(Event::Connected { channel });
            }
            if m.status() != Status::Success {
                // A refused Hello: the reason, then the final Signal ends the attempt.
                self.note(&m);
                return None;
            }
        }
        if engine && m.status() != Status::Success {
            self.note(&m); // handed back: the first such status says why the channel failed
        }
        Some(Event::Message(m))
    }

    /// Keeps the first failure status (and text) seen on the current channel.
    fn note(&mut self, m: &Message) {
        if self.why.is_none() {
            let text = m.header_value(ERROR_TEXT).map(str::to_owned);
            self.why = Some((m.status(), text));
        }
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("address", &self.address)
            .field("link", &self.link)
            .field("failures", &self.failures)
            .finish()
    }
}
