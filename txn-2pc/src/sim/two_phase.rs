//! The 2PC harness: one coordinator (node 0) and participants 1..=n running the real engines.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::Rng;

use super::disk::Disk;
use super::faults::{Fault, FaultPlan};
use super::invariants::CommitLedger;
use super::network::NetConfig;
use super::world::World;
use super::{stable_ppm, Report};
use crate::record::decode_all;
use crate::two_phase::{
    Config as EngineConfig, Coordinator, CoordinatorEvent, CoordinatorRecord, Message, Participant,
    ParticipantEvent, ParticipantRecord,
};
use crate::types::{NodeId, Outcome, TxnId, Vote};

/// The coordinator's node id.
pub const COORDINATOR: NodeId = 0;

/// What happens to the coordinator beyond the random faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinatorFate {
    /// It crashes only when the fault plan says, and always comes back.
    Recovers,
    /// It dies for good the moment it asks to force its first commit decision (every vote in).
    DiesOnFirstDecision,
    /// It dies for good at this tick.
    DiesAt(u64),
}

/// How a transaction is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A participant prepares first and sends BEGIN-COMMIT (Gray & Lamport's accounting).
    Initiator,
    /// The client asks the coordinator, which sends PREPARE to everyone.
    Coordinator,
}

/// One run's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The seed of every random choice.
    pub seed: u64,
    /// Participants (2 to 7).
    pub participants: usize,
    /// Transactions started.
    pub txns: usize,
    /// Transactions start at random ticks below this.
    pub start_window: u64,
    /// Network faults (until `faults.until`; reliable afterwards).
    pub net: NetConfig,
    /// Crashes and partitions.
    pub faults: FaultPlan,
    /// Most ticks to run.
    pub max_ticks: u64,
    /// Engine timeouts.
    pub engine: EngineConfig,
    /// Share of transactions started by a participant, in ppm (the rest by the coordinator).
    pub initiator_ppm: u32,
    /// Share of transactions with a single participant, in ppm.
    pub single_ppm: u32,
    /// Every transaction spans every participant (else a random subset).
    pub all_participants: bool,
    /// Chance a resource manager votes no, in ppm.
    pub vote_no_ppm: u32,
    /// Chance a (non-initiating) resource manager votes read-only, in ppm.
    pub read_only_ppm: u32,
    /// The coordinator's fate.
    pub coordinator: CoordinatorFate,
    /// Keep every trace event (for `--verbose`).
    pub keep_trace: bool,
    /// A bug planted in every engine.
    #[cfg(feature = "planted-bugs")]
    pub bug: Option<crate::two_phase::PlantedBug>,
}

impl Config {
    /// Everything drawn from the seed: 2–7 participants, 2–6 transactions, a faulty network,
    /// crashes and partitions until tick 250, then quiet until everything settles.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = World::<()>::rng_for(seed);
        Config {
            seed,
            participants: rng.gen_range(2..=7),
            txns: rng.gen_range(3..=10),
            start_window: 120,
            net: NetConfig::random(&mut rng),
            faults: FaultPlan::crashes_and_partitions(&mut rng, 250),
            max_ticks: 3_000,
            engine: EngineConfig::default(),
            initiator_ppm: 500_000,
            single_ppm: 100_000,
            all_participants: false,
            vote_no_ppm: 30_000,
            read_only_ppm: 100_000,
            coordinator: CoordinatorFate::Recovers,
            keep_trace: false,
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }

    /// One transaction over `participants`, every vote yes, no faults: the cost measurement.
    pub fn fault_free(seed: u64, participants: usize, start: Start) -> Self {
        Config {
            participants,
            txns: 1,
            start_window: 1,
            net: NetConfig::reliable(),
            faults: FaultPlan::none(),
            initiator_ppm: if start == Start::Initiator {
                1_000_000
            } else {
                0
            },
            single_ppm: 0,
            all_participants: true,
            vote_no_ppm: 0,
            read_only_ppm: 0,
            ..Config::from_seed(seed)
        }
    }

