//! Durable state as the protocol reads it, and an in-memory implementation.
//!
//! The protocol only *reads* storage through [`Storage`]. Writing is the driver's job: it writes what a
//! [`crate::Persist`] says, then confirms with the token. [`MemStorage`] does both halves in memory for tests,
//! the examples and the simulator (which keeps a copy of it to model a crash that loses unsynced state).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::entries::Entries;
use crate::error::{Error, StorageError};
use crate::protocol::{missing, CommittedRange, DurableState, Write};
use crate::raft::HardState;
use crate::types::{ConfState, Entry, Snapshot, SnapshotMeta};

/// Read access to a node's durable state.
///
/// Invariants an implementation keeps: every stored entry lies in `first_index() ..= last_index()`
/// (a protocol that writes single slots, Paxos, may leave gaps; Raft never does, and checks it);
/// `first_index() <= snapshot_meta().index + 1` — equal when compaction drops everything the
/// snapshot covers, lower when an implementation keeps trailing entries for slow followers (the
/// engine then treats `first_index() - 1` as where the log starts); `term(first_index() - 1)` and
/// `term(snapshot_meta().index)` are known.
pub trait Storage {
    /// The protocol's durable state besides the log.
    type HardState: DurableState;

    /// The durable protocol state (Raft: term, vote, commit).
    fn hard_state(&self) -> Self::HardState;
    /// Metadata of the latest snapshot (index 0, term 0 and the bootstrap configuration if none).
    fn snapshot_meta(&self) -> SnapshotMeta;
    /// The latest snapshot, to send to a follower that needs compacted entries.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
    /// Index of the first stored entry (at most `snapshot_meta().index + 1`).
    fn first_index(&self) -> u64;
    /// Index of the last stored entry (the snapshot index if there are none).
    fn last_index(&self) -> u64;
    /// Term of the entry at `index`, for `index` in `snapshot index ..= last_index()`
    /// ([`StorageError::Unavailable`] for a slot that holds nothing).
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// Appends the stored entries with index in `lo..hi` to `out`, in index order (slots that hold
    /// nothing are skipped), stopping early once `max_bytes` of payload is reached (at least one
    /// entry is always returned when one is stored in the range).
    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError>;
}

/// Storage held entirely in memory, for any protocol's durable state `H` (Raft's by default).
///
/// Entries are kept as the runs they were written in ([`Entries`], shared with whoever else
/// holds the batch: the engine that proposed it, the messages that carried it), so a write of
/// a batch stores one reference, not a copy of each entry.
#[derive(Clone, Debug, Default)]
pub struct MemStorage<H = HardState> {
    hard_state: H,
    snapshot: Snapshot,
    /// Runs of consecutive entries, in index order, disjoint, none empty, every entry above the
    /// snapshot index; holes (Paxos) lie between runs. A ring, so compaction drops the front
    /// without moving what stays.
    runs: VecDeque<Run>,
}

/// Writes of at most this many entries are copied into a run of the storage's own (see
/// `MemStorage::push_run`); longer ones are kept as the list written.
const COPIED_RUN_MAX: usize = 8;
/// A run of the storage's own grows to at most this many entries (compaction frees a run only
/// once all of it is compacted, so this bounds what a run keeps alive past compaction).
const OWN_RUN_MAX: usize = 1024;

/// A stored run: consecutive entries `lo ..= hi`, shared. Its ends are kept beside the list so
/// finding a run reads only the ring, not each run's entries.
#[derive(Clone, Debug)]
struct Run {
    lo: u64,
    hi: u64,
    entries: Entries,
}

impl Run {
    /// The run of `entries` (consecutive, not empty).
    fn new(entries: Entries) -> Option<Run> {
        let (lo, hi) = (entries.first()?.index, entries.last()?.index);
        Some(Run { lo, hi, entries })
    }

    /// The entries at positions `range` (not empty), sharing the list.
    fn slice(&self, range: std::ops::Range<usize>) -> Run {
        Run {
            lo: self.lo + range.start as u64,
            hi: self.lo + range.end as u64 - 1,
            entries: self.entries.slice(range),
        }
    }
}

impl std::ops::Deref for Run {
    type Target = [Entry];

    fn deref(&self) -> &[Entry] {
        &self.entries
    }
}

/// First and last index of a run.
fn ends(run: &Run) -> (u64, u64) {
    (run.lo, run.hi)
}

