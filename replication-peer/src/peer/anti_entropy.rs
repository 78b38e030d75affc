//! Merkle anti-entropy, one partition with one peer per exchange: roots are compared, then only
//! the children of differing nodes, level by level, then the `(key, digest)` entries of differing
//! leaves, then only the objects that differ. Traffic grows with the differences, not the data:
//! about `depth × fanout × 12` bytes per differing leaf, plus its entries and the objects.
//!
//! Exchanges run round-robin over every (partition, peer) pair, a few per interval, so a full
//! pass takes `pairs / exchanges` intervals whatever the differences. A peer heard from after
//! [`RETURN_AFTER_INTERVALS`] intervals of silence (or for the first time since this node
//! started) is taken to be back from a crash or a partition: every partition shared with it is
//! compared at once, so repair after a return does not wait for the round-robin.

use std::collections::BTreeMap;

use super::Peer;
use crate::error::StepError;
use crate::message::Message;
use crate::object::Object;
use crate::ring::{PartitionId, Ring};
use crate::types::{Key, NodeId};

#[derive(Debug)]
pub(crate) struct AntiEntropy {
    /// Every (partition, other replica) this node shares, in a fixed order.
    pairs: Vec<(PartitionId, NodeId)>,
    cursor: usize,
    next_at: u64,
    pub(crate) last_exchange: BTreeMap<NodeId, u64>,
    /// When each peer's last message arrived.
    last_heard: BTreeMap<NodeId, u64>,
}

/// Silence, in anti-entropy intervals, after which a peer heard again counts as returned.
pub(crate) const RETURN_AFTER_INTERVALS: u64 = 10;

impl AntiEntropy {
    pub(crate) fn new(ring: &Ring, me: NodeId) -> Self {
        let mut pairs = Vec::new();
        for p in ring.partitions_of(me) {
            for &r in ring.partition_replicas(p) {
                if r != me {
                    pairs.push((p, r));
                }
            }
        }
        AntiEntropy {
            pairs,
            cursor: 0,
            next_at: 0,
            last_exchange: BTreeMap::new(),
            last_heard: BTreeMap::new(),
        }
    }
}

impl Peer {
    pub(super) fn run_anti_entropy(&mut self) {
        if self.now < self.anti_entropy.next_at || self.anti_entropy.pairs.is_empty() {
            return;
        }
        self.anti_entropy.next_at = self.now + self.config.anti_entropy_interval_ms;
        for _ in 0..self
            .config
            .anti_entropy_exchanges
            .min(self.anti_entropy.pairs.len())
        {
            let (p, peer) = self.anti_entropy.pairs[self.anti_entropy.cursor];
            self.anti_entropy.cursor =
                (self.anti_entropy.cursor + 1) % self.anti_entropy.pairs.len();
            let root = self.tree(p).hash(0, 0).unwrap_or(0);
            self.send(
                peer,
                Message::AeHashes {
                    partition: p,
                    level: 0,
                    nodes: vec![(0, root)],
                },
            );
        }
    }

    /// Notes a message from `from`; starts a full exchange with it if it has just returned.
    pub(super) fn heard_from(&mut self, from: NodeId) {
        let silence = RETURN_AFTER_INTERVALS.saturating_mul(self.config.anti_entropy_interval_ms);
        let returned = self
            .anti_entropy
            .last_heard
            .insert(from, self.now)
            .is_none_or(|last| self.now.saturating_sub(last) > silence);
        if returned && self.config.anti_entropy_on_return {
            self.start_anti_entropy_with(from);
        }
    }

    /// Starts an exchange of every shared partition with `peer` now (the embedder may call it
    /// when a peer comes back; benches use it).
    pub fn start_anti_entropy_with(&mut self, peer: NodeId) {
        let parts: Vec<PartitionId> = self
            .anti_entropy
            .pairs
            .iter()
            .filter(|(_, r)| *r == peer)
            .map(|(p, _)| *p)
            .collect();
        for p in parts {
            let root = self.tree(p).hash(0, 0).unwrap_or(0);
            self.send(
                peer,
                Message::AeHashes {
                    partition: p,
                    level: 0,
                    nodes: vec![(0, root)],
                },
            );
        }
    }

    fn tree(&mut self, p: PartitionId) -> &mut crate::merkle::MerkleTree {
        self.trees
            .get_mut(&p)
            .expect("a pair names only partitions this node holds")
    }

    fn shared(&self, from: NodeId, p: PartitionId) -> Result<(), StepError> {
        let r = self.ring.partition_replicas(p);
        if r.contains(&from) && r.contains(&self.id()) {
            Ok(())
        } else {
            Err(StepError::BadExchange {
                partition: p,
                reason: "the partition is not shared by both nodes",
            })
        }
    }

