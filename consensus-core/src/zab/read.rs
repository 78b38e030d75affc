//! Linearizable reads, as Raft's ReadIndex: the leader notes its commit point, then a ping round
//! answered by a quorum of voters still following its epoch shows no newer leader was established
//! meanwhile; the read may then be served once the state machine applied through that point. A
//! leader serves none until it committed its initial history. Followers refuse with `NotLeader`
//! naming their leader. The queue is bounded by `max_pending_reads`.

use std::collections::VecDeque;

use super::{LeaderPhase, PeerPhase, State, Zab, ZabStorage};
use crate::error::Error;
use crate::types::ReadState;

/// Reads waiting for their quorum round.
#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    round: u64,
    ping_pending: bool,
    /// (ctx, index, round).
    pending: VecDeque<(u64, u64, u64)>,
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
        let single = self.conf.voters.len() == 1 && self.conf.is_voter(self.config.id);
        let commit = self.commit;
        let max = self.config.max_pending_reads;
        let leader = self.leader();
        let State::Leading(l) = &mut self.state else {
            return Err(match leader {
                Some(leader) => Error::NotLeader {
                    leader: Some(leader),
                },
                None => Error::NoLeader,
            });
        };
        if l.phase != LeaderPhase::Broadcast || commit < l.initial_last {
            return Err(Error::NotLeader {
                leader: Some(self.config.id),
            });
        }
        if single {
            self.ready_reads.push(ReadState { ctx, index: commit });
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
        l.reads.pending.push_back((ctx, commit, round));
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
        while l.reads.pending.front().is_some_and(|r| r.2 <= confirmed) {
            if let Some((ctx, index, _)) = l.reads.pending.pop_front() {
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
