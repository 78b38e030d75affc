//! Shards on the wire: the shard map (key ranges → replication group) that the meta group holds
//! and every member answers `AdminRequest::Shards` with, and the key range one group serves.
//!
//! A node without `[shards]` runs one group, 0, holding every key: its map is
//! [`ShardMap::single`] (one shard, group 0, epoch 0). A sharded node runs the META group 0 (it
//! holds the map, no keys) and data groups `1..=N`; shard `i` (group `i`) covers
//! `[split[i-2], split[i-1])`, the first from the empty key, the last to the end.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The group that holds the shard map (and, unsharded, every key).
pub const META_GROUP: u64 = 0;

/// Most shards a cluster may be bootstrapped with.
pub const MAX_SHARDS: usize = 4096;

/// A half-open key range `[start, end)`; `end: None` runs to the last key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// First key (inclusive).
    pub start: Bytes,
    /// End key (exclusive), or none.
    pub end: Option<Bytes>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        KeyRange {
            start: Bytes::new(),
            end: None,
        }
    }

    /// No key (the meta group's range).
    pub fn empty() -> Self {
        KeyRange {
            start: Bytes::new(),
            end: Some(Bytes::new()),
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= &self.start[..] && self.end.as_ref().is_none_or(|end| key < &end[..])
    }

    /// Whether the scan `[start, end)` lies inside the range (an empty scan always does).
    pub fn covers(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        if end.is_some_and(|end| end <= start) {
            return true;
        }
        let starts_inside = start >= &self.start[..];
        let ends_inside = match (&self.end, end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs <= &mine[..],
        };
        starts_inside && ends_inside
    }

    /// The part of the scan `[start, end)` inside this range, if any.
    pub fn clip(&self, start: &[u8], end: Option<&[u8]>) -> Option<KeyRange> {
        let from: &[u8] = start.max(&self.start[..]);
        let to: Option<&[u8]> = match (end, self.end.as_deref()) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a),
            (Some(a), Some(b)) => Some(a.min(b)),
        };
        if to.is_some_and(|to| to <= from) {
            return None;
        }
        Some(KeyRange {
            start: Bytes::copy_from_slice(from),
            end: to.map(Bytes::copy_from_slice),
        })
    }
}

/// One shard: a key range, the group replicating it, and what the answering member knows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// The replication group serving the range.
    pub group: u64,
    /// The range.
    pub range: KeyRange,
    /// The range's version: a request routed with another epoch is answered `WrongShard`.
    pub epoch: u64,
    /// The group's leader as the answering member knows it.
    pub leader: Option<u64>,
    /// Keys of the group on the answering member (its replica, possibly behind).
    pub keys: u64,
    /// Whether the group is quiet (idle, not ticking) on the answering member.
    pub quiet: bool,
}

/// The shard map: every key range and its group, at map version `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// The map's version (raised by every change of the ranges).
    pub epoch: u64,
    /// The data shards in key order, covering every key exactly once.
    pub shards: Vec<ShardInfo>,
}

/// Why split keys cannot make a shard map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    /// A split key is empty (the first shard already starts at the empty key).
    #[error("split key {0} is empty; the first shard starts at the empty key already")]
    EmptySplit(usize),
    /// Split keys are not strictly increasing.
    #[error("split keys must be strictly increasing (key {0} is not above the one before)")]
    Unordered(usize),
    /// Too many or too few shards.
    #[error("{0} shards asked for; between 1 and {max} are supported", max = MAX_SHARDS)]
    Count(usize),
}

impl ShardMap {
    /// The map of an unsharded node: one shard, group 0, every key, epoch 0.
    pub fn single() -> Self {
        ShardMap {
            epoch: 0,
            shards: vec![ShardInfo {
                group: META_GROUP,
                range: KeyRange::all(),
                epoch: 0,
                leader: None,
                keys: 0,
                quiet: false,
            }],
        }
    }

    /// The bootstrap map of a sharded cluster: `split.len() + 1` data shards, groups `1..`, every
    /// range at epoch 1.
    pub fn from_split_keys(split: &[Bytes]) -> Result<Self, ShardMapError> {
        if split.len() + 1 > MAX_SHARDS {
            return Err(ShardMapError::Count(split.len() + 1));
        }
        for (i, key) in split.iter().enumerate() {
            if key.is_empty() {
                return Err(ShardMapError::EmptySplit(i));
            }
            if i > 0 && split[i - 1] >= *key {
                return Err(ShardMapError::Unordered(i));
            }
        }
        let mut starts = std::iter::once(Bytes::new()).chain(split.iter().cloned());
        let mut ends = split.iter().cloned().map(Some).chain(std::iter::once(None));
        let shards = (1..=split.len() as u64 + 1)
            .map(|group| ShardInfo {
                group,
                range: KeyRange {
                    start: starts.next().expect("one start per shard"),
                    end: ends.next().expect("one end per shard"),
                },
                epoch: 1,
                leader: None,
                keys: 0,
                quiet: false,
            })
            .collect();
        Ok(ShardMap { epoch: 1, shards })
    }

