//! Durable state as the protocol reads it, and an in-memory implementation.
//!
//! The protocol only *reads* storage through [`Storage`]. Writing is the driver's job: it writes what a
//! [`Persist`] says, then confirms with the token. [`MemStorage`] does both halves in memory for tests,
//! the examples and the simulator (which keeps a copy of it to model a crash that loses unsynced state).

use bytes::Bytes;

use crate::error::StorageError;
use crate::protocol::Persist;
use crate::types::{ConfState, Entry, HardState, Snapshot, SnapshotMeta};

/// Read access to a node's durable state.
///
/// Invariants an implementation keeps: entries are contiguous from `first_index()` to `last_index()`;
/// `first_index() <= snapshot_meta().index + 1` — equal when compaction drops everything the snapshot
/// covers, lower when an implementation keeps trailing entries for slow followers (the engine then
/// treats `first_index() - 1` as where the log starts); `term(first_index() - 1)` and
/// `term(snapshot_meta().index)` are known.
pub trait Storage {
    /// The durable term, vote and commit.
    fn hard_state(&self) -> HardState;
    /// Metadata of the latest snapshot (index 0, term 0 and the bootstrap configuration if none).
    fn snapshot_meta(&self) -> SnapshotMeta;
    /// The latest snapshot, to send to a follower that needs compacted entries.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
    /// Index of the first stored entry (at most `snapshot_meta().index + 1`).
    fn first_index(&self) -> u64;
    /// Index of the last stored entry (the snapshot index if there are none).
    fn last_index(&self) -> u64;
    /// Term of the entry at `index`, for `index` in `snapshot index ..= last_index()`.
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// Appends the entries `lo..hi` to `out`, stopping early once `max_bytes` of payload is reached
    /// (at least one entry is always returned when `lo < hi`).
    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError>;
}

/// Storage held entirely in memory.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// `entries[i].index == snapshot.meta.index + 1 + i`.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// Fresh storage for a new group whose initial members are `conf_state` (the bootstrap
    /// configuration is recorded as an empty snapshot at index 0).
    pub fn new_with_conf(conf_state: ConfState) -> Self {
        MemStorage {
            hard_state: HardState::default(),
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 0,
                    term: 0,
                    conf_state,
                },
                data: Bytes::new(),
            },
            entries: Vec::new(),
        }
    }

    /// Writes what `persist` asks, in the order the contract gives: snapshot, entries (replacing any
    /// stored suffix from the first new index), hard state.
    pub fn write(&mut self, persist: &Persist) -> Result<(), StorageError> {
        if let Some(snapshot) = &persist.snapshot {
            self.install_snapshot(snapshot.clone());
        }
        if let Some(first) = persist.entries.first() {
            self.append(&persist.entries, first.index)?;
        }
        if let Some(hard_state) = persist.hard_state {
            self.hard_state = hard_state;
        }
        Ok(())
    }

    /// Installs `snapshot` as [`MemStorage::write`] does for a `Persist` carrying one: stored
    /// entries after it are kept only if they agree with it. Does nothing if the stored snapshot is
    /// already as new.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        if snapshot.meta.index > self.snapshot.meta.index {
            self.install_snapshot(snapshot);
        }
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        // Keep entries after the snapshot only if they agree with it (log matching).
        let keep = self.term(index).ok() == Some(snapshot.meta.term) && index <= self.last_index();
        if keep {
            let drop = (index - self.snapshot.meta.index) as usize;
            self.entries.drain(..drop.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.snapshot = snapshot;
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
    }

    fn append(&mut self, entries: &[Entry], first: u64) -> Result<(), StorageError> {
        let offset = self.snapshot.meta.index + 1;
        if first < offset {
            // A snapshot written since (a compaction) already covers the head of this write.
            let covered = (offset - first) as usize;
            if covered >= entries.len() {
                return Ok(());
            }
            return self.append(&entries[covered..], offset);
        }
        if first > self.last_index() + 1 {
            return Err(StorageError::Inconsistent(format!(
                "append at {first} leaves a gap after last index {}",
                self.last_index()
            )));
        }
        self.entries.truncate((first - offset) as usize);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Discards entries through `index` after recording a snapshot of the state machine at `index`
    /// with membership `conf_state`. `index` must be stored and should be applied.
    pub fn compact(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Bytes,
    ) -> Result<(), StorageError> {
        if index <= self.snapshot.meta.index {
            return Ok(());
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable(index));
        }
        let term = self.term(index)?;
        let drop = (index - self.snapshot.meta.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(())
    }

    /// All stored entries (for tests and invariant checks).
    pub fn stored_entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl Storage for MemStorage {
    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot.meta.clone()
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }

    fn first_index(&self) -> u64 {
        self.snapshot.meta.index + 1
    }

    fn last_index(&self) -> u64 {
        self.snapshot.meta.index + self.entries.len() as u64
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let snap = self.snapshot.meta.index;
        if index == snap {
            return Ok(self.snapshot.meta.term);
        }
        if index < snap {
            return Err(StorageError::Compacted(index));
        }
        match self.entries.get((index - snap - 1) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(StorageError::Unavailable(index)),
        }
    }

    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        let snap = self.snapshot.meta.index;
        if lo <= snap {
            return Err(StorageError::Compacted(lo));
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable(hi - 1));
        }
        let mut bytes = 0u64;
        for (taken, entry) in self.entries[(lo - snap - 1) as usize..(hi - snap - 1) as usize]
            .iter()
            .enumerate()
        {
            bytes += entry.payload_size();
            if bytes > max_bytes && taken > 0 {
                break;
            }
            out.push(entry.clone());
        }
        Ok(())
    }
}
