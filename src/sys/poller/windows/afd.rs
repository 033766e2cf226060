//! The AFD layer under the [`Iocp`](super::selector) backend: readiness of Winsock sockets as
//! completions on an I/O completion port.
//!
//! Winsock's kernel driver, AFD (`\Device\Afd`), answers `IOCTL_AFD_POLL`: "complete this
//! request when one of these events is signalled on this socket". This is what `WSAPoll` and
//! `select` use underneath. Issued asynchronously on a handle associated with a completion
//! port, the request completes *once* (one-shot) by queueing a packet to the port; AFD checks
//! the socket's current state when the request is issued, so a condition that already holds
//! (unread data, free send buffer, a pending connection) completes it at once. Re-issuing the
//! request after the I/O has run to `WSAEWOULDBLOCK` therefore behaves like level-triggered
//! readiness delivered through the port.
//!
//! The pieces, each a thin wrapper over one OS call:
//!
//! * [`Afd`]: a handle on `\Device\Afd\tofu` opened with `NtCreateFile` and associated with
//!   the poller's completion port. Every poll is issued on this helper handle (not on the
//!   socket), naming the socket in [`AfdPollInfo`]; its completion arrives on the port with
//!   the helper's completion key, and cancelling goes through the helper handle too.
//! * [`base_socket`]: the base service provider's handle of a socket (`SIO_BASE_HANDLE`), which
//!   is what AFD knows; a layered service provider may hand out a different handle.
//! * [`Afd::poll`] / [`Afd::cancel`]: `NtDeviceIoControlFile(IOCTL_AFD_POLL)` with one
//!   [`AfdPollInfo`] as input *and* output buffer and a non-null `ApcContext` (which comes back
//!   as the `lpOverlapped` of the completion entry); `NtCancelIoFileEx` for a pending one.
//! * [`Winsock`]: a `WSAStartup(2.2)`/`WSACleanup` pair held by each poller.
//!
//! Memory passed to [`Afd::poll`] is written by the kernel until its completion is dequeued;
//! the caller (the Iocp backend) owns that protocol, see `selector.rs`.

use std::ffi::c_void;
use std::io;
use std::mem::size_of;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawSocket};
use std::ptr;

use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::Storage::FileSystem::{NtCancelIoFileEx, NtCreateFile, FILE_OPEN};
use windows_sys::Wdk::System::IO::NtDeviceIoControlFile;
use windows_sys::Win32::Foundation::{
    RtlNtStatusToDosError, HANDLE, NTSTATUS, STATUS_NOT_FOUND, STATUS_PENDING, STATUS_SUCCESS,
    UNICODE_STRING,
};
use windows_sys::Win32::Networking::WinSock::{
    WSACleanup, WSAGetLastError, WSAIoctl, WSAStartup, SIO_BASE_HANDLE, SIO_BSP_HANDLE,
    SIO_BSP_HANDLE_POLL, SIO_BSP_HANDLE_SELECT, SOCKET_ERROR, WSADATA, WSAENOTSOCK,
};
use windows_sys::Win32::Storage::FileSystem::{
    SetFileCompletionNotificationModes, FILE_SHARE_READ, FILE_SHARE_WRITE, SYNCHRONIZE,
};
use windows_sys::Win32::System::IO::IO_STATUS_BLOCK;

use super::port::CompletionPort;

/// `IOCTL_AFD_POLL`: `CTL_CODE(FILE_DEVICE_NETWORK, AFD_POLL = 9, METHOD_BUFFERED, FILE_ANY_ACCESS)`.
const IOCTL_AFD_POLL: u32 = 0x0001_2024;

/// Data can be received (or a graceful close is pending behind the data).
pub(super) const POLL_RECEIVE: u32 = 0x0001;
/// Data can be sent (also: a non-blocking connect succeeded).
pub(super) const POLL_SEND: u32 = 0x0004;
/// The peer closed its sending half gracefully (FIN).
pub(super) const POLL_DISCONNECT: u32 = 0x0008;
/// The connection was reset or aborted.
pub(super) const POLL_ABORT: u32 = 0x0010;
/// The socket handle was closed locally. Always requested: it ends the registration.
pub(super) const POLL_LOCAL_CLOSE: u32 = 0x0020;
/// A listening socket has a connection to accept.
pub(super) const POLL_ACCEPT: u32 = 0x0080;
/// A non-blocking connect failed.
pub(super) const POLL_CONNECT_FAIL: u32 = 0x0100;
// Never requested: RECEIVE_EXPEDITED (0x0002, out-of-band data; tofu has none) and CONNECT
// (0x0040, which stays signalled on every connected socket; a finished connect shows as SEND).

