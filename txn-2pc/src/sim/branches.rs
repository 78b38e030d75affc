//! The harness for orchestrated branches (TCC and sagas): an orchestrator (node 0) and fenced
//! services 1..=n, with the invariants of both.
//!
//! Checked as they happen: an orchestrator's decision never changes, crashes included; no
//! branch does its work after it acknowledged an undo (no try succeeds after its cancel). Checked
//! on the services' durable records when the run settles: each effect at most once (one DONE,
//! one CONFIRMED, one UNDONE per branch), no DONE after UNDONE, and all-or-nothing — every
//! transaction ends with all branches confirmed (TCC) / done (saga), or all compensated.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use super::disk::Disk;
use super::faults::{Fault, FaultPlan};
use super::network::NetConfig;
use super::world::World;
use super::Report;
use crate::error::{DurabilityError, RecoveryError, StepError};
use crate::fence::{BranchKey, FenceRecord, Reply, Request, Service, ServiceEvent};
use crate::output::{ForceToken, Output};
use crate::record::{decode_all, DurableRecord};
use crate::types::{NodeId, TxnId};

/// The orchestrator's node id.
pub const ORCHESTRATOR: NodeId = 0;

/// A message on the wire between orchestrator and services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Orchestrator → service.
    Request(Request),
    /// Service → orchestrator.
    Reply(Reply),
}

/// How a transaction ended, in terms every orchestrated protocol shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// Confirm (TCC) / completed (saga).
    Forward,
    /// Cancel (TCC) / compensated (saga).
    Backward,
}

/// What the harness needs from an orchestrator.
pub trait Orchestrated: Sized {
    /// Its log records.
    type Record: DurableRecord + Debug;
    /// Its events.
    type Event: Debug;
    /// Rebuilds it from its records.
    fn recover(id: NodeId, records: Vec<Self::Record>) -> Result<Self, RecoveryError>;
    /// Starts transaction `txn` over `services` (the harness's generated workload).
    fn start(&mut self, txn: TxnId, services: &[NodeId]) -> Result<(), StepError>;
    /// A reply.
    fn step(&mut self, from: NodeId, reply: Reply) -> Result<(), StepError>;
    /// A tick.
    fn tick(&mut self);
    /// A confirmation.
    fn forced(&mut self, token: ForceToken) -> Result<(), DurabilityError>;
    /// Drains output.
    fn take_output(&mut self) -> Output<Request, Self::Record, Self::Event>;
    /// Live transactions.
    fn live(&self) -> usize;
    /// The decision an event reports, if any.
    fn decision(event: &Self::Event) -> Option<(TxnId, Global)>;
    /// The branches of `txn` over `services` (key → service).
    fn branches(txn: TxnId, services: &[NodeId]) -> Vec<(BranchKey, NodeId)>;
    /// Whether a forward outcome needs CONFIRMED (TCC) or only DONE (saga).
    const NEEDS_CONFIRM: bool;
    /// The protocol's name.
    const NAME: &'static str;
}

/// The application's choice for a step (stable per seed, branch and attempt).
pub type Decider = fn(seed: u64, key: BranchKey, attempt: u32) -> bool;

/// One run's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The seed.
    pub seed: u64,
    /// Services (2 to 7).
    pub services: usize,
    /// Transactions.
    pub txns: usize,
    /// Start window.
    pub start_window: u64,
    /// Network faults.
    pub net: NetConfig,
    /// Crashes and partitions.
    pub faults: FaultPlan,
    /// Most ticks.
    pub max_ticks: u64,
    /// Every transaction spans every service (else a random subset of two or more).
    pub all_services: bool,
    /// The applications never refuse or fail a step (cost measurements).
    pub always_succeed: bool,
    /// Keep the whole trace.
    pub keep_trace: bool,
    /// A bug planted in every service.
    #[cfg(feature = "planted-bugs")]
    pub bug: Option<crate::fence::PlantedBug>,
}

