//! The registrations of a [`Poller`](super::Poller), kept once for every backend.
//!
//! The [`Registry`] owns the rules of the contract (module docs of `poller`) that do not
//! depend on the OS: reserved tokens and interests are rejected, a token is registered once
//! and only with its own socket, an unchanged `reregister` is a map lookup, and `deregister`
//! of what is not registered succeeds. Only what passes those rules and changes something
//! reaches the backend, through its [`Registrar`]: the OS side alone (an `epoll_ctl`, an AFD
//! poll, or nothing for `poll(2)`, which reads the map at each wait). A change is recorded
//! only once the backend has made it, so a failed syscall leaves the registration as it was.

use std::collections::HashMap;
use std::io;

use super::{RawSocket, Token, Triggers};

/// What the poller remembers about one registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Registration {
    pub(super) socket: RawSocket,
    pub(super) interest: Triggers,
}

/// The OS side of registering, one implementation per backend.
///
/// Called by the [`Registry`] only after it has validated the change, and only when the
/// change is real; an error leaves the registry as it was.
pub(super) trait Registrar {
    /// Starts watching `socket` for `interest` under `token`, which is not registered.
    fn add(&mut self, socket: RawSocket, token: Token, interest: Triggers) -> io::Result<()>;

    /// Changes the interest of the registration `token` of `socket` from `old` to `new`
    /// (never equal).
    fn modify(
        &mut self,
        socket: RawSocket,
        token: Token,
        old: Triggers,
        new: Triggers,
    ) -> io::Result<()>;

    /// Stops watching `socket`, registered under `token`. The socket may already have been
    /// closed: that is not an error.
    fn remove(&mut self, socket: RawSocket, token: Token) -> io::Result<()>;
}

/// The token-keyed registration map and the bookkeeping around the backend's calls.
#[derive(Debug, Default)]
pub(super) struct Registry {
    map: HashMap<Token, Registration>,
}

impl Registry {
    /// [`Poller::register`](super::Poller::register): validates, lets `os` watch the socket,
    /// records the registration.
    pub(super) fn register(
        &mut self,
        os: &mut dyn Registrar,
        socket: RawSocket,
        token: Token,
        interest: Triggers,
    ) -> io::Result<()> {
        if token == Token::WAKER || token == Token::RESERVED {
            return Err(invalid_input("poller: reserved token"));
        }
        check_interest(interest)?;
        if self.map.contains_key(&token) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "poller: token already registered",
            ));
        }
        os.add(socket, token, interest)?;
        self.map.insert(token, Registration { socket, interest });
        Ok(())
    }

    /// [`Poller::reregister`](super::Poller::reregister): `os` hears only of a changed
    /// interest.
    pub(super) fn reregister(
        &mut self,
        os: &mut dyn Registrar,
        socket: RawSocket,
        token: Token,
        interest: Triggers,
    ) -> io::Result<()> {
        check_interest(interest)?;
        let Some(reg) = self.lookup(socket, token)? else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "poller: token not registered",
            ));
        };
        // The reactor reregisters every channel it touched on every loop iteration: the
        // unchanged case must stay this lookup, without a syscall.
        if reg.interest == interest {
            return Ok(());
        }
        os.modify(socket, token, reg.interest, interest)?;
        reg.interest = interest;
        Ok(())
    }

    /// [`Poller::deregister`](super::Poller::deregister): idempotent; `os` hears only of a
    /// registered socket.
    pub(super) fn deregister(
        &mut self,
        os: &mut dyn Registrar,
        socket: RawSocket,
        token: Token,
    ) -> io::Result<()> {
        if self.lookup(socket, token)?.is_none() {
            return Ok(());
        }
        os.remove(socket, token)?;
        self.map.remove(&token);
        Ok(())
    }

    /// The registration of `token`, if any; `InvalidInput` if it is another socket's.
    fn lookup(&mut self, socket: RawSocket, token: Token) -> io::Result<Option<&mut Registration>> {
        match self.map.get_mut(&token) {
            Some(reg) if reg.socket != socket => Err(invalid_input(
                "poller: token registered with another socket",
            )),
            found => Ok(found),
        }
    }

    #[cfg(unix)]
    pub(super) fn get(&self, token: Token) -> Option<Registration> {
        self.map.get(&token).copied()
    }

    #[cfg(unix)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (Token, Registration)> + '_ {
        self.map.iter().map(|(t, r)| (*t, *r))
    }

    #[cfg(unix)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

fn invalid_input(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn check_interest(interest: Triggers) -> io::Result<()> {
    if Triggers::INTEREST.contains(interest) {
        Ok(())
    } else {
        Err(invalid_input(
            "poller: interest may only contain ACCEPT, CONNECT, SEND, RECV",
        ))
    }
}
