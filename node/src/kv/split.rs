//! Range splits in the state machine, applied deterministically from the logs:
//!
//! - In the META group, [`WriteOp::SplitMap`](crate::proto::WriteOp::SplitMap) plans the split
//!   against the map as of that log index (bootstrap map plus every split recorded before) and
//!   records it; asked again for a key it split at, it answers the recorded plan (a retried
//!   `quorate cluster split` changes nothing).
//! - In the SOURCE group, [`WriteOp::SplitRange`](crate::proto::WriteOp::SplitRange) divides the
//!   state at the plan's key: [`KvStore::split_off`] keeps the lower half here and hands the upper
//!   half (pairs, with the revision, sessions and member addresses) to the node, which starts the
//!   new group from it. Every member applies it at the same index, so every member builds the
//!   same initial state. It is refused (typed, nothing changes; the caller retries) while a
//!   cross-shard transaction holds a lock on a key of the upper half.
//!
//! Once a split has touched a store, the store knows the range it owns and refuses, at apply
//! time, writes outside it with `WrongShard` (a write proposed before the split but applied
//! after it must not land in the lower half).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::KvStore;
use crate::proto::{KeyRange, ServerError, ShardMap, SplitError, SplitPlan, META_GROUP};

/// The range a data group owns after a split touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Owned {
    group: u64,
    epoch: u64,
    range: KeyRange,
}

/// Split state of one store (part of its snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitState {
    /// A data group's range once a split set it (`None`: the bootstrap range, which the group
    /// checks when it proposes).
    owned: Option<Owned>,
    /// Meta group: the map after the splits recorded here (`None`: the bootstrap map).
    map: Option<ShardMap>,
    /// Meta group: every split recorded, oldest first.
    splits: Vec<SplitPlan>,
}

impl KvStore {
    /// Makes this the meta group's store over `map` (the bootstrap map; not replicated state:
    /// every member has the same from its configuration).
    pub fn set_base_map(&mut self, map: std::sync::Arc<ShardMap>) {
        self.base_map = Some(map);
    }

    /// Meta group: the shard map as of the last applied entry.
    pub fn shard_map(&self) -> Option<ShardMap> {
        match (&self.split.map, &self.base_map) {
            (Some(map), _) => Some(map.clone()),
            (None, Some(base)) => Some((**base).clone()),
            (None, None) => None,
        }
    }

    /// Meta group: the splits recorded, oldest first.
    pub fn splits(&self) -> &[SplitPlan] {
        &self.split.splits
    }

    /// The range this store owns, with its group and epoch, once a split set it.
    pub fn owned_range(&self) -> Option<(u64, u64, &KeyRange)> {
        self.split
            .owned
            .as_ref()
            .map(|o| (o.group, o.epoch, &o.range))
    }

