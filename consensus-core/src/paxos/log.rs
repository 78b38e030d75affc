//! The acceptor's slot log: slots read through [`Storage`], with the accepted (or learnt) slots
//! not yet handed out in a write laid over them.
//!
//! Once `ready()` hands a write out, its slots are read back from storage: the persistence
//! contract (see [`crate::protocol`]) has the driver apply a write to the engine's storage view
//! before it calls the engine again ([`crate::Replica`] does so in `Host::submit`), durable or
//! not yet. So no second copy of a slot waits here for its write to be confirmed (that copy cost
//! a refcount increment and decrement per slot on every member).
//!
//! Unlike Raft's log this one has holes: a slot is written on its own when accepted, and higher
//! slots are never cut. Invariant kept by the engine: every slot at or below the commit index
//! holds its chosen value (or is compacted into the snapshot).

use std::collections::BTreeSet;

use crate::entries::Entries;
use crate::error::StorageError;
use crate::storage::Storage;
use crate::types::{Entry, EntryPayload, Snapshot};

/// Entries keyed by slot, kept sorted in a vector: the leader and its acceptors write ascending
/// slots, so the common insert is a push and the common hand-out is a move of the whole vector
/// (a `BTreeMap` here cost a node insert and remove per slot on every member).
#[derive(Debug, Default)]
struct SlotVec(Vec<Entry>);

impl SlotVec {
    fn find(&self, slot: u64) -> Result<usize, usize> {
        match self.0.last() {
            Some(last) if last.index < slot => Err(self.0.len()),
            _ => self.0.binary_search_by_key(&slot, |e| e.index),
        }
    }

    fn get(&self, slot: u64) -> Option<&Entry> {
        self.find(slot).ok().map(|at| &self.0[at])
    }

    /// Stores `entry`, replacing what its slot held.
    fn put(&mut self, entry: Entry) {
        match self.find(entry.index) {
            Ok(at) => self.0[at] = entry,
            Err(at) => self.0.insert(at, entry),
        }
    }

