//! Building a group's protocol engine: one small constructor per protocol, chosen by
//! `protocol = "raft" | "multi-paxos" | "zab"` in the configuration. Everything after construction is
//! generic (the group's [`Driver`] runs any [`Consensus`] engine on a [`LogStore`]).
//!
//! Adding a protocol (primary-backup, say): a variant of [`Protocol`], a `build_*` function
//! returning its engine on a `LogStore<ItsHardState>`, and one arm in [`open`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use consensus_core::paxos::{self, MultiPaxos};
use consensus_core::zab::{self, Zab};
use consensus_core::{ConfState, DurableState, Raft, ReadMode, Snapshot, Storage, Write};
use net_quic::{Endpoint, Receivers};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::{Protocol, ReadModeSetting, ServeConfig};
use crate::group::shard::GroupShard;
use crate::group::{Driver, Engine, GroupChannels};
use crate::kv::KvStore;
use crate::proto::Quorate;
use crate::server::ServeError;
use crate::store::{Identity, LogStore, RaftStore, SharedLog, StoreOptions};

/// Starts the opened group's driver on the bound endpoint.
pub(crate) type Start = Box<
    dyn FnOnce(
            Endpoint<Quorate>,
            Receivers<Quorate>,
            watch::Receiver<bool>,
        ) -> JoinHandle<Result<(), ServeError>>
        + Send,
>;

/// Starts one opened group's loop on the bound endpoint, reading the given channels; `owns`
/// says whether the loop closes the endpoint when it stops (false: other groups share it).
pub(crate) type StartGroup = Box<
    dyn FnOnce(
            Endpoint<Quorate>,
            GroupChannels,
            watch::Receiver<bool>,
            bool,
        ) -> JoinHandle<Result<(), ServeError>>
        + Send,
>;

/// Where one group of this node keeps its data and what it serves.
pub(crate) struct GroupSpec {
    /// Its store's directory.
    pub(crate) dir: PathBuf,
    /// Its shard.
    pub(crate) shard: GroupShard,
    /// The node's write-ahead log shared by every group (a sharded node); `None`: the group's
    /// own store in `dir` (an unsharded node).
    pub(crate) shared: Option<SharedLog>,
}

/// One group whose store is open and whose engine is built.
pub(crate) struct OpenedGroup {
    /// Index of the snapshot the state machine was restored from.
    pub(crate) snapshot_index: u64,
    /// Keys in the restored state machine.
    pub(crate) keys: usize,
    /// Spawns its loop.
    pub(crate) start: StartGroup,
}

/// A node whose groups are open, ready to run.
pub(crate) struct Opened {
    /// Index of the snapshot the state machine was restored from.
    pub(crate) snapshot_index: u64,
    /// Keys in the restored state machine.
    pub(crate) keys: usize,
    /// Spawns the driver.
    pub(crate) start: Start,
}

/// Opens the data directory under the configured protocol and builds its engine.
pub(crate) async fn open(config: &Arc<ServeConfig>) -> Result<Opened, ServeError> {
    if config.replication == crate::config::Replication::Peer {
        return crate::peer::open(config).await;
    }
    if config.replication == crate::config::Replication::PrimaryBackup {
        return crate::primary::open(config).await;
    }
    if config.shards.is_some() {
        return crate::shards::open(config).await;
    }
    crate::shards::layout::check_unsharded(&config.data_dir)?;
    let spec = GroupSpec {
        dir: config.data_dir.clone(),
        shard: GroupShard::unsharded(),
        shared: None,
    };
    let group = open_group(config, spec).await?;
    Ok(Opened {
        snapshot_index: group.snapshot_index,
        keys: group.keys,
        start: Box::new(move |endpoint, receivers, shutdown_rx| {
            (group.start)(endpoint, receivers.into(), shutdown_rx, true)
        }),
    })
}

