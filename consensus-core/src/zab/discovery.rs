//! Discovery: the prospective leader learns a quorum's accepted epochs (FOLLOWERINFO), proposes
//! NEWEPOCH(e') above all of them, and collects ACKEPOCH from a quorum. A follower makes
//! `accepted_epoch = e'` durable before its ACKEPOCH leaves (a held message), so no two leaders
//! can gather a quorum for one epoch. The leader's own acceptance counts once its write is
//! confirmed.
//!
//! ACKEPOCH reports the follower's current epoch and last zxid; the leader must hold the most
//! up-to-date history of its quorum. The election's ordering makes it so; if a follower's history
//! is better anyway (it was unreachable during the election), the leader steps aside and a new
//! election, which that follower now joins, picks it.

use super::config::PlantedBug;
use super::election::better;
use super::message::{MessageBody, Vote};
use super::read::ReadQueue;
use super::zxid::Zxid;
use super::{
    FollowerPhase, HardState, LeaderPhase, Leading, Peer, PeerPhase, State, Zab, ZabStorage,
};
use crate::types::NodeId;

impl<S: ZabStorage> Zab<S> {
    // ---- follower side ------------------------------------------------------------------------

    pub(crate) fn send_follower_info(&mut self) {
        let State::Following(f) = &mut self.state else {
            return;
        };
        f.info_sent_at = self.now;
        let leader = f.leader;
        let body = MessageBody::FollowerInfo {
            accepted_epoch: self.accepted_epoch,
            observer: !self.conf.is_voter(self.config.id),
        };
        self.send(leader, body);
    }

    pub(crate) fn handle_new_epoch(&mut self, from: NodeId, epoch: u64) {
        let State::Following(f) = &self.state else {
            return;
        };
        if f.leader != from || f.phase == FollowerPhase::Broadcast {
            return;
        }
        let fresh = if f.epoch == epoch {
            f.fresh // a resent NEWEPOCH of this session: answer as before
        } else if f.phase != FollowerPhase::Discovery {
            return;
        } else if epoch > self.accepted_epoch {
            self.accepted_epoch = epoch; // durable before the ACKEPOCH below leaves
            true
        } else if epoch == self.accepted_epoch && epoch >= self.current_epoch {
            false // already acknowledged this epoch: may follow, but not vote for it
        } else {
            // A stale leader.
            self.become_looking();
            return;
        };
        if let State::Following(f) = &mut self.state {
            f.epoch = epoch;
            f.fresh = fresh;
            f.phase = FollowerPhase::Sync;
            f.heard_at = self.now;
        }
        let body = MessageBody::AckEpoch {
            epoch,
            fresh,
            current_epoch: self.current_epoch,
            last: self.log.last_zxid(),
        };
        self.send_held(from, body);
    }

    pub(crate) fn tick_following(&mut self) {
        let State::Following(f) = &self.state else {
            return;
        };
        if self.now.saturating_sub(f.heard_at) >= u64::from(self.election_timeout) {
            // A follower drops a leader it has not heard from within an election timeout.
            self.become_looking();
            return;
        }
        if f.phase != FollowerPhase::Broadcast
            && self.now.saturating_sub(f.info_sent_at) >= u64::from(self.config.resend_tick)
        {
            self.send_follower_info();
        }
    }

    // ---- leader side --------------------------------------------------------------------------

    pub(crate) fn become_leading(&mut self) {
        self.randomize_timeout();
        self.state = State::Leading(Box::new(Leading {
            phase: LeaderPhase::Discovery,
            epoch: 0,
            epoch_durable: false,
            new_leader_durable: false,
            initial_last: 0,
            peers: Default::default(),
            since: self.now,
            heartbeat_at: self.now,
            quorum_checked_at: self.now,
            reads: ReadQueue::default(),
            broadcast_pending: false,
        }));
        // Tell the members who voted for us that we lead (they may have decided already).
        self.broadcast_notification();
        for (from, (accepted_epoch, observer)) in std::mem::take(&mut self.election.early_infos) {
            self.handle_follower_info(from, accepted_epoch, observer);
        }
        self.maybe_choose_epoch();
    }

    pub(crate) fn handle_follower_info(
        &mut self,
        from: NodeId,
        accepted_epoch: u64,
        observer: bool,
    ) {
        let now = self.now;
        if !self.conf.contains(from) && !self.election.conf.contains(from) {
            return; // not a member (keeps the peer table bounded by the membership)
        }
        if matches!(self.state, State::Looking) {
            self.election
                .early_infos
                .insert(from, (accepted_epoch, observer));
            return;
        }
        let observer = observer || !self.conf.is_voter(from);
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if l.epoch > 0 && accepted_epoch > l.epoch {
            // A newer epoch was proposed since ours: this leadership is over.
            tracing::info!(
                leader = self.config.id,
                "zab: a follower accepted a newer epoch; looking"
            );
            self.become_looking();
            return;
        }
        let peer = l.peers.entry(from).or_insert(Peer {
            phase: PeerPhase::Info,
            observer,
            accepted_epoch,
            ack_epoch: None,
            next: 0,
            matched: 0,
            heard_at: now,
            sent_at: now,
            read_round: 0,
        });
        peer.observer = observer;
        if peer.phase == PeerPhase::Synced {
            // The follower lost its session (a restart): it starts over.
            peer.phase = PeerPhase::Info;
            peer.ack_epoch = None;
            peer.matched = 0;
        }
        if peer.phase == PeerPhase::Info {
            peer.accepted_epoch = accepted_epoch;
        }
        let epoch = l.epoch;
        if epoch > 0 {
            self.send(from, MessageBody::NewEpoch { epoch });
        } else {
            self.maybe_choose_epoch();
        }
    }