    fn last_slot(&self) -> u64 {
        self.0.last().map_or(0, |e| e.index)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Stored slots plus the in-memory overlay of slots not yet handed out in a write.
pub(crate) struct SlotLog<S: Storage> {
    pub(crate) storage: S,
    /// Slots to write at the next `ready()`, staged one by one.
    unissued: SlotVec,
    /// Or (never both non-empty) one run of consecutive slots under one ballot, staged as
    /// `put_run` received it: a batch shared with the messages that carry it, handed to the
    /// write as it is.
    unissued_run: Entries,
    /// A snapshot to write at the next `ready()`.
    snapshot_unissued: Option<Snapshot>,
    /// Slots above the snapshot whose value here (durable or not) is a membership change, so
    /// that learning a chosen slot needs only its term, not a copy of its value.
    conf_slots: BTreeSet<u64>,
    /// The latest run of consecutive slots written under one ballot: every slot in
    /// `lo ..= hi` holds an entry of ballot `term` (staged or stored). Lets a follower learn a
    /// chosen prefix without reading each slot's term.
    run: Option<Run>,
}

/// Consecutive slots `lo ..= hi` all holding entries of ballot `term`.
#[derive(Clone, Copy, Debug)]
struct Run {
    term: u64,
    lo: u64,
    hi: u64,
}

impl<S: Storage> SlotLog<S> {
    pub(crate) fn new(storage: S) -> Result<Self, StorageError> {
        // Find the stored membership changes once (in chunks, holes skipped).
        let mut conf_slots = BTreeSet::new();
        let (mut lo, hi) = (storage.first_index(), storage.last_index());
        let mut chunk = Vec::new();
        while lo <= hi {
            chunk.clear();
            storage.entries(lo, hi + 1, 1 << 20, &mut chunk)?;
            let Some(last) = chunk.last() else {
                break;
            };
            lo = last.index + 1;
            conf_slots.extend(
                chunk
                    .iter()
                    .filter(|e| matches!(e.payload, EntryPayload::ConfChange(_)))
                    .map(|e| e.index),
            );
        }
        Ok(SlotLog {
            storage,
            unissued: SlotVec::default(),
            unissued_run: Entries::new(),
            snapshot_unissued: None,
            conf_slots,
            run: None,
        })
    }

    /// The staged entry at `slot`, if any.
    fn staged(&self, slot: u64) -> Option<&Entry> {
        if let Some(first) = self.unissued_run.first() {
            return slot
                .checked_sub(first.index)
                .and_then(|offset| self.unissued_run.get(usize::try_from(offset).ok()?));
        }
        self.unissued.get(slot)
    }

    /// Moves a staged run into the slot-by-slot overlay (before a single slot is staged).
    fn unstage_run(&mut self) {
        if !self.unissued_run.is_empty() {
            debug_assert!(self.unissued.is_empty(), "one overlay at a time");
            self.unissued.0 = std::mem::take(&mut self.unissued_run).into_vec();
        }
    }

    /// The ballot (term) of the entry at `slot`, `None` for a hole; no copy of the value.
    /// Compacted slots are an error.
    pub(crate) fn term(&self, slot: u64) -> Result<Option<u64>, StorageError> {
        if slot <= self.snapshot_index() {
            return Err(StorageError::Compacted(slot));
        }
        if let Some(entry) = self.staged(slot) {
            return Ok(Some(entry.term));
        }
        if slot > self.storage.last_index() {
            return Ok(None);
        }
        match self.storage.term(slot) {
            Ok(term) => Ok(Some(term)),
            Err(StorageError::Unavailable(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Whether the value held at `slot` is a membership change.
    pub(crate) fn holds_conf_change(&self, slot: u64) -> bool {
        self.conf_slots.contains(&slot)
    }

    /// The slot the log starts after (the newest snapshot's index, written or staged).
    pub(crate) fn snapshot_index(&self) -> u64 {
        let stored = self.storage.first_index().saturating_sub(1);
        let pending = self.snapshot_unissued.as_ref().map_or(0, |s| s.meta.index);
        stored.max(pending)
    }

    /// The highest slot holding an entry (or the snapshot index).
    pub(crate) fn last_slot(&self) -> u64 {
        let staged_run = self.unissued_run.last().map_or(0, |e| e.index);
        self.unissued
            .last_slot()
            .max(staged_run)
            .max(self.storage.last_index())
            .max(self.snapshot_index())
    }

    /// The entry at `slot`, `None` for a hole. Compacted slots are an error.
    pub(crate) fn get(&self, slot: u64) -> Result<Option<Entry>, StorageError> {
        if slot <= self.snapshot_index() {
            return Err(StorageError::Compacted(slot));
        }
        if let Some(entry) = self.staged(slot) {
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

    /// The highest slot `h` such that every slot in `from ..= h` holds an entry of ballot
    /// `term`, as far as the latest run shows (`None` when the run does not hold `from`).
    pub(crate) fn run_through(&self, from: u64, term: u64) -> Option<u64> {
        self.run
            .filter(|run| run.term == term && run.lo <= from && from <= run.hi)
            .map(|run| run.hi)
    }

    /// The slots in `lo ..= hi` holding a membership change, ascending.
    pub(crate) fn conf_changes_in(&self, lo: u64, hi: u64) -> Vec<u64> {
        if self.conf_slots.is_empty() {
            return Vec::new(); // the common case: no allocation
        }
        self.conf_slots.range(lo..=hi).copied().collect()
    }

    /// The first slot in `lo ..= hi` holding a membership change.
    pub(crate) fn first_conf_change_in(&self, lo: u64, hi: u64) -> Option<u64> {
        self.conf_slots.range(lo..=hi).next().copied()
    }

    /// Keeps the run true after `first ..= last` (consecutive) were written under `term`.
    fn extend_run(&mut self, first: u64, last: u64, term: u64) {
        match &mut self.run {
            Some(run) if run.term == term && run.lo <= first && first <= run.hi + 1 => {
                run.hi = run.hi.max(last);
            }
            Some(run) if first <= run.hi && last >= run.lo => {
                // The write overlaps the run under another ballot (or from below it): what
                // the run claimed may no longer hold, so the write starts a new run.
                *run = Run {
                    term,
                    lo: first,
                    hi: last,
                };
            }
            _ => {
                self.run = Some(Run {
                    term,
                    lo: first,
                    hi: last,
                })
            }
        }
    }

    /// Stages `entry` for the next write (replacing what its slot held).
    pub(crate) fn put(&mut self, entry: Entry) {
        self.extend_run(entry.index, entry.index, entry.term);
        if matches!(entry.payload, EntryPayload::ConfChange(_)) {
            self.conf_slots.insert(entry.index);
        } else if !self.conf_slots.is_empty() {
            self.conf_slots.remove(&entry.index);
        }
        self.unstage_run();
        self.unissued.put(entry);
    }

    /// Stages `entries`, consecutive slots written under one ballot (a leader's batch, or an
    /// `Accept` batch the acceptor found to be one run). When nothing else is staged the list
    /// itself becomes the staged write (shared, not copied; no second pass over its shape).
    pub(crate) fn put_run(&mut self, entries: Entries) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        let (lo, hi, term) = (first.index, last.index, first.term);
        debug_assert!(
            (lo..)
                .zip(&entries)
                .all(|(slot, e)| e.index == slot && e.term == term),
            "a run is consecutive slots under one ballot"
        );
        let run_shaped = hi >= lo && hi - lo + 1 == entries.len() as u64 && last.term == term;
        if !run_shaped || self.has_unissued_slots() {
            for entry in entries {
                self.put(entry);
            }
            return;
        }
        for entry in &entries {
            if matches!(entry.payload, EntryPayload::ConfChange(_)) {
                self.conf_slots.insert(entry.index);
            } else if !self.conf_slots.is_empty() {
                self.conf_slots.remove(&entry.index);
            }
        }
        self.extend_run(lo, hi, term);
        self.unissued_run = entries;
    }

    fn has_unissued_slots(&self) -> bool {
        !self.unissued.is_empty() || !self.unissued_run.is_empty()
    }

    /// Stages a snapshot for the next write; slots it covers leave the overlay.
    pub(crate) fn put_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.unstage_run();
        self.unissued.0.retain(|e| e.index > index);
        self.conf_slots.retain(|&slot| slot > index);
        // Slots the snapshot covers hold nothing any more.
        self.run = self.run.and_then(|run| {
            let lo = run.lo.max(index + 1);
            (lo <= run.hi).then_some(Run { lo, ..run })
        });
        self.snapshot_unissued = Some(snapshot);
    }

    /// Whether a write is waiting to be issued.
    pub(crate) fn has_unissued(&self) -> bool {
        self.has_unissued_slots() || self.snapshot_unissued.is_some()
    }

    /// Hands the staged snapshot and slots out for writing (moved, not copied: from here on
    /// they are read back from storage, which the driver updates before calling us again).
    /// The third value says whether the slots are known to be one run (see `put_run`).
    pub(crate) fn take_unissued(&mut self) -> (Option<Snapshot>, Entries, bool) {
        let snapshot = self.snapshot_unissued.take();
        if !self.unissued_run.is_empty() {
            return (snapshot, std::mem::take(&mut self.unissued_run), true);
        }
        (
            snapshot,
            Entries::from(std::mem::take(&mut self.unissued.0)),
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::SlotLog;
    use crate::paxos::HardState;
    use crate::storage::MemStorage;
    use crate::types::{ConfState, Entry, EntryPayload, Snapshot, SnapshotMeta};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Noop,
        }
    }

    fn log() -> SlotLog<MemStorage<HardState>> {
        SlotLog::new(MemStorage::new_with_conf(ConfState::with_voters([1]))).unwrap()
    }

    #[test]
    fn a_run_never_claims_a_slot_another_ballot_overwrote() {
        let mut log = log();
        log.put_run((1..=4).map(|i| entry(i, 7)).collect());
        assert_eq!(log.run_through(1, 7), Some(4));
        assert_eq!(log.run_through(1, 8), None, "another ballot's run");
        log.put(entry(3, 9));
        assert!(
            log.run_through(1, 7).is_none_or(|hi| hi < 3),
            "slot 3 now holds ballot 9"
        );
        assert_eq!(log.term(3).unwrap(), Some(9));
    }

    #[test]
    fn a_run_grows_with_the_next_batch_and_stops_at_a_hole() {
        let mut log = log();
        log.put_run(vec![entry(1, 7), entry(2, 7)].into());
        let _ = log.take_unissued();
        log.put_run(vec![entry(3, 7)].into());
        assert_eq!(log.run_through(2, 7), Some(3));
        log.put_run(vec![entry(5, 7)].into());
        assert_eq!(
            log.run_through(1, 7),
            None,
            "slot 4 is a hole: the run restarted at 5"
        );
        assert_eq!(log.run_through(5, 7), Some(5));
    }

    #[test]
    fn a_snapshot_cuts_the_run_below_it() {
        let mut log = log();
        log.put_run((1..=4).map(|i| entry(i, 7)).collect());
        log.put_snapshot(Snapshot {
            meta: SnapshotMeta {
                index: 2,
                term: 7,
                conf_state: ConfState::with_voters([1]),
            },
            data: Default::default(),
        });
        assert_eq!(log.run_through(2, 7), None);
        assert_eq!(log.run_through(3, 7), Some(4));
    }
}
