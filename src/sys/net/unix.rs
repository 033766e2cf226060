//! Unix details of the socket layer: socket creation, accept, options, error codes, handles
//! and Unix domain socket names.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The OS handle of a socket, as registered with the poller.
pub type RawSocket = std::os::fd::RawFd;

/// The OS handle of `socket`.
pub fn raw(socket: &Socket) -> RawSocket {
    socket.as_raw_fd()
}

/// Flags for `send(2)`/`sendmsg(2)`: never raise `SIGPIPE` (the peer
/// having gone away is reported as `EPIPE` instead).
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
pub const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;

/// Flags for `send(2)`/`sendmsg(2)`. Apple platforms have no
/// `MSG_NOSIGNAL`; socket2 sets `SO_NOSIGPIPE` on every socket it creates
/// and accepted sockets inherit it from the listener.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)))]
pub const SEND_FLAGS: libc::c_int = 0;

pub use create::{accept, stream_socket};

/// Where `socket(2)` and `accept4(2)` take `SOCK_NONBLOCK` and
/// `SOCK_CLOEXEC`, one system call makes the socket as it must be.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos"
))]
mod create {
    use super::{io, Domain, Protocol, Socket, Type};

    /// Creates a non-blocking, close-on-exec stream socket.
    pub fn stream_socket(domain: Domain, protocol: Option<Protocol>) -> io::Result<Socket> {
        Socket::new(domain, Type::STREAM.nonblocking(), protocol)
    }

    /// Accepts one connection as a non-blocking, close-on-exec socket.
    pub fn accept(listener: &Socket) -> io::Result<Socket> {
        listener
            .accept4(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .map(|(socket, _)| socket)
    }
}

/// Elsewhere the socket is made first and its flags are set after.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos"
)))]
mod create {
    use super::{io, Domain, Protocol, Socket, Type};

    /// Creates a non-blocking, close-on-exec stream socket.
    pub fn stream_socket(domain: Domain, protocol: Option<Protocol>) -> io::Result<Socket> {
        // Socket::new always sets close-on-exec.
        let socket = Socket::new(domain, Type::STREAM, protocol)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// Accepts one connection as a non-blocking, close-on-exec socket.
    pub fn accept(listener: &Socket) -> io::Result<Socket> {
        // socket2's accept sets close-on-exec.
        let (socket, _) = listener.accept()?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}

/// `SO_REUSEADDR`: a listener may bind a port that connections of an earlier
/// one still hold in TIME_WAIT (a restarted server), but not a port another
/// socket listens on. No `SO_REUSEPORT` (Zig tofu sets it, so a second
/// listener on the same port silently shared the connections).
pub fn set_reuse(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)
}

/// Whether a failed `accept(2)` only concerned the one pending
/// connection (or a signal), so that accepting again is right.
pub fn accept_should_retry(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) {
        return true;
    }
    // accept(2) on Linux: "already-pending network errors on the new
    // socket [...] should be treated like EAGAIN by retrying".
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        matches!(
            e.raw_os_error(),
            Some(
                libc::EPROTO
                    | libc::ENETDOWN
                    | libc::ENOPROTOOPT
                    | libc::EHOSTDOWN
                    | libc::ENONET
                    | libc::EHOSTUNREACH
                    | libc::EOPNOTSUPP
                    | libc::ENETUNREACH
            )
        )
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        e.raw_os_error() == Some(libc::EPROTO)
    }
}

/// Whether a failed non-blocking `connect(2)` goes on in the background.
///
/// `EAGAIN` is *not* in progress: for a Unix domain socket it means the
/// listener's backlog is full and nothing was started, for TCP that no
/// local port is free. (On Windows, `WSAEWOULDBLOCK` *is* in progress.)
pub fn connect_in_progress(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINPROGRESS | libc::EALREADY | libc::EINTR)
    )
}

/// Whether `getpeername(2)` failed only because the connect is still under
/// way (`ENOTCONN`).
pub fn not_yet_connected(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotConnected
}

/// Whether creating a socket failed for lack of descriptors or buffers
/// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`).
pub fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether creating a Unix domain socket failed because the system has no
/// AF_UNIX: never taken to be so on Unix, where the error is reported as
/// it is.
pub fn family_unsupported(_e: &io::Error) -> bool {
    false
}

/// How a Unix domain socket stream names its peer in logs: it keeps
/// nothing, the kernel tells (`getpeername(2)`, `getsockname(2)`).
#[derive(Debug)]
pub struct UdsPeer;

impl UdsPeer {
    /// For a stream connected to `path`.
    pub fn connected(_path: &str) -> UdsPeer {
        UdsPeer
    }

    /// For a stream accepted by the listener that `listener` names.
    pub fn accepted(_listener: impl FnOnce() -> String) -> UdsPeer {
        UdsPeer
    }

    /// The peer of `socket`: its path or `@name`; for an unnamed peer (an
    /// accepted stream's) `<unnamed> via <own address>`.
    pub fn describe(&self, socket: &Socket) -> String {
        match socket.peer_addr() {
            Ok(a) if a.is_unnamed() => match socket.local_addr() {
                Ok(local) if !local.is_unnamed() => {
                    format!("<unnamed> via {}", uds_addr_string(&local))
                }
                _ => "<unnamed>".to_string(),
            },
            Ok(a) => uds_addr_string(&a),
            Err(e) => format!("<unknown: {e}>"),
        }
    }
}

/// The bound address of a Unix domain socket listener for logs, or the
/// path it was bound to (if any) when the kernel does not say.
pub fn uds_local_string(socket: &Socket, path: Option<&Path>) -> String {
    match socket.local_addr() {
        Ok(a) => uds_addr_string(&a),
        Err(e) => match path {
            Some(p) => p.display().to_string(),
            None => format!("<unknown: {e}>"),
        },
    }
}

/// Formats a Unix domain socket address for logs: the path, `@name` for an
/// abstract name, or `<unnamed>`.
fn uds_addr_string(addr: &SockAddr) -> String {
    if let Some(p) = addr.as_pathname() {
        return p.display().to_string();
    }
    // Always `None` where there are no abstract names (all but Linux).
    if let Some(name) = addr.as_abstract_namespace() {
        return format!("@{}", String::from_utf8_lossy(name));
    }
    "<unnamed>".to_string()
}
