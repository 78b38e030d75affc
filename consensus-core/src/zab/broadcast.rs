//! Broadcast: the established leader appends each proposal to its history (epoch = its own) and
//! sends PROPOSALs to every synchronised follower and observer — FIFO per follower, batched up to
//! `max_msg_bytes`, at most `max_inflight` unacknowledged positions per follower. A follower ACKs
//! once the proposals are durable (held). The leader counts its own ACK only once its write is
//! confirmed, and commits the highest position a quorum of voters ACKed; COMMIT (and pings) carry
//! the commit point. Proposals are refused until a quorum ACKed NEWLEADER.

use super::config::PlantedBug;
use super::message::MessageBody;
use super::{FollowerPhase, LeaderPhase, PeerPhase, State, Zab, ZabStorage};
use crate::error::Error;
use crate::types::{Entry, EntryPayload, NodeId, Proposed};

impl<S: ZabStorage> Zab<S> {
    fn broadcast_before_quorum(&self) -> bool {
        self.has_bug(PlantedBug::BroadcastBeforeNewLeaderQuorum)
    }

    /// Whether the leader may propose now (or, under the planted bug, already in sync).
    fn may_broadcast(&self, phase: LeaderPhase) -> bool {
        phase == LeaderPhase::Broadcast
            || (phase == LeaderPhase::Sync && self.broadcast_before_quorum())
    }

    pub(crate) fn propose_entry(&mut self, payload: EntryPayload) -> Result<Proposed, Error> {
        let me = self.config.id;
        let leader_hint = self.leader();
        let State::Leading(l) = &self.state else {
            return Err(Error::NotLeader {
                leader: leader_hint,
            });
        };
        if !self.may_broadcast(l.phase) {
            // Nothing new until a quorum ACKed NEWLEADER.
            return Err(Error::NotLeader { leader: Some(me) });
        }
        let epoch = l.epoch;
        let last = self.log.last_index();
        let uncommitted = last.saturating_sub(self.commit);
        if uncommitted >= self.config.max_uncommitted {
            return Err(Error::UncommittedLimit {
                uncommitted,
                limit: self.config.max_uncommitted,
            });
        }
        let index = last + 1;
        self.append_entry(Entry {
            term: epoch,
            index,
            payload,
        });
        if let State::Leading(l) = &mut self.state {
            l.broadcast_pending = true;
        }
        Ok(Proposed { index, term: epoch })
    }

    /// Sends what the batched proposals, commits and read rounds call for (from `ready()`).
    pub(crate) fn flush_broadcast(&mut self) -> Result<(), Error> {
        let State::Leading(l) = &mut self.state else {
            return Ok(());
        };
        if l.reads.ping_pending() {
            l.reads.ping_sent();
            let (epoch, commit, round) = (l.epoch, self.commit, l.reads.round());
            let to: Vec<NodeId> = l
                .peers
                .iter()
                .filter(|(_, p)| p.phase == PeerPhase::Synced)
                .map(|(id, _)| *id)
                .collect();
            for id in to {
                self.send(
                    id,
                    MessageBody::Ping {
                        epoch,
                        commit,
                        read_round: round,
                    },
                );
            }
        }
        let bug = self.broadcast_before_quorum();
        let State::Leading(l) = &mut self.state else {
            return Ok(());
        };
        if !l.broadcast_pending {
            return Ok(());
        }
        l.broadcast_pending = false;
        if !(l.phase == LeaderPhase::Broadcast || bug) {
            return Ok(());
        }
        let to: Vec<NodeId> = l
            .peers
            .iter()
            .filter(|(_, p)| p.phase == PeerPhase::Synced || (bug && p.phase == PeerPhase::Syncing))
            .map(|(id, _)| *id)
            .collect();
        for id in to {
            self.send_proposals(id)?;
        }
        Ok(())
    }

