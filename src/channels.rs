//! The engine-wide table of channel numbers: which numbers are live and which group owns them.
//!
//! Numbers are drawn at random from 1..=65534, skipping live numbers and the 1024 most recently
//! released ones (a FIFO quarantine), so a message posted to a channel that just closed is far
//! unlikely to reach a new channel that got the same number. Unlike Zig tofu, a record is
//! released as soon as its channel is deleted (tofu leaks it until the group is destroyed).

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::intmap::IntMap;
use std::hash::BuildHasher;

use crate::message::{CHANNEL_RESERVED, CHANNEL_UNASSIGNED};

/// How many released numbers are kept out of circulation.
pub(crate) const QUARANTINE_LEN: usize = 1024;

/// What a channel has accepted from `post` and not yet written or handed back: the send
/// queue's size, shared by posting threads (which add) and the reactor (which subtracts).
///
/// Aligned to its own cache lines: posting threads and the reactor both write it, and it
/// must not share a line with unrelated data.
#[derive(Default, Debug)]
#[repr(align(128))]
pub(crate) struct Backlog {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Backlog {
    /// Counts a message in if the limits allow it.
    pub(crate) fn try_add(&self, bytes: u64, max_messages: u64, max_bytes: u64) -> bool {
        // Posts to one channel from several threads may overshoot by a message each; the
        // limit is a bound on memory, not an exact count, so that is acceptable.
        let m = self.messages.load(Ordering::Relaxed);
        let b = self.bytes.load(Ordering::Relaxed);
        if m >= max_messages || (m > 0 && b + bytes > max_bytes) {
            return false;
        }
        self.add(1, bytes);
        true
    }

    pub(crate) fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, messages: u64, bytes: u64) {
        self.messages.fetch_sub(messages, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Messages currently counted.
    #[cfg(test)]
    pub(crate) fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }
}

/// One live channel number.
pub(crate) struct Record {
    pub(crate) group: u32,
    pub(crate) backlog: Arc<Backlog>,
}

/// Live channel numbers and their owning group ids.
pub(crate) struct ChannelTable {
    owners: IntMap<u16, Record>,
    quarantine: VecDeque<u16>,
    quarantined: Vec<u64>,
    quarantine_cap: usize,
    random: RandomState,
    draws: u64,
}

impl ChannelTable {
    pub(crate) fn new() -> ChannelTable {
        ChannelTable::with_quarantine(QUARANTINE_LEN)
    }

    pub(crate) fn with_quarantine(quarantine_cap: usize) -> ChannelTable {
        ChannelTable {
            owners: IntMap::default(),
            quarantine: VecDeque::with_capacity(quarantine_cap),
            quarantined: vec![0; 65536 / 64],
            quarantine_cap,
            random: RandomState::new(),
            draws: 0,
        }
    }

    /// A fresh number owned by `group`, or `None` when every number is live or quarantined.
    pub(crate) fn allocate(&mut self, group: u32) -> Option<u16> {
        // Random draws: SipHash with random keys over a counter is unpredictable enough for
        // spreading numbers; a bounded number of tries, then a scan, so a nearly full table
        // neither loops forever (tofu's bug) nor fails while a number is free.
        for _ in 0..64 {
            self.draws += 1;
            let cand = (self.random.hash_one(self.draws) & 0xffff) as u16;
            if self.is_free(cand) {
                self.insert(cand, group);
                return Some(cand);
            }
        }
        let start = (self.random.hash_one(!self.draws) & 0xffff) as u16;
        let found = (0..=u16::MAX)
            .map(|i| start.wrapping_add(i))
            .find(|&c| self.is_free(c))?;
        self.insert(found, group);
        Some(found)
    }

    fn insert(&mut self, ch: u16, group: u32) {
        self.owners.insert(
            ch,
            Record {
                group,
                backlog: Arc::default(),
            },
        );
    }

    fn is_free(&self, ch: u16) -> bool {
        ch != CHANNEL_UNASSIGNED
            && ch != CHANNEL_RESERVED
            && !self.owners.contains_key(&ch)
            && !self.is_quarantined(ch)
    }

    fn is_quarantined(&self, ch: u16) -> bool {
        self.quarantined[usize::from(ch) / 64] & (1 << (ch % 64)) != 0
    }

    fn set_quarantined(&mut self, ch: u16, on: bool) {
        let word = &mut self.quarantined[usize::from(ch) / 64];
        if on {
            *word |= 1 << (ch % 64);
        } else {
            *word &= !(1 << (ch % 64));
        }
    }

    /// The group owning a live number.
    #[cfg(test)]
    pub(crate) fn owner(&self, ch: u16) -> Option<u32> {
        self.owners.get(&ch).map(|r| r.group)
    }

    /// The record of a live number.
    pub(crate) fn record(&self, ch: u16) -> Option<&Record> {
        self.owners.get(&ch)
    }

    /// Releases a number into quarantine. Releasing a number that is not live does nothing.
    pub(crate) fn release(&mut self, ch: u16) {
        if self.owners.remove(&ch).is_none() {
            return;
        }
        if self.quarantine_cap == 0 {
            return;
        }
        if self.quarantine.len() == self.quarantine_cap {
            if let Some(old) = self.quarantine.pop_front() {
                self.set_quarantined(old, false);
            }
        }
        self.quarantine.push_back(ch);
        self.set_quarantined(ch, true);
    }

    /// Number of live channels.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_limits() {
        let b = Backlog::default();
        // An empty queue takes one message whatever its size.
        assert!(b.try_add(1_000_000, 3, 100));
        assert!(!b.try_add(1, 3, 100), "bytes over the limit");
        b.sub(1, 1_000_000);
        assert_eq!(b.messages(), 0);
        for _ in 0..3 {
            assert!(b.try_add(10, 3, 100));
        }
        assert!(!b.try_add(10, 3, 100), "messages at the limit");
        b.sub(1, 10);
        assert!(b.try_add(10, 3, 100));
        assert_eq!(b.messages(), 3);
    }

    #[test]
    fn numbers_are_valid_and_owned() {
        let mut t = ChannelTable::new();
        let a = t.allocate(7).unwrap();
        let b = t.allocate(8).unwrap();
        assert_ne!(a, b);
        for c in [a, b] {
            assert!(c != 0 && c != 65535);
        }
        assert_eq!(t.owner(a), Some(7));
        assert_eq!(t.owner(b), Some(8));
        t.release(a);
        assert_eq!(t.owner(a), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn quarantine_keeps_released_numbers_out() {
        let mut t = ChannelTable::with_quarantine(3);
        // Fill the table completely, then free four numbers one by one.
        let all: Vec<u16> = (0..65534).map(|_| t.allocate(1).unwrap()).collect();
        assert_eq!(t.allocate(1), None, "full table fails instead of looping");
        for &c in &all[..4] {
            t.release(c);
        }
        // Only the oldest released number has left the 3-slot quarantine.
        assert_eq!(t.allocate(1), Some(all[0]));
        assert_eq!(t.allocate(1), None);
    }

    #[test]
    fn released_records_are_freed_so_numbers_never_run_out() {
        let mut t = ChannelTable::new();
        for _ in 0..200_000 {
            let c = t
                .allocate(1)
                .expect("records are released, so numbers never run out");
            t.release(c);
        }
        assert_eq!(t.len(), 0);
    }
}
