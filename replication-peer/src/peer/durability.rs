//! The persistence contract inside the engine: which keys have a write in flight, what waits
//! for them, and the dot allocator whose ceiling is made durable before its dots are used.

use std::collections::VecDeque;

use crate::types::{key_map, Key, KeyMap, NodeId};

/// Something that may happen only once a key has no write in flight (its state is durable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Deferred {
    /// The coordinator's own write of request `tag` is durable: count it, push to the others.
    LocalWriteDone { tag: u64 },
    /// The coordinator's own part of read `tag`.
    LocalRead { tag: u64 },
    /// Answer a peer's read.
    ReadReply { to: NodeId, tag: u64 },
    /// Acknowledge a push.
    Ack { to: NodeId, tag: u64, seq: u64 },
    /// Replay a hint.
    Push { to: NodeId, seq: u64 },
}

/// Keys with writes in flight and the work waiting on them.
#[derive(Debug)]
pub(crate) struct InFlight {
    next_token: u64,
    durable: u64,
    /// Key → token of its latest write.
    latest: KeyMap<u64>,
    /// Every key write not yet durable, in token order: a confirmation walks only what it
    /// makes durable, not every key in flight.
    pending: VecDeque<(u64, Key)>,
    waiting: KeyMap<Vec<Deferred>>,
}

impl InFlight {
    /// Nothing in flight; `seed` seeds the key maps' hash (see `Config::index_seed`).
    pub(crate) fn new(seed: u64) -> Self {
        InFlight {
            next_token: 0,
            durable: 0,
            latest: key_map(seed),
            pending: VecDeque::new(),
            waiting: key_map(seed),
        }
    }

    /// A fresh token for a write of `key` (`None`: not a key write).
    pub(crate) fn issue(&mut self, key: Option<&[u8]>) -> u64 {
        self.next_token += 1;
        if let Some(k) = key {
            self.latest.insert(k.to_vec(), self.next_token);
            self.pending.push_back((self.next_token, k.to_vec()));
        }
        self.next_token
    }

    /// Whether `key` has a write in flight.
    pub(crate) fn is_dirty(&self, key: &[u8]) -> bool {
        self.latest.contains_key(key)
    }

    /// Queues `d` until `key` is clean; `Some(d)` back if it is clean already.
    pub(crate) fn defer(&mut self, key: &[u8], d: Deferred) -> Option<Deferred> {
        if !self.is_dirty(key) {
            return Some(d);
        }
        match self.waiting.get_mut(key) {
            Some(queue) => queue.push(d),
            None => {
                self.waiting.insert(key.to_vec(), vec![d]);
            }
        }
        None
    }

    /// Highest token issued.
    pub(crate) fn issued(&self) -> u64 {
        self.next_token
    }

    /// Records tokens up to `token` durable; returns the work now released, key by key in the
    /// order their last writes were issued, each key's work in the order it was deferred.
    pub(crate) fn confirm(&mut self, token: u64) -> Vec<(Key, Deferred)> {
        self.durable = self.durable.max(token);
        let mut released = Vec::new();
        while let Some((t, key)) = self.pending.pop_front() {
            if t > self.durable {
                self.pending.push_front((t, key));
                break;
            }
            // A later write of the key keeps it dirty until that one is durable.
            if self.latest.get(&key) != Some(&t) {
                continue;
            }
            self.latest.remove(&key);
            if let Some(work) = self.waiting.remove(&key) {
                released.extend(work.into_iter().map(|d| (key.clone(), d)));
            }
        }
        released
    }

    /// Keys with a write in flight.
    pub(crate) fn dirty_keys(&self) -> usize {
        self.latest.len()
    }
}

/// Dot counters: unique per node across all keys, restarts and collected tombstones.
///
/// A counter is used only below a ceiling that is durable, and the ceiling is raised a block at
/// a time ahead of need; after a crash, counting resumes above the durable ceiling, so a counter
/// handed out before the crash (even one whose write was lost) is never handed out again.
#[derive(Debug)]
pub(crate) struct DotAllocator {
    issued: u64,
    ceiling: u64,
    block: u64,
    reserving: Option<(u64, u64)>,
}

