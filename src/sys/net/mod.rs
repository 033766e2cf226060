//! Sockets for the reactor: listening sockets ([`Listener`]) and data sockets
//! ([`Stream`]), TCP and Unix domain, all non-blocking and close-on-exec.
//!
//! The rest of the engine sees only these types, [`RawSocket`] (to register
//! with the poller) and `(Status, io::Error)` pairs for failures (the
//! [`Status`] for the user, the `io::Error` for logs).
//!
//! Every socket, of either family on every platform, is a [`socket2::Socket`]
//! next to a small kind: TCP, or Unix domain with what the family needs
//! beyond the handle (a listener's socket file, an accepted stream's name
//! for logs). So each method is written once; what differs between
//! platforms is a function of the same name in `unix.rs` and `windows.rs`
//! (module `platform`), and Unix domain path rules live in `uds.rs`.
//!
//! Unix domain sockets exist on Windows since Windows 10 1803, for
//! filesystem paths only. Where the system has no AF_UNIX (older Windows,
//! Wine 8), creating the socket fails with `WSAEAFNOSUPPORT`, reported as
//! `InvalidAddress` ("AF_UNIX not supported on this system").
//!
//! Address resolution ([`Listener::bind`], [`Stream::connect`] with a DNS
//! name) uses the system resolver and *blocks* until it answers.

use std::io::{self, IoSlice, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket};

use crate::proto::address::Address;
use crate::proto::status::Status;

/// The `listen(2)` backlog of every [`Listener`] (the kernel caps it at
/// `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 1024;

/// A TCP host name must be shorter than this many bytes.
pub const MAX_HOST_LEN: usize = 256;

/// A failure: the status to report and the OS error behind it (for logs).
/// Pure validation failures carry an [`io::ErrorKind::InvalidInput`] error.
pub type NetError = (Status, io::Error);

/// Returns `true` when `e` means "try again when the socket is ready"
/// (`EAGAIN`/`EWOULDBLOCK`).
///
/// `EINTR` is not included: [`Stream::read`], [`Stream::write`],
/// [`Stream::write_vectored`] and [`Listener::accept`] retry it themselves,
/// so callers never see it.
pub fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Runs `op` again for as long as it fails with `EINTR`.
fn retry_interrupted<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Makes an [`io::ErrorKind::InvalidInput`] error for validation failures.
fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Makes an `InvalidAddress` failure from a validation message.
pub(super) fn invalid_address(msg: String) -> NetError {
    (Status::InvalidAddress, invalid_input(msg))
}