    /// Every participant votes yes, then the coordinator dies as it decides: 2PC's blocking case.
    pub fn coordinator_dies_after_votes(seed: u64, participants: usize) -> Self {
        Config {
            coordinator: CoordinatorFate::DiesOnFirstDecision,
            max_ticks: 600,
            ..Config::fault_free(seed, participants, Start::Coordinator)
        }
    }
}

struct Node<E> {
    engine: Option<E>,
    disk: Disk,
    /// Transactions whose prepared work this node lost in a crash: its RM votes no on them.
    lost: BTreeSet<TxnId>,
}

struct Sim {
    config: Config,
    world: World<Message>,
    ledger: CommitLedger,
    coordinator: Node<Coordinator>,
    participants: BTreeMap<NodeId, Node<Participant>>,
    initiators: BTreeMap<TxnId, NodeId>,
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::BeginCommit { .. } => "begin-commit",
        Message::Prepare { .. } => "prepare",
        Message::Vote { .. } => "vote",
        Message::Commit { .. } => "commit",
        Message::Abort { .. } => "abort",
        Message::Ack { .. } => "ack",
        Message::OnePhaseCommit { .. } => "one-phase-commit",
        Message::OnePhaseOutcome { .. } => "one-phase-outcome",
        Message::DecisionRequest { .. } => "decision-request",
        Message::DecisionReply { .. } => "decision-reply",
    }
}

