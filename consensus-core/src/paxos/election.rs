//! Leader election: randomized timeouts, phase 1 for every slot from the first unchosen one,
//! check-quorum stepping down.
//!
//! Duelling is avoided the way Raft avoids split votes, with an acceptor-side guard on top:
//! a follower runs phase 1 only after a randomized timeout (`election_tick ..< 2 *
//! election_tick` silent ticks, drawn from the seeded RNG), an acceptor that promises a ballot
//! restarts its own timer (as granting a vote does), an acceptor that hears a live leader refuses
//! to promise a newcomer (leader stickiness), and a preempted proposer (a `Nack` with a higher
//! promise) does not retry at once but backs off for a fresh randomized timeout, then goes above
//! every round it has seen. A candidate re-sends its prepare each heartbeat interval to the
//! acceptors that have not promised (one that still heard the leader dropped it). A follower
//! forgets its leader hint after `election_tick` silent ticks
//! so clients are not redirected to a dead leader; a leader that has not heard from a majority
//! within `election_tick` steps down (check-quorum).
//!
//! Leader transfer: the leader stops proposing, gives up lease reads for the rest of its
//! leadership and sends `TimeoutNow`; the target runs phase 1 at once with prepares marked
//! `transfer`, which acceptors (the old leader included) let through their stickiness. A
//! transfer not done within an election timeout is abandoned.
//!
//! Phase 1 must reach a majority of every configuration that may govern a slot ≥ `from`: the one
//! in force after the chosen prefix, and each one a recovered (accepted) membership change would
//! lead to (see `membership`).

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;

use super::ballot::Ballot;
use super::config::PlantedBug;
use super::membership;
use super::message::MessageBody;
use super::{MultiPaxos, PaxosStorage};
use crate::types::{ConfState, Entry, EntryPayload, NodeId, Role};

/// A candidate's phase 1 in progress.
#[derive(Debug, Default)]
pub(crate) struct Phase1 {
    /// First slot prepared (this node's first unchosen slot when phase 1 started).
    pub(crate) from: u64,
    /// Acceptors whose promise reported every slot they hold.
    complete: BTreeSet<NodeId>,
    /// Acceptors the prepare went to.
    asked: BTreeSet<NodeId>,
    /// For each slot ≥ `from`, the accepted entry with the highest ballot reported.
    recovered: BTreeMap<u64, Entry>,
    /// Started by a leader transfer (prepares override stickiness).
    transfer: bool,
    /// The `from` of the next promise expected from each acceptor whose answer the size limit
    /// cut (absent: `from`). A promise answering any other prepare — one of an earlier round of
    /// this ballot, before `restart_phase1` — reports on the wrong slots and is ignored.
    next_from: BTreeMap<NodeId, u64>,
}

impl Phase1 {
    fn merge(&mut self, entry: Entry) {
        match self.recovered.get(&entry.index) {
            Some(held) if held.term >= entry.term => {}
            _ => {
                self.recovered.insert(entry.index, entry);
            }
        }
    }
}

/// Whether `acks` holds a majority of `voters` (an empty set of voters never agrees).
pub(crate) fn is_majority(voters: &BTreeSet<NodeId>, acks: &BTreeSet<NodeId>) -> bool {
    is_majority_by(voters, |id| acks.contains(&id))
}

/// Whether the members `agrees` holds for are a majority of `voters` (never for no voters).
pub(crate) fn is_majority_by(voters: &BTreeSet<NodeId>, agrees: impl Fn(NodeId) -> bool) -> bool {
    !voters.is_empty() && voters.iter().filter(|&&id| agrees(id)).count() * 2 > voters.len()
}

impl<S: PaxosStorage> MultiPaxos<S> {
    /// Forgets role state; keeps the promise.
    fn reset(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.redraw_election_timeout();
        self.phase1 = Phase1::default();
        self.lead = Default::default();
        self.reads.clear();
    }

    /// A new ballot was promised (or a new leader heard): draw a fresh randomized timeout, as
    /// Raft does on a term change. Without it a follower kept the draw of its last candidacy —
    /// for the members that lost the last election, a draw above the winner's — so a failover
    /// waited for the larger of the survivors' old draws rather than a fresh minimum.
    pub(super) fn redraw_election_timeout(&mut self) {
        self.randomized_election_timeout = self
            .rng
            .gen_range(self.config.election_tick..2 * self.config.election_tick);
    }

    pub(super) fn become_follower(&mut self, leader: Option<NodeId>) {
        self.reset();
        self.role = Role::Follower;
        self.leader = leader;
    }

