//! What key range a group serves, and the node's table of its groups (leader and keys of each,
//! as the groups last reported them) from which any member answers `AdminRequest::Shards`.
//!
//! Unsharded, group 0 serves every key and reports [`ShardMap::single`]. Sharded, group 0 is the
//! meta group: it serves no key and answers with the map it holds (bootstrapped identically on
//! every member from the configuration and recorded in the data directory), each shard's leader
//! and keys filled in from the table. A data group refuses a key outside its range with
//! `ServerError::WrongShard { group, epoch }` before proposing it; since a split
//! (`crate::shards::split`) can move the range between proposal and apply, the state machine
//! checks again at apply time. A split raises the range epoch (`epoch`) but not the epoch the
//! group's peer messages carry (`wire_epoch`), so a member that has not applied the split yet
//! still hears its group and catches up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::proto::{KeyRange, ReadOp, ServerError, ShardMap, WriteOp};

/// What a group reports of itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupState {
    /// The leader it knows.
    pub(crate) leader: Option<u64>,
    /// Its keys here.
    pub(crate) keys: u64,
    /// Whether it is quiet.
    pub(crate) quiet: bool,
    /// Cross-shard transactions prepared at this replica and not decided yet (what the node's
    /// resolver must look at; a group with none is not asked, so it may stay quiet).
    pub(crate) prepared: u64,
}

/// One local group's last report (leader 0 = none known).
#[derive(Debug, Default)]
struct Slot {
    leader: AtomicU64,
    keys: AtomicU64,
    quiet: AtomicBool,
    prepared: AtomicU64,
}

/// The groups this node runs, each reporting its leader and key count after every loop
/// iteration (relaxed stores under a shared read lock: no lock between the groups). A split adds
/// a group while the node runs.
#[derive(Debug, Default)]
pub(crate) struct GroupTable {
    slots: parking_lot::RwLock<BTreeMap<u64, Arc<Slot>>>,
}

impl GroupTable {
    /// A table of `groups`.
    pub(crate) fn new(groups: impl IntoIterator<Item = u64>) -> Arc<Self> {
        Arc::new(GroupTable {
            slots: parking_lot::RwLock::new(
                groups
                    .into_iter()
                    .map(|g| (g, Arc::new(Slot::default())))
                    .collect(),
            ),
        })
    }

    /// Adds `group` (created by a split); a group present already is kept.
    pub(crate) fn add(&self, group: u64) {
        self.slots.write().entry(group).or_default();
    }

    /// Whether this node runs `group`.
    pub(crate) fn contains(&self, group: u64) -> bool {
        self.slots.read().contains_key(&group)
    }

    /// Records `group`'s state.
    pub(crate) fn publish(&self, group: u64, state: GroupState) {
        if let Some(slot) = self.slots.read().get(&group) {
            slot.leader
                .store(state.leader.unwrap_or(0), Ordering::Relaxed);
            slot.keys.store(state.keys, Ordering::Relaxed);
            slot.quiet.store(state.quiet, Ordering::Relaxed);
            slot.prepared.store(state.prepared, Ordering::Relaxed);
        }
    }

    /// `group`'s last report.
    pub(crate) fn get(&self, group: u64) -> GroupState {
        match self.slots.read().get(&group) {
            Some(slot) => {
                let leader = slot.leader.load(Ordering::Relaxed);
                GroupState {
                    leader: (leader != 0).then_some(leader),
                    keys: slot.keys.load(Ordering::Relaxed),
                    quiet: slot.quiet.load(Ordering::Relaxed),
                    prepared: slot.prepared.load(Ordering::Relaxed),
                }
            }
            None => GroupState::default(),
        }
    }
}

/// The shard one group serves.
#[derive(Debug, Clone)]
pub(crate) struct GroupShard {
    /// The group id (0: the only group, or the meta group).
    pub(crate) group: u64,
    /// The group's range epoch (raised by every split of its range).
    pub(crate) epoch: u64,
    /// The epoch its peer messages carry: its range epoch when it was created, never raised.
    pub(crate) wire_epoch: u64,
    /// The keys it serves.
    pub(crate) range: KeyRange,
    /// The bootstrap shard map (the meta group of a sharded node; the splits since are in its
    /// state machine), else `None`.
    pub(crate) map: Option<Arc<ShardMap>>,
    /// The node's groups.
    pub(crate) table: Arc<GroupTable>,
    /// Where a split applied in this group starts the new one (a sharded node).
    pub(crate) splits: Option<Arc<crate::shards::split::SplitHost>>,
}

impl GroupShard {
    /// The one group of an unsharded node.
    pub(crate) fn unsharded() -> Self {
        GroupShard {
            group: 0,
            epoch: 0,
            wire_epoch: 0,
            range: KeyRange::all(),
            map: None,
            table: GroupTable::new([0]),
            splits: None,
        }
    }

