//! Durable storage for a replication group of any protocol: [`LogStore<H>`] (`H` = the
//! protocol's durable state, e.g. Raft's `HardState`; [`RaftStore`] for Raft), on `storage-wal`.
//!
//! A store either has a log of its own ([`LogStore::open`], the layout below; an unsharded node)
//! or is one group of the node's [`SharedLog`] ([`SharedLog::open_group`]: one log, one sync
//! thread and one `fdatasync` per round for every group; group-tagged records and per-group
//! checkpoint records; see [`SharedLog`]). Both have the same API and durability contract.
//!
//! # On disk
//! ```text
//! <data dir>/
//!   wal/            storage-wal directory: segments 0000…-<first index>.wal, `meta`, lock file
//!   snapshot        latest snapshot (metadata + state-machine data, checksummed), replaced atomically
//! ```
//! The write-ahead log is a *redo log* of typed records in submission order (see `record`): an
//! `Entry` record stores one slot, a `Truncate` record cuts every entry from an index on (Raft's
//! log conflict; never written by a Paxos acceptor), `HardState` records carry the protocol's
//! durable state (postcard), `InstallSnapshot` records say a leader's snapshot was installed. WAL
//! indexes are sequence numbers of these records, unrelated to log indexes. Slots may stay empty.
//!
//! The WAL's metadata record (atomically replaced by storage-wal) holds the directory's identity
//! (protocol, cluster id, node id, group id: opening another's directory fails with
//! [`StoreError::WrongProtocol`] / [`StoreError::WrongCluster`] / [`StoreError::WrongMember`])
//! and the last *checkpoint*: the
//! state as of the last local snapshot (snapshot metadata, first kept index, hard state) and the
//! WAL index replay starts from.
//!
//! # Durability order
//! One [`Write`] becomes one `append_batch` of records in contract order: `InstallSnapshot`,
//! `Truncate`, the entries, then `HardState`. storage-wal makes records durable as a prefix (one
//! `fdatasync` covers every record appended before it), so **a hard state is never durable before
//! the entries submitted with or before it**, and a truncation is durable in order with the
//! appends around it. A write with `sync == false` (Raft: only the commit index moved) asks the
//! sync thread for nothing: it becomes durable with the next synced write. A crash leaves the state after some prefix of
//! the records, which is always a state the log went through.
//!
//! A snapshot (installed from the leader, or saved locally) is written to its file only after every
//! record submitted before it is durable, so the file never runs ahead of an older, lost hard
//! state, and the file only moves forward (a local job older than the file writes nothing). A
//! leader's snapshot blocks `submit` (rare); a local one is written off the caller's thread (below).
//!
//! # Writing without blocking
//! [`LogStore::submit`] validates the `Write`, appends its records (no fsync), updates the
//! in-memory view at once (the engine may read it immediately) and returns the WAL index of its
//! last record. A background thread keeps calling `sync` while writes are pending and publishes the
//! durable WAL index on a `tokio::sync::watch` channel ([`RaftStore::subscribe_durable`]); the
//! driver confirms every token whose WAL index is `<=` it, in order. Several writes are in flight
//! at once and one `fdatasync` covers all that arrived while the previous one ran (group commit).
//! [`LogStore::write`] is the blocking form (submit, then wait).
//!
//! # Reading
//! All live entries are held in memory (`term()` / `entries()` never touch the disk); the disk is
//! read only at open. Memory is bounded by the snapshot interval the driver chooses.
//!
//! # Snapshots and trailing entries
//! [`LogStore::save_snapshot`] writes the snapshot file, records a checkpoint and compacts the WAL
//! below the first kept entry. Its non-blocking form, for event loops, runs in stages:
//! [`LogStore::begin_snapshot`] (cheap, on the loop) gives a [`SnapshotJob`] whose
//! [`write`](SnapshotJob::write) serialised data goes to the file on a blocking thread;
//! [`LogStore::finish_snapshot`] (cheap, on the loop) adopts it and gives a [`CheckpointJob`] whose
//! [`run`](CheckpointJob::run) waits for the records it covers to be durable, replaces the WAL's
//! metadata and deletes whole segments below the first kept entry, again off the loop (appends
//! continue meanwhile). Checkpoints only move forward; a crash between any two stages reopens to a
//! consistent state (a file ahead of the log is installed, see [`Recovery::snapshot_file_ahead`]).
//!
//! With [`StoreOptions::trailing_entries`] `> 0` the store keeps that
//! many entries at and below the snapshot index (as etcd does) so a follower slightly behind gets
//! entries rather than a whole snapshot; then `first_index() <= snapshot_meta().index` (instead of
//! `== index + 1`), which the Raft engine handles: it only reads terms from `first_index() - 1` on
//! and sends the latest snapshot when a follower needs anything older.

mod error;
#[cfg(test)]
mod group_tests;
mod record;
mod shared;
#[cfg(test)]
mod shared_tests;
mod snapfile;
mod syncer;
mod tagged;
#[cfg(test)]
mod tests;
mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use consensus_core::{
    ConfState, DurableState, Entry, NodeId, Snapshot, SnapshotMeta, Storage, StorageError, Write,
};
use storage_wal::{FileSystem, RecoveryReport, StdFs, Wal};
use tokio::sync::watch;

pub use error::{Result, StoreError};
pub use shared::{SharedLog, SharedOptions, GROUPS_DIR, SHARED_WAL_DIR};

use record::{MetaDecodeError, MetaHead, Record, RecordRef, StoreMeta};
use shared::{GroupLease, GroupLog, Rewrite};
use syncer::Syncer;
use view::{Base, LogView, Stored};

