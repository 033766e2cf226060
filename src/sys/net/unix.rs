//! Unix details of the socket layer: socket creation, accept, send flags, connect errors.

use std::io;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

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

/// Creates a non-blocking, close-on-exec stream socket.
pub fn stream_socket(domain: Domain, protocol: Option<Protocol>) -> io::Result<Socket> {
    // Socket::new always sets close-on-exec (SOCK_CLOEXEC where it exists).
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos"
    ))]
    {
        Socket::new(domain, Type::STREAM.nonblocking(), protocol)
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos"
    )))]
    {
        let socket = Socket::new(domain, Type::STREAM, protocol)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}

/// Accepts one connection as a non-blocking, close-on-exec socket.
pub fn accept(listener: SockRef<'_>) -> io::Result<Socket> {
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos"
    ))]
    {
        listener
            .accept4(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .map(|(socket, _)| socket)
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos"
    )))]
    {
        // socket2's accept sets close-on-exec.
        let (socket, _) = listener.accept()?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
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
