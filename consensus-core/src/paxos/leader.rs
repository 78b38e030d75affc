//! The distinguished proposer: proposals, the pipeline window, batching, counting acceptances.
//!
//! Every proposal gets its slot at once (so `propose` can say where it landed) and waits in a
//! bounded queue until the window lets it out: at most `max_inflight_slots` slots above the
//! chosen prefix are in flight, and none beyond an unchosen membership change (see
//! `membership`). Slots let out are written to the leader's own log and broadcast in
//! `Accept` batches of at most `max_msg_bytes`. A slot is chosen once a majority of the
//! configuration accepted it under our ballot; the leader's own acceptance counts once its
//! write is durable. Unacknowledged slots are re-sent with each heartbeat (one batch per peer).
//!
//! Acceptances are counted as ranges: an acceptor answers a batch with one
//! `Accepted { first, last }` per run of consecutive slots, the leader keeps per member the
//! ranges it accepted ([`AcceptedRuns`]), and the chosen prefix moves once per answer to the
//! highest slot a majority accepted every slot up to (as Raft's match index, or omnipaxos'
//! "accepted up to"), not slot by slot.

use std::collections::{BTreeSet, VecDeque};

use super::election::is_majority_by;
use super::message::MessageBody;
use super::{MultiPaxos, PaxosStorage, SlotRuns};
use crate::entries::Entries;
use crate::error::{Error, StorageError};
use crate::types::{Entry, EntryPayload, NodeId, Proposed, Role};

/// What only the leader keeps.
#[derive(Debug, Default)]
pub(crate) struct LeaderState {
    /// Proposals with their slot, not yet let into the window.
    queued: VecDeque<Entry>,
    /// Slots in the window and not yet chosen, in slot order (consecutive: the window is
    /// `commit + 1 ..= last in flight`).
    inflight: VecDeque<InFlight>,
    /// Per member (this node included), the slots it accepted under our ballot.
    acks: Vec<(NodeId, AcceptedRuns)>,
    /// Next slot to assign.
    next_slot: u64,
    /// Last slot phase 1 recovered (or `from - 1`): every value chosen before this leader is at
    /// or below it.
    pub(crate) recovery_end: u64,
    /// Highest slot holding a membership change not yet chosen (queued or in flight).
    pub(crate) pending_conf: Option<u64>,
    /// Slot of a membership change in the window and not yet chosen.
    inflight_conf: Option<u64>,
    /// Payload bytes proposed and not yet chosen.
    uncommitted_bytes: u64,
    /// Peers heard from under our ballot since the last check-quorum.
    pub(crate) active: BTreeSet<NodeId>,
    /// Commit index the last broadcast carried.
    commit_sent: u64,
    /// A heartbeat is due.
    pub(crate) heartbeat_pending: bool,
    /// Unacknowledged slots are due to be re-sent.
    pub(crate) resend_pending: bool,
    /// A leader transfer to this node is under way (proposals are refused meanwhile).
    pub(crate) transfer: Option<NodeId>,
    /// Set once this leader sent `TimeoutNow`: another leader may be elected before any lease
    /// runs out, so lease reads stop for the rest of this leadership.
    pub(crate) lease_forfeited: bool,
}

/// One slot in the window (who accepted it is kept per member, as ranges: [`AcceptedRuns`]).
#[derive(Debug)]
struct InFlight {
    slot: u64,
    /// Its payload size as counted in `uncommitted_bytes`.
    size: u64,
    /// Whether it holds a membership change (its value is needed when it is chosen).
    conf_change: bool,
}

/// The slots one member accepted under our ballot, as ascending, disjoint, non-adjacent
/// inclusive ranges. An acceptor answers a batch with one range, so the common update extends
/// the last range: counting acceptances costs per message, not per slot.
#[derive(Debug, Default)]
pub(crate) struct AcceptedRuns(Vec<(u64, u64)>);

impl AcceptedRuns {
    /// Records that `first ..= last` was accepted.
    pub(crate) fn insert(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        match self.0.last_mut() {
            None => {
                self.0.push((first, last));
                return;
            }
            Some(tail) if first >= tail.0 && first <= tail.1.saturating_add(1) => {
                tail.1 = tail.1.max(last); // the common case: the next batch
                return;
            }
            Some(tail) if first > tail.1 => {
                self.0.push((first, last));
                return;
            }
            Some(_) => {}
        }
        // Out of order (a resend, a reordered answer): merge every range it touches.
        let at = self
            .0
            .partition_point(|&(_, hi)| hi.saturating_add(1) < first);
        let mut merged = (first, last);
        let mut end = at;
        while let Some(&(lo, hi)) = self.0.get(end) {
            if lo > merged.1.saturating_add(1) {
                break;
            }
            merged = (merged.0.min(lo), merged.1.max(hi));
            end += 1;
        }
        self.0.splice(at..end, [merged]);
    }

