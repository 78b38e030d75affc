//! The simulated cluster: real peers, their disks, the network, the nemesis and the clients,
//! advanced one tick at a time from one seeded RNG.

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::checker::{converged, Checker, Violation};
use super::disk::Disk;
use super::network::{NetConfig, Network};
use super::workload::{self, Client};
use super::SimOptions;
use crate::config::Config;
use crate::message::Request;
use crate::peer::Peer;
use crate::ring::Ring;
use crate::types::{Key, NodeId, RequestId};

struct Node {
    peer: Option<Peer>,
    disk: Disk,
    restart_at: u64,
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Members.
    pub nodes: usize,
    /// Ticks run in all.
    pub ticks: u64,
    /// Tick at which the replicas were found converged.
    pub converged_at: u64,
    /// Client requests issued.
    pub requests: u64,
    /// Writes acknowledged.
    pub writes_acked: u64,
    /// Reads answered.
    pub reads_ok: u64,
    /// Requests failed (timeouts, refusals).
    pub failed: u64,
    /// Crashes.
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages lost (random drops and partitions).
    pub lost: u64,
    /// Tombstones collected, over all nodes.
    pub tombstones_collected: u64,
    /// Hints dropped because a peer's hints were full.
    pub hints_dropped: u64,
    /// Durable writes the checker saw.
    pub durable_writes: u64,
}

/// One simulated run.
pub(super) struct World {
    rng: ChaCha8Rng,
    now: u64,
    nodes: BTreeMap<NodeId, Node>,
    configs: BTreeMap<NodeId, Config>,
    net: Network,
    ring: Ring,
    keys: Vec<Key>,
    clients: Vec<Client>,
    requests: BTreeMap<RequestId, (usize, Request)>,
    next_request: u64,
    checker: Checker,
    disk_latency: u64,
    options: SimOptions,
    pub(super) stats: SimStats,
    trace: VecDeque<String>,
}

impl World {
    pub(super) fn new(mut rng: ChaCha8Rng, options: SimOptions) -> Self {
        let n_nodes = rng.gen_range(3..=5u64);
        let members: Vec<NodeId> = (1..=n_nodes).collect();
        let net_config = NetConfig::random(&mut rng);
        let max_in_flight = net_config.max_in_flight();
        let max_hints = rng.gen_range(1..=6);
        let configs: BTreeMap<NodeId, Config> = members
            .iter()
            .map(|&id| {
                let c = Config {
                    replication: 3,
                    vnodes: 4,
                    policies: workload::policies(),
                    request_timeout_ms: 40,
                    hint_retry_ms: 25,
                    max_hints_per_peer: max_hints,
                    hint_replays_per_tick: 2,
                    anti_entropy_interval_ms: 8,
                    anti_entropy_exchanges: 2,
                    merkle_fanout: 4,
                    merkle_depth: 3,
                    gc_interval_ms: 30,
                    tombstone_grace_ms: 40 + 2 * max_in_flight + 20,
                    dot_block: 8,
                    ..Config::new(id, members.clone())
                };
                (id, c)
            })
            .collect();
        let ring = Ring::new(&members, 4, 3).expect("valid ring");
        let mut nodes = BTreeMap::new();
        for (&id, c) in &configs {
            #[allow(unused_mut)]
            let mut peer = Peer::new(c.clone()).expect("valid config");
            #[cfg(feature = "planted-bugs")]
            if let Some(b) = options.bug {
                peer.plant_bug(b);
            }
            nodes.insert(
                id,
                Node {
                    peer: Some(peer),
                    disk: Disk::default(),
                    restart_at: 0,
                },
            );
        }
        let disk_latency = rng.gen_range(1..=3);
        World {
            rng,
            now: 0,
            nodes,
            configs,
            net: Network::new(net_config),
            ring,
            keys: workload::keys(),
            clients: (0..3).map(|_| Client::default()).collect(),
            requests: BTreeMap::new(),
            next_request: 0,
            checker: Checker::new(workload::policies()),
            disk_latency,
            options,
            stats: SimStats {
                nodes: n_nodes as usize,
                ..SimStats::default()
            },
            trace: VecDeque::new(),
        }
    }

    pub(super) fn trace(&self) -> Vec<String> {
        self.trace.iter().cloned().collect()
    }

    fn note(&mut self, event: String) {
        if self.trace.len() == 40 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {event}", self.now));
    }

    /// The faulty phase, then the quiet phase, then the final checks.
    pub(super) fn run(&mut self) -> Result<(), Violation> {
        for _ in 0..self.options.faulty_ticks {
            self.nemesis();
            if self.rng.gen_bool(0.4) {
                self.client_op();
            }
            self.step()?;
        }
        // Faults stop: every link back, every node up, no more loss; clients stop.
        self.net.heal();
        self.net.set_config(NetConfig::calm());
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.peer.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in down {
            self.restart(id);
        }
        let deadline = self.now + self.options.quiet_ticks;
        loop {
            self.step()?;
            if self.now.is_multiple_of(25)
                && self.net.in_flight() == 0
                && converged(&self.ring, &workload::policies(), &self.states()).is_ok()
            {
                break;
            }
            if self.now >= deadline {
                break;
            }
        }
        self.stats.converged_at = self.now;
        self.stats.ticks = self.now;
        self.stats.durable_writes = self.checker.durable_writes;
        self.stats.messages = self.net.stats.sent;
        self.stats.lost = self.net.stats.dropped + self.net.stats.cut;
        for n in self.nodes.values() {
            if let Some(p) = &n.peer {
                let s = p.status();
                self.stats.tombstones_collected += s.tombstones_collected;
                self.stats.hints_dropped += s.hints_dropped;
            }
        }
        self.checker.final_check(&self.ring, &self.states())
    }

