//! A small randomized check of the engine under faults, independent of the full simulator: random
//! message loss, duplication and reordering, partitions, writes that complete late (or are lost in
//! a crash), compaction, proposals and leader transfers, all chosen by a seed. After every step:
//! one leader per term, and no two nodes ever apply different entries at the same index. After the
//! faults stop, every node converges on the same commit index.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use consensus_core::{
    ConfState, Config, Consensus, Entry, MemStorage, Message, NodeId, Persist, Raft, Role, Storage,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Node {
    raft: Raft<MemStorage>,
    /// Writes handed out and not yet durable, oldest first.
    pending: VecDeque<Persist>,
    applied: u64,
}

struct World {
    rng: ChaCha8Rng,
    configs: BTreeMap<NodeId, Config>,
    nodes: BTreeMap<NodeId, Node>,
    down: BTreeMap<NodeId, MemStorage>,
    bag: Vec<Message>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Index → entry as first applied anywhere.
    applied: BTreeMap<u64, Entry>,
    leaders: BTreeMap<u64, NodeId>,
    proposals: u64,
    restarts: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.gen_range(3..=5u64);
        let ids: Vec<NodeId> = (1..=n).collect();
        let pre_vote = rng.gen_bool(0.7);
        let mut world = World {
            rng,
            configs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            down: BTreeMap::new(),
            bag: Vec::new(),
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            leaders: BTreeMap::new(),
            proposals: 0,
            restarts: 0,
        };
        for &id in &ids {
            let mut config = Config::new(id);
            config.pre_vote = pre_vote;
            config.check_quorum = pre_vote;
            config.max_inflight = 4;
            config.max_msg_bytes = 64;
            world.configs.insert(id, config.clone());
            let storage = MemStorage::new_with_conf(ConfState::with_voters(ids.iter().copied()));
            let raft =
                Raft::new(config, storage, ChaCha8Rng::seed_from_u64(seed * 31 + id)).unwrap();
            world.nodes.insert(
                id,
                Node {
                    raft,
                    pending: VecDeque::new(),
                    applied: 0,
                },
            );
        }
        world
    }

    fn pick_node(&mut self) -> Option<NodeId> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.rng.gen_range(0..ids.len())])
    }

    fn check(&mut self, id: NodeId) {
        let raft = &self.nodes[&id].raft;
        if raft.role() == Role::Leader {
            if let Some(&other) = self.leaders.get(&raft.term()) {
                assert_eq!(other, id, "two leaders in term {}", raft.term());
            }
            self.leaders.insert(raft.term(), id);
        }
    }

    fn ready(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.raft.has_ready() {
            return;
        }
        let ready = node.raft.ready();
        self.bag.extend(ready.messages);
        if let Some(persist) = ready.persist {
            if let Some(snapshot) = &persist.snapshot {
                node.applied = snapshot.meta.index;
            }
            node.pending.push_back(persist);
        }
        for entry in ready.committed {
            assert_eq!(
                entry.index,
                node.applied + 1,
                "node {id} applies without gaps"
            );
            node.applied = entry.index;
            match self.applied.get(&entry.index) {
                Some(seen) => assert_eq!(
                    seen, &entry,
                    "state machine safety at index {}",
                    entry.index
                ),
                None => {
                    self.applied.insert(entry.index, entry);
                }
            }
        }
    }

    fn complete_write(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(persist) = node.pending.pop_front() {
            node.raft.storage_mut().write(&persist).unwrap();
            node.raft.persisted(persist.token).unwrap();
        }
    }

    fn deliver(&mut self, faults: bool) {
        if self.bag.is_empty() {
            return;
        }
        let i = if faults {
            self.rng.gen_range(0..self.bag.len())
        } else {
            0
        };
        let message = self.bag.swap_remove(i);
        if faults && self.rng.gen_bool(0.05) {
            return; // dropped
        }
        if faults && self.rng.gen_bool(0.03) {
            self.bag.push(message.clone()); // duplicated
        }
        if self.cut.contains(&(message.from, message.to)) {
            return;
        }
        let to = message.to;
        if let Some(node) = self.nodes.get_mut(&to) {
            node.raft.step(message).unwrap();
            self.check(to);
        }
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        self.down.insert(id, node.raft.into_storage()); // pending writes are lost
    }

    fn restart(&mut self, id: NodeId) {
        let storage = self.down.remove(&id).unwrap();
        self.restarts += 1;
        let applied = storage.snapshot_meta().index;
        let mut config = self.configs[&id].clone();
        config.applied = applied;
        let raft = Raft::new(
            config,
            storage,
            ChaCha8Rng::seed_from_u64(self.restarts * 977 + id),
        )
        .unwrap();
        self.nodes.insert(
            id,
            Node {
                raft,
                pending: VecDeque::new(),
                applied,
            },
        );
    }

    fn step(&mut self) {
        let roll = self.rng.gen_range(0..1000);
        match roll {
            0..=349 => self.deliver(true),
            350..=549 => {
                if let Some(id) = self.pick_node() {
                    self.ready(id);
                }
            }
            550..=749 => {
                if let Some(id) = self.pick_node() {
                    self.complete_write(id);
                }
            }
            750..=899 => {
                if let Some(id) = self.pick_node() {
                    self.nodes.get_mut(&id).unwrap().raft.tick();
                    self.check(id);
                }
            }
            900..=969 => {
                let leader = self
                    .nodes
                    .iter()
                    .find(|(_, n)| n.raft.role() == Role::Leader)
                    .map(|(&id, _)| id);
                if let Some(id) = leader {
                    self.proposals += 1;
                    let data = Bytes::from(format!("p{}", self.proposals));
                    let _ = self.nodes.get_mut(&id).unwrap().raft.propose(data);
                }
            }
            970..=979 => {
                // Compact a node's log at what it both applied and stored.
                if let Some(id) = self.pick_node() {
                    let node = self.nodes.get_mut(&id).unwrap();
                    let index = node.applied.min(node.raft.storage().last_index());
                    let first = node.raft.storage().first_index();
                    if index >= first {
                        // Membership never changes here, so the current one holds at `index`.
                        let conf = node.raft.conf_state().clone();
                        node.raft
                            .storage_mut()
                            .compact(index, conf, Bytes::new())
                            .unwrap();
                    }
                }
            }
            980..=987 => {
                if self.down.is_empty() && self.nodes.len() > 1 {
                    if let Some(id) = self.pick_node() {
                        self.crash(id);
                    }
                } else if let Some(&id) = self.down.keys().next() {
                    self.restart(id);
                }
            }
            988..=994 => {
                self.cut.clear();
                if self.rng.gen_bool(0.5) {
                    if let Some(a) = self.pick_node() {
                        for &b in self.configs.keys() {
                            if a != b {
                                self.cut.insert((a, b));
                                self.cut.insert((b, a));
                            }
                        }
                    }
                }
            }
            _ => {
                let leader = self
                    .nodes
                    .iter()
                    .find(|(_, n)| n.raft.role() == Role::Leader)
                    .map(|(&id, _)| id);
                if let (Some(id), Some(to)) = (leader, self.pick_node()) {
                    let _ = self.nodes.get_mut(&id).unwrap().raft.transfer_leader(to);
                }
            }
        }
    }

    /// Faults stop: restart everyone, heal, and run a reliable network until quiet.
    fn settle(&mut self) {
        let down: Vec<NodeId> = self.down.keys().copied().collect();
        for id in down {
            self.restart(id);
        }
        self.cut.clear();
        for _ in 0..400 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for &id in &ids {
                self.nodes.get_mut(&id).unwrap().raft.tick();
                self.check(id);
            }
            for _ in 0..50 {
                for &id in &ids {
                    self.ready(id);
                    while !self.nodes[&id].pending.is_empty() {
                        self.complete_write(id);
                    }
                    self.ready(id);
                }
                while !self.bag.is_empty() {
                    self.deliver(false);
                }
                if ids.iter().all(|id| !self.nodes[id].raft.has_ready()) {
                    break;
                }
            }
        }
    }
}

#[test]
fn random_faults_never_break_election_or_state_machine_safety() {
    let mut total_applied = 0;
    for seed in 0..40 {
        let mut world = World::new(seed);
        for _ in 0..4000 {
            world.step();
        }
        world.settle();
        let commits: BTreeSet<u64> = world
            .nodes
            .values()
            .map(|n| n.raft.status().commit)
            .collect();
        assert_eq!(
            commits.len(),
            1,
            "seed {seed}: nodes converge on one commit index: {commits:?}"
        );
        let applied: BTreeSet<u64> = world.nodes.values().map(|n| n.applied).collect();
        assert_eq!(
            applied.len(),
            1,
            "seed {seed}: and apply through it: {applied:?}"
        );
        total_applied += world.applied.len();
    }
    assert!(
        total_applied > 400,
        "the runs made progress ({total_applied} entries applied)"
    );
}