impl Config {
    /// Everything drawn from the seed.
    pub fn from_seed(seed: u64) -> Self {
        use rand::Rng;
        let mut rng = World::<()>::rng_for(seed ^ 0x7cc);
        Config {
            seed,
            services: rng.gen_range(2..=7),
            txns: rng.gen_range(3..=10),
            start_window: 120,
            net: NetConfig::random(&mut rng),
            faults: FaultPlan {
                // Every branch step forces a record: crash on fewer of them, or hardly any
                // transaction would get through its tries.
                crash_on_force_ppm: rng.gen_range(20_000..=80_000),
                ..FaultPlan::crashes_and_partitions(&mut rng, 250)
            },
            max_ticks: 3_000,
            all_services: false,
            always_succeed: false,
            keep_trace: false,
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }

    /// One transaction over `services`, no faults (the cost measurement).
    pub fn fault_free(seed: u64, services: usize) -> Self {
        Config {
            services,
            txns: 1,
            start_window: 1,
            net: NetConfig::reliable(),
            faults: FaultPlan::none(),
            all_services: true,
            always_succeed: true,
            ..Config::from_seed(seed)
        }
    }
}

#[derive(Debug, Default)]
struct Ledger {
    decisions: BTreeMap<TxnId, Global>,
    /// Transactions whose first request left the orchestrator (they exist for the services).
    started: BTreeSet<TxnId>,
    /// Branches whose undo a service acknowledged.
    undo_acked: BTreeSet<(NodeId, BranchKey)>,
    violations: Vec<String>,
}

struct Node<E> {
    engine: Option<E>,
    disk: Disk,
}

fn kind(wire: &Wire) -> &'static str {
    match wire {
        Wire::Request(Request::Do { .. }) => "do",
        Wire::Request(Request::Confirm { .. }) => "confirm",
        Wire::Request(Request::Undo { .. }) => "undo",
        Wire::Reply(Reply::Done { .. }) => "done",
        Wire::Reply(Reply::Failed { .. }) => "failed",
        Wire::Reply(Reply::Refused { .. }) => "refused",
        Wire::Reply(Reply::Confirmed { .. }) => "confirmed",
        Wire::Reply(Reply::Undone { .. }) => "undone",
    }
}

struct Sim<O> {
    config: Config,
    decider: Decider,
    world: World<Wire>,
    ledger: Ledger,
    orchestrator: Node<O>,
    services: BTreeMap<NodeId, Node<Service>>,
    txns: BTreeMap<TxnId, Vec<NodeId>>,
}

/// Runs one seed with orchestrator `O`; `decider` plays the services' applications.
pub fn run<O: Orchestrated>(config: Config, decider: Decider) -> Report {
    use rand::seq::SliceRandom;
    use rand::Rng;
    let mut rng = World::<()>::rng_for(config.seed ^ 0xb4a);
    let ids: Vec<NodeId> = (1..=config.services as u64).collect();
    let mut starts = Vec::new();
    for t in 0..config.txns {
        let mut members = ids.clone();
        members.shuffle(&mut rng);
        if !config.all_services {
            members.truncate(rng.gen_range(2..=ids.len()));
        }
        starts.push((
            rng.gen_range(0..config.start_window.max(1)),
            TxnId(t as u64 + 1),
            members,
        ));
    }
    let mut world = World::new(
        rng,
        config.net.clone(),
        config.faults.clone(),
        config.keep_trace,
    );
    world.nodes = std::iter::once(ORCHESTRATOR)
        .chain(ids.iter().copied())
        .collect();
    let all = world.nodes.clone();
    let mut sim: Sim<O> = Sim {
        config,
        decider,
        world,
        ledger: Ledger::default(),
        orchestrator: Node {
            engine: None,
            disk: Disk::default(),
        },
        services: ids
            .iter()
            .map(|&id| {
                (
                    id,
                    Node {
                        engine: None,
                        disk: Disk::default(),
                    },
                )
            })
            .collect(),
        txns: BTreeMap::new(),
    };
    for &node in &all {
        sim.restart(node);
    }
    for now in 0..sim.config.max_ticks {
        sim.world.now = now;
        sim.world.stats.ticks = now + 1;
        if now == sim.world.plan.until {
            sim.world.net.set_config(NetConfig::reliable());
        }
        let plan = sim.world.plan.clone();
        for fault in sim.world.faults.step(&mut sim.world.rng, &plan, &all, now) {
            match fault {
                Fault::Crash(node) => sim.crash(node),
                Fault::Restart(node) => sim.restart(node),
                Fault::Partition(side) => {
                    sim.world.stats.partitions += 1;
                    sim.world.log(format_args!("PARTITION {side:?}"));
                    sim.world.net.partition(&side, &all);
                }
                Fault::Heal => {
                    sim.world.log(format_args!("HEAL"));
                    sim.world.net.heal();
                }
            }
        }
        for (at, txn, members) in &starts {
            if *at == now {
                sim.txns.insert(*txn, members.clone());
                if let Some(engine) = sim.orchestrator.engine.as_mut() {
                    let result = engine.start(*txn, members);
                    sim.world
                        .log(format_args!("start {txn} over {members:?}: {result:?}"));
                    sim.drain_orchestrator();
                }
            }
        }
        for envelope in sim.world.deliver() {
            // The forward outcome is known everywhere once every CONFIRM (TCC) or the last DONE
            // (saga) has arrived: the depths the bench reports.
            let learns = match &envelope.message {
                Wire::Request(Request::Confirm { .. }) => O::NEEDS_CONFIRM,
                Wire::Reply(Reply::Done { .. }) => !O::NEEDS_CONFIRM,
                _ => false,
            };
            if learns {
                let stats = &mut sim.world.stats;
                stats.decision_message_depth =
                    stats.decision_message_depth.max(envelope.message_depth);
                stats.decision_force_depth = stats.decision_force_depth.max(envelope.force_depth);
            }
            sim.deliver(envelope.from, envelope.to, envelope.message);
        }
        for &node in &all {
            sim.sync(node);
        }
        for &node in &all {
            sim.tick(node);
        }
        if now >= sim.world.plan.until && sim.settled() {
            break;
        }
    }
    sim.finish()
}

