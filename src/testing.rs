//! Helpers for tests: free TCP ports and fresh Unix domain socket paths.
//!
//! These are public so that users of tofu can write their own tests against
//! real sockets the same way tofu's own tests do.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use socket2::{Domain, Protocol, Socket, Type};

pub use crate::sys::net::UDS_PATH_MAX;

/// Returns a TCP port that was free a moment ago.
///
/// Binds `0.0.0.0:0` (with `SO_REUSEADDR`, and `SO_REUSEPORT` where it
/// exists), reads the port the kernel chose and closes the socket again. Some
/// other process may take the port before the caller binds it, so tests
/// should tolerate (rare) failures to bind it.
pub fn free_tcp_port() -> io::Result<u16> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).into())?;
    let local = socket.local_addr()?;
    match local.as_socket() {
        Some(addr) => Ok(addr.port()),
        None => Err(io::Error::other("bound TCP socket has no IP address")),
    }
}

/// Returns a fresh path for a Unix domain socket file.
///
/// The path is `<temp dir>/tofu_<pid>_<n>.port`, where the temp dir is
/// [`std::env::temp_dir`] (falling back to `/tmp` when that would make the
/// path too long) and `n` comes from a process-global counter. The returned
/// path is strictly shorter than [`UDS_PATH_MAX`] bytes and did not exist when
/// it was chosen (existing paths are skipped). Nothing is created. A listener
/// on an empty UDS path binds one of these.
pub fn temp_uds_path() -> PathBuf {
    crate::sys::net::temp_uds_path()
}

/// True when this system has Unix domain stream sockets: always on Unix; on Windows from
/// Windows 10 1803 on, but not under Wine 8 (which the Windows lane of the tests runs in).
/// Tests of UDS behaviour that holds on every system with AF_UNIX skip themselves with a
/// message when this is false, so they run wherever they can.
pub fn uds_supported() -> bool {
    cfg!(unix) || Socket::new(Domain::UNIX, Type::STREAM, None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[cfg(unix)]
    #[test]
    fn unix_has_unix_domain_sockets() {
        assert!(uds_supported());
    }

    #[test]
    fn free_tcp_port_is_bindable() {
        let port = free_tcp_port().unwrap();
        assert_ne!(port, 0);
        // A plain std bind (no SO_REUSEADDR/SO_REUSEPORT) must succeed.
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert_eq!(l.local_addr().unwrap().port(), port);
    }
}
