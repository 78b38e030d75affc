//! SNAP after compaction. The embedder compacts with `storage_mut().compact(index, conf, data)`
//! once its state machine applied `index`; when a follower needs a position at or below the
//! leader's snapshot, the leader sends the snapshot (a bulk message) followed by its history, and
//! the follower writes it with `Write::snapshot` (the replica loop restores its state machine).

use super::{Zab, ZabStorage};
use crate::error::StorageError;
use crate::types::Snapshot;

impl<S: ZabStorage> Zab<S> {
    /// The leader's latest snapshot, if storage can give it now.
    pub(crate) fn snapshot_for_sync(&self) -> Option<Snapshot> {
        match self.log.storage.snapshot() {
            Ok(snapshot) => Some(snapshot),
            Err(StorageError::SnapshotTemporarilyUnavailable) => None,
            Err(error) => {
                tracing::warn!(%error, "zab: snapshot unreadable; SNAP postponed");
                None
            }
        }
    }
}
