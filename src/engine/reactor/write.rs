//! The write side: what posting threads queued goes into the channel's `Connection`, and
//! as much of it as the socket takes is written with one `writev` per batch; written
//! messages are kept for receiving or given back to the pool.

use super::*;

impl Reactor {
    pub(super) fn write_scheduled(&mut self) {
        let to_write = std::mem::take(&mut self.to_write);
        for &number in &to_write {
            let Some(ch) = self.channels.get_mut(&number) else {
                continue;
            };
            if let Kind::Io(io) = &mut ch.kind {
                io.scheduled = false;
            }
            let blocked = matches!(&ch.kind, Kind::Io(io) if io.write_blocked);
            if ch.closing.is_none() && !blocked {
                // A write-blocked channel waits for SEND readiness instead of a failing writev.
                write_channel(ch, &mut self.writer, self.shared.pool.buffers());
                touch(&mut self.touched, ch);
                if ch.closing.is_some() {
                    self.marked.push(number);
                }
            }
        }
        self.to_write = to_write;
        self.to_write.clear();
        self.recycle_sent();
    }

    /// Written messages: keep some for receiving, return the rest to the pool in one go;
    /// written run buffers go back to the engine's spares.
    pub(super) fn recycle_sent(&mut self) {
        let w = &mut self.writer;
        for (group, msg, status) in w.refused.drain(..) {
            hand_back(&mut self.outbox, &group, msg, status);
        }
        self.shared.pool.buffers().put_all(&mut w.spent);
        if w.sent.is_empty() {
            return;
        }
        let mut i = 0;
        while i < w.sent.len() && self.spare.len() < SPARE_MAX {
            if self.shared.pool.owns(&w.sent[i]) {
                self.spare.push(w.sent.swap_remove(i));
            } else {
                i += 1;
            }
        }
        self.shared.pool.put_all(&mut w.sent);
    }
}

/// Scratch state of the write path, kept across loop iterations.
pub(super) struct Writer {
    /// Where small frames are copied to be written as one slice (see `Connection::gather`).
    pub(super) stage: Vec<u8>,
    /// Messages whose frames were written, waiting to be reused or pooled.
    pub(super) sent: Vec<Message>,
    /// What is taken from a channel's `Outbound` on its way into the connection.
    pub(super) pending: VecDeque<Pending>,
    /// Buffers of written runs, for the engine's spares.
    pub(super) spent: Vec<Vec<u8>>,
    /// Messages the connection refused (cannot happen for validated posts), to hand back.
    pub(super) refused: Vec<(Arc<GroupShared>, Message, Status)>,
    /// Frames completely written since the reactor last woke up.
    pub(super) frames: u64,
}

/// Writes as much of the channel's queue as the socket takes, one `writev` per batch. First
/// takes what posting threads queued since (see `Outbound`).
pub(super) fn write_channel(ch: &mut Channel, w: &mut Writer, bufs: &crate::engine::pool::Buffers) {
    if !ch.send.take_gate() {
        // A posting thread is writing (it asks the reactor to write when done) or handing a
        // started frame over (its command follows).
        return;
    }
    let Kind::Io(io) = &mut ch.kind else { return };
    if !io.connected {
        return; // taken once connected
    }
    ch.send.take_outbound(&mut w.pending, bufs);
    for p in w.pending.drain(..) {
        match p {
            Pending::Run { bytes, frames } => io.conn.enqueue_run(bytes, frames),
            Pending::Message(msg) => {
                if let Err((e, msg)) = io.conn.enqueue(msg) {
                    ch.send.sub(1, encoded_len(&msg) as u64);
                    w.refused.push((Arc::clone(&ch.group), msg, e.status()));
                }
            }
        }
    }
    if io.conn.bye_queued() {
        ch.send.keep_gate(); // no direct write once a bye-type frame is queued
    }
    let before = w.sent.len();
    write_queue(ch, &mut w.stage, &mut w.sent);
    if let Kind::Io(io) = &mut ch.kind {
        let done = io.conn.take_completed();
        if done.frames > 0 {
            // The buffers of pool-less messages written here go back to their sender.
            ch.send
                .sub_written(done.frames, done.bytes, &mut w.sent, before);
            w.frames += done.frames;
            io.written += done.frames;
        }
        io.conn.take_spent(&mut w.spent);
    }
}

pub(super) fn write_queue(ch: &mut Channel, stage: &mut Vec<u8>, sent: &mut Vec<Message>) {
    let Kind::Io(io) = &mut ch.kind else { return };
    if !io.connected {
        return;
    }
    if io.tls.is_some() {
        if let Err((status, why)) = write_tls(io, &ch.send, stage, sent) {
            tracing::debug!(channel = ch.number, error = %why, "send failed");
            if ch.closing.is_none() {
                ch.closing = Some(status);
                ch.why = Some(why);
            }
        }
        return;
    }
    loop {
        if !io.conn.wants_send() {
            io.write_blocked = false;
            return;
        }
        let mut iov = [IoSlice::new(&[]); IOV_LEN];
        let n = io.conn.gather(stage, &mut iov);
        let offered: usize = iov[..n].iter().map(|s| s.len()).sum();
        match io.stream.write_vectored(&iov[..n]) {
            Ok(w) => {
                io.conn.advance(w, sent);
                if w < offered {
                    // The socket buffer is full: wait for writability.
                    io.write_blocked = true;
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.write_blocked = true;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(channel = ch.number, error = %e, "send failed");
                if ch.closing.is_none() {
                    ch.closing = Some(Status::SendFailed);
                    ch.why = Some(e.to_string());
                }
                return;
            }
        }
    }
}

/// [`write_queue`] for a TLS channel: what the session holds goes out first; then frames are
/// encrypted (gathered as for plain TCP, so small frames share records) and written, until
/// the socket is full or nothing is left. No frame goes before the handshake has ended.
/// The bytes of sealed frames written leave the channel's send queue (see
/// `SendState::seal`).
fn write_tls(
    io: &mut Io,
    send: &SendState,
    stage: &mut Vec<u8>,
    sent: &mut Vec<Message>,
) -> Result<(), (Status, String)> {
    let Some(session) = io.tls.as_ref() else {
        return Ok(());
    };
    let mut session = tls::lock(session);
    let r = match session.failure() {
        Some(why) => Err((Status::TlsFailed, why)),
        None => write_session(
            &mut session,
            io.stream.as_ref(),
            &mut io.conn,
            &mut io.write_blocked,
            stage,
            sent,
        ),
    };
    let drained = session.take_drained();
    drop(session);
    send.sealed_written(drained);
    r
}

fn write_session(
    session: &mut Session,
    stream: &Stream,
    conn: &mut Connection,
    write_blocked: &mut bool,
    stage: &mut Vec<u8>,
    sent: &mut Vec<Message>,
) -> Result<(), (Status, String)> {
    loop {
        while session.wants_write() {
            match session.write_tls(stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *write_blocked = true;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((Status::SendFailed, e.to_string())),
            }
        }
        if session.is_handshaking() || !conn.wants_send() {
            *write_blocked = false;
            return Ok(());
        }
        let mut iov = [IoSlice::new(&[]); IOV_LEN];
        let n = conn.gather(stage, &mut iov);
        let taken = session
            .write_plain(&iov[..n])
            .map_err(|e| (Status::TlsFailed, e))?;
        conn.advance(taken, sent);
        if taken == 0 && !session.wants_write() {
            return Err((Status::TlsFailed, "TLS session took no data".to_string()));
        }
    }
}
