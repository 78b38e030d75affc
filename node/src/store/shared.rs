//! One write-ahead log per node shared by every replication group on it ([`SharedLog`]), as
//! TiKV's raft-engine and Dragonboat's per-node log do: one lock, one sync thread, and one
//! `fdatasync` per round covering every group's records of that round.
//!
//! # On disk
//! ```text
//! <data dir>/
//!   shared-wal/     storage-wal directory: segments, `meta` (the node's identity), lock file
//!   groups/<g>/snapshot   group g's latest snapshot (as a single group's store keeps it)
//! ```
//! Every record is an envelope tagged with its group (see `tagged`): a group's log records,
//! exactly as a single group's store writes them, and the group's *checkpoint records*. A
//! checkpoint record holds the group's state as of that point in the log (snapshot metadata,
//! first kept index, term before it, hard state) and the group's *replay point*: the first WAL
//! index holding a record it still needs (its oldest live entry). A group is created by its
//! first checkpoint record (its bootstrap state) and writes one after every local snapshot; the
//! last one in the log wins. The metadata record only names the node (protocol, cluster, node),
//! written once: a checkpoint never rewrites a node-wide map, so its cost does not grow with
//! the number of groups.
//!
//! # Recovery
//! [`SharedLog::open`] reads the log once from its first record and splits it by group: for
//! each group the last checkpoint and the records from its replay point on (records before the
//! checkpoint contribute only their entries and truncations, as in a single group's store).
//! [`SharedLog::open_group`] then hands a group its records; the group's [`LogStore`] replays
//! them into its in-memory view.
//!
//! # Compaction
//! A group's checkpoint record, once durable, raises the group's replay point; the log then
//! deletes the whole segments below the *minimum* replay point over all groups. A group that
//! never snapshots (an idle group) would pin the log forever: [`SharedLog::compact`] (also run
//! after every checkpoint) *rewrites* each group whose replay point is more than
//! [`SharedOptions::rewrite_after_records`] records behind the end of the log — a checkpoint
//! record of its current state followed by copies of its live entries, at the end of the log —
//! which moves its replay point to the end. Its cost is the group's live entries, which the
//! driver's snapshot interval bounds. Only open groups are rewritten: a group found at open but
//! not opened since pins the log until it is (a node opens all its groups at start).
//!
//! # Durability
//! Tokens are the shared log's WAL indexes: a group's write is durable once the shared durable
//! index (published by the one sync thread on every group's
//! [`LogStore::subscribe_durable`]) reaches the index its `submit` returned. One sync covers
//! every record appended before it, whatever its group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use consensus_core::{ConfState, DurableState};
use storage_wal::{FileSystem, RecoveryReport, StdFs, Wal};
use tokio::sync::watch;

use super::error::{Result, StoreError};
use super::syncer::Syncer;
use super::tagged::{self, Kind, SharedMeta, SharedMetaError};
use super::view::Base;
use super::{snapfile, Durability, Identity, LogStore, StoreOptions, StoreStats};

/// Name of the shared write-ahead log's directory inside a data directory.
pub const SHARED_WAL_DIR: &str = "shared-wal";
/// Directory of the groups' snapshot files inside a data directory.
pub const GROUPS_DIR: &str = "groups";

/// How a shared log is opened.
#[derive(Debug, Clone)]
pub struct SharedOptions {
    /// Options of the underlying log (segment size, group-commit delay, recovery mode).
    pub wal: storage_wal::Options,
    /// Run the background sync thread (default); see [`StoreOptions::background_sync`].
    pub background_sync: bool,
    /// A group whose replay point is more than this many records behind the end of the log is
    /// rewritten at the end by [`SharedLog::compact`], so it no longer pins older segments.
    /// Default 1 Mi records.
    pub rewrite_after_records: u64,
}

impl Default for SharedOptions {
    fn default() -> Self {
        SharedOptions {
            wal: storage_wal::Options::default(),
            background_sync: true,
            rewrite_after_records: 1 << 20,
        }
    }
}

