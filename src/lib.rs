//! # tofu: an asynchronous peer-to-peer messaging engine
//!
//! A Rust implementation of [tofu](https://github.com/g41797/tofu), wire-compatible with the
//! Zig original. One [`Engine`] owns one I/O thread running a reactor over the OS poller, a
//! message [`Pool`], and channel groups through which application threads `post` messages and
//! `wait_receive` replies, statuses and peer messages.
//!
//! The message is the API: a WelcomeRequest listens, a HelloRequest connects,
//! Request/Response/Signal carry data, ByeRequest/ByeResponse/ByeSignal close. Every result
//! or failure comes back as a message.
//!
//! ```
//! use std::time::Duration;
//! use tofu::{Address, Engine, Message, OpCode};
//!
//! let engine = Engine::with_defaults()?;
//! let (server, client) = (engine.create_group()?, engine.create_group()?);
//!
//! // Listen on a port the system chooses; `listen` says which.
//! let listening = server.listen(&Address::tcp("127.0.0.1", 0))?;
//! std::thread::scope(|s| {
//!     // A service: answer the Hello, then echo Requests until the group ends.
//!     s.spawn(|| {
//!         while let Ok(Some(mut m)) = server.wait_receive(None) {
//!             if matches!(m.opcode(), OpCode::HelloRequest | OpCode::Request) {
//!                 m.make_echo().unwrap();
//!                 // Refused only when the channel closed meanwhile (the peer is gone).
//!                 let _ = server.post(m);
//!             }
//!         }
//!     });
//!     let ch = client.connect(&listening.address)?;
//!     let mut req = Message::with_opcode(OpCode::Request);
//!     req.header.channel = ch;
//!     req.set_body(b"ping");
//!     let reply = client.request(req, Some(Duration::from_secs(5)))?;
//!     assert_eq!(reply.body(), b"ping");
//!     server.destroy(); // ends the service's loop
//!     Ok::<(), tofu::RequestError>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guide
//!
//! **Messages and the pool.** A [`Message`] is a [`Header`] (opcode, channel, message_id,
//! status, origin), text headers (`name:value` lines) and a body. Messages are moved, never
//! shared: [`ChannelGroup::post`] takes one, [`ChannelGroup::wait_receive`] hands one over. A
//! message taken from the engine's [`Pool`] goes back to it when dropped, so a loop that takes,
//! fills, posts, receives and drops allocates nothing in steady state.
//!
//! **What comes back.** Every result arrives as a message on the group that made the channel
//! (the README's "Message flows" table lists them all):
//!
//! | you post | you get |
//! |---|---|
//! | WelcomeRequest (`ChannelGroup::listen`) | WelcomeResponse, status Success, `~listen_on` = where it is bound; or a failure status and the channel's final Signal |
//! | HelloRequest (`ChannelGroup::connect`) | the peer's HelloResponse; or a failure status (in a HelloResponse or the HelloRequest handed back) and the final Signal |
//! | Request / Response / Signal | the peer's messages; yours only come back if they could not be sent, with the reason |
//! | ByeRequest | the peer's ByeResponse, then the channel's final Signal |
//! | ByeSignal (`oob`, the default) | the ByeSignal, the unsent messages, the final Signal |
//!
//! Every channel ends with one Signal from the engine with status `ChannelClosed`, which
//! [`Message::is_channel_end`] tells from the application's own Signals handed back with
//! that status (they look the same otherwise); nothing
//! posted is lost silently: it is written, or handed back with a status. Written means
//! handed to the OS: an abortive close (dropping the group or the engine, a ByeSignal)
//! resets the connection, and over TCP the reset discards what the OS had not sent yet.
//! [`ChannelGroup::disconnect`] (a ByeRequest) is the close that loses nothing.
//!
//! A HelloResponse comes from the peer's application, not its engine: a listening program
//! answers each HelloRequest it receives (`make_echo`, then `post`), or uses
//! [`recipes::Server`], which does. [`ChannelGroup::connect`] waits for that answer without
//! a limit; [`ChannelGroup::connect_timeout`] gives up, aborts the channel and returns
//! `TimedOut`.
//!
//! **Flow control.** Sending: a channel holds at most [`SendLimit`] unsent messages;
//! `post` then hands the message back with `SendQueueFull`, and [`ChannelGroup::send_timeout`]
//! / [`ChannelGroup::send`] wait for room instead (already at [`SEND_WINDOW`], 1 MiB of
//! unsent frames: a waiting sender keeps the socket busy, not a deep queue). Receiving: once [`ReceiveLimit`] frames
//! (65536, or 64 MiB) wait in a group's queue, the engine stops reading that group's
//! channels and resumes by itself as the application receives; the peers' sends slow down
//! instead of this process's memory growing, and other groups go on. Nothing in the receive
//! loop sees it, as with a bounded channel.
//!
//! **Threads and async.** [`Engine`] and [`ChannelGroup`] are `Send + Sync`: share a group with
//! `Arc` or scoped threads; many threads may post and receive at once. Without a thread to
//! spare, [`ChannelGroup::receive`], [`ChannelGroup::send`] and [`ChannelGroup::request_async`]
//! are futures for any executor (the crate depends on no runtime); a dropped `receive` loses no
//! message. [`ChannelGroup::request`] matches answers to requests by message_id from any number
//! of threads or tasks, while other messages still reach the receive loop.
//!
//! **Shutdown.** [`ChannelGroup::destroy`] (or drop) closes the group's channels abortively and
//! wakes its waiters with `ShutdownStarted`; dropping the [`Engine`] stops its thread, closes
//! every channel and hands unsent messages back with `ShutdownStarted`. For a graceful close,
//! [`ChannelGroup::disconnect`] sends a ByeRequest and waits for the ByeResponse (after
//! everything the peer sent before it); `request_async` with a ByeRequest does the same for
//! tasks.
//!
//! **Between machines.** With the `tls` feature, `tls|host|port` addresses run the same
//! frames over TLS (rustls): give the engine a rustls `ServerConfig` and/or `ClientConfig`
//! in [`EngineOptions`] (`tls_server`, `tls_client`; `tofu::rustls` is re-exported so the
//! versions match). Mutual TLS is rustls's client verifier; a server sees the verified
//! client's names in the `~peer_identity` header of its HelloRequest
//! ([`message::PEER_IDENTITY`]). A failed handshake closes the channel with `TlsFailed`.
//!
//! The protocol core ([`message`], [`wire`], [`address`], [`status`]) does no I/O and can be
//! tested and fuzzed without sockets.
#![deny(missing_docs)]
#![deny(unsafe_code)]

