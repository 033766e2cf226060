//! Helpers for tests: free TCP ports and fresh Unix domain socket paths.
//!
//! These are public so that users of tofu can write their own tests against
//! real sockets the same way tofu's own tests do.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::{Domain, Protocol, Socket, Type};

pub use crate::address::UDS_PATH_MAX;

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

/// Process-global counter making [`temp_uds_path`] results unique.
static UDS_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Returns a fresh path for a Unix domain socket file.
///
/// The path is `<temp dir>/tofu_<pid>_<n>.port`, where the temp dir is
/// [`std::env::temp_dir`] (falling back to `/tmp` when that would make the
/// path too long) and `n` comes from a process-global counter. The returned
/// path is strictly shorter than [`UDS_PATH_MAX`] bytes and did not exist when
/// it was chosen (existing paths are skipped). Nothing is created.
pub fn temp_uds_path() -> PathBuf {
    fresh_uds_path(&std::env::temp_dir(), &UDS_COUNTER)
}

/// The `n`th candidate name in `dir`, or in `/tmp` when that would not fit
/// in `sun_path`.
fn uds_candidate(dir: &Path, n: u64) -> PathBuf {
    let name = format!("tofu_{}_{n}.port", std::process::id());
    let path = dir.join(&name);
    if path.as_os_str().len() < UDS_PATH_MAX {
        path
    } else {
        // "/tmp/tofu_<u32>_<u64>.port" is at most 46 bytes.
        Path::new("/tmp").join(name)
    }
}

/// [`temp_uds_path`] with the directory and counter as parameters.
fn fresh_uds_path(dir: &Path, counter: &AtomicU64) -> PathBuf {
    loop {
        let path = uds_candidate(dir, counter.fetch_add(1, Ordering::Relaxed));
        // `symlink_metadata` so that a dangling symlink counts as existing.
        match std::fs::symlink_metadata(&path) {
            // Exists: try the next number.
            Ok(_) => continue,
            // Absent. Any other error (say, an unreadable temp dir) would
            // repeat for every number; return the path and let bind report.
            Err(_) => return path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::TcpListener;

    #[test]
    fn temp_uds_paths_are_short_unique_and_absent() {
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let p = temp_uds_path();
            assert!(!p.as_os_str().is_empty());
            assert!(p.as_os_str().len() < UDS_PATH_MAX, "{}", p.display());
            assert!(std::fs::symlink_metadata(&p).is_err(), "{}", p.display());
            let name = p.file_name().and_then(|n| n.to_str()).unwrap();
            assert!(name.starts_with(&format!("tofu_{}_", std::process::id())));
            assert!(name.ends_with(".port"));
            assert!(seen.insert(p.clone()), "duplicate {}", p.display());
        }
    }

    #[cfg(unix)]
    #[test]
    fn fresh_uds_path_skips_existing_files() {
        // A private directory and counter, so that concurrent tests calling
        // `temp_uds_path` are not disturbed.
        let dir = std::env::temp_dir().join(format!("tofu_skip_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let counter = AtomicU64::new(0);
        std::fs::write(uds_candidate(&dir, 0), b"x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", uds_candidate(&dir, 1)).unwrap();
        let p = fresh_uds_path(&dir, &counter);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(p, uds_candidate(&dir, 2));
        assert_eq!(counter.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn fresh_uds_path_falls_back_to_tmp_for_long_dirs() {
        let long_dir = PathBuf::from(format!("/{}", "d".repeat(UDS_PATH_MAX)));
        let p = fresh_uds_path(&long_dir, &AtomicU64::new(0));
        assert_eq!(p.parent(), Some(Path::new("/tmp")));
        assert!(p.as_os_str().len() < UDS_PATH_MAX);
        // A directory that fits is used as is.
        let p = fresh_uds_path(Path::new("/tmp/x"), &AtomicU64::new(7));
        assert_eq!(
            p,
            PathBuf::from(format!("/tmp/x/tofu_{}_7.port", std::process::id()))
        );
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
