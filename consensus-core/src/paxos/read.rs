//! Linearizable reads without writing to the log.
//!
//! Ballot confirmation: the leader records its commit index, then a heartbeat round must be
//! acknowledged by a majority — an acceptor acknowledges only a ballot at least its promise, so
//! no higher ballot can have finished phase 1 before the read was registered (any such phase 1
//! needs a majority, which meets ours after our read). The read may be served once the state
//! machine applied through the recorded index. A new leader first waits until the slots its
//! phase 1 recovered are chosen: until then it does not know the latest chosen value.
//!
//! Lease reads ([`super::ReadMode::LeaseBased`]) skip the round while a majority acknowledged
//! heartbeats sent less than `election_tick - LEASE_MARGIN_TICKS` ago (by the leader's clock).
//! An acceptor that heard a leader refuses to promise another ballot for `election_tick` ticks
//! (leader stickiness), a restarted acceptor refuses promises for `election_tick` ticks after it
//! starts, and the leader steps down when a majority went silent (check-quorum). Ticks must run
//! at the same rate on every member; the margin covers bounded drift.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::config::ReadMode;
use super::election::is_majority;
use super::message::MessageBody;
use super::{MultiPaxos, PaxosStorage};
use crate::error::Error;
use crate::types::{NodeId, ReadState, Role};

/// Ticks of clock drift a lease allows for.
const LEASE_MARGIN_TICKS: u64 = 2;
/// Heartbeat send times remembered for leases.
const SENT_ROUNDS_KEPT: usize = 64;

#[derive(Debug)]
struct PendingRead {
    ctx: u64,
    from: NodeId,
    index: u64,
    round: u64,
}

/// The leader's reads awaiting confirmation of its ballot.
#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    round: u64,
    last_sent_round: u64,
    /// (round, leader clock when it was first sent), oldest first.
    sent_at: VecDeque<(u64, u64)>,
    heartbeat_pending: bool,
    pending: VecDeque<PendingRead>,
    /// Reads received before the recovered slots were chosen.
    waiting_for_recovery: Vec<(u64, NodeId)>,
    /// Highest round each peer acknowledged.
    acked: BTreeMap<NodeId, u64>,
}

impl ReadQueue {
    pub(crate) fn clear(&mut self) {
        *self = ReadQueue {
            round: self.round,
            last_sent_round: self.last_sent_round,
            ..ReadQueue::default()
        };
    }

    pub(crate) fn heartbeat_pending(&self) -> bool {
        self.heartbeat_pending
    }

    fn len(&self) -> usize {
        self.pending.len() + self.waiting_for_recovery.len()
    }
}

impl<S: PaxosStorage> MultiPaxos<S> {
    pub(super) fn request_read(&mut self, ctx: u64) -> Result<(), Error> {
        if self.role == Role::Leader {
            if self.reads.len() >= self.config.max_pending_reads {
                // No dedicated error exists for a full read queue; the limit is the closest.
                return Err(Error::UncommittedLimit {
                    uncommitted: self.reads.len() as u64,
                    limit: self.config.max_pending_reads as u64,
                });
            }
            let me = self.config.id;
            self.register_read(ctx, me);
            return Ok(());
        }
        match self.leader {
            Some(leader) => {
                self.send(leader, MessageBody::ReadIndex { ctx });
                Ok(())
            }
            None => Err(Error::NotLeader { leader: None }),
        }
    }

    /// Leader: orders a read from `from` (this node or a follower).
    pub(super) fn register_read(&mut self, ctx: u64, from: NodeId) {
        if from != self.config.id && self.reads.len() >= self.config.max_pending_reads {
            return; // bounded: the follower's read times out and is retried
        }
        if self.commit < self.lead.recovery_end {
            self.reads.waiting_for_recovery.push((ctx, from));
            return;
        }
        let index = self.commit;
        if self.config.read_mode == ReadMode::LeaseBased && self.lease_valid() {
            self.deliver_read(ctx, from, index);
            return;
        }
        if !self.reads.heartbeat_pending {
            self.reads.round += 1;
            self.reads.heartbeat_pending = true;
        }
        let round = self.reads.round;
        self.reads.pending.push_back(PendingRead {
            ctx,
            from,
            index,
            round,
        });
        self.resolve_reads();
    }

    /// The read round a heartbeat sent now carries (lease mode: a fresh one each time, so
    /// acknowledgements date the lease precisely).
    pub(super) fn next_read_round(&mut self) -> u64 {
        let reads = &mut self.reads;
        reads.heartbeat_pending = false;
        if self.config.read_mode == ReadMode::LeaseBased && reads.last_sent_round == reads.round {
            reads.round += 1;
        }
        if reads.last_sent_round != reads.round {
            reads.last_sent_round = reads.round;
            reads.sent_at.push_back((reads.round, self.clock));
            if reads.sent_at.len() > SENT_ROUNDS_KEPT {
                reads.sent_at.pop_front();
            }
        }
        reads.round
    }

    fn lease_valid(&self) -> bool {
        if self.lead.lease_forfeited {
            return false;
        }
        let me = self.config.id;
        let span = u64::from(self.config.election_tick);
        let reads = &self.reads;
        let fresh: BTreeSet<NodeId> = self
            .conf
            .voters
            .iter()
            .copied()
            .filter(|&id| {
                id == me
                    || reads.acked.get(&id).is_some_and(|round| {
                        reads
                            .sent_at
                            .iter()
                            .find(|&&(r, _)| r == *round)
                            .is_some_and(|&(_, at)| self.clock + LEASE_MARGIN_TICKS < at + span)
                    })
            })
            .collect();
        is_majority(&self.conf.voters, &fresh)
    }

    fn deliver_read(&mut self, ctx: u64, from: NodeId, index: u64) {
        if from == self.config.id {
            self.ready_reads.push(ReadState { ctx, index });
        } else {
            self.send(from, MessageBody::ReadIndexResponse { ctx, index });
        }
    }

    /// A peer still promises our ballot, as of heartbeat round `read_round`.
    pub(super) fn handle_heartbeat_ack(
        &mut self,
        from: NodeId,
        ballot: super::Ballot,
        read_round: u64,
    ) {
        if self.role != Role::Leader || ballot != self.ballot {
            return;
        }
        self.lead.active.insert(from);
        let acked = self.reads.acked.entry(from).or_insert(0);
        *acked = (*acked).max(read_round);
        self.resolve_reads();
    }

    /// Serves every read whose round a majority acknowledged.
    fn resolve_reads(&mut self) {
        let me = self.config.id;
        while let Some(read) = self.reads.pending.front() {
            let round = read.round;
            let acks: BTreeSet<NodeId> = self
                .conf
                .voters
                .iter()
                .copied()
                .filter(|&id| id == me || self.reads.acked.get(&id).is_some_and(|&r| r >= round))
                .collect();
            if !is_majority(&self.conf.voters, &acks) {
                break;
            }
            let Some(read) = self.reads.pending.pop_front() else {
                break;
            };
            self.deliver_read(read.ctx, read.from, read.index);
        }
    }

    /// The leader's chosen prefix advanced: reads waiting for recovery may go on.
    pub(super) fn on_commit_advanced(&mut self) {
        if self.commit < self.lead.recovery_end || self.reads.waiting_for_recovery.is_empty() {
            return;
        }
        for (ctx, from) in std::mem::take(&mut self.reads.waiting_for_recovery) {
            self.register_read(ctx, from);
        }
    }
}
