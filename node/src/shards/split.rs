//! Online range splits on a running node (`quorate cluster split KEY`).
//!
//! 1. The META group's log records the split (`WriteOp::SplitMap`): its state machine plans it
//!    against the map at that index — the new group is the highest id + 1, both halves move to the
//!    source's epoch + 1, the map to its epoch + 1 — and answers the plan (the same plan when the
//!    split is asked for again).
//! 2. The SOURCE group's log then carries the plan (`WriteOp::SplitRange`); at that index every
//!    member's state divides (`KvStore::split_off`) and the group's loop hands the upper half to
//!    [`SplitHost::applied`], which creates the new group's store in the node's shared log with
//!    that state as its snapshot (index 1, the source's members), records the split in
//!    `shards.json` and asks the router to run the group. Every member builds the same initial
//!    state, so the new group elects a leader among members that agree on its log.
//! 3. Clients routed with the source's old epoch are answered `WrongShard` with the new epoch,
//!    fetch the map again from the meta group and retry at the new group.
//!
//! If the client dies between the two steps, the meta group's leader finishes the split
//! ([`finish_splits`]). A restarted node opens the groups `shards.json` lists; replaying the source's split entry finds
//! the group recorded and creates nothing. A crash between creating the store and recording the
//! split leaves a store with no snapshot: the replayed entry installs it then.

use std::path::PathBuf;
use std::sync::Arc;

use consensus_core::{ConfState, Snapshot, SnapshotMeta};
use tokio::sync::mpsc;
use tracing::info;

use super::layout;
use crate::config::ServeConfig;
use crate::engine::{open_group_blocking, GroupSpec, StartGroup};
use crate::group::shard::{GroupShard, GroupTable};
use crate::kv::KvStore;
use crate::proto::SplitPlan;
use crate::server::ServeError;
use crate::store::SharedLog;

/// How often the meta group's leader looks for recorded splits not yet applied.
const FINISH_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// On the meta group's leader: a split recorded in the meta log whose new group this node still
/// does not run after two rounds (its client died between the two steps, say) is finished by
/// proposing its `SplitRange` to the source group (idempotent). Runs until shutdown.
pub(crate) async fn finish_splits(
    splits: Arc<SplitHost>,
    xtxn: Arc<super::xtxn::XtxnService>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let node = splits.config.node_id;
    let mut seen: Vec<u64> = Vec::new();
    let mut ticker = tokio::time::interval(FINISH_TICK);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let leading = splits.table.get(crate::proto::META_GROUP).leader == Some(node);
        let unfinished = if leading {
            splits.unfinished()
        } else {
            Vec::new()
        };
        for plan in &unfinished {
            if !seen.contains(&plan.new_group) {
                continue;
            }
            let Ok(client) = xtxn.client() else { break };
            match client.finish_split(plan).await {
                Ok(()) => info!(node, group = plan.new_group, "finished a recorded split"),
                Err(error) => {
                    tracing::debug!(node, group = plan.new_group, %error, "finishing a split")
                }
            }
        }
        seen = unfinished.iter().map(|plan| plan.new_group).collect();
    }
}

/// Index of the snapshot a split group starts from (its log is empty below).
pub(crate) const SPLIT_SNAPSHOT_INDEX: u64 = 1;

/// What the groups' loops tell the node's router.
pub(crate) enum GroupEvent {
    /// `group`'s range epoch is now `epoch` (a split of its range applied here).
    Epoch {
        /// The group.
        group: u64,
        /// Its new range epoch.
        epoch: u64,
    },
    /// A group created by a split, ready to run.
    Created {
        /// The group.
        group: u64,
        /// Its range epoch (also the epoch its peer messages carry).
        epoch: u64,
        /// Spawns its loop.
        start: StartGroup,
    },
}

/// Starts the groups splits create on this node.
pub(crate) struct SplitHost {
    config: Arc<ServeConfig>,
    shared: SharedLog,
    table: Arc<GroupTable>,
    events: mpsc::UnboundedSender<GroupEvent>,
    /// Serializes `shards.json` updates of splits applied by different groups at once.
    record: parking_lot::Mutex<()>,
    /// The splits the meta group's state machine recorded here, oldest first.
    planned: parking_lot::Mutex<Vec<SplitPlan>>,
}

impl std::fmt::Debug for SplitHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitHost")
            .field("node", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

impl SplitHost {
    pub(crate) fn new(
        config: Arc<ServeConfig>,
        shared: SharedLog,
        table: Arc<GroupTable>,
        events: mpsc::UnboundedSender<GroupEvent>,
    ) -> Arc<Self> {
        Arc::new(SplitHost {
            config,
            shared,
            table,
            events,
            record: parking_lot::Mutex::new(()),
            planned: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// The meta group's state machine now records `splits` (oldest first).
    pub(crate) fn planned(&self, splits: &[SplitPlan]) {
        let mut planned = self.planned.lock();
        if planned.len() != splits.len() {
            *planned = splits.to_vec();
        }
    }

    /// `group`'s range epoch moved to `epoch` without a split applied here (a snapshot).
    pub(crate) fn epoch_moved(&self, group: u64, epoch: u64) {
        let _ = self.events.send(GroupEvent::Epoch { group, epoch });
    }

    /// Recorded splits whose new group this node does not run.
    fn unfinished(&self) -> Vec<SplitPlan> {
        self.planned
            .lock()
            .iter()
            .filter(|plan| !self.table.contains(plan.new_group))
            .cloned()
            .collect()
    }

    /// The shard of a group created by `plan`.
    pub(crate) fn new_shard(self: &Arc<Self>, plan: &SplitPlan) -> GroupShard {
        GroupShard {
            group: plan.new_group,
            epoch: plan.epoch,
            wire_epoch: plan.epoch,
            range: plan.upper(),
            map: None,
            table: self.table.clone(),
            splits: Some(self.clone()),
        }
    }

    fn group_dir(&self, group: u64) -> PathBuf {
        layout::group_dir(&self.config.data_dir, group)
    }

    /// The source group applied `plan` at a log entry: its range epoch moves, and the new group
    /// is created from `upper` (unless this node created it before) and started. Blocks on the
    /// new store's fsync and the layout file's.
    pub(crate) fn applied(
        self: &Arc<Self>,
        plan: &SplitPlan,
        upper: KvStore,
    ) -> Result<(), ServeError> {
        let _ = self.events.send(GroupEvent::Epoch {
            group: plan.source,
            epoch: plan.epoch,
        });
        let _recording = self.record.lock();
        if self.table.contains(plan.new_group) {
            // Created before a restart (and opened at startup), or by an earlier apply.
            return Ok(());
        }
        let data = upper
            .snapshot()
            .map_err(|e| ServeError::Stopped(format!("encoding a split's state: {e}")))?;
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: SPLIT_SNAPSHOT_INDEX,
                term: 0,
                conf_state: ConfState::with_voters(self.config.members.iter().map(|m| m.id)),
            },
            data,
        };
        let spec = GroupSpec {
            dir: self.group_dir(plan.new_group),
            shard: self.new_shard(plan),
            shared: Some(self.shared.clone()),
        };
        let opened = open_group_blocking(&self.config, spec, Some(snapshot))?;
        layout::record_split(&self.config.data_dir, plan)?;
        self.table.add(plan.new_group);
        info!(
            node = self.config.node_id,
            group = plan.new_group,
            keys = opened.keys,
            epoch = plan.epoch,
            "created a group from a split"
        );
        let _ = self.events.send(GroupEvent::Created {
            group: plan.new_group,
            epoch: plan.epoch,
            start: opened.start,
        });
        Ok(())
    }
}
