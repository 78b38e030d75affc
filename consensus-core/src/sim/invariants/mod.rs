//! Safety properties checked after every simulator step.
//!
//! [`SharedChecker`] holds what every protocol must keep, judged only from what the replica loop
//! hands out (status and applied entries), so it needs nothing protocol-specific:
//!
//! - **state-machine safety**: every replica that applied position `i` applied the same payload
//!   there and reached the same state (payloads, not terms: a Paxos leader re-proposes a value
//!   under its own ballot);
//! - **nothing applied past a gap**: a replica applies positions 1, 2, 3, … with none skipped
//!   (a snapshot may jump ahead);
//! - **monotonic term, commit and applied** during one life of a node (a restart may go back to
//!   what was durable), and `applied <= commit`.
//!
//! Each protocol adds its own ([`raft::RaftChecker`]: election safety, log matching, leader
//! completeness, committed entries never change; Multi-Paxos: one value chosen per slot, chosen
//! values stay chosen, promises never go back).

pub mod raft;

use std::collections::BTreeMap;

use crate::types::{Entry, EntryPayload, NodeId, Status};

/// A safety violation, with what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The property broken.
    pub property: &'static str,
    /// What exactly was seen.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.property, self.detail)
    }
}

/// Shorthand for a failed check.
pub fn violation(property: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { property, detail })
}

/// A stable digest of an entry's payload.
pub fn payload_digest(entry: &Entry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match &entry.payload {
        EntryPayload::Noop => feed(b"noop"),
        EntryPayload::Data(data) => {
            feed(b"data");
            feed(data);
        }
        EntryPayload::ConfChange(change) => {
            feed(b"conf");
            feed(format!("{change:?}").as_bytes());
        }
    }
    h
}

#[derive(Clone, Copy, Debug, Default)]
struct NodeRecord {
    term: u64,
    commit: u64,
    applied: u64,
}

/// The checks every protocol shares. Feed it every apply, snapshot restore and restart, and call
/// [`SharedChecker::check`] after every step.
#[derive(Clone, Debug, Default)]
pub struct SharedChecker {
    /// index -> (payload digest, state digest after applying it).
    applied: BTreeMap<u64, (u64, u64)>,
    nodes: BTreeMap<NodeId, NodeRecord>,
}

impl SharedChecker {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// `node` restarted from durable state: its volatile commit and applied start over at
    /// `applied` (the snapshot it restored).
    pub fn restarted(&mut self, node: NodeId, term: u64, applied: u64) {
        self.nodes.insert(
            node,
            NodeRecord {
                term,
                commit: applied,
                applied,
            },
        );
    }

    /// The highest position any replica applied.
    pub fn applied_len(&self) -> u64 {
        self.applied.keys().next_back().copied().unwrap_or(0)
    }

    /// `node`, having applied through `previous`, applied `entry`, after which its state machine
    /// digest is `state`.
    pub fn applied(
        &mut self,
        node: NodeId,
        previous: u64,
        entry: &Entry,
        state: u64,
    ) -> Result<(), Violation> {
        if entry.index != previous + 1 {
            return violation(
                "nothing applied past a gap",
                format!(
                    "node {node} applied position {} after position {previous}",
                    entry.index
                ),
            );
        }
        let digest = payload_digest(entry);
        match self.applied.get(&entry.index) {
            Some(&(payload, seen)) if payload != digest => violation(
                "state machine safety",
                format!(
                    "node {node} applied another payload at position {} (term {}) than a replica \
                     before it (state {seen:#x})",
                    entry.index, entry.term
                ),
            ),
            Some(&(_, seen)) if seen != state => violation(
                "state machine safety",
                format!(
                    "node {node} applied position {} reaching state {state:#x}; another replica \
                     reached {seen:#x}",
                    entry.index
                ),
            ),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(entry.index, (digest, state));
                Ok(())
            }
        }
    }

    /// `node` restored its state machine from a snapshot at `index` with digest `state`.
    pub fn restored(&mut self, node: NodeId, index: u64, state: u64) -> Result<(), Violation> {
        match self.applied.get(&index) {
            Some(&(_, seen)) if seen != state && index > 0 => violation(
                "state machine safety",
                format!(
                    "node {node} restored a snapshot at index {index} with state {state:#x}; \
                     replicas that applied through {index} reached {seen:#x}"
                ),
            ),
            _ => Ok(()),
        }
    }

    /// Checks the monotonic properties against what `status` shows now, with the state machine
    /// applied through `applied`.
    pub fn check(&mut self, status: &Status, applied: u64) -> Result<(), Violation> {
        let id = status.id;
        let record = self.nodes.get(&id).copied().unwrap_or_default();
        if status.term < record.term {
            return violation(
                "monotonic term",
                format!(
                    "node {id} term went from {} to {}",
                    record.term, status.term
                ),
            );
        }
        if status.commit < record.commit {
            return violation(
                "monotonic commit",
                format!(
                    "node {id} commit went from {} to {}",
                    record.commit, status.commit
                ),
            );
        }
        if applied < record.applied {
            return violation(
                "monotonic applied",
                format!(
                    "node {id} applied went from {} to {applied}",
                    record.applied
                ),
            );
        }
        if applied > status.commit {
            return violation(
                "applied <= commit",
                format!("node {id}: applied {applied} commit {}", status.commit),
            );
        }
        self.nodes.insert(
            id,
            NodeRecord {
                term: status.term,
                commit: status.commit,
                applied,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn e(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Data(Bytes::from_static(data)),
        }
    }

    #[test]
    fn replicas_that_apply_the_same_index_to_different_states_are_caught() {
        let mut c = SharedChecker::new();
        let entry = e(1, 1, b"x");
        c.applied(1, 0, &entry, 10).unwrap();
        c.applied(2, 0, &entry, 10).unwrap();
        let err = c.applied(3, 0, &entry, 11).unwrap_err();
        assert_eq!(err.property, "state machine safety");
    }

    #[test]
    fn replicas_that_apply_different_payloads_at_one_position_are_caught_whatever_the_term() {
        let mut c = SharedChecker::new();
        c.applied(1, 0, &e(1, 1, b"x"), 10).unwrap();
        // The same payload under another term (a re-proposed Paxos value) is fine …
        c.applied(2, 0, &e(1, 7, b"x"), 10).unwrap();
        // … another payload is not.
        let err = c.applied(3, 0, &e(1, 1, b"y"), 10).unwrap_err();
        assert_eq!(err.property, "state machine safety");
    }

    #[test]
    fn applying_past_a_gap_is_caught() {
        let mut c = SharedChecker::new();
        let err = c.applied(1, 0, &e(2, 1, b"x"), 10).unwrap_err();
        assert_eq!(err.property, "nothing applied past a gap");
    }
}