/// A node's write-ahead log shared by all its groups; each group's [`LogStore`] comes from
/// [`open_group`](Self::open_group). Cheap to clone.
///
/// On disk: `<dir>/shared-wal/` (the log; its metadata names the node) and
/// `<dir>/groups/<g>/snapshot`. Records are tagged with their group; each group's checkpoint
/// (snapshot metadata, first kept index, hard state, replay point) is a record in the log, the
/// last one winning. Open reads the log once and splits it by group. Segments are deleted below
/// the minimum replay point over all groups once checkpoints are durable; a group whose replay
/// point falls [`SharedOptions::rewrite_after_records`] behind the end (an idle group that never
/// snapshots) is rewritten at the end — a checkpoint and copies of its live entries — so it does
/// not pin the log. Tokens are this log's WAL indexes; one sync covers every group.
///
/// ```
/// use consensus_core::{ConfState, HardState, Storage, Write};
/// use node::store::{Identity, RaftStore, SharedLog, SharedOptions, StoreOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let identity = |group_id| Identity { protocol: "raft".into(), cluster_id: "example".into(), node_id: 1, group_id };
/// let shared = SharedLog::open(dir.path(), SharedOptions::default())?;
/// let mut one: RaftStore = shared.open_group(identity(1), ConfState::with_voters([1]), StoreOptions::default())?;
/// let mut two: RaftStore = shared.open_group(identity(2), ConfState::with_voters([1]), StoreOptions::default())?;
/// let vote = |term| Write { snapshot: None, truncate_from: None, entries: Vec::new().into(),
///     hard_state: Some(HardState { term, vote: 1, commit: 0 }), sync: true };
/// let a = one.submit(&vote(3))?;
/// let b = two.submit(&vote(5))?;
/// // One sync covers both groups' records.
/// two.wait_durable(a.max(b))?;
/// drop((one, two, shared));
/// let shared = SharedLog::open(dir.path(), SharedOptions::default())?;
/// assert_eq!(shared.groups(), vec![1, 2]);
/// let two: RaftStore = shared.open_group(identity(2), ConfState::default(), StoreOptions::default())?;
/// assert_eq!(two.hard_state().term, 5);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedLog {
    inner: Arc<SharedInner>,
}

impl std::fmt::Debug for SharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLog")
            .field("dir", &self.inner.dir)
            .field("wal", &self.inner.wal)
            .finish_non_exhaustive()
    }
}

pub(crate) struct SharedInner {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) dir: PathBuf,
    pub(crate) wal_dir: PathBuf,
    pub(crate) wal: Arc<Wal>,
    pub(crate) syncer: Arc<Syncer>,
    options: SharedOptions,
    state: parking_lot::Mutex<State>,
    /// Serialises compactions (and the rewrites they start).
    compacting: parking_lot::Mutex<()>,
}

struct State {
    node: Option<SharedMeta>,
    groups: BTreeMap<u64, Slot>,
}

struct Slot {
    /// Replay point of the group's last durable checkpoint: the log keeps every record from the
    /// minimum of these on.
    replay_from: u64,
    /// The group's open store, to rewrite it (see the module docs); `None` while closed.
    open: Option<Weak<dyn Rewrite>>,
    /// Whether a store of the group is open.
    in_use: bool,
    /// The group's records found at open, until the group is first opened.
    recovered: Option<GroupLog>,
}

/// An open group's store as the shared log sees it: what a rewrite needs.
pub(crate) trait Rewrite: Send + Sync {
    /// Appends a checkpoint of the group's current state and copies of its live entries at the
    /// end of the log; returns the new replay point and the index of the last record appended.
    fn rewrite(&self) -> Result<Option<(u64, u64)>>;
}

/// One group's part of the log, as recovery found it.
#[derive(Debug, Default)]
pub(crate) struct GroupLog {
    /// The last checkpoint: (its WAL index, replay point, encoded base).
    pub(crate) checkpoint: Option<(u64, u64, Vec<u8>)>,
    /// Bodies of the group's log records from the replay point on, with their WAL indexes.
    pub(crate) records: Vec<(u64, Vec<u8>)>,
}

/// Held by a group's store: marks the group closed when the store goes.
pub(crate) struct GroupLease {
    pub(crate) inner: Arc<SharedInner>,
    pub(crate) group: u64,
}

impl Drop for GroupLease {
    fn drop(&mut self) {
        if let Some(slot) = self.inner.state.lock().groups.get_mut(&self.group) {
            slot.in_use = false;
            slot.open = None;
        }
    }
}

impl GroupLease {
    /// Registers the open store for rewrites.
    pub(crate) fn register(&self, store: Weak<dyn Rewrite>) {
        if let Some(slot) = self.inner.state.lock().groups.get_mut(&self.group) {
            slot.open = Some(store);
        }
    }
}