/// Name of the write-ahead log's directory inside a data directory.
pub const WAL_DIR: &str = "wal";

/// Who a data directory belongs to; recorded at creation and checked at every open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The replication protocol (`Consensus::NAME`: "raft", "multi-paxos", "zab").
    pub protocol: String,
    /// The cluster's id (from its configuration), e.g. `"quorate-dev"`.
    pub cluster_id: String,
    /// This node's id in the group.
    pub node_id: NodeId,
    /// The replication group (shard) this store holds; 0 while there is one group per node.
    pub group_id: u64,
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Options of the underlying log (segment size, group-commit delay, recovery mode).
    pub wal: storage_wal::Options,
    /// Entries kept at and below a local snapshot's index, for followers slightly behind.
    /// 0 gives exactly `MemStorage`'s semantics. Default 1024.
    pub trailing_entries: u64,
    /// Run the background sync thread (default). Without it, writes become durable only through
    /// [`LogStore::sync`] / [`LogStore::wait_durable`] (which also publish on
    /// [`LogStore::subscribe_durable`]), for drivers that sync on their own schedule.
    pub background_sync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            wal: storage_wal::Options::default(),
            trailing_entries: 1024,
            background_sync: true,
        }
    }
}

/// How far writes are durable, as published by the background sync thread.
#[derive(Debug, Clone, Default)]
pub struct Durability {
    /// Every write whose WAL index (returned by [`LogStore::submit`]) is `<=` this is durable.
    pub index: u64,
    /// Set when a sync failed: nothing later will become durable; the store must be reopened.
    pub error: Option<Arc<StoreError>>,
}

/// What open found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Whether the directory was new (identity just recorded).
    pub created: bool,
    /// The write-ahead log's own report (segments, records, a torn tail cut off, removed files).
    pub wal: RecoveryReport,
    /// Log records replayed into the in-memory view.
    pub replayed_records: u64,
    /// The snapshot file was newer than the log said (a crash between writing it and logging
    /// it): it was installed during recovery.
    pub snapshot_file_ahead: bool,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Log records appended (entries, hard states, snapshot markers).
    pub records: u64,
    /// Payload bytes appended to the log.
    pub bytes: u64,
    /// `fdatasync` calls of the log (group commits, segment rolls, truncations).
    pub syncs: u64,
}

/// Durable storage of one group on disk, read by the engine through [`Storage`]; `H` is the
/// protocol's durable state.
///
/// Owned by the engine (`Raft<RaftStore>`); the driver's replica loop writes through
/// `storage.submit(&write)` and confirms the token once [`durable_index`](Self::durable_index)
/// (or [`subscribe_durable`](Self::subscribe_durable)) reaches the returned WAL index.
///
/// ```
/// use consensus_core::{ConfState, HardState, Storage, Write};
/// use node::store::{Identity, RaftStore, StoreOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let identity = || Identity { protocol: "raft".into(), cluster_id: "example".into(), node_id: 1, group_id: 0 };
/// let mut store = RaftStore::open(dir.path(), identity(), ConfState::with_voters([1]), StoreOptions::default())?;
/// // What an engine's `Ready` asks for (here: a vote), as the replica loop's host submits it.
/// let vote = HardState { term: 1, vote: 1, commit: 0 };
/// let write = Write { snapshot: None, truncate_from: None, entries: Vec::new().into(), hard_state: Some(vote), sync: true };
/// // Returns at once; the sync thread makes it durable (group commit).
/// let wal_index = store.submit(&write)?;
/// store.wait_durable(wal_index)?;
/// drop(store);
/// // The vote survives a restart.
/// let store = RaftStore::open(dir.path(), identity(), ConfState::default(), StoreOptions::default())?;
/// assert_eq!(store.hard_state(), vote);
/// # Ok(()) }
/// ```
pub struct LogStore<H> {
    fs: Arc<dyn FileSystem>,
    /// The data directory (a shared log's group: `<data dir>/groups/<g>`, its snapshot's).
    dir: PathBuf,
    identity: Identity,
    options: StoreOptions,
    wal: Arc<Wal>,
    /// The in-memory view; shared with the shared log, which may rewrite an idle group.
    core: Arc<Core<H>>,
    snapshot_data: Bytes,
    /// What the snapshot file and the checkpoint hold, shared with background jobs.
    files: Arc<parking_lot::Mutex<Files>>,
    /// Reused encoding buffer of `submit`.
    encode_buf: Vec<u8>,
    syncer: Arc<Syncer>,
    recovery: Recovery,
    /// Set for a group of a [`SharedLog`]; marks the group closed on drop.
    lease: Option<GroupLease>,
}

/// What a group's store shares with its log: the view, under a lock held across each append
/// so the view's record indexes follow the log's order.
struct Core<H> {
    view: parking_lot::Mutex<LogView<H>>,
    wal: Arc<Wal>,
    wal_dir: PathBuf,
    /// The group tag of a shared log's records; `None` for a store with its own log.
    tag: Option<u64>,
}

impl<H: DurableState> Core<H> {
    /// Appends the encoding of `record` (in its envelope, in a shared log) to `buf`.
    fn encode(&self, record: &RecordRef<'_, H>, buf: &mut Vec<u8>) -> Result<()> {
        let encoded = match self.tag {
            Some(group) => tagged::push_head(group, tagged::KIND_RECORD, buf)
                .and_then(|()| record::encode_into(record, buf)),
            None => record::encode_into(record, buf),
        };
        encoded.map_err(|e| StoreError::BadRecord {
            dir: self.wal_dir.clone(),
            wal_index: self.wal.next_index(),
            reason: format!("cannot encode: {e}"),
        })
    }
}