/// The object name of the helper handle. Anything under `\Device\Afd\` opens AFD; the last
/// component only names the opener in kernel debuggers.
const AFD_HELPER_NAME: &str = r"\Device\Afd\tofu";

/// Fallback ioctls that ask a layered service provider for the next provider's handle, in
/// the order tried when `SIO_BASE_HANDLE` fails (some LSPs intercept it).
const BSP_IOCTLS: [u32; 3] = [SIO_BSP_HANDLE_POLL, SIO_BSP_HANDLE_SELECT, SIO_BSP_HANDLE];

/// Most provider layers [`base_socket`] peels off before giving up.
const MAX_LSP_LAYERS: usize = 8;

/// `FILE_SKIP_SET_EVENT_ON_HANDLE`: do not signal the file object on every completion.
const FILE_SKIP_SET_EVENT_ON_HANDLE: u8 = 2;

/// One socket entry of [`AfdPollInfo`] (`AFD_POLL_HANDLE_INFO`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct AfdPollHandleInfo {
    /// The base socket handle (see [`base_socket`]).
    pub handle: HANDLE,
    /// Input: the `POLL_*` events to wait for. Output: the events that were signalled.
    pub events: u32,
    /// Output: a per-socket status.
    pub status: NTSTATUS,
}

/// The input and output buffer of `IOCTL_AFD_POLL` (`AFD_POLL_INFO`) for one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct AfdPollInfo {
    /// Relative timeout in 100 ns units; `i64::MAX` waits forever.
    pub timeout: i64,
    /// Input: 1. Output: how many entries of `handles` report events (0 or 1).
    pub number_of_handles: u32,
    /// FALSE: other polls on the same socket complete too.
    pub exclusive: u32,
    /// The socket being polled.
    pub handles: [AfdPollHandleInfo; 1],
}

impl AfdPollInfo {
    /// A request to wait, without timeout, for `events` on `base` (a base socket handle).
    pub(super) fn new(base: RawSocket, events: u32) -> AfdPollInfo {
        AfdPollInfo {
            timeout: i64::MAX,
            number_of_handles: 1,
            exclusive: 0,
            handles: [AfdPollHandleInfo {
                // A SOCKET is a kernel handle value; AFD takes it as a HANDLE.
                handle: base as usize as HANDLE,
                events,
                status: STATUS_SUCCESS,
            }],
        }
    }

    /// The events signalled by a completed poll (0 if it reported none).
    pub(super) fn signalled(&self) -> u32 {
        if self.number_of_handles == 0 {
            0
        } else {
            self.handles[0].events
        }
    }
}

/// A zeroed `IO_STATUS_BLOCK`.
pub(super) fn new_io_status_block() -> IO_STATUS_BLOCK {
    IO_STATUS_BLOCK::default()
}

/// The final status a completed request left in its `IO_STATUS_BLOCK`.
pub(super) fn io_status(iosb: &IO_STATUS_BLOCK) -> NTSTATUS {
    // SAFETY: every variant of the union is plain data of the same size; reading the
    // NTSTATUS view is always defined.
    unsafe { iosb.Anonymous.Status }
}

/// `NT_ERROR(status)`: the severity bits say "error" (`0xC000_0000` and up).
fn is_nt_error(status: NTSTATUS) -> bool {
    // Reinterpret the bits: the severity is the top two bits.
    (status as u32) >> 30 == 3
}

/// An `io::Error` for a failed `NTSTATUS`, through its Win32 error code.
pub(super) fn ntstatus_error(status: NTSTATUS) -> io::Error {
    // SAFETY: RtlNtStatusToDosError takes a plain integer and has no other effect.
    let code = unsafe { RtlNtStatusToDosError(status) };
    // Win32 error codes are small positive numbers; the cast keeps their value.
    io::Error::from_raw_os_error(code as i32)
}

