//! The run loop: replicas behind the replica loop, the manager, clients, the nemesis.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use consensus_core::sim::network::{Network, NetworkConfig};
use consensus_core::{
    Consensus, Entry, EntryPayload, Error, Host, MemStorage, NodeId, Replica, Role, Snapshot,
    Storage, StorageError, Write,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checker::{Checker, Violation};
use super::disk::Disk;
use super::leases::Leases;
use super::state;
use super::{Failure, SimOptions, SimStats};
use crate::config::{Ack, Config};
use crate::configuration::HardState;
use crate::manager::ConfigManager;
use crate::message::{Body, Message, MANAGER};
use crate::PrimaryBackup;

type Engine = PrimaryBackup<MemStorage<HardState>>;

struct Node {
    id: NodeId,
    replica: Option<Replica<Engine>>,
    disk: Disk,
    /// The state machine: entries applied, from index 1.
    applied: Vec<Entry>,
}

struct Pending {
    node: NodeId,
    index: u64,
    payload: Bytes,
    since: u64,
}

#[derive(Default)]
struct Client {
    seq: u64,
    outstanding: Option<Pending>,
}

struct SimHost<'a> {
    disk: &'a mut Disk,
    due: u64,
    out: &'a mut Vec<Message>,
    applied: &'a mut Vec<Entry>,
    fresh: &'a mut Vec<Entry>,
    installed: &'a mut u64,
}

impl Host<Engine> for SimHost<'_> {
    type Error = Error;

    fn send(&mut self, message: Message) -> Result<(), Error> {
        self.out.push(message);
        Ok(())
    }

    fn submit(
        &mut self,
        storage: &mut MemStorage<HardState>,
        write: &Write<HardState>,
    ) -> Result<u64, Error> {
        storage.write(write)?;
        Ok(self.disk.submit(write, self.due))
    }

    fn durable(&self) -> u64 {
        self.disk.done
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        let entries = state::restore(snapshot).ok_or_else(|| {
            Error::Stopped(StorageError::Inconsistent(format!(
                "snapshot at {} does not hold the applied sequence",
                snapshot.meta.index
            )))
        })?;
        // The state machine restarts from it; the checker sees every entry it holds.
        self.fresh.extend(entries.iter().cloned());
        *self.applied = entries;
        *self.installed += 1;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        self.fresh.extend(entries.iter().cloned());
        self.applied.extend(entries);
        Ok(())
    }
}

struct Sim {
    opts: SimOptions,
    now: u64,
    rng: ChaCha8Rng,
    net: Network<Message>,
    manager: ConfigManager,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    checker: Checker,
    leases: Leases,
    stats: SimStats,
    trace: VecDeque<String>,
    crashed: BTreeSet<NodeId>,
    nemesis_ppm: u32,
}

/// Runs one seed; a clean run returns what it saw.
pub fn run_seed(seed: u64, opts: SimOptions) -> Result<SimStats, Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9b1d_2c3a_0000_0014);
    let n = opts
        .nodes
        .unwrap_or_else(|| rng.gen_range(3..=5))
        .clamp(3, 5);
    let network = NetworkConfig {
        drop_ppm: rng.gen_range(0..50_000),
        duplicate_ppm: rng.gen_range(0..30_000),
        min_delay: 1,
        max_delay: rng.gen_range(1..=4),
        reorder_ppm: rng.gen_range(0..50_000),
        max_in_flight: 20_000,
    };
    let clients = rng.gen_range(2..=4);
    let nemesis_ppm = rng.gen_range(15_000..60_000);
    let template = config(1, n, &opts);
    let bootstrap = template.bootstrap();
    let mut sim = Sim {
        opts,
        now: 0,
        net: Network::new(network, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        manager: ConfigManager::new(bootstrap, template.replicas.iter().copied()),
        nodes: (1..=n as NodeId)
            .map(|id| Node {
                id,
                replica: None,
                disk: Disk::default(),
                applied: Vec::new(),
            })
            .collect(),
        clients: (0..clients).map(|_| Client::default()).collect(),
        checker: Checker::new(opts.ack, template.async_window),
        leases: Leases::new(template.lease_ticks),
        stats: SimStats {
            nodes: n,
            ..SimStats::default()
        },
        trace: VecDeque::new(),
        crashed: BTreeSet::new(),
        nemesis_ppm,
        rng,
    };
    sim.run().map_err(|(property, detail)| Failure {
        seed,
        property,
        detail,
        trace: sim.trace.iter().cloned().collect(),
    })?;
    sim.stats.acked = sim.checker.acked_count();
    sim.stats.failovers = sim.checker.failovers;
    sim.stats.lost_per_failover = sim.checker.lost_per_failover.clone();
    Ok(sim.stats)
}