impl<O: Orchestrated> Sim<O> {
    fn deliver(&mut self, from: NodeId, to: NodeId, wire: Wire) {
        match wire {
            Wire::Reply(reply) if to == ORCHESTRATOR => {
                if let Some(engine) = self.orchestrator.engine.as_mut() {
                    if let Err(e) = engine.step(from, reply) {
                        self.world.log(format_args!("n0 refused: {e}"));
                    }
                    self.drain_orchestrator();
                }
            }
            Wire::Request(request) => {
                if let Some(engine) = self.services.get_mut(&to).and_then(|n| n.engine.as_mut()) {
                    if let Err(e) = engine.step(from, request) {
                        self.world.log(format_args!("n{to} refused: {e}"));
                    }
                    self.drain_service(to);
                }
            }
            Wire::Reply(_) => {}
        }
    }

    fn sync(&mut self, node: NodeId) {
        if node == ORCHESTRATOR {
            if let Some(engine) = self.orchestrator.engine.as_mut() {
                if let Some(token) = self.world.sync(node, &mut self.orchestrator.disk) {
                    let _ = engine.forced(token);
                    self.drain_orchestrator();
                }
            }
        } else if let Some(n) = self.services.get_mut(&node) {
            if let Some(engine) = n.engine.as_mut() {
                if let Some(token) = self.world.sync(node, &mut n.disk) {
                    let _ = engine.forced(token);
                    self.drain_service(node);
                }
            }
        }
    }

    fn tick(&mut self, node: NodeId) {
        if node == ORCHESTRATOR {
            if let Some(engine) = self.orchestrator.engine.as_mut() {
                engine.tick();
                self.drain_orchestrator();
            }
        }
    }

