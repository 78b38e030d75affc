//! The in-memory view of one group's durable-or-submitted state: the latest snapshot's metadata,
//! the live entries (each with the log record that holds it) and the protocol's hard state.
//!
//! The same operations serve [`LogStore::submit`](super::LogStore::submit) and replay at open,
//! so what is read back after a restart follows the rules that built it. They are
//! `consensus_core::MemStorage`'s rules: a truncation cuts from an index on (never at or below the
//! snapshot), an entry replaces whatever its slot held, a snapshot drops the entries at or below
//! its index and keeps those above. Slots may be empty (a Paxos acceptor stores single slots).
//!
//! Invariants: `slots[i]` holds the entry at index `first + i` or nothing, and the last slot holds
//! an entry; `first - 1 <= snapshot.index`; the term of `first - 1` is `prev_term`.

use std::collections::VecDeque;

use consensus_core::{ConfState, DurableState, Entry, SnapshotMeta, StorageError, Write};

/// One live entry and the index of the log record it was written in.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) entry: Entry,
    pub(crate) wal_index: u64,
}

/// What a new log starts from, also the checkpoint recorded at each compaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(bound = "H: DurableState")]
pub(crate) struct Base<H> {
    /// Latest snapshot's metadata.
    pub(crate) snapshot: SnapshotMeta,
    /// Index of the first entry kept (one past the compaction point).
    pub(crate) first: u64,
    /// Term of the entry at `first - 1`.
    pub(crate) prev_term: u64,
    /// Hard state as of the checkpoint.
    pub(crate) hard_state: H,
}

