//! A Merkle tree over one partition's keys, for anti-entropy whose traffic grows with the
//! differences rather than the data.
//!
//! The shape is fixed (`fanout^depth` leaves), so two replicas' trees line up node for node
//! without exchanging structure. A key's leaf is a hash of the key; a leaf's hash is the XOR of
//! `hash(key, object digest)` over its keys, so a write updates one leaf in O(1) and the interior
//! is rebuilt lazily, once per exchange, not per write. Level 0 is the root.

use std::collections::BTreeMap;

use crate::hash::{domain, stable_hash};
use crate::types::Key;

/// The tree of one partition on one replica.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    fanout: u32,
    depth: u32,
    /// `levels[l]` holds the `fanout^l` hashes of level `l`; the last is the leaves.
    levels: Vec<Vec<u64>>,
    dirty: bool,
    /// Per leaf: key → object digest. One small map per leaf, not one over every key: a
    /// write searches only its leaf's keys, and an existing key is found without a copy.
    entries: Vec<BTreeMap<Key, u64>>,
    /// Keys over all leaves.
    len: usize,
}

impl MerkleTree {
    /// An empty tree; the shape was validated by the config (fanout ≥ 2, depth ≥ 1, at most
    /// 2^20 leaves).
    pub fn new(fanout: u32, depth: u32) -> Self {
        let levels = (0..=depth)
            .map(|l| vec![0; fanout.pow(l) as usize])
            .collect();
        MerkleTree {
            fanout,
            depth,
            levels,
            dirty: false,
            entries: (0..fanout.pow(depth)).map(|_| BTreeMap::new()).collect(),
            len: 0,
        }
    }

    /// The deepest level (the leaves).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Children per interior node.
    pub fn fanout(&self) -> u32 {
        self.fanout
    }

    /// Number of nodes at `level` (0 for a level past the leaves).
    pub fn width(&self, level: u32) -> u32 {
        if level > self.depth {
            0
        } else {
            self.fanout.pow(level)
        }
    }

    /// The leaf `key` belongs to.
    pub fn leaf_of(&self, key: &[u8]) -> u32 {
        let h = stable_hash(domain::MERKLE_BUCKET, key);
        // Multiply-shift: uniform over the leaves without a modulo bias.
        ((u128::from(h) * u128::from(self.width(self.depth))) >> 64) as u32
    }

    /// Records `key`'s current object digest (`None`: the key is gone).
    pub fn set(&mut self, key: &[u8], digest: Option<u64>) {
        let leaf = self.leaf_of(key) as usize;
        let hash = &mut self.levels.last_mut().expect("depth >= 1")[leaf];
        let entries = &mut self.entries[leaf];
        match (entries.get_mut(key), digest) {
            (Some(old), Some(d)) => {
                if *old == d {
                    return;
                }
                *hash ^= entry_hash(key, *old) ^ entry_hash(key, d);
                *old = d;
            }
            (Some(_), None) => {
                let old = entries.remove(key).expect("just found");
                *hash ^= entry_hash(key, old);
                self.len -= 1;
            }
            (None, Some(d)) => {
                *hash ^= entry_hash(key, d);
                entries.insert(key.to_vec(), d);
                self.len += 1;
            }
            (None, None) => return,
        }
        self.dirty = true;
    }

    /// The hash of node `index` at `level` (`None` if there is no such node).
    pub fn hash(&mut self, level: u32, index: u32) -> Option<u64> {
        if self.dirty {
            self.rebuild();
        }
        self.levels
            .get(level as usize)?
            .get(index as usize)
            .copied()
    }

    /// The children of node `index` at `level` (indexes at `level + 1`).
    pub fn children(&self, index: u32) -> std::ops::Range<u32> {
        index * self.fanout..(index + 1) * self.fanout
    }

    /// The `(key, digest)` entries of one leaf.
    pub fn leaf_entries(&self, leaf: u32) -> impl Iterator<Item = (&Key, u64)> + '_ {
        self.entries
            .get(leaf as usize)
            .into_iter()
            .flat_map(|leaf| leaf.iter().map(|(k, d)| (k, *d)))
    }

    /// Number of keys in the tree.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn rebuild(&mut self) {
        for level in (0..self.depth as usize).rev() {
            let (upper, lower) = self.levels.split_at_mut(level + 1);
            let children = &lower[0];
            for (i, h) in upper[level].iter_mut().enumerate() {
                let f = self.fanout as usize;
                let kids = &children[i * f..(i + 1) * f];
                *h = if kids.iter().all(|&k| k == 0) {
                    0 // empty subtrees hash to 0 on every replica
                } else {
                    stable_hash(domain::MERKLE_NODE, kids)
                };
            }
        }
        self.dirty = false;
    }
}

fn entry_hash(key: &[u8], digest: u64) -> u64 {
    stable_hash(domain::MERKLE_ENTRY, &(key, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_contents_give_equal_roots_whatever_the_insertion_order() {
        let mut a = MerkleTree::new(4, 3);
        let mut b = MerkleTree::new(4, 3);
        for k in 0..50u32 {
            a.set(&k.to_le_bytes(), Some(u64::from(k)));
        }
        for k in (0..50u32).rev() {
            b.set(&k.to_le_bytes(), Some(99));
            b.set(&k.to_le_bytes(), Some(u64::from(k)));
        }
        assert_eq!(a.hash(0, 0), b.hash(0, 0));
        b.set(&7u32.to_le_bytes(), None);
        assert_ne!(a.hash(0, 0), b.hash(0, 0));
        a.set(&7u32.to_le_bytes(), None);
        assert_eq!(a.hash(0, 0), b.hash(0, 0));
    }

    #[test]
    fn one_difference_changes_exactly_one_path() {
        let mut a = MerkleTree::new(4, 3);
        let mut b = MerkleTree::new(4, 3);
        for k in 0..200u32 {
            a.set(&k.to_le_bytes(), Some(1));
            b.set(&k.to_le_bytes(), Some(1));
        }
        b.set(&5u32.to_le_bytes(), Some(2));
        for level in 0..=3 {
            let differing = (0..a.width(level))
                .filter(|&i| a.hash(level, i) != b.hash(level, i))
                .count();
            assert_eq!(differing, 1, "level {level}");
        }
    }

    #[test]
    fn leaves_list_exactly_their_keys_and_len_counts_every_key() {
        let mut t = MerkleTree::new(4, 2);
        for k in 0..100u32 {
            t.set(&k.to_be_bytes(), Some(u64::from(k)));
        }
        t.set(&3u32.to_be_bytes(), Some(1000)); // an overwrite adds no key
        t.set(&4u32.to_be_bytes(), None);
        t.set(&4u32.to_be_bytes(), None); // removing a missing key is a no-op
        assert_eq!(t.len(), 99);
        let mut listed = Vec::new();
        for leaf in 0..t.width(t.depth()) {
            let keys: Vec<&Key> = t.leaf_entries(leaf).map(|(k, _)| k).collect();
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "leaf {leaf} not in key order"
            );
            for (k, d) in t.leaf_entries(leaf) {
                assert_eq!(t.leaf_of(k), leaf);
                listed.push((k.clone(), d));
            }
        }
        listed.sort();
        let mut want: Vec<(Key, u64)> = (0..100u32)
            .filter(|&k| k != 4)
            .map(|k| {
                (
                    k.to_be_bytes().to_vec(),
                    if k == 3 { 1000 } else { u64::from(k) },
                )
            })
            .collect();
        want.sort();
        assert_eq!(listed, want);
    }
}