    fn drain_orchestrator(&mut self) {
        loop {
            let Some(engine) = self.orchestrator.engine.as_mut() else {
                return;
            };
            let out = engine.take_output();
            if out.is_empty() {
                return;
            }
            for event in &out.events {
                self.world.log(format_args!("n0 {event:?}"));
                if let Some((txn, global)) = O::decision(event) {
                    match self.ledger.decisions.get(&txn) {
                        Some(previous) if *previous != global => {
                            self.ledger.violations.push(format!(
                                "t={}: decision changed for {txn}: {previous:?} then {global:?}",
                                self.world.now
                            ))
                        }
                        _ => {
                            self.ledger.decisions.insert(txn, global);
                        }
                    }
                }
            }
            for (_, request) in &out.messages {
                if let Request::Do { key, .. } = request {
                    self.ledger.started.insert(key.txn);
                }
            }
            let messages = out
                .messages
                .into_iter()
                .map(|(to, r)| (to, Wire::Request(r)))
                .collect();
            let crashed = self.world.emit(
                ORCHESTRATOR,
                &mut self.orchestrator.disk,
                out.writes,
                messages,
                kind,
            );
            if crashed {
                let (now, plan) = (self.world.now, self.world.plan.clone());
                self.world
                    .faults
                    .crashed(&mut self.world.rng, &plan, ORCHESTRATOR, now);
                self.crash(ORCHESTRATOR);
                return;
            }
        }
    }

    fn drain_service(&mut self, id: NodeId) {
        loop {
            let Some(engine) = self.services.get_mut(&id).and_then(|n| n.engine.as_mut()) else {
                return;
            };
            let out = engine.take_output();
            if out.is_empty() {
                return;
            }
            let mut decisions = Vec::new();
            for event in &out.events {
                self.world.log(format_args!("n{id} {event:?}"));
                match event {
                    ServiceEvent::DoRequested { key, attempt, .. } => {
                        let ok = self.config.always_succeed
                            || (self.decider)(self.config.seed, *key, *attempt);
                        decisions.push((*key, ok));
                    }
                    ServiceEvent::Applied {
                        record: FenceRecord::Done { key, .. },
                    } => {
                        if self.ledger.undo_acked.contains(&(id, *key)) {
                            self.ledger.violations.push(format!(
                                "t={}: n{id} did the work of {key:?} after acknowledging its undo",
                                self.world.now
                            ));
                        }
                    }
                    ServiceEvent::Applied { .. } => {}
                }
            }
            for (_, message) in &out.messages {
                if let Reply::Undone { key } = message {
                    self.ledger.undo_acked.insert((id, *key));
                }
            }
            let messages = out
                .messages
                .into_iter()
                .map(|(to, r)| (to, Wire::Reply(r)))
                .collect();
            let Some(node) = self.services.get_mut(&id) else {
                return;
            };
            let crashed = self
                .world
                .emit(id, &mut node.disk, out.writes, messages, kind);
            if crashed {
                let (now, plan) = (self.world.now, self.world.plan.clone());
                self.world
                    .faults
                    .crashed(&mut self.world.rng, &plan, id, now);
                self.crash(id);
                return;
            }
            if let Some(engine) = node.engine.as_mut() {
                for (key, ok) in decisions {
                    let effect = format!("{key:?}").into_bytes();
                    let _ = engine.decide(key, if ok { Ok(effect) } else { Err(()) });
                }
            }
        }
    }

    fn crash(&mut self, node: NodeId) {
        if node == ORCHESTRATOR {
            self.orchestrator.engine = None;
            self.world.crash(node, &mut self.orchestrator.disk);
        } else if let Some(n) = self.services.get_mut(&node) {
            n.engine = None;
            self.world.crash(node, &mut n.disk);
        }
    }

    fn restart(&mut self, node: NodeId) {
        let now = self.world.now;
        if node == ORCHESTRATOR {
            match decode_all::<O::Record, _>(self.orchestrator.disk.durable().iter())
                .and_then(|records| O::recover(node, records))
            {
                Ok(engine) => self.orchestrator.engine = Some(engine),
                Err(e) => self
                    .ledger
                    .violations
                    .push(format!("t={now}: n0 cannot recover: {e}")),
            }
            self.world.restart(node);
            self.drain_orchestrator();
            return;
        }
        let Some(n) = self.services.get_mut(&node) else {
            return;
        };
        match decode_all::<FenceRecord, _>(n.disk.durable().iter())
            .and_then(|records| Service::recover(node, records))
        {
            Ok(engine) => {
                #[allow(unused_mut)]
                let mut engine = engine;
                #[cfg(feature = "planted-bugs")]
                if let Some(bug) = self.config.bug {
                    engine.plant_bug(bug);
                }
                n.engine = Some(engine);
            }
            Err(e) => self
                .ledger
                .violations
                .push(format!("t={now}: n{node} cannot recover: {e}")),
        }
        self.world.restart(node);
        self.drain_service(node);
    }