/// A handle on the AFD driver, associated with a completion port, on which polls are issued.
#[derive(Debug)]
pub(super) struct Afd {
    handle: OwnedHandle,
}

impl Afd {
    /// Opens `\Device\Afd\tofu` for asynchronous I/O and associates it with `port` under
    /// `key`: every poll issued through this handle completes on `port` with `key`.
    pub(super) fn open(port: &CompletionPort, key: usize) -> io::Result<Afd> {
        let name: Vec<u16> = AFD_HELPER_NAME.encode_utf16().collect();
        // The name is a short constant: its byte length fits in u16.
        let bytes = (name.len() * size_of::<u16>()) as u16;
        let unicode = UNICODE_STRING {
            Length: bytes,
            MaximumLength: bytes,
            Buffer: name.as_ptr().cast_mut(),
        };
        let attributes = OBJECT_ATTRIBUTES {
            Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
            RootDirectory: ptr::null_mut(),
            ObjectName: &unicode,
            Attributes: 0,
            SecurityDescriptor: ptr::null(),
            SecurityQualityOfService: ptr::null(),
        };
        let mut handle: HANDLE = ptr::null_mut();
        let mut iosb = new_io_status_block();
        // SAFETY: every pointer refers to a live local that outlives the call (`attributes`
        // points at `unicode`, which points into `name`); no create options means the handle
        // is opened for asynchronous I/O, which AFD_POLL through a port requires.
        let status = unsafe {
            NtCreateFile(
                &mut handle,
                SYNCHRONIZE,
                &attributes,
                &mut iosb,
                ptr::null(),
                0,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                FILE_OPEN,
                0,
                ptr::null(),
                0,
            )
        };
        if status != STATUS_SUCCESS {
            let e = ntstatus_error(status);
            return Err(io::Error::new(
                e.kind(),
                format!("opening {AFD_HELPER_NAME}: {e}"),
            ));
        }
        // SAFETY: NtCreateFile succeeded, so `handle` is an open handle nobody else owns;
        // wrapping it at once closes it on every path below.
        let handle = unsafe { OwnedHandle::from_raw_handle(handle) };
        port.associate(handle.as_raw_handle(), key)?;
        // SAFETY: a plain call on an open handle we own.
        let ok = unsafe {
            SetFileCompletionNotificationModes(
                handle.as_raw_handle(),
                FILE_SKIP_SET_EVENT_ON_HANDLE,
            )
        };
        if ok == 0 {
            // Only an optimisation (nobody waits on the handle itself): keep going.
            tracing::debug!(error = %io::Error::last_os_error(), "AFD: completion modes unchanged");
        }
        Ok(Afd { handle })
    }

    /// Issues `IOCTL_AFD_POLL` for the socket and events in `*info`.
    ///
    /// `Ok(())` means a completion packet carrying `context` as its `lpOverlapped` will be
    /// queued to the port (at once if an event is already signalled); until it has been
    /// dequeued the kernel may write `*iosb` and `*info`. `Err` means nothing was started and
    /// nothing will be queued.
    ///
    /// # Safety
    ///
    /// `iosb` and `info` must be valid for writes and stay allocated, unmoved and untouched
    /// by Rust code until the completion carrying `context` has been dequeued from the port.
    /// No other poll may be in flight with the same `iosb`. `context` must not be null (a null
    /// `ApcContext` queues no completion).
    pub(super) unsafe fn poll(
        &self,
        iosb: *mut IO_STATUS_BLOCK,
        info: *mut AfdPollInfo,
        context: *const c_void,
    ) -> io::Result<()> {
        debug_assert!(!context.is_null());
        // SAFETY: the caller guarantees `iosb` is valid for writes and not in use.
        unsafe {
            (*iosb).Anonymous.Status = STATUS_PENDING;
            (*iosb).Information = 0;
        }
        let len = size_of::<AfdPollInfo>() as u32;
        // SAFETY: the caller guarantees `iosb` and `info` stay valid until the completion is
        // dequeued; the same buffer is input and output, as METHOD_BUFFERED AFD_POLL expects.
        let status = unsafe {
            NtDeviceIoControlFile(
                self.handle.as_raw_handle(),
                ptr::null_mut(),
                None,
                context,
                iosb,
                IOCTL_AFD_POLL,
                info.cast::<c_void>(),
                len,
                info.cast::<c_void>(),
                len,
            )
        };
        // STATUS_PENDING, or success when an event was already signalled: either way the
        // completion is queued to the port (skip-on-success is not enabled on this handle).
        // Only an error status returned here means that no request exists.
        if is_nt_error(status) {
            Err(ntstatus_error(status))
        } else {
            Ok(())
        }
    }