    /// The highest slot `s` such that every slot in `from ..= s` was accepted (`from - 1` when
    /// `from` was not).
    pub(crate) fn through(&self, from: u64) -> u64 {
        // The range holding `from`, if any, is the first whose end reaches it.
        let at = self.0.partition_point(|&(_, hi)| hi < from);
        match self.0.get(at) {
            Some(&(lo, hi)) if lo <= from => hi,
            _ => from.saturating_sub(1),
        }
    }

    /// Whether `slot` was accepted.
    pub(crate) fn contains(&self, slot: u64) -> bool {
        self.through(slot) >= slot
    }

    /// Forgets ranges wholly at or below `floor` (chosen slots: no acceptance matters there).
    pub(crate) fn forget_through(&mut self, floor: u64) {
        let below = self.0.partition_point(|&(_, hi)| hi <= floor);
        if below > 0 {
            self.0.drain(..below);
        }
    }
}

impl LeaderState {
    /// Records `from`'s acceptance of `first ..= last` under our ballot.
    fn accept_run(&mut self, from: NodeId, first: u64, last: u64) {
        match self.acks.iter_mut().find(|(id, _)| *id == from) {
            Some((_, runs)) => runs.insert(first, last),
            None => {
                let mut runs = AcceptedRuns::default();
                runs.insert(first, last);
                self.acks.push((from, runs));
            }
        }
    }

    /// The highest slot `s` such that `id` accepted every slot in `from ..= s`.
    fn accepted_through(&self, id: NodeId, from: u64) -> u64 {
        self.acks
            .iter()
            .find(|(member, _)| *member == id)
            .map_or(from.saturating_sub(1), |(_, runs)| runs.through(from))
    }

    /// Whether `id` has not accepted some slot in the window.
    fn lacks(&self, id: NodeId) -> bool {
        match (self.inflight.front(), self.inflight.back()) {
            (Some(front), Some(back)) => self.accepted_through(id, front.slot) < back.slot,
            _ => false,
        }
    }

    /// Whether `id` accepted `slot`.
    fn has_accepted(&self, id: NodeId, slot: u64) -> bool {
        self.acks
            .iter()
            .find(|(member, _)| *member == id)
            .is_some_and(|(_, runs)| runs.contains(slot))
    }

    pub(crate) fn start(&mut self, from: u64, recovery_end: u64) {
        self.next_slot = from;
        self.recovery_end = recovery_end;
    }

    pub(crate) fn enqueue(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.next_slot, "slots are assigned in order");
        self.next_slot = entry.index + 1;
        self.uncommitted_bytes += entry.payload_size().max(1);
        if matches!(entry.payload, EntryPayload::ConfChange(_)) {
            self.pending_conf = Some(entry.index);
        }
        self.queued.push_back(entry);
    }
}

