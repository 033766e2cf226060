//! The read side: accepting connections, reading sockets into the channel's `Connection`
//! (small whole frames handed to the application as bytes), pausing a channel the pool
//! cannot serve and resuming it, and the frame timeout.

use std::cell::Cell;

use super::*;

impl Reactor {
    /// Closes channels whose peer started a frame and then sent nothing for the frame
    /// timeout (a slowloris peer would otherwise hold the channel and its receive message
    /// forever); the connection decides, the reactor only asks the ones that owe bytes.
    pub(super) fn expire_partial(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.partial.len() {
            let number = self.partial[i];
            let Some(ch) = self.channels.get_mut(&number) else {
                self.partial.swap_remove(i);
                continue;
            };
            let Kind::Io(io) = &mut ch.kind else {
                self.partial.swap_remove(i);
                continue;
            };
            if io.deadline().is_none() || ch.closing.is_some() {
                io.in_partial = false;
                self.partial.swap_remove(i);
                continue;
            }
            if io
                .tls
                .as_ref()
                .and_then(|s| tls::lock(s).deadline())
                .is_some_and(|at| at <= now)
            {
                tracing::debug!(channel = number, "TLS handshake timed out");
                io.in_partial = false;
                self.partial.swap_remove(i);
                let why = "TLS handshake not completed within the frame timeout".to_string();
                mark_because(&mut self.marked, ch, Status::TlsFailed, why);
                continue;
            }
            if let Some(status) = io.conn.handle_timeout(now) {
                tracing::debug!(channel = number, "incomplete frame timed out");
                io.in_partial = false;
                self.partial.swap_remove(i);
                mark(&mut self.marked, ch, status);
                continue;
            }
            i += 1;
        }
    }

    /// Lists a channel with a deadline (a frame timeout or a TLS handshake) for
    /// `expire_partial`.
    pub(super) fn watch_deadline(&mut self, number: u16) {
        if let Some(ch) = self.channels.get_mut(&number) {
            if let Kind::Io(io) = &mut ch.kind {
                if !io.in_partial && io.deadline().is_some() {
                    io.in_partial = true;
                    self.partial.push(number);
                }
            }
        }
    }

