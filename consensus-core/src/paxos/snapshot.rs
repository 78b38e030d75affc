//! Snapshots: a learner whose missing slots were compacted gets the snapshot instead
//! (`Envelope::is_bulk`, so it travels apart from small messages), and installs it with
//! `Write::snapshot`. Slots a snapshot covers are chosen.

use super::message::MessageBody;
use super::{MultiPaxos, PaxosStorage};
use crate::error::StorageError;
use crate::types::{NodeId, Role, Snapshot};

impl<S: PaxosStorage> MultiPaxos<S> {
    /// Sends the latest snapshot to `to` (nothing if storage is still preparing one).
    pub(super) fn send_snapshot(&mut self, to: NodeId) -> Result<(), StorageError> {
        match self.log.storage.snapshot() {
            Ok(snapshot) => {
                self.send(to, MessageBody::Snapshot { snapshot });
                Ok(())
            }
            Err(StorageError::SnapshotTemporarilyUnavailable) => {
                tracing::debug!(to, "snapshot not available yet");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Installs a snapshot from `from` if it moves the chosen prefix forward.
    pub(super) fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        if self.fetch_answered_by(from) {
            self.fetch_done();
        }
        let index = snapshot.meta.index;
        if index <= self.commit || self.role == Role::Leader {
            return;
        }
        tracing::debug!(id = self.config.id, index, from, "installing snapshot");
        self.commit = index;
        self.applied = index;
        self.conf = snapshot.meta.conf_state.clone();
        self.applied_conf = snapshot.meta.conf_state.clone();
        self.log.put_snapshot(snapshot);
        self.after_catch_up(from);
    }
}