fn config(id: NodeId, n: usize, opts: &SimOptions) -> Config {
    let mut c = Config::new(id, 1..=n as NodeId, opts.ack);
    c.max_batch = 8;
    #[cfg(feature = "planted-bugs")]
    {
        c.planted_bug = opts.bug;
    }
    c
}

impl Sim {
    fn event(&mut self, line: String) {
        if self.trace.len() >= self.opts.trace_window.max(1) {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("[{}] {line}", self.now));
    }

    fn slot(id: NodeId) -> usize {
        (id - 1) as usize
    }

    fn run(&mut self) -> Result<(), Violation> {
        for id in 1..=self.nodes.len() as NodeId {
            self.start(id)?;
        }
        let faults = self.opts.fault_ticks;
        let end = faults + self.opts.quiet_ticks;
        let mut acked_before_quiet = 0;
        while self.now < end {
            if self.now < faults {
                self.nemesis()?;
            } else if self.now == faults {
                self.event("faults stop: heal, reliable network, restart everyone".into());
                self.net.heal();
                self.net.set_config(NetworkConfig::reliable());
                for id in std::mem::take(&mut self.crashed) {
                    self.start(id)?;
                }
                acked_before_quiet = self.checker.acked_count();
            }
            self.step()?;
        }
        self.stats.ticks = self.now;
        self.finish(acked_before_quiet)
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.now += 1;
        for slot in 0..self.nodes.len() {
            if self.nodes[slot].disk.complete(self.now) {
                self.process(slot)?;
            }
        }
        for envelope in self.net.deliver_due(self.now) {
            let m = envelope.message;
            if m.to == MANAGER {
                self.manage(m);
                continue;
            }
            let slot = Self::slot(m.to);
            let Some(replica) = self.nodes[slot].replica.as_mut() else {
                continue;
            };
            let line = summarize(&m);
            let result = replica.engine_mut().step(m);
            self.event(format!("deliver {line}"));
            match result {
                Err(Error::Stopped(e)) => self.rollback(slot, e.to_string())?,
                Err(_) | Ok(()) => self.process(slot)?,
            }
        }
        for slot in 0..self.nodes.len() {
            if let Some(replica) = self.nodes[slot].replica.as_mut() {
                replica.engine_mut().tick();
                self.process(slot)?;
            }
        }
        self.clients()?;
        self.check_serving()
    }

    /// The configuration manager: applies each request in arrival order.
    fn manage(&mut self, m: Message) {
        let Body::Request(request) = m.body else {
            return;
        };
        let replicas: Vec<NodeId> = (1..=self.nodes.len() as NodeId).collect();
        match self.manager.handle(m.from, request) {
            Ok(config) => {
                let config = config.clone();
                self.stats.config_changes += 1;
                self.event(format!(
                    "manager installs {config:?} for {} ({:?})",
                    m.from, request.change
                ));
                for r in replicas {
                    let body = Body::Installed(config.clone());
                    self.net.send(
                        self.now,
                        MANAGER,
                        r,
                        Message {
                            from: MANAGER,
                            to: r,
                            epoch: config.epoch,
                            body,
                        },
                    );
                }
            }
            Err(refused) => {
                let config = self.manager.current().clone();
                self.event(format!("manager refuses {} {request:?}: {refused}", m.from));
                let body = Body::Installed(config.clone());
                self.net.send(
                    self.now,
                    MANAGER,
                    m.from,
                    Message {
                        from: MANAGER,
                        to: m.from,
                        epoch: config.epoch,
                        body,
                    },
                );
            }
        }
    }