    /// Phase 1a under a fresh ballot above every round seen.
    pub(super) fn start_phase1(&mut self) {
        self.start_phase1_with(false);
    }

    /// Phase 1a; `transfer`: the leader asked us to take over.
    pub(super) fn start_phase1_with(&mut self, transfer: bool) {
        if self.role == Role::Leader {
            return;
        }
        let round = self
            .max_round_seen
            .max(self.promised.round)
            .max(self.ballot.round)
            + 1;
        self.reset();
        self.ballot = Ballot::new(round, self.config.id);
        self.max_round_seen = round;
        debug_assert!(
            self.ballot > self.promised,
            "a new ballot beats every promise"
        );
        self.promised = self.ballot;
        self.role = Role::Candidate;
        self.leader = None;
        self.phase1.transfer = transfer;
        tracing::debug!(id = self.config.id, ballot = %self.ballot, "starting phase 1");
        self.send_prepares();
    }

    /// (Re)starts phase 1 from the first unchosen slot under the current ballot (after a
    /// snapshot moved the chosen prefix past `from`).
    pub(super) fn restart_phase1(&mut self) {
        let own_durable = self.issued_hard_state.promised == self.ballot
            && !self.writes.records().any(|t| t.hard_state.is_some());
        self.phase1 = Phase1 {
            transfer: self.phase1.transfer,
            ..Phase1::default()
        };
        self.send_prepares();
        if own_durable {
            self.own_promise_durable(self.ballot);
        }
    }

    fn send_prepares(&mut self) {
        let from = self.commit + 1;
        self.phase1.from = from;
        let me = self.config.id;
        let voters: Vec<NodeId> = self
            .conf
            .voters
            .iter()
            .copied()
            .filter(|&id| id != me)
            .collect();
        for to in voters {
            self.phase1.asked.insert(to);
            let transfer = self.phase1.transfer;
            self.send(to, MessageBody::Prepare { from, transfer });
        }
    }

    /// Sends the prepare again to every acceptor asked and not yet complete, under the same
    /// ballot (a duplicate promise counts once). An acceptor that still heard the old leader
    /// drops a prepare silently (stickiness); its own ticks may run up to one tick behind ours,
    /// so a candidate whose randomized timeout was the shortest would otherwise wait a whole new
    /// timeout, and the failover would take the *other* member's timeout instead of the first.
    fn resend_prepares(&mut self) {
        if self.outstanding_fetch() {
            return; // learning compacted slots first; phase 1 restarts after that
        }
        let transfer = self.phase1.transfer;
        let pending: Vec<(NodeId, u64)> = self
            .phase1
            .asked
            .iter()
            .filter(|id| !self.phase1.complete.contains(id))
            .map(|&id| {
                let from = self.phase1.next_from.get(&id).copied();
                (id, from.unwrap_or(self.phase1.from))
            })
            .collect();
        for (to, from) in pending {
            self.send(to, MessageBody::Prepare { from, transfer });
        }
    }

    /// A write recording `promised` is durable: a candidate counts its own promise.
    pub(super) fn own_promise_durable(&mut self, promised: Ballot) {
        if self.role != Role::Candidate || promised != self.ballot {
            return;
        }
        let me = self.config.id;
        if self.phase1.complete.contains(&me) {
            return;
        }
        let last = self.log.last_slot();
        match self
            .log
            .range(self.phase1.from, last.max(self.phase1.from), u64::MAX)
        {
            Ok((entries, _)) => {
                for entry in entries {
                    self.phase1.merge(entry);
                }
            }
            Err(error) => {
                self.fail(error);
                return;
            }
        }
        self.phase1.complete.insert(me);
        self.check_phase1();
    }

