//! The protocol core, sans I/O: what a message is, how it looks on the wire, what an address
//! says, what a status means, and a channel's protocol life ([`connection`]).
//!
//! **May use:** `std` data types, `util`. **Never:** sockets, threads, locks, clock reads,
//! platform `#[cfg]`, `unsafe`, or anything from `engine` or `sys`. Time comes in as a value
//! and bytes come in and go out as slices, so everything here runs the same on every platform,
//! in unit tests, under Miri and in the fuzz targets. `scripts/check-layers.sh` enforces this.
//!
//! One seam points outward: a pooled [`Message`](message::Message) gives its buffers back to
//! wherever it came from when dropped. That place is a [`message::Recycle`] the engine's pool
//! implements; this layer knows only the trait.

pub mod address;
pub(crate) mod connection;
pub mod message;
pub(crate) mod notify;
mod pair;
pub mod status;
pub mod wire;
