//! A tiny deterministic network for behaviour and scenario tests: nodes in one process, messages in a
//! FIFO queue, synchronous persistence, partitions and crashes by node id. (The fault-injecting
//! simulator lives in `consensus_core::sim`.)

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use consensus_core::{
    ConfState, Config, Consensus, Entry, EntryPayload, MemHost, MemStorage, Message, NodeId, Raft,
    ReadState, ReplicaLoop, Role, Storage,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Drives one node through the replica loop to quiescence with synchronous persistence; returns
/// what it wants sent.
pub fn drain(
    node: &mut Raft<MemStorage>,
    applied: &mut Vec<Entry>,
    reads: &mut Vec<ReadState>,
) -> Vec<Message> {
    let mut host = MemHost::new();
    host.applied = std::mem::take(applied);
    ReplicaLoop::new()
        .drive(node, &mut host)
        .expect("the replica loop runs");
    *applied = host.applied;
    reads.extend(host.reads);
    host.messages
}

/// Same as [`drain`] for a node whose applied entries and reads we do not track.
pub fn messages_of(node: &mut Raft<MemStorage>) -> Vec<Message> {
    drain(node, &mut Vec::new(), &mut Vec::new())
}

/// A lone node with the given voters, default config tweaked by `configure`.
pub fn node(id: NodeId, voters: &[NodeId], configure: impl Fn(&mut Config)) -> Raft<MemStorage> {
    let mut config = Config::new(id);
    configure(&mut config);
    let storage = MemStorage::new_with_conf(ConfState::with_voters(voters.iter().copied()));
    Raft::new(config, storage, ChaCha8Rng::seed_from_u64(id)).expect("valid config")
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Raft<MemStorage>>,
    configs: BTreeMap<NodeId, Config>,
    pub queue: VecDeque<Message>,
    /// Directed links that drop messages.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Crashed nodes keep their durable storage here.
    pub down: BTreeMap<NodeId, MemStorage>,
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    pub reads: BTreeMap<NodeId, Vec<ReadState>>,
    /// Every message delivered, for assertions about traffic.
    pub delivered: Vec<Message>,
    /// Errors returned by `step` (none in a correct run).
    pub step_errors: Vec<(NodeId, consensus_core::Error)>,
    restarts: u64,
}

impl Cluster {
    pub fn new(ids: &[NodeId]) -> Self {
        Self::with_config(ids, |_| {})
    }

    pub fn with_config(ids: &[NodeId], configure: impl Fn(&mut Config)) -> Self {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            configs: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            down: BTreeMap::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            delivered: Vec::new(),
            step_errors: Vec::new(),
            restarts: 0,
        };
        for &id in ids {
            let mut config = Config::new(id);
            configure(&mut config);
            cluster.configs.insert(id, config.clone());
            let storage = MemStorage::new_with_conf(ConfState::with_voters(ids.iter().copied()));
            cluster.nodes.insert(
                id,
                Raft::new(config, storage, ChaCha8Rng::seed_from_u64(id)).unwrap(),
            );
            cluster.applied.insert(id, Vec::new());
            cluster.reads.insert(id, Vec::new());
        }
        cluster
    }

    /// Adds a node that starts with empty storage and no configuration (it joins via the leader).
    pub fn add_blank_node(&mut self, id: NodeId) {
        let config = Config::new(id);
        self.configs.insert(id, config.clone());
        let storage = MemStorage::new_with_conf(ConfState::default());
        self.nodes.insert(
            id,
            Raft::new(config, storage, ChaCha8Rng::seed_from_u64(id)).unwrap(),
        );
        self.applied.insert(id, Vec::new());
        self.reads.insert(id, Vec::new());
    }

    pub fn node(&mut self, id: NodeId) -> &mut Raft<MemStorage> {
        self.nodes.get_mut(&id).expect("node is up")
    }

    /// Processes every node's `Ready` and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let node = self.nodes.get_mut(&id).unwrap();
                if node.has_ready() {
                    moved = true;
                    let out = drain(
                        node,
                        self.applied.get_mut(&id).unwrap(),
                        self.reads.get_mut(&id).unwrap(),
                    );
                    self.queue.extend(out);
                }
            }
            while let Some(message) = self.queue.pop_front() {
                moved = true;
                if self.cut.contains(&(message.from, message.to)) {
                    continue;
                }
                if let Some(node) = self.nodes.get_mut(&message.to) {
                    self.delivered.push(message.clone());
                    let to = message.to;
                    if let Err(error) = node.step(message) {
                        self.step_errors.push((to, error));
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Ticks every live node `n` times, stabilizing after each tick.
    pub fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for node in self.nodes.values_mut() {
                node.tick();
            }
            self.stabilize();
        }
    }

    /// Ticks until some node leads (panics after `max` ticks).
    pub fn tick_until_leader(&mut self, max: usize) -> NodeId {
        for _ in 0..max {
            if let Some(leader) = self.leader() {
                return leader;
            }
            self.tick(1);
        }
        self.leader().expect("a leader within the tick budget")
    }

    pub fn elect(&mut self, id: NodeId) {
        self.node(id).campaign().unwrap();
        self.stabilize();
        assert_eq!(
            self.node(id).role(),
            Role::Leader,
            "node {id} should have won"
        );
    }

    /// Campaigns until `id` wins (a stale term may need a few rounds).
    pub fn elect_eventually(&mut self, id: NodeId) {
        for _ in 0..5 {
            self.node(id).campaign().unwrap();
            self.stabilize();
            if self.node(id).role() == Role::Leader {
                return;
            }
        }
        panic!("node {id} could not win");
    }

    /// The unique leader of the highest term among live nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        let max_term = self.nodes.values().map(|n| n.term()).max()?;
        self.nodes
            .values()
            .find(|n| n.role() == Role::Leader && n.term() == max_term)
            .map(|n| n.id())
    }

    pub fn propose(&mut self, id: NodeId, data: &str) -> consensus_core::Proposed {
        let proposed = self
            .node(id)
            .propose(Bytes::copy_from_slice(data.as_bytes()))
            .unwrap();
        self.stabilize();
        proposed
    }

    /// Application payloads node `id` applied, in order.
    pub fn applied_data(&self, id: NodeId) -> Vec<String> {
        self.applied[&id]
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Data(d) => Some(String::from_utf8_lossy(d).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// Node `id` snapshots its state machine at its applied index and compacts its log there.
    pub fn compact(&mut self, id: NodeId) -> u64 {
        let node = self.node(id);
        let applied = node.status().applied;
        let conf = node.conf_state().clone();
        node.storage_mut()
            .compact(applied, conf, Bytes::from_static(b"state"))
            .expect("compact at the applied index");
        applied
    }

    /// Cuts every link between `a` and the rest (both directions).
    pub fn isolate(&mut self, a: NodeId) {
        let ids: Vec<NodeId> = self.configs.keys().copied().collect();
        for b in ids {
            if a != b {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    /// Cuts the links between the two groups.
    pub fn partition(&mut self, left: &[NodeId], right: &[NodeId]) {
        for &a in left {
            for &b in right {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes `id`: everything not confirmed durable is lost.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("node is up");
        self.down.insert(id, node.into_storage());
    }

    /// Restarts `id` from its durable storage; its state machine restarts from the snapshot.
    pub fn restart(&mut self, id: NodeId) {
        let storage = self.down.remove(&id).expect("node is down");
        self.restarts += 1;
        let snapshot_index = storage.snapshot_meta().index;
        let applied = self.applied.get_mut(&id).unwrap();
        applied.retain(|e| e.index <= snapshot_index);
        let config = self.configs[&id].clone();
        let rng = ChaCha8Rng::seed_from_u64(id * 1000 + self.restarts);
        self.nodes
            .insert(id, Raft::new(config, storage, rng).unwrap());
    }

    /// Applied sequences agree: no two nodes applied different entries at the same index, and
    /// each node applied indexes in increasing order without gaps (state machine safety).
    pub fn assert_consistent(&self) {
        assert!(
            self.step_errors.is_empty(),
            "step errors: {:?}",
            self.step_errors
        );
        let mut by_index: BTreeMap<u64, (NodeId, &Entry)> = BTreeMap::new();
        for (&id, entries) in &self.applied {
            for pair in entries.windows(2) {
                assert!(
                    pair[1].index > pair[0].index,
                    "node {id} applied out of order"
                );
            }
            for entry in entries {
                if let Some((other, seen)) = by_index.insert(entry.index, (id, entry)) {
                    assert_eq!(
                        seen, entry,
                        "nodes {other} and {id} applied different entries at {}",
                        entry.index
                    );
                }
            }
        }
    }
}