/// Runs one seed of two-phase commit and checks its invariants.
pub fn run(config: Config) -> Report {
    let mut rng = World::<()>::rng_for(config.seed ^ 0x2_2c);
    let ids: Vec<NodeId> = (1..=config.participants as u64).collect();
    let mut starts = Vec::new();
    for t in 0..config.txns {
        let txn = TxnId(t as u64 + 1);
        let at = rng.gen_range(0..config.start_window.max(1));
        let mut members = ids.clone();
        members.shuffle(&mut rng);
        let size = if config.all_participants {
            ids.len()
        } else if rng.gen_range(0..1_000_000) < config.single_ppm {
            1
        } else {
            rng.gen_range(2..=ids.len())
        };
        members.truncate(size);
        members.sort_unstable();
        let start = if rng.gen_range(0..1_000_000) < config.initiator_ppm {
            Start::Initiator
        } else {
            Start::Coordinator
        };
        let initiator = members[rng.gen_range(0..members.len())];
        starts.push((at, txn, members, start, initiator));
    }
    let world = World::new(
        rng,
        config.net.clone(),
        config.faults.clone(),
        config.keep_trace,
    );
    let mut world = world;
    world.nodes = std::iter::once(COORDINATOR)
        .chain(ids.iter().copied())
        .collect();
    let mut sim = Sim {
        world,
        ledger: CommitLedger::default(),
        coordinator: Node {
            engine: None,
            disk: Disk::default(),
            lost: BTreeSet::new(),
        },
        participants: BTreeMap::new(),
        initiators: BTreeMap::new(),
        config,
    };
    sim.restart(COORDINATOR);
    for &id in &ids {
        sim.participants.insert(
            id,
            Node {
                engine: None,
                disk: Disk::default(),
                lost: BTreeSet::new(),
            },
        );
        sim.restart(id);
    }
    let all: Vec<NodeId> = std::iter::once(COORDINATOR)
        .chain(ids.iter().copied())
        .collect();
    let max_ticks = sim.config.max_ticks;
    for now in 0..max_ticks {
        sim.world.now = now;
        sim.world.stats.ticks = now + 1;
        if now == sim.world.plan.until {
            sim.world.net.set_config(NetConfig::reliable());
        }
        let plan = sim.world.plan.clone();
        let faults = sim.world.faults.step(&mut sim.world.rng, &plan, &all, now);
        for fault in faults {
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
        if sim.config.coordinator == CoordinatorFate::DiesAt(now) {
            sim.die_for_good();
        }
        for (at, txn, members, start, initiator) in &starts {
            if *at == now {
                sim.start(*txn, members, *start, *initiator);
            }
        }
        for envelope in sim.world.deliver() {
            if envelope.to != COORDINATOR {
                if let Message::Commit { .. } = envelope.message {
                    let stats = &mut sim.world.stats;
                    stats.decision_message_depth =
                        stats.decision_message_depth.max(envelope.message_depth);
                    stats.decision_force_depth =
                        stats.decision_force_depth.max(envelope.force_depth);
                }
            }
            sim.deliver(envelope.from, envelope.to, envelope.message);
        }
        for node in all.iter().copied() {
            sim.sync(node);
        }
        for node in all.iter().copied() {
            sim.tick(node);
        }
        if now >= sim.world.plan.until && sim.settled() {
            break;
        }
    }
    sim.finish()
}

impl Sim {
    fn start(&mut self, txn: TxnId, members: &[NodeId], start: Start, initiator: NodeId) {
        self.ledger.begin(txn, members);
        match start {
            Start::Initiator => {
                self.initiators.insert(txn, initiator);
                let Some(engine) = self.participant(initiator) else {
                    return;
                };
                let result = engine.initiate(txn, COORDINATOR, members);
                self.world.log(format_args!(
                    "start {txn} at n{initiator} over {members:?}: {result:?}"
                ));
                self.drain_participant(initiator);
            }
            Start::Coordinator => {
                let Some(engine) = self.coordinator.engine.as_mut() else {
                    return;
                };
                let result = engine.begin(txn, members);
                self.world
                    .log(format_args!("begin {txn} over {members:?}: {result:?}"));
                self.drain_coordinator();
            }
        }
    }

    fn participant(&mut self, id: NodeId) -> Option<&mut Participant> {
        self.participants.get_mut(&id)?.engine.as_mut()
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, message: Message) {
        if to == COORDINATOR {
            if let Some(engine) = self.coordinator.engine.as_mut() {
                if let Err(e) = engine.step(from, message) {
                    self.world.log(format_args!("n0 refused: {e}"));
                }
                self.drain_coordinator();
            }
        } else if let Some(engine) = self.participant(to) {
            if let Err(e) = engine.step(from, message) {
                self.world.log(format_args!("n{to} refused: {e}"));
            }
            self.drain_participant(to);
        }
    }

    fn sync(&mut self, node: NodeId) {
        if node == COORDINATOR {
            if let Some(engine) = self.coordinator.engine.as_mut() {
                if let Some(token) = self.world.sync(node, &mut self.coordinator.disk) {
                    let _ = engine.forced(token);
                    self.drain_coordinator();
                }
            }
        } else if let Some(n) = self.participants.get_mut(&node) {
            if let Some(engine) = n.engine.as_mut() {
                if let Some(token) = self.world.sync(node, &mut n.disk) {
                    let _ = engine.forced(token);
                    self.drain_participant(node);
                }
            }
        }
    }

    fn tick(&mut self, node: NodeId) {
        if node == COORDINATOR {
            if let Some(engine) = self.coordinator.engine.as_mut() {
                engine.tick();
                self.drain_coordinator();
            }
        } else if let Some(engine) = self.participant(node) {
            engine.tick();
            self.drain_participant(node);
        }
    }

    fn drain_coordinator(&mut self) {
        loop {
            let Some(engine) = self.coordinator.engine.as_mut() else {
                return;
            };
            let out = engine.take_output();
            if out.is_empty() {
                return;
            }
            let now = self.world.now;
            for event in &out.events {
                self.world.log(format_args!("n0 {event:?}"));
                if let CoordinatorEvent::Decided { txn, outcome } = event {
                    self.ledger.decided(now, *txn, COORDINATOR, *outcome);
                }
            }
            let forcing = out
                .writes
                .iter()
                .any(|w| matches!(w, crate::output::Write::Force { .. }));
            if forcing && self.config.coordinator == CoordinatorFate::DiesOnFirstDecision {
                self.world.emit(
                    COORDINATOR,
                    &mut self.coordinator.disk,
                    out.writes,
                    Vec::new(),
                    kind,
                );
                self.die_for_good();
                return;
            }
            let crashed = self.world.emit(
                COORDINATOR,
                &mut self.coordinator.disk,
                out.writes,
                out.messages,
                kind,
            );
            if crashed {
                let plan = self.world.plan.clone();
                self.world
                    .faults
                    .crashed(&mut self.world.rng, &plan, COORDINATOR, now);
                self.crash(COORDINATOR);
                return;
            }
        }
    }

    fn drain_participant(&mut self, id: NodeId) {
        loop {
            let Some(node) = self.participants.get_mut(&id) else {
                return;
            };
            let Some(engine) = node.engine.as_mut() else {
                return;
            };
            let out = engine.take_output();
            if out.is_empty() {
                return;
            }
            let now = self.world.now;
            let mut votes = Vec::new();
            for event in &out.events {
                self.world.log(format_args!("n{id} {event:?}"));
                match event {
                    ParticipantEvent::PrepareRequested { txn } => {
                        let vote = self.rm_vote(id, *txn);
                        self.ledger.voted(*txn, id, vote);
                        votes.push((*txn, vote));
                    }
                    ParticipantEvent::Apply { txn, outcome } => {
                        self.ledger.decided(now, *txn, id, *outcome);
                    }
                    _ => {}
                }
            }
            let Some(node) = self.participants.get_mut(&id) else {
                return;
            };
            let crashed = self
                .world
                .emit(id, &mut node.disk, out.writes, out.messages, kind);
            if crashed {
                let plan = self.world.plan.clone();
                self.world
                    .faults
                    .crashed(&mut self.world.rng, &plan, id, now);
                self.crash(id);
                return;
            }
            if let Some(engine) = node.engine.as_mut() {
                for (txn, vote) in votes {
                    if let Err(e) = engine.vote(txn, vote) {
                        self.world.log(format_args!("n{id} vote refused: {e}"));
                    }
                }
            }
        }
    }

    /// The resource manager's vote: stable per (seed, transaction, node), and "no" for work a
    /// crash destroyed.
    fn rm_vote(&self, id: NodeId, txn: TxnId) -> Vote {
        if self
            .participants
            .get(&id)
            .is_some_and(|n| n.lost.contains(&txn))
        {
            return Vote::No;
        }
        let roll = stable_ppm(self.config.seed, &[txn.0, id]);
        if roll < self.config.vote_no_ppm {
            Vote::No
        } else if roll < self.config.vote_no_ppm + self.config.read_only_ppm
            && self.initiators.get(&txn) != Some(&id)
        {
            Vote::ReadOnly
        } else {
            Vote::Yes
        }
    }

    fn die_for_good(&mut self) {
        if self.coordinator.engine.is_some() {
            self.world.log(format_args!("n0 dies for good"));
            self.world.faults.permanent.insert(COORDINATOR);
            self.crash(COORDINATOR);
        }
    }

    fn crash(&mut self, node: NodeId) {
        if node == COORDINATOR {
            self.coordinator.engine = None;
            self.world.crash(node, &mut self.coordinator.disk);
            return;
        }
        let Some(n) = self.participants.get_mut(&node) else {
            return;
        };
        n.engine = None;
        self.world.crash(node, &mut n.disk);
        // Work prepared in memory only is gone: that participant has, in effect, aborted.
        let records: Vec<ParticipantRecord> =
            decode_all(n.disk.durable().iter()).unwrap_or_default();
        let prepared: BTreeSet<TxnId> = records
            .iter()
            .filter_map(|r| match r {
                ParticipantRecord::Prepared { txn, .. }
                | ParticipantRecord::Committed { txn }
                | ParticipantRecord::Heuristic { txn, .. } => Some(*txn),
                ParticipantRecord::Aborted { .. } => None,
            })
            .collect();
        for txn in self.ledger.voted_yes(node) {
            if self.ledger.outcome_of(txn, node).is_none() && !prepared.contains(&txn) {
                self.world
                    .log(format_args!("n{node} lost the prepared work of {txn}"));
                n.lost.insert(txn);
                self.ledger
                    .decided(self.world.now, txn, node, Outcome::Abort);
            }
        }
    }

    fn restart(&mut self, node: NodeId) {
        if self.world.faults.permanent.contains(&node) {
            return;
        }
        let engine_config = self.config.engine.clone();
        if node == COORDINATOR {
            let result = decode_all::<CoordinatorRecord, _>(self.coordinator.disk.durable().iter())
                .and_then(|records| Coordinator::recover(node, engine_config, records));
            match result {
                Ok((engine, resumed)) => {
                    #[allow(unused_mut)]
                    let mut engine = engine;
                    #[cfg(feature = "planted-bugs")]
                    if let Some(bug) = self.config.bug {
                        engine.plant_bug(bug);
                    }
                    self.world
                        .log(format_args!("n0 recovered, resuming {resumed:?}"));
                    self.coordinator.engine = Some(engine);
                }
                Err(e) => self
                    .ledger
                    .violations
                    .push(format!("t={}: n0 cannot recover: {e}", self.world.now)),
            }
            self.world.restart(node);
            self.drain_coordinator();
            return;
        }
        let Some(n) = self.participants.get_mut(&node) else {
            return;
        };
        let now = self.world.now;
        let result =
            decode_all::<ParticipantRecord, _>(n.disk.durable().iter()).and_then(|records| {
                // What the log says was decided here is what recovery redoes.
                for record in &records {
                    match record {
                        ParticipantRecord::Committed { txn } => {
                            self.ledger.decided(now, *txn, node, Outcome::Commit)
                        }
                        ParticipantRecord::Aborted { txn } => {
                            self.ledger.decided(now, *txn, node, Outcome::Abort)
                        }
                        _ => {}
                    }
                }
                Participant::recover(node, engine_config, records)
            });
        match result {
            Ok((engine, in_doubt)) => {
                #[allow(unused_mut)]
                let mut engine = engine;
                #[cfg(feature = "planted-bugs")]
                if let Some(bug) = self.config.bug {
                    engine.plant_bug(bug);
                }
                let txns: Vec<TxnId> = in_doubt.iter().map(|d| d.txn).collect();
                self.world
                    .log(format_args!("n{node} recovered, in doubt: {txns:?}"));
                n.engine = Some(engine);
            }
            Err(e) => self
                .ledger
                .violations
                .push(format!("t={}: n{node} cannot recover: {e}", self.world.now)),
        }
        self.world.restart(node);
        self.drain_participant(node);
    }

    fn settled(&self) -> bool {
        self.world.net.is_idle()
            && !self.world.faults.any_down()
            && self
                .coordinator
                .engine
                .as_ref()
                .is_none_or(|c| c.live() == 0 && !self.coordinator.disk.sync_pending())
            && self
                .participants
                .values()
                .all(|n| n.engine.as_ref().is_some_and(|p| p.live() == 0) && !n.disk.sync_pending())
    }

    fn finish(mut self) -> Report {
        let mut in_doubt = 0;
        let mut blocked = 0;
        for n in self.participants.values() {
            if let Some(engine) = &n.engine {
                for doubt in engine.in_doubt() {
                    in_doubt += 1;
                    blocked += u64::from(doubt.blocked);
                }
            }
        }
        self.world.stats.in_doubt = in_doubt;
        self.world.stats.blocked = blocked;
        if self.config.coordinator == CoordinatorFate::Recovers {
            self.ledger.check_complete();
            if !self.settled() {
                self.ledger.violations.push(format!(
                    "termination: not settled {} ticks after faults stopped ({in_doubt} in doubt)",
                    self.world.now.saturating_sub(self.world.plan.until)
                ));
            }
        }
        let (committed, aborted) = self.ledger.counts();
        self.world.stats.committed = committed as u64;
        self.world.stats.aborted = aborted as u64;
        Report {
            protocol: "2pc",
            seed: self.config.seed,
            violations: self.ledger.violations,
            trace_hash: self.world.trace.hash(),
            trace: self.world.trace.lines(),
            stats: self.world.stats,
        }
    }
}
