//! Cross-thread wake-up of a blocked `Poller::wait`.
//!
//! On Linux this is an eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`); other unix
//! systems use a non-blocking pipe. The `poll(2)` backend watches the read side
//! for readability and drains it inside `wait`, which makes wake-ups coalesce;
//! epoll watches the eventfd edge-triggered and never reads it (each write is one
//! edge, edges not yet reported coalesce).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// Interrupts a blocked [`Poller::wait`](super::Poller::wait) from another thread.
///
/// `Send + Sync`; obtained (as an `Arc`) from [`Poller::waker`](super::Poller::waker).
/// The wrapped descriptor is owned by the waker and closed when the last
/// handle is dropped. Wake-ups coalesce: all `wake` calls made before a
/// `wait` notices them yield a single `NOTIFY`.
#[derive(Debug)]
pub struct Waker {
    /// The side the poller watches and drains (the eventfd itself on Linux).
    read: OwnedFd,
    /// The side `wake` writes to; `None` for an eventfd (read and write are the same fd).
    write: Option<OwnedFd>,
}

impl Waker {
    /// Creates the platform's waker.
    pub(super) fn new() -> io::Result<Waker> {
        #[cfg(target_os = "linux")]
        {
            Waker::eventfd()
        }
        #[cfg(not(target_os = "linux"))]
        {
            Waker::pipe()
        }
    }

    #[cfg(target_os = "linux")]
    fn eventfd() -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; the result is checked by cvt.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by a successful eventfd, so it is open
        // and owned by nothing else.
        let read = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker { read, write: None })
    }

    /// A waker over a non-blocking, close-on-exec pipe (the non-Linux waker;
    /// also built in Linux tests so it is exercised).
    #[cfg(any(not(target_os = "linux"), test))]
    pub(super) fn pipe() -> io::Result<Waker> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` is a writable array of two c_ints, as pipe(2) requires.
        cvt(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
        // SAFETY: pipe succeeded, so both fds are open and owned by nothing else;
        // wrapping them immediately makes sure they are closed on every path.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [read.as_raw_fd(), write.as_raw_fd()] {
            // SAFETY: fcntl on an open fd we own, with integer arguments only.
            cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
            // SAFETY: as above.
            let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
            // SAFETY: as above.
            cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
        }
        Ok(Waker {
            read,
            write: Some(write),
        })
    }

    /// Makes the current or next `wait` of the owning poller return with a
    /// `NOTIFY` event. A saturated eventfd (or full pipe) already holds a
    /// pending wake-up, so `EAGAIN` counts as success; `EINTR` is retried.
    pub fn wake(&self) -> io::Result<()> {
        let fd = self.write.as_ref().unwrap_or(&self.read).as_raw_fd();
        let one: u64 = 1;
        loop {
            // SAFETY: the pointer covers the 8 initialized bytes of `one`, which
            // outlives the call; `fd` is open because self owns it.
            let ret =
                unsafe { libc::write(fd, (&one as *const u64).cast(), std::mem::size_of::<u64>()) };
            match cvt(ret) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Consumes all pending wake-ups so the fd stops being readable.
    pub(super) fn drain(&self) -> io::Result<()> {
        let fd = self.read.as_raw_fd();
        // An eventfd read returns 8 bytes and resets the counter; a pipe may
        // hold many 8-byte wake-ups.
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: the pointer covers `buf.len()` writable bytes of `buf`,
            // exclusively borrowed for the call; `fd` is open because self owns it.
            let ret = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            match cvt(ret) {
                Ok(0) => return Ok(()),
                Ok(_) if self.write.is_none() => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The fd the poller watches for readability.
    pub(super) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}