impl<H: DurableState> Base<H> {
    pub(crate) fn bootstrap(conf_state: ConfState) -> Self {
        Base {
            snapshot: SnapshotMeta {
                index: 0,
                term: 0,
                conf_state,
            },
            first: 1,
            prev_term: 0,
            hard_state: H::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LogView<H> {
    pub(crate) snapshot: SnapshotMeta,
    pub(crate) first: u64,
    pub(crate) prev_term: u64,
    pub(crate) slots: VecDeque<Option<Stored>>,
    pub(crate) hard_state: H,
}

impl<H: DurableState> LogView<H> {
    pub(crate) fn from_base(base: Base<H>) -> Self {
        LogView {
            snapshot: base.snapshot,
            first: base.first,
            prev_term: base.prev_term,
            slots: VecDeque::new(),
            hard_state: base.hard_state,
        }
    }

    pub(crate) fn base(&self) -> Base<H> {
        Base {
            snapshot: self.snapshot.clone(),
            first: self.first,
            prev_term: self.prev_term,
            hard_state: self.hard_state.clone(),
        }
    }

    pub(crate) fn last_index(&self) -> u64 {
        (self.first + self.slots.len() as u64 - 1).max(self.snapshot.index)
    }

    pub(crate) fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index.checked_add(1) == Some(self.first) {
            return Ok(self.prev_term);
        }
        if index < self.first {
            return Err(StorageError::Compacted(index));
        }
        match self.get(index) {
            Some(stored) => Ok(stored.entry.term),
            None => Err(StorageError::Unavailable(index)),
        }
    }

    pub(crate) fn get(&self, index: u64) -> Option<&Stored> {
        index
            .checked_sub(self.first)
            .and_then(|offset| self.slots.get(offset as usize))
            .and_then(Option::as_ref)
    }

    /// The stored entries with index in `lo..hi`, in index order (empty slots skipped).
    pub(crate) fn range(&self, lo: u64, hi: u64) -> impl Iterator<Item = &Stored> + '_ {
        let len = self.slots.len() as u64;
        let start = lo.saturating_sub(self.first).min(len) as usize;
        let end = hi.saturating_sub(self.first).min(len) as usize;
        self.slots.range(start..end.max(start)).flatten()
    }

    /// The lowest log record holding a live entry (replay must start there or earlier).
    pub(crate) fn oldest_record(&self) -> Option<u64> {
        self.slots.iter().flatten().map(|s| s.wal_index).min()
    }

    /// Checks that `write` may be applied without changing anything: entries in ascending index
    /// order and none at or below the snapshot (after the write's own snapshot, if any).
    pub(crate) fn check_write(&self, write: &Write<H>) -> Result<(), StorageError> {
        let snapshot_index = match &write.snapshot {
            Some(snapshot) if snapshot.meta.index == u64::MAX => {
                return Err(StorageError::Inconsistent(
                    "snapshot index u64::MAX leaves no room for a log".into(),
                ));
            }
            Some(snapshot) => snapshot.meta.index.max(self.snapshot.index),
            None => self.snapshot.index,
        };
        let floor = self.first.max(snapshot_index + 1);
        let mut previous = None;
        for entry in &write.entries {
            if entry.index < floor {
                return Err(StorageError::Compacted(entry.index));
            }
            if previous.is_some_and(|p| entry.index <= p) {
                return Err(StorageError::Inconsistent(format!(
                    "entries are not in ascending order: index {} follows {}",
                    entry.index,
                    previous.unwrap_or_default()
                )));
            }
            previous = Some(entry.index);
        }
        Ok(())
    }

    /// Whether a truncation from `from` would cut any stored entry.
    pub(crate) fn truncation_cuts(&self, from: u64) -> bool {
        let from = from.max(self.snapshot.index + 1).max(self.first);
        from < self.first + self.slots.len() as u64
    }

    /// Discards every entry at an index `>= from`, never at or below the snapshot.
    pub(crate) fn truncate_from(&mut self, from: u64) {
        let from = from.max(self.snapshot.index + 1).max(self.first);
        self.slots.truncate((from - self.first) as usize);
        self.trim();
    }

    /// Stores `stored` at its index, replacing what the slot held. `Err` for an index below the
    /// first kept one (the caller checked writes; replay reports it as inconsistent).
    pub(crate) fn put(&mut self, stored: Stored) -> Result<(), StorageError> {
        let index = stored.entry.index;
        if index < self.first {
            return Err(StorageError::Compacted(index));
        }
        let at = (index - self.first) as usize;
        if at >= self.slots.len() {
            self.slots.resize(at + 1, None);
        }
        self.slots[at] = Some(stored);
        Ok(())
    }

    /// A snapshot from the leader (as `MemStorage` installs it): entries at or below its index are
    /// dropped, those above are kept (a write that should cut them says so with `truncate_from`).
    /// An older snapshot than the current one changes nothing.
    pub(crate) fn install(&mut self, meta: &SnapshotMeta) {
        let index = meta.index;
        if index < self.snapshot.index {
            return;
        }
        let drop = (index + 1).saturating_sub(self.first) as usize;
        self.slots.drain(..drop.min(self.slots.len()));
        self.first = index + 1;
        self.prev_term = meta.term;
        self.snapshot = meta.clone();
        self.trim();
    }

    /// A local snapshot at `index` (stored): record it and drop entries below
    /// `index + 1 - trailing`, never above what the log holds.
    pub(crate) fn compact(
        &mut self,
        index: u64,
        conf_state: ConfState,
        trailing: u64,
    ) -> Result<SnapshotMeta, StorageError> {
        let term = match self.get(index) {
            Some(stored) => stored.entry.term,
            None if index > self.last_index() => return Err(StorageError::Unavailable(index)),
            None => self.term(index)?,
        };
        let mut new_first = (index + 1).saturating_sub(trailing).max(self.first);
        // The entry before the first kept one must have a known term: skip empty slots.
        let prev_term = loop {
            match self.term(new_first - 1) {
                Ok(term) => break term,
                Err(_) if new_first <= index => new_first += 1,
                Err(error) => return Err(error),
            }
        };
        let drop = ((new_first - self.first) as usize).min(self.slots.len());
        self.slots.drain(..drop);
        self.first = new_first;
        self.prev_term = prev_term;
        self.snapshot = SnapshotMeta {
            index,
            term,
            conf_state,
        };
        self.trim();
        Ok(self.snapshot.clone())
    }

    /// Keeps the invariant that the last slot holds an entry.
    fn trim(&mut self) {
        while matches!(self.slots.back(), Some(None)) {
            self.slots.pop_back();
        }
    }
}