impl<H: DurableState> MemStorage<H> {
    /// Fresh storage for a new group whose initial members are `conf_state` (the bootstrap
    /// configuration is recorded as an empty snapshot at index 0).
    pub fn new_with_conf(conf_state: ConfState) -> Self {
        MemStorage {
            hard_state: H::default(),
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 0,
                    term: 0,
                    conf_state,
                },
                data: Bytes::new(),
            },
            runs: VecDeque::new(),
        }
    }

    /// Writes what `write` asks, in the order the contract gives: snapshot, truncation, entries,
    /// hard state. The entries are shared with `write`, not copied.
    pub fn write(&mut self, write: &Write<H>) -> Result<(), StorageError> {
        if let Some(snapshot) = &write.snapshot {
            self.install_snapshot(snapshot.clone());
        }
        if let Some(from) = write.truncate_from {
            self.truncate_from(from);
        }
        self.put_entries(write.entries.clone());
        if let Some(hard_state) = &write.hard_state {
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    /// [`MemStorage::write`] taking the write by value.
    pub fn write_owned(&mut self, write: Write<H>) -> Result<(), StorageError> {
        let Write {
            snapshot,
            truncate_from,
            entries,
            hard_state,
            sync: _,
        } = write;
        if let Some(snapshot) = snapshot {
            self.install_snapshot(snapshot);
        }
        if let Some(from) = truncate_from {
            self.truncate_from(from);
        }
        self.put_entries(entries);
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        Ok(())
    }

    /// Installs `snapshot` (as a write carrying one does) if it is at least as new as the stored
    /// one: stored entries at or below its index are dropped, those above are kept.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        self.install_snapshot(snapshot);
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        if index < self.snapshot.meta.index {
            return; // a compaction since already covers more
        }
        self.snapshot = snapshot;
        while let Some(front) = self.runs.front() {
            let (lo, hi) = ends(front);
            if hi <= index {
                self.runs.pop_front();
                continue;
            }
            if lo <= index {
                let keep = front.slice((index + 1 - lo) as usize..front.len());
                self.runs[0] = keep;
            }
            break;
        }
    }

    fn truncate_from(&mut self, from: u64) {
        // A compaction since may already cover the head of this write; never cut below it.
        let from = from.max(self.snapshot.meta.index + 1);
        while let Some(back) = self.runs.back() {
            let (lo, hi) = ends(back);
            if lo >= from {
                self.runs.pop_back();
                continue;
            }
            if hi >= from {
                let keep = back.slice(0..(from - lo) as usize);
                let last = self.runs.len() - 1;
                self.runs[last] = keep;
            }
            break;
        }
    }

    /// Stores `entries` (ascending), each at its own index, replacing what those indexes held:
    /// as one run when they are consecutive (the common write), else one run per consecutive
    /// stretch — sub-ranges of the same shared list either way.
    fn put_entries(&mut self, entries: Entries) {
        let consecutive = entries.windows(2).all(|w| w[0].index + 1 == w[1].index);
        if consecutive {
            if !entries.is_empty() {
                self.put_run(entries); // the common case: the whole list, one run
            }
            return;
        }
        let mut start = 0;
        for at in 1..=entries.len() {
            if at == entries.len() || entries[at].index != entries[at - 1].index + 1 {
                self.put_run(entries.slice(start..at));
                start = at;
            }
        }
    }

    /// Stores one run of consecutive entries, replacing what its indexes held.
    fn put_run(&mut self, run: Entries) {
        let Some(run) = Run::new(run) else {
            return;
        };
        let snap = self.snapshot.meta.index;
        let (lo, _) = ends(&run);
        let run = if lo <= snap {
            // Covered in part by a snapshot written since.
            let skip = (snap + 1 - lo) as usize;
            if skip >= run.len() {
                return;
            }
            run.slice(skip..run.len())
        } else {
            run
        };
        let (lo, hi) = ends(&run);
        if lo > self.last_index() {
            self.push_run(run); // the common case: past everything stored
            return;
        }
        // Overwriting (a Paxos slot accepted again, a hole filled): cut the runs it overlaps.
        let first = self.runs.partition_point(|r| ends(r).1 < lo);
        let end = self.runs.partition_point(|r| ends(r).0 <= hi);
        let mut replacement = Vec::with_capacity(3);
        if first < end {
            let head = &self.runs[first];
            let (head_lo, _) = ends(head);
            if head_lo < lo {
                replacement.push(head.slice(0..(lo - head_lo) as usize));
            }
        }
        replacement.push(run);
        if first < end {
            let tail = &self.runs[end - 1];
            let (tail_lo, tail_hi) = ends(tail);
            if tail_hi > hi {
                replacement.push(tail.slice((hi + 1 - tail_lo) as usize..tail.len()));
            }
        }
        self.runs.drain(first..end);
        for (offset, piece) in replacement.into_iter().enumerate() {
            self.runs.insert(first + offset, piece);
        }
    }

    /// Appends a run past everything stored. A short one (a write of one proposal) is copied
    /// onto the end of the last run when that run is this storage's own and adjacent: kept
    /// as a run of its own, each such write would cost a list allocation for as long as it is
    /// stored, which a copy of a few entries does not.
    fn push_run(&mut self, run: Run) {
        if run.len() <= COPIED_RUN_MAX {
            let (lo, hi) = ends(&run);
            // Moved out when the write was its only holder, copied when shared.
            let entries = run.entries.into_vec();
            if let Some(back) = self.runs.back_mut() {
                if back.hi + 1 == lo && back.len() < OWN_RUN_MAX {
                    if let Some(own) = back.entries.get_mut() {
                        own.extend(entries);
                        back.hi = hi;
                        return;
                    }
                }
            }
            let mut own = Vec::with_capacity(OWN_RUN_MAX.min(64));
            own.extend(entries);
            self.runs.push_back(Run {
                lo,
                hi,
                entries: Entries::from(own),
            });
            return;
        }
        self.runs.push_back(run);
    }

    /// The position of the last run starting at or below `index` (the newest runs are tried
    /// first: reads are mostly near the end of the log).
    fn run_from(&self, index: u64) -> Option<usize> {
        let len = self.runs.len();
        for at in (len.saturating_sub(4)..len).rev() {
            if self.runs[at].lo <= index {
                return Some(at);
            }
        }
        self.runs.partition_point(|r| r.lo <= index).checked_sub(1)
    }

    /// Where the entry at `index` is: (run, position in it).
    fn locate(&self, index: u64) -> Option<(usize, usize)> {
        let at = self.run_from(index)?;
        let (lo, hi) = ends(&self.runs[at]);
        (lo <= index && index <= hi).then_some((at, (index - lo) as usize))
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
        let term = self.term(index)?;
        self.install_snapshot(Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        });
        Ok(())
    }

    /// Every stored entry in index order (for tests and invariant checks).
    pub fn stored_entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.runs.iter().flat_map(|run| run.iter())
    }

    /// Calls `apply` on every entry of `range`, by reference and in order: how a host applies
    /// committed entries left in storage ([`crate::Host::apply_stored`]) without copying them.
    /// A compacted, missing or empty slot in the range is an error (the committed prefix has no
    /// gap).
    pub fn for_each_committed<E: From<Error>>(
        &self,
        range: CommittedRange,
        mut apply: impl FnMut(&Entry) -> Result<(), E>,
    ) -> Result<(), E> {
        let snap = self.snapshot.meta.index;
        if range.first <= snap {
            return Err(Error::Storage(StorageError::Compacted(range.first)).into());
        }
        if range.last > self.last_index() || range.first > range.last {
            return Err(missing(range.last.max(range.first)).into());
        }
        let Some((mut at, offset)) = self.locate(range.first) else {
            return Err(missing(range.first).into());
        };
        let mut next = range.first;
        let mut offset = offset;
        while next <= range.last {
            let Some(run) = self.runs.get(at) else {
                return Err(missing(next).into());
            };
            let take = ((range.last - next + 1) as usize).min(run.len().saturating_sub(offset));
            for entry in &run[offset..offset + take] {
                if entry.index != next {
                    return Err(missing(next).into());
                }
                apply(entry)?;
                next += 1;
            }
            if take == 0 {
                return Err(missing(next).into());
            }
            at += 1;
            offset = 0;
        }
        Ok(())
    }

    /// The entry stored at `index`, if any.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let (at, offset) = self.locate(index)?;
        self.runs[at].get(offset)
    }
}

