//! The Windows backend: readiness of Winsock sockets from `IOCTL_AFD_POLL` requests whose
//! completions arrive on an I/O completion port.
//!
//! One file per mechanism, each using only the ones listed before it:
//! * `port.rs`: the completion port and the [`Waker`] that posts to it (knows nothing of AFD);
//! * `afd.rs`: the AFD helper handle and its poll requests, issued against a port;
//! * `selector.rs`: [`Iocp`], the poller backend: registrations, one-shot polls re-armed to
//!   behave like the level-triggered unix backends, and the ownership of the memory the kernel
//!   writes.

mod afd;
mod port;
mod selector;

pub use port::Waker;
pub(crate) use selector::Iocp;
