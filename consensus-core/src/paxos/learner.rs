//! Learning the chosen prefix, and catching up by fetching chosen values.
//!
//! A slot is known chosen here when the leader of ballot `b` says its commit index covers it and
//! this node accepted that slot under `b` (a leader proposes one value per slot per ballot), or
//! when a peer sends it as chosen (`Chosen`, answering `Fetch`; or a snapshot). A follower that
//! knows slot `s` is chosen but holds no value there, or a value of another ballot, fetches the
//! chosen values from the leader; chosen slots reach `Ready::committed` strictly in order.
//! One fetch is outstanding at a time; an unanswered one is abandoned after an election timeout.
//! The slot log keeps the latest run of consecutive slots written under one ballot, so a commit
//! index covering a whole batch is learnt at once, not by reading each slot's ballot.

use super::ballot::Ballot;
use super::membership;
use super::message::MessageBody;
use super::{MultiPaxos, PaxosStorage};
use crate::error::StorageError;
use crate::types::{Entry, EntryPayload, NodeId, Role};

/// A learner's catch-up state.
#[derive(Debug, Default)]
pub(crate) struct FetchState {
    /// The fetch in flight: whom we asked, and our clock when we asked.
    outstanding: Option<(NodeId, u64)>,
    /// Highest commit index a peer reported (slots through it are chosen somewhere).
    pub(crate) known_commit: u64,
}

impl<S: PaxosStorage> MultiPaxos<S> {
    /// Slot `slot` (at `commit + 1`), known to hold no membership change, is chosen and stored
    /// here: extend the chosen prefix.
    pub(super) fn on_chosen_data(&mut self, slot: u64) {
        debug_assert_eq!(slot, self.commit + 1, "the chosen prefix has no gap");
        self.commit = slot;
    }

    /// `entry` (at `commit + 1`) is chosen and stored here: extend the chosen prefix.
    pub(super) fn on_chosen(&mut self, entry: &Entry) {
        debug_assert_eq!(entry.index, self.commit + 1, "the chosen prefix has no gap");
        self.commit = entry.index;
        if let EntryPayload::ConfChange(change) = &entry.payload {
            match membership::apply_change(&self.conf, change) {
                Ok(next) => self.conf = next,
                Err(error) => {
                    tracing::warn!(slot = entry.index, %error, "chosen membership change ignored")
                }
            }
            if self.role == Role::Leader && !self.conf.is_voter(self.config.id) {
                tracing::debug!(
                    id = self.config.id,
                    "removed from the configuration; stepping down"
                );
                self.become_follower(None);
            }
        }
    }

    /// The leader of `ballot` (`from`) says slots through `commit` are chosen.
    pub(super) fn learn_commit(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit: u64,
    ) -> Result<(), StorageError> {
        self.fetch.known_commit = self.fetch.known_commit.max(commit);
        let term = ballot.encode();
        // Only the term is read per slot; a membership change's value is needed to apply it.
        while self.commit < commit {
            let slot = self.commit + 1;
            // Fast path: the slots this ballot's batches wrote here, one run, skipped at once
            // (stopping at each membership change, which is applied on its own, in order).
            if let Some(run_end) = self.log.run_through(slot, term) {
                let upto = run_end.min(commit);
                match self.log.first_conf_change_in(slot, upto) {
                    Some(conf_slot) => {
                        self.commit = conf_slot - 1;
                        match self.log.get(conf_slot)? {
                            Some(entry) => self.on_chosen(&entry),
                            None => break,
                        }
                    }
                    None => self.commit = upto,
                }
                continue;
            }
            if self.log.term(slot)? != Some(term) {
                break;
            }
            if self.log.holds_conf_change(slot) {
                match self.log.get(slot)? {
                    Some(entry) => self.on_chosen(&entry),
                    None => break,
                }
            } else {
                self.on_chosen_data(slot);
            }
        }
        if self.commit < commit {
            self.request_fetch(from);
        }
        Ok(())
    }

    /// Asks `from` for chosen values after our chosen prefix, unless a fetch is in flight.
    pub(super) fn request_fetch(&mut self, from: NodeId) {
        if self.outstanding_fetch() || from == self.config.id {
            return;
        }
        self.fetch.outstanding = Some((from, self.clock));
        let slot = self.commit + 1;
        self.send(from, MessageBody::Fetch { from: slot });
    }

    /// Whether a fetch is in flight (a candidate learns compacted slots before phase 1 goes on).
    pub(super) fn outstanding_fetch(&self) -> bool {
        self.fetch.outstanding.is_some()
    }

    /// Whether the fetch in flight went to `from`.
    pub(super) fn fetch_answered_by(&self, from: NodeId) -> bool {
        self.fetch.outstanding.is_some_and(|(to, _)| to == from)
    }

    /// The fetch in flight was answered.
    pub(super) fn fetch_done(&mut self) {
        self.fetch.outstanding = None;
    }

    /// Abandons a fetch that went unanswered for an election timeout.
    pub(super) fn tick_fetch(&mut self) {
        if let Some((_, at)) = self.fetch.outstanding {
            if self.clock >= at + u64::from(self.config.election_tick) {
                self.fetch.outstanding = None;
            }
        }
    }

    /// Answers a learner with chosen values (or the snapshot, when they are compacted).
    pub(super) fn handle_fetch(
        &mut self,
        from: NodeId,
        from_slot: u64,
    ) -> Result<(), StorageError> {
        if from_slot <= self.log.snapshot_index() {
            return self.send_snapshot(from);
        }
        let entries = if from_slot <= self.commit {
            self.log
                .range(from_slot, self.commit, self.config.max_msg_bytes)?
                .0
        } else {
            Vec::new()
        };
        let commit = self.commit;
        self.send(from, MessageBody::Chosen { entries, commit });
        Ok(())
    }

    /// Chosen values arrived.
    pub(super) fn handle_chosen(
        &mut self,
        from: NodeId,
        entries: Vec<Entry>,
        commit: u64,
    ) -> Result<(), StorageError> {
        if self.fetch_answered_by(from) {
            self.fetch_done();
        }
        self.fetch.known_commit = self.fetch.known_commit.max(commit);
        for entry in entries {
            if entry.index <= self.commit {
                continue;
            }
            if entry.index != self.commit + 1 || entry.index > commit {
                break; // not contiguous with our prefix, or not claimed chosen: ignore the rest
            }
            // Keep what we hold if it is the same value (an acceptance under a higher ballot of
            // the chosen value); otherwise store the chosen value with its own ballot.
            if self.log.get(entry.index)?.map(|e| e.payload) != Some(entry.payload.clone()) {
                self.log.put(entry.clone());
            }
            self.on_chosen(&entry);
        }
        self.after_catch_up(from);
        Ok(())
    }

    /// After learning chosen values from `from`: fetch more if behind, and a candidate whose
    /// prepare started below what it just learnt prepares again past it.
    pub(super) fn after_catch_up(&mut self, from: NodeId) {
        if self.commit < self.fetch.known_commit {
            self.request_fetch(from);
        }
        if self.role == Role::Candidate && self.commit >= self.phase1.from {
            self.restart_phase1();
        }
    }
}