impl<H: DurableState> Storage for MemStorage<H> {
    type HardState = H;

    fn hard_state(&self) -> H {
        self.hard_state.clone()
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
        self.runs
            .back()
            .map_or(self.snapshot.meta.index, |run| ends(run).1)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let snap = self.snapshot.meta.index;
        if index == snap {
            return Ok(self.snapshot.meta.term);
        }
        if index < snap {
            return Err(StorageError::Compacted(index));
        }
        match self.entry(index) {
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
        if lo >= hi {
            return Ok(());
        }
        out.reserve(((hi - lo) as usize).min(4096));
        let mut bytes = 0u64;
        let mut taken = 0usize;
        // The first run ending at or after `lo`.
        let first = match self.run_from(lo) {
            Some(at) if self.runs[at].hi >= lo => at,
            Some(at) => at + 1,
            None => 0,
        };
        for run in self.runs.range(first..) {
            let (run_lo, _) = ends(run);
            if run_lo >= hi {
                break;
            }
            let from = lo.saturating_sub(run_lo) as usize;
            let to = ((hi - run_lo) as usize).min(run.len());
            for entry in &run[from..to] {
                bytes += entry.payload_size();
                if bytes > max_bytes && taken > 0 {
                    return Ok(());
                }
                out.push(entry.clone());
                taken += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: u64) -> Entry {
        Entry {
            term: 1,
            index,
            payload: EntryPayload::Data(Bytes::from(index.to_le_bytes().to_vec())),
        }
    }

    fn write(entries: Vec<Entry>) -> Write<HardState> {
        Write {
            snapshot: None,
            truncate_from: None,
            entries: entries.into(),
            hard_state: None,
            sync: true,
        }
    }

    fn stored(storage: &MemStorage, lo: u64, hi: u64) -> Vec<u64> {
        let mut out = Vec::new();
        storage.entries(lo, hi, u64::MAX, &mut out).unwrap();
        out.iter().map(|e| e.index).collect()
    }

    #[test]
    fn appends_single_slots_and_holes_read_back_at_their_own_index() {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
        storage
            .write_owned(write((1..=3).map(entry).collect()))
            .unwrap();
        storage
            .write_owned(write(vec![entry(6), entry(5)]))
            .unwrap(); // not an append
        storage.write(&write((7..=8).map(entry).collect())).unwrap(); // an append again
        assert_eq!(stored(&storage, 1, 9), vec![1, 2, 3, 5, 6, 7, 8]);
        assert_eq!(storage.term(4), Err(StorageError::Unavailable(4)));
        assert_eq!(storage.last_index(), 8);
        for index in [1, 5, 8] {
            assert_eq!(storage.entry(index), Some(&entry(index)));
        }
    }

    fn entry_of_term(index: u64, term: u64) -> Entry {
        Entry {
            term,
            ..entry(index)
        }
    }

    #[test]
    fn a_batch_is_stored_as_the_list_written_not_a_copy() {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
        let batch = Entries::from((1..=16).map(entry).collect::<Vec<_>>());
        let mut w = write(Vec::new());
        w.entries = batch.clone();
        storage.write(&w).unwrap();
        assert!(storage.runs[0].entries.shares_memory_with(&batch));
        assert_eq!(stored(&storage, 1, 17), (1..=16).collect::<Vec<_>>());
    }

    #[test]
    fn a_slot_written_again_inside_a_stored_run_replaces_only_that_slot() {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
        storage
            .write_owned(write((1..=6).map(entry).collect()))
            .unwrap();
        storage
            .write_owned(write(vec![entry_of_term(3, 9), entry_of_term(4, 9)]))
            .unwrap();
        let terms: Vec<u64> = (1..=6).map(|i| storage.term(i).unwrap()).collect();
        assert_eq!(terms, vec![1, 1, 9, 9, 1, 1]);
        // Across two runs and a hole: 8 is past the end, 7 stays a hole.
        storage
            .write_owned(write(vec![entry_of_term(6, 5), entry_of_term(8, 5)]))
            .unwrap();
        storage
            .write_owned(write(vec![entry_of_term(2, 7), entry_of_term(3, 7)]))
            .unwrap();
        let terms: Vec<u64> = [1, 2, 3, 4, 5, 6, 8]
            .iter()
            .map(|&i| storage.term(i).unwrap())
            .collect();
        assert_eq!(terms, vec![1, 7, 7, 9, 1, 5, 5]);
        assert_eq!(storage.term(7), Err(StorageError::Unavailable(7)));
        assert_eq!(stored(&storage, 1, 9), vec![1, 2, 3, 4, 5, 6, 8]);
        assert_eq!(storage.stored_entries().count(), 7);
    }

    #[test]
    fn truncation_and_compaction_cut_inside_a_run() {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
        storage
            .write_owned(write((1..=6).map(entry).collect()))
            .unwrap();
        storage
            .write_owned(write((7..=10).map(entry).collect()))
            .unwrap();
        let mut cut = write(vec![entry_of_term(5, 3)]);
        cut.truncate_from = Some(5);
        storage.write_owned(cut).unwrap();
        assert_eq!(storage.last_index(), 5);
        assert_eq!(storage.term(5), Ok(3));
        assert_eq!(storage.term(4), Ok(1));
        storage
            .compact(2, ConfState::with_voters([1]), Bytes::new())
            .unwrap();
        assert_eq!(stored(&storage, 3, 6), vec![3, 4, 5]);
        assert_eq!(storage.entry(2), None);
        assert_eq!(storage.entry(3), Some(&entry(3)));
    }

    #[test]
    fn compaction_keeps_every_later_entry_at_its_index() {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
        storage
            .write_owned(write((1..=10).map(entry).collect()))
            .unwrap();
        storage
            .compact(4, ConfState::with_voters([1]), Bytes::new())
            .unwrap();
        storage
            .write_owned(write((11..=12).map(entry).collect()))
            .unwrap();
        assert_eq!(storage.first_index(), 5);
        assert_eq!(stored(&storage, 5, 13), (5..=12).collect::<Vec<_>>());
        assert_eq!(storage.entry(7), Some(&entry(7)));
        assert_eq!(
            storage.entries(4, 6, u64::MAX, &mut Vec::new()),
            Err(StorageError::Compacted(4))
        );
    }

    #[test]
    fn a_read_stops_at_the_byte_limit_but_returns_at_least_one_entry() {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
        storage
            .write_owned(write((1..=5).map(entry).collect()))
            .unwrap();
        assert_eq!(stored_limited(&storage, 16), vec![1, 2]);
        assert_eq!(stored_limited(&storage, 1), vec![1]);
    }

    fn range(first: u64, last: u64, max_bytes_per_read: u64) -> CommittedRange {
        CommittedRange {
            first,
            last,
            max_bytes_per_read,
        }
    }

    fn by_reference(storage: &MemStorage, r: CommittedRange) -> Result<Vec<u64>, Error> {
        let mut seen = Vec::new();
        storage.for_each_committed(r, |e| {
            seen.push(e.index);
            Ok::<(), Error>(())
        })?;
        Ok(seen)
    }

    fn by_chunks(storage: &MemStorage, r: CommittedRange) -> Result<Vec<Vec<u64>>, Error> {
        let mut chunks = Vec::new();
        r.read(storage, |entries| {
            chunks.push(entries.iter().map(|e| e.index).collect());
            Ok::<(), Error>(())
        })?;
        Ok(chunks)
    }

    #[test]
    fn a_committed_range_is_read_whole_by_reference_and_in_bounded_chunks_by_copy() {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
        storage
            .write_owned(write((1..=5).map(entry).collect()))
            .unwrap();
        assert_eq!(
            by_reference(&storage, range(2, 4, 0)).unwrap(),
            vec![2, 3, 4]
        );
        // 8 payload bytes per entry: 16 bytes a read is two entries at a time.
        assert_eq!(
            by_chunks(&storage, range(1, 5, 16)).unwrap(),
            vec![vec![1, 2], vec![3, 4], vec![5]]
        );
    }

    #[test]
    fn a_committed_range_with_a_hole_a_compacted_or_a_missing_entry_is_an_error() {
        let mut storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
        storage
            .write_owned(write(vec![entry(1), entry(2), entry(4)]))
            .unwrap();
        fn inconsistent<T>(r: Result<T, Error>) -> bool {
            matches!(r, Err(Error::Storage(StorageError::Inconsistent(_))))
        }
        assert!(
            inconsistent(by_reference(&storage, range(1, 4, 0))),
            "3 is a hole"
        );
        assert!(
            inconsistent(by_chunks(&storage, range(1, 4, u64::MAX))),
            "3 is a hole"
        );
        assert!(
            inconsistent(by_reference(&storage, range(4, 5, 0))),
            "5 is not stored"
        );
        assert!(
            by_chunks(&storage, range(4, 5, u64::MAX)).is_err(),
            "5 is not stored"
        );
        storage
            .compact(2, ConfState::with_voters([1]), Bytes::new())
            .unwrap();
        assert_eq!(
            by_reference(&storage, range(2, 2, 0)),
            Err(Error::Storage(StorageError::Compacted(2)))
        );
    }

    fn stored_limited(storage: &MemStorage, max_bytes: u64) -> Vec<u64> {
        let mut out = Vec::new();
        storage.entries(1, 6, max_bytes, &mut out).unwrap();
        out.iter().map(|e| e.index).collect()
    }
}
