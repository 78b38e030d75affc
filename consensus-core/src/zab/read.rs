//! Linearizable reads, as Raft's ReadIndex: the leader notes its commit point, then a ping round
//! answered by a quorum of voters still following its epoch shows no newer leader was established
//! meanwhile; the read may then be served once the state machine applied through that point. A
//! leader serves none until it committed its initial history. A follower in broadcast forwards
//! the read to its leader (READ REQUEST, as ZooKeeper's SYNC), which answers, after the same
//! quorum round, with the commit point (READ INDEX); the follower serves it once it applied
//! through that point. A lost request or answer is never retried here: the embedder's read
//! times out. A member with no established leader refuses with `NoLeader`. The queue is bounded
//! by `max_pending_reads`.

use std::collections::VecDeque;

use super::message::MessageBody;
use super::FollowerPhase;
use super::{LeaderPhase, PeerPhase, State, Zab, ZabStorage};
use crate::error::Error;
use crate::types::{NodeId, ReadState};

/// Reads waiting for their quorum round.
#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    round: u64,
    ping_pending: bool,
    /// (ctx, index, round, who asked: this member or a follower).
    pending: VecDeque<(u64, u64, u64, NodeId)>,
}

impl ReadQueue {
    pub(crate) fn round(&self) -> u64 {
        self.round
    }

    pub(crate) fn ping_pending(&self) -> bool {
        self.ping_pending
    }

    pub(crate) fn ping_sent(&mut self) {
        self.ping_pending = false;
    }
}

impl<S: ZabStorage> Zab<S> {
    pub(crate) fn request_read(&mut self, ctx: u64) -> Result<(), Error> {
        if let State::Following(f) = &self.state {
            if f.phase != FollowerPhase::Broadcast {
                return Err(Error::NoLeader);
            }
            let (leader, epoch) = (f.leader, f.epoch);
            self.send(leader, MessageBody::ReadRequest { epoch, ctx });
            return Ok(());
        }
        let me = self.config.id;
        self.queue_read(ctx, me)
    }

    /// The leader queues a read of its own (`from` = this member) or a follower's.
    fn queue_read(&mut self, ctx: u64, from: NodeId) -> Result<(), Error> {
        let single = self.conf.voters.len() == 1 && self.conf.is_voter(self.config.id);
        let commit = self.commit;
        let max = self.config.max_pending_reads;
        let State::Leading(l) = &mut self.state else {
            return Err(Error::NoLeader);
        };
        if l.phase != LeaderPhase::Broadcast || commit < l.initial_last {
            return Err(Error::NotLeader {
                leader: Some(self.config.id),
            });
        }
        if single {
            self.read_confirmed(ctx, commit, from);
            return Ok(());
        }
        if l.reads.pending.len() >= max {
            return Err(Error::UncommittedLimit {
                uncommitted: l.reads.pending.len() as u64,
                limit: max as u64,
            });
        }
        l.reads.round += 1;
        let round = l.reads.round;
        l.reads.pending.push_back((ctx, commit, round, from));
        l.reads.ping_pending = true;
        Ok(())
    }

    pub(crate) fn handle_pong(&mut self, from: u64, epoch: u64, read_round: u64) {
        let now = self.now;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if epoch != l.epoch {
            return;
        }
        if let Some(peer) = l.peers.get_mut(&from) {
            peer.heard_at = now;
            if peer.phase == PeerPhase::Synced {
                peer.read_round = peer.read_round.max(read_round);
            }
        }
        self.release_reads();
    }

    /// Hands out the reads whose round a quorum of voters confirmed.
    pub(crate) fn release_reads(&mut self) {
        let me = self.config.id;
        let quorum = self.quorum();
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if l.reads.pending.is_empty() {
            return;
        }
        let mut rounds: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|&v| {
                if v == me {
                    l.reads.round
                } else {
                    l.peers
                        .get(&v)
                        .filter(|p| p.phase == PeerPhase::Synced)
                        .map_or(0, |p| p.read_round)
                }
            })
            .collect();
        if rounds.len() < quorum {
            return;
        }
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = rounds[quorum - 1];
        let mut released = Vec::new();
        while l.reads.pending.front().is_some_and(|r| r.2 <= confirmed) {
            if let Some((ctx, index, _, from)) = l.reads.pending.pop_front() {
                released.push((ctx, index, from));
            }
        }
        for (ctx, index, from) in released {
            self.read_confirmed(ctx, index, from);
        }
    }

    /// A read the leader confirmed: its own is ready; a follower's is answered.
    fn read_confirmed(&mut self, ctx: u64, index: u64, from: NodeId) {
        if from == self.config.id {
            self.ready_reads.push(ReadState { ctx, index });
            return;
        }
        if let State::Leading(l) = &self.state {
            let epoch = l.epoch;
            self.send(from, MessageBody::ReadIndex { epoch, ctx, index });
        }
    }

    /// The leader takes a follower's read; one it cannot take now is dropped (the follower's
    /// read times out and is retried by its client).
    pub(crate) fn handle_read_request(&mut self, from: NodeId, epoch: u64, ctx: u64) {
        let synced = match &self.state {
            State::Leading(l) => {
                l.epoch == epoch
                    && l.peers
                        .get(&from)
                        .is_some_and(|p| p.phase == PeerPhase::Synced)
            }
            _ => false,
        };
        if synced {
            let _ = self.queue_read(ctx, from);
        }
    }

    /// A follower takes its leader's answer to a forwarded read.
    pub(crate) fn handle_read_index(&mut self, from: NodeId, epoch: u64, ctx: u64, index: u64) {
        if let State::Following(f) = &self.state {
            if f.leader == from && f.epoch == epoch && f.phase == FollowerPhase::Broadcast {
                self.ready_reads.push(ReadState { ctx, index });
            }
        }
    }

    /// Reads of a leader that steps down are dropped (their clients time out and retry).
    pub(crate) fn abandon_reads(&mut self) {
        if let State::Leading(l) = &mut self.state {
            l.reads.pending.clear();
        }
    }
}