    fn start(&mut self, id: NodeId) -> Result<(), Violation> {
        let slot = Self::slot(id);
        let mut cfg = config(id, self.nodes.len(), &self.opts);
        let node = &mut self.nodes[slot];
        // The state machine restarts from the disk's snapshot (the log replays the rest).
        let snapshot = node
            .disk
            .durable
            .snapshot()
            .map_err(|e| ("start", format!("node {id}: {e}")))?;
        node.applied = state::restore(&snapshot)
            .ok_or(("start", format!("node {id}: snapshot data does not decode")))?;
        cfg.applied = snapshot.meta.index;
        let engine = Engine::new(cfg, node.disk.durable.clone())
            .map_err(|e| ("start", format!("node {id}: {e}")))?;
        node.replica = Some(Replica::new(engine));
        self.crashed.remove(&id);
        self.event(format!("start node {id}"));
        self.process(slot)
    }

    fn crash(&mut self, id: NodeId) {
        let keep = if self.rng.gen_bool(0.3) {
            self.rng.gen_range(0..=4)
        } else {
            0
        };
        let node = &mut self.nodes[Self::slot(id)];
        node.replica = None;
        node.disk.crash(keep);
        self.crashed.insert(id);
        self.net.forget_node(id);
        self.stats.crashes += 1;
        self.event(format!("crash node {id}"));
        for c in &mut self.clients {
            if c.outstanding.as_ref().is_some_and(|p| p.node == id) {
                c.outstanding = None;
            }
        }
    }

    /// A replica whose applied state a new epoch takes back restarts from its disk.
    fn rollback(&mut self, slot: usize, why: String) -> Result<(), Violation> {
        let id = self.nodes[slot].id;
        if self.opts.ack != Ack::Async {
            return Err((
                "committed entries are never taken back",
                format!("node {id}: {why}"),
            ));
        }
        self.stats.rollbacks += 1;
        self.event(format!("node {id} rolls back: {why}"));
        self.crash(id);
        self.stats.crashes -= 1;
        self.start(id)
    }