    /// NEWEPOCH once a quorum of voters (this leader included) reported its accepted epoch.
    fn maybe_choose_epoch(&mut self) {
        let quorum = self.quorum();
        let me = self.config.id;
        let own = self.accepted_epoch;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if l.epoch > 0 {
            return;
        }
        let voters = l
            .peers
            .iter()
            .filter(|(id, _)| self.conf.is_voter(**id))
            .count()
            + usize::from(self.conf.is_voter(me));
        if voters < quorum {
            return;
        }
        let epoch = l
            .peers
            .values()
            .map(|p| p.accepted_epoch)
            .chain([own, self.current_epoch])
            .max()
            .unwrap_or(0)
            + 1;
        l.epoch = epoch;
        let to: Vec<NodeId> = l.peers.keys().copied().collect();
        self.accepted_epoch = epoch; // counted once durable
        for id in to {
            self.send(id, MessageBody::NewEpoch { epoch });
        }
    }

    pub(crate) fn handle_ack_epoch(
        &mut self,
        from: NodeId,
        epoch: u64,
        fresh: bool,
        current_epoch: u64,
        last: Zxid,
    ) {
        let now = self.now;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if epoch != l.epoch || epoch == 0 {
            return;
        }
        let Some(peer) = l.peers.get_mut(&from) else {
            return;
        };
        peer.heard_at = now;
        match peer.phase {
            PeerPhase::Info => {
                peer.ack_epoch = Some((fresh, current_epoch, last));
                if l.phase != LeaderPhase::Discovery {
                    self.start_sync(from);
                }
            }
            PeerPhase::Syncing => self.send_sync(from),
            PeerPhase::Synced => {}
        }
        self.leader_progress();
    }

    /// A write carrying `durable` is confirmed: the leader's own acceptance of its epoch (and its
    /// own NEWLEADER) now count.
    pub(crate) fn own_epochs_durable(&mut self, durable: HardState) {
        if let State::Leading(l) = &mut self.state {
            if l.epoch > 0 && durable.accepted_epoch >= l.epoch {
                l.epoch_durable = true;
            }
            if l.epoch > 0 && durable.current_epoch >= l.epoch {
                l.new_leader_durable = true;
            }
        }
    }

    /// Moves the leader through its phases once the quorums it waits for are there.
    pub(crate) fn leader_progress(&mut self) {
        self.maybe_finish_discovery();
        self.maybe_establish();
        self.maybe_commit();
        self.release_reads();
    }

    fn maybe_finish_discovery(&mut self) {
        let quorum = self.quorum();
        let me = self.config.id;
        let ignore = self.has_bug(PlantedBug::ElectionIgnoresZxid);
        let own = Vote {
            leader: me,
            epoch: self.current_epoch,
            zxid: self.log.last_zxid(),
        };
        let State::Leading(l) = &self.state else {
            return;
        };
        if l.phase != LeaderPhase::Discovery || !l.epoch_durable {
            return;
        }
        let acks: Vec<(NodeId, u64, Zxid)> = l
            .peers
            .iter()
            .filter(|(id, _)| self.conf.is_voter(**id))
            .filter_map(|(id, p)| match p.ack_epoch {
                Some((true, current, last)) => Some((*id, current, last)),
                _ => None,
            })
            .collect();
        if acks.len() + usize::from(self.conf.is_voter(me)) < quorum {
            return;
        }
        // The leader must hold the most up-to-date history of its quorum.
        let ahead = acks
            .iter()
            .map(|&(id, epoch, zxid)| Vote {
                leader: id,
                epoch,
                zxid,
            })
            .filter(|v| {
                better(v, &own, ignore) && (ignore || (v.epoch, v.zxid) > (own.epoch, own.zxid))
            })
            .reduce(|a, b| if better(&b, &a, ignore) { b } else { a });
        if let Some(ahead) = ahead {
            tracing::info!(
                leader = me,
                "zab: a follower holds a newer history; stepping aside"
            );
            self.step_aside_for(ahead);
            return;
        }
        let epoch = l.epoch;
        let last = self.log.last_index();
        self.current_epoch = epoch; // the leader's own NEWLEADER, counted once durable
        let State::Leading(l) = &mut self.state else {
            return;
        };
        l.phase = LeaderPhase::Sync;
        l.initial_last = last;
        l.since = self.now;
        let ready: Vec<NodeId> = l
            .peers
            .iter()
            .filter(|(_, p)| p.phase == PeerPhase::Info && p.ack_epoch.is_some())
            .map(|(id, _)| *id)
            .collect();
        self.epoch_start = last;
        for id in ready {
            self.start_sync(id);
        }
    }

    fn maybe_establish(&mut self) {
        let quorum = self.quorum();
        let me = self.config.id;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if l.phase != LeaderPhase::Sync || !l.new_leader_durable {
            return;
        }
        let synced = l
            .peers
            .iter()
            .filter(|(id, p)| self.conf.is_voter(**id) && p.phase == PeerPhase::Synced)
            .count()
            + usize::from(self.conf.is_voter(me));
        if synced >= quorum {
            l.phase = LeaderPhase::Broadcast;
            l.since = self.now;
            l.quorum_checked_at = self.now;
            l.broadcast_pending = true;
        }
    }
}
