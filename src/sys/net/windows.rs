//! Windows details of the socket layer: socket creation, accept, options, error codes, handles
//! and Unix domain socket names.

use std::io;
use std::os::windows::io::AsRawSocket;
use std::path::Path;

use socket2::{Domain, Protocol, Socket, Type};
use windows_sys::Win32::Networking::WinSock::{
    WSAEAFNOSUPPORT, WSAEALREADY, WSAEINPROGRESS, WSAEINTR, WSAEINVAL, WSAEMFILE, WSAENOBUFS,
    WSAENOTCONN, WSAEWOULDBLOCK,
};

/// The OS handle of a socket, as registered with the poller.
pub type RawSocket = std::os::windows::io::RawSocket;

/// The OS handle of `socket`.
pub fn raw(socket: &Socket) -> RawSocket {
    socket.as_raw_socket()
}

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
pub fn accept(listener: &Socket) -> io::Result<Socket> {
    // Accepted sockets inherit the listener's non-blocking mode; set it
    // anyway rather than rely on that.
    let (socket, _) = listener.accept()?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Nothing: on Windows `SO_REUSEADDR` would let a second listener bind a
/// port in use (and TIME_WAIT does not block a listener's bind), so a port
/// in use fails the bind, as on Unix.
pub fn set_reuse(_socket: &Socket) -> io::Result<()> {
    Ok(())
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

/// Whether creating a socket failed for lack of descriptors or buffers
/// (`WSAEMFILE`, `WSAENOBUFS`).
pub fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(WSAEMFILE | WSAENOBUFS))
}

/// Whether creating a socket failed because the system has no such
/// address family (AF_UNIX before Windows 10 1803, and under Wine 8).
pub fn family_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(WSAEAFNOSUPPORT)
}

/// How a Unix domain socket stream names its peer in logs: by a name fixed
/// when it is made, because socket2 cannot show AF_UNIX addresses on
/// Windows.
#[derive(Debug)]
pub struct UdsPeer(String);

impl UdsPeer {
    /// For a stream connected to `path`.
    pub fn connected(path: &str) -> UdsPeer {
        UdsPeer(path.to_string())
    }

    /// For a stream accepted by the listener that `listener` names.
    pub fn accepted(listener: impl FnOnce() -> String) -> UdsPeer {
        UdsPeer(format!("<unnamed> via {}", listener()))
    }

    /// The peer: the path connected to, or `<unnamed> via <listener path>`.
    pub fn describe(&self, _socket: &Socket) -> String {
        self.0.clone()
    }
}

/// The bound address of a Unix domain socket listener for logs: the path it
/// was bound to (Windows has filesystem paths only, and socket2 cannot show
/// them).
pub fn uds_local_string(_socket: &Socket, path: Option<&Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "<unnamed>".to_string(),
    }
}
