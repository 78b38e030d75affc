//! `replication = "primary-backup"`: the node runs `replication_primary::PrimaryBackup`
//! (PacificA) as its group, in the same generic group loop as the consensus protocols
//! (`crate::group`), with its configuration manager beside it in that loop.
//!
//! - [`manager`]: the configuration manager — a Raft group of the node's members (group 1 on
//!   the wire, `<data dir>/manager/`) whose state machine is `ConfigManager`.
//! - Here: opening the data directory (`<data dir>/wal/` recorded as `primary-backup`, so a
//!   consensus or peer node refuses it and this refuses theirs), restoring the key-value store,
//!   building the engine from `[primary_backup]`, and starting the loop with the manager as its
//!   sidecar and wall-clock ticks (leases are counted in ticks). Local snapshots and log
//!   compaction run as for the consensus protocols (`[snapshot]`); a backup behind the primary's
//!   compacted log is sent the primary's latest snapshot on the bulk stream.
//!
//! Reads: `linearizable` at the primary under its leases (the engine's `read_index` refuses
//! elsewhere, and the client follows `NotLeader` to the primary); `sequential` and `stale` on
//! any replica, whose lag behind the primary's commit point `cluster status` shows.

pub(crate) mod manager;

use std::sync::Arc;

use consensus_core::{ConfState, DurableState};
use replication_primary::{Ack, Config as PbConfig, ConfigManager, HardState, PrimaryBackup};
use tracing::Instrument;

use crate::config::{AckSetting, ServeConfig};
use crate::engine::{restore, Opened};
use crate::group::shard::GroupShard;
use crate::group::{Driver, DriverOptions};
use crate::server::ServeError;
use crate::store::{Identity, LogStore, RaftStore, StoreOptions};

use self::manager::{Manager, MANAGER_GROUP};

/// The engine the node runs in this mode.
pub(crate) type PbEngine = PrimaryBackup<LogStore<HardState>>;

/// The name the data directory records (`Consensus::NAME` of the engine).
const MODE: &str = "primary-backup";

/// Opens the data directory and the manager's, restores the state machine and builds the engine.
pub(crate) async fn open(config: &Arc<ServeConfig>) -> Result<Opened, ServeError> {
    if config.data_dir.join("peer-wal").exists() {
        return Err(ServeError::Stopped(format!(
            "data directory {} holds a peer node's log (peer-wal/); a primary-backup node needs its own data directory",
            config.data_dir.display()
        )));
    }
    let voters = ConfState::with_voters(config.members.iter().map(|m| m.id));
    let store: LogStore<HardState> =
        open_store(config, config.data_dir.clone(), MODE, 0, voters.clone()).await?;
    let manager_store: RaftStore = open_store(
        config,
        config.data_dir.join("manager"),
        "raft",
        MANAGER_GROUP,
        voters,
    )
    .await?;
    let (kv, applied) = restore(config, &store)?;
    let pb = pb_config(config, applied);
    let state = ConfigManager::new(pb.bootstrap(), pb.replicas.iter().copied());
    let engine = PrimaryBackup::new(pb, store)?;
    let snapshot_index = applied;
    let keys = kv.len();
    let config = config.clone();
    Ok(Opened {
        snapshot_index,
        keys,
        start: Box::new(move |endpoint, receivers, shutdown_rx| {
            let span = tracing::info_span!("group", node = config.node_id, group = 0);
            let manager = Manager::new(&config, manager_store, state, endpoint.clone());
            tokio::spawn(
                async move {
                    let manager = manager?;
                    let options = DriverOptions {
                        wall_clock_ticks: true,
                        snapshots: true,
                    };
                    Driver::new(
                        config,
                        engine,
                        kv,
                        endpoint,
                        receivers.into(),
                        shutdown_rx,
                        GroupShard::unsharded(),
                    )
                    .with_sidecar(Box::new(manager), options)
                    .run()
                    .await
                }
                .instrument(span),
            )
        }),
    })
}

/// The engine's settings from `[primary_backup]`.
fn pb_config(config: &ServeConfig, applied: u64) -> PbConfig {
    let settings = &config.primary_backup;
    let ack = match settings.ack {
        AckSetting::All => Ack::All,
        AckSetting::Quorum => Ack::Quorum,
        AckSetting::Async => Ack::Async,
    };
    let mut pb = PbConfig::new(config.node_id, config.members.iter().map(|m| m.id), ack);
    pb.beacon_ticks = settings.beacon_ticks;
    pb.lease_ticks = settings.lease_ticks;
    pb.grace_ticks = settings.grace_ticks;
    pb.retry_ticks = settings.beacon_ticks.max(2);
    pb.async_window = settings.async_window;
    // A snapshot not confirmed within four leases is sent again.
    pb.snapshot_retry_ticks = settings.lease_ticks * 4;
    pb.max_batch = settings.max_batch;
    pb.applied = applied;
    pb
}

/// Opens (or creates) a store recorded as `protocol`, group `group`, of this node.
async fn open_store<H: DurableState>(
    config: &ServeConfig,
    dir: std::path::PathBuf,
    protocol: &str,
    group: u64,
    bootstrap: ConfState,
) -> Result<LogStore<H>, ServeError> {
    let identity = Identity {
        protocol: protocol.to_string(),
        cluster_id: config.cluster.clone(),
        node_id: config.node_id,
        group_id: group,
    };
    let options = StoreOptions {
        trailing_entries: config.snapshot.trailing_entries,
        ..StoreOptions::default()
    };
    let store =
        tokio::task::spawn_blocking(move || LogStore::open(&dir, identity, bootstrap, options))
            .await
            .map_err(|e| ServeError::Stopped(format!("opening the store: {e}")))??;
    Ok(store)
}
