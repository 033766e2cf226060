//! tofu's recipes as library parts: a [`Server`] that runs a [`Service`] on several listen
//! addresses, and a [`Connector`] that keeps one connection up, reconnecting with
//! [`Backoff`].
//!
//! Zig tofu ships these as `recipes/` source to copy (`MultiHomed`, `Services`,
//! `EchoService`, the reconnect loops of its cookbook); here they are types to use. They are
//! written on the public API only (this folder may not use the crate's internals), so they
//! are also worked examples of it.
//!
//! ```
//! use tofu::recipes::{Connector, Echo, Event, Server};
//! use tofu::{Address, Engine, Message, OpCode};
//! use std::time::Duration;
//!
//! let engine = Engine::with_defaults()?;
//! // A server on an automatic TCP port, answering Hello and Bye, echoing data.
//! let server = Server::start(&engine, &[Address::tcp("127.0.0.1", 0)], Echo::default())?;
//! // A connection that comes back by itself whenever it is lost.
//! let mut conn = Connector::new(&engine, server.addresses()[0].clone(), Default::default())?;
//! let channel = loop {
//!     match conn.receive(Some(Duration::from_secs(10)))? {
//!         Some(Event::Connected { channel }) => break channel,
//!         Some(other) => println!("{other:?}"),
//!         None => panic!("not connected within 10 s"),
//!     }
//! };
//! let mut ping = Message::with_opcode(OpCode::Request);
//! ping.header.channel = channel;
//! let pong = conn.group().request(ping, Some(Duration::from_secs(10)))?;
//! assert_eq!(pong.opcode(), OpCode::Response);
//! let echo = server.stop();
//! assert_eq!(echo.echoed, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod connector;
mod server;

pub use connector::{Backoff, Connector, Event, HELLO_TIMEOUT};
pub use server::{Echo, Server, ServerError, Service};