impl SharedLog {
    /// Opens (creating if needed) the shared log of the data directory `dir` and reads it once,
    /// splitting it by group. Fails with [`StoreError::WrongLayout`] for a directory holding a
    /// single group's store, [`StoreError::PeerDataDir`] for a peer node's, [`StoreError::Wal`]
    /// (`WalError::Corrupt` naming the segment and offset) for a damaged log, and
    /// `WalError::Locked` if another process has it open.
    pub fn open(dir: impl AsRef<Path>, options: SharedOptions) -> Result<SharedLog> {
        Self::open_with_fs(Arc::new(StdFs), dir, options)
    }

    /// [`open`](Self::open) through the given filesystem (a [`storage_wal::MemFs`] in crash tests).
    pub fn open_with_fs(
        fs: Arc<dyn FileSystem>,
        dir: impl AsRef<Path>,
        options: SharedOptions,
    ) -> Result<SharedLog> {
        let dir = dir.as_ref().to_path_buf();
        fs.create_dir_all(&dir)
            .map_err(|e| StoreError::io("create directory", &dir, e))?;
        if fs.list(&dir.join("peer-wal")).is_ok() {
            return Err(StoreError::PeerDataDir { dir });
        }
        if fs.list(&dir.join(super::WAL_DIR)).is_ok() {
            return Err(StoreError::WrongLayout {
                dir,
                expected: "a node-wide shared log (shared-wal/)",
                found: "a single group's store (wal/)",
            });
        }
        let wal_dir = dir.join(SHARED_WAL_DIR);
        let wal = Wal::open_with_fs(fs.clone(), &wal_dir, options.wal.clone())?;
        let meta_path = wal_dir.join("meta");
        let node = match wal.metadata() {
            Some(bytes) => Some(SharedMeta::decode(&bytes).map_err(|e| match e {
                SharedMetaError::NotShared => StoreError::corrupt(
                    &meta_path,
                    "the log's metadata is not a Quorate shared-log identity",
                ),
                SharedMetaError::Version(found) => StoreError::UnsupportedVersion {
                    path: meta_path.clone(),
                    found,
                    supported: super::record::FORMAT_VERSION,
                },
                SharedMetaError::Bad(reason) => StoreError::corrupt(&meta_path, reason),
            })?),
            None if !wal.is_empty() => {
                return Err(StoreError::Inconsistent {
                    dir,
                    reason: "the shared log holds records but no identity record".into(),
                })
            }
            None => None,
        };
        let found = scan(&wal, &wal_dir, None)?;
        let mut groups = BTreeMap::new();
        for (group, log) in found {
            let Some((at, replay_from, _)) = &log.checkpoint else {
                return Err(StoreError::Inconsistent {
                    dir,
                    reason: format!(
                        "the shared log holds records of group {group} but no checkpoint of it"
                    ),
                });
            };
            if *replay_from < wal.first_index() || replay_from > at {
                return Err(StoreError::Inconsistent {
                    dir,
                    reason: format!(
                        "group {group}'s checkpoint (record {at}) replays from record \
                         {replay_from}, but the log starts at record {}",
                        wal.first_index()
                    ),
                });
            }
            groups.insert(
                group,
                Slot {
                    replay_from: *replay_from,
                    open: None,
                    in_use: false,
                    recovered: Some(log),
                },
            );
        }
        let wal = Arc::new(wal);
        let syncer = Arc::new(Syncer::start(wal.clone(), options.background_sync));
        tracing::info!(
            dir = %dir.display(),
            groups = groups.len(),
            records = wal.recovery_report().records,
            "shared log opened"
        );
        Ok(SharedLog {
            inner: Arc::new(SharedInner {
                fs,
                dir,
                wal_dir,
                wal,
                syncer,
                options,
                state: parking_lot::Mutex::new(State { node, groups }),
                compacting: parking_lot::Mutex::new(()),
            }),
        })
    }

