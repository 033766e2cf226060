//! Linux `epoll` backend, used level-triggered (no `EPOLLET`).
//!
//! Each registration is added with `data.u64 = token`; the waker's eventfd is
//! added under the private sentinel [`WAKER_DATA`]. Reported tokens are looked
//! up in the registration map, so events for tokens that are no longer
//! registered are dropped.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use libc::c_int;

use super::registry::{Registrar, Registry};
use super::{
    cvt, triggers_for, wait_retrying, wants_readable, wants_writable, Event, Readiness, Token,
    Triggers, Waker,
};

/// `data.u64` of the waker's eventfd; never a registered token (rejected by `Poller::register`).
const WAKER_DATA: u64 = Token::RESERVED.0;

/// Size of the reused `epoll_wait` buffer. More ready fds than this are
/// reported by the next wait (level-triggered, nothing is lost).
const EVENT_CAPACITY: usize = 1024;

pub(super) struct Epoll {
    epfd: OwnedFd,
    /// Always `EVENT_CAPACITY` initialized entries, overwritten by the kernel.
    buffer: Vec<libc::epoll_event>,
}

/// epoll event mask for an interest. `EPOLLERR`/`EPOLLHUP` are always reported.
fn os_interest(interest: Triggers) -> u32 {
    // A peer's half-close is only of interest to a reader (it is the end of what there is
    // to read): asking for it without read interest would report it again and again.
    let mut events = 0;
    if wants_readable(interest) {
        events |= libc::EPOLLIN | libc::EPOLLRDHUP;
    }
    if wants_writable(interest) {
        events |= libc::EPOLLOUT;
    }
    // The EPOLL* constants are non-negative `c_int` flags; the kernel ABI field is `u32`.
    events as u32
}

fn has(events: u32, flag: c_int) -> bool {
    events & flag as u32 != 0
}

impl Epoll {
    pub(super) fn new(waker: &Waker) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked by cvt.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by a successful epoll_create1, so it is
        // an open descriptor that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let epoll = Epoll {
            epfd,
            buffer: vec![libc::epoll_event { events: 0, u64: 0 }; EVENT_CAPACITY],
        };
        // Edge-triggered: every write to the eventfd queues one event (several writes
        // before a wait still give one), so `wait` never has to read it back: one syscall
        // less per wake-up. The counter would need 2^64 - 1 wake-ups to saturate.
        epoll.ctl(
            libc::EPOLL_CTL_ADD,
            waker.fd(),
            (libc::EPOLLIN | libc::EPOLLET) as u32,
            WAKER_DATA,
        )?;
        Ok(epoll)
    }

    fn ctl(&self, op: c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: data };
        // SAFETY: `event` is a valid epoll_event that outlives the call (the
        // kernel copies it and keeps no pointer); `self.epfd` is an open epoll
        // fd owned by self. A bad `fd` is reported as an error, not UB.
        cvt(unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut event) })?;
        Ok(())
    }

    /// Fills `events`; returns the number of OS events (0 = timed out).
    pub(super) fn wait(
        &mut self,
        registry: &Registry,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let epfd = self.epfd.as_raw_fd();
        let buffer = &mut self.buffer;
        // EVENT_CAPACITY (1024) fits in c_int.
        let max = EVENT_CAPACITY as c_int;
        let ready = wait_retrying(timeout, |ms| {
            // SAFETY: `buffer` holds EVENT_CAPACITY initialized epoll_events and
            // is exclusively borrowed for the call; the kernel writes at most
            // `max` == EVENT_CAPACITY entries into it. `epfd` is open (owned by self).
            let n = cvt(unsafe { libc::epoll_wait(epfd, buffer.as_mut_ptr(), max, ms) })?;
            // cvt only lets non-negative counts through.
            Ok(n as usize)
        })?;
        for event in self.buffer.iter().take(ready) {
            // Copy the (possibly packed) fields out by value.
            let (bits, data) = (event.events, event.u64);
            if data == WAKER_DATA {
                events.push(Event {
                    token: Token::WAKER,
                    triggers: Triggers::NOTIFY,
                });
                continue;
            }
            let token = Token(data);
            let Some(reg) = registry.get(token) else {
                continue; // stale: deregistered
            };
            let readiness = Readiness {
                readable: has(bits, libc::EPOLLIN),
                writable: has(bits, libc::EPOLLOUT),
                error: has(bits, libc::EPOLLERR),
                hangup: has(bits, libc::EPOLLHUP | libc::EPOLLRDHUP),
            };
            let triggers = triggers_for(reg.interest, readiness);
            if !triggers.is_empty() {
                events.push(Event { token, triggers });
            }
        }
        Ok(ready)
    }
}

impl Registrar for Epoll {
    fn add(&mut self, socket: RawFd, token: Token, interest: Triggers) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, socket, os_interest(interest), token.0)
    }

    fn modify(
        &mut self,
        socket: RawFd,
        token: Token,
        old: Triggers,
        new: Triggers,
    ) -> io::Result<()> {
        if os_interest(old) == os_interest(new) {
            return Ok(());
        }
        self.ctl(libc::EPOLL_CTL_MOD, socket, os_interest(new), token.0)
    }

    fn remove(&mut self, socket: RawFd, _token: Token) -> io::Result<()> {
        match self.ctl(libc::EPOLL_CTL_DEL, socket, 0, 0) {
            // EBADF/ENOENT: the socket was closed (which removed it from the
            // epoll set) before being deregistered; the goal is reached anyway.
            Err(e) if !matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOENT)) => Err(e),
            _ => Ok(()),
        }
    }
}
