//! Windows details of the socket layer: socket creation, accept, send flags, connect errors.

use std::io;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use windows_sys::Win32::Networking::WinSock::{
    WSAEAFNOSUPPORT, WSAEALREADY, WSAEINPROGRESS, WSAEINTR, WSAEINVAL, WSAENOTCONN, WSAEWOULDBLOCK,
};

/// Flags for `send`: Windows raises no signal for a vanished peer.
pub const SEND_FLAGS: i32 = 0;

/// Creates a non-blocking, non-inheritable stream socket (socket2 creates
/// every socket with `WSA_FLAG_NO_HANDLE_INHERIT`).
pub fn stream_socket(domain: Domain, protocol: Option<Protocol>) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM, protocol)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Accepts one connection as a non-blocking, non-inheritable socket.
pub fn accept(listener: SockRef<'_>) -> io::Result<Socket> {
    // Accepted sockets inherit the listener's non-blocking mode; set it
    // anyway rather than rely on that.
    let (socket, _) = listener.accept()?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Whether a failed `accept` only concerned the one pending connection,
/// so that accepting again is right (Windows reports a connection reset
/// before it was accepted as `WSAECONNRESET`).
pub fn accept_should_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Whether a failed non-blocking `connect` goes on in the background:
/// on Windows that is `WSAEWOULDBLOCK` (and `WSAEINPROGRESS`/`WSAEALREADY`
/// for a connect already under way).
pub fn connect_in_progress(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(WSAEWOULDBLOCK | WSAEINPROGRESS | WSAEALREADY | WSAEINTR)
    )
}

/// Whether `getpeername` failed only because the connect is still under
/// way: `WSAENOTCONN`, or `WSAEINVAL` under Wine.
pub fn not_yet_connected(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotConnected
        || matches!(e.raw_os_error(), Some(WSAENOTCONN | WSAEINVAL))
}

/// Whether creating a socket failed because the system has no such
/// address family (AF_UNIX before Windows 10 1803, and under Wine 8).
pub fn family_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(WSAEAFNOSUPPORT)
}
