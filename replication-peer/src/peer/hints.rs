//! Hinted handoff, held by the coordinator: every push is a hint until its replica
//! acknowledges it durably; unacknowledged hints are replayed (with the key's *current* object,
//! never a stale copy) until the replica answers. Bounded per peer: past the bound a push is not
//! remembered (counted in `dropped`) and anti-entropy repairs the replica instead.

use std::collections::BTreeMap;

use crate::types::{Key, NodeId};

#[derive(Clone, Copy, Debug)]
struct Hint {
    /// Sequence of the latest push of this key to this peer.
    seq: u64,
    /// When it was (re)sent.
    sent_at: u64,
}

/// Hints per peer.
#[derive(Debug)]
pub(crate) struct Hints {
    per_peer: BTreeMap<NodeId, BTreeMap<Key, Hint>>,
    next_seq: u64,
    max_per_peer: usize,
    dropped: u64,
}

impl Hints {
    pub(crate) fn new(max_per_peer: usize) -> Self {
        Hints {
            per_peer: BTreeMap::new(),
            next_seq: 0,
            max_per_peer,
            dropped: 0,
        }
    }

    /// A push of `key` to `peer` is going out now; returns its sequence number.
    pub(crate) fn push(&mut self, peer: NodeId, key: &[u8], now: u64) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        let hints = self.per_peer.entry(peer).or_default();
        if let Some(h) = hints.get_mut(key) {
            *h = Hint { seq, sent_at: now };
        } else if hints.len() < self.max_per_peer {
            hints.insert(key.to_vec(), Hint { seq, sent_at: now });
        } else {
            self.dropped += 1;
        }
        seq
    }

    /// `peer` holds push `seq` of `key` (or a later one) durably.
    pub(crate) fn acked(&mut self, peer: NodeId, key: &[u8], seq: u64) {
        if let Some(hints) = self.per_peer.get_mut(&peer) {
            if hints.get(key).is_some_and(|h| h.seq <= seq) {
                hints.remove(key);
            }
        }
    }

    /// Forgets a hint (the key was collected).
    pub(crate) fn forget(&mut self, peer: NodeId, key: &[u8]) {
        if let Some(hints) = self.per_peer.get_mut(&peer) {
            hints.remove(key);
        }
    }

    /// Up to `limit` hints per peer last sent at least `retry` ago.
    pub(crate) fn due(&self, now: u64, retry: u64, limit: usize) -> Vec<(NodeId, Key)> {
        let mut out = Vec::new();
        for (&peer, hints) in &self.per_peer {
            out.extend(
                hints
                    .iter()
                    .filter(|(_, h)| now.saturating_sub(h.sent_at) >= retry)
                    .take(limit)
                    .map(|(k, _)| (peer, k.clone())),
            );
        }
        out
    }

    /// Hints pending per peer (peers with none are left out).
    pub(crate) fn pending(&self) -> BTreeMap<NodeId, usize> {
        self.per_peer
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(&p, h)| (p, h.len()))
            .collect()
    }

    /// Pushes not remembered because a peer's hints were full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_bounded_per_peer_and_an_old_ack_does_not_clear_a_newer_push() {
        let mut h = Hints::new(2);
        let s1 = h.push(2, b"a", 0);
        h.push(2, b"b", 0);
        h.push(2, b"c", 0);
        assert_eq!(h.pending()[&2], 2);
        assert_eq!(h.dropped(), 1);
        let s2 = h.push(2, b"a", 5);
        h.acked(2, b"a", s1);
        assert_eq!(
            h.pending()[&2],
            2,
            "the ack of the first push leaves the second pending"
        );
        h.acked(2, b"a", s2);
        assert_eq!(h.pending()[&2], 1);
        assert_eq!(h.due(10, 10, 8), vec![(2, b"b".to_vec())]);
    }
}