    pub(super) fn accept(&mut self, number: u16) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let Some(ch) = self.channels.get(&number) else {
                return;
            };
            let Kind::Listener(l) = &ch.kind else { return };
            let tls = l.tls;
            let stream = match l.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    // Out of descriptors or memory: the pending connection stays pending and
                    // level-triggered readiness would spin. Stop watching for a while.
                    tracing::warn!(listener = number, error = %e, "accept failed; backing off");
                    if let Some(ch) = self.channels.get_mut(&number) {
                        if let Kind::Listener(l) = &mut ch.kind {
                            l.paused = true;
                        }
                        touch(&mut self.touched, ch);
                        self.paused.push((Instant::now() + ACCEPT_BACKOFF, number));
                    }
                    return;
                }
            };
            let group = Arc::clone(&ch.group);
            let Some(new) = self.shared.lock_table().allocate(group.id) else {
                tracing::warn!(
                    listener = number,
                    "no free channel number; connection dropped"
                );
                continue;
            };
            tracing::debug!(listener = number, channel = new, peer = %stream.peer_string(), tls, "accepted");
            let session = if tls {
                let deadline = self.frame_timeout.map(|t| Instant::now() + t);
                match Session::server(&self.shared.tls, deadline) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        // The config is checked at listen: this does not happen.
                        tracing::warn!(listener = number, error = %e, "TLS session not made; connection dropped");
                        self.shared.lock_table().release(new);
                        continue;
                    }
                }
            } else {
                None
            };
            let conn = Connection::new(0, self.frame_timeout);
            let mut io = Io::new(stream, conn, true, session);
            io.first_in = true;
            let in_handshake = io.tls.is_some() && self.frame_timeout.is_some();
            self.insert(new, group, Kind::Io(Box::new(io)));
            if in_handshake {
                self.watch_deadline(new);
            }
        }
    }

    /// Reads and decodes until the socket is drained, the per-event budget is spent, the
    /// pool runs dry, or the channel must close. A TLS channel's bytes go through its
    /// session first (see `engine/tls.rs`); what the session wants to send (handshake
    /// records, the Hello it held back) is written before returning.
    pub(super) fn read(&mut self, number: u16) -> ReadEnd {
        let Some(ch) = self.channels.get_mut(&number) else {
            return ReadEnd::NotRead;
        };
        let Kind::Io(io) = &mut ch.kind else {
            return ReadEnd::NotRead;
        };
        if io.starving || io.conn.bye_received() {
            return ReadEnd::NotRead;
        }
        let Io {
            stream,
            conn,
            tls,
            hangup,
            first_in,
            identity,
            starving,
            in_partial,
            ..
        } = &mut **io;
        let pool = &self.shared.pool;
        let spare = &mut self.spare;
        // Frames decoded and not yet counted in the group (counted per batch by `hold`).
        let pending = std::cell::Cell::new(0);
        let group = &ch.group;
        let mut supply = || take_spare(spare, pool, group, pending.get());
        let out = RefCell::new((&mut self.deliveries, &mut self.outbox));
        let allowed = || group.receive_room(pending.get());
        // Small frames received whole go to the application as chunks it decodes itself
        // (see `Frames`), as many as it may still hold; after the messages before them.
        let mut take = |bytes: &[u8], k: usize| {
            let (d, o) = &mut *out.borrow_mut();
            hold(pool, group, d);
            pending.set(0);
            o.extend(group, d);
            let mut chunk = pool.buffers().get();
            chunk.reserve(bytes.len());
            chunk.extend_from_slice(bytes);
            group.hold(k, chunk.len());
            o.push_frames(group, Frames::new(pool, chunk, k, number));
        };
        // True until the peer's first frame on an accepted channel is delivered.
        let first = Cell::new(*first_in);
        // A TLS client's verified names, once the handshake has ended, for that frame.
        let who = Cell::new(identity.take());
        let mut deliver = |mut m: Message| {
            m.header.channel = number;
            if first.replace(false) {
                // The peer's first frame on an accepted channel: local-only headers are not
                // the peer's to send; a TLS client's verified names are added.
                notify::strip_header(&mut m, PEER_IDENTITY);
                if let Some(who) = who.take() {
                    notify::add_header(&mut m, PEER_IDENTITY, &who);
                }
            }
            pending.set(pending.get() + 1);
            out.borrow_mut().0.push(m);
        };
        let now = self.now;
        // Decodes plaintext; the first frame of an accepted channel is decoded here (never
        // handed over whole) so that `deliver` sees it.
        let mut decode = |conn: &mut Connection, bytes: &[u8], first: bool| {
            let whole = (!first).then_some(Whole {
                max_len: WHOLE_MAX,
                allowed: &allowed,
                take: &mut take,
            });
            conn.handle_read(bytes, now, &mut supply, &mut deliver, whole)
        };
        let mut outcome = None;
        let mut why = None;
        let mut end = ReadEnd::Budget;
        for _ in 0..READS_PER_EVENT {
            let n = match stream.read(&mut self.read_buf) {
                Ok(0) => {
                    outcome = Some(conn.link_end(Status::PeerDisconnected));
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    end = ReadEnd::WouldBlock;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(channel = number, error = %e, "receive failed");
                    let end = conn.link_end(Status::RecvFailed);
                    // No words for the reset that ends a Bye exchange: it is no failure.
                    why = (end == Status::RecvFailed).then(|| e.to_string());
                    outcome = Some(end);
                    break;
                }
            };
            let input = &self.read_buf[..n];
            if first.get() && tls.is_none() && !conn.is_mid_frame() && is_tls_client_hello(input) {
                // Waiting for the rest of this "frame" would take the frame timeout, and
                // the peer's handshake would wait as long: say at once what is wrong.
                tracing::debug!(channel = number, "a TLS client at a plain listener");
                outcome = Some(Status::InvalidMessage);
                why = Some(
                    "the peer began a TLS handshake (a ClientHello) on a plain connection: a \
                     tls| client needs a tls| listener"
                        .to_string(),
                );
                break;
            }
            let r = match tls.as_ref() {
                None => decode(conn, input, first.get()),
                Some(session) => {
                    let mut session = tls::lock(session);
                    match decrypt(&mut session, conn, input, (&first, &who), &mut decode) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(channel = number, error = %e, "TLS failed");
                            // Best effort: the alert rustls made tells the peer why.
                            let _ = session.write_tls(stream);
                            outcome = Some(Status::TlsFailed);
                            why = Some(e);
                            break;
                        }
                    }
                }
            };
            match r {
                // A short read almost always means the socket is drained; level-triggered
                // readiness (or a re-armed one-shot poll) reports any rest. After a hang-up,
                // read on to the end of stream to learn how it ended.
                Ok(RecvStop::Drained) if n < self.read_buf.len() && !*hangup => {
                    end = ReadEnd::WouldBlock;
                    break;
                }
                Ok(RecvStop::Drained) => {}
                Ok(RecvStop::Starved) => {
                    // Read interest is dropped until the group's application receives (see
                    // reconcile and `retry_starved`).
                    tracing::debug!(channel = number, "group's receive limit: reading paused");
                    *starving = true;
                    starve(&mut self.starved, group, number);
                    end = ReadEnd::Starved;
                    break;
                }
                Ok(RecvStop::ByeResponse) => {
                    tracing::debug!(channel = number, "ByeResponse received; closing");
                    outcome = Some(Status::ChannelClosed);
                    break;
                }
                Err(e) => {
                    tracing::debug!(channel = number, error = %e, "peer sent an invalid frame");
                    outcome = Some(e.status());
                    why = Some(e.to_string());
                    break;
                }
            }
        }
        if outcome.is_none() && tls.as_ref().is_some_and(|s| tls::lock(s).peer_closed()) {
            outcome = Some(Status::PeerDisconnected);
        }
        *first_in = first.get();
        *identity = who.take();
        if !*in_partial && conn.poll_timeout().is_some() {
            *in_partial = true;
            self.partial.push(number);
        }
        hold(pool, &ch.group, &mut self.deliveries);
        self.outbox.extend(&ch.group, &mut self.deliveries);
        if let Some(status) = outcome {
            match why {
                Some(why) => mark_because(&mut self.marked, ch, status, why),
                None => mark(&mut self.marked, ch, status),
            }
            return ReadEnd::Closed;
        }
        if io_wants_tls_write(ch) {
            // Handshake records to answer, or the handshake ended and the Hello may go.
            write_channel(ch, &mut self.writer, self.shared.pool.buffers());
            if ch.closing.is_some() {
                return ReadEnd::Closed;
            }
        }
        end
    }

    /// Resumes reading the channels paused for room whose group has room again. Per
    /// group, in order, until one starves again: then there is no room for the rest of that
    /// group either (they wait, and that one goes last, so each gets its turn). A group
    /// still without room costs one check, however many of its channels wait.
    pub(super) fn retry_starved(&mut self) {
        if self.starved.is_empty() {
            return;
        }
        let mut starved = std::mem::take(&mut self.starved);
        for (group, numbers) in &mut starved {
            if group.is_destroyed() {
                numbers.clear(); // its channels are closed; its frames are gone
                continue;
            }
            if numbers.is_empty() || group.receive_room(0) == 0 {
                continue;
            }
            let waiting = std::mem::take(numbers);
            let mut again = None;
            for (i, &number) in waiting.iter().enumerate() {
                if again.is_some() {
                    break;
                }
                match self.resume(number) {
                    Resumed::Starved => again = Some(i),
                    Resumed::Reading | Resumed::Gone => {}
                }
            }
            if let Some(i) = again {
                numbers.extend_from_slice(&waiting[i + 1..]);
                numbers.push(waiting[i]);
            }
        }
        starved.retain(|(_, numbers)| !numbers.is_empty());
        // Channels that starved meanwhile (none do: `resume` keeps its own) come after.
        starved.append(&mut self.starved);
        self.starved = starved;
    }

    /// Delivers what channel `number` decoded before it starved, as far as its group has
    /// room; reading resumes once all of it is delivered.
    fn resume(&mut self, number: u16) -> Resumed {
        let Some(ch) = self.channels.get_mut(&number) else {
            return Resumed::Gone;
        };
        let Kind::Io(io) = &mut ch.kind else {
            return Resumed::Gone;
        };
        let pool = &self.shared.pool;
        let deliveries = &mut self.deliveries;
        let spare = &mut self.spare;
        let group = &ch.group;
        let pending = std::cell::Cell::new(0);
        let r = io.conn.resume(
            &mut || take_spare(spare, pool, group, pending.get()),
            &mut |mut m| {
                m.header.channel = number;
                pending.set(pending.get() + 1);
                deliveries.push(m);
            },
        );
        let mut close = None;
        let mut end = Resumed::Reading;
        match r {
            Ok(RecvStop::Starved) => end = Resumed::Starved,
            Ok(RecvStop::Drained) => {
                tracing::debug!(channel = number, "reading resumed");
                io.starving = false;
                touch(&mut self.touched, ch);
            }
            Ok(RecvStop::ByeResponse) => close = Some(Status::ChannelClosed),
            Err(e) => close = Some(e.status()),
        }
        hold(pool, &ch.group, &mut self.deliveries);
        self.outbox.extend(&ch.group, &mut self.deliveries);
        if let Some(s) = close {
            mark(&mut self.marked, ch, s);
        }
        end
    }
}