    /// `WrongShard` if a split moved any of `keys` out of this store.
    pub fn check_owned<'a>(
        &self,
        mut keys: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), ServerError> {
        match &self.split.owned {
            Some(owned) if !keys.all(|key| owned.range.contains(key)) => {
                Err(ServerError::WrongShard {
                    group: owned.group,
                    epoch: owned.epoch,
                })
            }
            _ => Ok(()),
        }
    }

    /// `WrongShard` if a split moved part of the scan `[start, end)` out of this store.
    pub fn check_owned_scan(&self, start: &[u8], end: Option<&[u8]>) -> Result<(), ServerError> {
        match &self.split.owned {
            Some(owned) if !owned.range.covers(start, end) => Err(ServerError::WrongShard {
                group: owned.group,
                epoch: owned.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// The upper half of the last split applied, for the node to start the new group from.
    pub fn take_split_off(&mut self) -> Option<(SplitPlan, KvStore)> {
        self.split_off.take().map(|boxed| *boxed)
    }

    /// Meta group: plans the split at `key` on the current map and records it (or answers the
    /// plan recorded for `key` before).
    pub(super) fn record_split(&mut self, key: &Bytes) -> Result<SplitPlan, SplitError> {
        let base = self.base_map.as_ref().ok_or(SplitError::Unsharded)?;
        if let Some(plan) = self.split.splits.iter().find(|plan| plan.key == *key) {
            return Ok(plan.clone());
        }
        let mut map = self.split.map.clone().unwrap_or_else(|| (**base).clone());
        let plan = map.plan_split(key)?;
        map.apply_split(&plan)?;
        self.split.map = Some(map);
        self.split.splits.push(plan.clone());
        Ok(plan)
    }

    /// Source group: divides the state at `plan.key`. The upper half waits in
    /// [`take_split_off`](Self::take_split_off); a plan applied already changes nothing.
    pub(super) fn apply_split_range(&mut self, plan: &SplitPlan) -> Result<(), ServerError> {
        if self.base_map.is_some() || plan.source == META_GROUP {
            return Err(ServerError::Split(SplitError::Unsharded));
        }
        if let Some(owned) = &self.split.owned {
            if owned.group == plan.source
                && owned.epoch == plan.epoch
                && owned.range == plan.lower()
            {
                return Ok(());
            }
            let before = KeyRange {
                start: plan.start.clone(),
                end: plan.end.clone(),
            };
            if owned.group != plan.source
                || owned.epoch != plan.source_epoch
                || owned.range != before
            {
                return Err(ServerError::Split(SplitError::Stale));
            }
        }
        let upper = self.split_off(plan)?;
        self.split_off = Some(Box::new((plan.clone(), upper)));
        Ok(())
    }

    /// Divides the pairs at `plan.key`: this store keeps the lower half and owns `plan.lower()`,
    /// the returned one holds the upper half and owns `plan.upper()`. Both keep the revision,
    /// the sessions and the member addresses; cross-shard transaction state stays here.
    /// Refused with `Locked` while a prepared transaction holds a key of the upper half.
    pub fn split_off(&mut self, plan: &SplitPlan) -> Result<KvStore, ServerError> {
        if let Some((key, txn)) = self.shard_txns.locked_in(&plan.upper()) {
            return Err(ServerError::Locked { key, txn });
        }
        let data = self.data.split_off(&plan.key[..]);
        let upper = KvStore {
            data,
            revision: self.revision,
            sessions: self.sessions.clone(),
            members: self.members.clone(),
            max_sessions: self.max_sessions,
            by_activity: self.by_activity.clone(),
            shard_txns: Default::default(),
            split: SplitState {
                owned: Some(Owned {
                    group: plan.new_group,
                    epoch: plan.epoch,
                    range: plan.upper(),
                }),
                map: None,
                splits: Vec::new(),
            },
            base_map: None,
            split_off: None,
        };
        self.split.owned = Some(Owned {
            group: plan.source,
            epoch: plan.epoch,
            range: plan.lower(),
        });
        Ok(upper)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kv::Command;
    use crate::proto::{Session, WriteOp, WriteResult};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn write(
        kv: &mut KvStore,
        client: u64,
        seq: u64,
        op: WriteOp,
        index: u64,
    ) -> Result<WriteResult, ServerError> {
        let session = Session {
            client_id: client,
            seq,
            first_unacked: 1,
        };
        kv.apply(&Command::Write { session, op }, index).unwrap()
    }

    fn put(key: &str) -> WriteOp {
        WriteOp::Put {
            key: b(key),
            value: b("v"),
        }
    }

    fn plan(key: &str) -> SplitPlan {
        ShardMap::from_split_keys(&[b("g")])
            .unwrap()
            .plan_split(key.as_bytes())
            .unwrap()
    }

    #[test]
    fn split_off_divides_the_pairs_and_both_halves_keep_revision_and_sessions() {
        let mut kv = KvStore::new(10);
        for (i, key) in ["h", "k", "m", "p", "z"].iter().enumerate() {
            write(&mut kv, 1, i as u64 + 1, put(key), i as u64 + 1).unwrap();
        }
        let plan = plan("m");
        let upper = kv.split_off(&plan).unwrap();
        let keys = |kv: &KvStore| {
            kv.scan(b"", None, 100)
                .0
                .into_iter()
                .map(|p| p.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&kv), vec![b("h"), b("k")]);
        assert_eq!(keys(&upper), vec![b("m"), b("p"), b("z")]);
        assert_eq!((kv.revision(), upper.revision()), (5, 5));
        assert_eq!(upper.get(b"p").unwrap().mod_revision, 4);
        // The session came along: a retry of a write applied before the split is answered from
        // it in the new group, not applied again.
        let mut upper = upper;
        assert_eq!(
            write(&mut upper, 1, 4, put("p"), 9),
            Ok(WriteResult::Put { revision: 4 })
        );
        assert_eq!(upper.revision(), 5);
        // Each half refuses keys of the other at apply time.
        assert_eq!(
            write(&mut kv, 2, 1, put("n"), 6),
            Err(ServerError::WrongShard { group: 2, epoch: 2 })
        );
        assert_eq!(
            write(&mut upper, 2, 1, put("i"), 10),
            Err(ServerError::WrongShard { group: 3, epoch: 2 })
        );
        assert!(write(&mut kv, 2, 2, put("l"), 7).is_ok());
        assert!(kv.check_owned_scan(b"h", Some(b"m")).is_ok());
        assert!(kv.check_owned_scan(b"h", None).is_err());
        // The split state survives a snapshot.
        let restored = KvStore::restore(&upper.snapshot().unwrap(), 10).unwrap();
        assert_eq!(restored.owned_range(), upper.owned_range());
        assert_eq!(restored, upper);
    }

    #[test]
    fn a_split_range_entry_applied_twice_divides_once() {
        let mut kv = KvStore::new(10);
        write(&mut kv, 1, 1, put("h"), 1).unwrap();
        write(&mut kv, 1, 2, put("p"), 2).unwrap();
        let plan = plan("m");
        let split = WriteOp::SplitRange(plan.clone());
        assert_eq!(
            write(&mut kv, 2, 1, split.clone(), 3),
            Ok(WriteResult::Split(plan.clone()))
        );
        let (got, upper) = kv.take_split_off().expect("the upper half");
        assert_eq!(got, plan);
        assert_eq!(upper.len(), 1);
        // Another client (a retried CLI) sends the same plan: answered, nothing divides again.
        assert_eq!(
            write(&mut kv, 3, 1, split, 4),
            Ok(WriteResult::Split(plan.clone()))
        );
        assert!(kv.take_split_off().is_none());
        assert_eq!(kv.len(), 1);
        // A plan made before this split (the same source epoch) is stale now.
        let stale = ShardMap::from_split_keys(&[b("g")])
            .unwrap()
            .plan_split(b"k")
            .unwrap();
        assert_eq!(
            write(&mut kv, 3, 2, WriteOp::SplitRange(stale), 5),
            Err(ServerError::Split(SplitError::Stale))
        );
    }

    #[test]
    fn the_meta_group_records_a_split_once_and_answers_a_retry_with_the_same_plan() {
        let base = Arc::new(ShardMap::from_split_keys(&[b("g")]).unwrap());
        let mut meta = KvStore::new(10);
        meta.set_base_map(base.clone());
        let split = |key: &str| WriteOp::SplitMap { key: b(key) };
        let Ok(WriteResult::Split(first)) = write(&mut meta, 1, 1, split("m"), 1) else {
            panic!("a plan")
        };
        assert_eq!((first.source, first.new_group, first.epoch), (2, 3, 2));
        assert_eq!(
            write(&mut meta, 2, 1, split("m"), 2),
            Ok(WriteResult::Split(first.clone()))
        );
        assert_eq!(meta.splits().len(), 1);
        let map = meta.shard_map().unwrap();
        assert_eq!((map.epoch, map.shards.len()), (2, 3));
        assert_eq!(
            write(&mut meta, 2, 2, split("g"), 3),
            Err(ServerError::Split(SplitError::AtBound))
        );
        let Ok(WriteResult::Split(second)) = write(&mut meta, 2, 3, split("t"), 4) else {
            panic!("a plan")
        };
        assert_eq!(
            (second.source, second.new_group, second.source_epoch),
            (3, 4, 2)
        );
        // The recorded map survives a snapshot (the base map is configuration, set again).
        let mut restored = KvStore::restore(&meta.snapshot().unwrap(), 10).unwrap();
        restored.set_base_map(base);
        assert_eq!(restored.shard_map(), meta.shard_map());
        // A data group is not the meta group.
        assert_eq!(
            write(&mut KvStore::new(10), 1, 1, split("m"), 1),
            Err(ServerError::Split(SplitError::Unsharded))
        );
    }

    #[test]
    fn a_split_waits_for_a_prepared_transaction_on_the_upper_half() {
        use crate::proto::{ShardTxnOp, TxnOp};
        let mut kv = KvStore::new(10);
        let prepare = ShardTxnOp::Prepare {
            txn: 7,
            coordinator: 2,
            participants: vec![2, 5],
            expected: vec![],
            writes: vec![TxnOp::Put {
                key: b("p"),
                value: b("1"),
            }],
        };
        let prepared = write(&mut kv, 1, 1, WriteOp::Shard(prepare), 1);
        assert!(prepared.is_ok(), "{prepared:?}");
        let plan = plan("m");
        assert_eq!(
            write(&mut kv, 2, 1, WriteOp::SplitRange(plan.clone()), 2),
            Err(ServerError::Locked {
                key: b("p"),
                txn: 7
            })
        );
        assert!(kv.take_split_off().is_none());
        // A lock below the split key does not hold it up.
        let mut kv = KvStore::new(10);
        let below = ShardTxnOp::Prepare {
            txn: 8,
            coordinator: 2,
            participants: vec![2, 5],
            expected: vec![],
            writes: vec![TxnOp::Put {
                key: b("h"),
                value: b("1"),
            }],
        };
        write(&mut kv, 1, 1, WriteOp::Shard(below), 1).unwrap();
        assert!(write(&mut kv, 2, 1, WriteOp::SplitRange(plan), 2).is_ok());
    }
}
