//! Log replication and commitment (Raft §5.3–5.4, thesis §3.5–3.6, §10.2).

use super::config::{PlantedBug, ReadMode};
use super::message::MessageBody;
use super::progress::ProgressState;
use super::quorum;
use super::Raft;
use super::RaftStorage;
use crate::error::{Error, StorageError};
use crate::types::{Entry, EntryPayload, NodeId, Proposed, Role};

impl<S: RaftStorage> Raft<S> {
    pub(super) fn check_can_propose(&self, size: u64) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(to) = self.lead_transferee {
            return Err(Error::TransferInProgress { to });
        }
        let limit = self.config.max_uncommitted_bytes;
        if size > limit {
            return Err(Error::ProposalTooLarge { size, limit });
        }
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size > limit {
            return Err(Error::UncommittedLimit {
                uncommitted: self.uncommitted_bytes,
                limit,
            });
        }
        Ok(())
    }

    /// Leader: appends one entry of the current term; followers get it at the next `ready()`.
    pub(super) fn append_entry(&mut self, payload: EntryPayload) -> Proposed {
        debug_assert_eq!(self.role, Role::Leader);
        let index = self.log.last_index() + 1;
        let entry = Entry {
            term: self.term,
            index,
            payload,
        };
        self.uncommitted_bytes += entry.payload_size();
        self.log.append(std::iter::once(entry));
        self.broadcast_pending = true;
        if self.conf.voters.len() == 1 && self.conf.outgoing.is_empty() {
            // A lone voter commits on its own durability; nothing to send.
            self.broadcast_pending = false;
        }
        Proposed {
            index,
            term: self.term,
        }
    }

    pub(super) fn broadcast_append(&mut self) {
        let me = self.config.id;
        let peers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|&id| id != me)
            .collect();
        for to in peers {
            self.send_append(to, true);
        }
    }

    /// Sends the next batch of entries to `to` (or a snapshot if they were compacted).
    /// With `allow_empty`, sends an empty append to carry the commit index. Returns whether
    /// something was sent.
    pub(super) fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let max_inflight = self.config.max_inflight;
        let Some(progress) = self.progress.get(&to) else {
            return false;
        };
        if progress.is_paused(max_inflight) {
            return false;
        }
        let next = progress.next;
        let last = self.log.last_index();
        if !allow_empty && next > last {
            return false;
        }
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let entries = self.log.entries(next, last + 1, self.config.max_msg_bytes);
        let (prev_term, entries) = match (prev_term, entries) {
            (Ok(term), Ok(entries)) => (term, entries),
            (Err(StorageError::Compacted(_)), _) | (_, Err(StorageError::Compacted(_))) => {
                return self.send_snapshot(to);
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, to, "cannot read entries to replicate");
                return false;
            }
        };
        let last_sent = entries.last().map(|e| e.index);
        if let Some(progress) = self.progress.get_mut(&to) {
            progress.sent(last_sent);
        }
        let commit = self.log.committed;
        self.send(
            to,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
        true
    }

    /// Follower side of AppendEntries.
    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) -> Result<(), Error> {
        self.election_elapsed = 0;
        self.leader = Some(from);
        if prev_index < self.log.committed {
            // Already committed here: everything through our commit matches the leader.
            let index = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse {
                    index,
                    reject: false,
                    hint_index: 0,
                    hint_term: 0,
                },
            );
            return Ok(());
        }
        match self.log.maybe_append(prev_index, prev_term, entries)? {
            Some(last_new) => {
                // Only entries verified by this append may be committed (Raft §5.3 rule 5).
                self.log.commit_to(commit.min(last_new));
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        index: last_new,
                        reject: false,
                        hint_index: 0,
                        hint_term: 0,
                    },
                );
            }
            None => {
                // Raft §5.3: reject when the log has no entry at prev_index with prev_term; hint
                // where the leader should look next (thesis §5.3 optimisation).
                let probe = prev_index.min(self.log.last_index());
                let (hint_index, hint_term) = self.log.find_conflict_by_term(probe, prev_term);
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        index: prev_index,
                        reject: true,
                        hint_index,
                        hint_term,
                    },
                );
            }
        }
        Ok(())
    }

    /// Leader side of an AppendEntries (or InstallSnapshot) answer.
    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        index: u64,
        reject: bool,
        hint_index: u64,
        hint_term: u64,
    ) {
        let next_probe = if reject && hint_term > 0 {
            self.log.find_conflict_by_term(hint_index, hint_term).0
        } else {
            hint_index
        };
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if reject {
            if hint_index == 0 && index > 0 {
                // The follower holds no entries at all: a new member. Install our snapshot first,
                // even the bootstrap one, so it learns the configuration the log starts from.
                progress.become_probe();
                self.send_snapshot(from);
                return;
            }
            if progress.maybe_decrease_to(index, next_probe) {
                if progress.state == ProgressState::Replicate {
                    progress.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        let grew = progress.maybe_update(index);
        let snapshot_done = matches!(progress.state, ProgressState::Snapshot { pending } if progress.matched >= pending);
        if grew || snapshot_done {
            match progress.state {
                ProgressState::Probe => progress.become_replicate(),
                ProgressState::Snapshot { pending } if progress.matched >= pending => {
                    progress.become_replicate()
                }
                ProgressState::Snapshot { .. } => {}
                ProgressState::Replicate => progress.free_to(index),
            }
            if self.maybe_commit() {
                self.broadcast_pending = true;
            }
            while self.send_append(from, false) {}
            if self.lead_transferee == Some(from)
                && self.progress.get(&from).map(|p| p.matched) == Some(self.log.last_index())
            {
                self.lease_forfeited = true;
                self.send(from, MessageBody::TimeoutNow);
            }
        } else if progress.state == ProgressState::Replicate {
            progress.free_to(index);
        }
    }

    /// Advances the commit index to what a quorum stores, counting only entries of this term
    /// (Raft §5.4.2). Returns whether it advanced.
    pub(super) fn maybe_commit(&mut self) -> bool {
        let index = quorum::committed_index(&self.conf, |id| {
            self.progress.get(&id).map_or(0, |p| p.matched)
        });
        if index <= self.log.committed || index == u64::MAX {
            return false;
        }
        let by_counting = self
            .config
            .has_bug(PlantedBug::CommitPreviousTermByCounting);
        if self.log.term(index).ok() != Some(self.term) && !by_counting {
            return false;
        }
        self.log.commit_to(index);
        self.on_commit_advanced();
        true
    }

    /// The leader's own write completed: it now counts itself for what it stores (thesis §10.2.1:
    /// followers may have acknowledged first).
    pub(super) fn leader_persisted(&mut self) {
        let me = self.config.id;
        let persisted = self.log.persisted;
        if let Some(progress) = self.progress.get_mut(&me) {
            if progress.maybe_update(persisted) && self.maybe_commit() {
                self.broadcast_pending = true;
            }
        }
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let me = self.config.id;
        let lease = self.config.read_mode == ReadMode::LeaseBased;
        let read_round = self.reads.start_round(self.clock, lease);
        let commit = self.log.committed;
        let targets: Vec<(NodeId, u64)> = self
            .progress
            .iter()
            .filter(|(&id, _)| id != me)
            .map(|(&id, p)| (id, p.matched.min(commit)))
            .collect();
        for (to, commit) in targets {
            self.send(to, MessageBody::Heartbeat { commit, read_round });
        }
        self.resolve_reads();
    }

    pub(super) fn handle_heartbeat(&mut self, from: NodeId, commit: u64, read_round: u64) {
        self.election_elapsed = 0;
        self.leader = Some(from);
        // The leader caps `commit` at what it knows we store.
        self.log.commit_to(commit.min(self.log.last_index()));
        self.send(from, MessageBody::HeartbeatResponse { read_round });
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        let last = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.probe_sent = false;
        if progress.state == ProgressState::Replicate
            && progress.inflights.len() >= self.config.max_inflight
        {
            // Appends may have been lost: let one more through so the follower can say so.
            progress.inflights.pop_front();
        }
        if progress.matched < last {
            // Possibly with nothing new: a follower that lost our appends then rejects it and we
            // fall back to probing from where it really is.
            self.send_append(from, true);
        }
        self.reads.ack(from, read_round);
        self.resolve_reads();
    }
}
