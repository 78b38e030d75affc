//! The in-memory view of one group's durable-or-submitted state: the latest snapshot's metadata,
//! the live entries (each with the log record that holds it) and the hard state.
//!
//! The same operations serve [`RaftStore::submit`](super::RaftStore::submit) and replay at open,
//! so what is read back after a restart follows the rules that built it.
//!
//! Invariants: `entries[i].index == first + i`; `first - 1 <= snapshot.index <= last_index()`
//! unless the log was reset by an installed snapshot (then `first == snapshot.index + 1`); the
//! term of `first - 1` is `prev_term`.

use std::collections::VecDeque;

use consensus_core::{ConfState, Entry, HardState, SnapshotMeta, StorageError};

/// One live entry and the index of the log record it was written in.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) entry: Entry,
    pub(crate) wal_index: u64,
}

/// What a new log starts from, also the checkpoint recorded at each compaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Base {
    /// Latest snapshot's metadata.
    pub(crate) snapshot: SnapshotMeta,
    /// Index of the first entry kept (one past the compaction point).
    pub(crate) first: u64,
    /// Term of the entry at `first - 1`.
    pub(crate) prev_term: u64,
    /// Hard state as of the checkpoint.
    pub(crate) hard_state: HardState,
}

impl Base {
    pub(crate) fn bootstrap(conf_state: ConfState) -> Self {
        Base {
            snapshot: SnapshotMeta {
                index: 0,
                term: 0,
                conf_state,
            },
            first: 1,
            prev_term: 0,
            hard_state: HardState::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LogView {
    pub(crate) snapshot: SnapshotMeta,
    pub(crate) first: u64,
    pub(crate) prev_term: u64,
    pub(crate) entries: VecDeque<Stored>,
    pub(crate) hard_state: HardState,
}

impl LogView {
    pub(crate) fn from_base(base: Base) -> Self {
        LogView {
            snapshot: base.snapshot,
            first: base.first,
            prev_term: base.prev_term,
            entries: VecDeque::new(),
            hard_state: base.hard_state,
        }
    }

    pub(crate) fn base(&self) -> Base {
        Base {
            snapshot: self.snapshot.clone(),
            first: self.first,
            prev_term: self.prev_term,
            hard_state: self.hard_state,
        }
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    pub(crate) fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index.checked_add(1) == Some(self.first) {
            return Ok(self.prev_term);
        }
        if index < self.first {
            return Err(StorageError::Compacted(index));
        }
        match self.entries.get((index - self.first) as usize) {
            Some(stored) => Ok(stored.entry.term),
            None => Err(StorageError::Unavailable(index)),
        }
    }

    pub(crate) fn get(&self, index: u64) -> Option<&Stored> {
        index
            .checked_sub(self.first)
            .and_then(|offset| self.entries.get(offset as usize))
    }

    /// Checks that `entries` may be appended (replacing the suffix from their first index) without
    /// changing anything. `strict` also refuses to overwrite entries covered by the snapshot.
    pub(crate) fn check_append(&self, entries: &[Entry], strict: bool) -> Result<(), StorageError> {
        let Some(head) = entries.first() else {
            return Ok(());
        };
        let floor = if strict {
            self.first.max(self.snapshot.index + 1)
        } else {
            self.first
        };
        if head.index < floor {
            return Err(StorageError::Compacted(head.index));
        }
        if head.index > self.last_index() + 1 {
            return Err(StorageError::Inconsistent(format!(
                "append at {} leaves a gap after last index {}",
                head.index,
                self.last_index()
            )));
        }
        for (offset, entry) in entries.iter().enumerate() {
            if entry.index != head.index + offset as u64 {
                return Err(StorageError::Inconsistent(format!(
                    "entries are not contiguous: index {} follows {}",
                    entry.index,
                    head.index + offset as u64 - 1
                )));
            }
        }
        Ok(())
    }

    /// Replaces the suffix from `entries[0].index` by `entries`; the caller checked it.
    pub(crate) fn append(&mut self, entries: impl IntoIterator<Item = Stored>) {
        let mut entries = entries.into_iter().peekable();
        let Some(head) = entries.peek() else {
            return;
        };
        let keep = (head.entry.index - self.first) as usize;
        debug_assert!(keep <= self.entries.len(), "checked by check_append");
        self.entries.truncate(keep);
        self.entries.extend(entries);
    }

    /// A snapshot from the leader (as `MemStorage` installs it): entries after it survive only if
    /// the log holds the snapshot's last entry with the same term.
    pub(crate) fn install(&mut self, meta: &SnapshotMeta) {
        let index = meta.index;
        let keep = index <= self.last_index() && self.term(index).ok() == Some(meta.term);
        if keep {
            let drop = (index + 1).saturating_sub(self.first) as usize;
            self.entries.drain(..drop.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.first = index + 1;
        self.prev_term = meta.term;
        self.snapshot = meta.clone();
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
    }

    /// A local snapshot at `index` (stored): record it and drop entries below
    /// `index + 1 - trailing`, never above what the log holds.
    pub(crate) fn compact(
        &mut self,
        index: u64,
        conf_state: ConfState,
        trailing: u64,
    ) -> Result<SnapshotMeta, StorageError> {
        if index > self.last_index() {
            return Err(StorageError::Unavailable(index));
        }
        let term = self.term(index)?;
        let new_first = (index + 1).saturating_sub(trailing).max(self.first);
        let prev_term = self.term(new_first - 1)?;
        self.entries.drain(..(new_first - self.first) as usize);
        self.first = new_first;
        self.prev_term = prev_term;
        self.snapshot = SnapshotMeta {
            index,
            term,
            conf_state,
        };
        Ok(self.snapshot.clone())
    }
}