    /// Phase 1b arrived.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        from_slot: u64,
        accepted: Vec<Entry>,
        covered: u64,
        last: u64,
        compacted: u64,
    ) {
        let expected = self
            .phase1
            .next_from
            .get(&from)
            .copied()
            .unwrap_or(self.phase1.from);
        if self.role != Role::Candidate || ballot != self.ballot || from_slot != expected {
            return; // stale: it answers another prepare
        }
        if compacted >= self.phase1.from {
            // Slots we have not learnt are chosen and only in its snapshot: learn them first,
            // then prepare again from past them (`restart_phase1`).
            self.request_fetch(from);
            return;
        }
        for entry in accepted {
            if entry.index >= self.phase1.from && entry.index <= covered {
                self.phase1.merge(entry);
            }
        }
        if covered < last {
            // The answer was cut by the size limit: ask for the rest under the same ballot.
            self.phase1.next_from.insert(from, covered + 1);
            let transfer = self.phase1.transfer;
            self.send(
                from,
                MessageBody::Prepare {
                    from: covered + 1,
                    transfer,
                },
            );
            return;
        }
        self.phase1.complete.insert(from);
        self.check_phase1();
    }

    /// Every configuration that may govern a slot ≥ `phase1.from`.
    fn phase1_configs(&self) -> Vec<ConfState> {
        let mut configs = vec![self.conf.clone()];
        for entry in self.phase1.recovered.values() {
            if let EntryPayload::ConfChange(change) = &entry.payload {
                let current = configs.last().cloned().unwrap_or_default();
                if let Ok(next) = membership::apply_change(&current, change) {
                    configs.push(next);
                }
            }
        }
        configs
    }

    fn check_phase1(&mut self) {
        let configs = self.phase1_configs();
        let me = self.config.id;
        // Members of a recovered configuration not asked yet get the prepare too.
        let from = self.phase1.from;
        let unasked: Vec<NodeId> = configs
            .iter()
            .flat_map(|c| c.voters.iter().copied())
            .filter(|&id| id != me && !self.phase1.asked.contains(&id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let transfer = self.phase1.transfer;
        for to in unasked {
            self.phase1.asked.insert(to);
            self.send(to, MessageBody::Prepare { from, transfer });
        }
        if configs
            .iter()
            .all(|c| is_majority(&c.voters, &self.phase1.complete))
        {
            self.become_leader();
        }
    }

    fn become_leader(&mut self) {
        let from = self.phase1.from;
        let recovered = std::mem::take(&mut self.phase1.recovered);
        self.reset();
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        let end = recovered
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(from - 1);
        tracing::debug!(id = self.config.id, ballot = %self.ballot, from, end, "phase 1 done");
        let term = self.ballot.encode();
        let skip = self.config.has_bug(PlantedBug::SkipPhaseOneForAcceptedSlot);
        // Re-propose the highest-ballot value of every slot; fill holes with no-ops.
        let mut payloads = Vec::new();
        for slot in from..=end {
            let payload = match recovered.get(&slot) {
                Some(entry) if !skip => entry.payload.clone(),
                _ => EntryPayload::Noop,
            };
            payloads.push((slot, payload));
        }
        self.lead.start(from, end);
        for (slot, payload) in payloads {
            self.lead.enqueue(Entry {
                term,
                index: slot,
                payload,
            });
        }
        self.lead.heartbeat_pending = true;
    }

    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.role == Role::Candidate
            && self
                .election_elapsed
                .is_multiple_of(self.config.heartbeat_tick)
        {
            self.resend_prepares();
        }
        if self.role == Role::Follower
            && self.leader.is_some()
            && self.election_elapsed >= self.config.election_tick
        {
            self.leader = None; // do not redirect clients to a leader we stopped hearing
        }
        if self.conf.is_voter(self.config.id)
            && self.election_elapsed >= self.randomized_election_timeout
        {
            self.role = Role::Follower; // a candidate whose phase 1 stalled starts over
            self.start_phase1();
        }
    }

    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_tick {
            self.election_elapsed = 0;
            let mut active = std::mem::take(&mut self.lead.active);
            active.insert(self.config.id);
            if !is_majority(&self.conf.voters, &active) {
                tracing::debug!(
                    id = self.config.id,
                    "lost contact with a majority; stepping down"
                );
                self.become_follower(None);
                return;
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.lead.transfer = None;
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.lead.heartbeat_pending = true;
            self.lead.resend_pending = true;
        }
    }
}

impl<S: PaxosStorage> MultiPaxos<S> {
    /// Leader: hands leadership to `to` (it runs phase 1 at once; acceptors let it preempt us).
    pub(super) fn start_transfer(&mut self, to: NodeId) -> Result<(), crate::error::Error> {
        use crate::error::Error;
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.config.id {
            return Ok(());
        }
        if !self.conf.is_voter(to) {
            return Err(Error::UnknownNode(to));
        }
        if self.lead.transfer == Some(to) {
            return Ok(());
        }
        self.lead.transfer = Some(to);
        self.lead.lease_forfeited = true;
        // The transfer must finish within an election timeout (see `tick_leader`).
        self.election_elapsed = 0;
        self.send(to, MessageBody::TimeoutNow);
        Ok(())
    }

    /// The leader asked this node to take over.
    pub(super) fn handle_timeout_now(&mut self, from: NodeId, ballot: Ballot) {
        if self.role == Role::Leader
            || ballot < self.promised
            || self.leader != Some(from)
            || !self.conf.is_voter(self.config.id)
        {
            return; // only the leader we follow may hand over
        }
        self.start_phase1_with(true);
    }
}
