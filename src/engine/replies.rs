//! Answers awaited by `ChannelGroup::request`, `connect` and `listen`: each registers what it
//! waits for (channel and message_id) before it posts; whoever takes messages out of the
//! group's mailbox while answers are awaited routes them here. The awaited answer goes to
//! its waiter, never to `wait_receive`; everything else passes through to the application in
//! order. A channel's final Signal fails the requests still waiting on that channel, and is
//! the failure of a connect or listen still waiting there; the leftovers of a connect or
//! listen that failed (its final Signal) are not delivered: the caller already has the failure.

use std::collections::HashMap;
use std::task::Waker;

use crate::proto::message::{Message, OpCode, Origin};
use crate::proto::status::Status;

/// What answers a posted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A Request or a ByeRequest: the peer's Response or ByeResponse with its message_id.
    Response,
    /// A ByeRequest: the peer's ByeResponse with its message_id.
    ByeResponse,
    /// A HelloRequest: the HelloResponse (the peer's, or the engine's failure).
    Hello,
    /// A WelcomeRequest: the WelcomeResponse.
    Welcome,
}

/// How an awaited answer ended.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The answer: a Response, or a HelloResponse/WelcomeResponse with status Success.
    Reply(Message),
    /// The engine or the peer said no; the message that said it (its status says why).
    Refused(Message),
    /// The channel closed (or the group ended: `ShutdownStarted`) before an answer came.
    Closed(Status),
}

struct Slot {
    expect: Expect,
    answer: Option<Answer>,
    /// The task to wake when the answer comes.
    waker: Option<Waker>,
}

/// A Hello or Welcome awaited on a channel.
struct Opening {
    /// The HelloRequest's or WelcomeRequest's message_id (its slot's key).
    id: u64,
    /// The message_id of the peer's first frame on the channel, once one was routed: the
    /// channel's final Signal carries it (see `Connection::closing_id`), and a peer that
    /// answers the Hello with another id than the Hello's still answers it.
    first: Option<u64>,
}

/// The awaited answers of one group, keyed by (channel, message_id).
#[derive(Default)]
pub(crate) struct Replies {
    slots: HashMap<(u16, u64), Slot>,
    /// The awaited Hellos and Welcomes, by channel (one per channel).
    opening: HashMap<u16, Opening>,
    /// Channels whose connect or listen failed or was given up: nothing more of them is
    /// delivered, up to and including their final Signal.
    swallow: Vec<u16>,
}

impl Replies {
    /// Something awaits answers (or leftovers to drop): messages must be routed.
    pub(crate) fn is_active(&self) -> bool {
        !self.slots.is_empty() || !self.swallow.is_empty()
    }

    pub(crate) fn add(&mut self, channel: u16, id: u64, expect: Expect) {
        if matches!(expect, Expect::Hello | Expect::Welcome) {
            self.opening.insert(channel, Opening { id, first: None });
        }
        self.slots.insert(
            (channel, id),
            Slot {
                expect,
                answer: None,
                waker: None,
            },
        );
    }

    /// Forgets the slot (an answer that comes later goes to the application); returns the
    /// answer if it came meanwhile, so that it is not lost either.
    pub(crate) fn remove(&mut self, channel: u16, id: u64) -> Option<Answer> {
        let answer = self.forget(channel, id).and_then(|s| s.answer);
        match answer {
            Some(Answer::Reply(m)) => Some(Answer::Reply(crate::engine::shared::handed(m))),
            Some(Answer::Refused(m)) => Some(Answer::Refused(crate::engine::shared::handed(m))),
            other => other,
        }
    }