    /// The split keys of `count` shards dividing the first key byte evenly: shard `i` starts at
    /// byte `⌊256·i / count⌋` (so `count` is at most 256).
    pub fn even_split_keys(count: usize) -> Result<Vec<Bytes>, ShardMapError> {
        if count == 0 || count > 256 {
            return Err(ShardMapError::Count(count));
        }
        Ok((1..count)
            .map(|i| Bytes::from(vec![(256 * i / count) as u8]))
            .collect())
    }

    /// Whether the map has data groups besides the meta group (a sharded cluster).
    pub fn is_sharded(&self) -> bool {
        self.shards.iter().any(|s| s.group != META_GROUP)
    }

    /// The shard holding `key`. A well-formed map covers every key; a malformed one (from an
    /// untrusted peer) answers the last shard rather than panic.
    pub fn locate(&self, key: &[u8]) -> Option<&ShardInfo> {
        let after = self
            .shards
            .partition_point(|shard| shard.range.start.as_ref() <= key);
        self.shards
            .get(after.checked_sub(1)?)
            .filter(|shard| shard.range.contains(key))
    }

    /// The shard of `group`.
    pub fn shard(&self, group: u64) -> Option<&ShardInfo> {
        self.shards.iter().find(|s| s.group == group)
    }

    /// The shards a scan `[start, end)` touches, in key order, each with its part of the scan.
    pub fn overlapping<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a ShardInfo, KeyRange)> + 'a {
        self.shards
            .iter()
            .filter_map(move |shard| Some((shard, shard.range.clip(start, end)?)))
    }

    /// The split keys of a bootstrap map (the starts of every shard but the first).
    pub fn split_keys(&self) -> Vec<Bytes> {
        self.shards
            .iter()
            .skip(1)
            .map(|s| s.range.start.clone())
            .collect()
    }
}

/// One split of a range, decided in the meta group's log: shard `source` (at `source_epoch`,
/// covering `[start, end)`) divides at `key`; the new group `new_group` takes `[key, end)`. Both
/// ranges move to `epoch`, the map to `map_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPlan {
    /// Where the range divides (the new group's first key).
    pub key: Bytes,
    /// The group whose range divides.
    pub source: u64,
    /// Its range epoch before the split.
    pub source_epoch: u64,
    /// Its range before the split.
    pub start: Bytes,
    /// Its range's end before the split (the new group's end).
    pub end: Option<Bytes>,
    /// The group created for the upper half (the highest group id + 1).
    pub new_group: u64,
    /// The range epoch of both halves after the split (`source_epoch + 1`).
    pub epoch: u64,
    /// The map epoch after the split.
    pub map_epoch: u64,
}

impl SplitPlan {
    /// The source's range after the split.
    pub fn lower(&self) -> KeyRange {
        KeyRange {
            start: self.start.clone(),
            end: Some(self.key.clone()),
        }
    }

    /// The new group's range.
    pub fn upper(&self) -> KeyRange {
        KeyRange {
            start: self.key.clone(),
            end: self.end.clone(),
        }
    }
}

/// Why a range cannot be split as asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SplitError {
    /// The key is empty or already the first key of a range.
    #[error("the key is already a range boundary (or empty): nothing to split")]
    AtBound,
    /// The node runs one group over every key.
    #[error("this cluster is not sharded (start it with [shards] to split ranges)")]
    Unsharded,
    /// The plan was made against another version of the map or range (another split won).
    #[error("the plan was made for another version of the shard map: plan again")]
    Stale,
    /// No shard holds the key (a malformed map).
    #[error("no shard holds the key")]
    Outside,
    /// The new group id is in use already.
    #[error("group {0} exists already")]
    GroupTaken(u64),
    /// Too many shards already.
    #[error("{max} shards already; no more splits", max = MAX_SHARDS)]
    TooMany,
}

impl ShardMap {
    /// Plans splitting the range holding `key` at `key`: the new group is the highest group id
    /// plus one, both halves move to the source's epoch plus one and the map to its epoch plus one.
    pub fn plan_split(&self, key: &[u8]) -> Result<SplitPlan, SplitError> {
        if !self.is_sharded() {
            return Err(SplitError::Unsharded);
        }
        if key.is_empty() {
            return Err(SplitError::AtBound);
        }
        if self.shards.len() >= MAX_SHARDS {
            return Err(SplitError::TooMany);
        }
        let source = self.locate(key).ok_or(SplitError::Outside)?;
        if source.range.start.as_ref() == key {
            return Err(SplitError::AtBound);
        }
        let highest = self.shards.iter().map(|s| s.group).max().unwrap_or(0);
        Ok(SplitPlan {
            key: Bytes::copy_from_slice(key),
            source: source.group,
            source_epoch: source.epoch,
            start: source.range.start.clone(),
            end: source.range.end.clone(),
            new_group: highest + 1,
            epoch: source.epoch + 1,
            map_epoch: self.epoch + 1,
        })
    }

