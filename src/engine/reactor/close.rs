//! Closing: a channel marked for deletion is deregistered, its hand-back sequence (from its
//! `Connection` and its outbound queue) goes to its group with the final Signal, its socket
//! is closed and its number freed; at exit every channel goes that way.

use super::*;

impl Reactor {
    pub(super) fn delete_marked(&mut self) {
        while let Some(number) = self.marked.pop() {
            if let Some(ch) = self.channels.remove(&number) {
                let reason = ch.closing.unwrap_or(Status::ChannelClosed);
                self.finish(ch, reason, true);
            }
        }
    }

    /// Removes a channel: deregisters it, hands its unsent messages back with `reason` and
    /// sends the final ChannelClosed Signal (when `report`), closes the socket (RST) and frees
    /// its number.
    pub(super) fn finish(&mut self, mut ch: Box<Channel>, reason: Status, report: bool) {
        ch.send.keep_gate();
        self.by_token.remove(&ch.token);
        if ch.registered {
            if let Err(e) = self.poller.deregister(ch.raw(), ch.token) {
                tracing::debug!(channel = ch.number, error = %e, "deregister failed");
            }
        }
        // Posts still queued for the reactor come back after those it had taken; later
        // posts are refused (the channel is gone).
        let pool = &self.shared.pool;
        let number = ch.number;
        ch.send
            .close_outbound(&mut self.writer.pending, pool.buffers());
        let start = self.deliveries.len();
        let mut later = unpend(&mut self.writer.pending, pool, &mut self.writer.spent).into_iter();
        match &mut ch.kind {
            Kind::Io(io) => {
                let back = io
                    .conn
                    .close(reason, &mut later, number, &mut || pool.message());
                io.conn.take_spent(&mut self.writer.spent);
                self.deliveries.extend(back);
            }
            Kind::Listener(l) => {
                for mut msg in later {
                    notify::mark_handed_back(&mut msg, reason);
                    self.deliveries.push(msg);
                }
                let closed = notify::channel_closed(pool.message(), number, l.opened_id);
                self.deliveries.push(closed);
            }
        }
        if let Some(why) = &ch.why {
            for m in &mut self.deliveries[start..] {
                notify::add_error_text(m, why);
            }
        }
        if reason == Status::TlsFailed {
            if let Kind::Io(io) = &ch.kind {
                self.linger(&io.stream);
            }
        }
        let group = Arc::clone(&ch.group);
        // Close the socket (SO_LINGER {on, 0} makes it a reset; a UDS listener unlinks its
        // path) and free the number before the final Signal is delivered: once the
        // application sees it, the socket is gone and posts to the channel are refused.
        drop(ch);
        self.shared.lock_table().release(number);
        tracing::debug!(channel = number, ?reason, "channel closed");
        if report {
            self.outbox.extend(&group, &mut self.deliveries);
        } else {
            self.deliveries.clear();
        }
    }

    /// A TLS channel that failed told its peer why in an alert. Closing its socket at once
    /// resets the connection, and a peer whose OS takes the reset before its application
    /// read the alert learns only "connection reset" (a client whose certificate the
    /// server refused, most of the time). So the socket ends its sending side after the
    /// alert (the peer reads the alert, then end of stream) and stays open for [`LINGER`]
    /// before it is closed (at most [`LINGER_MAX`] at once; beyond, it closes at once).
    fn linger(&mut self, stream: &Arc<Stream>) {
        if self.lingering.len() >= LINGER_MAX {
            return;
        }
        if stream.close_write().is_ok() {
            let until = Instant::now() + LINGER;
            self.lingering.push_back((until, Arc::clone(stream)));
        }
    }

    /// Closes the lingering sockets whose time is up (see [`linger`](Self::linger)).
    pub(super) fn end_lingering(&mut self) {
        let now = Instant::now();
        while self.lingering.front().is_some_and(|&(at, _)| at <= now) {
            self.lingering.pop_front();
        }
    }

    pub(super) fn exit(&mut self) {
        // What is already produced goes out before the commands handed back below.
        self.outbox.deliver();
        self.shared.close_commands();
        let numbers: Vec<u16> = self.channels.keys().copied().collect();
        for n in numbers {
            if let Some(ch) = self.channels.remove(&n) {
                self.finish(ch, Status::ShutdownStarted, true);
            }
        }
        self.outbox.deliver();
        tracing::debug!("reactor stopped");
    }
}