    /// Opens the store of group `identity.group_id`, creating the group if the log has none
    /// (starting from `bootstrap`, ignored for an existing group). The store has the same API
    /// and durability contract as one opened by [`LogStore::open`]; its WAL indexes are the
    /// shared log's. Of `options` only `trailing_entries` applies (log options are the shared
    /// log's).
    ///
    /// Fails with [`StoreError::WrongProtocol`] / [`StoreError::WrongCluster`] /
    /// [`StoreError::WrongMember`] if the log belongs to another protocol, cluster or node,
    /// [`StoreError::GroupInUse`] if the group is open already, and
    /// [`StoreError::WrongLayout`] if the group's directory holds a log of its own.
    pub fn open_group<H: DurableState>(
        &self,
        identity: Identity,
        bootstrap: ConfState,
        options: StoreOptions,
    ) -> Result<LogStore<H>> {
        let inner = &self.inner;
        let group = identity.group_id;
        let group_dir = inner.group_dir(group);
        let mut st = inner.state.lock();
        match &st.node {
            Some(meta) => check_node(&inner.dir, &identity, meta)?,
            None => {
                let meta = SharedMeta::new(&identity);
                let encoded = meta.encode().map_err(|e| {
                    StoreError::corrupt(inner.wal_dir.join("meta"), format!("cannot encode: {e}"))
                })?;
                inner.wal.set_metadata(&encoded)?;
                st.node = Some(meta);
            }
        }
        if st.groups.get(&group).is_some_and(|slot| slot.in_use) {
            return Err(StoreError::GroupInUse {
                dir: inner.dir.clone(),
                group,
            });
        }
        let fs = inner.fs.as_ref();
        fs.create_dir_all(&group_dir)
            .map_err(|e| StoreError::io("create directory", &group_dir, e))?;
        if fs.list(&group_dir.join(super::WAL_DIR)).is_ok() {
            return Err(StoreError::WrongLayout {
                dir: group_dir,
                expected: "a group of the node's shared log (snapshot only)",
                found: "a group store with its own log (wal/)",
            });
        }
        snapfile::remove_tmp(fs, &group_dir)?;
        let (log, created) = match st.groups.get_mut(&group) {
            Some(slot) => match slot.recovered.take() {
                Some(log) => (log, false),
                // Opened before in this process: read its part of the log again.
                None => (
                    scan(&inner.wal, &inner.wal_dir, Some(group))?
                        .remove(&group)
                        .unwrap_or_default(),
                    false,
                ),
            },
            None => {
                if snapfile::exists(fs, &group_dir)? {
                    return Err(StoreError::Inconsistent {
                        dir: group_dir,
                        reason: format!("a snapshot file but the shared log has no group {group}"),
                    });
                }
                let base = Base::<H>::bootstrap(bootstrap);
                let replay_from = inner.wal.next_index();
                let encoded = tagged::encode_checkpoint(group, replay_from, &base)
                    .map_err(|e| inner.bad_record(replay_from, e))?;
                let at = inner.wal.append(&encoded)?;
                inner.wal.sync()?;
                st.groups.insert(
                    group,
                    Slot {
                        replay_from,
                        open: None,
                        in_use: false,
                        recovered: None,
                    },
                );
                let base = postcard::to_allocvec(&base).map_err(|e| inner.bad_record(at, e))?;
                (
                    GroupLog {
                        checkpoint: Some((at, replay_from, base)),
                        records: Vec::new(),
                    },
                    true,
                )
            }
        };
        let slot = st.groups.get_mut(&group).expect("inserted above");
        slot.in_use = true;
        drop(st);
        let lease = GroupLease {
            inner: inner.clone(),
            group,
        };
        LogStore::open_in_shared(lease, group_dir, identity, options, log, created)
    }

    /// The groups the log holds (created, and not lost to a crash before their creation was
    /// durable), in order: what a restarted node opens.
    pub fn groups(&self) -> Vec<u64> {
        self.inner.state.lock().groups.keys().copied().collect()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What opening the log found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.inner.wal.recovery_report()
    }

    /// Every write whose WAL index is `<=` this is durable, whatever its group.
    pub fn durable_index(&self) -> u64 {
        self.inner.wal.durable_index()
    }

    /// The sync thread's channel (the same every group's store subscribes to).
    pub fn subscribe_durable(&self) -> watch::Receiver<Durability> {
        self.inner.syncer.subscribe()
    }

    /// Makes everything appended so far durable, returning the durable WAL index.
    pub fn sync(&self) -> Result<u64> {
        let durable = self.inner.wal.sync()?;
        self.inner.syncer.publish(durable);
        Ok(durable)
    }

    /// Counters of the shared log since open (every group's records and syncs).
    pub fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    /// WAL index of the first record kept (segments below every group's replay point go).
    pub fn first_index(&self) -> u64 {
        self.inner.wal.first_index()
    }