    /// The answer, if it came (the slot is then gone); else keeps `waker` to wake.
    pub(crate) fn take(&mut self, channel: u16, id: u64, waker: Option<&Waker>) -> Option<Answer> {
        let slot = self.slots.get_mut(&(channel, id))?;
        if slot.answer.is_none() {
            if let Some(w) = waker {
                match &mut slot.waker {
                    Some(old) if old.will_wake(w) => {}
                    other => *other = Some(w.clone()),
                }
            }
            return None;
        }
        let answer = self.forget(channel, id).and_then(|s| s.answer);
        match answer {
            Some(Answer::Reply(m)) => Some(Answer::Reply(crate::engine::shared::handed(m))),
            Some(Answer::Refused(m)) => Some(Answer::Refused(crate::engine::shared::handed(m))),
            other => other,
        }
    }

    /// Removes the slot (and its channel's `opening` entry, if it is that Hello's).
    fn forget(&mut self, channel: u16, id: u64) -> Option<Slot> {
        if self.opening.get(&channel).is_some_and(|o| o.id == id) {
            self.opening.remove(&channel);
        }
        self.slots.remove(&(channel, id))
    }

    /// Drops every later message of `channel`, up to and including its final Signal (a
    /// connect given up at its deadline).
    pub(crate) fn swallow_channel(&mut self, channel: u16) {
        if !self.swallow.contains(&channel) {
            self.swallow.push(channel);
        }
    }

    /// True when the slot exists (its answer may or may not have come).
    pub(crate) fn contains(&self, channel: u16, id: u64) -> bool {
        self.slots.contains_key(&(channel, id))
    }

    /// Routes `m`: an awaited answer goes to its slot (the wakers to wake are pushed to
    /// `wake`), a dropped leftover goes nowhere, anything else comes back for the
    /// application.
    pub(crate) fn route(&mut self, m: Message, wake: &mut Vec<Waker>) -> Option<Message> {
        let mut key = (m.channel(), m.message_id());
        let engine = m.origin() == Origin::Engine;
        if m.is_channel_end() {
            let channel = m.channel();
            // The final Signal: whoever still waits on this channel gets no answer.
            for (&(c, _), slot) in self.slots.iter_mut() {
                if c == channel
                    && slot.answer.is_none()
                    && !matches!(slot.expect, Expect::Hello | Expect::Welcome)
                {
                    slot.answer = Some(Answer::Closed(Status::ChannelClosed));
                    wake.extend(slot.waker.take());
                }
            }
            // The Signal of the channel the Hello or Welcome opened, not of an earlier one
            // with the same number (see `GroupShared::expect`; this holds even for one
            // delivered late): a channel's final Signal carries the id it was opened with,
            // or its peer's first frame's.
            let id = m.message_id();
            let opened = self
                .opening
                .get(&channel)
                .filter(|o| o.id == id || o.first == Some(id))
                .map(|o| o.id);
            // A connect or listen still waiting: the channel ended before its answer (a
            // peer that closed at once, a TLS handshake the peer rejected after the Hello
            // left). The Signal, with the reason in its `~error`, is the refusal; the
            // channel never existed for the caller, so nothing reaches the receive loop.
            let slot = opened.and_then(|o| self.slots.get_mut(&(channel, o)));
            if let Some(slot) = slot.filter(|s| s.answer.is_none()) {
                slot.answer = Some(Answer::Refused(m));
                wake.extend(slot.waker.take());
                return None;
            }
            if let Some(i) = self.swallow.iter().position(|&c| c == channel) {
                self.swallow.swap_remove(i);
                return None;
            }
            return Some(m);
        }
        if self.swallow.contains(&m.channel()) {
            return None; // a channel the caller never got (see `swallow`)
        }
        if !engine {
            if let Some(o) = self.opening.get_mut(&m.channel()) {
                o.first.get_or_insert(m.message_id());
                if m.opcode() == OpCode::HelloResponse {
                    key.1 = o.id; // the peer's answer to the Hello, whatever its id
                }
            }
        }
        let Some(slot) = self.slots.get_mut(&key) else {
            return Some(m);
        };
        if slot.answer.is_some() {
            return Some(m);
        }
        let answer = match (slot.expect, m.opcode()) {
            (Expect::Response, OpCode::Response) | (Expect::ByeResponse, OpCode::ByeResponse)
                if !engine =>
            {
                Answer::Reply(m)
            }
            // The request itself, handed back by the engine: it was not sent.
            (Expect::Response, OpCode::Request) | (Expect::ByeResponse, OpCode::ByeRequest)
                if engine =>
            {
                Answer::Refused(m)
            }
            (Expect::Hello, OpCode::HelloResponse) | (Expect::Welcome, OpCode::WelcomeResponse)
                if m.status() == Status::Success =>
            {
                Answer::Reply(m)
            }
            // A failed connect or listen: the HelloResponse/WelcomeResponse with the
            // failure, or the HelloRequest handed back (refused before it left).
            (Expect::Hello, OpCode::HelloResponse | OpCode::HelloRequest)
            | (Expect::Welcome, OpCode::WelcomeResponse) => {
                self.swallow.push(m.channel());
                Answer::Refused(m)
            }
            _ => return Some(m),
        };
        slot.answer = Some(answer);
        wake.extend(slot.waker.take());
        None
    }

