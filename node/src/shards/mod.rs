//! A sharded node (`[shards]`): the meta group 0 holding the shard map and one data group per
//! shard, every one on every member, each its own loop (`group::Driver`) fed by the [`router`],
//! all sharing the node's one endpoint — so messages of many groups to one node travel on the
//! same QUIC connection.
//!
//! - [`layout`]: the layout recorded in the data directory; `groups/<g>/` per group.
//! - [`router`]: dispatches peer messages and client requests to the groups; supervises them.

pub mod layout;
pub(crate) mod router;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::ServeConfig;
use crate::engine::{open_group, GroupSpec, Opened};
use crate::group::shard::{GroupShard, GroupTable};
use crate::proto::{KeyRange, META_GROUP};
use crate::server::ServeError;

/// Each group's WAL segment size until the groups share one WAL (many groups must not each
/// zero-fill 64 MiB).
const SEGMENT_BYTES: u64 = 1 << 20;

/// Opens every group of a sharded node (recording the layout on a fresh data directory).
pub(crate) async fn open(config: &Arc<ServeConfig>) -> Result<Opened, ServeError> {
    let shards = config.shards.as_ref().expect("called for a sharded config");
    let map = Arc::new(shards.map().map_err(crate::config::ConfigError::Invalid)?);
    let split = map.split_keys();
    let data_dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || layout::check_or_record(&data_dir, &split))
        .await
        .map_err(|e| ServeError::Stopped(format!("checking the shard layout: {e}")))??;
    let groups: Vec<u64> = std::iter::once(META_GROUP)
        .chain(map.shards.iter().map(|s| s.group))
        .collect();
    let table = GroupTable::new(groups.iter().copied());
    let mut opened = Vec::with_capacity(groups.len());
    let (mut snapshot_index, mut keys) = (0, 0);
    for &group in &groups {
        let shard = match map.shard(group) {
            Some(info) => GroupShard {
                group,
                epoch: info.epoch,
                range: info.range.clone(),
                map: None,
                table: table.clone(),
            },
            None => GroupShard {
                group,
                epoch: map.epoch,
                range: KeyRange::empty(),
                map: Some(map.clone()),
                table: table.clone(),
            },
        };
        let epoch = shard.epoch;
        let spec = GroupSpec {
            dir: layout::group_dir(&config.data_dir, group),
            segment_bytes: Some(SEGMENT_BYTES),
            shard,
        };
        let group_opened = open_group(config, spec).await?;
        snapshot_index = snapshot_index.max(group_opened.snapshot_index);
        keys += group_opened.keys;
        opened.push((group, epoch, group_opened.start));
    }
    let node = config.node_id;
    Ok(Opened {
        snapshot_index,
        keys,
        start: Box::new(move |endpoint, receivers, shutdown_rx| {
            let mut router = router::Router::new(node, receivers);
            let (stop_tx, stop_rx) = watch::channel(false);
            let handles = opened
                .into_iter()
                .map(|(group, epoch, start)| {
                    let channels = router.add(group, epoch);
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
                endpoint,
                shutdown_rx,
                stop_tx,
            ))
        }),
    })
}