    /// Asks the kernel to cancel the poll issued with `iosb`.
    ///
    /// The poll still completes through the port (with `STATUS_CANCELLED`, or normally if it
    /// won the race), so its memory stays the kernel's until that completion is dequeued.
    /// `STATUS_NOT_FOUND` (already completed, completion queued) counts as success.
    ///
    /// # Safety
    ///
    /// `iosb` must be the block of a poll issued through this handle. It is only used to
    /// identify the request (the kernel neither reads nor writes through it here), so calling
    /// this for a poll whose completion has already been dequeued is harmless but useless.
    pub(super) unsafe fn cancel(&self, iosb: *const IO_STATUS_BLOCK) -> io::Result<()> {
        let mut cancel_iosb = new_io_status_block();
        // SAFETY: `cancel_iosb` is a live local; `iosb` only identifies the request.
        let status =
            unsafe { NtCancelIoFileEx(self.handle.as_raw_handle(), iosb, &mut cancel_iosb) };
        if status == STATUS_SUCCESS || status == STATUS_NOT_FOUND {
            Ok(())
        } else {
            Err(ntstatus_error(status))
        }
    }
}

/// The base service provider's handle of `socket`: the handle AFD knows.
///
/// Tries `SIO_BASE_HANDLE`; if a layered service provider intercepts it, asks for the next
/// provider's handle (`SIO_BSP_HANDLE_POLL`, `SIO_BSP_HANDLE_SELECT`, `SIO_BSP_HANDLE`) and
/// tries again from there, up to [`MAX_LSP_LAYERS`] layers. A handle that is not a socket
/// fails with `WSAENOTSOCK`.
pub(super) fn base_socket(socket: RawSocket) -> io::Result<RawSocket> {
    let mut current = socket;
    for _ in 0..MAX_LSP_LAYERS {
        let err = match socket_ioctl(current, SIO_BASE_HANDLE) {
            Ok(base) => return Ok(base),
            Err(e) if e.raw_os_error() == Some(WSAENOTSOCK) => return Err(e),
            Err(e) => e,
        };
        let next = BSP_IOCTLS
            .iter()
            .find_map(|&code| socket_ioctl(current, code).ok());
        match next {
            // One layer down; ask that provider for its base handle.
            Some(next) if next != current => current = next,
            // The provider answers with its own handle: it is the base provider.
            Some(next) => return Ok(next),
            None => return Err(err),
        }
    }
    Err(io::Error::other("AFD: too many layered service providers"))
}

/// A `WSAIoctl` that returns a socket handle.
fn socket_ioctl(socket: RawSocket, code: u32) -> io::Result<RawSocket> {
    let mut out: RawSocket = 0;
    let mut bytes: u32 = 0;
    // SAFETY: the output buffer is `out` with its exact size, `bytes` receives the length;
    // no input buffer, no overlapped operation. An invalid socket is reported, not UB.
    let ret = unsafe {
        WSAIoctl(
            socket as usize,
            code,
            ptr::null(),
            0,
            (&mut out as *mut RawSocket).cast::<c_void>(),
            size_of::<RawSocket>() as u32,
            &mut bytes,
            ptr::null_mut(),
            None,
        )
    };
    if ret == SOCKET_ERROR {
        // SAFETY: reads this thread's last Winsock error; no arguments.
        return Err(io::Error::from_raw_os_error(unsafe { WSAGetLastError() }));
    }
    Ok(out)
}

/// One `WSAStartup(2.2)`, undone by `WSACleanup` on drop.
///
/// Winsock counts start-ups per process, so every poller holds one: `WSAIoctl` (and AFD on
/// sockets) works even before std has created its first socket, and the count is balanced.
#[derive(Debug)]
pub(super) struct Winsock(());

