//! Durable state as the protocol reads it, and an in-memory implementation.
//!
//! The protocol only *reads* storage through [`Storage`]. Writing is the driver's job: it writes what a
//! [`crate::Persist`] says, then confirms with the token. [`MemStorage`] does both halves in memory for tests,
//! the examples and the simulator (which keeps a copy of it to model a crash that loses unsynced state).

use std::collections::VecDeque;

use bytes::Bytes;

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
#[derive(Clone, Debug, Default)]
pub struct MemStorage<H = HardState> {
    hard_state: H,
    snapshot: Snapshot,
    /// `slots[i]` holds the entry at index `snapshot.meta.index + 1 + i`; the last one is `Some`.
    /// A ring, so compaction drops the front without moving what stays.
    slots: VecDeque<Option<Entry>>,
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
            slots: VecDeque::new(),
        }
    }

    /// Writes what `write` asks, in the order the contract gives: snapshot, truncation, entries,
    /// hard state.
    pub fn write(&mut self, write: &Write<H>) -> Result<(), StorageError> {
        if let Some(snapshot) = &write.snapshot {
            self.install_snapshot(snapshot.clone());
        }
        if let Some(from) = write.truncate_from {
            self.truncate_from(from);
        }
        if self.appends(&write.entries) {
            self.slots.extend(write.entries.iter().cloned().map(Some));
        } else {
            for entry in &write.entries {
                self.put(entry.clone());
            }
        }
        if let Some(hard_state) = &write.hard_state {
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    /// [`MemStorage::write`] taking the write by value: its entries are moved in, not copied.
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
        if self.appends(&entries) {
            self.slots.extend(entries.into_iter().map(Some));
        } else {
            for entry in entries {
                self.put(entry);
            }
        }
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
        let current = self.snapshot.meta.index;
        if index < current {
            return; // a compaction since already covers more
        }
        let drop = ((index - current) as usize).min(self.slots.len());
        self.slots.drain(..drop);
        self.snapshot = snapshot;
        self.trim();
    }

    fn truncate_from(&mut self, from: u64) {
        // A compaction since may already cover the head of this write; never cut below it.
        let first = self.snapshot.meta.index + 1;
        let keep = from.max(first) - first;
        self.slots.truncate(keep as usize);
        self.trim();
    }

    /// Whether `entries` are exactly the next slots after the last stored one (ascending, no
    /// gap): the common write, stored in one bulk append.
    fn appends(&self, entries: &[Entry]) -> bool {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return false;
        };
        first.index == self.last_index() + 1
            && last.index - first.index + 1 == entries.len() as u64
            && entries.windows(2).all(|w| w[0].index + 1 == w[1].index)
    }

    fn put(&mut self, entry: Entry) {
        let first = self.snapshot.meta.index + 1;
        if entry.index < first {
            return; // covered by a snapshot written since
        }
        let at = (entry.index - first) as usize;
        if at == self.slots.len() {
            self.slots.push_back(Some(entry)); // the common case: the next slot
            return;
        }
        if at > self.slots.len() {
            self.slots.resize(at + 1, None);
        }
        self.slots[at] = Some(entry);
    }

    /// Keeps the invariant that the last slot holds an entry.
    fn trim(&mut self) {
        while matches!(self.slots.back(), Some(None)) {
            self.slots.pop_back();
        }
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
        self.slots.iter().flatten()
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
        let slots = (range.first - snap - 1) as usize..=(range.last - snap - 1) as usize;
        for (index, slot) in (range.first..).zip(self.slots.range(slots)) {
            match slot {
                Some(entry) if entry.index == index => apply(entry)?,
                _ => return Err(missing(index).into()),
            }
        }
        Ok(())
    }

    /// The entry stored at `index`, if any.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let first = self.snapshot.meta.index + 1;
        if index < first {
            return None;
        }
        self.slots.get((index - first) as usize)?.as_ref()
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
        self.snapshot.meta.index + self.slots.len() as u64
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
        let range = (lo - snap - 1) as usize..(hi - snap - 1) as usize;
        out.reserve(range.len().min(4096));
        let mut bytes = 0u64;
        for (taken, entry) in self.slots.range(range).flatten().enumerate() {
            bytes += entry.payload_size();
            if bytes > max_bytes && taken > 0 {
                break;
            }
            out.push(entry.clone());
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
            entries,
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
