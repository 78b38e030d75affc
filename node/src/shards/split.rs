//! Online range splits on a running node (`quorate cluster split KEY`).
//!
//! 1. The META group's log records the split (`WriteOp::SplitMap`): its state machine plans it
//!    against the map at that index — the new group is the highest id + 1, both halves move to the
//!    source's epoch + 1, the map to its epoch + 1 — and answers the plan (the same plan when the
//!    split is asked for again).
//! 2. The SOURCE group's log then carries the plan (`WriteOp::SplitRange`); at that index every
//!    member's state divides (`KvStore::split_off`) and the group's loop hands the upper half to
//!    [`SplitHost::create`], which, on a blocking thread, creates the new group's store in the
//!    node's shared log with that state as its snapshot (index 1, the source's members as of the
//!    split entry), records the split in `shards.json`, asks the router to run the group and
//!    then answers the split's writer. The source's loop waits for it before it goes on (no
//!    checkpoint past the entry before the new group is durable). Every member builds the same
//!    initial state, so the new group elects a leader among members that agree on its log.
//! 3. Clients routed with the source's old epoch are answered `WrongShard` with the new epoch,
//!    fetch the map again from the meta group and retry at the new group.
//!
//! A member whose source group catches up from a snapshot taken past the split never applies
//! the split's entry: it joins the new group empty (the configured members) and catches up from
//! that group's leader like any follower far behind ([`SplitHost::missed`]).
//!
//! If the client dies between the two steps, the meta group's leader finishes the split
//! ([`finish_splits`]). A restarted node opens the groups `shards.json` lists; replaying the source's split entry finds
//! the group recorded and creates nothing. A crash between creating the store and recording the
//! split leaves a store with no snapshot: the replayed entry installs it then.

use std::path::PathBuf;
use std::sync::Arc;

use consensus_core::{ConfState, Snapshot, SnapshotMeta};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::layout;
use crate::config::ServeConfig;
use crate::engine::{open_group_blocking, GroupSpec, StartGroup};
use crate::group::shard::{GroupShard, GroupTable};
use crate::kv::KvStore;
use crate::proto::{Reply, Responder, ServerError, SplitPlan};
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

