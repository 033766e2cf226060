//! Helpers shared by the poller's test modules: the behaviour tests in `mod.rs` and, on
//! Windows, the backend's own tests in `windows/afd.rs` and `windows/selector.rs`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use super::{Event, Token, Triggers, Waker};

/// Upper bound for things that should happen promptly.
pub(super) const LONG: Duration = Duration::from_secs(3);

/// A connected, non-blocking pair of loopback TCP streams.
pub(super) fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.set_nonblocking(true).unwrap();
    server.set_nonblocking(true).unwrap();
    (client, server)
}

/// Starts a non-blocking TCP connect (std has none). An immediate refusal still returns
/// the (now closed-state) socket, which the poller reports as HUP.
pub(super) fn connect_nonblocking(addr: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => Ok(sock),
        Err(e) if in_progress(&e) => Ok(sock),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(sock),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn in_progress(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINPROGRESS)
}

/// Windows reports a connect in progress as WSAEWOULDBLOCK.
#[cfg(windows)]
fn in_progress(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// The triggers reported for `token` (NONE if absent); a token may appear only once.
pub(super) fn triggers_of(events: &[Event], token: Token) -> Triggers {
    let mut hits = events.iter().filter(|e| e.token == token);
    let triggers = hits.next().map_or(Triggers::NONE, |e| e.triggers);
    assert!(
        hits.next().is_none(),
        "{token:?} reported twice: {events:?}"
    );
    triggers
}

/// Calls `waker.wake()` `wakes` times from each of `threads` threads at once, and returns
/// when all are done.
pub(super) fn wake_from_threads(waker: &Arc<Waker>, threads: usize, wakes: usize) {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let w = Arc::clone(waker);
            thread::spawn(move || {
                for _ in 0..wakes {
                    w.wake().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
