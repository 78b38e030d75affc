//! Synchronisation: the leader brings each follower that acknowledged its epoch to its history,
//! one chunk at a time (stop and wait, resent after `resend_tick`):
//!
//! - **DIFF**: the follower's history is a prefix of the leader's: the missing proposals follow;
//! - **TRUNC**: the follower holds proposals the leader never saw: a chunk whose entries conflict
//!   with the follower's (same position, other epoch) truncates from there
//!   (`Write::truncate_from`), and the NEWLEADER chunk cuts whatever the follower holds beyond
//!   the leader's history;
//! - **SNAP**: what the follower needs is compacted on the leader: the leader's snapshot goes first
//!   (`Write::snapshot`, a bulk message). Also for a joining member (empty history, not in the
//!   snapshot's membership): even an uncompacted leader's snapshot at position 0 carries the
//!   group's first membership, which no entry of the history does.
//!
//! Each chunk names the position it follows; a follower that does not hold that position (or holds
//! another epoch there) answers NACK with a lower hint and the leader backs up. The chunk that
//! reaches the end of the leader's history is NEWLEADER: the follower makes
//! `current_epoch = e'` durable with the entries and ACKs (a held message). A follower never
//! truncates a position it knows committed; a leader asking it to is ignored.

use super::config::PlantedBug;
use super::message::{MessageBody, SyncKind};
use super::{FollowerPhase, PeerPhase, State, Zab, ZabStorage};
use crate::error::Error;
use crate::types::{Entry, NodeId, Snapshot};

impl<S: ZabStorage> Zab<S> {
    /// ACKs are promises about durable state: they wait for the write (unless the planted
    /// `AckBeforeDurable` sends them at once).
    pub(crate) fn send_ack(&mut self, to: NodeId, body: MessageBody) {
        if self.has_bug(PlantedBug::AckBeforeDurable) {
            self.send(to, body);
        } else {
            self.send_held(to, body);
        }
    }

    /// Starts synchronising `id`, guessing the last position it shares with this leader from its
    /// ACKEPOCH (NACKs correct the guess).
    pub(crate) fn start_sync(&mut self, id: NodeId) {
        let last = self.log.last_index();
        let snap = self.log.snapshot_point().0;
        let State::Leading(l) = &self.state else {
            return;
        };
        let Some(peer) = l.peers.get(&id) else {
            return;
        };
        let Some((_, _, their_last)) = peer.ack_epoch else {
            return;
        };
        let mut prev = their_last.index.min(last);
        if self.log.term(their_last.index) != Some(their_last.epoch) {
            // Positions holding epochs newer than the follower's last cannot be shared.
            while prev > snap && self.log.term(prev).is_some_and(|t| t > their_last.epoch) {
                prev -= 1;
            }
        }
        if let State::Leading(l) = &mut self.state {
            if let Some(peer) = l.peers.get_mut(&id) {
                peer.phase = PeerPhase::Syncing;
                peer.next = prev + 1;
            }
        }
        self.send_sync(id);
    }

