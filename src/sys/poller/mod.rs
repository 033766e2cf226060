//! Readiness poller: one public handle over several OS backends.
//!
//! # Contract
//!
//! A [`Poller`] watches sockets for a platform-agnostic reactor loop:
//!
//! * [`Poller::register`] adds a socket under a caller-chosen [`Token`] with an
//!   interest (a union of [`Triggers::ACCEPT`], [`Triggers::CONNECT`],
//!   [`Triggers::SEND`], [`Triggers::RECV`], or [`Triggers::NONE`]);
//!   [`Poller::reregister`] changes the interest and [`Poller::deregister`]
//!   removes the registration (idempotently). Registrations are keyed by token;
//!   the socket passed to `reregister`/`deregister` must be the one registered
//!   under that token. Deregister a socket *before* closing it.
//! * [`Poller::wait`] blocks until at least one registration is ready, the
//!   poller is woken, or the timeout expires, and fills a `Vec<Event>` with
//!   one [`Event`] per ready token (a token appears at most once per wait).
//!   A wake-up is reported as `Event { token: Token::WAKER, triggers: NOTIFY }`;
//!   a wait that times out with nothing ready reports exactly one
//!   `Event { token: Token::WAKER, triggers: TIMEOUT }`.
//! * [`Waker::wake`] (through [`Poller::waker`]) interrupts a `wait` from any
//!   other thread. Wake-ups coalesce: however many `wake` calls happened before
//!   a `wait` notices them, that `wait` reports a single `NOTIFY`.
//!
//! # Readiness mapping
//!
//! Given the registered interest `I`, every backend asks the OS for
//! "readable" (plus peer half-close where the OS supports it) if `I` has `RECV`
//! or `ACCEPT`, for "writable" if `I` has `SEND` or `CONNECT`, and reports:
//!
//! * OS error (including an invalid fd) -> `ERR`;
//! * hang-up, including a peer half-close (`EPOLLRDHUP`/`POLLRDHUP`) -> `HUP`;
//! * readable -> `RECV` if `I` has `RECV`, else `ACCEPT`;
//! * writable -> `SEND` if `I` has `SEND`, else `CONNECT`.
//!
//! `ERR`/`HUP` come together with whatever readable/writable triggers the OS
//! reported, so the reactor can drain buffered data before closing. A failed
//! non-blocking connect is typically reported as `CONNECT | ERR | HUP`: check
//! `ERR` (and `SO_ERROR`) before treating `CONNECT` as success. Interest
//! `NONE` still reports `ERR`/`HUP`.
//!
//! # Backends
//!
//! * `Backend::Epoll` (Linux): used **level-triggered** (no `EPOLLET`): a
//!   readiness is reported on every `wait` until the reactor consumes it
//!   (reads to `EAGAIN`, changes the interest, or deregisters). This includes
//!   `ERR`/`HUP`: a dead socket must be deregistered or it is reported forever.
//! * `Backend::Poll` (any unix): level-triggered as well; rebuilds its
//!   `pollfd` array on every `wait` from the registration map, so
//!   `register`/`reregister`/`deregister` never make a syscall.
//! * `Backend::Iocp` (Windows): an I/O completion port fed by **one-shot**
//!   `IOCTL_AFD_POLL` requests (the mechanism under `WSAPoll`). A completion
//!   is reported once; the backend re-issues the poll at the start of the next
//!   `wait`, when the reactor has run the I/O to `WSAEWOULDBLOCK`, and AFD
//!   checks the socket's current state when a poll is issued: so it reports
//!   like the level-triggered backends. A changed interest cancels the poll in
//!   flight and re-issues it. See `windows/selector.rs` for the details and the ownership
//!   of the memory the kernel writes.
//!
//! The reactor calls `reregister` once per loop iteration for each channel it
//! touched, and every backend makes an unchanged `reregister` cost no syscall
//! (a map lookup): the registration map and its rules are kept once, in
//! `registry.rs`, which calls a backend only for a real change.
//!
//! # Interrupted waits
//!
//! `EINTR` is retried inside `wait` with the remaining time of the original
//! timeout; `wait` never returns `ErrorKind::Interrupted`. `wait` may return
//! with `events` empty (no `TIMEOUT`) if the OS reported only readiness that
//! mapped to nothing (e.g. a stale event); treat that as "nothing to do".

use std::fmt;
use std::io;
use std::ops::{BitAnd, BitOr, BitOrAssign};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
#[cfg(unix)]
use std::time::Instant;

#[cfg(unix)]
use libc::c_int;

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod epoll;
#[cfg(unix)]
#[allow(unsafe_code)]
mod poll;
#[cfg(unix)]
#[allow(unsafe_code)]
mod waker;
#[cfg(windows)]
#[allow(unsafe_code)]
mod windows;

mod registry;
#[cfg(test)]
mod test_support;

use registry::{Registrar, Registry};

#[cfg(unix)]
pub use waker::Waker;
#[cfg(windows)]
pub use windows::Waker;

/// The OS handle of a socket as passed to the poller.
#[cfg(unix)]
pub type RawSocket = std::os::fd::RawFd;
/// The OS handle of a socket as passed to the poller.
#[cfg(windows)]
pub type RawSocket = std::os::windows::io::RawSocket;

/// Identifies one registration. Monotonic u64 sequence numbers chosen by the caller, never fds.
///
/// `Token::WAKER` (0) and `Token(u64::MAX)` are reserved and rejected by
/// [`Poller::register`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

impl Token {
    /// Reserved for the waker and for timeout reports; callers must not register it.
    pub const WAKER: Token = Token(0);
    /// Reserved for backend-internal use (the epoll backend's waker sentinel).
    const RESERVED: Token = Token(u64::MAX);
}

/// A small bit set. Used both as interest (ACCEPT, CONNECT, SEND, RECV) and as readiness report.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Triggers(u8);

