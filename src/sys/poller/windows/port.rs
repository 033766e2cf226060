//! The I/O completion port: create, associate a handle, post and dequeue packets, and the
//! [`Waker`] that posts to it. It knows nothing of what the packets mean: the AFD layer
//! (`afd.rs`) issues its polls against a port, and the selector (`selector.rs`) reads them.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use windows_sys::Win32::Foundation::{INVALID_HANDLE_VALUE, WAIT_TIMEOUT};
use windows_sys::Win32::System::IO::{
    CreateIoCompletionPort, GetQueuedCompletionStatusEx, PostQueuedCompletionStatus,
    OVERLAPPED_ENTRY,
};

/// Completion key of [`Waker`] packets (no `lpOverlapped`).
pub(crate) const KEY_WAKER: usize = 2;

/// `INFINITE` for `GetQueuedCompletionStatusEx`.
pub(crate) const INFINITE: u32 = u32::MAX;

/// An owned I/O completion port handle.
#[derive(Debug)]
pub(crate) struct CompletionPort {
    handle: OwnedHandle,
}

impl CompletionPort {
    /// Creates a completion port (one thread, the reactor's, dequeues from it).
    pub(crate) fn new() -> io::Result<CompletionPort> {
        // SAFETY: with INVALID_HANDLE_VALUE and no existing port this only creates a port.
        let handle = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, ptr::null_mut(), 0, 1) };
        if handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new, open handle that nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(handle) };
        Ok(CompletionPort { handle })
    }

    /// Associates `handle` (opened for asynchronous I/O) with this port under `key`.
    pub(crate) fn associate(&self, handle: RawHandle, key: usize) -> io::Result<()> {
        // SAFETY: both handles are open (the caller owns `handle`; self owns the port).
        let port = unsafe { CreateIoCompletionPort(handle, self.handle.as_raw_handle(), key, 0) };
        if port.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Queues a packet with `key` and no `OVERLAPPED`.
    pub(crate) fn post(&self, key: usize) -> io::Result<()> {
        // SAFETY: the port is open; a null OVERLAPPED is allowed and never dereferenced.
        let ok =
            unsafe { PostQueuedCompletionStatus(self.handle.as_raw_handle(), 0, key, ptr::null()) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// [`CompletionPort::get_many`] for the AFD layer's tests.
    #[cfg(test)]
    pub(crate) fn get_many_for_tests(
        &self,
        entries: &mut [OVERLAPPED_ENTRY],
        timeout_ms: u32,
    ) -> io::Result<usize> {
        self.get_many(entries, timeout_ms)
    }

    /// Dequeues up to `entries.len()` packets, waiting up to `timeout_ms` ([`INFINITE`]) for
    /// the first. Returns how many were dequeued; 0 when the wait timed out. Entries of
    /// failed I/O are returned like the others (their status is in the I/O status block).
    pub(crate) fn get_many(
        &self,
        entries: &mut [OVERLAPPED_ENTRY],
        timeout_ms: u32,
    ) -> io::Result<usize> {
        let mut removed: u32 = 0;
        // Callers pass at most ENTRIES entries.
        let len = entries.len() as u32;
        // SAFETY: `entries` is valid for `len` writes and `removed` for one; not alertable.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.handle.as_raw_handle(),
                entries.as_mut_ptr(),
                len,
                &mut removed,
                timeout_ms,
                0,
            )
        };
        if ok == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(WAIT_TIMEOUT as i32) {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(removed as usize)
    }
}

/// Interrupts a blocked [`Poller::wait`](crate::sys::poller::Poller::wait) from another thread.
///
/// `Send + Sync`; obtained (as an `Arc`) from [`Poller::waker`](crate::sys::poller::Poller::waker). On
/// Windows a wake-up is a packet posted to the poller's completion port; the waker keeps the
/// port open, so waking after the poller is gone is harmless. Wake-ups coalesce: at most one
/// packet is queued at a time, and all `wake` calls made before a `wait` notices it yield a
/// single `NOTIFY`.
#[derive(Debug)]
pub struct Waker {
    port: Arc<CompletionPort>,
    /// A packet is queued and not yet dequeued by `wait`.
    posted: AtomicBool,
}

impl Waker {
    /// Makes the current or next `wait` of the owning poller return with a `NOTIFY` event.
    ///
    /// Fails only if `PostQueuedCompletionStatus` fails (then nothing is queued, and a later
    /// `wake` tries again).
    pub fn wake(&self) -> io::Result<()> {
        if self.posted.swap(true, Ordering::AcqRel) {
            return Ok(()); // a packet is already on its way
        }
        self.port.post(KEY_WAKER).inspect_err(|_| {
            self.posted.store(false, Ordering::Release);
        })
    }

    /// Called by `wait` when it dequeues the packet: the next `wake` posts a new one.
    pub(crate) fn consumed(&self) {
        self.posted.store(false, Ordering::Release);
    }
}

impl Waker {
    /// True while a packet is queued and not yet dequeued.
    #[cfg(test)]
    pub(crate) fn is_posted(&self) -> bool {
        self.posted.load(Ordering::Acquire)
    }

    /// A waker posting to `port`.
    pub(crate) fn new(port: Arc<CompletionPort>) -> Waker {
        Waker {
            port,
            posted: AtomicBool::new(false),
        }
    }
}