impl<H: DurableState> Rewrite for Core<H> {
    fn rewrite(&self) -> Result<Option<(u64, u64)>> {
        let Some(group) = self.tag else {
            return Ok(None);
        };
        let mut view = self.view.lock();
        let replay_from = self.wal.next_index();
        let checkpoint =
            tagged::encode_checkpoint(group, replay_from, &view.base()).map_err(|e| {
                StoreError::BadRecord {
                    dir: self.wal_dir.clone(),
                    wal_index: replay_from,
                    reason: format!("cannot encode: {e}"),
                }
            })?;
        let mut payloads = vec![checkpoint];
        for stored in view.slots.iter().flatten() {
            let mut buf = Vec::new();
            self.encode(&RecordRef::Entry(&stored.entry), &mut buf)?;
            payloads.push(buf);
        }
        let range = self.wal.append_batch(&payloads)?;
        for (wal_index, stored) in (range.start + 1..).zip(view.slots.iter_mut().flatten()) {
            stored.wal_index = wal_index;
        }
        tracing::debug!(
            group,
            records = payloads.len(),
            "shared log: group rewritten at the end"
        );
        Ok(Some((replay_from, range.end - 1)))
    }
}

impl<H: DurableState> std::fmt::Debug for LogStore<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = self.core.view.lock();
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .field("identity", &self.identity)
            .field("first_index", &view.first)
            .field("last_index", &view.last_index())
            .field("snapshot_index", &view.snapshot.index)
            .field("hard_state", &view.hard_state)
            .finish()
    }
}

/// Bytes read per call while replaying the log at open.
pub(crate) const REPLAY_READ_BYTES: u64 = 8 << 20;

/// The store of a Raft group.
pub type RaftStore = LogStore<consensus_core::HardState>;

/// Reads how far a store's writes are durable, from any task (the replica loop's host).
#[derive(Clone)]
pub struct DurableIndex(Arc<Wal>);

impl DurableIndex {
    /// Every write whose WAL index is `<=` this is durable now.
    pub fn get(&self) -> u64 {
        self.0.durable_index()
    }
}

impl std::fmt::Debug for DurableIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DurableIndex").field(&self.get()).finish()
    }
}

impl<H: DurableState> LogStore<H> {
    /// Opens the data directory `dir` for `identity`, creating it if needed (then the group starts
    /// from `bootstrap`, its initial members, as `MemStorage::new_with_conf` does; ignored for an
    /// existing directory), and recovers snapshot, entries and hard state.
    ///
    /// Fails with [`StoreError::WrongProtocol`] / [`StoreError::WrongCluster`] /
    /// [`StoreError::WrongMember`] for another's
    /// directory, [`StoreError::Wal`] (`WalError::Corrupt` naming the segment and offset) for a
    /// damaged log (a torn tail of the last segment is cut off and reported in
    /// [`Recovery::wal`]), and `WalError::Locked` if another process has it open.
    pub fn open(
        dir: impl AsRef<Path>,
        identity: Identity,
        bootstrap: ConfState,
        options: StoreOptions,
    ) -> Result<Self> {
        Self::open_with_fs(Arc::new(StdFs), dir, identity, bootstrap, options)
    }

    /// [`open`](Self::open) through the given filesystem (a [`storage_wal::MemFs`] in crash tests).
    pub fn open_with_fs(
        fs: Arc<dyn FileSystem>,
        dir: impl AsRef<Path>,
        identity: Identity,
        bootstrap: ConfState,
        options: StoreOptions,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs.create_dir_all(&dir)
            .map_err(|e| StoreError::io("create directory", &dir, e))?;
        // A peer node's directory (node/src/peer/log.rs) refuses a consensus log the same way.
        if fs.list(&dir.join("peer-wal")).is_ok() {
            return Err(StoreError::PeerDataDir { dir });
        }
        if fs.list(&dir.join(SHARED_WAL_DIR)).is_ok() {
            return Err(StoreError::WrongLayout {
                dir,
                expected: "a single group's store (wal/)",
                found: "a node-wide shared log (shared-wal/)",
            });
        }
        snapfile::remove_tmp(fs.as_ref(), &dir)?;
        let wal_dir = dir.join(WAL_DIR);
        let wal = Wal::open_with_fs(fs.clone(), &wal_dir, options.wal.clone())?;
        let mut recovery = Recovery {
            wal: wal.recovery_report().clone(),
            ..Recovery::default()
        };
        let meta = match wal.metadata() {
            Some(bytes) => {
                check_identity(&dir, &identity, &decode_head(&wal_dir, &bytes)?)?;
                decode_meta(&wal_dir, &bytes)?
            }
            None => {
                if !wal.is_empty() || snapfile::exists(fs.as_ref(), &dir)? {
                    return Err(StoreError::Inconsistent {
                        dir,
                        reason: "the log holds records but no identity record".into(),
                    });
                }
                let meta = StoreMeta::new(
                    &identity,
                    wal.next_index(),
                    wal.next_index(),
                    Base::bootstrap(bootstrap),
                );
                wal.set_metadata(&encode_meta(&wal_dir, &meta)?)?;
                recovery.created = true;
                meta
            }
        };
        let (view, replayed) = replay(&dir, &wal, &meta)?;
        recovery.replayed_records = replayed;
        let wal = Arc::new(wal);
        let syncer = Arc::new(Syncer::start(wal.clone(), options.background_sync));
        let opened = Opened {
            fs,
            dir,
            wal_dir,
            identity,
            options,
            wal,
            syncer,
            view,
            recovery,
            checkpoint: (meta.checkpoint_end, meta.base.snapshot.index),
            lease: None,
        };
        opened.finish()
    }

