//! Zab's own safety properties, beside the simulator's shared ones (state-machine safety, no
//! gaps, monotonic epoch / commit / applied). Pure: fed by hooks, no engine access but the views
//! passed in.
//!
//! - **integrity**: a member delivers only a proposal some leader broadcast (every entry ever
//!   written is recorded by zxid as it is written), and a zxid names one proposal;
//! - **agreement / total order**: members that deliver position `i` deliver the same zxid there;
//! - **primary order**: along the positions a member delivers, epochs never go down — each
//!   leader's proposals come in its order, after every earlier leader's delivered ones;
//! - **delivered proposals never change**: a member's history through its commit point holds the
//!   delivered zxids (nothing delivered is skipped, truncated or reordered after a leader change);
//!   a member never shows a commit point beyond its history;
//! - **committed only once durable on a quorum**: when a leader's commit point moves to `c`, a
//!   quorum of its voters has the proposal at `c` on disk (fed by the durable-write hook), which
//!   is what ACKs held until their write is confirmed guarantee;
//! - **at most one leader per epoch**, and a leader of a new epoch holds every proposal delivered
//!   before it was established (what discovery and the election ordering guarantee).

use std::collections::BTreeMap;

use super::HardState;
use crate::sim::invariants::{payload_digest, violation, Violation};
use crate::storage::{MemStorage, Storage};
use crate::types::{Entry, NodeId, Role};

/// What one member shows at a point in time.
#[derive(Clone, Copy, Debug)]
pub struct ZabView<'a> {
    /// The member.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current epoch.
    pub epoch: u64,
    /// Its commit point.
    pub commit: u64,
    /// Its history (the engine's storage view).
    pub log: &'a MemStorage<HardState>,
}

impl ZabView<'_> {
    fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// Epoch at `index`; `None` if not held, `Some(None)` if compacted.
    fn epoch_at(&self, index: u64) -> Option<Option<u64>> {
        let snap = self.log.snapshot_meta().index;
        if index <= snap {
            return Some(None);
        }
        self.log.entry(index).map(|e| Some(e.term))
    }
}

/// Zab's checker (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct ZabChecker {
    /// (index, epoch) -> payload digest of every proposal ever written.
    proposals: BTreeMap<(u64, u64), u64>,
    /// index -> (epoch, digest) delivered.
    delivered: BTreeMap<u64, (u64, u64)>,
    /// epoch -> its leader.
    leaders: BTreeMap<u64, NodeId>,
    /// Per member: the last position delivered and its epoch.
    last_delivered: BTreeMap<NodeId, (u64, u64)>,
    /// Per member: positions through which its history was compared with the delivered ones.
    verified: BTreeMap<NodeId, u64>,
    /// A violation seen in a hook that cannot report one.
    pending: Option<Violation>,
    /// Per member: what its disk holds (position -> epoch), and its durable snapshot point.
    disks: BTreeMap<NodeId, (BTreeMap<u64, u64>, u64)>,
    /// Per (leader, epoch): the commit point last checked against the disks.
    commit_checked: BTreeMap<(NodeId, u64), u64>,
}

impl ZabChecker {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// `node` wrote `entries`, truncating from `truncate_from` first.
    pub fn written(&mut self, node: NodeId, truncate_from: Option<u64>, entries: &[Entry]) {
        let from = truncate_from
            .into_iter()
            .chain(entries.first().map(|e| e.index))
            .min();
        if let Some(from) = from {
            let v = self.verified.entry(node).or_insert(0);
            *v = (*v).min(from.saturating_sub(1));
        }
        for entry in entries {
            let digest = payload_digest(entry);
            let seen = *self
                .proposals
                .entry((entry.index, entry.term))
                .or_insert(digest);
            if seen != digest && self.pending.is_none() {
                self.pending = Some(Violation {
                    property: "integrity",
                    detail: format!(
                        "node {node} wrote another proposal under zxid {}@{}",
                        entry.term, entry.index
                    ),
                });
            }
        }
    }