impl DotAllocator {
    pub(crate) fn recover(ceiling: u64, floor: u64, block: u64) -> Self {
        let start = ceiling.max(floor);
        DotAllocator {
            issued: start,
            ceiling: start,
            block,
            reserving: None,
        }
    }

    /// Whether a dot can be handed out now.
    pub(crate) fn available(&self) -> bool {
        self.issued < self.ceiling
    }

    /// The next counter. Call only when `available()`.
    pub(crate) fn next(&mut self) -> u64 {
        debug_assert!(self.available());
        self.issued += 1;
        self.issued
    }

    /// Largest counter handed out.
    pub(crate) fn issued(&self) -> u64 {
        self.issued
    }

    /// Durable ceiling.
    pub(crate) fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// A new ceiling to persist, if the allocator is running low and none is pending.
    pub(crate) fn want_reservation(&mut self) -> Option<u64> {
        if self.reserving.is_none() && self.ceiling - self.issued <= self.block / 2 {
            Some(self.issued.max(self.ceiling).saturating_add(self.block))
        } else {
            None
        }
    }

    /// The write of `ceiling` went out with `token`.
    pub(crate) fn reserving(&mut self, token: u64, ceiling: u64) {
        self.reserving = Some((token, ceiling));
    }

    /// Tokens up to `durable` are durable; `true` if a reservation completed.
    pub(crate) fn confirm(&mut self, durable: u64) -> bool {
        match self.reserving {
            Some((t, c)) if t <= durable => {
                self.ceiling = c;
                self.reserving = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(tag: u64) -> Deferred {
        Deferred::Ack {
            to: 2,
            tag,
            seq: tag,
        }
    }

    #[test]
    fn a_key_is_clean_once_its_latest_write_is_durable_and_its_work_comes_out_in_order() {
        let mut f = InFlight::new(7);
        let a1 = f.issue(Some(b"a"));
        let b = f.issue(Some(b"b"));
        let a2 = f.issue(Some(b"a"));
        assert_eq!(f.issue(None), a2 + 1, "a token for no key still counts");
        assert_eq!(
            f.defer(b"c", ack(9)),
            Some(ack(9)),
            "a clean key runs at once"
        );
        assert_eq!(f.defer(b"a", ack(1)), None);
        assert_eq!(f.defer(b"b", ack(2)), None);
        assert_eq!(f.defer(b"a", ack(3)), None);
        assert_eq!(f.dirty_keys(), 2);

        // `a`'s first write is durable, its second is not: `a` stays dirty.
        assert!(f.confirm(a1).is_empty());
        assert!(f.is_dirty(b"a"));
        assert_eq!(f.confirm(b), vec![(b"b".to_vec(), ack(2))]);
        assert!(!f.is_dirty(b"b"));
        assert!(f.is_dirty(b"a"));

        // A confirmation past every write releases the rest; a repeated one releases nothing.
        assert_eq!(
            f.confirm(a2 + 1),
            vec![(b"a".to_vec(), ack(1)), (b"a".to_vec(), ack(3))]
        );
        assert_eq!(f.dirty_keys(), 0);
        assert!(f.confirm(a2 + 1).is_empty());
        assert_eq!(f.defer(b"a", ack(4)), Some(ack(4)));
    }

    #[test]
    fn a_confirmation_below_what_was_confirmed_changes_nothing() {
        let mut f = InFlight::new(0);
        let first = f.issue(Some(b"k"));
        let second = f.issue(Some(b"k"));
        assert!(f.confirm(second).is_empty());
        assert!(!f.is_dirty(b"k"));
        assert!(f.confirm(first).is_empty());
        let third = f.issue(Some(b"k"));
        assert_eq!(f.defer(b"k", ack(5)), None);
        assert!(f.confirm(first).is_empty(), "durable never moves back");
        assert_eq!(f.confirm(third), vec![(b"k".to_vec(), ack(5))]);
    }
}
