//! Placement by consistent hashing with virtual nodes (Dynamo §4.2).
//!
//! Each member owns `vnodes` points on a 64-bit ring; a key hashes to a point and belongs to the
//! *partition* ending at the next vnode clockwise. The partition's replicas (its preference list)
//! are the first `N` distinct members met walking clockwise from there. A partition is also the
//! unit of anti-entropy: every replica of it holds exactly its keys, so two replicas can compare
//! one Merkle tree per shared partition.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::hash::{domain, stable_hash};
use crate::types::NodeId;

/// A partition's index on the ring (0-based, in ring order).
pub type PartitionId = u32;

/// The ring: vnode points, and each partition's preference list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    /// Sorted vnode positions; partition `i` is `(points[i-1], points[i]]` (wrapping).
    points: Vec<u64>,
    /// Preference list of each partition, `N` distinct members.
    replicas: Vec<Vec<NodeId>>,
    members: Vec<NodeId>,
}

impl Ring {
    /// Places `members` with `vnodes` points each; `replication` (N) is capped at the number
    /// of members (then every member holds every key).
    pub fn new(members: &[NodeId], vnodes: u32, replication: usize) -> Result<Self, ConfigError> {
        if members.is_empty() {
            return Err(ConfigError::NoMembers);
        }
        if replication == 0 {
            return Err(ConfigError::ZeroReplication);
        }
        if vnodes == 0 || vnodes > 4096 {
            return Err(ConfigError::BadVnodes(vnodes));
        }
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateMember);
        }
        let n = replication.min(sorted.len());
        let mut points: Vec<(u64, NodeId)> = sorted
            .iter()
            .flat_map(|&m| (0..vnodes).map(move |v| (stable_hash(domain::RING_VNODE, &(m, v)), m)))
            .collect();
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        let replicas = (0..points.len())
            .map(|start| {
                let mut list = Vec::with_capacity(n);
                for step in 0..points.len() {
                    let owner = points[(start + step) % points.len()].1;
                    if !list.contains(&owner) {
                        list.push(owner);
                        if list.len() == n {
                            break;
                        }
                    }
                }
                list
            })
            .collect();
        Ok(Ring {
            points: points.iter().map(|p| p.0).collect(),
            replicas,
            members: sorted,
        })
    }

    /// The partition `key` falls in.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        let h = stable_hash(domain::RING_KEY, key);
        let i = self.points.partition_point(|&p| p < h);
        (if i == self.points.len() { 0 } else { i }) as PartitionId
    }

    /// The preference list of `key`: its N replicas, the first of which is its *owner*
    /// (it runs tombstone collection for the key).
    pub fn replicas(&self, key: &[u8]) -> &[NodeId] {
        self.partition_replicas(self.partition_of(key))
    }

    /// The replicas of a partition (empty for an unknown partition).
    pub fn partition_replicas(&self, p: PartitionId) -> &[NodeId] {
        self.replicas.get(p as usize).map_or(&[], Vec::as_slice)
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.points.len() as PartitionId
    }

    /// The partitions `node` replicates.
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        (0..self.partitions())
            .filter(|&p| self.partition_replicas(p).contains(&node))
            .collect()
    }

    /// Members, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Replication factor in effect (N, capped at the member count).
    pub fn replication(&self) -> usize {
        self.replicas.first().map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_n_distinct_replicas() {
        let ring = Ring::new(&[1, 2, 3, 4, 5], 16, 3).unwrap();
        for k in 0..1000u32 {
            let r = ring.replicas(&k.to_le_bytes());
            assert_eq!(r.len(), 3);
            let mut s = r.to_vec();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 3);
        }
    }

    #[test]
    fn virtual_nodes_spread_keys_roughly_evenly() {
        let ring = Ring::new(&[1, 2, 3, 4, 5], 64, 1).unwrap();
        let mut counts = [0u32; 6];
        for k in 0..20_000u32 {
            counts[ring.replicas(&k.to_le_bytes())[0] as usize] += 1;
        }
        for &c in &counts[1..] {
            // 4,000 each if perfect; 64 vnodes keep every member within ±35 %.
            assert!((2_600..=5_400).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_small_cluster_replicates_everything_everywhere() {
        let ring = Ring::new(&[7, 9], 4, 3).unwrap();
        assert_eq!(ring.replication(), 2);
        assert_eq!(ring.partitions_of(7).len() as u32, ring.partitions());
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        assert_eq!(Ring::new(&[], 4, 3), Err(ConfigError::NoMembers));
        assert_eq!(Ring::new(&[1, 1], 4, 3), Err(ConfigError::DuplicateMember));
        assert_eq!(Ring::new(&[1], 0, 3), Err(ConfigError::BadVnodes(0)));
        assert_eq!(Ring::new(&[1], 4, 0), Err(ConfigError::ZeroReplication));
    }
}