    /// `write` (its snapshot point, truncation and entries) reached `node`'s disk.
    pub fn durable(
        &mut self,
        node: NodeId,
        snapshot: Option<(u64, u64)>,
        truncate_from: Option<u64>,
        entries: &[Entry],
    ) {
        let (disk, snap) = self.disks.entry(node).or_default();
        if let Some((index, epoch)) = snapshot {
            if index > *snap {
                *snap = index;
                disk.insert(index, epoch);
            }
        }
        if let Some(from) = truncate_from {
            let from = from.max(*snap + 1);
            disk.retain(|&i, _| i < from);
        }
        for entry in entries {
            disk.insert(entry.index, entry.term);
        }
    }

    /// `node` restarted on `disk` (what survived, including writes that reached the disk
    /// unreported), with its state machine at `applied`.
    pub fn restarted_on(&mut self, node: NodeId, disk: &MemStorage<HardState>, applied: u64) {
        let snap = disk.snapshot_meta();
        let mut held: BTreeMap<u64, u64> =
            disk.stored_entries().map(|e| (e.index, e.term)).collect();
        held.insert(snap.index, snap.term);
        self.disks.insert(node, (held, snap.index));
        self.restarted(node, applied);
    }

    /// `node` restarted with its state machine at `applied`.
    pub fn restarted(&mut self, node: NodeId, applied: u64) {
        self.last_delivered.insert(node, (applied, 0));
        self.verified.insert(node, applied);
    }

    /// `node` delivered (applied) `entry`.
    pub fn delivered(&mut self, node: NodeId, entry: &Entry) -> Result<(), Violation> {
        let digest = payload_digest(entry);
        match self.proposals.get(&(entry.index, entry.term)) {
            Some(&d) if d == digest => {}
            _ => {
                return violation(
                    "integrity",
                    format!(
                        "node {node} delivered {}@{}, which no leader broadcast",
                        entry.term, entry.index
                    ),
                )
            }
        }
        match self.delivered.get(&entry.index) {
            Some(&(epoch, d)) if (epoch, d) != (entry.term, digest) => {
                return violation(
                    "agreement",
                    format!(
                    "node {node} delivered zxid {}@{} where another member delivered epoch {epoch}",
                    entry.term, entry.index
                ),
                )
            }
            Some(_) => {}
            None => {
                self.delivered.insert(entry.index, (entry.term, digest));
            }
        }
        let (last, last_epoch) = self.last_delivered.get(&node).copied().unwrap_or((0, 0));
        if entry.index == last + 1 && entry.term < last_epoch {
            return violation(
                "primary order",
                format!(
                    "node {node} delivered {}@{} after a proposal of epoch {last_epoch}",
                    entry.term, entry.index
                ),
            );
        }
        self.last_delivered.insert(node, (entry.index, entry.term));
        Ok(())
    }

    fn check_commit_durable(
        &mut self,
        view: ZabView<'_>,
        voters: &std::collections::BTreeSet<NodeId>,
    ) -> Result<(), Violation> {
        let c = view.commit;
        let key = (view.id, view.epoch);
        let checked = self.commit_checked.get(&key).copied().unwrap_or(0);
        if c <= checked || c <= view.log.snapshot_meta().index {
            return Ok(());
        }
        self.commit_checked.insert(key, c);
        let Some(epoch) = view.log.entry(c).map(|e| e.term) else {
            return Ok(());
        };
        // Counted over every member: the change committed at `c` may itself have just changed
        // who votes (quorums of configurations one voter apart differ in size by at most one).
        let holding = self
            .disks
            .values()
            .filter(|(disk, snap)| *snap >= c || disk.get(&c) == Some(&epoch))
            .count();
        // A membership change committed in this step may have changed the quorum size by one.
        let changed = (checked + 1..=c).any(|i| {
            view.log
                .entry(i)
                .is_some_and(|e| matches!(e.payload, crate::types::EntryPayload::ConfChange(_)))
        });
        let quorum = if changed {
            voters.len().saturating_sub(1) / 2 + 1
        } else {
            voters.len() / 2 + 1
        };
        if holding < quorum {
            return violation(
                "committed only once durable on a quorum",
                format!(
                    "leader {} committed {epoch}@{c} while only {holding} members hold it on disk \
                     ({} voters)",
                    view.id,
                    voters.len()
                ),
            );
        }
        Ok(())
    }