impl<S: PaxosStorage> MultiPaxos<S> {
    /// Queues `payload` in the next free slot.
    pub(super) fn propose_payload(&mut self, payload: EntryPayload) -> Result<Proposed, Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(to) = self.lead.transfer {
            return Err(Error::TransferInProgress { to });
        }
        let entry = Entry {
            term: self.ballot.encode(),
            index: self.lead.next_slot,
            payload,
        };
        let size = entry.payload_size();
        if size > self.config.max_msg_bytes {
            return Err(Error::ProposalTooLarge {
                size,
                limit: self.config.max_msg_bytes,
            });
        }
        let uncommitted = self.lead.uncommitted_bytes;
        if uncommitted + size.max(1) > self.config.max_uncommitted_bytes {
            return Err(Error::UncommittedLimit {
                uncommitted,
                limit: self.config.max_uncommitted_bytes,
            });
        }
        let (index, term) = (entry.index, entry.term);
        self.lead.enqueue(entry);
        Ok(Proposed { index, term })
    }

    /// Whether the queue's head may enter the window now.
    fn can_let_in(&self) -> bool {
        let Some(front) = self.lead.queued.front() else {
            return false;
        };
        if front.index > self.commit + self.config.max_inflight_slots {
            return false;
        }
        // Drain behind an unchosen membership change: the slots after it belong to the
        // configuration it creates, which is not in force until it is chosen.
        self.lead.inflight_conf.is_none()
    }

    /// Whether `flush_leader` would produce a write or a message (exact: `has_ready` relies
    /// on it).
    pub(super) fn leader_has_work(&self) -> bool {
        if self.can_let_in() {
            return true;
        }
        // Called from every `has_ready`: no allocation here.
        let me = self.config.id;
        let conf = &self.conf;
        let peers = conf
            .voters
            .iter()
            .chain(&conf.outgoing)
            .chain(&conf.learners)
            .copied()
            .filter(|&id| id != me);
        if peers.clone().next().is_none() {
            return false;
        }
        let heartbeat_due = self.lead.heartbeat_pending
            || self.reads.heartbeat_pending()
            || self.lead.commit_sent < self.commit;
        heartbeat_due
            || (self.lead.resend_pending && peers.clone().any(|peer| self.lead.lacks(peer)))
    }

    /// Lets proposals into the window and broadcasts what is due.
    pub(super) fn flush_leader(&mut self) {
        // How many queued proposals the window lets in (stopping after a membership change:
        // the slots behind it wait until it is chosen).
        let limit = self.commit + self.config.max_inflight_slots;
        let mut admit = 0;
        if self.lead.inflight_conf.is_none() {
            for entry in &self.lead.queued {
                if entry.index > limit {
                    break;
                }
                admit += 1;
                if matches!(entry.payload, EntryPayload::ConfChange(_)) {
                    break;
                }
            }
        }
        let fresh_entries: Vec<Entry> = if admit == self.lead.queued.len() {
            // The common case: the whole queue goes (moved as it is, not entry by entry).
            let next = VecDeque::with_capacity(admit);
            Vec::from(std::mem::replace(&mut self.lead.queued, next))
        } else {
            self.lead.queued.drain(..admit).collect()
        };
        // Held once: the log and every peer's `Accept` share this batch.
        let fresh = Entries::from(fresh_entries);
        let mut bytes = 0u64;
        for entry in &fresh {
            bytes += entry.payload_size();
            let conf_change = matches!(entry.payload, EntryPayload::ConfChange(_));
            if conf_change {
                self.lead.inflight_conf = Some(entry.index);
            }
            debug_assert!(
                self.lead
                    .inflight
                    .back()
                    .is_none_or(|f| f.slot + 1 == entry.index),
                "slots enter the window in order, without a gap"
            );
            self.lead.inflight.push_back(InFlight {
                slot: entry.index,
                size: entry.payload_size().max(1),
                conf_change,
            });
        }
        let peers = self.peers();
        if !fresh.is_empty() {
            // One copy per peer; the log (this node's acceptance) takes the batch itself.
            for &to in &peers {
                if bytes <= self.config.max_msg_bytes {
                    let commit = self.commit;
                    let entries = fresh.clone();
                    self.send(to, MessageBody::Accept { entries, commit });
                } else {
                    self.send_accepts(to, fresh.iter().cloned());
                }
            }
            self.log.put_run(fresh);
            self.lead.commit_sent = self.commit;
        }
        if self.lead.resend_pending {
            self.lead.resend_pending = false;
            self.resend_unacked(&peers);
        }
        if self.lead.heartbeat_pending
            || self.reads.heartbeat_pending()
            || self.lead.commit_sent < self.commit
        {
            self.lead.heartbeat_pending = false;
            self.broadcast_heartbeat(&peers);
        }
    }

    /// Every member but this node (voters and learners).
    pub(super) fn peers(&self) -> Vec<NodeId> {
        let me = self.config.id;
        self.conf
            .members()
            .into_iter()
            .filter(|&id| id != me)
            .collect()
    }

    /// Sends `entries` to `to` in `Accept` batches of at most `max_msg_bytes`.
    fn send_accepts(&mut self, to: NodeId, entries: impl IntoIterator<Item = Entry>) {
        let commit = self.commit;
        let entries = entries.into_iter();
        let mut batch = Vec::with_capacity(entries.size_hint().0);
        let mut bytes = 0u64;
        for entry in entries {
            let size = entry.payload_size();
            if !batch.is_empty() && bytes + size > self.config.max_msg_bytes {
                let entries = std::mem::take(&mut batch).into();
                self.send(to, MessageBody::Accept { entries, commit });
                bytes = 0;
            }
            bytes += size;
            batch.push(entry);
        }
        if !batch.is_empty() {
            self.send(
                to,
                MessageBody::Accept {
                    entries: batch.into(),
                    commit,
                },
            );
        }
    }

    /// Re-sends, to each peer, one batch of in-flight slots it has not acknowledged.
    fn resend_unacked(&mut self, peers: &[NodeId]) {
        for &to in peers {
            let mut entries = Vec::new();
            let mut bytes = 0u64;
            for f in &self.lead.inflight {
                if self.lead.has_accepted(to, f.slot) {
                    continue;
                }
                let Ok(Some(entry)) = self.log.get(f.slot) else {
                    continue;
                };
                bytes += entry.payload_size();
                if !entries.is_empty() && bytes > self.config.max_msg_bytes {
                    break;
                }
                entries.push(entry);
            }
            if !entries.is_empty() {
                let commit = self.commit;
                let entries = entries.into();
                self.send(to, MessageBody::Accept { entries, commit });
            }
        }
    }

    fn broadcast_heartbeat(&mut self, peers: &[NodeId]) {
        let read_round = self.next_read_round();
        let commit = self.commit;
        for &to in peers {
            self.send(to, MessageBody::Heartbeat { commit, read_round });
        }
        self.lead.commit_sent = commit;
    }

    /// Phase 2b arrived: `from` accepted `first ..= last` under `ballot`.
    pub(super) fn handle_accepted(
        &mut self,
        from: NodeId,
        ballot: super::Ballot,
        first: u64,
        last: u64,
    ) {
        if self.role != Role::Leader || ballot != self.ballot {
            return;
        }
        self.lead.active.insert(from);
        self.lead.accept_run(from, first, last);
        if let Err(error) = self.advance_chosen() {
            self.fail(error);
        }
    }

    /// The leader's own write of `runs` is durable: count its acceptance of the slots written
    /// under its ballot.
    pub(super) fn own_accepts_durable(&mut self, runs: &SlotRuns) {
        if self.role != Role::Leader {
            return;
        }
        let (me, term) = (self.config.id, self.ballot.encode());
        for run in runs.iter().filter(|run| run.term == term) {
            self.lead.accept_run(me, run.first, run.last);
        }
        if let Err(error) = self.advance_chosen() {
            self.fail(error);
        }
    }

    /// Moves the chosen prefix over every slot a majority accepted: the highest `s` such that a
    /// majority of voters accepted every slot in `commit + 1 ..= s` (found from each voter's
    /// accepted-through point, not slot by slot), then walks the window up to it.
    fn advance_chosen(&mut self) -> Result<(), StorageError> {
        let before = self.commit;
        let from = self.commit + 1;
        let Some(last) = self.lead.inflight.back().map(|f| f.slot) else {
            return Ok(());
        };
        debug_assert!(
            self.lead.inflight.front().is_some_and(|f| f.slot == from),
            "the window starts right after the chosen prefix"
        );
        let mut target = self.commit;
        for &voter in &self.conf.voters {
            let through = self.lead.accepted_through(voter, from).min(last);
            if through > target
                && is_majority_by(&self.conf.voters, |id| {
                    self.lead.accepted_through(id, from) >= through
                })
            {
                target = through;
            }
        }
        while self.commit < target {
            let slot = self.commit + 1;
            let Some(f) = self.lead.inflight.pop_front() else {
                break;
            };
            if f.slot != slot {
                return Err(StorageError::Inconsistent(format!(
                    "leader's window holds slot {} where {slot} was due",
                    f.slot
                )));
            }
            self.lead.uncommitted_bytes = self.lead.uncommitted_bytes.saturating_sub(f.size);
            if self.lead.pending_conf == Some(slot) {
                self.lead.pending_conf = None;
            }
            if self.lead.inflight_conf == Some(slot) {
                self.lead.inflight_conf = None;
            }
            if f.conf_change {
                // Only a membership change needs its value here (to change the configuration).
                let Some(entry) = self.log.get(slot)? else {
                    return Err(StorageError::Inconsistent(format!(
                        "leader lost its own proposal for slot {slot}"
                    )));
                };
                self.on_chosen(&entry);
                if self.role != Role::Leader {
                    return Ok(()); // a membership change removed us
                }
            } else {
                self.on_chosen_data(slot);
            }
        }
        if self.commit > before {
            let commit = self.commit;
            for (_, runs) in &mut self.lead.acks {
                runs.forget_through(commit);
            }
            self.on_commit_advanced();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::AcceptedRuns;

    #[test]
    fn accepted_runs_merge_out_of_order_ranges_and_never_bridge_a_hole() {
        let mut runs = AcceptedRuns::default();
        runs.insert(5, 6);
        assert_eq!(runs.through(1), 0, "slot 1 was not accepted");
        assert_eq!(runs.through(5), 6);
        runs.insert(9, 9);
        runs.insert(1, 3);
        assert_eq!(runs.through(1), 3, "4 is a hole");
        assert!(!runs.contains(4) && runs.contains(9) && !runs.contains(8));
        runs.insert(4, 4); // fills the hole: 1..=6 join
        assert_eq!(runs.through(1), 6);
        runs.insert(7, 8); // joins 9 as well
        assert_eq!(runs.through(1), 9);
        assert_eq!(runs.0, vec![(1, 9)]);
        runs.insert(2, 12); // overlapping the tail extends it
        assert_eq!(runs.0, vec![(1, 12)]);
    }

    #[test]
    fn accepted_runs_forget_only_what_lies_at_or_below_the_floor() {
        let mut runs = AcceptedRuns::default();
        runs.insert(1, 3);
        runs.insert(5, 7);
        runs.forget_through(4);
        assert_eq!(runs.0, vec![(5, 7)]);
        runs.forget_through(6);
        assert_eq!(
            runs.0,
            vec![(5, 7)],
            "a range reaching above the floor stays"
        );
        assert_eq!(runs.through(7), 7);
    }
}