/// Opens one consensus group's store under the configured protocol and builds its engine.
pub(crate) async fn open_group(
    config: &Arc<ServeConfig>,
    spec: GroupSpec,
) -> Result<OpenedGroup, ServeError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || open_group_blocking(&config, spec, None))
        .await
        .map_err(|e| ServeError::Stopped(format!("opening the store: {e}")))?
}

/// [`open_group`] on the calling thread (it reads the store and may fsync). A group created by a
/// split passes `initial`, the state it starts from: installed as its snapshot unless the store
/// has one already (a retried creation).
pub(crate) fn open_group_blocking(
    config: &Arc<ServeConfig>,
    spec: GroupSpec,
    initial: Option<Snapshot>,
) -> Result<OpenedGroup, ServeError> {
    match config.protocol {
        Protocol::Raft => {
            let store: RaftStore = open_store(config, &spec, initial)?;
            let (kv, applied) = restore(config, &store)?;
            let engine = build_raft(config, store, applied)?;
            Ok(opened(config, engine, kv, spec.shard))
        }
        Protocol::MultiPaxos => {
            let store: LogStore<paxos::HardState> = open_store(config, &spec, initial)?;
            let (kv, applied) = restore(config, &store)?;
            let engine = build_multi_paxos(config, store, applied)?;
            Ok(opened(config, engine, kv, spec.shard))
        }
        Protocol::Zab => {
            let store: LogStore<zab::HardState> = open_store(config, &spec, initial)?;
            let (kv, applied) = restore(config, &store)?;
            let engine = build_zab(config, store, applied)?;
            Ok(opened(config, engine, kv, spec.shard))
        }
    }
}

/// Zab takes the same timing as the others. Its linearizable reads always take a quorum round
/// (a PING the followers answer): it has no lease mode, so `read_mode = "lease"` reads as
/// `"read-index"` would. Its uncommitted limit counts proposals (each a batch of client writes),
/// so it keeps Zab's own default rather than the byte budget.
fn build_zab(
    config: &ServeConfig,
    store: LogStore<zab::HardState>,
    applied: u64,
) -> Result<Zab<LogStore<zab::HardState>>, ServeError> {
    let mut zab_config = zab::Config::new(config.node_id);
    zab_config.election_tick = config.raft.election_ticks;
    zab_config.heartbeat_tick = config.raft.heartbeat_ticks;
    // An unanswered FOLLOWERINFO, sync chunk or proposal is resent after two heartbeats.
    zab_config.resend_tick = (2 * config.raft.heartbeat_ticks)
        .max(3)
        .min(config.raft.election_ticks - 1);
    zab_config.max_inflight = config.raft.max_inflight as u64;
    zab_config.max_msg_bytes = config.raft.max_msg_bytes;
    zab_config.applied = applied;
    Ok(Zab::new(
        zab_config,
        store,
        consensus_core::seeded_rng(seed(config)),
    )?)
}

fn build_multi_paxos(
    config: &ServeConfig,
    store: LogStore<paxos::HardState>,
    applied: u64,
) -> Result<MultiPaxos<LogStore<paxos::HardState>>, ServeError> {
    let mut paxos_config = paxos::Config::new(config.node_id);
    paxos_config.election_tick = config.raft.election_ticks;
    paxos_config.heartbeat_tick = config.raft.heartbeat_ticks;
    paxos_config.read_mode = match config.raft.read_mode {
        ReadModeSetting::ReadIndex => paxos::ReadMode::Safe,
        ReadModeSetting::Lease => paxos::ReadMode::LeaseBased,
    };
    paxos_config.max_inflight_slots = config.raft.max_inflight as u64;
    paxos_config.max_msg_bytes = config.raft.max_msg_bytes;
    paxos_config.max_uncommitted_bytes = config.raft.max_uncommitted_bytes;
    paxos_config.applied = applied;
    Ok(MultiPaxos::new(
        paxos_config,
        store,
        consensus_core::seeded_rng(seed(config)),
    )?)
}