    /// Opens a group of a shared log from its part of the log (see [`SharedLog::open_group`]).
    fn open_in_shared(
        lease: GroupLease,
        dir: PathBuf,
        identity: Identity,
        options: StoreOptions,
        log: GroupLog,
        created: bool,
    ) -> Result<Self> {
        let inner = lease.inner.clone();
        let wal_dir = inner.wal_dir.clone();
        let Some((checkpoint_at, replay_from, base)) = log.checkpoint else {
            return Err(StoreError::Inconsistent {
                dir,
                reason: format!("the shared log has no checkpoint of group {}", lease.group),
            });
        };
        let base: Base<H> = tagged::decode_base(&base).map_err(|e| StoreError::BadRecord {
            dir: wal_dir.clone(),
            wal_index: checkpoint_at,
            reason: e.to_string(),
        })?;
        check_base(&wal_dir, &base)?;
        let mut view = LogView::from_base(base.clone());
        let replayed = log.records.len() as u64;
        for (wal_index, body) in &log.records {
            if *wal_index < replay_from {
                continue;
            }
            let record = record::decode::<H>(body).map_err(|e| StoreError::BadRecord {
                dir: wal_dir.clone(),
                wal_index: *wal_index,
                reason: e.to_string(),
            })?;
            apply_record(&mut view, *wal_index, *wal_index < checkpoint_at, record).map_err(
                |reason| StoreError::Inconsistent {
                    dir: dir.clone(),
                    reason,
                },
            )?;
        }
        let opened = Opened {
            fs: inner.fs.clone(),
            dir,
            wal_dir,
            identity,
            options,
            wal: inner.wal.clone(),
            syncer: inner.syncer.clone(),
            view,
            recovery: Recovery {
                created,
                wal: inner.wal.recovery_report().clone(),
                replayed_records: replayed,
                snapshot_file_ahead: false,
            },
            checkpoint: (checkpoint_at, base.snapshot.index),
            lease: Some(lease),
        };
        opened.finish()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Who this directory belongs to.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// What open found and repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Counters since open (of the whole shared log, for a group of a [`SharedLog`]).
    pub fn stats(&self) -> StoreStats {
        let stats = self.wal.stats();
        StoreStats {
            records: stats.appended_records,
            bytes: stats.appended_bytes,
            syncs: stats.syncs,
        }
    }

    /// Starts writing `write` and returns the WAL index that must be durable before its token
    /// is confirmed (for a write with nothing to write, the last index submitted so far, so
    /// tokens still complete in order).
    ///
    /// The in-memory view (what [`Storage`] returns) reflects the write when this returns. Entries
    /// and hard state do not wait for the disk; an installed snapshot does (see the module docs).
    /// A write with `sync == false` does not wake the sync thread: the next synced write covers
    /// it. A write the log cannot take (entries out of order, at or below the snapshot) is
    /// refused with [`StoreError::Refused`] and nothing is written.
    pub fn submit(&mut self, write: &Write<H>) -> Result<u64> {
        self.syncer.check()?;
        let core = &self.core;
        // Held across the append: a shared log's rewrite of this group sees the view and the log
        // agree.
        let mut view = core.view.lock();
        view.check_write(write).map_err(StoreError::Refused)?;
        let staged = write.snapshot.as_ref().map(|snapshot| {
            let mut staged = view.clone();
            staged.install(&snapshot.meta);
            staged
        });
        let cuts = write
            .truncate_from
            .filter(|&from| staged.as_ref().unwrap_or(&view).truncation_cuts(from));
        // All records of the write are encoded into one reused buffer.
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        let mut ends = Vec::with_capacity(write.entries.len() + 3);
        let mut push = |record: RecordRef<'_, H>, buf: &mut Vec<u8>| -> Result<()> {
            core.encode(&record, buf)?;
            ends.push(buf.len());
            Ok(())
        };
        if let Some(snapshot) = &write.snapshot {
            push(RecordRef::InstallSnapshot(&snapshot.meta), &mut buf)?;
        }
        if let Some(from) = cuts {
            push(RecordRef::Truncate(from), &mut buf)?;
        }
        for entry in &write.entries {
            push(RecordRef::Entry(entry), &mut buf)?;
        }
        if let Some(hard_state) = &write.hard_state {
            push(RecordRef::HardState(hard_state), &mut buf)?;
        }
        if ends.is_empty() {
            self.encode_buf = buf;
            return Ok(self.wal.last_index());
        }
        if let Some(snapshot) = &write.snapshot {
            // Everything submitted before must be durable before the file claims the snapshot.
            self.wal.sync()?;
            // A local snapshot job may have written a later state of the same committed log.
            write_if_newer(&self.files, self.fs.as_ref(), &self.dir, snapshot)?;
            self.snapshot_data = snapshot.data.clone();
        }
        let records = ends.iter().scan(0, |start, &end| {
            let record = &buf[*start..end];
            *start = end;
            Some(record)
        });
        let appended = self.wal.append_batch(records);
        self.encode_buf = buf;
        let range = appended?;
        if let Some(staged) = staged {
            *view = staged;
        }
        if let Some(from) = cuts {
            view.truncate_from(from);
        }
        let first_entry_wal =
            range.start + u64::from(write.snapshot.is_some()) + u64::from(cuts.is_some());
        for (i, entry) in write.entries.iter().enumerate() {
            let stored = Stored {
                entry: entry.clone(),
                wal_index: first_entry_wal + i as u64,
            };
            view.put(stored).map_err(StoreError::Refused)?;
        }
        if let Some(hard_state) = &write.hard_state {
            view.hard_state = hard_state.clone();
        }
        drop(view);
        let last = range.end - 1;
        if write.sync {
            self.syncer.request(last);
        }
        Ok(last)
    }