/// Lists channel `number` of `group` as paused for room (see `retry_starved`).
fn starve(starved: &mut Starved, group: &Arc<GroupShared>, number: u16) {
    match starved.iter_mut().find(|(g, _)| Arc::ptr_eq(g, group)) {
        Some((_, numbers)) => numbers.push(number),
        None => starved.push((Arc::clone(group), vec![number])),
    }
}

/// What [`Reactor::resume`] did.
enum Resumed {
    /// Its group ran out of room again: it stays paused.
    Starved,
    /// Everything it held is delivered: it reads again.
    Reading,
    /// No such data channel any more.
    Gone,
}

/// Marks received frames as held and counts them as waiting in `group`'s queues.
fn hold(pool: &crate::engine::pool::Pool, group: &GroupShared, msgs: &mut [Message]) {
    let (n, bytes) = pool.hold_all(msgs);
    group.hold(n, bytes);
}

/// Feeds the ciphertext `input` to a TLS session and decodes the plaintext it yields. All of
/// `input` is taken (the read buffer is shared): after a starvation the decoder stashes the
/// rest. Stops at a ByeResponse or a bad frame (the channel closes), and at the peer's
/// close_notify (nothing after it counts). `Err` is a TLS failure, in rustls's words. A
/// server's session gives the client's verified names to `who` when the handshake ends,
/// before the first frame is decoded.
fn decrypt(
    session: &mut Session,
    conn: &mut Connection,
    mut input: &[u8],
    (first, who): (&Cell<bool>, &Cell<Option<String>>),
    decode: &mut Decode<'_>,
) -> Result<Result<RecvStop, DecodeError>, String> {
    let mut stop = RecvStop::Drained;
    while !input.is_empty() {
        if session.feed(&mut input)? == 0 {
            break;
        }
        if !session.is_handshaking() {
            if let Some(names) = session.take_identity() {
                who.set(Some(names));
            }
        }
        while let Some(plain) = session.plaintext() {
            let k = plain.len();
            // `first` changes as frames are delivered: read it for every piece.
            let r = decode(conn, plain, first.get());
            session.consume(k);
            match r {
                Ok(RecvStop::Drained) => {}
                Ok(RecvStop::Starved) => stop = RecvStop::Starved,
                other => return Ok(other),
            }
        }
    }
    Ok(Ok(stop))
}

/// Decodes plaintext into a channel's connection: (connection, bytes, first frame pending).
type Decode<'a> = dyn FnMut(&mut Connection, &[u8], bool) -> Result<RecvStop, DecodeError> + 'a;

/// How a [`Reactor::read`] ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadEnd {
    NotRead,
    WouldBlock,
    Budget,
    Starved,
    Closed,
}

/// A message to receive into, while the receiving group's limit allows (`pending` frames
/// are decoded and not yet counted): a spare one, else from the pool.
pub(super) fn take_spare(
    spare: &mut Vec<Message>,
    pool: &crate::engine::pool::Pool,
    group: &GroupShared,
    pending: usize,
) -> Option<Message> {
    if !group.may_receive(pending) {
        return None;
    }
    if spare.is_empty() {
        pool.for_receive(REFILL_BATCH, spare);
    }
    spare.pop()
}
