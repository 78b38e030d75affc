//! A sharded node (`[shards]`): the meta group 0 holding the shard map and one data group per
//! shard, every one on every member, each its own loop (`group::Driver`) fed by the [`router`],
//! all sharing the node's one endpoint — so messages of many groups to one node travel on the
//! same QUIC connection.
//!
//! - [`layout`]: the layout recorded in the data directory. Every group's records go to the node's
//!   one shared log (`shared-wal/`, see `crate::store::SharedLog`); `groups/<g>/` holds each
//!   group's snapshot.
//! - [`router`]: dispatches peer messages and client requests to the groups; supervises them,
//!   and runs the groups splits create while the node runs.
//! - [`split`]: online range splits (`quorate cluster split KEY`): the meta group records the
//!   plan, the source group's state divides at one log index, the node starts the new group.

pub mod layout;
pub(crate) mod router;
pub(crate) mod split;
pub(crate) mod xtxn;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::ServeConfig;
use crate::engine::{open_group, GroupSpec, Opened};
use crate::group::shard::{GroupShard, GroupTable};
use crate::proto::{KeyRange, META_GROUP};
use crate::server::ServeError;
use crate::store::{SharedLog, SharedOptions};

/// Opens every group of a sharded node (recording the layout on a fresh data directory): the
/// meta group, the bootstrap shards, and the groups splits created here.
pub(crate) async fn open(config: &Arc<ServeConfig>) -> Result<Opened, ServeError> {
    let shards = config.shards.as_ref().expect("called for a sharded config");
    let base = Arc::new(shards.map().map_err(crate::config::ConfigError::Invalid)?);
    let split = base.split_keys();
    let data_dir = config.data_dir.clone();
    let recorded = tokio::task::spawn_blocking(move || layout::check_or_record(&data_dir, &split))
        .await
        .map_err(|e| ServeError::Stopped(format!("checking the shard layout: {e}")))??;
    // The ranges as of the splits this node applied (the meta group's own map may be ahead).
    let mut map = (*base).clone();
    for plan in &recorded.splits {
        if let Err(error) = map.apply_split(plan) {
            return Err(ServeError::Stopped(format!(
                "{}: a recorded split does not apply ({error}): {plan:?}",
                config.data_dir.join(layout::LAYOUT_FILE).display()
            )));
        }
    }
    let dir = config.data_dir.clone();
    let shared =
        tokio::task::spawn_blocking(move || SharedLog::open(&dir, SharedOptions::default()))
            .await
            .map_err(|e| ServeError::Stopped(format!("opening the shared log: {e}")))??;
    let groups: Vec<u64> = std::iter::once(META_GROUP)
        .chain(map.shards.iter().map(|s| s.group))
        .collect();
    let table = GroupTable::new(groups.iter().copied());
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let splits = split::SplitHost::new(config.clone(), shared.clone(), table.clone(), events_tx);
    let mut opened = Vec::with_capacity(groups.len());
    let (mut snapshot_index, mut keys) = (0, 0);
    for &group in &groups {
        let shard = match map.shard(group) {
            Some(info) => GroupShard {
                group,
                epoch: info.epoch,
                // Bootstrap groups send epoch 1; a split's group the epoch it was created at.
                wire_epoch: recorded
                    .splits
                    .iter()
                    .find(|plan| plan.new_group == group)
                    .map_or(1, |plan| plan.epoch),
                range: info.range.clone(),
                map: None,
                table: table.clone(),
                splits: Some(splits.clone()),
            },
            None => GroupShard {
                group,
                epoch: base.epoch,
                wire_epoch: base.epoch,
                range: KeyRange::empty(),
                map: Some(base.clone()),
                table: table.clone(),
                splits: Some(splits.clone()),
            },
        };
        let (epoch, wire_epoch) = (shard.epoch, shard.wire_epoch);
        let spec = GroupSpec {
            dir: layout::group_dir(&config.data_dir, group),
            shard,
            shared: Some(shared.clone()),
        };
        let group_opened = open_group(config, spec).await?;
        snapshot_index = snapshot_index.max(group_opened.snapshot_index);
        keys += group_opened.keys;
        opened.push((group, epoch, wire_epoch, group_opened.start));
    }
    let node = config.node_id;
    let xtxn = xtxn::XtxnService::new(config.clone(), base.clone(), table.clone());
    Ok(Opened {
        snapshot_index,
        keys,
        start: Box::new(move |endpoint, receivers, shutdown_rx| {
            let mut router = router::Router::new(node, receivers);
            router.set_xtxn(xtxn.clone());
            let (stop_tx, stop_rx) = watch::channel(false);
            tokio::spawn(xtxn.clone().resolve(stop_rx.clone()));
            tokio::spawn(xtxn.clone().flush_ends(stop_rx.clone()));
            tokio::spawn(split::finish_splits(splits, xtxn, stop_rx.clone()));
            let handles = opened
                .into_iter()
                .map(|(group, epoch, wire_epoch, start)| {
                    let channels = router.add(group, epoch, wire_epoch);
                    (
                        group,
                        start(endpoint.clone(), channels, stop_rx.clone(), false),
                    )
                })
                .collect();
            tokio::spawn(router::supervise(
                node,
                router,
                handles,
                events_rx,
                endpoint,
                shutdown_rx,
                stop_tx,
            ))
        }),
    })
}