    fn settled(&self) -> bool {
        self.world.net.is_idle()
            && !self.world.faults.any_down()
            && self
                .orchestrator
                .engine
                .as_ref()
                .is_some_and(|o| o.live() == 0)
            && !self.orchestrator.disk.sync_pending()
            && self.services.values().all(|n| {
                n.engine.as_ref().is_some_and(|s| s.deciding() == 0) && !n.disk.sync_pending()
            })
    }

    /// The durable records of every service, folded per branch.
    fn check_records(&mut self) {
        let mut finals: BTreeMap<BranchKey, (bool, bool, bool)> = BTreeMap::new();
        for (&id, n) in &self.services {
            let records: Vec<FenceRecord> = match decode_all(n.disk.durable().iter()) {
                Ok(records) => records,
                Err(e) => {
                    self.ledger
                        .violations
                        .push(format!("n{id}: unparsable record: {e}"));
                    continue;
                }
            };
            let mut counts: BTreeMap<(BranchKey, &'static str), u32> = BTreeMap::new();
            let mut undone: BTreeSet<BranchKey> = BTreeSet::new();
            for record in &records {
                let key = record.key();
                let name = match record {
                    FenceRecord::Done { .. } => "done",
                    FenceRecord::Failed { .. } => "failed",
                    FenceRecord::Confirmed { .. } => "confirmed",
                    FenceRecord::Undone { .. } => "undone",
                };
                let count = counts.entry((key, name)).or_insert(0);
                *count += 1;
                if *count > 1 && name != "failed" {
                    self.ledger.violations.push(format!(
                        "n{id}: {key:?} {name} twice (an effect applied twice)"
                    ));
                }
                if name == "done" && undone.contains(&key) {
                    self.ledger
                        .violations
                        .push(format!("n{id}: {key:?} done after its undo (suspension)"));
                }
                let entry = finals.entry(key).or_insert((false, false, false));
                match record {
                    FenceRecord::Done { .. } => entry.0 = true,
                    FenceRecord::Confirmed { .. } => entry.1 = true,
                    FenceRecord::Undone { compensated, .. } => {
                        undone.insert(key);
                        entry.2 = true;
                        if *compensated && !entry.0 {
                            self.ledger
                                .violations
                                .push(format!("n{id}: {key:?} compensated without being done"));
                        }
                    }
                    FenceRecord::Failed { .. } => {}
                }
            }
        }
        for (txn, services) in &self.txns {
            let Some(&global) = self.ledger.decisions.get(txn) else {
                continue;
            };
            for (key, service) in O::branches(*txn, services) {
                let (done, confirmed, undone) =
                    finals.get(&key).copied().unwrap_or((false, false, false));
                let ok = match global {
                    Global::Forward if O::NEEDS_CONFIRM => confirmed && !undone,
                    Global::Forward => done && !undone,
                    Global::Backward => !confirmed && (!done || undone),
                };
                if !ok {
                    self.ledger.violations.push(format!(
                        "{txn} ended {global:?} but branch {} at n{service} is done={done} \
                         confirmed={confirmed} undone={undone}",
                        key.step
                    ));
                }
            }
        }
    }

    fn finish(mut self) -> Report {
        let settled = self.settled();
        if !settled {
            self.ledger.violations.push(format!(
                "termination: not settled {} ticks after faults stopped",
                self.world.now.saturating_sub(self.world.plan.until)
            ));
        } else {
            self.check_records();
            for txn in &self.ledger.started {
                if !self.ledger.decisions.contains_key(txn) {
                    self.ledger
                        .violations
                        .push(format!("termination: {txn} never ended"));
                }
            }
        }
        let forward = self
            .ledger
            .decisions
            .values()
            .filter(|g| **g == Global::Forward)
            .count() as u64;
        self.world.stats.committed = forward;
        self.world.stats.aborted = self.ledger.decisions.len() as u64 - forward;
        Report {
            protocol: O::NAME,
            seed: self.config.seed,
            violations: self.ledger.violations,
            trace_hash: self.world.trace.hash(),
            trace: self.world.trace.lines(),
            stats: self.world.stats,
        }
    }
}
