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
//! The protocol core ([`message`], [`wire`], [`address`], [`status`]) does no I/O and can be
//! tested and fuzzed without sockets.
//!
//! ```
//! use std::time::Duration;
//! use tofu::{Address, Engine, OpCode, Status};
//!
//! let engine = Engine::with_defaults()?;
//! let group = engine.create_group()?;
//! let addr = Address::tcp("127.0.0.1", tofu::testing::free_tcp_port()?);
//!
//! // Listen: post a WelcomeRequest, receive the WelcomeResponse.
//! let mut m = engine.pool().message();
//! addr.format_listen(&mut m)?;
//! let listener = group.post(m).map_err(|e| e.error)?.channel;
//! let reply = group.wait_receive(Some(Duration::from_secs(5)))?.expect("an answer");
//! assert_eq!((reply.opcode(), reply.status()), (OpCode::WelcomeResponse, Status::Success));
//! assert_eq!(reply.channel(), listener);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

// The layers, from the bottom up; arrows point down only (see the README's "Architecture").
mod engine;
mod proto;
mod sys;
mod util;

pub mod testing;

// The public modules, where users have always found them.
pub use engine::pool;
pub use proto::{message, status, wire};

/// Addresses, in tofu's text syntax: `tcp|<host>|<port>` and `uds|<path>`.
///
/// The syntax and its validation live in the protocol core; the Unix domain socket path limit
/// of this platform ([`UDS_PATH_MAX`](crate::address::UDS_PATH_MAX)) is an OS fact and comes from the socket layer.
pub mod address {
    pub use crate::proto::address::*;
    pub use crate::sys::net::UDS_PATH_MAX;
}

pub use address::Address;
#[cfg(feature = "stream")]
pub use engine::Messages;
pub use engine::{
    ChannelGroup, Engine, EngineOptions, EngineStats, Listening, PostError, ReceiveFuture,
    RequestError, RequestFuture, SendFuture, SendLimit,
};
pub use message::{Header, Message, MessageType, OpCode, Origin, Role, TextHeaders};
pub use pool::{Allocation, Pool, PoolOptions};
pub use status::{Error, Status};
pub use sys::poller::Backend;

// Internals for the fuzz targets in `fuzz/`; not an API (see the module docs).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
