//! Commands from application threads: posts (open a client or listener channel, queue
//! data, a local abort), the outbound queues posting threads filled, group destroys; and
//! the refusal of a Hello or Welcome that cannot start.

use super::*;

impl Reactor {
    pub(super) fn dispatch_commands(&mut self) {
        {
            let mut c = self.shared.lock_commands();
            std::mem::swap(&mut c.queue, &mut self.commands);
        }
        let mut cmds = std::mem::take(&mut self.commands);
        for cmd in cmds.drain(..) {
            match cmd {
                Command::Post { group, msg } => self.dispatch_post(group, msg, None),
                Command::HandOver {
                    group,
                    msg,
                    written,
                } => self.dispatch_post(group, msg, Some(written)),
                Command::Queued { channel } => self.schedule_write(channel),
                Command::DestroyGroup { group, done } => {
                    self.destroy_group(group);
                    done.complete();
                }
            }
        }
        self.commands = cmds;
    }

    /// Queues a channel for `write_scheduled`: posts were queued in its `Outbound`, or a
    /// posting thread wrote directly while others queued. Posts to a listener come back.
    pub(super) fn schedule_write(&mut self, number: u16) {
        let Some(ch) = self.channels.get_mut(&number) else {
            return; // closed meanwhile: its queue was handed back at the close
        };
        match &mut ch.kind {
            Kind::Io(io) => {
                if io.connected && !io.scheduled && ch.closing.is_none() {
                    io.scheduled = true;
                    self.to_write.push(number);
                }
            }
            Kind::Listener(_) => {
                // Data for a listener: returned, and unlike Zig tofu the listener stays.
                ch.send
                    .take_outbound(&mut self.writer.pending, self.shared.pool.buffers());
                let (pool, group) = (&self.shared.pool, &ch.group);
                for mut msg in unpend(&mut self.writer.pending, pool, &mut self.writer.spent) {
                    ch.send.sub(1, encoded_len(&msg) as u64);
                    let why = format!(
                        "channel {number} is a listener: it takes only a ByeSignal (to stop \
                         listening); post data to the channels it accepts"
                    );
                    notify::add_error_text(&mut msg, &why);
                    hand_back(&mut self.outbox, group, msg, Status::ChannelClosed);
                }
            }
        }
    }

    /// A posted message; `handed_over` is `Some(bytes already written)` for a message a
    /// posting thread started to write directly.
    pub(super) fn dispatch_post(
        &mut self,
        group: Arc<GroupShared>,
        mut msg: Message,
        handed_over: Option<usize>,
    ) {
        msg.release_hold(); // the application gave it to the engine
        let number = msg.channel();
        if group.is_destroyed() {
            // Posted while the group was being destroyed: nobody can receive an answer.
            if matches!(msg.opcode(), OpCode::HelloRequest | OpCode::WelcomeRequest) {
                self.shared.lock_table().release(number);
            }
            return;
        }
        match msg.opcode() {
            OpCode::HelloRequest => self.open_client(group, msg),
            OpCode::WelcomeRequest => self.open_listener(group, msg),
            OpCode::ByeSignal if msg.header.oob => {
                tracing::debug!(channel = number, "ByeSignal: local abort");
                msg.header.origin = Origin::Engine;
                msg.header.status = Status::ChannelClosed;
                self.outbox.push(&group, msg);
                if let Some(ch) = self.channels.get_mut(&number) {
                    if ch.group.id == group.id {
                        mark(&mut self.marked, ch, Status::ChannelClosed);
                    }
                }
            }
            _ => {
                let ch = self
                    .channels
                    .get_mut(&number)
                    .filter(|ch| ch.group.id == group.id);
                let Some(ch) = ch else {
                    return hand_back(&mut self.outbox, &group, msg, Status::ChannelClosed);
                };
                let Kind::Io(io) = &mut ch.kind else {
                    // Data for a listener: returned, and unlike Zig tofu the listener stays.
                    ch.send.sub(1, encoded_len(&msg) as u64);
                    return hand_back(&mut self.outbox, &group, msg, Status::ChannelClosed);
                };
                let queued = match handed_over {
                    None => io.conn.enqueue(msg),
                    Some(written) => {
                        // Its first bytes may be on the wire: it goes first, and the
                        // reactor holds the gate again.
                        ch.send.take_handover();
                        io.conn.enqueue_started(msg, written)
                    }
                };
                if let Err((e, msg)) = queued {
                    ch.send.sub(1, encoded_len(&msg) as u64);
                    return hand_back(&mut self.outbox, &group, msg, e.status());
                }
                if io.conn.bye_queued() {
                    ch.send.keep_gate(); // no direct write once a bye-type frame is queued
                }
                if io.connected && !io.scheduled && ch.closing.is_none() {
                    io.scheduled = true;
                    self.to_write.push(number);
                }
            }
        }
    }

