//! Elections (Raft §5.2, thesis §3.4, §9.6), check-quorum (§6.2) and leader transfer (§3.10).

use rand::Rng;

use super::config::PlantedBug;
use super::message::MessageBody;
use super::progress::Progress;
use super::quorum::{self, VoteResult};
use super::Raft;
use super::RaftStorage;
use crate::error::Error;
use crate::types::{EntryPayload, NodeId, Role};

impl<S: RaftStorage> Raft<S> {
    /// Moves to `term` (forgetting the vote if the term changes) and resets the role's state.
    fn reset(&mut self, term: u64) {
        if term != self.term {
            debug_assert!(term > self.term, "terms only grow");
            self.term = term;
            self.vote = 0;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self
            .rng
            .gen_range(self.config.election_tick..2 * self.config.election_tick);
        self.votes.clear();
        self.progress.clear();
        self.lead_transferee = None;
        self.reads.clear();
        self.lease_forfeited = false;
        self.uncommitted_bytes = 0;
        self.broadcast_pending = false;
    }

    pub(super) fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        // Pre-vote changes neither term nor vote: a node that cannot win disturbs nobody.
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.config.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(
            self.vote, self.config.id,
            "a leader voted for itself in its term"
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        let last = self.log.last_index();
        for id in self.conf.members() {
            let mut progress = Progress::new(last + 1);
            if id == self.config.id {
                progress.matched = self.log.persisted;
                progress.recent_active = true;
                progress.become_replicate();
                progress.next = last + 1;
            }
            self.progress.insert(id, progress);
        }
        // No membership change until this term's first entry commits (the fix for the
        // single-server change bug, thesis §4.1 erratum).
        self.pending_conf_index = last;
        // Raft §5.4.2 / §8: commit a no-op of this term so earlier entries commit with it. (The
        // planted Figure 8 bug leaves it out, as the paper's figure does, so the bug can bite.)
        if !self
            .config
            .has_bug(PlantedBug::CommitPreviousTermByCounting)
        {
            self.append_entry(EntryPayload::Noop);
        }
        if self.config.read_mode == super::config::ReadMode::LeaseBased {
            // Start the first lease now rather than at the next tick.
            self.broadcast_heartbeat();
        }
        if self.conf.is_joint() {
            // A joint configuration outlived its leader: finish the change.
            let leave = self.append_entry(EntryPayload::ConfChange(
                crate::types::ConfChange::LeaveJoint,
            ));
            self.pending_conf_index = leave.index;
        }
    }

    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.leader.is_some() && self.election_elapsed >= self.config.election_tick {
            // Not heard from within an election timeout: stop naming it, so clients are not sent
            // to a leader that may be dead.
            self.leader = None;
        }
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        let election_tick = self.config.election_tick;
        for progress in self.progress.values_mut() {
            if let super::progress::ProgressState::Snapshot { .. } = progress.state {
                progress.snapshot_ticks += 1;
                if progress.snapshot_ticks >= 2 * election_tick {
                    // The snapshot (or its answer) was probably lost: probe again.
                    progress.become_probe();
                }
            }
        }
        if self.election_elapsed >= election_tick {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let me = self.config.id;
                let active = quorum::vote_result(&self.conf, |id| {
                    Some(id == me || self.progress.get(&id).is_some_and(|p| p.recent_active))
                });
                if active != VoteResult::Won {
                    tracing::debug!(
                        id = me,
                        term = self.term,
                        "lost quorum contact; stepping down"
                    );
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
                for (&id, progress) in self.progress.iter_mut() {
                    progress.recent_active = id == me;
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = None;
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// The election timeout fired (or a transfer asked us to run).
    pub(super) fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        if self.config.pre_vote && !transfer {
            self.campaign_pre_vote();
        } else {
            self.campaign_vote(transfer);
        }
    }

    fn voters_except_me(&self) -> Vec<NodeId> {
        let me = self.config.id;
        let mut voters: Vec<NodeId> = self
            .conf
            .voters
            .iter()
            .chain(&self.conf.outgoing)
            .copied()
            .collect();
        voters.sort_unstable();
        voters.dedup();
        voters.retain(|&id| id != me);
        voters
    }

    fn campaign_pre_vote(&mut self) {
        self.become_pre_candidate();
        self.votes.insert(self.config.id, true);
        if self.tally() == VoteResult::Won {
            self.campaign_vote(false);
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let term = self.term + 1;
        for to in self.voters_except_me() {
            self.send_with_term(
                to,
                term,
                MessageBody::PreVote {
                    last_index,
                    last_term,
                },
            );
        }
    }

    fn campaign_vote(&mut self, leader_transfer: bool) {
        self.become_candidate();
        // Our own vote counts once the write recording it is durable (`own_vote_durable`); the
        // requests leave at once, so the candidate's fsync overlaps the voters' (etcd does the
        // same). Counting it earlier would let a crash forget a vote that elected us.
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for to in self.voters_except_me() {
            self.send(
                to,
                MessageBody::Vote {
                    last_index,
                    last_term,
                    leader_transfer,
                },
            );
        }
    }

    fn tally(&self) -> VoteResult {
        quorum::vote_result(&self.conf, |id| self.votes.get(&id).copied())
    }

    pub(super) fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: u64,
        last_index: u64,
        last_term: u64,
        pre: bool,
    ) {
        // Raft §5.2: one vote per term, first come first served; §5.4.1: only for a log at least as
        // up to date as ours. A pre-vote for a future term is granted on the log check alone.
        let can_vote = self.vote == from
            || (self.vote == 0 && self.leader.is_none())
            || (pre && term > self.term);
        let log_ok = self.log.is_up_to_date(last_index, last_term)
            || self.config.has_bug(PlantedBug::VoteWithoutLogCheck);
        let granted = can_vote && log_ok;
        if pre {
            let reply_term = if granted { term } else { self.term };
            self.send_with_term(from, reply_term, MessageBody::PreVoteResponse { granted });
        } else {
            if granted {
                self.election_elapsed = 0;
                self.vote = from;
            }
            self.send(from, MessageBody::VoteResponse { granted });
        }
    }

    /// A write carrying `durable` was confirmed: a candidate whose vote for itself in this term
    /// is now durable counts it.
    pub(super) fn own_vote_durable(&mut self, durable: super::HardState) {
        let me = self.config.id;
        if self.role == Role::Candidate
            && durable.term == self.term
            && durable.vote == me
            && !self.votes.contains_key(&me)
        {
            self.handle_vote_response(me, true);
        }
    }

    pub(super) fn handle_vote_response(&mut self, from: NodeId, granted: bool) {
        self.votes.insert(from, granted);
        match self.tally() {
            VoteResult::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign_vote(false);
                } else {
                    self.become_leader();
                }
            }
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
    }

    pub(super) fn handle_timeout_now(&mut self) {
        if self.role != Role::Leader && self.promotable() {
            self.hup(true);
        }
    }

    pub(super) fn start_transfer(&mut self, to: NodeId) -> Result<(), Error> {
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
        if self.lead_transferee == Some(to) {
            return Ok(());
        }
        self.lead_transferee = Some(to);
        // The transfer must complete within an election timeout.
        self.election_elapsed = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.lease_forfeited = true;
            self.send(to, MessageBody::TimeoutNow);
        } else {
            // Bring it up to date first; TimeoutNow follows its acknowledgement.
            if let Some(progress) = self.progress.get_mut(&to) {
                progress.probe_sent = false;
            }
            self.send_append(to, true);
        }
        Ok(())
    }
}
