//! TLS sessions of `tls|` channels: a rustls connection between the socket and the channel's
//! `Connection`, driven by the reactor (`reactor/read.rs`, `reactor/write.rs`).
//!
//! rustls is used sans I/O: the reactor reads ciphertext from the socket into its read
//! buffer and feeds it here ([`Session::feed`]), takes the plaintext it yields
//! ([`Session::plaintext`]) into the frame decoder, and writes what the session wants to send
//! ([`Session::write_tls`]) with its own `writev`. The session never touches the socket.
//!
//! The reactor shares a session with the channel's posting threads ([`Shared`]): once the
//! handshake is over and the channel idle, a posting thread may encrypt and write one
//! frame itself ([`Session::write_direct`], the direct write of `SendState`), holding the
//! channel's write gate and the session's lock.
//!
//! Without the `tls` feature [`Session`] is an empty enum: no value exists, every `tls|`
//! listen or connect is refused before a session is needed, and the reactor's TLS branches
//! compile to nothing.

use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::sys::net::Stream;

/// A channel's session, shared by the reactor and the posting thread that holds the
/// channel's write gate (see `SendState`).
pub(crate) type Shared = Arc<Mutex<Session>>;

/// A new session, to be shared.
pub(crate) fn share(session: Session) -> Shared {
    Arc::new(Mutex::new(session))
}

