//! The Raft log: durable entries read through [`Storage`], plus an in-memory tail of entries (and
//! possibly a snapshot) not yet confirmed durable.
//!
//! Invariants: `unstable.offset == last durable-or-snapshot index + 1` as far as this node knows;
//! `committed <= last_index()`; `applied <= committed`; committed entries are never truncated.

use crate::error::{Error, StorageError};
use crate::storage::Storage;
use crate::types::{Entry, Snapshot};

/// Entries (and a snapshot) not yet confirmed durable.
#[derive(Debug, Default)]
struct Unstable {
    /// A snapshot received from the leader and not yet durable.
    snapshot: Option<Snapshot>,
    /// Whether `snapshot` was already handed out in a `Persist`.
    snapshot_in_progress: bool,
    /// `entries[i].index == offset + i`.
    entries: Vec<Entry>,
    offset: u64,
    /// Entries with index below this were already handed out in a `Persist`.
    in_progress: u64,
}

/// The log as one node sees it.
pub(crate) struct RaftLog<S: Storage> {
    pub(crate) storage: S,
    unstable: Unstable,
    /// Highest index known committed.
    pub(crate) committed: u64,
    /// Highest index handed to the driver for application.
    pub(crate) applied: u64,
    /// Highest index whose entry is durable *and* agrees with the current log.
    pub(crate) persisted: u64,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(storage: S) -> Self {
        let last = storage.last_index();
        let snap_index = storage.first_index() - 1;
        RaftLog {
            storage,
            unstable: Unstable {
                offset: last + 1,
                in_progress: last + 1,
                ..Unstable::default()
            },
            committed: snap_index,
            applied: snap_index,
            persisted: last,
        }
    }

    /// Index of the snapshot the log starts after.
    pub(crate) fn snapshot_index(&self) -> u64 {
        match &self.unstable.snapshot {
            Some(snapshot) => snapshot.meta.index,
            None => self.storage.first_index() - 1,
        }
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.snapshot_index() + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        match self.unstable.entries.last() {
            Some(entry) => entry.index,
            None => match &self.unstable.snapshot {
                Some(snapshot) => snapshot.meta.index,
                None => self.storage.last_index().min(self.unstable.offset - 1),
            },
        }
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.term(self.last_index()).unwrap_or(0)
    }