    /// Sends `id` the sync chunk starting at its `next` position.
    pub(crate) fn send_sync(&mut self, id: NodeId) {
        let now = self.now;
        let last = self.log.last_index();
        let max_bytes = self.config.max_msg_bytes;
        let State::Leading(l) = &self.state else {
            return;
        };
        let epoch = l.epoch;
        let Some(peer) = l.peers.get(&id) else {
            return;
        };
        let their_last = peer.ack_epoch.map_or(0, |(_, _, z)| z.index);
        let mut prev = peer.next.saturating_sub(1).min(last);
        let mut snapshot: Option<Snapshot> = None;
        let mut prev_epoch = self.log.term(prev);
        // A member added to the group and started to join holds nothing, not even the group's
        // first membership (the leader's snapshot at position 0 has it): it starts from SNAP too.
        let joining = their_last == 0
            && prev == 0
            && !self.log.storage.snapshot_meta().conf_state.contains(id);
        if prev_epoch.is_none() || prev < self.log.snapshot_point().0 || joining {
            match self.snapshot_for_sync() {
                Some(s) => {
                    prev = s.meta.index;
                    prev_epoch = Some(s.meta.term);
                    snapshot = Some(s);
                }
                None => return, // retried on the next resend
            }
        }
        let entries: Vec<Entry> = match self.log.entries(prev + 1, last + 1, max_bytes) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, "zab: cannot read the history to sync a follower");
                return;
            }
        };
        let reaches = entries.last().map_or(prev, |e| e.index);
        let kind = if snapshot.is_some() {
            SyncKind::Snap
        } else if their_last > prev {
            SyncKind::Trunc
        } else {
            SyncKind::Diff
        };
        let body = MessageBody::Sync {
            epoch,
            kind,
            snapshot,
            prev_index: prev,
            prev_epoch: prev_epoch.unwrap_or(0),
            entries,
            new_leader: reaches == last,
        };
        if let State::Leading(l) = &mut self.state {
            if let Some(peer) = l.peers.get_mut(&id) {
                peer.sent_at = now;
            }
        }
        self.send(id, body);
    }

    /// A follower takes a sync chunk.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn handle_sync(
        &mut self,
        from: NodeId,
        epoch: u64,
        kind: SyncKind,
        snapshot: Option<Snapshot>,
        prev_index: u64,
        prev_epoch: u64,
        entries: Vec<Entry>,
        new_leader: bool,
    ) -> Result<(), Error> {
        let now = self.now;
        let State::Following(f) = &mut self.state else {
            return Ok(());
        };
        if f.leader != from || f.epoch != epoch || f.phase == FollowerPhase::Discovery {
            return Ok(());
        }
        f.heard_at = now;
        let in_broadcast = f.phase == FollowerPhase::Broadcast;
        tracing::trace!(?kind, prev_index, n = entries.len(), "zab: sync chunk");
        if let Some(snapshot) = snapshot {
            let joining = self.conf.voters.is_empty() && self.log.last_index() == 0;
            if snapshot.meta.index > self.commit || joining {
                self.log.install_snapshot(snapshot);
                self.recompute_epoch_start();
            }
        }
        let floor = self.log.snapshot_point().0;
        let shares_prev = prev_index <= floor || self.log.term(prev_index) == Some(prev_epoch);
        if !shares_prev {
            let hint = prev_index.saturating_sub(1).min(self.log.last_index());
            self.send(from, MessageBody::Nack { epoch, hint });
            return Ok(());
        }
        let mut reached = prev_index;
        for entry in entries {
            if entry.index <= floor {
                reached = reached.max(entry.index);
                continue;
            }
            match self.log.term(entry.index) {
                Some(term) if term == entry.term => {}
                Some(_) => {
                    if entry.index <= self.commit {
                        tracing::warn!(
                            index = entry.index,
                            "zab: a leader asked to replace a committed proposal; ignored"
                        );
                        return Ok(());
                    }
                    tracing::info!(
                        from = entry.index,
                        last = self.log.last_index(),
                        leader = from,
                        "zab: TRUNC: dropping proposals the new leader never saw"
                    );
                    self.truncate_log(entry.index);
                    self.append_entry(entry.clone());
                }
                None if entry.index == self.log.last_index() + 1 => {
                    self.append_entry(entry.clone());
                }
                None => break,
            }
            reached = entry.index;
        }
        if new_leader && !in_broadcast {
            // TRUNC: what lies beyond the leader's history goes.
            if self.log.last_index() > reached {
                if reached < self.commit {
                    tracing::warn!("zab: NEWLEADER would cut committed proposals; ignored");
                    return Ok(());
                }
                tracing::info!(
                    from = reached + 1,
                    last = self.log.last_index(),
                    leader = from,
                    "zab: TRUNC: dropping proposals the new leader never saw"
                );
                self.truncate_log(reached + 1);
            }
            self.current_epoch = epoch; // durable before the ACK below leaves
            self.recompute_epoch_start();
            if let State::Following(f) = &mut self.state {
                f.phase = FollowerPhase::Broadcast;
            }
        }
        let index = reached.min(self.log.last_index());
        self.send_ack(
            from,
            MessageBody::Ack {
                epoch,
                index,
                new_leader: new_leader && (!in_broadcast || self.current_epoch == epoch),
            },
        );
        Ok(())
    }

    /// The leader takes an ACK (of a sync chunk, NEWLEADER or proposals).
    pub(crate) fn handle_ack(&mut self, from: NodeId, epoch: u64, index: u64, new_leader: bool) {
        let now = self.now;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if epoch != l.epoch {
            return;
        }
        let Some(peer) = l.peers.get_mut(&from) else {
            return;
        };
        peer.heard_at = now;
        match peer.phase {
            PeerPhase::Info => return,
            PeerPhase::Syncing => {
                peer.matched = peer.matched.max(index);
                peer.next = index + 1;
                if new_leader {
                    peer.phase = PeerPhase::Synced;
                    l.broadcast_pending = true;
                } else {
                    self.send_sync(from);
                }
            }
            PeerPhase::Synced => {
                peer.matched = peer.matched.max(index);
                peer.next = peer.next.max(index + 1);
                l.broadcast_pending = true;
            }
        }
        self.leader_progress();
    }

    /// The leader takes a NACK: back up and resend.
    pub(crate) fn handle_nack(&mut self, from: NodeId, epoch: u64, hint: u64) {
        let now = self.now;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if epoch != l.epoch {
            return;
        }
        let Some(peer) = l.peers.get_mut(&from) else {
            return;
        };
        peer.heard_at = now;
        match peer.phase {
            PeerPhase::Info => {}
            PeerPhase::Syncing => {
                if hint + 1 < peer.next {
                    peer.next = hint + 1;
                    self.send_sync(from);
                }
            }
            PeerPhase::Synced => {
                peer.next = (hint + 1).max(peer.matched + 1);
                l.broadcast_pending = true;
            }
        }
    }
}