/// Locks a shared session. A panic while it was locked (none is expected: rustls reports
/// errors as values) leaves a session that fails its next operation, which closes the
/// channel.
pub(crate) fn lock(session: &Shared) -> MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locks a shared session unless a posting thread holds it (it is writing a frame
/// directly, and holds the channel's gate): `None` then.
pub(crate) fn try_lock(session: &Shared) -> Option<MutexGuard<'_, Session>> {
    match session.try_lock() {
        Ok(s) => Some(s),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// How a [`Session::write_direct`] ended: how many bytes of plaintext the session took,
/// whether everything it holds went out, and how many bytes of sealed frames it wrote (see
/// [`Session::take_drained`]).
pub(crate) struct DirectOutcome {
    pub(crate) taken: usize,
    pub(crate) flushed: bool,
    pub(crate) drained: u64,
}

/// How a [`Session::seal`] ended.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))] // made by sessions, which need `tls`
pub(crate) enum Sealed {
    /// The whole frame is encrypted in the session, behind every record made before it,
    /// and written as far as the socket took it; `tell` when the reactor must be told to
    /// write the rest (nothing else was waiting in the session, so nobody may be on the
    /// way to write it).
    All { tell: bool },
    /// Nothing was taken (the handshake is not over, or the session failed): queue the
    /// frame for the reactor as usual.
    Nothing,
}

/// The configurations of an engine's TLS sessions (see `EngineOptions::tls_server` and
/// `tls_client`).
#[derive(Clone, Default)]
pub(crate) struct Configs {
    #[cfg(feature = "tls")]
    pub(crate) server: Option<std::sync::Arc<rustls::ServerConfig>>,
    #[cfg(feature = "tls")]
    pub(crate) client: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Configs {
    /// Why a listen (`server`) or connect on a `tls|` address cannot be served, if it cannot.
    pub(crate) fn missing(&self, server: bool) -> Option<String> {
        #[cfg(feature = "tls")]
        {
            let (have, field) = if server {
                (self.server.is_some(), "tls_server")
            } else {
                (self.client.is_some(), "tls_client")
            };
            if have {
                return None;
            }
            Some(format!(
                "a tls| {} needs a rustls {}: set EngineOptions::{field}",
                if server { "listener" } else { "connect" },
                if server {
                    "ServerConfig"
                } else {
                    "ClientConfig"
                },
            ))
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = server;
            Some("tls| addresses need tofu built with the `tls` feature".to_string())
        }
    }
}

#[cfg(feature = "tls")]
pub(crate) use with_tls::Session;
#[cfg(not(feature = "tls"))]
pub(crate) use without_tls::Session;

#[cfg(feature = "tls")]
mod with_tls {
    use super::*;
    use std::io::{BufRead, Write};

    /// A writer onto a socket, for [`Session::write_tls`].
    pub(crate) struct SocketWriter<'a>(pub(crate) &'a Stream);

    impl io::Write for SocketWriter<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.0.write_vectored(bufs)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Bytes of TLS records rustls may hold encrypted and unsent: the write path flushes
    /// them before it encrypts more from the channel's queue.
    ///
    /// Four full records. rustls allocates a buffer per record and frees it once written;
    /// with 256 KiB here, the buffers freed by one `writev` merged into more than glibc's
    /// trim threshold, so the reactor's heap gave the pages back (`madvise`) and faulted
    /// them in again for the next records: about 6 page faults per 65000-byte message and
    /// 40-70 % more CPU per message than with 64 KiB, where the buffers are reused instead (and
    /// stay in the CPU's cache). See docs/benchmarks.md, "TLS encrypts 64 KiB at a time".
    const SEND_BUFFER: usize = 64 * 1024;

    /// One channel's TLS session.
    pub(crate) struct Session {
        conn: rustls::Connection,
        /// The handshake must be over by then (see `EngineOptions::frame_timeout`): a peer
        /// that connects and dribbles a handshake cannot hold a channel.
        deadline: Option<Instant>,
        /// A server whose client's identity was not taken yet.
        first_frame: bool,
        /// The peer sent close_notify: no more data comes.
        peer_closed: bool,
        /// Bytes of frames posting threads sealed (see [`seal`](Self::seal)) that may still
        /// be in the session: each write takes the bytes it wrote off, and an empty session
        /// none. An estimate from below of what is sealed and unsent (the reactor's records
        /// ahead of sealed ones, at most its 64 KiB, and the records' overhead count as
        /// sealed bytes written), exact once everything went out.
        sealed: u64,
        /// Sealed bytes written since [`take_drained`](Self::take_drained) last asked.
        drained: u64,
        /// Bytes read from the peer, and their count when [`quiet`](Self::quiet) last asked.
        received: u64,
        received_seen: u64,
        /// A seal that put part of a frame into the session (rustls refused the rest: its
        /// keys are spent): nothing more is encrypted, and the reactor closes the channel
        /// with this reason.
        failed: Option<String>,
    }

    impl Session {
        /// A client session that checks the server's certificate against `host`.
        pub(crate) fn client(
            configs: &Configs,
            host: &str,
            deadline: Option<Instant>,
        ) -> Result<Session, String> {
            let config = configs.client.as_ref().ok_or_else(|| {
                configs
                    .missing(false)
                    .unwrap_or_else(|| "no TLS client config".into())
            })?;
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let name = rustls::pki_types::ServerName::try_from(bare.to_string())
                .map_err(|e| format!("{host:?} is not a server name TLS can check: {e}"))?;
            let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                .map_err(|e| format!("TLS client session: {e}"))?;
            Ok(Session::new(conn.into(), deadline, false))
        }

        /// A server session for an accepted connection.
        pub(crate) fn server(
            configs: &Configs,
            deadline: Option<Instant>,
        ) -> Result<Session, String> {
            let config = configs.server.as_ref().ok_or_else(|| {
                configs
                    .missing(true)
                    .unwrap_or_else(|| "no TLS server config".into())
            })?;
            let conn = rustls::ServerConnection::new(Arc::clone(config))
                .map_err(|e| format!("TLS server session: {e}"))?;
            Ok(Session::new(conn.into(), deadline, true))
        }

        fn new(mut conn: rustls::Connection, deadline: Option<Instant>, server: bool) -> Session {
            conn.set_buffer_limit(Some(SEND_BUFFER));
            Session {
                conn,
                deadline,
                first_frame: server,
                peer_closed: false,
                sealed: 0,
                drained: 0,
                received: 0,
                received_seen: 0,
                failed: None,
            }
        }

        pub(crate) fn is_handshaking(&self) -> bool {
            self.conn.is_handshaking()
        }

        /// When the handshake must be over, while it is not.
        pub(crate) fn deadline(&self) -> Option<Instant> {
            self.deadline.filter(|_| self.conn.is_handshaking())
        }

        /// Takes ciphertext from the front of `input` and processes it; how many bytes it
        /// took (0 once the peer closed: the rest is ignored). Call
        /// [`plaintext`](Self::plaintext) until it is empty before feeding more.
        pub(crate) fn feed(&mut self, input: &mut &[u8]) -> Result<usize, String> {
            let n = match self.conn.read_tls(input) {
                Ok(n) => n,
                Err(e) => return Err(format!("TLS: {e}")),
            };
            self.received += n as u64;
            match self.conn.process_new_packets() {
                Ok(state) => {
                    self.peer_closed |= state.peer_has_closed();
                    Ok(n)
                }
                Err(e) => Err(format!("TLS: {e}")),
            }
        }

        /// The next piece of decrypted bytes, if any; [`consume`](Self::consume) it.
        pub(crate) fn plaintext(&mut self) -> Option<&[u8]> {
            match self.conn.reader().into_first_chunk() {
                Ok(b) if !b.is_empty() => Some(b),
                _ => None,
            }
        }

        pub(crate) fn consume(&mut self, n: usize) {
            self.conn.reader().consume(n);
        }

        /// The peer ended its side with a close_notify alert.
        pub(crate) fn peer_closed(&self) -> bool {
            self.peer_closed
        }

        pub(crate) fn wants_write(&self) -> bool {
            self.conn.wants_write()
        }

        /// Writes encrypted records to the socket (one `writev`).
        pub(crate) fn write_tls(&mut self, socket: &Stream) -> io::Result<usize> {
            let n = self.conn.write_tls(&mut SocketWriter(socket))?;
            let done = if self.conn.wants_write() {
                self.sealed.min(n as u64)
            } else {
                self.sealed
            };
            self.sealed -= done;
            self.drained += done;
            Ok(n)
        }

        /// Bytes of sealed frames written since the last call (for the channel's send
        /// queue count, see `SendState::sealed_written`).
        pub(crate) fn take_drained(&mut self) -> u64 {
            std::mem::take(&mut self.drained)
        }

        /// True when nothing came from the peer since the last call. A channel that carries
        /// traffic both ways is not sealed on: its posting threads and the reactor, which
        /// decrypts what arrives, would take turns at the one session instead of working at
        /// once (65000-byte requests echoed on one channel ran at 8-10 k/s sealed against
        /// 10-12 k/s not).
        pub(crate) fn quiet(&mut self) -> bool {
            let quiet = self.received == self.received_seen;
            self.received_seen = self.received;
            quiet
        }

        /// Why the session cannot go on, once a seal failed half-way (the reactor closes
        /// the channel).
        pub(crate) fn failure(&self) -> Option<String> {
            self.failed.clone()
        }

        /// A posting thread's seal of one frame while the reactor holds the channel's
        /// gate: the whole frame is encrypted into the session, behind the records in it,
        /// whatever the session's buffer limit (the channel's send limit bounds what is
        /// sealed, see `SendState::seal`), and the session's records are written to `socket`
        /// until it is full. Every write of a TLS channel's socket is made under the
        /// session's lock, so this thread's `writev` cannot interleave with another's. The
        /// frame's bytes count as sealed until written.
        pub(crate) fn seal(&mut self, parts: [&[u8]; 3], socket: &Stream) -> Sealed {
            if self.conn.is_handshaking() || self.failed.is_some() {
                return Sealed::Nothing;
            }
            let alone = !self.conn.wants_write();
            let total: usize = parts.iter().map(|b| b.len()).sum();
            self.conn.set_buffer_limit(None);
            let mut done = 0;
            // rustls takes a frame in two parts when its keys must be updated in between.
            while done < total {
                let mut iov = [IoSlice::new(&[]); 3];
                let mut skip = done;
                let mut k = 0;
                for p in parts {
                    if skip >= p.len() {
                        skip -= p.len();
                    } else {
                        iov[k] = IoSlice::new(&p[skip..]);
                        skip = 0;
                        k += 1;
                    }
                }
                match self.write_plain(&iov[..k]) {
                    Ok(n) if n > 0 => done += n,
                    _ => break,
                }
            }
            self.conn.set_buffer_limit(Some(SEND_BUFFER));
            if done == 0 {
                return Sealed::Nothing;
            }
            self.sealed += done as u64;
            if done < total {
                // Not seen in practice. The message counts as sent, like one written
                // before a failing socket; the channel closes with this reason.
                self.failed = Some(format!(
                    "TLS: the session took {done} of a frame's {total} bytes"
                ));
                return Sealed::All { tell: true };
            }
            // Errors are left for the reactor, which meets them again on its next write.
            while self.conn.wants_write() {
                match self.write_tls(socket) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            // Records left behind others were left by the reactor, which writes them and
            // these once the socket takes more, or will be told to.
            Sealed::All {
                tell: alone && self.conn.wants_write(),
            }
        }

        /// Encrypts as much of `bufs` as the session's buffer takes; how much it took.
        pub(crate) fn write_plain(&mut self, bufs: &[IoSlice<'_>]) -> Result<usize, String> {
            self.conn
                .writer()
                .write_vectored(bufs)
                .map_err(|e| format!("TLS: {e}"))
        }

        /// A posting thread's direct write of one frame (`bufs`): encrypts what the
        /// session's buffer takes, then writes every record the session holds (records the
        /// reactor made first: they are older) until the socket is full. Errors are left for
        /// the reactor, which meets them again on its next write and closes the channel.
        pub(crate) fn write_direct(
            &mut self,
            socket: &Stream,
            bufs: &[IoSlice<'_>],
        ) -> DirectOutcome {
            let taken = if self.conn.is_handshaking() || self.failed.is_some() {
                0
            } else {
                self.write_plain(bufs).unwrap_or(0)
            };
            while self.conn.wants_write() {
                match self.write_tls(socket) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            DirectOutcome {
                taken,
                flushed: !self.conn.wants_write(),
                drained: self.take_drained(),
            }
        }

        /// What the verified client certificate names (see `message::PEER_IDENTITY`), once
        /// the handshake has ended; asked again, `None`. `None` for a client session and when
        /// the client presented no certificate.
        pub(crate) fn take_identity(&mut self) -> Option<String> {
            if !std::mem::take(&mut self.first_frame) {
                return None;
            }
            let cert = self.conn.peer_certificates()?.first()?;
            Some(identity(cert.as_ref()))
        }
    }

    /// `CN=<subject common name>` and `DNS=<name>` for each DNS name of the subject
    /// alternative names, separated by `, `; `unparsed` for a certificate webpki cannot read
    /// (rustls verified it, so that does not happen).
    pub(crate) fn identity(der: &[u8]) -> String {
        let der = rustls::pki_types::CertificateDer::from(der);
        let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
            return "unparsed".to_string();
        };
        let mut parts = Vec::new();
        if let Some(cn) = common_name(cert.subject()) {
            parts.push(format!("CN={cn}"));
        }
        for name in cert.valid_dns_names() {
            parts.push(format!("DNS={name}"));
        }
        parts.join(", ")
    }

    /// The first common name (OID 2.5.4.3) of a DER subject (the `Name` SEQUENCE's content:
    /// SETs of SEQUENCEs of OID and value), as text; `None` when there is none.
    fn common_name(mut subject: &[u8]) -> Option<String> {
        const CN: &[u8] = &[0x55, 0x04, 0x03];
        while let Some((0x31, set, rest)) = der_next(subject) {
            subject = rest;
            let mut atvs = set;
            while let Some((0x30, atv, rest)) = der_next(atvs) {
                atvs = rest;
                let Some((0x06, oid, value)) = der_next(atv) else {
                    continue;
                };
                if oid == CN {
                    let (_, text, _) = der_next(value)?;
                    let text = String::from_utf8_lossy(text);
                    // A header value is one line.
                    return Some(text.replace(['\r', '\n'], " "));
                }
            }
        }
        None
    }

    /// Splits one DER element off `input`: (tag, content, rest).
    fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |l, &b| (l << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn der_walk_finds_the_common_name_and_stops_on_truncation() {
            // SET { SEQUENCE { OID 2.5.4.6 (C), PrintableString "DE" } },
            // SET { SEQUENCE { OID 2.5.4.3 (CN), UTF8String "node-1" } }
            let subject = [
                0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02, b'D', b'E', 0x31,
                0x0f, 0x30, 0x0d, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x06, b'n', b'o', b'd', b'e',
                b'-', b'1',
            ];
            assert_eq!(common_name(&subject).as_deref(), Some("node-1"));
            assert_eq!(common_name(&subject[..13]), None, "no CN in the first SET");
            assert_eq!(
                common_name(&subject[..20]),
                None,
                "truncated: no panic, no name"
            );
            assert_eq!(
                der_next(&[0x30, 0x85, 1, 1, 1, 1, 1]),
                None,
                "length too long"
            );
        }
    }
}

#[cfg(not(feature = "tls"))]
mod without_tls {
    use super::*;

    /// No TLS in this build: no session exists (see the module comment).
    pub(crate) enum Session {}

    impl Session {
        pub(crate) fn client(
            configs: &Configs,
            _host: &str,
            _deadline: Option<Instant>,
        ) -> Result<Session, String> {
            Err(configs.missing(false).unwrap_or_default())
        }

        pub(crate) fn server(
            configs: &Configs,
            _deadline: Option<Instant>,
        ) -> Result<Session, String> {
            Err(configs.missing(true).unwrap_or_default())
        }

        pub(crate) fn is_handshaking(&self) -> bool {
            match *self {}
        }

        pub(crate) fn deadline(&self) -> Option<Instant> {
            match *self {}
        }

        pub(crate) fn feed(&mut self, _input: &mut &[u8]) -> Result<usize, String> {
            match *self {}
        }

        pub(crate) fn plaintext(&mut self) -> Option<&[u8]> {
            match *self {}
        }

        pub(crate) fn consume(&mut self, _n: usize) {
            match *self {}
        }

        pub(crate) fn peer_closed(&self) -> bool {
            match *self {}
        }

        pub(crate) fn wants_write(&self) -> bool {
            match *self {}
        }

        pub(crate) fn write_tls(&mut self, _socket: &Stream) -> io::Result<usize> {
            match *self {}
        }

        pub(crate) fn write_plain(&mut self, _bufs: &[IoSlice<'_>]) -> Result<usize, String> {
            match *self {}
        }

        pub(crate) fn take_drained(&mut self) -> u64 {
            match *self {}
        }

        pub(crate) fn failure(&self) -> Option<String> {
            match *self {}
        }

        pub(crate) fn quiet(&mut self) -> bool {
            match *self {}
        }

        pub(crate) fn seal(&mut self, _parts: [&[u8]; 3], _socket: &Stream) -> Sealed {
            match *self {}
        }

        pub(crate) fn write_direct(
            &mut self,
            _socket: &Stream,
            _bufs: &[IoSlice<'_>],
        ) -> DirectOutcome {
            match *self {}
        }

        pub(crate) fn take_identity(&mut self) -> Option<String> {
            match *self {}
        }
    }
}