    /// Writes `write` and returns once it is durable (submit, then wait), whatever its `sync`.
    pub fn write(&mut self, write: &Write<H>) -> Result<()> {
        let index = self.submit(write)?;
        self.wait_durable(index)?;
        Ok(())
    }

    /// Blocks until WAL index `index` (from [`submit`](Self::submit)) is durable, joining the
    /// group commit, and returns the durable WAL index.
    pub fn wait_durable(&self, index: u64) -> Result<u64> {
        self.syncer.check()?;
        let durable = self.wal.durable_index();
        if index <= durable {
            return Ok(durable);
        }
        let durable = self.wal.wait_durable(index)?;
        self.syncer.publish(durable);
        Ok(durable)
    }

    /// Makes everything submitted so far durable and returns the durable WAL index.
    pub fn sync(&self) -> Result<u64> {
        let durable = self.wal.sync()?;
        self.syncer.publish(durable);
        Ok(durable)
    }

    /// WAL index of the last record submitted (durable or not).
    pub fn submitted_index(&self) -> u64 {
        self.wal.last_index()
    }

    /// WAL index up to which writes are durable now.
    pub fn durable_index(&self) -> u64 {
        self.wal.durable_index()
    }

    /// A handle reading the durable WAL index from anywhere (cheap; no syscall).
    pub fn durable_handle(&self) -> DurableIndex {
        DurableIndex(self.wal.clone())
    }

    /// A channel on which the background sync thread publishes how far writes are durable
    /// (`changed().await` on it in the driver's event loop).
    pub fn subscribe_durable(&self) -> watch::Receiver<Durability> {
        self.syncer.subscribe()
    }

    /// Records a snapshot of the state machine at `index` (applied, with membership `conf_state`),
    /// writes it to the snapshot file, then compacts the log below `index + 1 - trailing_entries`.
    /// A no-op returning the current metadata if `index` is not past the latest snapshot. Blocks
    /// on one sync, the file write and the checkpoint: the blocking form of
    /// [`begin_snapshot`](Self::begin_snapshot) → [`SnapshotJob::write`] →
    /// [`finish_snapshot`](Self::finish_snapshot) → [`CheckpointJob::run`].
    pub fn save_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Bytes,
    ) -> Result<SnapshotMeta> {
        let Some(job) = self.begin_snapshot(index, conf_state)? else {
            return Ok(self.core.view.lock().snapshot.clone());
        };
        let written = job.write(data)?;
        let meta = written.meta().clone();
        match self.finish_snapshot(written)? {
            Some(checkpoint) => checkpoint.run()?,
            None => return Ok(self.core.view.lock().snapshot.clone()),
        }
        Ok(meta)
    }

    /// Starts saving a snapshot of the state machine at `index` (applied, with membership
    /// `conf_state`) without blocking: the returned job writes the file on whatever thread runs
    /// [`SnapshotJob::write`], and [`finish_snapshot`](Self::finish_snapshot) then adopts it.
    /// `None` if `index` is not past the latest snapshot. The entry at `index` must be in the log.
    ///
    /// Several jobs may be in flight; the file only ever moves forward (a job older than the file
    /// writes nothing), and a snapshot installed from a leader meanwhile wins over an older job.
    pub fn begin_snapshot(&self, index: u64, conf_state: ConfState) -> Result<Option<SnapshotJob>> {
        self.syncer.check()?;
        let view = self.core.view.lock();
        if index <= view.snapshot.index {
            return Ok(None);
        }
        let stored = view
            .get(index)
            .ok_or(StoreError::Refused(StorageError::Unavailable(index)))?;
        Ok(Some(SnapshotJob {
            meta: SnapshotMeta {
                index,
                term: stored.entry.term,
                conf_state,
            },
            // Every record up to now: the file must not claim entries or a hard state that
            // could still be lost.
            durable_before: self.wal.last_index(),
            wal: self.wal.clone(),
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            files: self.files.clone(),
        }))
    }

    /// Adopts a snapshot written by a [`SnapshotJob`]: serves it to followers from now on, drops
    /// entries below `index + 1 - trailing_entries` from memory and returns the checkpoint to
    /// record (on any thread) before the log's segments below the first kept entry are deleted.
    /// `None` (nothing to do) if a newer snapshot was installed or adopted meanwhile.
    pub fn finish_snapshot(&mut self, written: WrittenSnapshot) -> Result<Option<CheckpointJob>> {
        self.syncer.check()?;
        let snapshot = written.snapshot;
        let core = &self.core;
        let mut view = core.view.lock();
        if snapshot.meta.index <= view.snapshot.index {
            return Ok(None);
        }
        let meta = view
            .compact(
                snapshot.meta.index,
                snapshot.meta.conf_state.clone(),
                self.options.trailing_entries,
            )
            .map_err(StoreError::Refused)?;
        debug_assert_eq!(meta, snapshot.meta);
        self.snapshot_data = snapshot.data;
        // Checkpoint: replay starts at the first kept entry's record, from the state as of now.
        let next = self.wal.next_index();
        let replay_from = view.oldest_record().map_or(next, |oldest| oldest.min(next));
        let (target, checkpoint_end) = match &self.lease {
            None => {
                let store_meta = StoreMeta::new(&self.identity, replay_from, next, view.base());
                (
                    CheckpointTarget::Meta(encode_meta(&core.wal_dir, &store_meta)?),
                    next,
                )
            }
            Some(lease) => {
                // A checkpoint record in the shared log, after every record of the group it
                // covers; it counts once durable.
                let encoded = tagged::encode_checkpoint(lease.group, replay_from, &view.base())
                    .map_err(|e| lease.inner.bad_record(next, e))?;
                let at = self.wal.append(&encoded)?;
                (
                    CheckpointTarget::Shared {
                        inner: lease.inner.clone(),
                        group: lease.group,
                    },
                    at + 1,
                )
            }
        };
        Ok(Some(CheckpointJob {
            target,
            replay_from,
            checkpoint_end,
            index: meta.index,
            wal: self.wal.clone(),
            files: self.files.clone(),
        }))
    }

    /// Syncs everything and closes the store, reporting any error.
    pub fn close(self) -> Result<()> {
        self.syncer.check()?;
        self.wal.sync()?;
        Ok(())
    }
}