    /// Runs the replica loop of the replica in `slot`, sends what it sent, checks what it applied.
    fn process(&mut self, slot: usize) -> Result<(), Violation> {
        let due = self.now + self.rng.gen_range(1..=3);
        let mut out = Vec::new();
        let mut fresh = Vec::new();
        let mut installed = 0;
        let node = &mut self.nodes[slot];
        let Some(replica) = node.replica.as_mut() else {
            return Ok(());
        };
        let mut host = SimHost {
            disk: &mut node.disk,
            due,
            out: &mut out,
            applied: &mut node.applied,
            fresh: &mut fresh,
            installed: &mut installed,
        };
        let result = replica.drive(&mut host);
        let id = node.id;
        self.stats.snapshots_installed += installed;
        for m in out {
            if matches!(m.body, Body::Resync { .. }) {
                self.stats.resyncs += 1;
            }
            self.leases.sent(self.now, &m);
            self.net.send(self.now, m.from, m.to, m);
        }
        if let Err(e) = result {
            return self.rollback(slot, e.to_string());
        }
        let engine = self.nodes[slot].replica.as_ref().expect("live").engine();
        let is_primary = engine.status().role == Role::Leader;
        let members: Vec<NodeId> = engine.configuration().members.iter().copied().collect();
        for entry in &fresh {
            self.checker.applied(id, entry)?;
            if is_primary {
                let holds = |n: &Node| durably_holds(n, entry);
                let holders = self.nodes.iter().filter(|n| holds(n)).count();
                let missing: Vec<NodeId> = members
                    .iter()
                    .copied()
                    .filter(|&m| !holds(&self.nodes[Self::slot(m)]))
                    .collect();
                if let Err((p, d)) =
                    self.checker
                        .committed(id, entry, holders, self.nodes.len(), &missing)
                {
                    let more: Vec<String> = missing
                        .iter()
                        .map(|&m| {
                            let n = &self.nodes[Self::slot(m)];
                            format!(
                                "{m}: durable last {} entry {:?} view {:?}",
                                consensus_core::Storage::last_index(&n.disk.durable),
                                n.disk.durable.entry(entry.index),
                                n.replica.as_ref().map(|r| r
                                    .engine()
                                    .storage()
                                    .entry(entry.index)
                                    .cloned())
                            )
                        })
                        .collect();
                    return Err((p, format!("{d} [{}] entry {entry:?}", more.join("; "))));
                }
            }
        }
        if is_primary && !fresh.is_empty() {
            let epoch = self.nodes[slot]
                .replica
                .as_ref()
                .expect("live")
                .engine()
                .epoch();
            for c in 0..self.clients.len() {
                let Some(p) = &self.clients[c].outstanding else {
                    continue;
                };
                if p.node != id {
                    continue;
                }
                let Some(e) = self.nodes[slot].applied.get(p.index as usize - 1) else {
                    continue;
                };
                let landed = e.payload == EntryPayload::Data(p.payload.clone());
                let e = e.clone();
                self.clients[c].outstanding = None;
                if landed {
                    self.event(format!(
                        "client {c}: write {} acknowledged (epoch {epoch})",
                        e.index
                    ));
                    self.checker.acknowledged(e);
                }
            }
        }
        self.maybe_compact(slot);
        Ok(())
    }

    /// Now and then, once every write is durable, a replica snapshots its state machine and
    /// compacts its log through what it applied (as the node does by applied count), so replicas
    /// that fall behind or restart catch up from a primary's snapshot.
    fn maybe_compact(&mut self, slot: usize) {
        if !self.rng.gen_bool(0.05) {
            return;
        }
        let node = &mut self.nodes[slot];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let index = node.applied.len() as u64;
        let since = replica.engine().storage().snapshot_meta().index;
        if !node.disk.idle() || index < since + 16 {
            return;
        }
        let conf = replica.engine().status().conf_state;
        let data = state::encode(&node.applied);
        let compacted = replica
            .engine_mut()
            .storage_mut()
            .compact(index, conf.clone(), data.clone())
            .and_then(|()| node.disk.durable.compact(index, conf, data));
        let id = node.id;
        match compacted {
            Ok(()) => self.event(format!("node {id} snapshots at {index}")),
            Err(e) => self.event(format!("node {id} snapshot at {index} failed: {e}")),
        }
    }