impl Triggers {
    /// No trigger.
    pub const NONE: Triggers = Triggers(0);
    /// The poller was woken through its [`Waker`] (reported under [`Token::WAKER`]).
    pub const NOTIFY: Triggers = Triggers(1 << 0);
    /// A listening socket has a pending connection.
    pub const ACCEPT: Triggers = Triggers(1 << 1);
    /// A non-blocking connect finished (successfully or not: check `ERR`).
    pub const CONNECT: Triggers = Triggers(1 << 2);
    /// Data can be received (or end of stream can be read).
    pub const RECV: Triggers = Triggers(1 << 3);
    /// Data can be sent.
    pub const SEND: Triggers = Triggers(1 << 4);
    /// The socket has a pending error (or the handle is invalid).
    pub const ERR: Triggers = Triggers(1 << 5);
    /// The peer hung up (fully, or closed its sending half).
    pub const HUP: Triggers = Triggers(1 << 6);
    /// The wait timed out with nothing ready (reported under [`Token::WAKER`]).
    pub const TIMEOUT: Triggers = Triggers(1 << 7);

    /// The triggers that may be used as an interest.
    const INTEREST: Triggers =
        Triggers(Self::ACCEPT.0 | Self::CONNECT.0 | Self::SEND.0 | Self::RECV.0);
    /// Names for `Debug`, in bit order.
    const NAMES: [(Triggers, &'static str); 8] = [
        (Self::NOTIFY, "NOTIFY"),
        (Self::ACCEPT, "ACCEPT"),
        (Self::CONNECT, "CONNECT"),
        (Self::RECV, "RECV"),
        (Self::SEND, "SEND"),
        (Self::ERR, "ERR"),
        (Self::HUP, "HUP"),
        (Self::TIMEOUT, "TIMEOUT"),
    ];

    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Triggers) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if `self` and `other` share at least one bit.
    pub const fn intersects(self, other: Triggers) -> bool {
        self.0 & other.0 != 0
    }

    /// True if no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bits set in `self` or `other`.
    pub const fn union(self, other: Triggers) -> Triggers {
        Triggers(self.0 | other.0)
    }

    /// The bits set in `self` but not in `other`.
    #[cfg(test)]
    pub const fn difference(self, other: Triggers) -> Triggers {
        Triggers(self.0 & !other.0)
    }

    /// Sets the bits of `other`.
    pub fn insert(&mut self, other: Triggers) {
        self.0 |= other.0;
    }

    /// Clears the bits of `other`.
    #[cfg(test)]
    pub fn remove(&mut self, other: Triggers) {
        self.0 &= !other.0;
    }

    /// The raw bits.
    #[cfg(test)]
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl BitOr for Triggers {
    type Output = Triggers;
    fn bitor(self, rhs: Triggers) -> Triggers {
        self.union(rhs)
    }
}

impl BitOrAssign for Triggers {
    fn bitor_assign(&mut self, rhs: Triggers) {
        self.insert(rhs);
    }
}

impl BitAnd for Triggers {
    type Output = Triggers;
    fn bitand(self, rhs: Triggers) -> Triggers {
        Triggers(self.0 & rhs.0)
    }
}

impl fmt::Debug for Triggers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Triggers(")?;
        if self.is_empty() {
            f.write_str("NONE")?;
        }
        let mut first = true;
        for (bit, name) in Self::NAMES {
            if self.contains(bit) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// One readiness report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The registration this report is for ([`Token::WAKER`] for `NOTIFY`/`TIMEOUT`).
    pub token: Token,
    /// What happened.
    pub triggers: Triggers,
}

/// Which OS mechanism a Poller uses.
///
/// ```
/// use tofu::Backend;
/// assert!(Backend::available().contains(&Backend::default()));
/// let b: Backend = Backend::default().name().parse()?; // "epoll" on Linux, "iocp" on Windows
/// assert_eq!(b, Backend::default());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Linux `epoll`, level-triggered.
    #[cfg(target_os = "linux")]
    Epoll,
    /// POSIX `poll(2)`, level-triggered.
    #[cfg(unix)]
    Poll,
    /// Windows I/O completion port with one-shot `AFD_POLL` requests, re-armed by the
    /// backend so that it reports like the level-triggered ones.
    #[cfg(windows)]
    Iocp,
}

impl Backend {
    /// The backends usable on this platform, the default first.
    pub fn available() -> &'static [Backend] {
        #[cfg(target_os = "linux")]
        {
            &[Backend::Epoll, Backend::Poll]
        }
        #[cfg(all(unix, not(target_os = "linux")))]
        {
            &[Backend::Poll]
        }
        #[cfg(windows)]
        {
            &[Backend::Iocp]
        }
        #[cfg(not(any(unix, windows)))]
        {
            &[]
        }
    }

    /// The name accepted by `FromStr` and printed by `Display`.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_os = "linux")]
            Backend::Epoll => "epoll",
            #[cfg(unix)]
            Backend::Poll => "poll",
            #[cfg(windows)]
            Backend::Iocp => "iocp",
        }
    }
}