impl Winsock {
    /// Starts Winsock 2.2 (once more).
    pub(super) fn start() -> io::Result<Winsock> {
        // SAFETY: WSADATA is plain data; all-zero is a valid value to be overwritten.
        let mut data: WSADATA = unsafe { std::mem::zeroed() };
        // SAFETY: `data` is a live local the call fills in.
        let ret = unsafe { WSAStartup(0x0202, &mut data) };
        if ret != 0 {
            // WSAStartup returns the error instead of setting it.
            return Err(io::Error::from_raw_os_error(ret));
        }
        Ok(Winsock(()))
    }
}

impl Drop for Winsock {
    fn drop(&mut self) {
        // SAFETY: balances the successful WSAStartup of `start`.
        unsafe {
            WSACleanup();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The AFD layer alone: which events Winsock's driver (here: Wine's) signals for each
    //! socket condition, cancellation, and the base handle query.

    use super::*;
    use crate::sys::poller::test_support::{connect_nonblocking, tcp_pair};
    use crate::sys::poller::windows::port::CompletionPort;
    use std::io::Write;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::os::windows::io::AsRawSocket;
    use std::time::Duration;

    use socket2::SockRef;
    use windows_sys::Win32::Foundation::STATUS_CANCELLED;
    use windows_sys::Win32::System::IO::OVERLAPPED_ENTRY;

    /// Every event tofu ever polls for.
    const ALL: u32 = POLL_RECEIVE
        | POLL_SEND
        | POLL_DISCONNECT
        | POLL_ABORT
        | POLL_LOCAL_CLOSE
        | POLL_ACCEPT
        | POLL_CONNECT_FAIL;

    /// The poll blocks of one request, on the heap, freed only after the completion.
    struct Request {
        iosb: Box<IO_STATUS_BLOCK>,
        info: Box<AfdPollInfo>,
    }

    /// A completion port with an AFD helper handle.
    struct Rig {
        port: CompletionPort,
        afd: Afd,
        _winsock: Winsock,
    }

    /// How a poll ended.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// Completed with these signalled events.
        Events(u32),
        /// Nothing within the wait; cancelled (and the cancellation came back).
        Cancelled,
    }

    impl Rig {
        fn new() -> Rig {
            let winsock = Winsock::start().unwrap();
            let port = CompletionPort::new().unwrap();
            let afd = Afd::open(&port, 7).unwrap();
            Rig {
                port,
                afd,
                _winsock: winsock,
            }
        }

        /// Issues a poll for `mask` on `socket`.
        fn issue(&self, socket: RawSocket, mask: u32) -> Request {
            let base = base_socket(socket).unwrap();
            let mut req = Request {
                iosb: Box::new(new_io_status_block()),
                info: Box::new(AfdPollInfo::new(base, mask)),
            };
            let iosb: *mut IO_STATUS_BLOCK = &mut *req.iosb;
            let info: *mut AfdPollInfo = &mut *req.info;
            // SAFETY: both blocks are boxed (stable addresses) and every caller waits for
            // the completion (`finish`) before dropping or reading the request.
            unsafe { self.afd.poll(iosb, info, iosb as *const c_void) }.unwrap();
            req
        }

        /// Dequeues one completion within `ms`; returns its context.
        fn next(&self, ms: u32) -> Option<usize> {
            let mut entries = [OVERLAPPED_ENTRY::default(); 1];
            let n = self.port.get_many_for_tests(&mut entries, ms).unwrap();
            (n == 1).then(|| {
                assert_eq!(entries[0].lpCompletionKey, 7);
                entries[0].lpOverlapped as usize
            })
        }

        /// Waits up to `ms` for `req` to complete; cancels it if it does not.
        fn finish(&self, req: &mut Request, ms: u32) -> Outcome {
            let context = &*req.iosb as *const IO_STATUS_BLOCK as usize;
            if let Some(done) = self.next(ms) {
                assert_eq!(done, context);
                assert_eq!(io_status(&req.iosb), STATUS_SUCCESS);
                return Outcome::Events(req.info.signalled());
            }
            // SAFETY: the request was issued through self.afd and has not completed.
            unsafe { self.afd.cancel(&*req.iosb) }.unwrap();
            let done = self.next(5000).expect("the cancellation completes");
            assert_eq!(done, context);
            assert_eq!(io_status(&req.iosb), STATUS_CANCELLED);
            Outcome::Cancelled
        }