    /// PROPOSALs to `id` from its `next` position, within the in-flight window; a COMMIT when
    /// there is nothing new.
    fn send_proposals(&mut self, id: NodeId) -> Result<(), Error> {
        let now = self.now;
        let last = self.log.last_index();
        let snap = self.log.snapshot_point().0;
        let (max_bytes, window) = (self.config.max_msg_bytes, self.config.max_inflight);
        let commit = self.commit;
        let mut sent = false;
        loop {
            let State::Leading(l) = &self.state else {
                return Ok(());
            };
            let epoch = l.epoch;
            let Some(peer) = l.peers.get(&id) else {
                return Ok(());
            };
            let (next, matched) = (peer.next, peer.matched);
            if next > last || next > matched + window {
                if !sent {
                    self.send(id, MessageBody::Commit { epoch, commit });
                }
                return Ok(());
            }
            let prev = next - 1;
            if prev < snap {
                // SNAP: the follower needs what this leader compacted.
                self.send_sync(id);
                return Ok(());
            }
            let hi = (last + 1).min(matched + window + 1);
            let entries = match self.log.entries(next, hi, max_bytes) {
                Ok(entries) if !entries.is_empty() => entries,
                Ok(_) => return Ok(()),
                Err(crate::error::StorageError::Compacted(_)) => {
                    self.send_sync(id);
                    return Ok(());
                }
                Err(error) => return Err(error.into()),
            };
            let reached = entries.last().map_or(prev, |e| e.index);
            if let State::Leading(l) = &mut self.state {
                if let Some(peer) = l.peers.get_mut(&id) {
                    peer.next = reached + 1;
                    peer.sent_at = now;
                }
            }
            sent = true;
            self.send(
                id,
                MessageBody::Proposal {
                    epoch,
                    prev_index: prev,
                    entries,
                    commit,
                },
            );
        }
    }

