//! Raft's own safety properties, beside the shared ones of [`super::SharedChecker`].
//!
//! The checker keeps a global record of what the cluster has ever shown: the leader of each term,
//! every (index, term) ever stored with its payload digest and predecessor term, and every entry
//! ever known committed. Each step it compares what the nodes show now against that record:
//!
//! - **election safety**: at most one leader per term;
//! - **log matching**: an (index, term) pair names one payload and one predecessor term, which by
//!   induction makes two logs that share an entry identical up to it;
//! - **leader completeness**: a node that becomes leader in term `t` holds every entry committed in
//!   an earlier term;
//! - **committed entries never change**: once an index is known committed, every log that holds it
//!   through its commit index holds the same entry.

use std::collections::BTreeMap;

use super::{payload_digest, violation, Violation};
use crate::raft::HardState;
use crate::storage::{MemStorage, Storage};
use crate::types::{Entry, NodeId, Role};

/// What one node shows at a point in time.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
    /// Index through which its state machine has applied.
    pub applied: u64,
    /// Index and term of its latest snapshot (0, 0 if none).
    pub snapshot: (u64, u64),
    /// Its log (the engine's storage view: durable or not).
    pub log: &'a MemStorage<HardState>,
}

impl NodeView<'_> {
    fn last_index(&self) -> u64 {
        self.log.last_index().max(self.snapshot.0)
    }

    /// The term of the entry at `index`, if this node still holds it (or it is the snapshot's).
    fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.0 {
            return Some(self.snapshot.1);
        }
        if index < self.snapshot.0 {
            return None;
        }
        self.log.entry(index).map(|e| e.term)
    }

    fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.snapshot.0 {
            return None;
        }
        self.log.entry(index)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct NodeRecord {
    term: u64,
    commit: u64,
    applied: u64,
    /// Entries from this index on changed since the last check.
    dirty_from: Option<u64>,
    /// Index through which this node's committed entries were compared with the global record.
    verified_commit: u64,
}

#[derive(Clone, Copy, Debug)]
struct Committed {
    term: u64,
    digest: u64,
    /// The term of the node that first showed the entry committed.
    commit_term: u64,
}

/// Raft's invariant checker. Feed it every log write and restart, and call
/// [`RaftChecker::check`] after every step.
#[derive(Clone, Debug, Default)]
pub struct RaftChecker {
    leaders: BTreeMap<u64, NodeId>,
    /// (index, term) -> (payload digest, term of the previous entry).
    entries: BTreeMap<(u64, u64), (u64, u64)>,
    committed: BTreeMap<u64, Committed>,
    nodes: BTreeMap<NodeId, NodeRecord>,
}

impl RaftChecker {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries of `node` from index `from` on were (re)written.
    pub fn log_written(&mut self, node: NodeId, from: u64) {
        let record = self.nodes.entry(node).or_default();
        record.dirty_from = Some(record.dirty_from.map_or(from, |d| d.min(from)));
    }

    /// `node` restarted from durable state: its volatile commit starts over.
    pub fn restarted(&mut self, node: NodeId, term: u64, applied: u64) {
        let record = self.nodes.entry(node).or_default();
        record.term = term;
        record.commit = applied;
        record.applied = applied;
        record.dirty_from = Some(0);
        record.verified_commit = 0;
    }

    /// How many entries are known committed.
    pub fn committed_len(&self) -> u64 {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }

    /// The term of the committed entry at `index`, if known.
    pub fn committed_term(&self, index: u64) -> Option<u64> {
        self.committed.get(&index).map(|c| c.term)
    }