// The layers, from the bottom up; arrows point down only (see the README's "Architecture").
mod engine;
mod proto;
mod sys;
mod util;

// Built on the public API only, above all the layers.
pub mod recipes;

pub mod testing;

// The public modules, where users have always found them.
pub use engine::pool;
pub use proto::{message, status, wire};

/// Addresses, in tofu's text syntax: `tcp|<host>|<port>`, `tls|<host>|<port>` and `uds|<path>`.
///
/// The syntax and its validation live in the protocol core; the Unix domain socket path limit
/// of this platform ([`UDS_PATH_MAX`](crate::address::UDS_PATH_MAX)) is an OS fact and comes from the socket layer.
pub mod address {
    pub use crate::proto::address::*;
    pub use crate::sys::net::UDS_PATH_MAX;
}

pub use address::{Address, AddressError};
#[cfg(feature = "stream")]
pub use engine::Messages;
pub use engine::{
    ChannelGroup, Engine, EngineOptions, EngineStats, Listening, PostError, ReceiveFuture,
    ReceiveLimit, RequestError, RequestFuture, SendFuture, SendLimit, SEND_WINDOW,
};
pub use message::{Header, Message, MessageType, OpCode, Origin, Role, TextHeaders};
pub use pool::{Allocation, Pool, PoolOptions};
pub use status::{Error, Status};
pub use sys::poller::Backend;

/// The rustls crate this build uses (feature `tls`), for [`EngineOptions::tls_server`] and
/// [`EngineOptions::tls_client`].
#[cfg(feature = "tls")]
pub use rustls;

// Internals for the fuzz targets in `fuzz/`; not an API (see the module docs).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