        /// One poll, waited for up to `ms`.
        fn poll(&self, socket: RawSocket, mask: u32, ms: u32) -> Outcome {
            let mut req = self.issue(socket, mask);
            self.finish(&mut req, ms)
        }
    }

    /// Long enough for loopback traffic to arrive; the polls themselves wait for it.
    const SOON: u32 = 2000;
    /// How long "nothing happens" is watched.
    const QUIET: u32 = 50;

    #[test]
    fn receive_is_signalled_by_data_and_only_when_asked() {
        let rig = Rig::new();
        let (a, mut b) = tcp_pair();
        let raw = a.as_raw_socket();
        let quiet = ALL & !POLL_SEND;
        assert_eq!(rig.poll(raw, quiet, QUIET), Outcome::Cancelled);
        b.write_all(b"x").unwrap();
        assert_eq!(rig.poll(raw, quiet, SOON), Outcome::Events(POLL_RECEIVE));
        // Only requested events are signalled: data does not complete a SEND-less,
        // RECEIVE-less poll.
        assert_eq!(
            rig.poll(raw, POLL_DISCONNECT | POLL_ABORT, QUIET),
            Outcome::Cancelled
        );
    }

    #[test]
    fn send_is_signalled_while_the_buffer_has_room() {
        let rig = Rig::new();
        let (a, _b) = tcp_pair();
        assert_eq!(
            rig.poll(a.as_raw_socket(), ALL, SOON),
            Outcome::Events(POLL_SEND)
        );
    }

    #[test]
    fn accept_is_signalled_on_a_listener_with_a_pending_connection() {
        let rig = Rig::new();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let raw = listener.as_raw_socket();
        assert_eq!(rig.poll(raw, ALL, QUIET), Outcome::Cancelled);
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // A listener signals ACCEPT, never RECEIVE.
        assert_eq!(rig.poll(raw, ALL, SOON), Outcome::Events(POLL_ACCEPT));
        assert_eq!(rig.poll(raw, POLL_RECEIVE, QUIET), Outcome::Cancelled);
    }

    #[test]
    fn disconnect_is_signalled_after_a_graceful_close() {
        let rig = Rig::new();
        let (a, b) = tcp_pair();
        drop(b); // std: FIN
        assert_eq!(
            rig.poll(a.as_raw_socket(), ALL & !POLL_SEND, SOON),
            Outcome::Events(POLL_DISCONNECT)
        );
    }

    #[test]
    fn disconnect_waits_for_unread_data_under_wine() {
        // Data then FIN: the data is signalled first. (Wine signals DISCONNECT only once
        // the data has been read; the Iocp backend maps RECEIVE to RECV either way, and the
        // reactor reads on to the end of stream.)
        let rig = Rig::new();
        let (a, mut b) = tcp_pair();
        b.write_all(b"x").unwrap();
        drop(b);
        std::thread::sleep(Duration::from_millis(QUIET.into()));
        match rig.poll(a.as_raw_socket(), ALL & !POLL_SEND, SOON) {
            Outcome::Events(e) => assert!(e & POLL_RECEIVE != 0, "{e:#x}"),
            other => panic!("{other:?}"),
        }
        let mut buf = [0u8; 4];
        assert_eq!(std::io::Read::read(&mut &a, &mut buf).unwrap(), 1);
        assert_eq!(
            rig.poll(a.as_raw_socket(), ALL & !POLL_SEND, SOON),
            Outcome::Events(POLL_DISCONNECT)
        );
    }