/// A store's parts once its log is replayed, before the snapshot file is checked against it.
struct Opened<H> {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    wal_dir: PathBuf,
    identity: Identity,
    options: StoreOptions,
    wal: Arc<Wal>,
    syncer: Arc<Syncer>,
    view: LogView<H>,
    recovery: Recovery,
    checkpoint: (u64, u64),
    lease: Option<GroupLease>,
}

impl<H: DurableState> Opened<H> {
    fn finish(self) -> Result<LogStore<H>> {
        let Opened {
            fs,
            dir,
            wal_dir,
            identity,
            options,
            wal,
            syncer,
            view,
            mut recovery,
            checkpoint,
            lease,
        } = self;
        let snapshot_file = snapfile::read(fs.as_ref(), &dir)?;
        let (view, snapshot_data) = reconcile_snapshot(&dir, view, snapshot_file, &mut recovery)?;
        let core = Arc::new(Core {
            view: parking_lot::Mutex::new(view),
            wal: wal.clone(),
            wal_dir,
            tag: lease.as_ref().map(|lease| lease.group),
        });
        let view = core.view.lock();
        if recovery.snapshot_file_ahead {
            // Complete the interrupted install: log it, or the entries written after it would
            // follow a gap at the next replay.
            let mut marker = Vec::new();
            core.encode(&RecordRef::InstallSnapshot(&view.snapshot), &mut marker)?;
            wal.append(&marker)?;
            wal.sync()?;
        }
        let files = Arc::new(parking_lot::Mutex::new(Files {
            snapshot_index: view.snapshot.index,
            checkpoint,
        }));
        tracing::info!(
            dir = %dir.display(),
            group = identity.group_id,
            first_index = view.first,
            last_index = view.last_index(),
            snapshot_index = view.snapshot.index,
            hard_state = ?view.hard_state,
            replayed = recovery.replayed_records,
            torn_tail = recovery.wal.torn_tail.is_some(),
            "store opened"
        );
        drop(view);
        if let Some(lease) = &lease {
            let weak: std::sync::Weak<dyn Rewrite> = Arc::downgrade(&core) as _;
            lease.register(weak);
        }
        Ok(LogStore {
            fs,
            dir,
            identity,
            options,
            wal,
            core,
            files,
            snapshot_data,
            encode_buf: Vec::new(),
            syncer,
            recovery,
            lease,
        })
    }
}

/// What the snapshot file and the WAL's checkpoint record hold; both only move forward.
#[derive(Debug)]
struct Files {
    snapshot_index: u64,
    /// `(checkpoint_end, snapshot index)` of the recorded checkpoint.
    checkpoint: (u64, u64),
}

/// Durably replaces the snapshot file with `snapshot` unless the file already holds a later one:
/// the file only moves forward, whichever of a leader's install and a local job writes last.
fn write_if_newer(
    files: &parking_lot::Mutex<Files>,
    fs: &dyn FileSystem,
    dir: &Path,
    snapshot: &Snapshot,
) -> Result<()> {
    let mut files = files.lock();
    if snapshot.meta.index > files.snapshot_index {
        snapfile::write(fs, dir, snapshot)?;
        files.snapshot_index = snapshot.meta.index;
    }
    Ok(())
}

/// A local snapshot to write off the caller's thread: from [`RaftStore::begin_snapshot`].
#[must_use = "a snapshot job does nothing until written"]
pub struct SnapshotJob {
    meta: SnapshotMeta,
    durable_before: u64,
    wal: Arc<Wal>,
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    files: Arc<parking_lot::Mutex<Files>>,
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("meta", &self.meta)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SnapshotJob {
    /// The metadata the snapshot will carry.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Waits until every record submitted before the job began is durable, then durably replaces
    /// the snapshot file with `data` (the state machine at the job's index), unless the file
    /// already holds a later snapshot. Blocking: run it on a thread that may block.
    pub fn write(self, data: Bytes) -> Result<WrittenSnapshot> {
        if self.durable_before > self.wal.durable_index() {
            self.wal.wait_durable(self.durable_before)?;
        }
        let snapshot = Snapshot {
            meta: self.meta,
            data,
        };
        write_if_newer(&self.files, self.fs.as_ref(), &self.dir, &snapshot)?;
        Ok(WrittenSnapshot { snapshot })
    }
}

/// A snapshot on disk, for [`RaftStore::finish_snapshot`].
#[derive(Debug)]
pub struct WrittenSnapshot {
    snapshot: Snapshot,
}

impl WrittenSnapshot {
    /// The snapshot's metadata.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.snapshot.meta
    }
}