/// Resolves a TCP host and port to the first address the resolver returns.
///
/// `""` means `0.0.0.0` for a listener and is invalid for a connect. An IPv6
/// literal may be written with or without brackets.
fn resolve_tcp(host: &str, port: u16, listener: bool) -> Result<SocketAddr, NetError> {
    if host.len() >= MAX_HOST_LEN {
        return Err(invalid_address(format!(
            "TCP host is {} bytes long, the limit is {}",
            host.len(),
            MAX_HOST_LEN - 1
        )));
    }
    if host.is_empty() {
        return if listener {
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
        } else {
            Err(invalid_address(
                "cannot connect to an empty TCP host".into(),
            ))
        };
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = (bare, port)
        .to_socket_addrs()
        .map_err(|e| (Status::InvalidAddress, e))?;
    addrs
        .next()
        .ok_or_else(|| invalid_address(format!("TCP host {host:?} resolves to no address")))
}

/// Formats a TCP address (`getsockname`/`getpeername`) for logs.
fn tcp_addr_string(addr: io::Result<SockAddr>) -> String {
    match addr.map(|a| a.as_socket()) {
        Ok(Some(a)) => a.to_string(),
        Ok(None) => "<unknown: not an IP address>".to_string(),
        Err(e) => format!("<unknown: {e}>"),
    }
}

/// Status for a failed `bind(2)`: an address that is not local is an invalid
/// address, anything else a listen failure.
fn bind_failure(e: io::Error) -> NetError {
    if e.kind() == io::ErrorKind::AddrNotAvailable {
        (Status::InvalidAddress, e)
    } else {
        (Status::ListenFailed, e)
    }
}

mod uds;
pub(crate) use uds::temp_uds_path;
pub use uds::UDS_PATH_MAX;
use uds::{remove_stale_socket, SocketFile, UdsTarget};

// Platform details: socket creation, accept, options, error codes, handles,
// Unix domain socket names.
#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as platform;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as platform;

pub use platform::RawSocket;
use platform::UdsPeer;

/// Creates a non-blocking, close-on-exec stream socket for `domain` (TCP for
/// the IP families). Fails with `InvalidAddress` for a Unix domain socket on
/// a system without AF_UNIX, else with `other`.
fn stream_socket(domain: Domain, other: Status) -> Result<Socket, NetError> {
    let uds = domain == Domain::UNIX;
    let protocol = (!uds).then_some(socket2::Protocol::TCP);
    platform::stream_socket(domain, protocol).map_err(|e| {
        if uds && platform::family_unsupported(&e) {
            let msg = format!("AF_UNIX not supported on this system: {e}");
            return (Status::InvalidAddress, io::Error::new(e.kind(), msg));
        }
        (other, e)
    })
}

/// A listening socket, non-blocking and close-on-exec.
///
/// Dropping a listener that bound a filesystem Unix domain socket path
/// removes that path, unless it has been replaced by another socket since
/// (as a second listener on the same path does).
#[derive(Debug)]
pub struct Listener {
    // Dropped before `socket`: an open socket keeps its file's inode, so the
    // file-id check (device and inode on unix) cannot take another socket
    // file that got our inode number for ours.
    kind: ListenerKind,
    socket: Socket,
}

/// The family of a [`Listener`], with what it needs beyond the socket.
#[derive(Debug)]
enum ListenerKind {
    Tcp,
    /// A Unix domain socket, with the socket file that dropping the listener
    /// removes (`None` for an abstract name).
    Uds(Option<SocketFile>),
}

impl Listener {
    /// Creates a socket, binds it to `addr` and listens (backlog
    /// [`LISTEN_BACKLOG`]); the socket is non-blocking and close-on-exec.
    ///
    /// TCP: the host is an IP literal, a DNS name (the first address the
    /// system resolver returns is used; this blocks) or `""` for `0.0.0.0`.
    /// On Unix `SO_REUSEADDR` is set, so a restarted server binds while its
    /// old connections are in TIME_WAIT; a port another socket listens on
    /// fails with `ListenFailed` (`EADDRINUSE`) on every platform (Zig tofu
    /// set `SO_REUSEPORT`: the second listener succeeded and took a share of
    /// the connections).
    ///
    /// Unix domain socket: an empty path binds a fresh
    /// [`temp_uds_path`](crate::testing::temp_uds_path) (see
    /// [`Listener::local_addr_string`]). A filesystem path that holds a
    /// socket file nobody listens on is unlinked first (a stale file of a
    /// process that died); a live listener's path fails with `ListenFailed`
    /// (`EADDRINUSE`) as a TCP port in use does; a path that holds anything
    /// else is left alone and the bind fails. `"@name"` (Linux) binds the
    /// abstract name `name`; a second listener on the same abstract name
    /// fails with `ListenFailed`.
    ///
    /// # Errors
    /// - `InvalidAddress`: a host of [`MAX_HOST_LEN`] bytes or more, an
    ///   unresolvable host, a path of
    ///   [`UDS_PATH_MAX`] bytes or more (an
    ///   abstract name: more than `UDS_PATH_MAX - 1`), an empty abstract
    ///   name, a NUL byte in the path, or `EADDRNOTAVAIL` from `bind(2)` (an
    ///   IP that is not local).
    /// - `SetsockoptFailed`: setting `SO_REUSEADDR` failed.
    /// - `ListenFailed`: creating the socket, any other `bind(2)` failure
    ///   (`EADDRINUSE`, `EACCES`, a missing directory, ...) or `listen(2)`.
    pub fn bind(addr: &Address) -> Result<Listener, NetError> {
        match addr {
            // TLS runs over TCP: the socket is the same (the engine adds the session).
            Address::Tcp { host, port } | Address::Tls { host, port } => {
                Self::bind_tcp(host, *port)
            }
            Address::Uds { path } => Self::bind_uds(path),
        }
    }

    /// [`Listener::bind`] for TCP.
    fn bind_tcp(host: &str, port: u16) -> Result<Listener, NetError> {
        let addr = resolve_tcp(host, port, true)?;
        let socket = stream_socket(Domain::for_address(addr), Status::ListenFailed)?;
        platform::set_reuse(&socket).map_err(|e| (Status::SetsockoptFailed, e))?;
        socket.bind(&addr.into()).map_err(bind_failure)?;
        socket
            .listen(LISTEN_BACKLOG)
            .map_err(|e| (Status::ListenFailed, e))?;
        Ok(Listener {
            socket,
            kind: ListenerKind::Tcp,
        })
    }

    /// [`Listener::bind`] for Unix domain sockets.
    fn bind_uds(path: &str) -> Result<Listener, NetError> {
        let target = if path.is_empty() {
            UdsTarget::Path(temp_uds_path())
        } else {
            UdsTarget::parse(path)?
        };
        let sock_addr = target.sock_addr()?;
        let fs_path = target.into_path();
        if let Some(p) = &fs_path {
            remove_stale_socket(p);
        }
        let socket = stream_socket(Domain::UNIX, Status::ListenFailed)?;
        socket.bind(&sock_addr).map_err(bind_failure)?;
        // From here on the socket file exists and is ours: dropping `file`
        // (on a failed listen, too) removes it.
        let file = fs_path.map(SocketFile::bound);
        socket
            .listen(LISTEN_BACKLOG)
            .map_err(|e| (Status::ListenFailed, e))?;
        Ok(Listener {
            socket,
            kind: ListenerKind::Uds(file),
        })
    }

    /// Accepts one pending connection.
    ///
    /// Returns `Ok(None)` when none is pending (`EAGAIN`). The new stream is
    /// non-blocking and close-on-exec, has `SO_LINGER {on, 0}` and, for TCP,
    /// `TCP_NODELAY`. `EINTR` and errors that concern only the one pending
    /// connection (`ECONNABORTED`, `EPROTO`, ...) are retried.
    ///
    /// # Errors
    /// The `accept(2)` error (e.g. `EMFILE`/`ENFILE`: the listener stays
    /// readable, so back off before polling it again), or the error of
    /// setting an option on the accepted socket (which is then closed). The
    /// listener stays usable either way.
    pub fn accept(&self) -> io::Result<Option<Stream>> {
        let socket = loop {
            match platform::accept(&self.socket) {
                Ok(socket) => break socket,
                Err(e) if is_would_block(&e) => return Ok(None),
                Err(e) if platform::accept_should_retry(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        let kind = match self.kind {
            ListenerKind::Tcp => StreamKind::Tcp,
            ListenerKind::Uds(_) => StreamKind::Uds(UdsPeer::accepted(|| self.local_addr_string())),
        };
        Stream::new(socket, kind).map(Some)
    }

    /// The OS handle, to register with the poller.
    pub fn raw(&self) -> RawSocket {
        platform::raw(&self.socket)
    }

    /// Where this listener is bound, in tofu's address syntax: `requested` with the port the
    /// system chose for TCP port 0, and the path [`Listener::bind`] chose for an empty UDS
    /// path. The host and a given path stay as requested.
    pub fn local_address(&self, requested: &Address) -> Address {
        match (requested, &self.kind) {
            (Address::Tcp { .. } | Address::Tls { .. }, ListenerKind::Tcp) => {
                let mut a = requested.clone();
                let bound = self.socket.local_addr().ok().and_then(|a| a.as_socket());
                if let (Address::Tcp { port, .. } | Address::Tls { port, .. }, Some(b)) =
                    (&mut a, bound)
                {
                    *port = b.port();
                }
                a
            }
            (Address::Uds { path }, ListenerKind::Uds(Some(file))) if path.is_empty() => {
                Address::Uds {
                    path: file.path().to_string_lossy().into_owned(),
                }
            }
            _ => requested.clone(),
        }
    }

    /// The bound address for logs: `"127.0.0.1:7099"`, a socket path, or
    /// `"@name"` for an abstract name. For TCP port 0 and for an empty UDS
    /// path this shows what the kernel or [`Listener::bind`] chose.
    pub fn local_addr_string(&self) -> String {
        match &self.kind {
            ListenerKind::Tcp => tcp_addr_string(self.socket.local_addr()),
            ListenerKind::Uds(file) => {
                platform::uds_local_string(&self.socket, file.as_ref().map(SocketFile::path))
            }
        }
    }
}

impl From<SocketAddr> for Address {
    /// A TCP address for a socket address (an IPv6 host without brackets, as tofu writes it:
    /// `tcp|::1|7099`).
    fn from(a: SocketAddr) -> Address {
        Address::tcp(a.ip().to_string(), a.port())
    }
}

/// A connected (or connecting) data socket, non-blocking and close-on-exec,
/// with `SO_LINGER {on, 0}`: dropping it resets the connection and discards
/// unsent data, so flush before dropping when the data matters.
#[derive(Debug)]
pub struct Stream {
    socket: Socket,
    kind: StreamKind,
}

/// The family of a [`Stream`], with what it needs beyond the socket.
#[derive(Debug)]
enum StreamKind {
    /// TCP, with `TCP_NODELAY`.
    Tcp,
    /// A Unix domain socket, with what names its peer in logs.
    Uds(UdsPeer),
}

impl Stream {
    /// Starts a non-blocking connect to `addr`.
    ///
    /// The socket gets `SO_LINGER {on, 0}` and, for TCP, `TCP_NODELAY`. TCP
    /// hosts are resolved as in [`Listener::bind`] (blocking), except that
    /// `""` is invalid. Returns the stream and whether it is connected
    /// already; if not (`EINPROGRESS`), wait until it is writable and call
    /// [`Stream::finish_connect`].
    ///
    /// # Errors
    /// - `InvalidAddress`: a bad, too long or unresolvable address, or
    ///   creating the socket failed for another reason than exhausted
    ///   resources.
    /// - `ConnectFailed` also when no socket could be created for lack of
    ///   descriptors or buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM).
    /// - `SetsockoptFailed`: setting `SO_LINGER`/`TCP_NODELAY` failed.
    /// - `UdsPathNotFound`: the Unix domain socket path does not exist
    ///   (`ENOENT`).
    /// - `ConnectFailed`: any other `connect(2)` failure: `ECONNREFUSED`
    ///   (no listener), `EACCES`, and `EAGAIN`, which for a Unix domain
    ///   socket means the listener's backlog is full (nothing was started;
    ///   the error's kind is [`io::ErrorKind::WouldBlock`], so a caller may
    ///   retry later) and for TCP that no local port is free.
    pub fn connect(addr: &Address) -> Result<(Stream, bool), NetError> {
        let (target, kind) = match addr {
            Address::Tcp { host, port } | Address::Tls { host, port } => {
                (resolve_tcp(host, *port, false)?.into(), StreamKind::Tcp)
            }
            Address::Uds { path } => (
                UdsTarget::parse(path)?.sock_addr()?,
                StreamKind::Uds(UdsPeer::connected(path)),
            ),
        };
        // Out of descriptors or buffers is a failed connect (the address is
        // fine; retry later); anything else means the address cannot be used.
        let socket =
            stream_socket(target.domain(), Status::InvalidAddress).map_err(|(status, e)| {
                if platform::out_of_resources(&e) {
                    (Status::ConnectFailed, e)
                } else {
                    (status, e)
                }
            })?;
        let stream = Stream::new(socket, kind).map_err(|e| (Status::SetsockoptFailed, e))?;
        let connected = match stream.socket.connect(&target) {
            Ok(()) => true,
            Err(e) if platform::connect_in_progress(&e) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound && stream.is_uds() => {
                return Err((Status::UdsPathNotFound, e));
            }
            Err(e) => return Err((Status::ConnectFailed, e)),
        };
        Ok((stream, connected))
    }

    /// Wraps a new socket, setting what every stream has: `SO_LINGER {on,
    /// 0}` and, for TCP, `TCP_NODELAY`.
    fn new(socket: Socket, kind: StreamKind) -> io::Result<Stream> {
        socket.set_linger(Some(Duration::ZERO))?;
        if let StreamKind::Tcp = kind {
            socket.set_tcp_nodelay(true)?;
        }
        Ok(Stream { socket, kind })
    }

    fn is_uds(&self) -> bool {
        matches!(self.kind, StreamKind::Uds(_))
    }

    /// Completes a connect that [`Stream::connect`] left in progress, once
    /// the socket has become writable (or errored).
    ///
    /// Returns `Ok(true)` when connected, `Ok(false)` when still in progress
    /// (a spurious wake-up: wait again), `Err` with the connect error
    /// (`SO_ERROR`, e.g. `ECONNREFUSED`) when it failed; then drop the
    /// stream. The error is consumed by the first call that returns it.
    /// Calling this on a connected stream returns `Ok(true)`.
    pub fn finish_connect(&self) -> io::Result<bool> {
        if let Some(e) = self.socket.take_error()? {
            return Err(e);
        }
        match self.socket.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if platform::not_yet_connected(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads into `buf`; `Ok(0)` is end of stream. `EINTR` is retried;
    /// `WouldBlock` (see [`is_would_block`]) means no data yet.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry_interrupted(|| (&self.socket).read(buf))
    }

    /// Writes from `buf`, returning how much was written (possibly less than
    /// `buf.len()`). `EINTR` is retried; `WouldBlock` means the send buffer
    /// is full. Never raises `SIGPIPE`: a vanished peer gives `EPIPE`
    /// ([`io::ErrorKind::BrokenPipe`]) or `ECONNRESET`.
    #[cfg(test)]
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        retry_interrupted(|| self.socket.send_with_flags(buf, platform::SEND_FLAGS))
    }

    /// Like [`Stream::write`], gathering from several buffers (`sendmsg(2)`).
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        retry_interrupted(|| {
            self.socket
                .send_vectored_with_flags(bufs, platform::SEND_FLAGS)
        })
    }

    /// The OS handle, to register with the poller.
    pub fn raw(&self) -> RawSocket {
        platform::raw(&self.socket)
    }

    /// Ends the sending side (`shutdown(SHUT_WR)`): the peer reads what was written, then
    /// end of stream. The socket stays open for reading; dropping it still resets.
    pub fn close_write(&self) -> io::Result<()> {
        self.socket.shutdown(std::net::Shutdown::Write)
    }

    /// The peer for logs: `"127.0.0.1:7099"`, a socket path, `"@name"`, or
    /// for an accepted Unix domain socket (whose peer is unnamed)
    /// `"<unnamed> via <listener path>"`.
    pub fn peer_string(&self) -> String {
        match &self.kind {
            StreamKind::Tcp => tcp_addr_string(self.socket.peer_addr()),
            StreamKind::Uds(peer) => peer.describe(&self.socket),
        }
    }

    /// The socket, for tests to read its options.
    #[cfg(test)]
    fn sock_ref(&self) -> &Socket {
        &self.socket
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::free_tcp_port;
    use std::path::Path;
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.to_string(),
            port,
        }
    }

    fn uds(path: impl Into<String>) -> Address {
        Address::Uds { path: path.into() }
    }

    fn path_string(p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }

    fn bind_err(addr: &Address) -> NetError {
        match Listener::bind(addr) {
            Ok(l) => panic!("bind {addr:?} succeeded: {}", l.local_addr_string()),
            Err(e) => e,
        }
    }

    fn connect_err(addr: &Address) -> NetError {
        match Stream::connect(addr) {
            Ok((s, _)) => panic!("connect {addr:?} succeeded: {s:?}"),
            Err(e) => e,
        }
    }

    /// Waits (bounded) for a pending connect to finish.
    fn wait_connected(stream: &Stream, connected: bool) -> io::Result<()> {
        if connected {
            return Ok(());
        }
        let start = Instant::now();
        while !stream.finish_connect()? {
            assert!(start.elapsed() < DEADLINE, "connect did not finish");
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Waits (bounded) for a connection to accept.
    fn accept_one(listener: &Listener) -> Stream {
        let start = Instant::now();
        loop {
            if let Some(s) = listener.accept().unwrap() {
                return s;
            }
            assert!(start.elapsed() < DEADLINE, "nothing to accept");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Connects to `listener` and accepts, returning (client, server).
    fn pair(listener: &Listener, addr: &Address) -> (Stream, Stream) {
        let (client, connected) = Stream::connect(addr).unwrap();
        let server = accept_one(listener);
        wait_connected(&client, connected).unwrap();
        (client, server)
    }

    fn write_all(stream: &Stream, mut data: &[u8]) {
        let start = Instant::now();
        while !data.is_empty() {
            match stream.write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if is_would_block(&e) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("write: {e}"),
            }
            assert!(start.elapsed() < DEADLINE, "write stalled");
        }
    }

    fn read_exact(stream: &Stream, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        let mut got = 0;
        let start = Instant::now();
        while got < len {
            match stream.read(&mut out[got..]) {
                Ok(0) => panic!("unexpected end of stream after {got} bytes"),
                Ok(n) => got += n,
                Err(e) if is_would_block(&e) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("read: {e}"),
            }
            assert!(start.elapsed() < DEADLINE, "read stalled");
        }
        out
    }

    fn round_trip(a: &Stream, b: &Stream) {
        let ping: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let pong: Vec<u8> = (0..1000u32).map(|i| (i % 241) as u8 ^ 0x5a).collect();
        write_all(a, &ping);
        assert_eq!(read_exact(b, ping.len()), ping);
        write_all(b, &pong);
        assert_eq!(read_exact(a, pong.len()), pong);
        // Nothing more is pending.
        let mut buf = [0u8; 16];
        assert!(is_would_block(&a.read(&mut buf).unwrap_err()));
        assert!(is_would_block(&b.read(&mut buf).unwrap_err()));
    }

    // Windows has no way to read a socket's non-blocking mode, and handle
    // inheritance needs FFI: there, `round_trip` (a read without data is
    // WouldBlock) and `accept_without_client_is_none` show non-blocking mode,
    // and socket2 creates every socket non-inheritable.

    /// The `flags:` field (octal open flags) of `/proc/self/fdinfo/<fd>`.
    #[cfg(unix)]
    fn fd_flags(raw: RawSocket) -> u32 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).unwrap();
        let line = info.lines().find(|l| l.starts_with("flags:")).unwrap();
        u32::from_str_radix(line["flags:".len()..].trim(), 8).unwrap()
    }

    #[cfg(unix)]
    fn is_nonblocking(raw: RawSocket) -> bool {
        fd_flags(raw) & libc::O_NONBLOCK as u32 != 0
    }

    #[cfg(unix)]
    fn is_cloexec(raw: RawSocket) -> bool {
        fd_flags(raw) & libc::O_CLOEXEC as u32 != 0
    }

    // ---- TCP listener --------------------------------------------------

    #[test]
    fn tcp_listener_binds_and_duplicate_listen_fails() {
        let first = Listener::bind(&tcp("127.0.0.1", 0)).unwrap();
        let port: u16 = first
            .local_addr_string()
            .strip_prefix("127.0.0.1:")
            .unwrap()
            .parse()
            .unwrap();
        #[cfg(unix)]
        assert!(is_nonblocking(first.raw()));
        #[cfg(unix)]
        assert!(is_cloexec(first.raw()));
        // A port in use is refused, not shared.
        assert_port_in_use(port);
        // Once the first is gone the port binds again.
        drop(first);
        Listener::bind(&tcp("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn tcp_listener_empty_host_binds_all_ipv4() {
        let port = free_tcp_port().unwrap();
        let listener = Listener::bind(&tcp("", port)).unwrap();
        assert_eq!(listener.local_addr_string(), format!("0.0.0.0:{port}"));
        let (client, server) = pair(&listener, &tcp("127.0.0.1", port));
        round_trip(&client, &server);
    }

    #[test]
    fn tcp_listener_port_zero_reports_chosen_port() {
        let listener = Listener::bind(&tcp("127.0.0.1", 0)).unwrap();
        let s = listener.local_addr_string();
        let port: u16 = s.strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
        assert_ne!(port, 0);
    }

    #[test]
    fn tcp_listener_bracketed_ipv6_literal() {
        // Only where the machine has IPv6 loopback.
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            return;
        }
        let listener = Listener::bind(&tcp("[::1]", 0)).unwrap();
        assert!(listener.local_addr_string().starts_with("[::1]:"));
    }

    #[test]
    fn tcp_ipv6_connect_accept_round_trip() {
        // Only where the machine has IPv6 loopback.
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipped: no IPv6 loopback");
            return;
        }
        let listener = Listener::bind(&tcp("::1", 0)).unwrap();
        let port: u16 = listener
            .local_addr_string()
            .strip_prefix("[::1]:")
            .unwrap()
            .parse()
            .unwrap();
        let (client, server) = pair(&listener, &tcp("::1", port));
        assert_eq!(client.peer_string(), format!("[::1]:{port}"));
        round_trip(&client, &server);
    }

    #[test]
    fn tcp_listener_non_local_ip_is_invalid_address() {
        // TEST-NET-1: never assigned to this machine; bind sends no traffic.
        let (status, e) = bind_err(&tcp("192.0.2.1", free_tcp_port().unwrap()));
        assert_eq!(status, Status::InvalidAddress);
        assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable);
    }

    #[test]
    fn tcp_listener_unresolvable_host_is_invalid_address() {
        let (status, _) = bind_err(&tcp("no.such.host.invalid", 7099));
        assert_eq!(status, Status::InvalidAddress);
        let (status, _) = bind_err(&tcp("not a host name", 7099));
        assert_eq!(status, Status::InvalidAddress);
    }

    #[test]
    fn tcp_host_too_long_is_invalid_address() {
        let host = "a".repeat(300);
        let (status, e) = bind_err(&tcp(&host, 7099));
        assert_eq!(status, Status::InvalidAddress);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let (status, e) = connect_err(&tcp(&host, 7099));
        assert_eq!(status, Status::InvalidAddress);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // The limit is exactly MAX_HOST_LEN: one byte less passes validation
        // (and then fails to resolve, which is not InvalidInput).
        let (status, e) = bind_err(&tcp(&"a".repeat(MAX_HOST_LEN), 7099));
        assert_eq!(
            (status, e.kind()),
            (Status::InvalidAddress, io::ErrorKind::InvalidInput)
        );
        let (status, e) = bind_err(&tcp(&"a".repeat(MAX_HOST_LEN - 1), 7099));
        assert_eq!(status, Status::InvalidAddress);
        assert_ne!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn tcp_listener_address_in_use_is_listen_failed() {
        // A std listener owns the port: ours must fail with ListenFailed, not
        // InvalidAddress.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = std_listener.local_addr().unwrap().port();
        assert_port_in_use(port);
    }

    /// A listen on `port` fails with `ListenFailed`, "address in use" (Wine 8 says
    /// `WSAEACCES`, permission denied, instead).
    fn assert_port_in_use(port: u16) {
        let (status, e) = bind_err(&tcp("127.0.0.1", port));
        assert_eq!(status, Status::ListenFailed, "{e}");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
            ),
            "{e:?}"
        );
    }

    // ---- accept / connect / streams -----------------------------------

    #[test]
    fn accept_without_client_is_none() {
        let listener = Listener::bind(&tcp("127.0.0.1", 0)).unwrap();
        assert!(listener.accept().unwrap().is_none());
        if cfg!(unix) {
            let listener = Listener::bind(&uds("")).unwrap();
            assert!(listener.accept().unwrap().is_none());
        }
    }

    #[test]
    fn tcp_connect_accept_round_trip() {
        let port = free_tcp_port().unwrap();
        let listener = Listener::bind(&tcp("127.0.0.1", port)).unwrap();
        let addr = tcp("127.0.0.1", port);
        let (client, connected) = Stream::connect(&addr).unwrap();
        let start = Instant::now();
        while !connected && !client.finish_connect().unwrap() {
            assert!(start.elapsed() < DEADLINE, "connect did not finish");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(client.finish_connect().unwrap());
        let server = accept_one(&listener);
        for s in [&client, &server] {
            let sock = s.sock_ref();
            assert!(sock.tcp_nodelay().unwrap(), "TCP_NODELAY on {s:?}");
            assert_eq!(sock.linger().unwrap(), Some(Duration::ZERO), "{s:?}");
            #[cfg(unix)]
            assert!(is_nonblocking(s.raw()), "{s:?}");
            #[cfg(unix)]
            assert!(is_cloexec(s.raw()), "{s:?}");
        }
        assert_eq!(client.peer_string(), format!("127.0.0.1:{port}"));
        assert!(server.peer_string().starts_with("127.0.0.1:"));
        round_trip(&client, &server);
        // write_vectored gathers.
        let parts = [IoSlice::new(b"hello "), IoSlice::new(b"world")];
        let n = client.write_vectored(&parts).unwrap();
        assert_eq!(n, 11);
        assert_eq!(read_exact(&server, 11), b"hello world");
    }

    #[test]
    fn tcp_connect_dns_name() {
        // "localhost" goes through the resolver; bind and connect pick the
        // same first address.
        let port = free_tcp_port().unwrap();
        let listener = Listener::bind(&tcp("localhost", port)).unwrap();
        let (client, server) = pair(&listener, &tcp("localhost", port));
        round_trip(&client, &server);
    }

    #[test]
    fn tcp_connect_refused_is_connect_failed() {
        let port = free_tcp_port().unwrap();
        match Stream::connect(&tcp("127.0.0.1", port)) {
            Err((status, e)) => {
                assert_eq!(status, Status::ConnectFailed);
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
            }
            Ok((stream, connected)) => {
                assert!(!connected, "connected to a port nobody listens on");
                let e = wait_connected(&stream, false).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
            }
        }
    }

    #[test]
    fn tcp_connect_empty_host_is_invalid_address() {
        let (status, e) = connect_err(&tcp("", 7099));
        assert_eq!(
            (status, e.kind()),
            (Status::InvalidAddress, io::ErrorKind::InvalidInput)
        );
    }

    #[test]
    fn peer_reset_after_drop_and_no_sigpipe() {
        let port = free_tcp_port().unwrap();
        let addr = tcp("127.0.0.1", port);
        let listener = Listener::bind(&addr).unwrap();
        let (client, server) = pair(&listener, &addr);
        drop(server); // linger 0: RST
        let start = Instant::now();
        let e = loop {
            match client.write(b"x") {
                Ok(_) => {}
                Err(e) if is_would_block(&e) => {}
                Err(e) => break e,
            }
            assert!(start.elapsed() < DEADLINE, "write kept succeeding");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e:?}"
        );
    }

    // ---- Unix domain sockets -------------------------------------------
    //
    // Unix only: Wine 8 has no AF_UNIX (WSAEAFNOSUPPORT), so the Windows lane
    // cannot run them; `uds_without_af_unix_is_invalid_address` covers Windows.

    #[cfg(unix)]
    #[test]
    fn uds_listener_lifecycle_and_duplicate_listen() {
        let path = temp_uds_path();
        let addr = uds(path_string(&path));
        let first = Listener::bind(&addr).unwrap();
        assert!(
            std::fs::symlink_metadata(&path).is_ok(),
            "socket file missing"
        );
        assert_eq!(first.local_addr_string(), path_string(&path));
        assert!(is_nonblocking(first.raw()));
        assert!(is_cloexec(first.raw()));
        // A second listener on the same path is refused: the first one lives.
        let (status, e) = bind_err(&addr);
        assert_eq!(status, Status::ListenFailed, "{e}");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // The refusal's probe connection reached the first listener; it still takes
        // connections.
        let start = Instant::now();
        while first.accept().unwrap().is_none() {
            assert!(start.elapsed() < DEADLINE, "no probe connection");
            std::thread::sleep(Duration::from_millis(1));
        }
        let (client, server) = pair(&first, &addr);
        round_trip(&client, &server);
        drop(first);
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "socket file left behind"
        );
    }

    #[cfg(unix)]
    #[test]
    fn uds_listener_empty_path_is_generated() {
        let listener = Listener::bind(&uds("")).unwrap();
        let name = listener.local_addr_string();
        assert!(name.contains("tofu_"), "{name}");
        assert!(name.len() < UDS_PATH_MAX);
        assert!(std::fs::symlink_metadata(&name).is_ok());
        let (client, server) = pair(&listener, &uds(name.clone()));
        round_trip(&client, &server);
        drop(listener);
        assert!(std::fs::symlink_metadata(&name).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn uds_listener_keeps_non_socket_files() {
        let path = temp_uds_path();
        std::fs::write(&path, b"user data").unwrap();
        let (status, e) = bind_err(&uds(path_string(&path)));
        assert_eq!(status, Status::ListenFailed);
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(std::fs::read(&path).unwrap(), b"user data");
        std::fs::remove_file(&path).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn uds_listener_missing_directory_is_listen_failed() {
        let dir = temp_uds_path();
        let (status, _) = bind_err(&uds(path_string(&dir.join("s"))));
        assert_eq!(status, Status::ListenFailed);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn uds_abstract_name() {
        let name = format!("@tofu-test-{}", std::process::id());
        let listener = Listener::bind(&uds(name.clone())).unwrap();
        assert_eq!(listener.local_addr_string(), name);
        // Nothing in the filesystem, relative or in the temp dir.
        assert!(std::fs::symlink_metadata(&name).is_err());
        assert!(std::fs::symlink_metadata(std::env::temp_dir().join(&name)).is_err());
        // An abstract name cannot be taken over.
        let (status, e) = bind_err(&uds(name.clone()));
        assert_eq!(
            (status, e.kind()),
            (Status::ListenFailed, io::ErrorKind::AddrInUse)
        );
        let (client, server) = pair(&listener, &uds(name.clone()));
        assert_eq!(client.peer_string(), name);
        assert_eq!(server.peer_string(), format!("<unnamed> via {name}"));
        round_trip(&client, &server);
        drop(listener);
        let (status, _) = connect_err(&uds(name));
        assert_eq!(status, Status::ConnectFailed);
    }

    #[cfg(unix)]
    #[test]
    fn uds_path_length_limits() {
        let (status, e) = bind_err(&uds("/tmp/".to_string() + &"p".repeat(195)));
        assert_eq!(
            (status, e.kind()),
            (Status::InvalidAddress, io::ErrorKind::InvalidInput)
        );
        let (status, e) = connect_err(&uds("/tmp/".to_string() + &"p".repeat(195)));
        assert_eq!(
            (status, e.kind()),
            (Status::InvalidAddress, io::ErrorKind::InvalidInput)
        );
        // UDS_PATH_MAX - 1 bytes fit, UDS_PATH_MAX do not.
        let prefix = format!("/tmp/tofu_{}_len_", std::process::id());
        let longest = format!("{prefix}{}", "x".repeat(UDS_PATH_MAX - 1 - prefix.len()));
        assert_eq!(longest.len(), UDS_PATH_MAX - 1);
        let listener = Listener::bind(&uds(longest.clone())).unwrap();
        assert_eq!(listener.local_addr_string(), longest);
        let (client, server) = pair(&listener, &uds(longest.clone()));
        round_trip(&client, &server);
        drop(listener);
        let (status, _) = bind_err(&uds(longest + "x"));
        assert_eq!(status, Status::InvalidAddress);
        // NUL bytes.
        let (status, _) = bind_err(&uds("/tmp/a\0b"));
        assert_eq!(status, Status::InvalidAddress);
        let (status, _) = connect_err(&uds(""));
        assert_eq!(status, Status::InvalidAddress);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn uds_abstract_name_length_limits() {
        let prefix = format!("@tofu-{}-", std::process::id());
        // The name (without '@') may use all of sun_path but the leading NUL.
        let longest = format!("{prefix}{}", "n".repeat(UDS_PATH_MAX - prefix.len()));
        assert_eq!(longest.len() - 1, UDS_PATH_MAX - 1);
        let listener = Listener::bind(&uds(longest.clone())).unwrap();
        assert_eq!(listener.local_addr_string(), longest);
        let (client, server) = pair(&listener, &uds(longest.clone()));
        round_trip(&client, &server);
        let (status, _) = bind_err(&uds(longest + "n"));
        assert_eq!(status, Status::InvalidAddress);
        let (status, _) = bind_err(&uds("@"));
        assert_eq!(status, Status::InvalidAddress);
    }

    #[cfg(unix)]
    #[test]
    fn uds_connect_missing_path_is_uds_path_not_found() {
        let (status, e) = connect_err(&uds(path_string(&temp_uds_path())));
        assert_eq!(
            (status, e.kind()),
            (Status::UdsPathNotFound, io::ErrorKind::NotFound)
        );
    }

    #[cfg(unix)]
    #[test]
    fn uds_connect_stale_socket_file_is_connect_failed() {
        let path = temp_uds_path();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(
            std::fs::symlink_metadata(&path).is_ok(),
            "std removed the file"
        );
        let (status, e) = connect_err(&uds(path_string(&path)));
        assert_eq!(
            (status, e.kind()),
            (Status::ConnectFailed, io::ErrorKind::ConnectionRefused)
        );
        // A new listener takes the stale path over.
        let listener = Listener::bind(&uds(path_string(&path))).unwrap();
        let (client, server) = pair(&listener, &uds(path_string(&path)));
        round_trip(&client, &server);
    }

    #[cfg(unix)]
    #[test]
    fn uds_connect_accept_round_trip() {
        let path = temp_uds_path();
        let addr = uds(path_string(&path));
        let listener = Listener::bind(&addr).unwrap();
        let (client, connected) = Stream::connect(&addr).unwrap();
        wait_connected(&client, connected).unwrap();
        assert!(client.finish_connect().unwrap());
        let server = accept_one(&listener);
        for s in [&client, &server] {
            assert!(is_nonblocking(s.raw()), "{s:?}");
            assert!(is_cloexec(s.raw()), "{s:?}");
            assert_eq!(s.sock_ref().linger().unwrap(), Some(Duration::ZERO));
        }
        assert_eq!(client.peer_string(), path_string(&path));
        round_trip(&client, &server);
        let parts = [IoSlice::new(b"a"), IoSlice::new(b""), IoSlice::new(b"bc")];
        assert_eq!(server.write_vectored(&parts).unwrap(), 3);
        assert_eq!(read_exact(&client, 3), b"abc");
        // End of stream after the peer goes away.
        drop(server);
        let mut buf = [0u8; 8];
        let start = Instant::now();
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => panic!("unexpected {n} bytes"),
                Err(e) if is_would_block(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("read: {e}"),
            }
            assert!(start.elapsed() < DEADLINE);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn uds_connect_full_backlog_is_connect_failed_would_block() {
        // A listener with backlog 0 holds one pending connection; the
        // next non-blocking connect gets EAGAIN and starts nothing.
        let path = temp_uds_path();
        let raw = Socket::new(Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        raw.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        raw.listen(0).unwrap();
        let addr = uds(path_string(&path));
        let mut pending = Vec::new();
        let err = loop {
            match Stream::connect(&addr) {
                Ok((s, connected)) => {
                    assert!(connected, "Linux UDS connects complete at once");
                    pending.push(s);
                }
                Err(e) => break e,
            }
            assert!(pending.len() < 16, "backlog never filled");
        };
        assert_eq!(err.0, Status::ConnectFailed);
        assert!(is_would_block(&err.1), "{:?}", err.1);
        std::fs::remove_file(&path).unwrap();
    }

    #[cfg(windows)]
    #[test]
    fn uds_without_af_unix_is_invalid_address() {
        // Windows 10 1803 and later have AF_UNIX; Wine 8 (and older Windows) do
        // not, and then both listening and connecting say so.
        let path = path_string(&temp_uds_path());
        match Listener::bind(&uds(path.clone())) {
            Ok(listener) => {
                let (client, server) = pair(&listener, &uds(path));
                round_trip(&client, &server);
            }
            Err((status, e)) => {
                assert_eq!(status, Status::InvalidAddress, "{e}");
                assert!(e.to_string().contains("AF_UNIX not supported"), "{e}");
                let (status, e) = connect_err(&uds(path));
                assert_eq!(status, Status::InvalidAddress, "{e}");
                assert!(e.to_string().contains("AF_UNIX not supported"), "{e}");
            }
        }
    }

    #[test]
    fn is_would_block_classifies() {
        assert!(is_would_block(&io::Error::from(io::ErrorKind::WouldBlock)));
        #[cfg(unix)]
        assert!(is_would_block(&io::Error::from_raw_os_error(libc::EAGAIN)));
        #[cfg(unix)]
        assert!(!is_would_block(&io::Error::from_raw_os_error(libc::EINTR)));
        #[cfg(windows)]
        assert!(is_would_block(&io::Error::from_raw_os_error(
            windows_sys::Win32::Networking::WinSock::WSAEWOULDBLOCK
        )));
        #[cfg(windows)]
        assert!(!is_would_block(&io::Error::from_raw_os_error(
            windows_sys::Win32::Networking::WinSock::WSAEINTR
        )));
        assert!(!is_would_block(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
    }
}
