//! What the `tofu` command asks of the OS beyond std, in one file: process CPU time, CPU
//! pinning, the descriptor limit and count, resident memory, a description of the machine,
//! Unix-domain stream pairs for the raw-socket baseline, and an epoll set for the raw
//! many-connections baseline.
//!
//! Every function is safe and compiles on every platform; where this file does not know how
//! to ask the OS, each says in its docs what it does instead (`None`, an error, or nothing).
//! Apart from the counting allocator (`alloc.rs`), the libc calls here are the command's only
//! `unsafe` code (`main.rs` denies it everywhere else).

use std::io;
use std::time::Duration;

/// CPU time (user + system) the whole process has used so far; `None` where the platform
/// cannot tell (here: anything but Linux).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn cpu_time() -> Option<Duration> {
    // SAFETY: rusage is plain data; getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid pointer to `u`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    Some(t(u.ru_utime) + t(u.ru_stime))
}

/// CPU time (user + system) the whole process has used so far; `None` where the platform
/// cannot tell (here: anything but Linux).
#[cfg(not(target_os = "linux"))]
pub fn cpu_time() -> Option<Duration> {
    None
}

/// Pins the calling thread to CPU 0 (threads it creates afterwards inherit that).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn pin_to_cpu0() -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU 0 is within the set's bounds.
    unsafe { libc::CPU_SET(0, &mut set) };
    // SAFETY: pid 0 is the calling thread; the pointer and size describe `set`.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!("sched_setaffinity: {}", io::Error::last_os_error()))
    }
}

/// Pins the calling thread to CPU 0 (threads it creates afterwards inherit that).
#[cfg(not(target_os = "linux"))]
pub fn pin_to_cpu0() -> Result<(), String> {
    Err("pinning is implemented on Linux only".into())
}

/// Raises RLIMIT_NOFILE's soft limit to at least `want` (up to the hard limit, or beyond
/// it where the process may). Elsewhere than Linux nothing is done and `Ok` returned.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn raise_fd_limit(want: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    if lim.rlim_max < want {
        // Raising the hard limit needs privileges; try, and fall back to what we have.
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(());
        }
    }
    lim.rlim_cur = want.min(lim.rlim_max);
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < want {
        return Err(io::Error::other(format!(
            "the hard limit is {}",
            lim.rlim_max
        )));
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE's soft limit to at least `want` (up to the hard limit, or beyond
/// it where the process may). Elsewhere than Linux nothing is done and `Ok` returned.
#[cfg(not(target_os = "linux"))]
pub fn raise_fd_limit(_want: u64) -> io::Result<()> {
    Ok(())
}

/// Open descriptors, where the OS tells (Linux). Under Wine `/proc/self/fd` is the Wine
/// process's, whose count moves on its own, so it is not used on Windows.
pub fn open_fds() -> Option<usize> {
    if cfg!(target_os = "linux") {
        std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
    } else {
        None
    }
}

/// Resident memory in KiB, from `/proc/self/statm` (Linux, 4 KiB pages) where it exists.
pub fn rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4)
}

/// The machine line of a benchmark report: CPU model and kernel release from `/proc` (Linux;
/// "unknown CPU" and an empty release where it is missing), and the number of CPUs.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} CPUs, Linux {kernel}")
}

/// A Unix-domain stream socket (std's, on unix).
#[cfg(unix)]
pub type UdsStream = std::os::unix::net::UnixStream;

/// A Unix-domain stream socket: std has none here, so there is no value of this type
/// ([`uds_pair`] fails) and its methods cannot be called.
#[cfg(not(unix))]
pub enum UdsStream {}

#[cfg(not(unix))]
impl UdsStream {
    pub fn try_clone(&self) -> io::Result<UdsStream> {
        match *self {}
    }
}

#[cfg(not(unix))]
impl io::Read for UdsStream {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }
}

#[cfg(not(unix))]
impl io::Write for UdsStream {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        match *self {}
    }

    fn flush(&mut self) -> io::Result<()> {
        match *self {}
    }
}

/// A connected pair of Unix-domain stream sockets; `Unsupported` where std has none.
pub fn uds_pair() -> io::Result<(UdsStream, UdsStream)> {
    #[cfg(unix)]
    {
        UdsStream::pair()
    }
    #[cfg(not(unix))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "UDS is not available here",
        ))
    }
}

/// A level-triggered epoll set of sockets watched for reading, for the raw many-connections
/// baseline (Linux only: elsewhere [`ReadSet::new`] fails with `Unsupported`).
#[cfg(target_os = "linux")]
pub struct ReadSet {
    fd: std::os::fd::OwnedFd,
    events: Vec<libc::epoll_event>,
}

#[cfg(target_os = "linux")]
impl ReadSet {
    /// An empty set that reports up to `batch` ready sockets per wait.
    #[allow(unsafe_code)]
    pub fn new(batch: usize) -> io::Result<ReadSet> {
        use std::os::fd::FromRawFd;
        // SAFETY: epoll_create1 with a valid flag; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ReadSet {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; batch.max(1)],
        })
    }

    /// Watches `socket` for reading; its readiness is reported as `key`.
    #[allow(unsafe_code)]
    pub fn add(&mut self, socket: &impl std::os::fd::AsRawFd, key: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key,
        };
        // SAFETY: both descriptors are open for the call; `ev` is a valid event.
        let r = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until sockets are readable and calls `ready` with each one's key.
    #[allow(unsafe_code)]
    pub fn wait(&mut self, mut ready: impl FnMut(u64)) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: the buffer holds `events.len()` events, which the kernel fills at most.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                -1,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for ev in &self.events[..n as usize] {
            ready(ev.u64);
        }
        Ok(())
    }
}

/// An epoll set: Linux only, so here none can be made.
#[cfg(not(target_os = "linux"))]
pub enum ReadSet {}

#[cfg(not(target_os = "linux"))]
impl ReadSet {
    pub fn new(_batch: usize) -> io::Result<ReadSet> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the raw many-connections baseline uses epoll (Linux only)",
        ))
    }

    pub fn add(&mut self, _socket: &std::net::TcpStream, _key: u64) -> io::Result<()> {
        match *self {}
    }

    pub fn wait(&mut self, _ready: impl FnMut(u64)) -> io::Result<()> {
        match *self {}
    }
}