/// Where a checkpoint goes.
enum CheckpointTarget {
    /// A store with its own log: the log's metadata record (encoded), replaced.
    Meta(Vec<u8>),
    /// A group of a shared log: its checkpoint record is in the log; once durable it raises the
    /// group's replay point.
    Shared {
        inner: Arc<shared::SharedInner>,
        group: u64,
    },
}

impl std::fmt::Debug for CheckpointTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointTarget::Meta(encoded) => write!(f, "Meta({} bytes)", encoded.len()),
            CheckpointTarget::Shared { group, .. } => write!(f, "Shared(group {group})"),
        }
    }
}

/// The checkpoint that follows an adopted snapshot, from [`RaftStore::finish_snapshot`].
#[derive(Debug)]
#[must_use = "the log is not compacted until the checkpoint runs"]
pub struct CheckpointJob {
    target: CheckpointTarget,
    replay_from: u64,
    checkpoint_end: u64,
    index: u64,
    wal: Arc<Wal>,
    files: Arc<parking_lot::Mutex<Files>>,
}

impl CheckpointJob {
    /// Waits until the records the checkpoint covers are durable, records it in the WAL's
    /// metadata, then deletes the segments wholly below the first kept entry. Blocking; appends
    /// from other threads continue meanwhile. An older checkpoint than the one recorded is
    /// skipped (the log never goes back to needing records it deleted).
    pub fn run(self) -> Result<()> {
        if self.checkpoint_end > 0 && self.checkpoint_end - 1 > self.wal.durable_index() {
            self.wal.wait_durable(self.checkpoint_end - 1)?;
        }
        let mut files = self.files.lock();
        let this = (self.checkpoint_end, self.index);
        if this <= files.checkpoint {
            return Ok(());
        }
        match self.target {
            CheckpointTarget::Meta(encoded) => {
                self.wal.set_metadata(&encoded)?;
                files.checkpoint = this;
                drop(files);
                self.wal.compact(self.replay_from)?;
            }
            CheckpointTarget::Shared { inner, group } => {
                files.checkpoint = this;
                drop(files);
                inner.advance(group, self.replay_from)?;
            }
        }
        tracing::debug!(
            index = self.index,
            replay_from = self.replay_from,
            "checkpoint recorded, log compacted"
        );
        Ok(())
    }
}

impl<H: DurableState> Storage for LogStore<H> {
    type HardState = H;

    fn hard_state(&self) -> H {
        self.core.view.lock().hard_state.clone()
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.core.view.lock().snapshot.clone()
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(Snapshot {
            meta: self.core.view.lock().snapshot.clone(),
            data: self.snapshot_data.clone(),
        })
    }

    fn first_index(&self) -> u64 {
        self.core.view.lock().first
    }

    fn last_index(&self) -> u64 {
        self.core.view.lock().last_index()
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.core.view.lock().term(index)
    }

    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        if lo >= hi {
            return Ok(());
        }
        let view = self.core.view.lock();
        if lo < view.first {
            return Err(StorageError::Compacted(lo));
        }
        if hi > view.last_index() + 1 {
            return Err(StorageError::Unavailable(hi - 1));
        }
        let mut bytes = 0u64;
        for (taken, stored) in view.range(lo, hi).enumerate() {
            bytes += stored.entry.payload_size();
            if bytes > max_bytes && taken > 0 {
                break;
            }
            out.push(stored.entry.clone());
        }
        Ok(())
    }
}

fn encode_meta<H: DurableState>(wal_dir: &Path, meta: &StoreMeta<H>) -> Result<Vec<u8>> {
    meta.encode()
        .map_err(|e| StoreError::corrupt(wal_dir.join("meta"), format!("cannot encode: {e}")))
}

fn meta_error(path: &Path, error: MetaDecodeError) -> StoreError {
    match error {
        MetaDecodeError::NotStore => {
            StoreError::corrupt(path, "the log's metadata is not a Quorate store identity")
        }
        MetaDecodeError::Version(found) => StoreError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: record::FORMAT_VERSION,
        },
        MetaDecodeError::Bad(reason) => StoreError::corrupt(path, reason),
    }
}

fn decode_head(wal_dir: &Path, bytes: &[u8]) -> Result<MetaHead> {
    record::decode_head(bytes).map_err(|e| meta_error(&wal_dir.join("meta"), e))
}

fn decode_meta<H: DurableState>(wal_dir: &Path, bytes: &[u8]) -> Result<StoreMeta<H>> {
    let path = wal_dir.join("meta");
    let meta: StoreMeta<H> = StoreMeta::decode(bytes).map_err(|e| meta_error(&path, e))?;
    check_base(wal_dir, &meta.base)?;
    Ok(meta)
}

fn check_base<H>(wal_dir: &Path, base: &Base<H>) -> Result<()> {
    if base.first == 0 || base.first > base.snapshot.index.saturating_add(1) {
        return Err(StoreError::corrupt(
            wal_dir.join("meta"),
            format!(
                "checkpoint keeps entries from {} but its snapshot is at {}",
                base.first, base.snapshot.index
            ),
        ));
    }
    Ok(())
}

