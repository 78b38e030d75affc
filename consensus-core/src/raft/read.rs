//! Linearizable reads without writing to the log (thesis §6.4).
//!
//! ReadIndex: the leader records its commit index, confirms it still leads with a round of
//! heartbeats acknowledged by a quorum, and then the read may be served once the state machine has
//! applied through the recorded index. A new leader first commits an entry of its own term, since
//! until then it does not know the latest commit index. Lease reads skip the heartbeat round and rely
//! on check-quorum having made the leader step down before anyone else could be elected.
//!
//! Reads requested between two `ready()` calls share one heartbeat round.
//!
//! A lease is measured from when heartbeats were *sent*: a follower that acknowledged a heartbeat
//! sent at leader tick `s` heard from the leader no earlier than `s`, so with check-quorum it refuses
//! to vote until at least `s + election_tick`. The leader serves lease reads while a quorum acked
//! heartbeats sent less than `election_tick - LEASE_MARGIN_TICKS` ago, and not at all once it has
//! sent TimeoutNow (a transfer overrides followers' stickiness). Otherwise it falls back to a
//! ReadIndex round. Ticks must run at the same rate on every member (bounded drift is the
//! margin). A member that restarts forgets whom it heard, so in a lease group a restarted member
//! refuses votes for an election timeout after it starts (thesis §6.4.1).

use std::collections::{BTreeMap, VecDeque};

use super::config::{PlantedBug, ReadMode};
use super::message::MessageBody;
use super::quorum::{self, VoteResult};
use super::Raft;
use super::RaftStorage;
use crate::error::Error;
use crate::types::{NodeId, ReadState, Role};

#[derive(Debug)]
struct PendingRead {
    ctx: u64,
    /// Who asked: this node or a follower.
    from: NodeId,
    index: u64,
    /// Heartbeat round that must be acknowledged by a quorum.
    round: u64,
}

/// The leader's reads awaiting confirmation of its leadership.
/// Ticks of clock drift a lease allows for.
const LEASE_MARGIN_TICKS: u64 = 2;
/// Heartbeat send times remembered for leases.
const SENT_ROUNDS_KEPT: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    round: u64,
    /// The last round a heartbeat was sent for.
    last_sent_round: u64,
    /// (round, leader clock when its first heartbeat left), oldest first.
    sent_at: VecDeque<(u64, u64)>,
    heartbeat_pending: bool,
    pending: VecDeque<PendingRead>,
    /// Reads received before this term's first commit.
    waiting_for_commit: Vec<(u64, NodeId)>,
    /// Highest round each peer acknowledged.
    acked: BTreeMap<NodeId, u64>,
}

impl ReadQueue {
    pub(crate) fn clear(&mut self) {
        self.heartbeat_pending = false;
        self.pending.clear();
        self.waiting_for_commit.clear();
        self.acked.clear();
        self.sent_at.clear();
    }

    pub(crate) fn heartbeat_pending(&self) -> bool {
        self.heartbeat_pending
    }

    /// The round a heartbeat sent now (at leader clock `now`) belongs to. With `fresh`, every
    /// broadcast gets a round of its own, so acknowledgements date the lease precisely.
    pub(crate) fn start_round(&mut self, now: u64, fresh: bool) -> u64 {
        self.heartbeat_pending = false;
        if fresh && self.last_sent_round == self.round {
            self.round += 1;
        }
        if self.last_sent_round != self.round {
            self.last_sent_round = self.round;
            self.sent_at.push_back((self.round, now));
            if self.sent_at.len() > SENT_ROUNDS_KEPT {
                self.sent_at.pop_front();
            }
        }
        self.round
    }

    /// When the first heartbeat of `round` was sent, if remembered.
    fn sent_time(&self, round: u64) -> Option<u64> {
        self.sent_at
            .iter()
            .find(|&&(r, _)| r == round)
            .map(|&(_, at)| at)
    }

    pub(crate) fn ack(&mut self, from: NodeId, round: u64) {
        let acked = self.acked.entry(from).or_insert(0);
        *acked = (*acked).max(round);
    }

    fn push(&mut self, ctx: u64, from: NodeId, index: u64) {
        if !self.heartbeat_pending {
            // Any heartbeat carrying this round leaves after the read was registered.
            self.round += 1;
            self.heartbeat_pending = true;
        }
        self.pending.push_back(PendingRead {
            ctx,
            from,
            index,
            round: self.round,
        });
    }
}

impl<S: RaftStorage> Raft<S> {
    pub(super) fn request_read(&mut self, ctx: u64) -> Result<(), Error> {
        if self.role == Role::Leader {
            let me = self.config.id;
            self.register_read(ctx, me);
            return Ok(());
        }
        match self.leader {
            Some(leader) => {
                self.send(leader, MessageBody::ReadIndex { ctx });
                Ok(())
            }
            None => Err(Error::NoLeader),
        }
    }

    /// Leader: orders a read from `from` (this node or a follower).
    pub(super) fn register_read(&mut self, ctx: u64, from: NodeId) {
        let commit = self.log.committed;
        if self.config.has_bug(PlantedBug::ReadWithoutLeadershipCheck) {
            self.deliver_read(ctx, from, commit);
            return;
        }
        if self.log.term(commit).ok() != Some(self.term) {
            self.reads.waiting_for_commit.push((ctx, from));
            return;
        }
        if self.config.read_mode == ReadMode::LeaseBased && self.lease_valid() {
            self.deliver_read(ctx, from, commit);
            return;
        }
        self.reads.push(ctx, from, commit);
        self.resolve_reads();
    }

    /// Whether a quorum acknowledged heartbeats recent enough that no other leader can have been
    /// elected yet (see the module docs).
    fn lease_valid(&self) -> bool {
        if self.lease_forfeited || self.lead_transferee.is_some() || !self.config.check_quorum {
            return false;
        }
        let me = self.config.id;
        let (now, span) = (self.clock, u64::from(self.config.election_tick));
        let reads = &self.reads;
        let fresh = quorum::vote_result(&self.conf, |id| {
            if id == me {
                return Some(true);
            }
            let sent = reads.acked.get(&id).and_then(|&r| reads.sent_time(r));
            Some(sent.is_some_and(|at| now + LEASE_MARGIN_TICKS < at + span))
        });
        fresh == VoteResult::Won
    }

    fn deliver_read(&mut self, ctx: u64, from: NodeId, index: u64) {
        if from == self.config.id {
            self.ready_reads.push(ReadState { ctx, index });
        } else {
            self.send(from, MessageBody::ReadIndexResponse { ctx, index });
        }
    }

    /// Serves every read whose heartbeat round a quorum acknowledged.
    pub(super) fn resolve_reads(&mut self) {
        let me = self.config.id;
        while let Some(read) = self.reads.pending.front() {
            let round = read.round;
            let acked = &self.reads.acked;
            let confirmed = quorum::vote_result(&self.conf, |id| {
                Some(id == me || acked.get(&id).is_some_and(|&r| r >= round))
            });
            if confirmed != VoteResult::Won {
                break;
            }
            let Some(read) = self.reads.pending.pop_front() else {
                break;
            };
            self.deliver_read(read.ctx, read.from, read.index);
        }
    }

    /// Called when the leader's commit index advanced.
    pub(super) fn on_commit_advanced(&mut self) {
        if self.reads.waiting_for_commit.is_empty()
            || self.log.term(self.log.committed).ok() != Some(self.term)
        {
            return;
        }
        for (ctx, from) in std::mem::take(&mut self.reads.waiting_for_commit) {
            self.register_read(ctx, from);
        }
    }
}