    /// Rewrites the open groups whose replay point lies more than
    /// [`SharedOptions::rewrite_after_records`] behind the end of the log (see the module docs),
    /// waits for the rewrites to be durable and deletes the segments below the minimum replay
    /// point. Runs after every checkpoint too; blocking. Returns how many groups it rewrote.
    pub fn compact(&self) -> Result<usize> {
        self.inner.compact()
    }
}

impl SharedInner {
    pub(crate) fn group_dir(&self, group: u64) -> PathBuf {
        self.dir.join(GROUPS_DIR).join(group.to_string())
    }

    pub(crate) fn bad_record(&self, wal_index: u64, error: postcard::Error) -> StoreError {
        StoreError::BadRecord {
            dir: self.wal_dir.clone(),
            wal_index,
            reason: format!("cannot encode: {error}"),
        }
    }

    pub(crate) fn stats(&self) -> StoreStats {
        let stats = self.wal.stats();
        StoreStats {
            records: stats.appended_records,
            bytes: stats.appended_bytes,
            syncs: stats.syncs,
        }
    }

    /// A durable checkpoint of `group` replays from `replay_from`: raise its replay point and
    /// compact.
    pub(crate) fn advance(&self, group: u64, replay_from: u64) -> Result<()> {
        if let Some(slot) = self.state.lock().groups.get_mut(&group) {
            slot.replay_from = slot.replay_from.max(replay_from);
        }
        self.compact().map(drop)
    }

    fn compact(&self) -> Result<usize> {
        let _compacting = self.compacting.lock();
        let behind = self
            .wal
            .next_index()
            .saturating_sub(self.options.rewrite_after_records);
        let pinning: Vec<(u64, Arc<dyn Rewrite>)> = self
            .state
            .lock()
            .groups
            .iter()
            .filter(|(_, slot)| slot.replay_from < behind)
            .filter_map(|(&group, slot)| Some((group, slot.open.as_ref()?.upgrade()?)))
            .collect();
        let mut rewritten = Vec::new();
        let mut last = 0;
        for (group, store) in pinning {
            if let Some((replay_from, end)) = store.rewrite()? {
                rewritten.push((group, replay_from));
                last = last.max(end);
            }
        }
        if !rewritten.is_empty() {
            self.wal.wait_durable(last)?;
            self.syncer.publish(self.wal.durable_index());
        }
        let floor = {
            let mut st = self.state.lock();
            for &(group, replay_from) in &rewritten {
                if let Some(slot) = st.groups.get_mut(&group) {
                    slot.replay_from = slot.replay_from.max(replay_from);
                }
            }
            st.groups.values().map(|slot| slot.replay_from).min()
        };
        if let Some(floor) = floor {
            self.wal.compact(floor)?;
        }
        Ok(rewritten.len())
    }
}

/// The shared log names its node only; each group's own id is checked when it is opened.
fn check_node(dir: &Path, identity: &Identity, meta: &SharedMeta) -> Result<()> {
    super::check_owner(
        dir,
        identity,
        &meta.protocol,
        &meta.cluster_id,
        meta.node_id,
        identity.group_id,
    )
}

/// Reads the log from its first record and splits it by group (only `only`'s, if given): each
/// group's last checkpoint and its records from that checkpoint's replay point on.
fn scan(wal: &Wal, wal_dir: &Path, only: Option<u64>) -> Result<BTreeMap<u64, GroupLog>> {
    let mut groups: BTreeMap<u64, GroupLog> = BTreeMap::new();
    let end = wal.next_index();
    let mut wal_index = wal.first_index();
    while wal_index < end {
        for bytes in wal.read_range(wal_index..end, super::REPLAY_READ_BYTES)? {
            let envelope = tagged::parse(&bytes).map_err(|reason| StoreError::BadRecord {
                dir: wal_dir.to_path_buf(),
                wal_index,
                reason,
            })?;
            if only.is_none_or(|group| group == envelope.group) {
                let log = groups.entry(envelope.group).or_default();
                match envelope.kind {
                    Kind::Record(body) => log.records.push((wal_index, body.to_vec())),
                    Kind::Checkpoint { replay_from, base } => {
                        log.checkpoint = Some((wal_index, replay_from, base.to_vec()));
                        log.records.retain(|(at, _)| *at >= replay_from);
                    }
                }
            }
            wal_index += 1;
        }
    }
    Ok(groups)
}
