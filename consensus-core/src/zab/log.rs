//! The history as the engine sees it: durable storage overlaid with the writes not yet handed to
//! the driver (a snapshot, a truncation, new proposals). Once `ready()` hands a write out, the
//! replica loop applies it to storage before the engine is called again, so the overlay only ever
//! holds what the next `ready()` will write.

use super::zxid::Zxid;
use crate::error::StorageError;
use crate::storage::Storage;
use crate::types::{Entry, Snapshot};

/// Storage plus the not-yet-issued part of the next write.
#[derive(Debug)]
pub(crate) struct History<S> {
    pub(crate) storage: S,
    /// A received snapshot to store.
    snapshot: Option<Snapshot>,
    /// Stored entries at or above this position are gone.
    truncate_from: Option<u64>,
    /// New entries, contiguous, after what storage (minus the truncation) holds.
    unstable: Vec<Entry>,
}

impl<S: Storage> History<S> {
    pub(crate) fn new(storage: S) -> Self {
        History {
            storage,
            snapshot: None,
            truncate_from: None,
            unstable: Vec::new(),
        }
    }

    /// Position and epoch of the latest snapshot (pending or stored).
    pub(crate) fn snapshot_point(&self) -> (u64, u64) {
        match &self.snapshot {
            Some(s) => (s.meta.index, s.meta.term),
            None => {
                let meta = self.storage.snapshot_meta();
                (meta.index, meta.term)
            }
        }
    }

    fn stored_last(&self) -> u64 {
        let mut last = self.storage.last_index();
        if let Some(from) = self.truncate_from {
            last = last.min(from.saturating_sub(1));
        }
        last.max(self.snapshot_point().0)
    }

    /// Last position held (durable or not).
    pub(crate) fn last_index(&self) -> u64 {
        match self.unstable.last() {
            Some(e) => e.index,
            None => self.stored_last(),
        }
    }

    /// Epoch of the entry at `index`, if held (or it is the snapshot's point).
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        if let Some(first) = self.unstable.first() {
            if index >= first.index {
                return self
                    .unstable
                    .get((index - first.index) as usize)
                    .map(|e| e.term);
            }
        }
        let (snap, snap_term) = self.snapshot_point();
        if index == snap {
            return Some(snap_term);
        }
        if index < snap || index > self.stored_last() {
            return None;
        }
        self.storage.term(index).ok()
    }

    /// The last zxid.
    pub(crate) fn last_zxid(&self) -> Zxid {
        let last = self.last_index();
        Zxid::new(self.term(last).unwrap_or(0), last)
    }

    /// Entries `lo..hi`, at most `max_bytes` of payload (at least one).
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
        if lo <= self.snapshot_point().0 {
            return Err(StorageError::Compacted(lo));
        }
        let unstable_first = self.unstable.first().map_or(u64::MAX, |e| e.index);
        let stored_hi = hi.min(unstable_first).min(self.stored_last() + 1);
        if lo < stored_hi {
            self.storage.entries(lo, stored_hi, max_bytes, &mut out)?;
        }
        let mut bytes: u64 = out.iter().map(Entry::payload_size).sum();
        let complete = out
            .last()
            .map_or(lo >= stored_hi, |e| e.index + 1 == stored_hi);
        if complete {
            for entry in &self.unstable {
                if entry.index < lo.max(stored_hi) || entry.index >= hi {
                    continue;
                }
                bytes += entry.payload_size();
                if bytes > max_bytes && !out.is_empty() {
                    break;
                }
                out.push(entry.clone());
            }
        }
        Ok(out)
    }

    /// Appends `entry` right after the last position.
    pub(crate) fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1, "a history has no gaps");
        self.unstable.push(entry);
    }

    /// Drops every entry at or above `from` (never below the snapshot).
    pub(crate) fn truncate(&mut self, from: u64) {
        if from > self.last_index() {
            return;
        }
        self.unstable.retain(|e| e.index < from);
        if self.unstable.is_empty() && from <= self.stored_last() {
            self.truncate_from = Some(self.truncate_from.map_or(from, |t| t.min(from)));
        }
    }

    /// Installs a leader's snapshot: entries at or below it are dropped, those above are kept.
    pub(crate) fn install_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.unstable.retain(|e| e.index > index);
        if self.unstable.first().is_some_and(|e| e.index != index + 1) {
            self.unstable.clear();
        }
        if self.unstable.is_empty() && self.stored_last() < index {
            // Nothing stored above the snapshot survives it.
            self.truncate_from = Some(index + 1);
        }
        self.snapshot = Some(snapshot);
    }

    /// Whether a write is waiting to be issued.
    pub(crate) fn has_unissued(&self) -> bool {
        self.snapshot.is_some() || self.truncate_from.is_some() || !self.unstable.is_empty()
    }

    /// Takes the pending write: (snapshot, truncate_from, entries).
    pub(crate) fn take_unissued(&mut self) -> (Option<Snapshot>, Option<u64>, Vec<Entry>) {
        let snapshot = self.snapshot.take();
        let mut truncate_from = self.truncate_from.take();
        let entries = std::mem::take(&mut self.unstable);
        // Entries replace what storage holds at their positions and above.
        if let Some(first) = entries.first() {
            if first.index <= self.storage.last_index() {
                truncate_from = Some(truncate_from.map_or(first.index, |t| t.min(first.index)));
            }
        }
        (snapshot, truncate_from, entries)
    }
}