    pub(super) fn on_ae_hashes(
        &mut self,
        from: NodeId,
        p: PartitionId,
        level: u32,
        nodes: Vec<(u32, u64)>,
    ) -> Result<(), StepError> {
        self.shared(from, p)?;
        let tree = self.tree(p);
        let (depth, fanout, width) = (tree.depth(), tree.fanout(), tree.width(level));
        if level > depth || nodes.len() > width as usize || nodes.iter().any(|(i, _)| *i >= width) {
            return Err(StepError::BadExchange {
                partition: p,
                reason: "no such tree nodes",
            });
        }
        #[allow(unused_mut)]
        let mut differing: Vec<u32> = nodes
            .iter()
            .filter(|(i, h)| tree.hash(level, *i) != Some(*h))
            .map(|(i, _)| *i)
            .collect();
        #[cfg(feature = "planted-bugs")]
        if self.has_bug(super::PlantedBug::AntiEntropySkipsSubtree) && level >= 1 {
            differing.retain(|i| i % fanout != 0);
        }
        self.anti_entropy.last_exchange.insert(from, self.now);
        if differing.is_empty() {
            return Ok(());
        }
        let tree = self.tree(p);
        let message = if level < depth {
            let mut children = Vec::with_capacity(differing.len() * fanout as usize);
            for i in differing {
                for c in tree.children(i) {
                    children.push((c, tree.hash(level + 1, c).unwrap_or(0)));
                }
            }
            Message::AeHashes {
                partition: p,
                level: level + 1,
                nodes: children,
            }
        } else {
            let entries = differing
                .iter()
                .flat_map(|&leaf| tree.leaf_entries(leaf).map(|(k, d)| (k.clone(), d)))
                .collect();
            Message::AeKeys {
                partition: p,
                leaves: differing,
                entries,
            }
        };
        self.send(from, message);
        Ok(())
    }

    pub(super) fn on_ae_keys(
        &mut self,
        from: NodeId,
        p: PartitionId,
        leaves: Vec<u32>,
        entries: Vec<(Key, u64)>,
    ) -> Result<(), StepError> {
        self.shared(from, p)?;
        let tree = self.tree(p);
        let width = tree.width(tree.depth());
        if leaves.len() > width as usize
            || leaves.iter().any(|&l| l >= width)
            || entries
                .iter()
                .any(|(k, _)| !leaves.contains(&tree.leaf_of(k)))
        {
            return Err(StepError::BadExchange {
                partition: p,
                reason: "entries outside the leaves named",
            });
        }
        let theirs: BTreeMap<Key, u64> = entries.into_iter().collect();
        let mine: BTreeMap<Key, u64> = leaves
            .iter()
            .flat_map(|&l| tree.leaf_entries(l).map(|(k, d)| (k.clone(), d)))
            .collect();
        let want: Vec<Key> = theirs
            .iter()
            .filter(|(k, d)| mine.get(*k) != Some(d))
            .map(|(k, _)| k.clone())
            .collect();
        let send: Vec<Key> = mine
            .iter()
            .filter(|(k, d)| theirs.get(*k) != Some(d))
            .map(|(k, _)| k.clone())
            .collect();
        let objects = self.durable_objects(send);
        self.anti_entropy.last_exchange.insert(from, self.now);
        if !objects.is_empty() || !want.is_empty() {
            self.send(
                from,
                Message::AeObjects {
                    partition: p,
                    objects,
                    want,
                },
            );
        }
        Ok(())
    }

    pub(super) fn on_ae_objects(
        &mut self,
        from: NodeId,
        p: PartitionId,
        objects: Vec<(Key, Object)>,
        want: Vec<Key>,
    ) -> Result<(), StepError> {
        self.shared(from, p)?;
        if objects
            .iter()
            .map(|(k, _)| k)
            .chain(&want)
            .any(|k| self.ring.partition_of(k) != p)
        {
            return Err(StepError::BadExchange {
                partition: p,
                reason: "a key outside the partition",
            });
        }
        for (k, o) in &objects {
            self.check_object(k, o)?;
        }
        for (k, o) in objects {
            self.merge_incoming(&k, o)?;
        }
        self.anti_entropy.last_exchange.insert(from, self.now);
        let back = self.durable_objects(want);
        if !back.is_empty() {
            self.send(
                from,
                Message::AeObjects {
                    partition: p,
                    objects: back,
                    want: Vec::new(),
                },
            );
        }
        Ok(())
    }

    /// The objects of `keys` that exist and are durable; a key with a write in flight is left
    /// for the next exchange (no object leaves this node before it is durable).
    fn durable_objects(&self, keys: Vec<Key>) -> Vec<(Key, Object)> {
        keys.into_iter()
            .filter(|k| !self.in_flight.is_dirty(k))
            .filter_map(|k| self.objects.get(&k).cloned().map(|o| (k, o)))
            .collect()
    }
}