    pub(super) fn open_client(&mut self, group: Arc<GroupShared>, msg: Message) {
        let number = msg.channel();
        let addr = match Address::from_message(&msg) {
            Ok(a) => a,
            Err(e) => return self.refuse(group, msg, OpCode::HelloResponse, e.status()),
        };
        let (stream, connected) = match Stream::connect(&addr) {
            Ok(s) => s,
            Err((status, e)) => {
                tracing::debug!(channel = number, address = %addr, error = %e, ?status, "connect failed");
                return self.refuse_because(
                    group,
                    msg,
                    OpCode::HelloResponse,
                    status,
                    e.to_string(),
                );
            }
        };
        let session = match &addr {
            Address::Tls { host, .. } => {
                // The handshake starts once connected and must end within the frame timeout.
                let deadline = self.frame_timeout.map(|t| Instant::now() + t);
                match Session::client(&self.shared.tls, host, deadline) {
                    Ok(s) => Some(s),
                    Err(why) => {
                        return self.refuse_because(
                            group,
                            msg,
                            OpCode::HelloResponse,
                            Status::InvalidAddress,
                            why,
                        )
                    }
                }
            }
            _ => None,
        };
        let mut conn = Connection::new(msg.message_id(), self.frame_timeout);
        if let Err((e, msg)) = conn.enqueue(msg) {
            return self.refuse(group, msg, OpCode::HelloResponse, e.status());
        }
        tracing::debug!(channel = number, address = %addr, connected, "connecting");
        let mut io = Io::new(stream, conn, connected, session);
        io.scheduled = connected;
        let in_handshake = io.tls.is_some() && self.frame_timeout.is_some();
        if connected {
            self.to_write.push(number);
        }
        self.insert(number, group, Kind::Io(Box::new(io)));
        if in_handshake {
            self.watch_deadline(number);
        }
    }

    pub(super) fn open_listener(&mut self, group: Arc<GroupShared>, mut msg: Message) {
        let number = msg.channel();
        let addr = match Address::from_message(&msg) {
            Ok(a) => a,
            Err(e) => return self.refuse(group, msg, OpCode::WelcomeResponse, e.status()),
        };
        if let Some(why) = addr
            .is_tls()
            .then(|| self.shared.tls.missing(true))
            .flatten()
        {
            return self.refuse_because(
                group,
                msg,
                OpCode::WelcomeResponse,
                Status::InvalidAddress,
                why,
            );
        }
        let listener = match Listener::bind(&addr) {
            Ok(l) => l,
            Err((status, e)) => {
                tracing::debug!(channel = number, address = %addr, error = %e, ?status, "listen failed");
                return self.refuse_because(
                    group,
                    msg,
                    OpCode::WelcomeResponse,
                    status,
                    e.to_string(),
                );
            }
        };
        tracing::debug!(channel = number, address = %listener.local_addr_string(), "listening");
        let listener = ListenerState {
            listener,
            opened_id: msg.message_id(),
            paused: false,
            tls: addr.is_tls(),
        };
        // Success comes back with origin application (tofu's behaviour), and with where the
        // listener is bound: the real port for port 0, the chosen path for an empty one.
        msg.header.opcode = OpCode::WelcomeResponse;
        msg.header.origin = Origin::Application;
        msg.header.status = Status::Success;
        let bound = listener.listener.local_address(&addr);
        if bound != addr {
            if let Err(e) = bound.replace_in(&mut msg) {
                tracing::debug!(channel = number, error = ?e, "bound address not reported");
            }
        }
        self.outbox.push(&group, msg);
        self.insert(number, group, Kind::Listener(listener));
    }

    /// A Hello/Welcome request that could not even start: the request comes back as `reply`
    /// with the status, then the channel's final Signal.
    pub(super) fn refuse(
        &mut self,
        group: Arc<GroupShared>,
        msg: Message,
        reply: OpCode,
        status: Status,
    ) {
        self.refuse_because(group, msg, reply, status, String::new());
    }

    /// [`refuse`](Self::refuse), with the OS's words for why (see `ERROR_TEXT`) when there
    /// are any.
    pub(super) fn refuse_because(
        &mut self,
        group: Arc<GroupShared>,
        msg: Message,
        reply: OpCode,
        status: Status,
        why: String,
    ) {
        let number = msg.channel();
        let mid = msg.message_id();
        let mut refusal = notify::refusal(msg, reply, status);
        if !why.is_empty() {
            notify::add_error_text(&mut refusal, &why);
        }
        self.outbox.push(&group, refusal);
        // Posted to the channel meanwhile: it never opened.
        let send = self
            .shared
            .lock_table()
            .record(number)
            .map(|r| Arc::clone(&r.send));
        if let Some(send) = send {
            send.close_outbound(&mut self.writer.pending, self.shared.pool.buffers());
            let pool = &self.shared.pool;
            for msg in unpend(&mut self.writer.pending, pool, &mut self.writer.spent) {
                hand_back(&mut self.outbox, &group, msg, Status::ChannelClosed);
            }
        }
        let closed = notify::channel_closed(self.shared.pool.message(), number, mid);
        self.outbox.push(&group, closed);
        self.shared.lock_table().release(number);
    }

    pub(super) fn insert(&mut self, number: u16, group: Arc<GroupShared>, kind: Kind) {
        let token = Token(self.next_token);
        self.next_token += 1;
        let send = self
            .shared
            .lock_table()
            .record(number)
            .map(|r| Arc::clone(&r.send))
            .unwrap_or_default();
        let mut ch = Box::new(Channel {
            number,
            token,
            group,
            send,
            registered: false,
            touched: false,
            closing: None,
            why: None,
            kind,
        });
        let interest = ch.interest();
        match self.poller.register(ch.raw(), token, interest) {
            Ok(()) => ch.registered = true,
            Err(e) => {
                tracing::warn!(channel = number, error = %e, "poller registration failed");
                mark(&mut self.marked, &mut ch, Status::CommunicationFailed);
            }
        }
        self.by_token.insert(token, number);
        if let Some(old) = self.channels.insert(number, ch) {
            // The table never hands out a live number; keep the old one's messages anyway.
            tracing::error!(channel = number, "channel number reused while live");
            self.finish(old, Status::ChannelClosed, true);
        }
    }

    pub(super) fn destroy_group(&mut self, group: u32) {
        let numbers: Vec<u16> = self
            .channels
            .values()
            .filter(|c| c.group.id == group)
            .map(|c| c.number)
            .collect();
        for n in numbers {
            if let Some(ch) = self.channels.remove(&n) {
                self.finish(ch, Status::ShutdownStarted, false);
            }
        }
    }
}