/// A split applied by a source group here, its new group not created yet.
pub(crate) struct PendingSplit {
    /// The plan applied.
    pub(crate) plan: SplitPlan,
    /// The upper half of the state the new group starts from.
    pub(crate) upper: KvStore,
    /// The source group's membership at the split's entry: the new group's members.
    pub(crate) members: ConfState,
    /// The answer to the write that asked for the split, sent once the group is durable.
    pub(crate) answer: Option<(Responder, Result<Reply, ServerError>)>,
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
    /// Source groups whose snapshot showed splits never applied here: group → its range epoch.
    missed: parking_lot::Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Test seam: runs where the blocking work runs, before it.
    #[cfg(test)]
    before_create: Option<Box<dyn Fn() + Send + Sync>>,
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
            missed: parking_lot::Mutex::new(std::collections::BTreeMap::new()),
            #[cfg(test)]
            before_create: None,
        })
    }

    /// The meta group's state machine now records `splits` (oldest first).
    pub(crate) fn planned(self: &Arc<Self>, splits: &[SplitPlan]) {
        let mut planned = self.planned.lock();
        if planned.len() != splits.len() {
            *planned = splits.to_vec();
            drop(planned);
            if !self.missed.lock().is_empty() {
                self.adopt_missed_later();
            }
        }
    }

    /// `source`'s state came from a snapshot whose range epoch is `epoch`, past splits this
    /// member never applied (its log was compacted past them): the groups they created cannot be
    /// built here from that state, so this member joins them empty and catches up from their
    /// leaders (a snapshot), as any follower far behind does. Groups the meta group has not
    /// shown this node yet are joined once it does ([`SplitHost::planned`]).
    pub(crate) fn missed(self: &Arc<Self>, source: u64, epoch: u64) {
        {
            let mut missed = self.missed.lock();
            let seen = missed.entry(source).or_default();
            *seen = (*seen).max(epoch);
        }
        self.adopt_missed_later();
    }

    fn adopt_missed_later(self: &Arc<Self>) {
        let host = self.clone();
        tokio::task::spawn_blocking(move || host.adopt_missed());
    }

    /// Joins, empty, the groups of recorded splits that a snapshot of their source carried past.
    fn adopt_missed(self: &Arc<Self>) {
        let plans: Vec<SplitPlan> = {
            let missed = self.missed.lock();
            self.planned
                .lock()
                .iter()
                .filter(|plan| missed.get(&plan.source).is_some_and(|&e| e >= plan.epoch))
                .filter(|plan| !self.table.contains(plan.new_group))
                .cloned()
                .collect()
        };
        for plan in plans {
            if let Err(error) = self.start_group(&plan, None) {
                warn!(
                    node = self.config.node_id,
                    group = plan.new_group,
                    %error,
                    "joining a split group missed in a snapshot"
                );
            }
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

    /// Creates the groups of `pending` in order on a blocking thread (the stores' and the layout
    /// file's fsyncs must not hold an async worker, which other groups' loops share), answering
    /// each split's writer once its group is durable. The caller waits: its group neither
    /// checkpoints past a split nor answers it before the new group exists.
    pub(crate) async fn create(
        self: &Arc<Self>,
        pending: Vec<PendingSplit>,
    ) -> Result<(), ServeError> {
        let host = self.clone();
        tokio::task::spawn_blocking(move || {
            #[cfg(test)]
            if let Some(before) = &host.before_create {
                before();
            }
            for split in pending {
                host.applied(&split.plan, split.upper, split.members)?;
                if let Some((responder, answer)) = split.answer {
                    let _ = responder.reply(&answer);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| ServeError::Stopped(format!("creating a split's group: {e}")))?
    }

    /// The source group applied `plan` at a log entry: the new group
    /// is created from `upper` with `members` (the source's membership at that entry, not the
    /// configured members, which a membership change leaves behind) unless this node created it
    /// before, and started. Blocks on the
    /// new store's fsync and the layout file's.
    fn applied(
        self: &Arc<Self>,
        plan: &SplitPlan,
        upper: KvStore,
        members: ConfState,
    ) -> Result<(), ServeError> {
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
                conf_state: members,
            },
            data,
        };
        self.start_group(plan, Some(snapshot))
    }

    /// Creates `plan`'s new group here — from `initial`, or empty (a member that missed the split
    /// joins it with the configured members and catches up from its leader) — records it in
    /// `shards.json` and hands it to the router, unless it exists.
    fn start_group(
        self: &Arc<Self>,
        plan: &SplitPlan,
        initial: Option<Snapshot>,
    ) -> Result<(), ServeError> {
        let _recording = self.record.lock();
        if self.table.contains(plan.new_group) {
            return Ok(());
        }
        let from_split = initial.is_some();
        let spec = GroupSpec {
            dir: self.group_dir(plan.new_group),
            shard: self.new_shard(plan),
            shared: Some(self.shared.clone()),
        };
        let opened = open_group_blocking(&self.config, spec, initial)?;
        layout::record_split(&self.config.data_dir, plan)?;
        self.table.add(plan.new_group);
        info!(
            node = self.config.node_id,
            group = plan.new_group,
            keys = opened.keys,
            epoch = plan.epoch,
            from_split,
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::config::MemberConfig;
    use crate::proto::ShardMap;
    use crate::store::SharedOptions;

    fn host(
        dir: &Path,
        before_create: Box<dyn Fn() + Send + Sync>,
    ) -> (Arc<SplitHost>, mpsc::UnboundedReceiver<GroupEvent>) {
        let members = vec![MemberConfig {
            id: 1,
            addr: "127.0.0.1:1".parse().unwrap(),
        }];
        let addr = members[0].addr;
        let config = Arc::new(ServeConfig::new(1, addr, dir, dir.join("certs"), members));
        let base = ShardMap::from_split_keys(&[Bytes::from_static(b"g")]).unwrap();
        layout::check_or_record(dir, &base.split_keys()).unwrap();
        let shared = SharedLog::open(dir, SharedOptions::default()).unwrap();
        let (events, events_rx) = mpsc::unbounded_channel();
        let host = SplitHost {
            config,
            shared,
            table: GroupTable::new([0, 1, 2]),
            events,
            record: parking_lot::Mutex::new(()),
            planned: parking_lot::Mutex::new(Vec::new()),
            missed: parking_lot::Mutex::new(std::collections::BTreeMap::new()),
            before_create: Some(before_create),
        };
        (Arc::new(host), events_rx)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_split_group_is_created_without_holding_the_async_worker_and_recorded_before_it_runs()
    {
        let dir = tempfile::tempdir().unwrap();
        // The blocking work waits for a task of the same one-worker runtime: that task runs
        // only if the work does not hold the worker (the bound only ends a failing run).
        let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
        let ran_rx = parking_lot::Mutex::new(ran_rx);
        let other_task_ran = Arc::new(AtomicBool::new(false));
        let seen = other_task_ran.clone();
        let (host, mut events) = host(
            dir.path(),
            Box::new(move || {
                let ran = ran_rx.lock().recv_timeout(Duration::from_secs(10)).is_ok();
                seen.store(ran, Ordering::SeqCst);
            }),
        );
        tokio::spawn(async move {
            let _ = ran_tx.send(());
        });
        let plan = ShardMap::from_split_keys(&[Bytes::from_static(b"g")])
            .unwrap()
            .plan_split(b"m")
            .unwrap();
        let mut kv = KvStore::new(10);
        let upper = kv.split_off(&plan).unwrap();
        let pending = PendingSplit {
            plan: plan.clone(),
            upper,
            members: ConfState::with_voters([1]),
            answer: None,
        };
        host.create(vec![pending]).await.unwrap();
        assert!(
            other_task_ran.load(Ordering::SeqCst),
            "creating the group held the runtime's only worker"
        );
        // Durable and recorded before the router hears of it.
        assert!(host.table.contains(plan.new_group));
        let recorded = layout::check_or_record(dir.path(), &[Bytes::from_static(b"g")]).unwrap();
        assert_eq!(recorded.splits, vec![plan.clone()]);
        match events.try_recv() {
            Ok(GroupEvent::Created { group, epoch, .. }) => {
                assert_eq!((group, epoch), (plan.new_group, plan.epoch))
            }
            Ok(GroupEvent::Epoch { group, .. }) => panic!("an epoch event for {group}"),
            Err(error) => panic!("no group created: {error}"),
        }
    }
}