fn build_raft(
    config: &ServeConfig,
    store: RaftStore,
    applied: u64,
) -> Result<Raft<RaftStore>, ServeError> {
    let mut raft_config = consensus_core::Config::new(config.node_id);
    raft_config.election_tick = config.raft.election_ticks;
    raft_config.heartbeat_tick = config.raft.heartbeat_ticks;
    raft_config.read_mode = match config.raft.read_mode {
        ReadModeSetting::ReadIndex => ReadMode::Safe,
        ReadModeSetting::Lease => ReadMode::LeaseBased,
    };
    raft_config.max_inflight = config.raft.max_inflight;
    raft_config.max_msg_bytes = config.raft.max_msg_bytes;
    raft_config.max_uncommitted_bytes = config.raft.max_uncommitted_bytes;
    raft_config.applied = applied;
    Ok(Raft::new(
        raft_config,
        store,
        consensus_core::seeded_rng(seed(config)),
    )?)
}

/// Election jitter differs per process and per node.
fn seed(config: &ServeConfig) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ config.node_id.rotate_left(32)
}

/// Opens (or bootstraps from `[[members]]`) one group's store, refusing one recorded for
/// another protocol, cluster, node or group: in the node's shared log when it has one (a sharded
/// node: one fsync per round covers every group), else in the group's own directory. Blocks.
fn open_store<H: DurableState>(
    config: &Arc<ServeConfig>,
    spec: &GroupSpec,
    initial: Option<Snapshot>,
) -> Result<LogStore<H>, ServeError> {
    let bootstrap = if config.join {
        ConfState::default()
    } else {
        ConfState::with_voters(config.members.iter().map(|m| m.id))
    };
    let identity = Identity {
        protocol: config.protocol.name().to_string(),
        cluster_id: config.cluster.clone(),
        node_id: config.node_id,
        group_id: spec.shard.group,
    };
    let options = StoreOptions {
        trailing_entries: config.snapshot.trailing_entries,
        ..StoreOptions::default()
    };
    let mut store = match &spec.shared {
        Some(shared) => shared.open_group(identity, bootstrap, options)?,
        None => LogStore::open(&spec.dir, identity, bootstrap, options)?,
    };
    if let Some(snapshot) = initial {
        if store.snapshot_meta().index == 0 {
            store.write(&Write {
                snapshot: Some(snapshot),
                truncate_from: None,
                entries: consensus_core::Entries::new(),
                hard_state: None,
                sync: true,
            })?;
        }
    }
    Ok(store)
}

/// The state machine as of the store's snapshot, and the index it stands at.
pub(crate) fn restore<H: DurableState>(
    config: &ServeConfig,
    store: &LogStore<H>,
) -> Result<(KvStore, u64), ServeError> {
    let snapshot = store
        .snapshot()
        .map_err(|e| ServeError::Consensus(consensus_core::Error::Storage(e)))?;
    let kv = KvStore::restore(&snapshot.data, config.limits.max_sessions)?;
    Ok((kv, snapshot.meta.index))
}

fn opened<C: Engine>(
    config: &Arc<ServeConfig>,
    engine: C,
    kv: KvStore,
    shard: GroupShard,
) -> OpenedGroup
where
    C::Message: Send,
{
    debug_assert_eq!(C::NAME, config.protocol.name());
    let snapshot_index = engine.storage().snapshot_meta().index;
    let keys = kv.len();
    let config = config.clone();
    OpenedGroup {
        snapshot_index,
        keys,
        start: Box::new(move |endpoint, channels, shutdown_rx, owns| {
            let span = tracing::info_span!("group", node = config.node_id, group = shard.group);
            // Groups sharing the endpoint are a sharded node's: they quiesce when idle.
            let quiesce = config.shards.as_ref().is_some_and(|s| s.quiesce);
            let driver = Driver::new(config, engine, kv, endpoint, channels, shutdown_rx, shard);
            let driver = match (owns, quiesce) {
                (true, _) => driver,
                (false, false) => driver.sharing_endpoint(),
                (false, true) => driver.sharing_endpoint().quiescing(),
            };
            tokio::spawn(driver.run().instrument(span))
        }),
    }
}