    /// Term of the entry at `index` (0 for index 0).
    pub(crate) fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index == 0 {
            return Ok(0);
        }
        if index >= self.unstable.offset {
            return match self
                .unstable
                .entries
                .get((index - self.unstable.offset) as usize)
            {
                Some(entry) => Ok(entry.term),
                None => Err(StorageError::Unavailable(index)),
            };
        }
        if let Some(snapshot) = &self.unstable.snapshot {
            return if index == snapshot.meta.index {
                Ok(snapshot.meta.term)
            } else {
                Err(StorageError::Compacted(index))
            };
        }
        self.storage.term(index)
    }

    pub(crate) fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).map(|t| t == term).unwrap_or(false)
    }

    /// Raft §5.4.1: a log is at least as up to date if its last term is higher, or equal with an
    /// index at least as high.
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// Entries `lo..hi`, at most `max_bytes` of payload (at least one entry).
    pub(crate) fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        if lo < self.first_index() {
            return Err(StorageError::Compacted(lo));
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable(hi - 1));
        }
        let offset = self.unstable.offset;
        if lo < offset {
            self.storage
                .entries(lo, hi.min(offset), max_bytes, &mut out)?;
            let got = out.len() as u64;
            if got < hi.min(offset) - lo {
                return Ok(out); // size limit reached inside storage
            }
        }
        if hi > offset {
            let mut bytes: u64 = out.iter().map(Entry::payload_size).sum();
            let from = (lo.max(offset) - offset) as usize;
            let to = (hi - offset) as usize;
            for entry in &self.unstable.entries[from..to] {
                bytes += entry.payload_size();
                if bytes > max_bytes && !out.is_empty() {
                    break;
                }
                out.push(entry.clone());
            }
        }
        Ok(out)
    }

    /// Leader append of new entries at the end.
    pub(crate) fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for entry in entries {
            debug_assert_eq!(
                entry.index,
                self.last_index() + 1,
                "leader appends contiguously"
            );
            if self.unstable.entries.is_empty() {
                self.unstable.offset = entry.index;
                self.unstable.in_progress = entry.index;
            }
            self.unstable.entries.push(entry);
        }
    }

    /// Follower append (Raft §5.3 receiver rules 2–4). Returns the index of the last entry now
    /// known to match the leader, or `None` if `prev` does not match.
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
    ) -> Result<Option<u64>, Error> {
        if !self.match_term(prev_index, prev_term) {
            return Ok(None);
        }
        let last_new = prev_index + entries.len() as u64;
        // Skip entries we already have; truncate at the first conflict.
        let mut skip = entries.len();
        for (i, entry) in entries.iter().enumerate() {
            if !self.match_term(entry.index, entry.term) {
                skip = i;
                break;
            }
        }
        if skip < entries.len() {
            let first_new = entries[skip].index;
            if first_new <= self.committed {
                return Err(Error::Storage(StorageError::Inconsistent(format!(
                    "leader's entry {first_new} conflicts with a committed entry (commit {})",
                    self.committed
                ))));
            }
            self.truncate_and_append(entries.into_iter().skip(skip));
        }
        Ok(Some(last_new))
    }

    fn truncate_and_append(&mut self, entries: impl Iterator<Item = Entry>) {
        let mut entries = entries.peekable();
        let Some(first) = entries.peek().map(|e| e.index) else {
            return;
        };
        debug_assert!(first > self.committed, "never truncate committed entries");
        let unstable = &mut self.unstable;
        if first == unstable.offset + unstable.entries.len() as u64 {
            // Plain append.
        } else if first <= unstable.offset {
            // Replaces part of the durable log: the whole tail restarts at `first`.
            unstable.offset = first;
            unstable.entries.clear();
            unstable.in_progress = first;
        } else {
            unstable
                .entries
                .truncate((first - unstable.offset) as usize);
            unstable.in_progress = unstable.in_progress.min(first);
        }
        self.persisted = self.persisted.min(first - 1);
        self.unstable.entries.extend(entries);
    }

    pub(crate) fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            debug_assert!(
                index <= self.last_index(),
                "commit {index} beyond last index"
            );
            self.committed = index.min(self.last_index());
        }
    }

    /// Replaces the log by a snapshot received from the leader.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.persisted = self.persisted.min(self.committed);
        self.committed = index;
        self.applied = index;
        self.unstable = Unstable {
            snapshot: Some(snapshot),
            snapshot_in_progress: false,
            entries: Vec::new(),
            offset: index + 1,
            in_progress: index + 1,
        };
    }

    /// Whether there is anything not yet handed out for persisting.
    pub(crate) fn has_unissued(&self) -> bool {
        (self.unstable.snapshot.is_some() && !self.unstable.snapshot_in_progress)
            || self.unstable.in_progress < self.unstable.offset + self.unstable.entries.len() as u64
    }

    /// Hands out what is not yet being persisted and marks it in progress.
    pub(crate) fn take_unissued(&mut self) -> (Option<Snapshot>, Vec<Entry>) {
        let unstable = &mut self.unstable;
        let snapshot = if unstable.snapshot_in_progress {
            None
        } else {
            unstable.snapshot_in_progress = unstable.snapshot.is_some();
            unstable.snapshot.clone()
        };
        let from = (unstable.in_progress.max(unstable.offset) - unstable.offset) as usize;
        let entries = unstable.entries[from..].to_vec();
        unstable.in_progress = unstable.offset + unstable.entries.len() as u64;
        (snapshot, entries)
    }

    /// The driver confirmed entries through `(index, term)` durable.
    pub(crate) fn stable_to(&mut self, index: u64, term: u64) {
        if !self.match_term(index, term) {
            return; // overwritten since; a later write will cover it
        }
        if index >= self.unstable.offset {
            let drop = (index + 1 - self.unstable.offset) as usize;
            self.unstable.entries.drain(..drop);
            self.unstable.offset = index + 1;
        }
        if index > self.persisted {
            self.persisted = index;
        }
    }

    /// The driver confirmed the snapshot at `index` installed.
    pub(crate) fn stable_snapshot_to(&mut self, index: u64) {
        if self.unstable.snapshot.as_ref().map(|s| s.meta.index) == Some(index) {
            self.unstable.snapshot = None;
            self.unstable.snapshot_in_progress = false;
            if index > self.persisted {
                self.persisted = index;
            }
        }
    }

    /// Committed entries not yet handed out, up to `max_bytes` (at least one).
    pub(crate) fn next_committed(&self, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let lo = self.applied.max(self.snapshot_index()) + 1;
        self.entries(lo, self.committed + 1, max_bytes)
    }

    pub(crate) fn has_next_committed(&self) -> bool {
        self.committed > self.applied.max(self.snapshot_index())
    }

    /// Fast log backtracking: the largest index `<= index` whose term is `<= term`.
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Ok(t) if t > term && index > 0 => index -= 1,
                Ok(t) => return (index, t),
                Err(_) => return (index, 0),
            }
        }
    }
}