    fn clients(&mut self) -> Result<(), Violation> {
        let serving: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.replica.as_ref().is_some_and(|r| r.engine().is_serving()))
            .map(|n| n.id)
            .collect();
        for c in 0..self.clients.len() {
            if let Some(p) = &self.clients[c].outstanding {
                if self.now > p.since + 60 {
                    self.clients[c].outstanding = None;
                }
                continue;
            }
            if !self.rng.gen_bool(0.4) {
                continue;
            }
            if self.now + 100 > self.opts.fault_ticks + self.opts.quiet_ticks {
                // The last ticks are quiet, so every member can catch up before the final check.
                continue;
            }
            if self.rng.gen_bool(0.25) {
                // A linearizable read at a replica that thinks it is primary (a deposed one
                // must refuse), ordered at its commit point.
                let primaries: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|n| {
                        n.replica
                            .as_ref()
                            .is_some_and(|r| r.engine().status().role == Role::Leader)
                    })
                    .map(|n| n.id)
                    .collect();
                let Some(&node) = primaries.choose(&mut self.rng) else {
                    continue;
                };
                let slot = Self::slot(node);
                let Some(replica) = self.nodes[slot].replica.as_mut() else {
                    continue;
                };
                if replica.engine_mut().read_index(self.now).is_ok() {
                    let index = replica.engine().status().commit;
                    self.checker.read(node, index)?;
                    self.stats.reads += 1;
                    self.process(slot)?;
                }
                continue;
            }
            let Some(&node) = serving.first() else {
                continue;
            };
            self.clients[c].seq += 1;
            let payload = Bytes::from(format!("c{c}-{}", self.clients[c].seq));
            let slot = Self::slot(node);
            let Some(replica) = self.nodes[slot].replica.as_mut() else {
                continue;
            };
            if let Ok(proposed) = replica.engine_mut().propose(payload.clone()) {
                self.clients[c].outstanding = Some(Pending {
                    node,
                    index: proposed.index,
                    payload,
                    since: self.now,
                });
                self.process(slot)?;
            }
        }
        Ok(())
    }

    fn check_serving(&mut self) -> Result<(), Violation> {
        let serving: Vec<(NodeId, u64)> = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref().map(|r| (n.id, r.engine())))
            .filter(|(_, e)| e.is_serving())
            .map(|(id, e)| (id, e.epoch()))
            .collect();
        self.leases.check(self.now, &serving)?;
        let nodes = &self.nodes;
        let log = |node: NodeId, index: u64| held(&nodes[Self::slot(node)], index);
        if let Some(lost) = self.checker.serving(&serving, log)? {
            let (id, epoch) = serving[0];
            self.event(format!(
                "failover: node {id} serves epoch {epoch}, {lost} acknowledged writes lost"
            ));
        }
        Ok(())
    }

    fn nemesis(&mut self) -> Result<(), Violation> {
        if !self.rng.gen_bool(f64::from(self.nemesis_ppm) / 1e6) {
            return Ok(());
        }
        let n = self.nodes.len();
        let everyone: Vec<NodeId> = (0..=n as NodeId).collect();
        let live: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|x| x.replica.is_some())
            .map(|x| x.id)
            .collect();
        let primary = self
            .nodes
            .iter()
            .find(|x| x.replica.as_ref().is_some_and(|r| r.engine().is_serving()))
            .map(|x| x.id);
        match self.rng.gen_range(0..100) {
            0..=14 => {
                if self.crashed.len() + 1 < n {
                    if let Some(&id) = live.choose(&mut self.rng) {
                        self.crash(id);
                    }
                }
            }
            15..=29 => {
                if let Some(id) = primary {
                    if self.crashed.len() + 1 < n {
                        self.crash(id);
                    }
                }
            }
            30..=49 => {
                if let Some(&id) = self.crashed.iter().next() {
                    self.start(id)?;
                }
            }
            50..=61 => {
                if let Some(id) = primary {
                    let rest: Vec<NodeId> = everyone.iter().copied().filter(|&x| x != id).collect();
                    self.event(format!("isolate primary {id}"));
                    self.net.partition(&everyone, &[vec![id], rest]);
                }
            }
            62..=67 => {
                if let Some(id) = primary {
                    // The primary keeps the manager; the backups lose both.
                    let rest: Vec<NodeId> = everyone
                        .iter()
                        .copied()
                        .filter(|&x| x != id && x != MANAGER)
                        .collect();
                    self.event(format!("isolate primary {id} with the manager"));
                    self.net.partition(&everyone, &[vec![id, MANAGER], rest]);
                }
            }
            68..=77 => {
                let mut shuffled = everyone.clone();
                shuffled.shuffle(&mut self.rng);
                let cut = self.rng.gen_range(1..shuffled.len());
                let groups = vec![shuffled[..cut].to_vec(), shuffled[cut..].to_vec()];
                self.event(format!("partition {groups:?}"));
                self.net.partition(&everyone, &groups);
            }
            78..=93 => {
                self.event("heal".into());
                self.net.heal();
            }
            _ => {
                let from = *everyone.choose(&mut self.rng).expect("nodes");
                let to = *everyone.choose(&mut self.rng).expect("nodes");
                self.event(format!("cut {from}->{to}"));
                self.net.cut_one_way(from, to);
            }
        }
        Ok(())
    }

    /// After the quiet phase: a primary serves, wrote something, and every member holds its
    /// committed prefix.
    fn finish(&mut self, acked_before_quiet: u64) -> Result<(), Violation> {
        let primary = self
            .nodes
            .iter()
            .find(|x| x.replica.as_ref().is_some_and(|r| r.engine().is_serving()))
            .map(|x| x.id)
            .ok_or((
                "liveness",
                format!(
                    "no primary serves {} ticks after the faults",
                    self.opts.quiet_ticks
                ),
            ))?;
        if self.checker.acked_count() == acked_before_quiet {
            return Err((
                "liveness",
                "no write acknowledged after the faults stopped".into(),
            ));
        }
        let engine = self.nodes[Self::slot(primary)]
            .replica
            .as_ref()
            .expect("live")
            .engine();
        let commit = engine.status().commit;
        let members: Vec<NodeId> = engine.configuration().members.iter().copied().collect();
        let reference: Vec<Option<Entry>> = (1..=commit)
            .map(|i| held(&self.nodes[Self::slot(primary)], i))
            .collect();
        let nodes = &self.nodes;
        self.checker
            .final_primary(primary, |node, index| held(&nodes[Self::slot(node)], index))?;
        for m in members {
            let storage = &self.nodes[Self::slot(m)].disk.durable;
            let snapshot = storage
                .snapshot()
                .map_err(|e| ("committed prefix on every member", e.to_string()))?;
            let restored = state::restore(&snapshot).unwrap_or_default();
            for (i, want) in reference.iter().enumerate() {
                let index = i as u64 + 1;
                let got = storage
                    .entry(index)
                    .or_else(|| restored.get(i).filter(|_| index <= snapshot.meta.index));
                if got != want.as_ref() {
                    return Err((
                        "committed prefix on every member",
                        format!("member {m} holds {got:?} at {} where primary {primary} committed {want:?}", i + 1),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `node`'s disk holds `entry`: in its log, or in its snapshot (whose entries are a
/// prefix of what the node applied).
fn durably_holds(node: &Node, entry: &Entry) -> bool {
    let durable = &node.disk.durable;
    match durable.entry(entry.index) {
        Some(e) => e == entry,
        None => {
            entry.index <= durable.snapshot_meta().index
                && node.applied.get(entry.index as usize - 1) == Some(entry)
        }
    }
}

/// The entry `node` holds at `index`: in its log, or in its state machine if a snapshot covers
/// the index.
fn held(node: &Node, index: u64) -> Option<Entry> {
    let storage = node.replica.as_ref()?.engine().storage();
    if let Some(e) = storage.entry(index) {
        return Some(e.clone());
    }
    if index > storage.snapshot_meta().index || index == 0 {
        return None;
    }
    node.applied.get(index as usize - 1).cloned()
}

fn summarize(m: &Message) -> String {
    let body = match &m.body {
        Body::Prepare {
            config,
            sent_at,
            prev_index,
            prev_term,
            entries,
            commit,
            last,
        } => format!(
            "Prepare v{} t{sent_at} prev={prev_term}@{prev_index} n={} commit={commit} last={last}",
            config.version,
            entries.len()
        ),
        Body::Snapshot {
            config,
            sent_at,
            snapshot,
            commit,
        } => format!(
            "Snapshot v{} t{sent_at} at={}@{} commit={commit}",
            config.version, snapshot.meta.term, snapshot.meta.index
        ),
        other => format!("{other:?}"),
    };
    format!("{}->{} e{} {body}", m.from, m.to, m.epoch)
}
