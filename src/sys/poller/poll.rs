//! POSIX `poll(2)` backend (level-triggered).
//!
//! Registration changes only touch the poller's token-keyed map (no syscalls).
//! Every `wait` rebuilds the `pollfd` array from it (reusing its capacity): the
//! waker's fd first, then every registration; `revents` are mapped back by position.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::registry::{Registrar, Registry};
use super::{
    cvt, triggers_for, wait_retrying, wants_readable, wants_writable, Event, Readiness, Token,
    Triggers, Waker,
};

/// Peer half-close, where the OS has it.
#[cfg(any(target_os = "linux", target_os = "android"))]
const RDHUP: libc::c_short = libc::POLLRDHUP;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RDHUP: libc::c_short = 0;

#[derive(Default)]
pub(super) struct Poll {
    /// Rebuilt by each wait; index 0 is the waker, index i + 1 is `tokens[i]`.
    fds: Vec<libc::pollfd>,
    tokens: Vec<Token>,
}

/// poll event mask for an interest. `POLLERR`/`POLLHUP`/`POLLNVAL` are always reported.
fn os_interest(interest: Triggers) -> libc::c_short {
    // Half-close only matters to a reader; without read interest it would be reported again
    // and again (see epoll.rs).
    let mut events = 0;
    if wants_readable(interest) {
        events |= libc::POLLIN | RDHUP;
    }
    if wants_writable(interest) {
        events |= libc::POLLOUT;
    }
    events
}

impl Poll {
    pub(super) fn new() -> Poll {
        Poll::default()
    }

    /// Fills `events`; returns the number of fds with non-zero `revents` (0 = timed out).
    pub(super) fn wait(
        &mut self,
        registry: &Registry,
        waker: &Waker,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.fds.clear();
        self.tokens.clear();
        self.fds.reserve(registry.len() + 1);
        self.tokens.reserve(registry.len());
        self.fds.push(libc::pollfd {
            fd: waker.fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for (token, reg) in registry.iter() {
            self.fds.push(libc::pollfd {
                fd: reg.socket,
                events: os_interest(reg.interest),
                revents: 0,
            });
            self.tokens.push(token);
        }
        let nfds = libc::nfds_t::try_from(self.fds.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "poller: too many registrations",
            )
        })?;
        let fds = &mut self.fds;
        let ready = wait_retrying(timeout, |ms| {
            // SAFETY: `fds` points to `nfds` initialized pollfds, exclusively
            // borrowed for the duration of the call; the kernel only writes their
            // `revents` fields and keeps no pointer.
            let n = cvt(unsafe { libc::poll(fds.as_mut_ptr(), nfds, ms) })?;
            // cvt only lets non-negative counts through.
            Ok(n as usize)
        })?;
        if ready == 0 {
            return Ok(0);
        }
        let mut slots = self.fds.iter();
        if slots.next().is_some_and(|w| w.revents != 0) {
            waker.drain()?;
            events.push(Event {
                token: Token::WAKER,
                triggers: Triggers::NOTIFY,
            });
        }
        for (slot, &token) in slots.zip(&self.tokens) {
            if slot.revents == 0 {
                continue;
            }
            // The registry cannot change during `wait` (it is borrowed), so every
            // token in `self.tokens` is still registered.
            let Some(reg) = registry.get(token) else {
                continue;
            };
            let r = slot.revents;
            let readiness = Readiness {
                readable: r & libc::POLLIN != 0,
                writable: r & libc::POLLOUT != 0,
                error: r & (libc::POLLERR | libc::POLLNVAL) != 0,
                hangup: r & (libc::POLLHUP | RDHUP) != 0,
            };
            let triggers = triggers_for(reg.interest, readiness);
            if !triggers.is_empty() {
                events.push(Event { token, triggers });
            }
        }
        Ok(ready)
    }
}

/// Nothing to tell the OS: `wait` builds its `pollfd` array from the registry.
impl Registrar for Poll {
    fn add(&mut self, _socket: RawFd, _token: Token, _interest: Triggers) -> io::Result<()> {
        Ok(())
    }

    fn modify(
        &mut self,
        _socket: RawFd,
        _token: Token,
        _old: Triggers,
        _new: Triggers,
    ) -> io::Result<()> {
        Ok(())
    }

    fn remove(&mut self, _socket: RawFd, _token: Token) -> io::Result<()> {
        Ok(())
    }
}