#[cfg(any(unix, windows))]
impl Default for Backend {
    /// `Epoll` on Linux, `Poll` on other unix, `Iocp` on Windows.
    fn default() -> Backend {
        #[cfg(target_os = "linux")]
        {
            Backend::Epoll
        }
        #[cfg(all(unix, not(target_os = "linux")))]
        {
            Backend::Poll
        }
        #[cfg(windows)]
        {
            Backend::Iocp
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error returned when parsing an unknown or unavailable backend name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseBackendError {
    name: String,
}

impl fmt::Display for ParseBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown poller backend {:?}; available:", self.name)?;
        for (i, backend) in Backend::available().iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{backend}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseBackendError {}

impl FromStr for Backend {
    type Err = ParseBackendError;

    /// Parses `"epoll"`, `"poll"` or `"iocp"` (ASCII case-insensitive); only available
    /// backends parse.
    fn from_str(s: &str) -> Result<Backend, ParseBackendError> {
        let name = s.trim();
        Backend::available()
            .iter()
            .copied()
            .find(|b| b.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| ParseBackendError { name: s.to_owned() })
    }
}

/// The backend-specific part of a [`Poller`].
enum Flavor {
    #[cfg(target_os = "linux")]
    Epoll(epoll::Epoll),
    #[cfg(unix)]
    Poll(poll::Poll),
    #[cfg(windows)]
    Iocp(windows::Iocp),
}

#[cfg(any(unix, windows))]
impl Flavor {
    /// The backend's OS side of registering, for the [`Registry`] to call.
    fn registrar(&mut self) -> &mut dyn Registrar {
        match self {
            #[cfg(target_os = "linux")]
            Flavor::Epoll(b) => b,
            #[cfg(unix)]
            Flavor::Poll(b) => b,
            #[cfg(windows)]
            Flavor::Iocp(b) => b,
        }
    }
}

/// Waits for readiness of registered sockets; see the [module docs](self).
pub struct Poller {
    flavor: Flavor,
    /// Every registration, with the rules of the contract; `flavor` only makes the syscalls.
    registry: Registry,
    waker: Arc<Waker>,
}

#[cfg(any(unix, windows))]
impl Poller {
    /// Creates a poller using `backend` (see [`Backend::available`]).
    pub fn new(backend: Backend) -> io::Result<Poller> {
        match backend {
            #[cfg(target_os = "linux")]
            Backend::Epoll => {
                let waker = Arc::new(Waker::new()?);
                let flavor = Flavor::Epoll(epoll::Epoll::new(&waker)?);
                Ok(Poller::from_parts(flavor, waker))
            }
            #[cfg(unix)]
            Backend::Poll => {
                let waker = Arc::new(Waker::new()?);
                let flavor = Flavor::Poll(poll::Poll::new());
                Ok(Poller::from_parts(flavor, waker))
            }
            #[cfg(windows)]
            Backend::Iocp => {
                let (iocp, waker) = windows::Iocp::new()?;
                Ok(Poller::from_parts(Flavor::Iocp(iocp), Arc::new(waker)))
            }
        }
    }

    fn from_parts(flavor: Flavor, waker: Arc<Waker>) -> Poller {
        Poller {
            flavor,
            registry: Registry::default(),
            waker,
        }
    }

    /// The backend this poller uses.
    pub fn backend(&self) -> Backend {
        match self.flavor {
            #[cfg(target_os = "linux")]
            Flavor::Epoll(_) => Backend::Epoll,
            #[cfg(unix)]
            Flavor::Poll(_) => Backend::Poll,
            #[cfg(windows)]
            Flavor::Iocp(_) => Backend::Iocp,
        }
    }

    /// Registers `socket` under `token`.
    ///
    /// interest: any union of ACCEPT, CONNECT, SEND, RECV (may be NONE: then only ERR/HUP are reported).
    ///
    /// Errors: `InvalidInput` for a reserved token or a non-interest trigger,
    /// `AlreadyExists` if `token` is registered; the epoll backend also fails
    /// if the socket is invalid or already registered under another token, the
    /// iocp backend if the handle is not a socket.
    pub fn register(
        &mut self,
        socket: RawSocket,
        token: Token,
        interest: Triggers,
    ) -> io::Result<()> {
        let os = self.flavor.registrar();
        self.registry.register(os, socket, token, interest)
    }

    /// Sets a new interest. Must not make a syscall when the interest is unchanged.
    ///
    /// Errors: `NotFound` if `token` is not registered, `InvalidInput` if it is
    /// registered with another socket or `interest` has a non-interest trigger.
    pub fn reregister(
        &mut self,
        socket: RawSocket,
        token: Token,
        interest: Triggers,
    ) -> io::Result<()> {
        let os = self.flavor.registrar();
        self.registry.reregister(os, socket, token, interest)
    }

    /// Idempotent: deregistering an unknown socket/token returns Ok.
    ///
    /// Errors: `InvalidInput` if `token` is registered with another socket.
    /// A socket that was closed while registered is still removed without error.
    pub fn deregister(&mut self, socket: RawSocket, token: Token) -> io::Result<()> {
        let os = self.flavor.registrar();
        self.registry.deregister(os, socket, token)
    }

    /// Clears `events`, blocks until readiness, a wake-up or the timeout (None = forever), fills `events`.
    ///
    /// A wake-up appears as `Event { token: Token::WAKER, triggers: NOTIFY }` (the
    /// waker is drained inside `wait`, so one wake-up is reported once however
    /// many `wake()` calls preceded it). A timeout with nothing ready gives exactly
    /// one `Event { token: Token::WAKER, triggers: TIMEOUT }`. Sub-millisecond
    /// timeouts are rounded up to whole milliseconds (`Some(ZERO)` polls without
    /// blocking). `EINTR` is retried with the remaining time, never returned.
    pub fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        let ready = match &mut self.flavor {
            #[cfg(target_os = "linux")]
            Flavor::Epoll(b) => b.wait(&self.registry, events, timeout)?,
            #[cfg(unix)]
            Flavor::Poll(b) => b.wait(&self.registry, &self.waker, events, timeout)?,
            #[cfg(windows)]
            Flavor::Iocp(b) => b.wait(&self.waker, events, timeout)?,
        };
        if ready == 0 {
            events.push(Event {
                token: Token::WAKER,
                triggers: Triggers::TIMEOUT,
            });
        }
        Ok(())
    }

    /// A handle other threads use to interrupt wait().
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Poller");
        #[cfg(any(unix, windows))]
        d.field("backend", &self.backend());
        d.finish_non_exhaustive()
    }
}

/// Whether the OS must be asked for "readable" for this interest.
#[cfg(unix)]
fn wants_readable(interest: Triggers) -> bool {
    interest.intersects(Triggers::RECV.union(Triggers::ACCEPT))
}

/// Whether the OS must be asked for "writable" for this interest.
#[cfg(unix)]
fn wants_writable(interest: Triggers) -> bool {
    interest.intersects(Triggers::SEND.union(Triggers::CONNECT))
}

/// OS readiness of one registration in platform-neutral terms.
#[cfg(unix)]
#[derive(Clone, Copy, Debug, Default)]
struct Readiness {
    readable: bool,
    writable: bool,
    error: bool,
    hangup: bool,
}

/// Maps OS readiness to triggers given the registered interest.
#[cfg(unix)]
fn triggers_for(interest: Triggers, r: Readiness) -> Triggers {
    let mut t = Triggers::NONE;
    if r.error {
        t |= Triggers::ERR;
    }
    if r.hangup {
        t |= Triggers::HUP;
    }
    if r.readable {
        if interest.contains(Triggers::RECV) {
            t |= Triggers::RECV;
        } else if interest.contains(Triggers::ACCEPT) {
            t |= Triggers::ACCEPT;
        }
    }
    if r.writable {
        if interest.contains(Triggers::SEND) {
            t |= Triggers::SEND;
        } else if interest.contains(Triggers::CONNECT) {
            t |= Triggers::CONNECT;
        }
    }
    t
}

/// Integer return types of syscalls that signal failure with -1.
#[cfg(unix)]
trait SyscallReturn: Copy + PartialEq {
    const FAILED: Self;
}

#[cfg(unix)]
impl SyscallReturn for i32 {
    const FAILED: Self = -1;
}

#[cfg(unix)]
impl SyscallReturn for isize {
    const FAILED: Self = -1;
}

/// Turns a syscall's -1 into `io::Error::last_os_error()`.
#[cfg(unix)]
fn cvt<T: SyscallReturn>(ret: T) -> io::Result<T> {
    if ret == T::FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Converts a remaining wait time to a millisecond timeout, rounding up so a
/// sub-millisecond timeout does not become a busy 0. Returns whether the value
/// was clamped to `c_int::MAX`.
#[cfg(unix)]
fn timeout_ms(remaining: Duration) -> (c_int, bool) {
    let ms = remaining.as_nanos().div_ceil(1_000_000);
    match c_int::try_from(ms) {
        Ok(ms) => (ms, false),
        Err(_) => (c_int::MAX, true),
    }
}

/// Runs one blocking OS wait (`sys`, taking a millisecond timeout, -1 = forever,
/// returning the number of ready entries) until it returns something other than
/// `EINTR`, recomputing the remaining time on each retry. A timeout clamped to
/// `c_int::MAX` ms is extended by waiting again until the real deadline.
#[cfg(unix)]
fn wait_retrying(
    timeout: Option<Duration>,
    mut sys: impl FnMut(c_int) -> io::Result<usize>,
) -> io::Result<usize> {
    // A deadline that overflows `Instant` is treated as "forever".
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let (ms, clamped) = match deadline {
            None => (-1, false),
            Some(d) => timeout_ms(d.saturating_duration_since(Instant::now())),
        };
        match sys(ms) {
            Ok(0) if clamped => continue,
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{
        connect_nonblocking, tcp_pair, triggers_of, wake_from_threads, LONG,
    };
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    #[cfg(unix)]
    use std::os::fd::{AsRawFd, RawFd};
    #[cfg(unix)]
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;
    #[cfg(windows)]
    use windows_names::{AsRawFd, RawFd};

    /// The stream type of [`local_pair`]: a Unix socket pair where there is one.
    #[cfg(unix)]
    type LocalStream = UnixStream;
    /// The stream type of [`local_pair`]: loopback TCP on Windows (no `socketpair`, and
    /// Wine 8 has no AF_UNIX).
    #[cfg(windows)]
    type LocalStream = TcpStream;

    /// A socket value no socket has (`deregister` of it must still be Ok).
    #[cfg(unix)]
    const NO_SOCKET: RawFd = -1;
    /// A socket value no socket has (`INVALID_SOCKET`).
    #[cfg(windows)]
    const NO_SOCKET: RawFd = RawFd::MAX;

    /// The unix names the behaviour tests use, for Windows sockets, so that the tests read
    /// the same on every platform.
    #[cfg(windows)]
    mod windows_names {
        /// A socket handle as the poller takes it.
        pub(super) type RawFd = super::RawSocket;

        /// `as_raw_fd()` for anything with a Windows socket handle.
        pub(super) trait AsRawFd {
            fn as_raw_fd(&self) -> RawFd;
        }

        impl<T: std::os::windows::io::AsRawSocket> AsRawFd for T {
            fn as_raw_fd(&self) -> RawFd {
                self.as_raw_socket()
            }
        }
    }

    const TIMEOUT_EVENT: Event = Event {
        token: Token::WAKER,
        triggers: Triggers::TIMEOUT,
    };
    const NOTIFY_EVENT: Event = Event {
        token: Token::WAKER,
        triggers: Triggers::NOTIFY,
    };

    /// Runs `f` once per available backend. The backend name goes to stderr,
    /// which the test harness shows when the test fails.
    fn for_each_backend(f: impl Fn(Backend)) {
        for &backend in Backend::available() {
            eprintln!("--- backend: {backend}");
            f(backend);
        }
    }

    fn poller(backend: Backend) -> Poller {
        let p = Poller::new(backend).unwrap();
        assert_eq!(p.backend(), backend);
        p
    }

    fn wait(p: &mut Poller, timeout: Option<Duration>) -> Vec<Event> {
        let mut events = Vec::new();
        p.wait(&mut events, timeout).unwrap();
        events
    }

    /// Waits (up to LONG) until `token` is reported with all of `want`.
    fn wait_until(p: &mut Poller, token: Token, want: Triggers) -> Triggers {
        let deadline = Instant::now() + LONG;
        loop {
            let events = wait(p, Some(Duration::from_millis(100)));
            let got = triggers_of(&events, token);
            if got.contains(want) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{token:?} never reported {want:?}; last: {events:?}"
            );
        }
    }

    fn assert_times_out(p: &mut Poller, ms: u64) {
        let events = wait(p, Some(Duration::from_millis(ms)));
        assert_eq!(
            events,
            [TIMEOUT_EVENT],
            "{}: expected a timeout",
            p.backend()
        );
    }

    /// A connected, non-blocking pair of local stream sockets.
    #[cfg(unix)]
    fn local_pair() -> (LocalStream, LocalStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// A connected, non-blocking pair of local stream sockets.
    #[cfg(windows)]
    fn local_pair() -> (LocalStream, LocalStream) {
        tcp_pair()
    }

    // ---- plain unit tests -------------------------------------------------

    #[test]
    fn triggers_set_operations_and_debug() {
        let mut t = Triggers::RECV | Triggers::SEND;
        assert!(t.contains(Triggers::RECV));
        assert!(t.contains(Triggers::RECV | Triggers::SEND));
        assert!(!t.contains(Triggers::RECV | Triggers::ERR));
        assert!(t.intersects(Triggers::SEND | Triggers::ERR));
        assert!(!t.intersects(Triggers::ERR | Triggers::HUP));
        assert!(!t.intersects(Triggers::NONE));
        assert!(t.contains(Triggers::NONE));
        assert_eq!(t.difference(Triggers::SEND), Triggers::RECV);
        assert_eq!(t & Triggers::SEND, Triggers::SEND);
        t.remove(Triggers::RECV);
        assert_eq!(t, Triggers::SEND);
        t.insert(Triggers::HUP);
        t |= Triggers::ERR;
        assert_eq!(t, Triggers::SEND.union(Triggers::ERR).union(Triggers::HUP));
        assert!(Triggers::NONE.is_empty() && !t.is_empty());
        assert_eq!(Triggers::default(), Triggers::NONE);
        assert_eq!(Triggers::NONE.bits(), 0);
        let all = [
            Triggers::NOTIFY,
            Triggers::ACCEPT,
            Triggers::CONNECT,
            Triggers::SEND,
            Triggers::RECV,
            Triggers::ERR,
            Triggers::HUP,
            Triggers::TIMEOUT,
        ];
        let mut seen = 0u8;
        for bit in all {
            assert_eq!(bit.bits().count_ones(), 1, "{bit:?}");
            assert_eq!(seen & bit.bits(), 0, "{bit:?} shares a bit");
            seen |= bit.bits();
        }
        assert_eq!(
            format!("{:?}", Triggers::RECV | Triggers::SEND),
            "Triggers(RECV | SEND)"
        );
        assert_eq!(format!("{:?}", Triggers::NONE), "Triggers(NONE)");
        assert_eq!(format!("{:?}", Triggers::TIMEOUT), "Triggers(TIMEOUT)");
    }

    #[cfg(unix)] // the mapping of the unix backends; windows/selector.rs tests its own
    #[test]
    fn readiness_mapping() {
        let r = |readable, writable, error, hangup| Readiness {
            readable,
            writable,
            error,
            hangup,
        };
        use Triggers as T;
        assert_eq!(triggers_for(T::RECV, r(true, false, false, false)), T::RECV);
        assert_eq!(
            triggers_for(T::ACCEPT, r(true, false, false, false)),
            T::ACCEPT
        );
        assert_eq!(triggers_for(T::SEND, r(false, true, false, false)), T::SEND);
        assert_eq!(
            triggers_for(T::CONNECT, r(false, true, false, false)),
            T::CONNECT
        );
        assert_eq!(
            triggers_for(T::CONNECT, r(false, true, true, true)),
            T::CONNECT | T::ERR | T::HUP
        );
        assert_eq!(
            triggers_for(T::RECV | T::SEND, r(true, true, false, true)),
            T::RECV | T::SEND | T::HUP
        );
        assert_eq!(triggers_for(T::NONE, r(false, false, true, false)), T::ERR);
        assert_eq!(triggers_for(T::SEND, r(true, false, false, false)), T::NONE);
        assert!(wants_readable(T::ACCEPT) && wants_readable(T::RECV));
        assert!(!wants_readable(T::SEND | T::CONNECT));
        assert!(wants_writable(T::SEND) && wants_writable(T::CONNECT));
        assert!(!wants_writable(T::RECV | T::ACCEPT));
    }

    #[cfg(unix)] // the unix helpers; windows/selector.rs tests its own conversion
    #[test]
    fn timeout_conversion_rounds_up() {
        assert_eq!(timeout_ms(Duration::ZERO), (0, false));
        assert_eq!(timeout_ms(Duration::from_micros(100)), (1, false));
        assert_eq!(timeout_ms(Duration::from_millis(1)), (1, false));
        assert_eq!(timeout_ms(Duration::from_nanos(1_000_001)), (2, false));
        assert_eq!(timeout_ms(Duration::from_millis(50)), (50, false));
        assert_eq!(timeout_ms(Duration::MAX), (c_int::MAX, true));
    }

    #[cfg(unix)] // EINTR exists only there
    #[test]
    fn wait_retrying_retries_eintr_and_passes_timeouts() {
        let mut calls = Vec::new();
        let n = wait_retrying(None, |ms| {
            calls.push(ms);
            if calls.len() < 3 {
                Err(io::Error::from_raw_os_error(libc::EINTR))
            } else {
                Ok(7)
            }
        })
        .unwrap();
        assert_eq!((n, calls), (7, vec![-1, -1, -1]));

        let mut calls = Vec::new();
        let n = wait_retrying(Some(Duration::from_micros(100)), |ms| {
            calls.push(ms);
            Ok(0)
        })
        .unwrap();
        assert_eq!((n, calls), (0, vec![1]));

        let err = wait_retrying(Some(Duration::ZERO), |_| {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        })
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[cfg(unix)] // the unix syscall helper
    #[test]
    fn cvt_maps_minus_one_to_last_os_error() {
        assert_eq!(cvt(5i32).unwrap(), 5);
        assert_eq!(cvt(0isize).unwrap(), 0);
        // A failed open leaves errno = ENOENT on this thread; cvt(-1) must pick it up.
        let err = std::fs::File::open("/nonexistent/poller-test").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(cvt(-1i32).unwrap_err().raw_os_error(), Some(libc::ENOENT));
        assert_eq!(cvt(-1isize).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn backend_names_parse_and_display() {
        assert!(!Backend::available().is_empty());
        assert_eq!(Backend::default(), Backend::available()[0]);
        for &b in Backend::available() {
            assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
            assert_eq!(b.to_string().to_uppercase().parse::<Backend>(), Ok(b));
        }
        #[cfg(target_os = "linux")]
        {
            assert_eq!(Backend::available(), [Backend::Epoll, Backend::Poll]);
            assert_eq!(Backend::Epoll.to_string(), "epoll");
            assert_eq!("epoll".parse(), Ok(Backend::Epoll));
        }
        #[cfg(unix)]
        assert_eq!(Backend::Poll.to_string(), "poll");
        #[cfg(windows)]
        {
            assert_eq!(Backend::available(), [Backend::Iocp]);
            assert_eq!(Backend::Iocp.to_string(), "iocp");
            assert_eq!("IOCP".parse(), Ok(Backend::Iocp));
            assert!("epoll".parse::<Backend>().is_err());
        }
        let err = "kqueue".parse::<Backend>().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("kqueue") && msg.contains(Backend::default().name()),
            "{msg}"
        );
        assert!("".parse::<Backend>().is_err());
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Waker>();
        send_sync::<Arc<Waker>>();
        send::<Poller>();
    }

    // ---- behaviour tests, run for every backend ----------------------------

    #[test]
    fn idle_wait_times_out() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let mut events = vec![NOTIFY_EVENT; 3]; // must be cleared by wait
            let start = Instant::now();
            p.wait(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            let elapsed = start.elapsed();
            assert_eq!(events, [TIMEOUT_EVENT]);
            assert!(elapsed >= Duration::from_millis(40), "{b}: {elapsed:?}");
        });
    }

    #[test]
    fn sub_millisecond_timeout_blocks() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let start = Instant::now();
            let events = wait(&mut p, Some(Duration::from_micros(100)));
            let elapsed = start.elapsed();
            assert_eq!(events, [TIMEOUT_EVENT]);
            // Rounded up to 1 ms instead of a busy 0.
            assert!(elapsed >= Duration::from_micros(900), "{b}: {elapsed:?}");
            // Zero does not block.
            assert_eq!(wait(&mut p, Some(Duration::ZERO)), [TIMEOUT_EVENT]);
        });
    }

