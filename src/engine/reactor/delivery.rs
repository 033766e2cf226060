//! Delivery: messages for the application are gathered per group during a loop iteration
//! (the outbox) and handed to each group's mailbox once, after which one post may write
//! directly until the reactor wakes again.

use super::*;

impl Reactor {
    /// Delivers what was produced since the last delivery. The writes before it are done:
    /// until the reactor wakes up again, one post may write directly (see `SendState`), e.g.
    /// the answer of a thread these deliveries wake, unless the reactor wrote more than one
    /// frame since it woke up. A channel that streams is better served by batches than by
    /// a system call of the posting thread per reactor sleep.
    pub(super) fn deliver(&mut self) {
        if self.writer.frames <= 1 {
            self.shared.direct_turn.store(true, Ordering::Release);
        }
        self.outbox.deliver();
    }
}

pub(super) fn hand_back(
    outbox: &mut Outbox,
    group: &Arc<GroupShared>,
    mut msg: Message,
    status: Status,
) {
    notify::mark_handed_back(&mut msg, status);
    outbox.push(group, msg);
}

/// Messages for the application gathered during a loop iteration, one queue per group, so
/// each group's mailbox is locked (and a waiting thread woken) once per iteration instead of
/// once per channel event. Order within a group is the order of production.
#[derive(Default)]
pub(super) struct Outbox {
    groups: Vec<(Arc<GroupShared>, Vec<Inbound>)>,
    /// Emptied queues kept for reuse.
    spare: Vec<Vec<Inbound>>,
}

impl Outbox {
    pub(super) fn queue(&mut self, group: &Arc<GroupShared>) -> &mut Vec<Inbound> {
        let i = match self.groups.iter().rposition(|(g, _)| Arc::ptr_eq(g, group)) {
            Some(i) => i,
            None => {
                let q = self.spare.pop().unwrap_or_default();
                self.groups.push((Arc::clone(group), q));
                self.groups.len() - 1
            }
        };
        &mut self.groups[i].1
    }

    pub(super) fn push(&mut self, group: &Arc<GroupShared>, msg: Message) {
        self.queue(group).push(Inbound::Msg(msg));
    }

    /// Frames the application decodes itself (see `Frames`).
    pub(super) fn push_frames(&mut self, group: &Arc<GroupShared>, frames: Frames) {
        self.queue(group).push(Inbound::Frames(frames));
    }

    /// Moves all of `msgs` (emptied) to `group`'s queue.
    pub(super) fn extend(&mut self, group: &Arc<GroupShared>, msgs: &mut Vec<Message>) {
        if !msgs.is_empty() {
            self.queue(group).extend(msgs.drain(..).map(Inbound::Msg));
        }
    }

    /// Delivers every queue to its group.
    pub(super) fn deliver(&mut self) {
        for (group, mut q) in self.groups.drain(..) {
            group.deliver_all(&mut q);
            if self.spare.len() < 16 {
                self.spare.push(q);
            }
        }
    }
}
