//! Unix domain socket paths: this platform's `sun_path` limit, abstract names (Linux), where
//! an automatic path goes, and who removes a socket file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::SockAddr;

use super::{invalid_address, NetError};
use crate::proto::status::Status;

/// Size of `sun_path` on this platform, its terminating NUL included: a UDS path (or abstract
/// name after `@`) may have at most `UDS_PATH_MAX - 1` bytes.
#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
))]
pub const UDS_PATH_MAX: usize = 104;
/// Size of `sun_path` on this platform, its terminating NUL included: a UDS path (or abstract
/// name after `@`) may have at most `UDS_PATH_MAX - 1` bytes.
#[cfg(not(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
)))]
pub const UDS_PATH_MAX: usize = 108;

// The protocol core's syntax limit is the largest `sun_path` of all platforms.
const _: () = assert!(UDS_PATH_MAX <= crate::proto::address::SUN_PATH_LEN);

/// Where a Unix domain socket lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UdsTarget {
    /// A filesystem path.
    Path(PathBuf),
    /// A Linux abstract name (without the leading NUL or '@').
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Abstract(Vec<u8>),
}

impl UdsTarget {
    /// Validates a non-empty `Address::Uds` path.
    pub(super) fn parse(path: &str) -> Result<UdsTarget, NetError> {
        if path.is_empty() {
            return Err(invalid_address("empty Unix domain socket path".into()));
        }
        if path.contains('\0') {
            return Err(invalid_address(format!(
                "Unix domain socket path {path:?} contains a NUL byte"
            )));
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(name) = path.strip_prefix('@') {
            // sun_path holds a leading NUL and then the name, without a
            // terminating NUL.
            if name.is_empty() {
                return Err(invalid_address("empty abstract socket name".into()));
            }
            if name.len() + 1 > UDS_PATH_MAX {
                return Err(invalid_address(format!(
                    "abstract socket name is {} bytes long, the limit is {}",
                    name.len(),
                    UDS_PATH_MAX - 1
                )));
            }
            return Ok(UdsTarget::Abstract(name.as_bytes().to_vec()));
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        if path.starts_with('@') {
            return Err(invalid_address(format!(
                "{path:?}: abstract socket names (\"@name\") exist only on Linux"
            )));
        }
        // sun_path holds the path and a terminating NUL.
        if path.len() + 1 > UDS_PATH_MAX {
            return Err(invalid_address(format!(
                "Unix domain socket path is {} bytes long, the limit is {}",
                path.len(),
                UDS_PATH_MAX - 1
            )));
        }
        Ok(UdsTarget::Path(PathBuf::from(path)))
    }

    /// The `sockaddr_un` for this target.
    pub(super) fn sock_addr(&self) -> Result<SockAddr, NetError> {
        let addr = match self {
            UdsTarget::Path(p) => SockAddr::unix(p),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            UdsTarget::Abstract(name) => {
                use std::os::unix::ffi::OsStrExt;
                // socket2 treats a path starting with NUL as abstract.
                let mut bytes = Vec::with_capacity(name.len() + 1);
                bytes.push(0);
                bytes.extend_from_slice(name);
                SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))
            }
        };
        addr.map_err(|e| (Status::InvalidAddress, e))
    }

    /// The filesystem path; `None` for an abstract name.
    pub(super) fn into_path(self) -> Option<PathBuf> {
        match self {
            UdsTarget::Path(p) => Some(p),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            UdsTarget::Abstract(_) => None,
        }
    }
}

/// What identifies one socket file: (device, inode) on unix.
#[cfg(unix)]
type FileId = (u64, u64);

/// What identifies one socket file: its creation time on Windows (std has no
/// stable file index there).
#[cfg(windows)]
type FileId = std::time::SystemTime;

/// Returns the identity of the file at `path`, if any.
#[cfg(unix)]
fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Returns the identity of the file at `path`, if any.
#[cfg(windows)]
fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.created())
        .ok()
}

/// The socket file a listener bound: dropping it removes the file, unless it
/// has been replaced by another socket file since (a listener bound after
/// this one's file was removed by hand, say).
#[derive(Debug)]
pub(super) struct SocketFile {
    path: PathBuf,
    /// The identity of the file right after binding (unix: device and inode;
    /// Windows: creation time); `None` if it could not be read, and then drop
    /// removes the path unconditionally.
    id: Option<FileId>,
}

impl SocketFile {
    /// Takes charge of the socket file that binding has just created at
    /// `path`.
    pub(super) fn bound(path: PathBuf) -> SocketFile {
        let id = file_id(&path);
        SocketFile { path, id }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Errors are ignored: this is cleanup.
        if self.id.is_none() || file_id(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a stale socket file at `path` before binding it: a socket file
/// nobody listens on (a connect is refused). A live listener's file is left
/// alone, so the bind fails with `EADDRINUSE` (a probe connection reaches that
/// listener and is closed at once); anything that is not a socket (a regular
/// file, a directory, ...) is left alone too, so binding fails instead of
/// destroying user data.
#[cfg(unix)]
pub(super) fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let stale = meta.file_type().is_socket()
            && matches!(
                std::os::unix::net::UnixStream::connect(path),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            );
        if stale {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// On Windows nothing is removed before binding: std cannot tell an AF_UNIX
/// socket file from other reparse points (cloud placeholders, ...), and
/// guessing could destroy user data. A stale socket file (left by a process
/// that died; a [`Listener`] removes its own) makes the bind fail with
/// `ListenFailed`.
#[cfg(windows)]
pub(super) fn remove_stale_socket(_path: &Path) {}

/// Process-global counter making [`temp_uds_path`] results unique.
static UDS_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Returns a fresh path for a Unix domain socket file.
///
/// The path is `<temp dir>/tofu_<pid>_<n>.port`, where the temp dir is
/// [`std::env::temp_dir`] (falling back to `/tmp` when that would make the
/// path too long) and `n` comes from a process-global counter. The returned
/// path is strictly shorter than [`UDS_PATH_MAX`] bytes and did not exist when
/// it was chosen (existing paths are skipped). Nothing is created.
pub(crate) fn temp_uds_path() -> PathBuf {
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

    #[cfg(unix)]
    #[test]
    fn socket_file_removes_only_its_own_file() {
        let path = temp_uds_path();
        // Held open so that the replacement cannot get the same inode.
        let first = std::fs::File::create(&path).unwrap();
        let file = SocketFile::bound(path.clone());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"second").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        drop(first);
        drop(SocketFile::bound(path.clone()));
        assert!(std::fs::symlink_metadata(&path).is_err());
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
}