    /// The highest position a quorum of voters durably holds (this leader's own ACK once
    /// durable), committed.
    pub(crate) fn maybe_commit(&mut self) {
        let me = self.config.id;
        let quorum = self.quorum();
        let bug = self.broadcast_before_quorum();
        let persisted = self.persisted;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if !(l.phase == LeaderPhase::Broadcast || (bug && l.phase == LeaderPhase::Sync)) {
            return;
        }
        let mut acks: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|&v| {
                if v == me {
                    if l.new_leader_durable || bug {
                        persisted
                    } else {
                        0
                    }
                } else {
                    l.peers
                        .get(&v)
                        .filter(|p| {
                            p.phase == PeerPhase::Synced || (bug && p.phase == PeerPhase::Syncing)
                        })
                        .map_or(0, |p| p.matched)
                }
            })
            .collect();
        if acks.len() < quorum {
            return;
        }
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let q = acks[quorum - 1].min(self.log.last_index());
        if q > self.commit {
            self.commit = q;
            l.broadcast_pending = true;
        }
    }

    fn follower_in_session(&mut self, from: NodeId, epoch: u64, allow_sync: bool) -> bool {
        let now = self.now;
        let State::Following(f) = &mut self.state else {
            return false;
        };
        if f.leader != from || f.epoch != epoch {
            return false;
        }
        let ok =
            f.phase == FollowerPhase::Broadcast || (allow_sync && f.phase == FollowerPhase::Sync);
        if ok || f.phase == FollowerPhase::Sync {
            f.heard_at = now;
        }
        ok
    }

    pub(crate) fn handle_proposal(
        &mut self,
        from: NodeId,
        epoch: u64,
        prev_index: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) {
        let bug = self.broadcast_before_quorum();
        if !self.follower_in_session(from, epoch, bug) {
            return;
        }
        let last = self.log.last_index();
        if prev_index > last {
            self.send(from, MessageBody::Nack { epoch, hint: last });
            return;
        }
        let mut reached = prev_index;
        for entry in entries {
            if entry.index <= self.log.last_index() {
                let held = self.log.term(entry.index);
                if held.is_some_and(|t| t != entry.term)
                    && !bug
                    && entry.index > self.log.snapshot_point().0
                {
                    // A synchronised follower's history is a prefix of its leader's.
                    tracing::warn!(
                        index = entry.index,
                        "zab: proposal disagrees with the history; ignored"
                    );
                    return;
                }
            } else {
                self.append_entry(entry.clone());
            }
            reached = entry.index;
        }
        let index = reached.min(self.log.last_index());
        self.send_ack(
            from,
            MessageBody::Ack {
                epoch,
                index,
                new_leader: false,
            },
        );
        self.advance_commit(commit);
    }

    fn advance_commit(&mut self, commit: u64) {
        let c = commit.min(self.log.last_index());
        if c > self.commit {
            self.commit = c;
        }
    }

    pub(crate) fn handle_commit(&mut self, from: NodeId, epoch: u64, commit: u64) {
        if self.follower_in_session(from, epoch, self.broadcast_before_quorum()) {
            self.advance_commit(commit);
        }
    }

    pub(crate) fn handle_ping(&mut self, from: NodeId, epoch: u64, commit: u64, read_round: u64) {
        if self.follower_in_session(from, epoch, false) {
            self.advance_commit(commit);
            self.send(from, MessageBody::Pong { epoch, read_round });
        }
    }

    pub(crate) fn tick_leading(&mut self) {
        let now = self.now;
        let timeout = u64::from(self.election_timeout);
        let quorum = self.quorum();
        let me = self.config.id;
        let last = self.log.last_index();
        let (heartbeat, resend) = (
            u64::from(self.config.heartbeat_tick),
            u64::from(self.config.resend_tick),
        );
        let commit = self.commit;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if l.phase != LeaderPhase::Broadcast && now.saturating_sub(l.since) >= 2 * timeout {
            tracing::info!(leader = me, "zab: could not establish leadership in time");
            self.become_looking();
            return;
        }
        if l.phase == LeaderPhase::Broadcast && now.saturating_sub(l.quorum_checked_at) >= timeout {
            l.quorum_checked_at = now;
            let heard = self
                .conf
                .voters
                .iter()
                .filter(|&&v| {
                    v == me
                        || l.peers
                            .get(&v)
                            .is_some_and(|p| now.saturating_sub(p.heard_at) < timeout)
                })
                .count();
            if heard < quorum {
                tracing::info!(leader = me, "zab: lost the quorum; looking again");
                self.become_looking();
                return;
            }
        }
        if now.saturating_sub(l.heartbeat_at) < heartbeat {
            return;
        }
        l.heartbeat_at = now;
        let epoch = l.epoch;
        let round = l.reads.round();
        let mut resync = Vec::new();
        let mut ping = Vec::new();
        for (&id, peer) in l.peers.iter_mut() {
            match peer.phase {
                PeerPhase::Info => {}
                PeerPhase::Syncing => {
                    if now.saturating_sub(peer.sent_at) >= resend {
                        resync.push(id);
                    }
                }
                PeerPhase::Synced => {
                    ping.push(id);
                    if peer.matched < last && now.saturating_sub(peer.sent_at) >= resend {
                        peer.next = peer.matched + 1;
                        l.broadcast_pending = true;
                    }
                }
            }
        }
        for id in ping {
            self.send(
                id,
                MessageBody::Ping {
                    epoch,
                    commit,
                    read_round: round,
                },
            );
        }
        for id in resync {
            self.send_sync(id);
        }
        // Members of the configuration that never reported (a member just added, started to
        // join and knowing nobody) hear who leads, so they can follow.
        let strangers: Vec<NodeId> = match &self.state {
            State::Leading(l) if l.phase == LeaderPhase::Broadcast => self
                .conf
                .members()
                .into_iter()
                .filter(|id| *id != me && !l.peers.contains_key(id))
                .collect(),
            _ => Vec::new(),
        };
        if !strangers.is_empty() {
            let body = self.my_notification();
            for id in strangers {
                self.send(id, body.clone());
            }
        }
    }
}