fn check_identity(dir: &Path, identity: &Identity, meta: &MetaHead) -> Result<()> {
    check_owner(
        dir,
        identity,
        &meta.protocol,
        &meta.cluster_id,
        meta.node_id,
        meta.group_id,
    )
}

/// Refuses a directory recorded for another protocol, cluster, node or group than `identity`
/// (the single-group store's metadata and the shared log's both name their owner).
fn check_owner(
    dir: &Path,
    identity: &Identity,
    protocol: &str,
    cluster_id: &str,
    node_id: NodeId,
    group_id: u64,
) -> Result<()> {
    if protocol != identity.protocol {
        return Err(StoreError::WrongProtocol {
            dir: dir.to_path_buf(),
            expected: identity.protocol.clone(),
            found: protocol.to_string(),
        });
    }
    if cluster_id != identity.cluster_id {
        return Err(StoreError::WrongCluster {
            dir: dir.to_path_buf(),
            expected: identity.cluster_id.clone(),
            found: cluster_id.to_string(),
        });
    }
    if node_id != identity.node_id || group_id != identity.group_id {
        return Err(StoreError::WrongMember {
            dir: dir.to_path_buf(),
            expected_node: identity.node_id,
            expected_group: identity.group_id,
            found_node: node_id,
            found_group: group_id,
        });
    }
    Ok(())
}

/// Rebuilds the view: the checkpoint's base, then the log's records from `replay_from`. Records
/// before `checkpoint_end` predate the checkpoint: only their entries are replayed (the base
/// already holds the hard state and snapshot of that time).
fn replay<H: DurableState>(
    dir: &Path,
    wal: &Wal,
    meta: &StoreMeta<H>,
) -> Result<(LogView<H>, u64)> {
    let wal_dir = dir.join(WAL_DIR);
    let inconsistent = |reason: String| StoreError::Inconsistent {
        dir: dir.to_path_buf(),
        reason,
    };
    if meta.replay_from < wal.first_index() {
        return Err(inconsistent(format!(
            "the log starts at record {} but replay must start at record {}",
            wal.first_index(),
            meta.replay_from
        )));
    }
    if meta.checkpoint_end < meta.replay_from || meta.checkpoint_end > wal.next_index() {
        return Err(inconsistent(format!(
            "checkpoint ends at record {} outside records {}..{} of the log",
            meta.checkpoint_end,
            meta.replay_from,
            wal.next_index()
        )));
    }
    let mut view = LogView::from_base(meta.base.clone());
    let end = wal.next_index();
    let mut wal_index = meta.replay_from;
    while wal_index < end {
        for bytes in wal.read_range(wal_index..end, REPLAY_READ_BYTES)? {
            let record = record::decode::<H>(&bytes).map_err(|e| StoreError::BadRecord {
                dir: wal_dir.clone(),
                wal_index,
                reason: e.to_string(),
            })?;
            apply_record(
                &mut view,
                wal_index,
                wal_index < meta.checkpoint_end,
                record,
            )
            .map_err(inconsistent)?;
            wal_index += 1;
        }
    }
    Ok((view, end - meta.replay_from))
}

/// Replays one record into `view`. A record from before the checkpoint the view started from
/// only contributes its entries and truncations (the checkpoint holds the hard state and
/// snapshot of its time), and entries the checkpoint compacted away are skipped.
fn apply_record<H: DurableState>(
    view: &mut LogView<H>,
    wal_index: u64,
    before_checkpoint: bool,
    record: Record<H>,
) -> std::result::Result<(), String> {
    match record {
        Record::Entry(entry) if before_checkpoint && entry.index < view.first => {}
        Record::Entry(entry) => {
            let index = entry.index;
            view.put(Stored { entry, wal_index })
                .map_err(|e| format!("log record {wal_index}: entry {index}: {e}"))?;
        }
        Record::Truncate(from) => view.truncate_from(from),
        Record::HardState(_) | Record::InstallSnapshot(_) if before_checkpoint => {}
        Record::HardState(hard_state) => view.hard_state = hard_state,
        Record::InstallSnapshot(snapshot) => view.install(&snapshot),
    }
    Ok(())
}

/// Checks the snapshot file against the replayed view; installs it if it is ahead (a crash
/// between writing the file and logging it).
fn reconcile_snapshot<H: DurableState>(
    dir: &Path,
    mut view: LogView<H>,
    file: Option<Snapshot>,
    recovery: &mut Recovery,
) -> Result<(LogView<H>, Bytes)> {
    let inconsistent = |reason: String| StoreError::Inconsistent {
        dir: dir.to_path_buf(),
        reason,
    };
    match file {
        None if view.snapshot.index == 0 => Ok((view, Bytes::new())),
        None => Err(inconsistent(format!(
            "the log records a snapshot at index {} but {} is missing",
            view.snapshot.index,
            snapfile::path(dir).display()
        ))),
        Some(snapshot) if snapshot.meta == view.snapshot => Ok((view, snapshot.data)),
        // The file is written only once every earlier record is durable, so it is never older
        // than what the log says: if they differ, the record logging it was lost.
        Some(snapshot) if snapshot.meta.index >= view.snapshot.index => {
            view.install(&snapshot.meta);
            recovery.snapshot_file_ahead = true;
            Ok((view, snapshot.data))
        }
        Some(snapshot) => Err(inconsistent(format!(
            "{} holds the snapshot at index {} term {}, but the log records the snapshot at \
             index {} term {}",
            snapfile::path(dir).display(),
            snapshot.meta.index,
            snapshot.meta.term,
            view.snapshot.index,
            view.snapshot.term
        ))),
    }
}