    fn states(&self) -> BTreeMap<NodeId, BTreeMap<Key, crate::object::Object>> {
        self.nodes
            .iter()
            .map(|(&id, n)| {
                let objects = n
                    .peer
                    .as_ref()
                    .map(|p| {
                        p.local_objects()
                            .map(|(k, o)| (k.clone(), o.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                (id, objects)
            })
            .collect()
    }

    fn nemesis(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids.clone() {
            let n = &self.nodes[&id];
            if n.peer.is_none() && n.restart_at <= self.now {
                self.restart(id);
            }
        }
        let up: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|id| self.nodes[id].peer.is_some())
            .collect();
        if up.len() > 1 && self.rng.gen_bool(1.0 / 120.0) {
            let victim = up[self.rng.gen_range(0..up.len())];
            let down_for = self.rng.gen_range(10..150);
            self.crash(victim, down_for);
        }
        if self.net.is_partitioned() {
            if self.rng.gen_bool(1.0 / 120.0) {
                self.net.heal();
                self.note("heal".into());
            }
        } else if self.rng.gen_bool(1.0 / 150.0) {
            let split = self.rng.gen_range(1..ids.len());
            let mut shuffled = ids.clone();
            for i in (1..shuffled.len()).rev() {
                let j = self.rng.gen_range(0..=i);
                shuffled.swap(i, j);
            }
            let (a, b) = shuffled.split_at(split);
            self.net.partition(a, b);
            self.stats.partitions += 1;
            self.note(format!("partition {a:?} | {b:?}"));
        }
    }

    fn crash(&mut self, id: NodeId, down_for: u64) {
        let node = self.nodes.get_mut(&id).expect("member");
        node.peer = None;
        node.restart_at = self.now + down_for;
        let applied = node.disk.crash(&mut self.rng);
        for w in &applied {
            // A crash cannot break what was checked; what it keeps is checked like any write.
            let _ = self.checker.on_durable(id, w);
        }
        self.stats.crashes += 1;
        self.note(format!("crash {id} for {down_for}"));
    }

    fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("member");
        #[allow(unused_mut)]
        let mut peer =
            Peer::recover(self.configs[&id].clone(), node.disk.recovered()).expect("valid config");
        #[cfg(feature = "planted-bugs")]
        if let Some(b) = self.options.bug {
            peer.plant_bug(b);
        }
        node.peer = Some(peer);
        self.note(format!("restart {id}"));
        self.drain(id);
    }

    fn client_op(&mut self) {
        let c = self.rng.gen_range(0..self.clients.len());
        let request = self.clients[c].next_request(&mut self.rng, c, &self.keys, 3);
        let replicas = self.ring.replicas(request.key()).to_vec();
        let coordinator = replicas[self.rng.gen_range(0..replicas.len())];
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.stats.requests += 1;
        self.checker.on_issue(&request);
        self.note(format!("client {c} → node {coordinator}: {request:?}"));
        self.requests.insert(id, (c, request.clone()));
        if let Some(p) = self
            .nodes
            .get_mut(&coordinator)
            .and_then(|n| n.peer.as_mut())
        {
            p.client_request(id, request);
            self.drain(coordinator);
        }
    }

    /// One tick: deliver messages, flush disks, tick every running peer.
    fn step(&mut self) -> Result<(), Violation> {
        self.now += 1;
        for (from, to, m) in self.net.due(self.now) {
            if let Some(p) = self.nodes.get_mut(&to).and_then(|n| n.peer.as_mut()) {
                self.net.stats.delivered += 1;
                // Refusals are counted in the peer's status; the simulator sends only valid
                // messages, so a refusal here would show up as non-convergence.
                let _ = p.step(from, m);
                self.drain(to);
            } else {
                self.net.stats.cut += 1;
            }
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let node = self.nodes.get_mut(&id).expect("member");
            if node.peer.is_none() {
                continue;
            }
            let (applied, last) = node.disk.flush(self.now);
            for w in &applied {
                if let Err(v) = self.checker.on_durable(id, w) {
                    self.note(format!("node {id} durable {w:?}"));
                    return Err(v);
                }
            }
            if let (Some(t), Some(p)) = (last, node.peer.as_mut()) {
                p.persisted(t).expect("issued token");
            }
            if let Some(p) = node.peer.as_mut() {
                p.tick(self.now);
            }
            self.drain(id);
        }
        Ok(())
    }

    fn drain(&mut self, id: NodeId) {
        loop {
            let Some(p) = self.nodes.get_mut(&id).and_then(|n| n.peer.as_mut()) else {
                return;
            };
            let out = p.take_output();
            if out.is_empty() {
                return;
            }
            let node = self.nodes.get_mut(&id).expect("member");
            for persist in out.persists {
                node.disk.submit(self.now, self.disk_latency, persist);
            }
            for (to, m) in out.messages {
                self.net.send(&mut self.rng, self.now, id, to, m);
            }
            for (rid, result) in out.replies {
                let Some((client, request)) = self.requests.remove(&rid) else {
                    continue;
                };
                match &result {
                    Ok(response) => {
                        self.checker.on_success(&request, response);
                        match response {
                            crate::message::Response::Read { context, .. } => {
                                self.stats.reads_ok += 1;
                                self.clients[client]
                                    .contexts
                                    .insert(request.key().to_vec(), context.clone());
                            }
                            crate::message::Response::Written { .. } => {
                                self.stats.writes_acked += 1;
                            }
                        }
                    }
                    Err(_) => self.stats.failed += 1,
                }
                self.note(format!("node {id} replies {rid:?}: {result:?}"));
            }
        }
    }
}