    #[test]
    fn abort_is_signalled_after_a_reset() {
        let rig = Rig::new();
        let (a, b) = tcp_pair();
        SockRef::from(&b).set_linger(Some(Duration::ZERO)).unwrap();
        drop(b); // RST
        match rig.poll(a.as_raw_socket(), ALL & !POLL_SEND, SOON) {
            Outcome::Events(e) => assert!(e & POLL_ABORT != 0, "{e:#x}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_fail_is_signalled_for_a_refused_connect() {
        let rig = Rig::new();
        let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap(); // closed again: nobody listens
        let s = connect_nonblocking(addr).unwrap();
        assert_eq!(
            rig.poll(s.as_raw_socket(), ALL, SOON),
            Outcome::Events(POLL_CONNECT_FAIL)
        );
        // The condition persists: a new poll completes at once.
        assert_eq!(
            rig.poll(s.as_raw_socket(), ALL, SOON),
            Outcome::Events(POLL_CONNECT_FAIL)
        );
    }

    #[test]
    fn send_is_signalled_when_a_connect_succeeds() {
        let rig = Rig::new();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let s = connect_nonblocking(listener.local_addr().unwrap()).unwrap();
        assert_eq!(
            rig.poll(s.as_raw_socket(), ALL, SOON),
            Outcome::Events(POLL_SEND)
        );
    }

    #[test]
    fn local_close_completes_a_pending_poll() {
        let rig = Rig::new();
        let (a, _b) = tcp_pair();
        let mut req = rig.issue(a.as_raw_socket(), ALL & !POLL_SEND);
        assert!(rig.next(QUIET).is_none(), "completed without an event");
        drop(a);
        match rig.finish(&mut req, SOON) {
            Outcome::Events(e) => assert!(e & POLL_LOCAL_CLOSE != 0, "{e:#x}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_then_poll_again() {
        let rig = Rig::new();
        let (a, mut b) = tcp_pair();
        let raw = a.as_raw_socket();
        let mut req = rig.issue(raw, POLL_RECEIVE);
        assert_eq!(rig.finish(&mut req, QUIET), Outcome::Cancelled);
        // Cancelling a completed request is harmless (STATUS_NOT_FOUND counts as done).
        // SAFETY: only identifies the (finished) request.
        unsafe { rig.afd.cancel(&*req.iosb) }.unwrap();
        b.write_all(b"x").unwrap();
        // The same blocks serve the next poll.
        let iosb: *mut IO_STATUS_BLOCK = &mut *req.iosb;
        *req.info = AfdPollInfo::new(base_socket(raw).unwrap(), POLL_RECEIVE);
        let info: *mut AfdPollInfo = &mut *req.info;
        // SAFETY: the previous poll's completion was dequeued; we wait for this one.
        unsafe { rig.afd.poll(iosb, info, iosb as *const c_void) }.unwrap();
        assert_eq!(rig.finish(&mut req, SOON), Outcome::Events(POLL_RECEIVE));
    }

    #[test]
    fn base_socket_of_a_socket_and_of_something_else() {
        let _winsock = Winsock::start().unwrap();
        let (a, _b) = tcp_pair();
        let base = base_socket(a.as_raw_socket()).unwrap();
        assert_ne!(base, 0);
        // A handle that is not a socket (a file): Windows says WSAENOTSOCK; Wine 8
        // answers SIO_BASE_HANDLE with the handle itself, and then AFD refuses the poll.
        let rig = Rig::new();
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let raw = std::os::windows::io::AsRawHandle::as_raw_handle(&file) as RawSocket;
        match base_socket(raw) {
            Err(e) => assert_eq!(e.raw_os_error(), Some(WSAENOTSOCK), "{e}"),
            Ok(base) => {
                let mut iosb = Box::new(new_io_status_block());
                let mut info = Box::new(AfdPollInfo::new(base, ALL));
                let iosb_ptr: *mut IO_STATUS_BLOCK = &mut *iosb;
                let info_ptr: *mut AfdPollInfo = &mut *info;
                // SAFETY: boxed blocks; if the poll were accepted (the assertion below
                // fails), they are leaked rather than freed under the kernel.
                let r = unsafe { rig.afd.poll(iosb_ptr, info_ptr, iosb_ptr as *const c_void) };
                if r.is_ok() {
                    std::mem::forget((iosb, info));
                }
                let e = r.unwrap_err();
                use windows_sys::Win32::Foundation::ERROR_INVALID_HANDLE;
                assert_eq!(e.raw_os_error(), Some(ERROR_INVALID_HANDLE as i32), "{e}");
            }
        }
    }

    #[test]
    fn ntstatus_errors_map_to_win32_codes() {
        use windows_sys::Win32::Foundation::{ERROR_INVALID_HANDLE, STATUS_INVALID_HANDLE};
        assert_eq!(
            ntstatus_error(STATUS_INVALID_HANDLE).raw_os_error(),
            Some(ERROR_INVALID_HANDLE as i32)
        );
        assert!(is_nt_error(STATUS_CANCELLED));
        assert!(!is_nt_error(STATUS_PENDING));
        assert!(!is_nt_error(STATUS_SUCCESS));
    }
}
