//! The persistence contract inside the engine: which keys have a write in flight, what waits
//! for them, and the dot allocator whose ceiling is made durable before its dots are used.

use std::collections::BTreeMap;

use crate::types::{Key, NodeId};

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
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    next_token: u64,
    durable: u64,
    /// Key → token of its latest write.
    latest: BTreeMap<Key, u64>,
    waiting: BTreeMap<Key, Vec<Deferred>>,
}

impl InFlight {
    /// A fresh token for a write of `key` (`None`: not a key write).
    pub(crate) fn issue(&mut self, key: Option<&[u8]>) -> u64 {
        self.next_token += 1;
        if let Some(k) = key {
            self.latest.insert(k.to_vec(), self.next_token);
        }
        self.next_token
    }

    /// Whether `key` has a write in flight.
    pub(crate) fn is_dirty(&self, key: &[u8]) -> bool {
        self.latest.contains_key(key)
    }

    /// Queues `d` until `key` is clean; `Some(d)` back if it is clean already.
    pub(crate) fn defer(&mut self, key: &[u8], d: Deferred) -> Option<Deferred> {
        if self.is_dirty(key) {
            self.waiting.entry(key.to_vec()).or_default().push(d);
            None
        } else {
            Some(d)
        }
    }

    /// Highest token issued.
    pub(crate) fn issued(&self) -> u64 {
        self.next_token
    }

    /// Records tokens up to `token` durable; returns the work now released, per key.
    pub(crate) fn confirm(&mut self, token: u64) -> Vec<(Key, Deferred)> {
        self.durable = self.durable.max(token);
        let durable = self.durable;
        let clean: Vec<Key> = self
            .latest
            .iter()
            .filter(|(_, &t)| t <= durable)
            .map(|(k, _)| k.clone())
            .collect();
        let mut released = Vec::new();
        for k in clean {
            self.latest.remove(&k);
            for d in self.waiting.remove(&k).unwrap_or_default() {
                released.push((k.clone(), d));
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