    /// Checks every property against what the live nodes show now.
    pub fn check(&mut self, nodes: &[NodeView<'_>]) -> Result<(), Violation> {
        for view in nodes {
            self.check_node(view)?;
        }
        Ok(())
    }

    fn check_node(&mut self, view: &NodeView<'_>) -> Result<(), Violation> {
        let id = view.id;
        if view.commit > view.last_index() {
            return violation(
                "commit <= last index",
                format!(
                    "node {id}: commit {} last index {}",
                    view.commit,
                    view.last_index()
                ),
            );
        }
        let mut record = self.nodes.get(&id).copied().unwrap_or_default();

        // Election safety, and leader completeness for a leader seen for the first time.
        if view.role == Role::Leader {
            match self.leaders.get(&view.term) {
                Some(&other) if other != id => {
                    return violation(
                        "election safety",
                        format!("nodes {other} and {id} both lead term {}", view.term),
                    )
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(view.term, id);
                    self.check_leader_completeness(view)?;
                }
            }
        }

        // Log matching over the entries written since the last check.
        if let Some(from) = record.dirty_from.take() {
            let start = from.max(view.snapshot.0 + 1);
            for index in start..=view.last_index() {
                let Some(entry) = view.entry(index) else {
                    break;
                };
                let prev_term = view.term_at(index - 1).unwrap_or(0);
                let digest = payload_digest(entry);
                let known = *self
                    .entries
                    .entry((index, entry.term))
                    .or_insert((digest, prev_term));
                if known.0 != digest {
                    return violation(
                        "log matching",
                        format!(
                            "node {id} holds a different payload at index {index} term {} than \
                             another log with the same index and term",
                            entry.term
                        ),
                    );
                }
                if known.1 != prev_term {
                    return violation(
                        "log matching",
                        format!(
                            "node {id} holds index {index} term {} after an entry of term \
                             {prev_term}; another log has it after term {}",
                            entry.term, known.1
                        ),
                    );
                }
            }
            record.verified_commit = record.verified_commit.min(from.saturating_sub(1));
        }

        // Committed entries never change; record new ones.
        for index in (record.verified_commit + 1).max(view.snapshot.0)..=view.commit {
            let (term, digest) = match view.entry(index) {
                Some(entry) => (entry.term, payload_digest(entry)),
                None if index == view.snapshot.0 => {
                    if let Some(c) = self.committed.get(&index) {
                        if c.term != view.snapshot.1 {
                            return violation(
                                "committed entries never change",
                                format!(
                                    "node {id} has a snapshot at index {index} term {} but the \
                                     committed entry there has term {}",
                                    view.snapshot.1, c.term
                                ),
                            );
                        }
                    }
                    continue;
                }
                None => break,
            };
            match self.committed.get(&index) {
                Some(c) if (c.term, c.digest) != (term, digest) => {
                    return violation(
                        "committed entries never change",
                        format!(
                            "node {id} shows index {index} committed with term {term}; it was \
                             committed earlier with term {}",
                            c.term
                        ),
                    )
                }
                Some(_) => {}
                None => {
                    self.committed.insert(
                        index,
                        Committed {
                            term,
                            digest,
                            commit_term: view.term,
                        },
                    );
                }
            }
        }
        record.verified_commit = record.verified_commit.max(view.commit);

        record.term = view.term;
        record.commit = view.commit;
        record.applied = view.applied;
        self.nodes.insert(id, record);
        Ok(())
    }

    fn check_leader_completeness(&self, view: &NodeView<'_>) -> Result<(), Violation> {
        for (&index, c) in &self.committed {
            if c.commit_term >= view.term {
                continue;
            }
            let held = if index < view.snapshot.0 {
                true
            } else {
                view.term_at(index) == Some(c.term)
                    && view
                        .entry(index)
                        .is_none_or(|e| payload_digest(e) == c.digest)
            };
            if !held {
                return violation(
                    "leader completeness",
                    format!(
                        "node {} leads term {} without index {index} (term {}), committed in term {}",
                        view.id, view.term, c.term, c.commit_term
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Write;
    use crate::types::{ConfState, EntryPayload};
    use bytes::Bytes;

    fn e(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Data(Bytes::from_static(data)),
        }
    }

    fn log(entries: &[Entry]) -> MemStorage {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1, 2, 3]));
        storage
            .write(&Write {
                snapshot: None,
                truncate_from: None,
                entries: entries.to_vec().into(),
                hard_state: None,
                sync: true,
            })
            .unwrap();
        storage
    }

    fn view<'a>(
        id: NodeId,
        role: Role,
        term: u64,
        commit: u64,
        log: &'a MemStorage,
    ) -> NodeView<'a> {
        NodeView {
            id,
            role,
            term,
            commit,
            applied: 0,
            snapshot: (0, 0),
            log,
        }
    }

    #[test]
    fn two_leaders_in_one_term_break_election_safety() {
        let mut c = RaftChecker::new();
        let empty = log(&[]);
        c.check(&[view(1, Role::Leader, 2, 0, &empty)]).unwrap();
        let err = c.check(&[view(2, Role::Leader, 2, 0, &empty)]).unwrap_err();
        assert_eq!(err.property, "election safety");
    }

    #[test]
    fn different_payloads_under_one_index_and_term_break_log_matching() {
        let mut c = RaftChecker::new();
        let a = log(&[e(1, 1, b"x")]);
        let b = log(&[e(1, 1, b"y")]);
        c.log_written(1, 1);
        c.log_written(2, 1);
        c.check(&[view(1, Role::Follower, 1, 0, &a)]).unwrap();
        let err = c.check(&[view(2, Role::Follower, 1, 0, &b)]).unwrap_err();
        assert_eq!(err.property, "log matching");
    }

    #[test]
    fn a_committed_entry_that_changes_is_caught() {
        let mut c = RaftChecker::new();
        let a = log(&[e(1, 1, b"x")]);
        let b = log(&[e(1, 2, b"y")]);
        c.log_written(1, 1);
        c.check(&[view(1, Role::Follower, 1, 1, &a)]).unwrap();
        c.log_written(2, 1);
        let err = c.check(&[view(2, Role::Follower, 2, 1, &b)]).unwrap_err();
        assert_eq!(err.property, "committed entries never change");
    }

    #[test]
    fn a_leader_missing_an_earlier_committed_entry_is_caught() {
        let mut c = RaftChecker::new();
        let a = log(&[e(1, 1, b"x")]);
        let empty = log(&[]);
        c.log_written(1, 1);
        c.check(&[view(1, Role::Leader, 1, 1, &a)]).unwrap();
        let err = c.check(&[view(2, Role::Leader, 2, 0, &empty)]).unwrap_err();
        assert_eq!(err.property, "leader completeness");
    }
}