    /// The group ended: every waiter gets `ShutdownStarted`.
    pub(crate) fn fail_all(&mut self, wake: &mut Vec<Waker>) {
        for slot in self.slots.values_mut() {
            if slot.answer.is_none() {
                slot.answer = Some(Answer::Closed(Status::ShutdownStarted));
                wake.extend(slot.waker.take());
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A channel's final Signal, as the engine makes it.
    pub(crate) fn end(channel: u16, id: u64) -> Message {
        crate::proto::notify::channel_closed(Message::new(), channel, id)
    }

    /// A message as the engine or a peer would deliver it.
    pub(crate) fn msg(
        op: OpCode,
        origin: Origin,
        status: Status,
        channel: u16,
        id: u64,
    ) -> Message {
        let mut m = Message::with_opcode(op);
        m.header.origin = origin;
        m.header.status = status;
        m.header.channel = channel;
        m.header.message_id = id;
        m
    }

    #[test]
    fn a_channel_that_ends_before_its_hello_is_answered_refuses_the_connect() {
        let mut r = Replies::default();
        r.add(4, 1, Expect::Hello);
        r.add(5, 2, Expect::Response);
        let mut wake = Vec::new();
        // An earlier channel 4's final Signal (another id) is not this connect's answer.
        let stale = end(4, 77);
        assert!(r.route(stale, &mut wake).is_some());
        assert!(r.take(4, 1, None).is_none());
        // The final Signal of channel 4 is the connect's refusal and is not passed on.
        let closed = end(4, 1);
        assert!(r.route(closed, &mut wake).is_none());
        match r.take(4, 1, None) {
            Some(Answer::Refused(m)) => {
                assert_eq!(
                    (m.opcode(), m.status()),
                    (OpCode::Signal, Status::ChannelClosed)
                )
            }
            other => panic!("{other:?}"),
        }
        // A request on another channel is untouched; its channel's Signal still reaches
        // the application, and the request gets `Closed`.
        assert!(r.take(5, 2, None).is_none());
        let closed = end(5, 9);
        assert!(r.route(closed, &mut wake).is_some());
        assert!(matches!(
            r.take(5, 2, None),
            Some(Answer::Closed(Status::ChannelClosed))
        ));
    }

    #[test]
    fn a_hello_answered_with_another_id_is_still_answered_or_refused() {
        let mut wake = Vec::new();
        // A peer that answers with a HelloResponse of its own id: the connect succeeds.
        let mut r = Replies::default();
        r.add(4, 1, Expect::Hello);
        let reply = msg(
            OpCode::HelloResponse,
            Origin::Application,
            Status::Success,
            4,
            8,
        );
        assert!(r.route(reply, &mut wake).is_none());
        assert!(matches!(r.take(4, 1, None), Some(Answer::Reply(m)) if m.message_id() == 8));
        assert!(!r.is_active());
        // A peer whose first frame is not the HelloResponse, then closes: the final
        // Signal carries that frame's id and refuses the connect (it would wait forever).
        let mut r = Replies::default();
        r.add(4, 1, Expect::Hello);
        let early = msg(OpCode::Signal, Origin::Application, Status::Success, 4, 9);
        assert!(
            r.route(early, &mut wake).is_some(),
            "the application gets it"
        );
        let closed = end(4, 9);
        assert!(r.route(closed, &mut wake).is_none());
        assert!(matches!(r.take(4, 1, None), Some(Answer::Refused(m)) if m.message_id() == 9));
    }

    #[test]
    fn only_the_awaited_answer_is_taken() {
        let mut r = Replies::default();
        r.add(3, 10, Expect::Response);
        let mut wake = Vec::new();
        // Other ids, other channels, other kinds pass through.
        for m in [
            msg(
                OpCode::Response,
                Origin::Application,
                Status::Success,
                3,
                11,
            ),
            msg(
                OpCode::Response,
                Origin::Application,
                Status::Success,
                4,
                10,
            ),
            msg(OpCode::Request, Origin::Application, Status::Success, 3, 10),
            msg(OpCode::Signal, Origin::Application, Status::Success, 3, 10),
        ] {
            assert!(r.route(m, &mut wake).is_some());
        }
        assert!(r.take(3, 10, None).is_none());
        let reply = msg(
            OpCode::Response,
            Origin::Application,
            Status::Success,
            3,
            10,
        );
        assert!(r.route(reply, &mut wake).is_none());
        assert!(matches!(r.take(3, 10, None), Some(Answer::Reply(m)) if m.message_id() == 10));
        assert!(!r.is_active());
    }

    #[test]
    fn a_handed_back_request_or_the_channel_end_fails_it() {
        let mut r = Replies::default();
        let mut wake = Vec::new();
        r.add(3, 10, Expect::Response);
        r.add(3, 11, Expect::Response);
        r.add(4, 12, Expect::Response);
        let back = msg(
            OpCode::Request,
            Origin::Engine,
            Status::PeerDisconnected,
            3,
            10,
        );
        assert!(r.route(back, &mut wake).is_none());
        // A Signal of the application's handed back with ChannelClosed looks like the end
        // but is not: it passes through and fails nothing.
        let signal_back = msg(OpCode::Signal, Origin::Engine, Status::ChannelClosed, 3, 0);
        assert!(r.route(signal_back, &mut wake).is_some());
        assert!(r.take(3, 11, None).is_none(), "still waiting");
        let closed = end(3, 0);
        assert!(
            r.route(closed, &mut wake).is_some(),
            "the application gets it too"
        );
        assert!(
            matches!(r.take(3, 10, None), Some(Answer::Refused(m)) if m.status() == Status::PeerDisconnected)
        );
        assert!(matches!(
            r.take(3, 11, None),
            Some(Answer::Closed(Status::ChannelClosed))
        ));
        assert!(r.take(4, 12, None).is_none(), "another channel waits on");
    }

    #[test]
    fn a_failed_connect_takes_its_leftovers_with_it() {
        let mut r = Replies::default();
        let mut wake = Vec::new();
        r.add(5, 20, Expect::Hello);
        let refused = msg(
            OpCode::HelloRequest,
            Origin::Engine,
            Status::ConnectFailed,
            5,
            20,
        );
        assert!(r.route(refused, &mut wake).is_none());
        let closed = end(5, 20);
        assert!(r.route(closed, &mut wake).is_none(), "not delivered");
        assert!(
            matches!(r.take(5, 20, None), Some(Answer::Refused(m)) if m.status() == Status::ConnectFailed)
        );
        assert!(!r.is_active());
        // A successful one leaves the channel's later Signals alone.
        r.add(6, 21, Expect::Hello);
        let ok = msg(
            OpCode::HelloResponse,
            Origin::Application,
            Status::Success,
            6,
            21,
        );
        assert!(r.route(ok, &mut wake).is_none());
        let closed = end(6, 21);
        assert!(r.route(closed, &mut wake).is_some());
    }
}
