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
//! The protocol core ([`message`], [`wire`], [`address`], [`status`], [`pool`]) does no I/O and
//! can be tested and fuzzed without sockets.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod address;
mod channels;
mod engine;
pub mod message;
mod net;
pub mod poller;
pub mod pool;
mod protocol;
mod reactor;
pub mod status;
pub mod testing;
pub mod wire;

pub use address::Address;
pub use engine::{ChannelGroup, Engine, EngineOptions, PostError};
pub use message::{Header, Message, MessageType, OpCode, Origin, Role, TextHeaders};
pub use pool::{Allocation, Pool, PoolOptions};
pub use status::{Error, Status};
