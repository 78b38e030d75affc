//! The acceptor's slot log: durable slots read through [`Storage`], with the accepted (or
//! learnt) slots not yet confirmed durable laid over them.
//!
//! Unlike Raft's log this one has holes: a slot is written on its own when accepted, and higher
//! slots are never cut. Invariant kept by the engine: every slot at or below the commit index
//! holds its chosen value (or is compacted into the snapshot).

use std::collections::BTreeMap;

use crate::error::StorageError;
use crate::storage::Storage;
use crate::types::{Entry, Snapshot};

/// Durable slots plus the in-memory overlay of writes not yet confirmed.
pub(crate) struct SlotLog<S: Storage> {
    pub(crate) storage: S,
    /// Slots to write at the next `ready()`.
    unissued: BTreeMap<u64, Entry>,
    /// Slots handed out in a write and not yet confirmed durable.
    unstable: BTreeMap<u64, Entry>,
    /// A snapshot to write at the next `ready()`.
    snapshot_unissued: Option<Snapshot>,
    /// Index of a snapshot handed out and not yet confirmed.
    snapshot_unstable: Option<u64>,
}

impl<S: Storage> SlotLog<S> {
    pub(crate) fn new(storage: S) -> Self {
        SlotLog {
            storage,
            unissued: BTreeMap::new(),
            unstable: BTreeMap::new(),
            snapshot_unissued: None,
            snapshot_unstable: None,
        }
    }

    /// The slot the log starts after (the newest snapshot's index, durable or not).
    pub(crate) fn snapshot_index(&self) -> u64 {
        let stored = self.storage.first_index().saturating_sub(1);
        let pending = self.snapshot_unissued.as_ref().map_or(0, |s| s.meta.index);
        stored.max(pending).max(self.snapshot_unstable.unwrap_or(0))
    }

    /// The highest slot holding an entry (or the snapshot index).
    pub(crate) fn last_slot(&self) -> u64 {
        let overlay = self
            .unissued
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.unstable.keys().next_back().copied().unwrap_or(0));
        overlay
            .max(self.storage.last_index())
            .max(self.snapshot_index())
    }

    /// The entry at `slot`, `None` for a hole. Compacted slots are an error.
    pub(crate) fn get(&self, slot: u64) -> Result<Option<Entry>, StorageError> {
        if slot <= self.snapshot_index() {
            return Err(StorageError::Compacted(slot));
        }
        if let Some(entry) = self
            .unissued
            .get(&slot)
            .or_else(|| self.unstable.get(&slot))
        {
            return Ok(Some(entry.clone()));
        }
        if slot > self.storage.last_index() {
            return Ok(None);
        }
        // A hole yields nothing (`entries` skips slots that hold nothing).
        let mut out = Vec::with_capacity(1);
        self.storage.entries(slot, slot + 1, u64::MAX, &mut out)?;
        Ok(out.pop())
    }

    /// Entries in `lo ..= hi` (holes skipped), stopping once `max_bytes` of payload is reached
    /// (at least one entry when there is one). Returns them and the last slot looked at.
    pub(crate) fn range(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<(Vec<Entry>, u64), StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut covered = lo.saturating_sub(1);
        for slot in lo..=hi {
            if let Some(entry) = self.get(slot)? {
                let size = entry.payload_size().max(1);
                if bytes + size > max_bytes && !out.is_empty() {
                    break;
                }
                bytes += size;
                out.push(entry);
            }
            covered = slot;
        }
        Ok((out, covered))
    }

    /// The entries in `lo ..= hi`, a range expected to hold no hole (the chosen prefix), up to
    /// `max_bytes` of payload (at least one entry). Slots held only by the storage are read in
    /// one call; a hole ends the answer early (the caller checks the indexes).
    pub(crate) fn prefix(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let overlaid = self.unissued.range(lo..=hi).next().is_some()
            || self.unstable.range(lo..=hi).next().is_some();
        if overlaid
            || lo <= self.storage.first_index().saturating_sub(1)
            || hi > self.storage.last_index()
        {
            return Ok(self.range(lo, hi, max_bytes)?.0);
        }
        let mut out = Vec::new();
        self.storage.entries(lo, hi + 1, max_bytes, &mut out)?;
        Ok(out)
    }

    /// Stages `entry` for the next write (replacing what its slot held).
    pub(crate) fn put(&mut self, entry: Entry) {
        self.unissued.insert(entry.index, entry);
    }

    /// Stages a snapshot for the next write; slots it covers leave the overlay.
    pub(crate) fn put_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.unissued.retain(|&slot, _| slot > index);
        self.unstable.retain(|&slot, _| slot > index);
        self.snapshot_unissued = Some(snapshot);
    }

    /// Whether a write is waiting to be issued.
    pub(crate) fn has_unissued(&self) -> bool {
        !self.unissued.is_empty() || self.snapshot_unissued.is_some()
    }

    /// Hands the staged snapshot and slots out for writing.
    pub(crate) fn take_unissued(&mut self) -> (Option<Snapshot>, Vec<Entry>) {
        let snapshot = self.snapshot_unissued.take();
        if let Some(snapshot) = &snapshot {
            self.snapshot_unstable = Some(snapshot.meta.index);
        }
        let mut staged = std::mem::take(&mut self.unissued);
        let entries: Vec<Entry> = staged.values().cloned().collect();
        // A newer value for a slot replaces the unconfirmed older one.
        self.unstable.append(&mut staged);
        (snapshot, entries)
    }

    /// A write holding `slots` (with these terms) and maybe a snapshot is durable.
    pub(crate) fn stable(&mut self, slots: &[(u64, u64)], snapshot: Option<u64>) {
        for &(slot, term) in slots {
            if self.unstable.get(&slot).is_some_and(|e| e.term == term) {
                self.unstable.remove(&slot);
            }
        }
        if snapshot.is_some() && self.snapshot_unstable == snapshot {
            self.snapshot_unstable = None;
        }
    }
}