    /// Checks what `view` shows now; `voters` are the voters of the membership it is in.
    pub fn check(
        &mut self,
        view: ZabView<'_>,
        voters: &std::collections::BTreeSet<NodeId>,
    ) -> Result<(), Violation> {
        if let Some(v) = self.pending.take() {
            return Err(v);
        }
        let id = view.id;
        if view.commit > view.last_index() {
            return violation(
                "delivered proposals never change",
                format!(
                    "node {id} shows commit {} beyond its history ({})",
                    view.commit,
                    view.last_index()
                ),
            );
        }
        if view.role == Role::Leader {
            self.check_commit_durable(view, voters)?;
            match self.leaders.get(&view.epoch) {
                Some(&other) if other != id => {
                    return violation(
                        "at most one leader per epoch",
                        format!("nodes {other} and {id} both lead epoch {}", view.epoch),
                    )
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(view.epoch, id);
                    for (&index, &(epoch, _)) in &self.delivered {
                        match view.epoch_at(index) {
                            Some(None) => {}
                            Some(Some(e)) if e == epoch => {}
                            held => {
                                return violation(
                                    "leader holds every delivered proposal",
                                    format!(
                                    "node {id} leads epoch {} without delivered {epoch}@{index} \
                                         (holds {held:?})",
                                    view.epoch
                                ),
                                )
                            }
                        }
                    }
                }
            }
        }
        let verified = self.verified.get(&id).copied().unwrap_or(0);
        let hi = view.commit;
        for (&index, &(epoch, _)) in self.delivered.range(verified.min(hi) + 1..hi + 1) {
            match view.epoch_at(index) {
                Some(None) => {}
                Some(Some(e)) if e == epoch => {}
                held => {
                    return violation(
                        "delivered proposals never change",
                        format!(
                            "node {id} holds {held:?} at position {index} (commit {hi}) where \
                             epoch {epoch} was delivered"
                        ),
                    )
                }
            }
        }
        self.verified.insert(id, verified.max(hi));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ConfState, EntryPayload};
    use bytes::Bytes;

    fn e(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Data(Bytes::from_static(data)),
        }
    }

    #[test]
    fn delivering_what_no_leader_broadcast_breaks_integrity() {
        let mut c = ZabChecker::new();
        c.written(1, None, &[e(1, 1, b"x")]);
        assert!(c.delivered(2, &e(1, 1, b"x")).is_ok());
        assert_eq!(
            c.delivered(2, &e(2, 1, b"y")).unwrap_err().property,
            "integrity"
        );
    }

    #[test]
    fn two_zxids_delivered_at_one_position_break_agreement() {
        let mut c = ZabChecker::new();
        c.written(1, None, &[e(1, 1, b"x")]);
        c.written(2, None, &[e(1, 2, b"y")]);
        c.delivered(1, &e(1, 1, b"x")).unwrap();
        assert_eq!(
            c.delivered(2, &e(1, 2, b"y")).unwrap_err().property,
            "agreement"
        );
    }

    #[test]
    fn an_older_epoch_delivered_after_a_newer_breaks_primary_order() {
        let mut c = ZabChecker::new();
        c.written(1, None, &[e(1, 2, b"x"), e(2, 1, b"y")]);
        c.delivered(1, &e(1, 2, b"x")).unwrap();
        assert_eq!(
            c.delivered(1, &e(2, 1, b"y")).unwrap_err().property,
            "primary order"
        );
    }

    #[test]
    fn two_leaders_of_one_epoch_are_caught() {
        let mut c = ZabChecker::new();
        let log = MemStorage::<HardState>::new_with_conf(ConfState::with_voters([1, 2, 3]));
        let view = |id| ZabView {
            id,
            role: Role::Leader,
            epoch: 3,
            commit: 0,
            log: &log,
        };
        let voters = [1, 2, 3].into_iter().collect();
        c.check(view(1), &voters).unwrap();
        assert_eq!(
            c.check(view(2), &voters).unwrap_err().property,
            "at most one leader per epoch"
        );
    }
}