    /// Whether `plan` is applied to this map already.
    pub fn has_split(&self, plan: &SplitPlan) -> bool {
        let (Some(source), Some(new)) = (self.shard(plan.source), self.shard(plan.new_group))
        else {
            return false;
        };
        source
            .range
            .end
            .as_ref()
            .is_some_and(|end| *end <= plan.key)
            && source.range.start == plan.start
            && new.range.start == plan.key
            && new.epoch >= plan.epoch
    }

    /// Applies `plan`: `Ok(false)` if it was applied already (a retried split changes nothing),
    /// `Ok(true)` if the map changed; refused if it was made for another version of the map.
    pub fn apply_split(&mut self, plan: &SplitPlan) -> Result<bool, SplitError> {
        if self.has_split(plan) {
            return Ok(false);
        }
        if self.epoch + 1 != plan.map_epoch || plan.epoch != plan.source_epoch + 1 {
            return Err(SplitError::Stale);
        }
        if self.shard(plan.new_group).is_some() || plan.new_group == META_GROUP {
            return Err(SplitError::GroupTaken(plan.new_group));
        }
        let at = self
            .shards
            .iter()
            .position(|s| s.group == plan.source)
            .ok_or(SplitError::Stale)?;
        let source = &mut self.shards[at];
        if source.epoch != plan.source_epoch
            || source.range
                != (KeyRange {
                    start: plan.start.clone(),
                    end: plan.end.clone(),
                })
            || !source.range.contains(&plan.key)
            || source.range.start == plan.key
        {
            return Err(SplitError::Stale);
        }
        source.range = plan.lower();
        source.epoch = plan.epoch;
        let new = ShardInfo {
            group: plan.new_group,
            range: plan.upper(),
            epoch: plan.epoch,
            leader: None,
            keys: 0,
            quiet: false,
        };
        self.shards.insert(at + 1, new);
        self.epoch = plan.map_epoch;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(split: &[&str]) -> Vec<Bytes> {
        split.iter().map(|k| Bytes::from(k.to_string())).collect()
    }

    #[test]
    fn split_keys_make_contiguous_ranges_and_locate_finds_each_key() {
        let map = ShardMap::from_split_keys(&keys(&["g", "n"])).unwrap();
        assert_eq!(map.shards.len(), 3);
        assert_eq!(map.locate(b"a").unwrap().group, 1);
        assert_eq!(map.locate(b"g").unwrap().group, 2);
        assert_eq!(map.locate(b"mzz").unwrap().group, 2);
        assert_eq!(map.locate(b"n").unwrap().group, 3);
        assert_eq!(map.locate(b"\xff").unwrap().group, 3);
        assert_eq!(map.locate(b"").unwrap().group, 1);
        assert_eq!(map.split_keys(), keys(&["g", "n"]));
        assert!(map.is_sharded());
        assert!(!ShardMap::single().is_sharded());
        assert_eq!(ShardMap::single().locate(b"x").unwrap().group, 0);
    }

    #[test]
    fn bad_split_keys_are_refused() {
        assert_eq!(
            ShardMap::from_split_keys(&keys(&["n", "g"])),
            Err(ShardMapError::Unordered(1))
        );
        assert_eq!(
            ShardMap::from_split_keys(&keys(&["g", "g"])),
            Err(ShardMapError::Unordered(1))
        );
        assert_eq!(
            ShardMap::from_split_keys(&keys(&[""])),
            Err(ShardMapError::EmptySplit(0))
        );
        assert_eq!(ShardMap::even_split_keys(0), Err(ShardMapError::Count(0)));
        assert_eq!(
            ShardMap::even_split_keys(257),
            Err(ShardMapError::Count(257))
        );
    }

    #[test]
    fn an_even_split_divides_the_first_byte() {
        let split = ShardMap::even_split_keys(4).unwrap();
        assert_eq!(
            split,
            vec![
                Bytes::from_static(&[64]),
                Bytes::from_static(&[128]),
                Bytes::from_static(&[192])
            ]
        );
        let map = ShardMap::from_split_keys(&split).unwrap();
        assert_eq!(map.locate(b"?").unwrap().group, 1);
        assert_eq!(map.locate(b"@").unwrap().group, 2);
        assert_eq!(map.locate(b"key-1").unwrap().group, 2);
        assert_eq!(map.locate(&[200]).unwrap().group, 4);
        assert!(ShardMap::even_split_keys(1).unwrap().is_empty());
    }

    #[test]
    fn a_scan_is_cut_into_the_shards_it_touches_in_key_order() {
        let map = ShardMap::from_split_keys(&keys(&["g", "n"])).unwrap();
        let parts: Vec<(u64, KeyRange)> = map
            .overlapping(b"c", Some(b"p"))
            .map(|(s, r)| (s.group, r))
            .collect();
        let range = |s: &str, e: &str| KeyRange {
            start: Bytes::from(s.to_string()),
            end: Some(Bytes::from(e.to_string())),
        };
        assert_eq!(
            parts,
            vec![
                (1, range("c", "g")),
                (2, range("g", "n")),
                (3, range("n", "p"))
            ]
        );
        let tail: Vec<u64> = map.overlapping(b"h", None).map(|(s, _)| s.group).collect();
        assert_eq!(tail, vec![2, 3]);
        assert_eq!(map.overlapping(b"x", Some(b"b")).count(), 0);
    }

    #[test]
    fn a_range_covers_only_scans_inside_it() {
        let range = KeyRange {
            start: Bytes::from_static(b"g"),
            end: Some(Bytes::from_static(b"n")),
        };
        assert!(range.covers(b"g", Some(b"n")));
        assert!(range.covers(b"h", Some(b"i")));
        assert!(!range.covers(b"a", Some(b"i")));
        assert!(!range.covers(b"h", None));
        assert!(!range.covers(b"h", Some(b"z")));
        assert!(KeyRange::all().covers(b"", None));
        assert!(!KeyRange::empty().contains(b"a"));
        assert!(!KeyRange::empty().contains(b""));
    }

    fn split(map: &mut ShardMap, key: &str) -> SplitPlan {
        let plan = map.plan_split(key.as_bytes()).unwrap();
        assert_eq!(map.apply_split(&plan), Ok(true));
        plan
    }

    #[test]
    fn a_split_divides_one_range_into_a_new_group_at_the_next_epochs() {
        let mut map = ShardMap::from_split_keys(&keys(&["g", "n"])).unwrap();
        let plan = split(&mut map, "k");
        assert_eq!(
            (
                plan.source,
                plan.new_group,
                plan.source_epoch,
                plan.epoch,
                plan.map_epoch
            ),
            (2, 4, 1, 2, 2)
        );
        assert_eq!(map.epoch, 2);
        let groups: Vec<(u64, u64)> = map.shards.iter().map(|s| (s.group, s.epoch)).collect();
        assert_eq!(groups, vec![(1, 1), (2, 2), (4, 2), (3, 1)]);
        assert_eq!(map.locate(b"j").unwrap().group, 2);
        assert_eq!(map.locate(b"k").unwrap().group, 4);
        assert_eq!(map.locate(b"mz").unwrap().group, 4);
        assert_eq!(map.locate(b"n").unwrap().group, 3);
        assert_eq!(map.shard(4).unwrap().range, plan.upper());
        assert_eq!(map.shard(2).unwrap().range, plan.lower());
        // The new group splits again; ids keep growing, the last range stays open-ended.
        let again = split(&mut map, "z");
        assert_eq!((again.source, again.new_group, again.epoch), (3, 5, 2));
        assert_eq!(map.locate(b"zz").unwrap().group, 5);
        assert_eq!(map.shards.last().unwrap().range.end, None);
    }

    #[test]
    fn applying_a_split_twice_changes_nothing_and_a_stale_plan_is_refused() {
        let mut map = ShardMap::from_split_keys(&keys(&["g"])).unwrap();
        let plan = map.plan_split(b"m").unwrap();
        let stale = map.plan_split(b"p").unwrap();
        assert_eq!(map.apply_split(&plan), Ok(true));
        let after = map.clone();
        assert_eq!(map.apply_split(&plan), Ok(false));
        assert_eq!(map, after);
        // Planned against the map before `plan`: same new group id, old epochs.
        assert_eq!(map.apply_split(&stale), Err(SplitError::Stale));
        assert_eq!(map, after);
        // A plan whose group id is taken is refused.
        let mut taken = map.plan_split(b"q").unwrap();
        taken.new_group = 3;
        assert_eq!(map.apply_split(&taken), Err(SplitError::GroupTaken(3)));
    }

    #[test]
    fn a_split_at_a_bound_or_on_an_unsharded_map_is_refused() {
        let map = ShardMap::from_split_keys(&keys(&["g"])).unwrap();
        assert_eq!(map.plan_split(b"g"), Err(SplitError::AtBound));
        assert_eq!(map.plan_split(b""), Err(SplitError::AtBound));
        assert_eq!(
            ShardMap::single().plan_split(b"g"),
            Err(SplitError::Unsharded)
        );
        let mut map = map;
        split(&mut map, "m");
        assert_eq!(map.plan_split(b"m"), Err(SplitError::AtBound));
    }
}
