//! The OS edge: sockets ([`net`]) and readiness pollers ([`poller`]), one file per mechanism.
//!
//! **May use:** the OS through `libc`, `windows-sys` and `socket2`; `proto` for addresses and
//! statuses; `util`. **Never:** `engine`. Every platform `#[cfg]` and every `unsafe` block of
//! the library lives under this folder (each `unsafe` with a `// SAFETY:` comment).
//!
//! What every platform provides:
//! * [`net::Listener`] and [`net::Stream`]: non-blocking, close-on-exec TCP and Unix domain
//!   sockets; failures as `(Status, io::Error)`; Unix domain path rules and limits.
//! * [`poller::Poller`]: register/reregister/deregister a socket under a token, wait with a
//!   timeout into events, and a [`poller::Waker`] that interrupts a wait from another thread
//!   (the contract is in `poller/mod.rs`).

pub(crate) mod net;
pub(crate) mod poller;