    fn recv_case(b: Backend, local: &mut (impl Read + AsRawFd), peer: &mut impl Write) {
        let mut p = poller(b);
        let t = Token(1);
        p.register(local.as_raw_fd(), t, Triggers::RECV).unwrap();
        assert_times_out(&mut p, 20);
        peer.write_all(b"hello").unwrap();
        assert_eq!(wait_until(&mut p, t, Triggers::RECV), Triggers::RECV);
        // Level-triggered: reported again while unread.
        let events = wait(&mut p, Some(Duration::ZERO));
        assert_eq!(
            events,
            [Event {
                token: t,
                triggers: Triggers::RECV
            }]
        );
        let mut buf = [0u8; 16];
        assert_eq!(local.read(&mut buf).unwrap(), 5);
        assert_times_out(&mut p, 20);
    }

    #[test]
    fn recv_reported_after_peer_writes() {
        for_each_backend(|b| {
            let (mut local, mut peer) = local_pair();
            recv_case(b, &mut local, &mut peer);
            let (mut local, mut peer) = tcp_pair();
            recv_case(b, &mut local, &mut peer);
        });
    }

    #[test]
    fn send_reported_immediately_when_connected() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let (client, _server) = tcp_pair();
            let (local, _peer) = local_pair();
            p.register(client.as_raw_fd(), Token(1), Triggers::SEND)
                .unwrap();
            p.register(local.as_raw_fd(), Token(2), Triggers::SEND)
                .unwrap();
            let events = wait(&mut p, Some(Duration::ZERO));
            assert_eq!(events.len(), 2, "{b}: {events:?}");
            assert_eq!(triggers_of(&events, Token(1)), Triggers::SEND);
            assert_eq!(triggers_of(&events, Token(2)), Triggers::SEND);
        });
    }

    #[test]
    fn deregister_stops_events_and_is_idempotent() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let (local, mut peer) = local_pair();
            let fd = local.as_raw_fd();
            peer.write_all(b"x").unwrap();
            p.register(fd, Token(1), Triggers::RECV).unwrap();
            assert_eq!(wait_until(&mut p, Token(1), Triggers::RECV), Triggers::RECV);
            p.deregister(fd, Token(1)).unwrap();
            assert_times_out(&mut p, 20);
            p.deregister(fd, Token(1)).unwrap();
            p.deregister(fd, Token(42)).unwrap();
            p.deregister(NO_SOCKET, Token(43)).unwrap();
            // The socket can be registered again, under a new token.
            p.register(fd, Token(2), Triggers::RECV).unwrap();
            let events = wait(&mut p, Some(LONG));
            assert_eq!(
                events,
                [Event {
                    token: Token(2),
                    triggers: Triggers::RECV
                }]
            );
        });
    }

    #[test]
    fn reregister_changes_reported_triggers() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let (local, mut peer) = local_pair();
            let fd = local.as_raw_fd();
            peer.write_all(b"x").unwrap(); // now readable and writable
            let t = Token(7);
            p.register(fd, t, Triggers::RECV).unwrap();
            assert_eq!(triggers_of(&wait(&mut p, Some(LONG)), t), Triggers::RECV);
            p.reregister(fd, t, Triggers::SEND).unwrap();
            assert_eq!(triggers_of(&wait(&mut p, Some(LONG)), t), Triggers::SEND);
            p.reregister(fd, t, Triggers::RECV | Triggers::SEND)
                .unwrap();
            assert_eq!(
                triggers_of(&wait(&mut p, Some(LONG)), t),
                Triggers::RECV | Triggers::SEND
            );
        });
    }

    #[test]
    fn events_reach_only_their_own_token() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let (a, mut a_peer) = local_pair();
            let (c, mut c_peer) = local_pair();
            let (quiet, _quiet_peer) = local_pair();
            a_peer.write_all(b"a").unwrap();
            c_peer.write_all(b"c").unwrap();
            p.register(a.as_raw_fd(), Token(1), Triggers::RECV).unwrap();
            p.register(c.as_raw_fd(), Token(2), Triggers::RECV | Triggers::SEND)
                .unwrap();
            p.register(quiet.as_raw_fd(), Token(3), Triggers::RECV)
                .unwrap();
            let events = wait(&mut p, Some(LONG));
            assert_eq!(events.len(), 2, "{b}: {events:?}");
            assert_eq!(triggers_of(&events, Token(1)), Triggers::RECV);
            assert_eq!(
                triggers_of(&events, Token(2)),
                Triggers::RECV | Triggers::SEND
            );
            assert_eq!(triggers_of(&events, Token(3)), Triggers::NONE);
        });
    }

    #[test]
    fn accept_reported_on_listener() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            listener.set_nonblocking(true).unwrap();
            let t = Token(5);
            p.register(listener.as_raw_fd(), t, Triggers::ACCEPT)
                .unwrap();
            assert_times_out(&mut p, 20);
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            assert_eq!(wait_until(&mut p, t, Triggers::ACCEPT), Triggers::ACCEPT);
            let (_server, _) = listener.accept().unwrap();
            assert_times_out(&mut p, 20);
        });
    }

    #[test]
    fn connect_reported_when_nonblocking_connect_completes() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let sock = connect_nonblocking(listener.local_addr().unwrap()).unwrap();
            let t = Token(9);
            p.register(sock.as_raw_fd(), t, Triggers::CONNECT).unwrap();
            assert_eq!(wait_until(&mut p, t, Triggers::CONNECT), Triggers::CONNECT);
            p.deregister(sock.as_raw_fd(), t).unwrap();
            let stream = TcpStream::from(sock);
            assert_eq!(stream.peer_addr().unwrap(), listener.local_addr().unwrap());
            assert!(stream.take_error().unwrap().is_none());
        });
    }

    #[test]
    fn connect_to_closed_port_reports_error() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let addr = {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                listener.local_addr().unwrap()
            };
            let sock = connect_nonblocking(addr).unwrap();
            let t = Token(10);
            p.register(sock.as_raw_fd(), t, Triggers::CONNECT).unwrap();
            let deadline = Instant::now() + LONG;
            let got = loop {
                let got = triggers_of(&wait(&mut p, Some(Duration::from_millis(100))), t);
                if !got.is_empty() || Instant::now() > deadline {
                    break got;
                }
            };
            assert!(
                got.intersects(Triggers::ERR | Triggers::HUP),
                "{b}: {got:?}"
            );
        });
    }

    fn peer_close_case(b: Backend, local: RawFd, close_peer: impl FnOnce()) {
        let mut p = poller(b);
        let t = Token(3);
        p.register(local, t, Triggers::RECV).unwrap();
        assert_times_out(&mut p, 20);
        close_peer();
        // Linux has POLLRDHUP, Windows AFD_POLL_DISCONNECT; other poll(2) has
        // neither: EOF shows as RECV.
        let want = if cfg!(any(target_os = "linux", windows)) {
            Triggers::RECV | Triggers::HUP
        } else {
            Triggers::RECV
        };
        let got = wait_until(&mut p, t, want);
        assert!(!got.contains(Triggers::SEND), "{b}: {got:?}");
    }

    #[test]
    fn peer_close_reports_hup_and_recv() {
        for_each_backend(|b| {
            let (local, peer) = local_pair();
            peer_close_case(b, local.as_raw_fd(), || drop(peer));
            let (local, peer) = tcp_pair();
            peer_close_case(b, local.as_raw_fd(), || drop(peer));
        });
    }

    #[test]
    fn wake_from_another_thread_interrupts_wait() {
        for_each_backend(|b| {
            let mut p = poller(b);
            // Watchdog: if wake() does not interrupt wait(None), make the socket
            // readable so the test fails instead of hanging.
            let (local, mut peer) = local_pair();
            p.register(local.as_raw_fd(), Token(1), Triggers::RECV)
                .unwrap();
            let waker = p.waker();
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let helper = thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                waker.wake().unwrap();
                if done_rx.recv_timeout(LONG).is_err() {
                    let _ = peer.write_all(b"watchdog");
                }
                peer // kept open: closing it would report HUP
            });
            let start = Instant::now();
            let events = wait(&mut p, None);
            let elapsed = start.elapsed();
            let _ = done_tx.send(());
            let _peer = helper.join().unwrap();
            assert_eq!(events, [NOTIFY_EVENT], "{b}");
            assert!(elapsed >= Duration::from_millis(40), "{b}: {elapsed:?}");
            assert_times_out(&mut p, 10);
        });
    }

    #[test]
    fn many_wakes_coalesce_into_one_notify() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let waker = p.waker();
            for _ in 0..100 {
                waker.wake().unwrap();
            }
            wake_from_threads(&waker, 4, 100);
            assert_eq!(wait(&mut p, Some(LONG)), [NOTIFY_EVENT], "{b}");
            assert_times_out(&mut p, 10);
            // A wake after the drain is seen by the next wait.
            waker.wake().unwrap();
            assert_eq!(wait(&mut p, Some(LONG)), [NOTIFY_EVENT], "{b}");
            // Waking after the poller is gone is harmless.
            drop(p);
            waker.wake().unwrap();
        });
    }

    #[cfg(unix)] // the pipe waker of non-Linux unix; Windows posts to its port
    #[test]
    fn pipe_waker_saturates_and_drains() {
        // The non-Linux waker, exercised on every backend here.
        for_each_backend(|b| {
            let waker = Arc::new(Waker::pipe().unwrap());
            let flavor = match b {
                #[cfg(target_os = "linux")]
                Backend::Epoll => Flavor::Epoll(epoll::Epoll::new(&waker).unwrap()),
                Backend::Poll => Flavor::Poll(poll::Poll::new()),
            };
            let mut p = Poller::from_parts(flavor, waker);
            assert_times_out(&mut p, 10);
            // More than a default 64 KiB pipe holds: EAGAIN must count as success.
            for _ in 0..20_000 {
                p.waker().wake().unwrap();
            }
            assert_eq!(wait(&mut p, Some(LONG)), [NOTIFY_EVENT], "{b}");
            assert_times_out(&mut p, 10);
        });
    }

    #[test]
    fn interest_none_reports_only_errors_and_hangups() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let (local, mut peer) = local_pair();
            let fd = local.as_raw_fd();
            peer.write_all(b"x").unwrap(); // readable and writable
            p.register(fd, Token(4), Triggers::NONE).unwrap();
            assert_times_out(&mut p, 20);
            p.reregister(fd, Token(4), Triggers::RECV).unwrap();
            assert_eq!(
                triggers_of(&wait(&mut p, Some(LONG)), Token(4)),
                Triggers::RECV
            );
            p.reregister(fd, Token(4), Triggers::NONE).unwrap();
            assert_times_out(&mut p, 20);
            // A full hang-up is reported without interest. Closing one end of a unix pair
            // is one; the Windows stand-in is TCP, where a graceful close is only a
            // half-close (reported to readers only), so the peer resets instead.
            #[cfg(windows)]
            socket2::SockRef::from(&peer)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(peer);
            if cfg!(target_os = "linux") {
                assert_eq!(wait_until(&mut p, Token(4), Triggers::HUP), Triggers::HUP);
            }
            if cfg!(windows) {
                assert_eq!(
                    wait_until(&mut p, Token(4), Triggers::HUP),
                    Triggers::ERR | Triggers::HUP
                );
            }
        });
    }

    #[test]
    fn half_close_is_reported_to_readers_only() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let (local, peer) = local_pair();
            let fd = local.as_raw_fd();
            peer.shutdown(std::net::Shutdown::Write).unwrap();
            // A writer is not told about the peer's half-close (it could spin on it).
            p.register(fd, Token(6), Triggers::NONE).unwrap();
            assert_times_out(&mut p, 20);
            // A reader is.
            p.reregister(fd, Token(6), Triggers::RECV).unwrap();
            let t = triggers_of(&wait(&mut p, Some(LONG)), Token(6));
            assert!(t.contains(Triggers::RECV), "{b}: {t:?}");
            if cfg!(target_os = "linux") {
                assert!(t.contains(Triggers::HUP), "{b}: {t:?}");
            }
        });
    }

    #[test]
    fn unchanged_reregister_is_free_and_keeps_reporting() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let (local, mut peer) = local_pair();
            let fd = local.as_raw_fd();
            peer.write_all(b"x").unwrap();
            p.register(fd, Token(1), Triggers::RECV).unwrap();
            for _ in 0..3 {
                p.reregister(fd, Token(1), Triggers::RECV).unwrap();
                let events = wait(&mut p, Some(LONG));
                assert_eq!(
                    events,
                    [Event {
                        token: Token(1),
                        triggers: Triggers::RECV
                    }]
                );
            }
            // No syscall for an unchanged interest: this succeeds even though the
            // socket has been closed (epoll_ctl(MOD) would fail with EBADF/ENOENT).
            let (gone, _gone_peer) = local_pair();
            let gone_fd = gone.as_raw_fd();
            p.register(gone_fd, Token(2), Triggers::SEND).unwrap();
            drop(gone);
            p.reregister(gone_fd, Token(2), Triggers::SEND).unwrap();
            // Deregistering a socket closed while registered is still Ok.
            p.deregister(gone_fd, Token(2)).unwrap();
        });
    }

    #[test]
    fn invalid_registrations_are_rejected() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let (local, _peer) = local_pair();
            let (other, _other_peer) = local_pair();
            let fd = local.as_raw_fd();
            let kind = |r: io::Result<()>| r.unwrap_err().kind();
            use io::ErrorKind::{AlreadyExists, InvalidInput, NotFound};
            assert_eq!(
                kind(p.register(fd, Token::WAKER, Triggers::RECV)),
                InvalidInput
            );
            assert_eq!(
                kind(p.register(fd, Token(u64::MAX), Triggers::RECV)),
                InvalidInput
            );
            assert_eq!(
                kind(p.register(fd, Token(1), Triggers::NOTIFY)),
                InvalidInput
            );
            assert_eq!(kind(p.reregister(fd, Token(1), Triggers::RECV)), NotFound);
            p.register(fd, Token(1), Triggers::RECV).unwrap();
            assert_eq!(
                kind(p.register(other.as_raw_fd(), Token(1), Triggers::RECV)),
                AlreadyExists
            );
            assert_eq!(
                kind(p.reregister(other.as_raw_fd(), Token(1), Triggers::SEND)),
                InvalidInput
            );
            assert_eq!(
                kind(p.deregister(other.as_raw_fd(), Token(1))),
                InvalidInput
            );
            assert_eq!(
                kind(p.reregister(fd, Token(1), Triggers::HUP)),
                InvalidInput
            );
            // The original registration is intact.
            assert_times_out(&mut p, 10);
            p.reregister(fd, Token(1), Triggers::SEND).unwrap();
            assert_eq!(
                triggers_of(&wait(&mut p, Some(LONG)), Token(1)),
                Triggers::SEND
            );
        });
    }

    #[test]
    fn two_hundred_readable_sockets_all_reported() {
        for_each_backend(|b| {
            let mut p = poller(b);
            let pairs: Vec<_> = (0..200).map(|_| local_pair()).collect();
            for (i, (local, peer)) in pairs.iter().enumerate() {
                (&*peer).write_all(b"x").unwrap();
                p.register(local.as_raw_fd(), Token(i as u64 + 1), Triggers::RECV)
                    .unwrap();
            }
            let expect_all = |p: &mut Poller, tokens: std::ops::RangeInclusive<u64>| {
                let events = wait(p, Some(LONG));
                let mut got: Vec<u64> = events
                    .iter()
                    .map(|e| {
                        assert_eq!(e.triggers, Triggers::RECV, "{b}: {e:?}");
                        e.token.0
                    })
                    .collect();
                got.sort_unstable();
                assert_eq!(got, tokens.collect::<Vec<_>>(), "{b}");
            };
            expect_all(&mut p, 1..=200);
            expect_all(&mut p, 1..=200); // level-triggered: again
            for (i, (local, _)) in pairs.iter().enumerate().take(100) {
                p.deregister(local.as_raw_fd(), Token(i as u64 + 1))
                    .unwrap();
            }
            expect_all(&mut p, 101..=200);
        });
    }
}