    fn wrong_shard(&self) -> ServerError {
        ServerError::WrongShard {
            group: self.group,
            epoch: self.epoch,
        }
    }

    /// `WrongShard` unless every key of the write is in the range.
    pub(crate) fn check_write(&self, op: &WriteOp) -> Result<(), ServerError> {
        if op.keys().iter().all(|key| self.range.contains(key)) {
            Ok(())
        } else {
            Err(self.wrong_shard())
        }
    }

    /// `WrongShard` unless the read lies in the range.
    pub(crate) fn check_read(&self, op: &ReadOp) -> Result<(), ServerError> {
        let inside = match op {
            ReadOp::Get { key } => self.range.contains(key),
            ReadOp::Scan { start, end, .. } => self.range.covers(start, end.as_deref()),
            ReadOp::Prepared => true,
        };
        if inside {
            Ok(())
        } else {
            Err(self.wrong_shard())
        }
    }

    /// The map as this member knows it — `current` (the meta group's, as of its last applied
    /// entry), else the bootstrap map — with leaders and keys from the table (this group's own
    /// entry from `own`, which is fresher).
    pub(crate) fn map(&self, current: Option<ShardMap>, own: GroupState) -> ShardMap {
        let mut map = match (current, &self.map) {
            (Some(map), _) => map,
            (None, Some(map)) => (**map).clone(),
            (None, None) => ShardMap::single(),
        };
        for shard in &mut map.shards {
            let state = if shard.group == self.group {
                own
            } else {
                self.table.get(shard.group)
            };
            (shard.leader, shard.keys, shard.quiet) = (state.leader, state.keys, state.quiet);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn data_group(map: &ShardMap, group: u64) -> GroupShard {
        let shard = map.shard(group).unwrap();
        GroupShard {
            group,
            epoch: shard.epoch,
            wire_epoch: shard.epoch,
            range: shard.range.clone(),
            map: None,
            table: GroupTable::new([0, 1, 2]),
            splits: None,
        }
    }

    #[test]
    fn a_data_group_refuses_keys_outside_its_range_naming_itself_and_its_epoch() {
        let map = ShardMap::from_split_keys(&[Bytes::from_static(b"g")]).unwrap();
        let second = data_group(&map, 2);
        let put = |key: &'static [u8]| WriteOp::Put {
            key: Bytes::from_static(key),
            value: Bytes::new(),
        };
        assert_eq!(second.check_write(&put(b"k")), Ok(()));
        assert_eq!(
            second.check_write(&put(b"a")),
            Err(ServerError::WrongShard { group: 2, epoch: 1 })
        );
        let scan = |start: &'static [u8], end: Option<&'static [u8]>| ReadOp::Scan {
            start: Bytes::from_static(start),
            end: end.map(Bytes::from_static),
            limit: 0,
        };
        assert_eq!(second.check_read(&scan(b"g", None)), Ok(()));
        assert!(second.check_read(&scan(b"a", None)).is_err());
        let first = data_group(&map, 1);
        assert_eq!(first.check_read(&scan(b"a", Some(b"g"))), Ok(()));
        assert!(first.check_read(&scan(b"a", None)).is_err());
        assert_eq!(GroupShard::unsharded().check_write(&put(b"a")), Ok(()));
    }

    #[test]
    fn a_group_report_carries_its_prepared_transactions_to_the_resolver() {
        let table = GroupTable::new([1, 2]);
        let report = GroupState {
            leader: Some(2),
            keys: 5,
            quiet: true,
            prepared: 3,
        };
        table.publish(1, report);
        assert_eq!(table.get(1), report);
        // A group that never reported holds nothing prepared here.
        assert_eq!(table.get(2).prepared, 0);
    }

    #[test]
    fn the_meta_group_fills_leaders_and_keys_from_the_table() {
        let state = |leader, keys| GroupState {
            leader,
            keys,
            quiet: false,
            prepared: 0,
        };
        let map = ShardMap::from_split_keys(&[Bytes::from_static(b"g")]).unwrap();
        let table = GroupTable::new([0, 1, 2]);
        table.publish(1, state(Some(3), 10));
        table.publish(2, state(None, 4));
        let meta = GroupShard {
            group: 0,
            epoch: 1,
            wire_epoch: 1,
            range: KeyRange::empty(),
            map: Some(Arc::new(map)),
            table,
            splits: None,
        };
        let known = meta.map(None, state(Some(1), 0));
        assert_eq!(
            known
                .shards
                .iter()
                .map(|s| (s.group, s.leader, s.keys))
                .collect::<Vec<_>>(),
            vec![(1, Some(3), 10), (2, None, 4)]
        );
        let single = GroupShard::unsharded().map(None, state(Some(2), 7));
        assert_eq!(
            (single.shards[0].leader, single.shards[0].keys),
            (Some(2), 7)
        );
    }
}
