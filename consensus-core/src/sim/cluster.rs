//! The simulated cluster: N Raft members, their drivers, a faulty network, clients and a nemesis.
//!
//! The driver model follows the persistence contract of [`crate::protocol`] exactly: messages from
//! `ready()` go on the network at once; a `Persist` is written to the member's storage at once (the
//! OS page cache) and queued as a disk write that completes a few ticks later, in order, at which
//! point it is copied to the node's *durable* storage and confirmed with `persisted(token)`. A crash
//! keeps only the durable storage (plus, by the seed's choice, a prefix of the writes still queued:
//! a write may reach the disk before its completion is reported, never after a later one).
//! Restart builds a fresh member from that storage and the state machine from its snapshot.
//!
//! Every choice — delays, faults, client operations, which node to crash — comes from ChaCha RNGs
//! derived from the seed; every container that is iterated is ordered. Same seed, same run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::history::{History, KvInput, KvOutput, OpId};
use super::invariants::{InvariantChecker, NodeView, Violation};
use super::kv::{Command, KvStore};
use super::linearizability::{self, Verdict};
use super::network::{Network, NetworkConfig};
use super::trace::Trace;
use crate::error::Error;
use crate::protocol::{Consensus, Persist, PersistToken};
use crate::raft::{Config, Message, MessageBody, PlantedBug, Raft, ReadMode};
use crate::storage::{MemStorage, Storage};
use crate::types::{ConfChange, ConfState, EntryPayload, MemberChange, NodeId, Role};

/// Parameters of one simulated run. [`SimConfig::from_seed`] derives them all from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Number of nodes (3 to 7).
    pub nodes: usize,
    /// Ticks during which faults are injected.
    pub fault_ticks: u64,
    /// Ticks allowed, after faults stop, for a leader to emerge and a final write to commit.
    pub liveness_ticks: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Size of the key space.
    pub keys: u64,
    /// Network unreliability during the fault phase.
    pub network: NetworkConfig,
    /// Per-tick chance (parts per million) that the nemesis acts.
    pub nemesis_ppm: u32,
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Pre-vote on or off.
    pub pre_vote: bool,
    /// Check-quorum on or off (always on with lease reads, which need it).
    pub check_quorum: bool,
    /// Clients wait up to this many ticks between operations (long waits leave new leaders idle).
    pub client_think: u64,
    /// Clients work in bursts: active for 50 ticks, then quiet for 50 (leaders change while idle).
    pub client_bursts: bool,
    /// Leader churn: a few ticks after each new leader appears, cut it off (or crash it), and heal
    /// a little later, so short-lived leaders leave competing uncommitted tails behind.
    pub leader_churn: bool,
    /// A bug to plant in every member (to show the checks bite).
    pub planted_bug: Option<PlantedBug>,
    /// Events kept for the failure report.
    pub trace_window: usize,
    /// Keep every event (for `--verbose`).
    pub keep_full_trace: bool,
}

impl SimConfig {
    /// Derives a run's parameters from its seed; `nodes` overrides the node count.
    pub fn from_seed(seed: u64, nodes: Option<usize>) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0ff_ee00_0001);
        let nodes = nodes.unwrap_or_else(|| rng.gen_range(3..=7)).clamp(3, 7);
        let network = NetworkConfig {
            drop_ppm: rng.gen_range(0..60_000),
            duplicate_ppm: rng.gen_range(0..30_000),
            min_delay: 1,
            max_delay: rng.gen_range(1..=5),
            reorder_ppm: rng.gen_range(0..50_000),
            max_in_flight: 20_000,
        };
        let mut config = SimConfig {
            seed,
            nodes,
            fault_ticks: 600,
            liveness_ticks: 400,
            clients: rng.gen_range(2..=4),
            keys: rng.gen_range(1..=3),
            network,
            nemesis_ppm: rng.gen_range(20_000..80_000),
            read_mode: if rng.gen_bool(0.5) {
                ReadMode::Safe
            } else {
                ReadMode::LeaseBased
            },
            pre_vote: rng.gen_bool(0.8),
            check_quorum: true,
            client_think: 4,
            client_bursts: false,
            leader_churn: false,
            planted_bug: None,
            trace_window: 40,
            keep_full_trace: false,
        };
        config.check_quorum = config.read_mode == ReadMode::LeaseBased || rng.gen_bool(0.6);
        config.client_think = *[4, 4, 12, 40].choose(&mut rng).unwrap_or(&4);
        config.client_bursts = rng.gen_bool(0.4);
        config.leader_churn = rng.gen_bool(0.4);
        if rng.gen_bool(0.3) {
            // A storm: the nemesis acts several times per election timeout.
            config.nemesis_ppm = rng.gen_range(150_000..250_000);
        }
        config
    }
}

impl SimConfig {
    /// The leader-churn profile for `seed`: three nodes, every new leader cut off a few ticks after
    /// it appears (the previous victim rejoining), clients in bursts, and neither pre-vote nor
    /// check-quorum to slow elections down. Short-lived leaders then leave competing uncommitted
    /// tails of different terms, the ground on which Raft's Figure 8 plays out.
    pub fn churn_from_seed(seed: u64) -> Self {
        let mut config = SimConfig::from_seed(seed, Some(3));
        config.leader_churn = true;
        config.client_bursts = true;
        config.pre_vote = false;
        config.check_quorum = false;
        config.read_mode = ReadMode::Safe;
        config
    }
}

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A safety invariant broke during the run.
    Invariant(Violation),
    /// The client history has no linearization.
    NotLinearizable {
        /// The key whose history failed.
        key: u64,
        /// Why.
        explanation: String,
    },
    /// The linearizability search ran out of budget (reported, never silently passed).
    LinearizabilityUnknown {
        /// The key whose search was cut short.
        key: u64,
    },
    /// Once faults stopped the cluster did not elect a leader and commit a write in time.
    NoProgress(String),
    /// The protocol returned an error the driver does not expect (a contract breach).
    Protocol(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Invariant(v) => write!(f, "invariant violated: {v}"),
            Failure::NotLinearizable { key, explanation } => {
                write!(f, "history not linearizable on key {key}: {explanation}")
            }
            Failure::LinearizabilityUnknown { key } => {
                write!(
                    f,
                    "linearizability of key {key} undecided within the search budget"
                )
            }
            Failure::NoProgress(why) => write!(f, "liveness: {why}"),
            Failure::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Ticks simulated.
    pub ticks: u64,
    /// Client operations issued.
    pub operations: u64,
    /// Client operations that returned.
    pub completed: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Membership changes proposed and accepted by a leader.
    pub conf_changes: u64,
    /// Leader transfers requested.
    pub transfers: u64,
    /// Compactions done.
    pub compactions: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Highest commit index reached.
    pub commit_index: u64,
    /// Messages delivered.
    pub messages: u64,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The run's parameters.
    pub config: SimConfig,
    /// Hash over every traced event: equal for two runs of one seed.
    pub trace_hash: u64,
    /// The first failure, if any.
    pub failure: Option<Failure>,
    /// Counters.
    pub stats: SimStats,
    /// The last events before the end of the run (or the failure).
    pub trace: Vec<String>,
}

impl Outcome {
    /// Whether the run found nothing wrong.
    pub fn is_clean(&self) -> bool {
        self.failure.is_none()
    }

    /// A short report: parameters, failure and the last events.
    pub fn report(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "seed {} ({} nodes, {} clients, {} keys, read mode {:?}, pre-vote {}, check-quorum {}, \
             think {}, bursts {}, churn {}, nemesis {} ppm, planted bug {:?}): ",
            c.seed,
            c.nodes,
            c.clients,
            c.keys,
            c.read_mode,
            c.pre_vote,
            c.check_quorum,
            c.client_think,
            c.client_bursts,
            c.leader_churn,
            c.nemesis_ppm,
            c.planted_bug
        );
        match &self.failure {
            Some(f) => out.push_str(&f.to_string()),
            None => out.push_str("clean"),
        }
        out.push_str(&format!(
            "\n  stats: {:?}\n  trace hash {:#018x}; last {} events:\n",
            self.stats,
            self.trace_hash,
            self.trace.len()
        ));
        for line in &self.trace {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Runs one seed with parameters derived from it.
pub fn run_seed(seed: u64, nodes: Option<usize>, planted_bug: Option<PlantedBug>) -> Outcome {
    let mut config = SimConfig::from_seed(seed, nodes);
    config.planted_bug = planted_bug;
    run(config)
}

/// Runs one simulation to the end or to the first failure.
pub fn run(config: SimConfig) -> Outcome {
    let mut sim = Simulation::new(config);
    let failure = sim.run_all().err();
    let trace = if sim.config.keep_full_trace {
        sim.trace
            .everything()
            .into_iter()
            .map(str::to_owned)
            .collect()
    } else {
        sim.trace.recent().map(str::to_owned).collect()
    };
    Outcome {
        trace_hash: sim.trace.hash(),
        failure,
        stats: sim.stats,
        trace,
        config: sim.config,
    }
}

/// A disk write queued behind the node's earlier writes.
struct PendingWrite {
    token: PersistToken,
    copy: Persist,
    done_at: u64,
}

/// One read a node ordered but has not served yet.
#[derive(Clone, Copy)]
struct PendingRead {
    client: usize,
    index: Option<u64>,
}

/// A node slot: the running member (if up) and what its disk holds.
struct Node {
    id: NodeId,
    raft: Option<Raft<MemStorage>>,
    durable: MemStorage,
    writes: VecDeque<PendingWrite>,
    kv: KvStore,
    applied: u64,
    incarnation: u64,
    reads: BTreeMap<u64, PendingRead>,
}

/// What a client is waiting for.
#[derive(Clone, Copy, Debug)]
enum Waiting {
    /// Not submitted (or to be resubmitted) at `at`.
    Submit { at: u64 },
    /// Proposed on `node` at (index, term).
    Entry { node: NodeId, index: u64, term: u64 },
    /// A read ordered on `node` with context `ctx`.
    Read { node: NodeId, ctx: u64 },
}

struct Outstanding {
    op: OpId,
    command: Command,
    deadline: u64,
    waiting: Waiting,
    via_read_index: bool,
    /// When to give up on the current attempt and resubmit (same session sequence, so a write
    /// that did commit is answered from the session cache rather than applied twice).
    retry_at: u64,
}

struct Client {
    id: u64,
    sequence: u64,
    outstanding: Option<Outstanding>,
    next_op_at: u64,
    leader_hint: Option<NodeId>,
    values_written: u64,
}

const OP_TIMEOUT: u64 = 40;
const RETRY_AFTER: u64 = 25;
const WRITE_MAX_DELAY: u64 = 3;

struct Simulation {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    nodes: Vec<Node>,
    network: Network<Message>,
    clients: Vec<Client>,
    history: History,
    checker: InvariantChecker,
    trace: Trace,
    stats: SimStats,
    next_read_ctx: u64,
    faults_on: bool,
    /// Leader churn: the last leader seen (term, id), and the pending cut-off / heal times.
    churn_seen: (u64, NodeId),
    churn_cut_at: Option<(u64, NodeId)>,
    churn_heal_at: Option<u64>,
    /// Members as last proposed by the nemesis (voters), to pick sensible changes.
    crashed: BTreeSet<NodeId>,
    /// (client, sequence) of every command some replica applied with an effect.
    took_effect: BTreeSet<(u64, u64)>,
    /// Operations abandoned by their client: (operation, client, sequence).
    abandoned: Vec<(OpId, u64, u64)>,
}

fn node_config(config: &SimConfig, id: NodeId, applied: u64) -> Config {
    let mut c = Config::new(id);
    c.pre_vote = config.pre_vote;
    c.check_quorum = config.check_quorum;
    c.read_mode = config.read_mode;
    c.max_msg_bytes = 4096;
    c.max_inflight = 16;
    c.applied = applied;
    c.planted_bug = config.planted_bug;
    c
}

fn summarize(message: &Message) -> String {
    let body = match &message.body {
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => format!(
            "Append prev=({prev_index},{prev_term}) n={} last_term={} commit={commit}",
            entries.len(),
            entries.last().map_or(0, |e| e.term)
        ),
        MessageBody::InstallSnapshot { snapshot } => format!(
            "InstallSnapshot ({},{})",
            snapshot.meta.index, snapshot.meta.term
        ),
        other => format!("{other:?}"),
    };
    format!("{}->{} t{} {body}", message.from, message.to, message.term)
}

impl Simulation {
    fn new(config: SimConfig) -> Self {
        let seed = config.seed;
        let voters: Vec<NodeId> = (1..=config.nodes as NodeId).collect();
        let conf = ConfState::with_voters(voters.iter().copied());
        let mut trace = Trace::new(config.trace_window);
        if config.keep_full_trace {
            trace.keep_everything();
        }
        let mut sim = Simulation {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            nodes: Vec::new(),
            network: Network::new(
                config.network.clone(),
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
            clients: (0..config.clients)
                .map(|i| Client {
                    id: i as u64 + 1,
                    sequence: 0,
                    outstanding: None,
                    next_op_at: 0,
                    leader_hint: None,
                    values_written: 0,
                })
                .collect(),
            history: History::new(),
            checker: InvariantChecker::new(),
            trace,
            stats: SimStats::default(),
            next_read_ctx: 1,
            faults_on: true,
            churn_seen: (0, 0),
            churn_cut_at: None,
            churn_heal_at: None,
            crashed: BTreeSet::new(),
            took_effect: BTreeSet::new(),
            abandoned: Vec::new(),
            config,
        };
        for &id in &voters {
            let storage = MemStorage::new_with_conf(conf.clone());
            sim.nodes.push(Node {
                id,
                raft: None,
                durable: storage,
                writes: VecDeque::new(),
                kv: KvStore::new(),
                applied: 0,
                incarnation: 0,
                reads: BTreeMap::new(),
            });
        }
        sim
    }

    fn event(&mut self, args: std::fmt::Arguments<'_>) {
        self.trace.record(self.now, args);
    }

    fn slot(&self, id: NodeId) -> usize {
        (id - 1) as usize
    }

    fn run_all(&mut self) -> Result<(), Failure> {
        let seed = self.config.seed;
        self.event(format_args!("start seed {seed}"));
        for id in 1..=self.config.nodes as NodeId {
            self.start_node(id)?;
        }
        while self.now < self.config.fault_ticks {
            self.nemesis()?;
            if self.config.leader_churn {
                self.churn()?;
            }
            self.step_time()?;
        }
        self.stop_faults()?;
        self.await_liveness()?;
        self.check_history()
    }

    /// One tick: storage completions, deliveries, ticks, clients.
    fn step_time(&mut self) -> Result<(), Failure> {
        self.now += 1;
        self.stats.ticks = self.now;
        for slot in 0..self.nodes.len() {
            self.complete_writes(slot)?;
        }
        for envelope in self.network.deliver_due(self.now) {
            let slot = self.slot(envelope.to);
            if self.nodes[slot].raft.is_none() {
                continue;
            }
            self.stats.messages += 1;
            let line = summarize(&envelope.message);
            self.event(format_args!("deliver {line}"));
            let result = self.nodes[slot]
                .raft
                .as_mut()
                .map_or(Ok(()), |raft| raft.step(envelope.message));
            if let Err(e) = result {
                self.event(format_args!("step error on {}: {e}", envelope.to));
            }
            self.process(slot)?;
        }
        for slot in 0..self.nodes.len() {
            if let Some(raft) = self.nodes[slot].raft.as_mut() {
                raft.tick();
                self.process(slot)?;
            }
        }
        for client in 0..self.clients.len() {
            self.client_step(client)?;
        }
        Ok(())
    }

    fn start_node(&mut self, id: NodeId) -> Result<(), Failure> {
        let slot = self.slot(id);
        let node = &mut self.nodes[slot];
        node.incarnation += 1;
        let storage = node.durable.clone();
        let snapshot = storage
            .snapshot()
            .map_err(|e| Failure::Protocol(format!("node {id} snapshot unreadable: {e}")))?;
        node.kv = KvStore::from_bytes(&snapshot.data)
            .map_err(|e| Failure::Protocol(format!("node {id} snapshot undecodable: {e}")))?;
        node.applied = snapshot.meta.index;
        node.reads.clear();
        node.writes.clear();
        let hard = storage.hard_state();
        let rng = ChaCha8Rng::seed_from_u64(
            self.config.seed ^ id.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (node.incarnation << 48),
        );
        let config = node_config(&self.config, id, snapshot.meta.index);
        let raft = Raft::new(config, storage, rng)
            .map_err(|e| Failure::Protocol(format!("node {id} failed to start: {e}")))?;
        node.raft = Some(raft);
        let (applied, digest) = (node.applied, node.kv.digest());
        self.crashed.remove(&id);
        self.event(format_args!(
            "start node {id} (term {} vote {} commit {}, snapshot {applied})",
            hard.term, hard.vote, hard.commit
        ));
        self.checker
            .restarted(id, hard.term, 0, applied)
            .map_err(Failure::Invariant)?;
        self.checker
            .restored(id, applied, digest)
            .map_err(Failure::Invariant)?;
        self.process(slot)
    }

    fn crash(&mut self, id: NodeId) {
        let slot = self.slot(id);
        // A prefix of the queued writes may have reached the disk unreported.
        let survive = {
            let pending = self.nodes[slot].writes.len();
            if pending > 0 && self.rng.gen_bool(0.3) {
                self.rng.gen_range(0..=pending)
            } else {
                0
            }
        };
        let node = &mut self.nodes[slot];
        for write in node.writes.iter().take(survive) {
            let _ = node.durable.write(&write.copy);
        }
        node.raft = None;
        node.writes.clear();
        node.reads.clear();
        self.crashed.insert(id);
        self.network.forget_node(id);
        self.stats.crashes += 1;
        self.event(format_args!(
            "crash node {id} ({survive} unconfirmed writes survive)"
        ));
        // Clients waiting on this node learn nothing; they retry elsewhere.
        for client in &mut self.clients {
            if let Some(out) = client.outstanding.as_mut() {
                let on_node = match out.waiting {
                    Waiting::Entry { node, .. } | Waiting::Read { node, .. } => node == id,
                    Waiting::Submit { .. } => false,
                };
                if on_node {
                    out.waiting = Waiting::Submit { at: self.now + 2 };
                    client.leader_hint = None;
                }
            }
        }
    }

    fn complete_writes(&mut self, slot: usize) -> Result<(), Failure> {
        loop {
            let node = &mut self.nodes[slot];
            let Some(raft) = node.raft.as_mut() else {
                return Ok(());
            };
            match node.writes.front() {
                Some(w) if w.done_at <= self.now => {}
                _ => return Ok(()),
            }
            let Some(write) = node.writes.pop_front() else {
                return Ok(());
            };
            node.durable
                .write(&write.copy)
                .map_err(|e| Failure::Protocol(format!("node {} durable write: {e}", node.id)))?;
            let seq = write.token.seq();
            raft.persisted(write.token).map_err(|e| {
                Failure::Protocol(format!("node {} persisted({seq}): {e}", node.id))
            })?;
            let id = node.id;
            self.event(format_args!("node {id} write {seq} durable"));
            self.process(slot)?;
        }
    }

    /// Drains a node's `ready()` until it has nothing more, then checks the invariants on it.
    fn process(&mut self, slot: usize) -> Result<(), Failure> {
        loop {
            let id = self.nodes[slot].id;
            let Some(raft) = self.nodes[slot].raft.as_mut() else {
                return Ok(());
            };
            if !raft.has_ready() {
                break;
            }
            let ready = raft.ready();
            if let Some(soft) = ready.soft_state {
                self.event(format_args!(
                    "node {id} is {:?}, leader {:?}",
                    soft.role, soft.leader
                ));
            }
            for message in ready.messages {
                let to = message.to;
                if message.from != id || to == 0 || to > self.nodes.len() as NodeId {
                    return Err(Failure::Protocol(format!(
                        "node {id} emitted a message with bad routing: {}",
                        summarize(&message)
                    )));
                }
                self.network.send(self.now, id, to, message);
            }
            if let Some(persist) = ready.persist {
                self.accept_persist(slot, persist)?;
            }
            for entry in ready.committed {
                self.apply(slot, &entry)?;
            }
            for read in ready.reads {
                if let Some(pending) = self.nodes[slot].reads.get_mut(&read.ctx) {
                    pending.index = Some(read.index);
                    self.event(format_args!(
                        "node {id} read ctx {} at index {}",
                        read.ctx, read.index
                    ));
                }
            }
            self.serve_reads(slot);
        }
        self.check_node(slot)
    }

    fn accept_persist(&mut self, slot: usize, persist: Persist) -> Result<(), Failure> {
        let Persist {
            token,
            snapshot,
            entries,
            hard_state,
        } = persist;
        let copy = Persist {
            token: PersistToken { seq: token.seq() },
            snapshot,
            entries,
            hard_state,
        };
        let id = self.nodes[slot].id;
        let delay = self.rng.gen_range(0..=WRITE_MAX_DELAY);
        let node = &mut self.nodes[slot];
        let done_at = node
            .writes
            .back()
            .map_or(self.now, |w| w.done_at)
            .max(self.now + delay);
        if let Some(raft) = node.raft.as_mut() {
            raft.storage_mut()
                .write(&copy)
                .map_err(|e| Failure::Protocol(format!("node {id} storage write: {e}")))?;
        }
        if let Some(first) = copy.entries.first() {
            self.checker.log_written(id, first.index);
        }
        if let Some(snapshot) = &copy.snapshot {
            self.checker.log_written(id, snapshot.meta.index);
            let node = &mut self.nodes[slot];
            node.kv = KvStore::from_bytes(&snapshot.data)
                .map_err(|e| Failure::Protocol(format!("node {id} snapshot undecodable: {e}")))?;
            node.applied = snapshot.meta.index;
            let (index, digest) = (node.applied, node.kv.digest());
            self.stats.snapshots_installed += 1;
            self.event(format_args!("node {id} installs snapshot at {index}"));
            self.checker
                .restored(id, index, digest)
                .map_err(Failure::Invariant)?;
        }
        self.event(format_args!(
            "node {id} write {} queued: {} entries{}{}",
            copy.token.seq(),
            copy.entries.len(),
            copy.hard_state.map_or(String::new(), |h| format!(
                ", hard state t{} v{} c{}",
                h.term, h.vote, h.commit
            )),
            if copy.snapshot.is_some() {
                ", snapshot"
            } else {
                ""
            }
        ));
        self.nodes[slot].writes.push_back(PendingWrite {
            token,
            copy,
            done_at,
        });
        Ok(())
    }

    fn apply(&mut self, slot: usize, entry: &crate::types::Entry) -> Result<(), Failure> {
        let id = self.nodes[slot].id;
        let node = &mut self.nodes[slot];
        if entry.index <= node.applied {
            // Already covered by a snapshot installed in this ready.
            return Ok(());
        }
        if entry.index != node.applied + 1 {
            return Err(Failure::Protocol(format!(
                "node {id} handed out committed index {} after applying {}",
                entry.index, node.applied
            )));
        }
        let mut answer = None;
        if let EntryPayload::Data(data) = &entry.payload {
            match Command::decode(data) {
                Ok(command) => {
                    let output = node.kv.apply(&command);
                    if output.is_some() {
                        self.took_effect.insert((command.client, command.sequence));
                    }
                    answer = Some((command, output));
                }
                Err(e) => {
                    return Err(Failure::Protocol(format!(
                        "node {id} committed an undecodable command at {}: {e}",
                        entry.index
                    )))
                }
            }
        }
        node.applied = entry.index;
        let digest = node.kv.digest();
        self.checker
            .applied(id, entry, digest)
            .map_err(Failure::Invariant)?;
        // Answer the client waiting for this index on this node, or tell it the proposal was lost.
        for client in 0..self.clients.len() {
            let Some(out) = self.clients[client].outstanding.as_ref() else {
                continue;
            };
            let Waiting::Entry { node, index, term } = out.waiting else {
                continue;
            };
            if node != id || index != entry.index {
                continue;
            }
            let ours = answer.is_some_and(|(c, _)| c == out.command) && term == entry.term;
            if ours {
                if let Some((_, Some(output))) = answer {
                    self.finish(client, output);
                } else {
                    // Superseded by a newer command of the same session: cannot happen with one
                    // outstanding op per client; keep the outcome unknown.
                    self.abandon(client);
                }
            } else {
                let at = self.now + 1;
                if let Some(out) = self.clients[client].outstanding.as_mut() {
                    out.waiting = Waiting::Submit { at };
                }
            }
        }
        Ok(())
    }

    fn serve_reads(&mut self, slot: usize) {
        let node = &self.nodes[slot];
        let ready: Vec<(u64, usize)> = node
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= node.applied))
            .map(|(&ctx, r)| (ctx, r.client))
            .collect();
        for (ctx, client) in ready {
            self.nodes[slot].reads.remove(&ctx);
            let Some(out) = self.clients[client].outstanding.as_ref() else {
                continue;
            };
            if !matches!(out.waiting, Waiting::Read { ctx: c, .. } if c == ctx) {
                continue;
            }
            let KvInput::Get { key } = out.command.input else {
                continue;
            };
            let value = self.nodes[slot].kv.get(key);
            self.finish(client, KvOutput::Get(value));
        }
    }

    fn finish(&mut self, client: usize, output: KvOutput) {
        if let Some(out) = self.clients[client].outstanding.take() {
            self.history.complete(out.op, output);
            self.stats.completed += 1;
            let c = self.clients[client].id;
            self.event(format_args!("client {c} {} -> {output}", out.command.input));
            self.clients[client].next_op_at =
                self.now + self.rng.gen_range(0..self.config.client_think.max(1));
        }
    }

    fn abandon(&mut self, client: usize) {
        if let Some(out) = self.clients[client].outstanding.take() {
            self.history.abandon(out.op);
            let c = self.clients[client].id;
            self.abandoned.push((out.op, c, out.command.sequence));
            self.event(format_args!("client {c} {} timed out", out.command.input));
            self.clients[client].next_op_at = self.now + 1;
            self.clients[client].leader_hint = None;
        }
    }

    fn check_node(&mut self, slot: usize) -> Result<(), Failure> {
        let node = &self.nodes[slot];
        let Some(raft) = node.raft.as_ref() else {
            return Ok(());
        };
        let status = raft.status();
        let meta = raft.storage().snapshot_meta();
        self.stats.commit_index = self.stats.commit_index.max(status.commit);
        let view = NodeView {
            id: node.id,
            role: status.role,
            term: status.term,
            commit: status.commit,
            applied: node.applied,
            snapshot: (meta.index, meta.term),
            log: raft.storage().stored_entries(),
        };
        self.checker.check(&[view]).map_err(Failure::Invariant)
    }

    // ---- clients -------------------------------------------------------------------------------

    fn random_input(&mut self, client: usize) -> KvInput {
        let key = self.rng.gen_range(0..self.config.keys);
        let c = &mut self.clients[client];
        let kind = self.rng.gen_range(0..100);
        match kind {
            0..=44 => KvInput::Get { key },
            45..=69 => {
                c.values_written += 1;
                KvInput::Put {
                    key,
                    value: c.id * 1_000_000 + c.values_written,
                }
            }
            70..=91 => {
                c.values_written += 1;
                let new = c.id * 1_000_000 + c.values_written;
                // Expect a value some node holds now (often the current one), or absence.
                let slot = self.rng.gen_range(0..self.nodes.len());
                let expected = if self.rng.gen_bool(0.2) {
                    None
                } else {
                    self.nodes[slot].kv.get(key)
                };
                KvInput::CompareAndSet { key, expected, new }
            }
            _ => KvInput::Delete { key },
        }
    }

    fn client_step(&mut self, client: usize) -> Result<(), Failure> {
        let now = self.now;
        if self.clients[client].outstanding.is_none() {
            if !self.faults_on || now < self.clients[client].next_op_at {
                return Ok(());
            }
            if self.config.client_bursts && (now / 50) % 2 == 1 {
                return Ok(());
            }
            let input = self.random_input(client);
            let c = &mut self.clients[client];
            c.sequence += 1;
            let command = Command {
                client: c.id,
                sequence: c.sequence,
                input,
            };
            let op = self.history.invoke(c.id, input);
            let via_read_index = matches!(input, KvInput::Get { .. }) && self.rng.gen_bool(0.7);
            self.stats.operations += 1;
            self.event(format_args!(
                "client {} calls {input} (seq {})",
                command.client, command.sequence
            ));
            self.clients[client].outstanding = Some(Outstanding {
                op,
                command,
                deadline: now + OP_TIMEOUT,
                waiting: Waiting::Submit { at: now },
                via_read_index,
                retry_at: u64::MAX,
            });
        }
        let Some(out) = self.clients[client].outstanding.as_ref() else {
            return Ok(());
        };
        if now >= out.deadline {
            self.abandon(client);
            return Ok(());
        }
        if now >= out.retry_at && !matches!(out.waiting, Waiting::Submit { .. }) {
            // The node it went to may have been removed, or lost its leadership: ask again.
            let (c, seq) = (self.clients[client].id, out.command.sequence);
            self.event(format_args!("client {c} resubmits seq {seq}"));
            self.retry_later(client, None);
            return Ok(());
        }
        let Waiting::Submit { at } = out.waiting else {
            return Ok(());
        };
        if now < at {
            return Ok(());
        }
        self.submit(client)
    }

    fn pick_node(&mut self, client: usize) -> NodeId {
        let reads = self.clients[client]
            .outstanding
            .as_ref()
            .is_some_and(|o| o.via_read_index);
        if reads && self.rng.gen_bool(0.5) {
            // Reads often go to the client's home node (any node can order a read: a follower
            // forwards it to the leader it knows).
            return (client % self.nodes.len()) as NodeId + 1;
        }
        match self.clients[client].leader_hint {
            Some(id) if self.rng.gen_bool(0.9) => id,
            _ => self.rng.gen_range(1..=self.nodes.len() as NodeId),
        }
    }

    fn submit(&mut self, client: usize) -> Result<(), Failure> {
        let target = self.pick_node(client);
        let slot = self.slot(target);
        let Some(out) = self.clients[client].outstanding.as_ref() else {
            return Ok(());
        };
        let (command, via_read_index) = (out.command, out.via_read_index);
        let c = self.clients[client].id;
        let Some(raft) = self.nodes[slot].raft.as_mut() else {
            self.retry_later(client, None);
            return Ok(());
        };
        let result = if via_read_index {
            let ctx = self.next_read_ctx;
            self.next_read_ctx += 1;
            raft.read_index(ctx)
                .map(|()| Waiting::Read { node: target, ctx })
        } else {
            raft.propose(command.encode()).map(|p| Waiting::Entry {
                node: target,
                index: p.index,
                term: p.term,
            })
        };
        match result {
            Ok(waiting) => {
                if let Waiting::Read { ctx, .. } = waiting {
                    self.nodes[slot].reads.insert(
                        ctx,
                        PendingRead {
                            client,
                            index: None,
                        },
                    );
                }
                self.event(format_args!(
                    "client {c} seq {} submitted to {target}: {waiting:?}",
                    command.sequence
                ));
                if let Some(out) = self.clients[client].outstanding.as_mut() {
                    out.waiting = waiting;
                    out.retry_at = self.now + RETRY_AFTER;
                }
                self.clients[client].leader_hint = Some(target);
                self.process(slot)
            }
            Err(Error::NotLeader { leader }) => {
                self.retry_later(client, leader);
                Ok(())
            }
            Err(_) => {
                self.retry_later(client, None);
                Ok(())
            }
        }
    }

    fn retry_later(&mut self, client: usize, hint: Option<NodeId>) {
        let at = self.now + self.rng.gen_range(1..=3);
        let c = &mut self.clients[client];
        c.leader_hint = hint;
        if let Some(out) = c.outstanding.as_mut() {
            out.waiting = Waiting::Submit { at };
        }
    }

    // ---- nemesis -------------------------------------------------------------------------------

    fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.raft.is_some())
            .map(|n| n.id)
            .collect()
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.raft.as_ref().map(|r| (n.id, r.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    fn nemesis(&mut self) -> Result<(), Failure> {
        if !self.rng.gen_bool(f64::from(self.config.nemesis_ppm) / 1e6) {
            return Ok(());
        }
        let n = self.nodes.len();
        let all: Vec<NodeId> = (1..=n as NodeId).collect();
        let live = self.live_ids();
        let leader = self.leader();
        match self.rng.gen_range(0..100) {
            0..=11 => {
                // Crash a node, keeping a majority of slots up.
                if self.crashed.len() < (n - 1) / 2 {
                    if let Some(&id) = live.choose(&mut self.rng) {
                        self.crash(id);
                    }
                }
            }
            12..=17 => {
                // Crash the leader: what it appended but did not replicate is now a stray tail.
                if let Some(id) = leader {
                    if self.crashed.len() < (n - 1) / 2 {
                        self.crash(id);
                    }
                }
            }
            18..=33 => {
                if let Some(&id) = self.crashed.iter().next() {
                    self.start_node(id)?;
                }
            }
            34..=40 => {
                let mut shuffled = all.clone();
                shuffled.shuffle(&mut self.rng);
                let cut = self.rng.gen_range(1..n);
                let groups = vec![shuffled[..cut].to_vec(), shuffled[cut..].to_vec()];
                self.event(format_args!("partition {groups:?}"));
                self.network.partition(&all, &groups);
            }
            41..=49 => {
                // Isolate the leader in a minority: it keeps serving its clients until
                // check-quorum deposes it, while the majority elects another leader.
                if let Some(id) = leader {
                    let mut others: Vec<NodeId> =
                        all.iter().copied().filter(|&x| x != id).collect();
                    others.shuffle(&mut self.rng);
                    let with = self.rng.gen_range(0..=(n - 1) / 2 - 1);
                    let mut minority = vec![id];
                    minority.extend(others.drain(..with));
                    let groups = vec![minority, others];
                    self.event(format_args!("isolate leader {id}: partition {groups:?}"));
                    self.network.partition(&all, &groups);
                }
            }
            50..=53 => {
                let from = self.rng.gen_range(1..=n as NodeId);
                let to = self.rng.gen_range(1..=n as NodeId);
                self.event(format_args!("cut link {from}->{to}"));
                self.network.cut_one_way(from, to);
            }
            54..=67 => {
                self.event(format_args!("heal network"));
                self.network.heal();
            }
            68..=75 => self.transfer_leader(),
            76..=86 => self.change_membership(),
            _ => self.compact()?,
        }
        Ok(())
    }

    /// The leader-churn nemesis (see [`SimConfig::leader_churn`]).
    fn churn(&mut self) -> Result<(), Failure> {
        if let Some(leader) = self.leader() {
            let term = self.nodes[self.slot(leader)]
                .raft
                .as_ref()
                .map_or(0, |r| r.term());
            if (term, leader) != self.churn_seen {
                self.churn_seen = (term, leader);
                if self.churn_cut_at.is_none() && self.rng.gen_bool(0.7) {
                    let at = self.now + self.rng.gen_range(1..=30);
                    self.churn_cut_at = Some((at, leader));
                }
            }
        }
        if let Some((at, id)) = self.churn_cut_at {
            if self.now >= at {
                self.churn_cut_at = None;
                let still_leads = self.nodes[self.slot(id)]
                    .raft
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader);
                if still_leads {
                    let n = self.nodes.len();
                    if self.rng.gen_bool(0.2) && self.crashed.len() < (n - 1) / 2 {
                        self.crash(id);
                    } else {
                        // Rotate: the previous victim rejoins as this leader is cut off, so the
                        // two of them hold competing tails of different terms.
                        let all: Vec<NodeId> = (1..=n as NodeId).collect();
                        let others: Vec<NodeId> =
                            all.iter().copied().filter(|&x| x != id).collect();
                        self.event(format_args!("churn: cut off leader {id}, rejoin the rest"));
                        self.network.heal();
                        self.network.partition(&all, &[vec![id], others]);
                    }
                    if self.churn_heal_at.is_none() {
                        self.churn_heal_at = Some(self.now + self.rng.gen_range(40..=120));
                    }
                }
            }
        }
        if self.churn_heal_at.is_some_and(|at| self.now >= at) {
            self.churn_heal_at = None;
            self.event(format_args!("churn: heal, restart a crashed node"));
            self.network.heal();
            if let Some(&id) = self.crashed.iter().next() {
                self.start_node(id)?;
            }
        }
        Ok(())
    }

    fn transfer_leader(&mut self) {
        let Some(leader) = self.leader() else { return };
        let slot = self.slot(leader);
        let Some(raft) = self.nodes[slot].raft.as_ref() else {
            return;
        };
        let voters: Vec<NodeId> = raft
            .status()
            .conf_state
            .voters
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        let Some(&to) = voters.choose(&mut self.rng) else {
            return;
        };
        let result = self.nodes[slot]
            .raft
            .as_mut()
            .map(|r| r.transfer_leader(to));
        self.stats.transfers += 1;
        self.event(format_args!(
            "transfer leadership {leader} -> {to}: {result:?}"
        ));
    }

    fn change_membership(&mut self) {
        let Some(leader) = self.leader() else { return };
        let slot = self.slot(leader);
        let Some(raft) = self.nodes[slot].raft.as_ref() else {
            return;
        };
        let conf = raft.status().conf_state;
        if conf.is_joint() {
            return;
        }
        let n = self.nodes.len() as NodeId;
        let min_voters = if n == 3 { 2 } else { 3 };
        let mut candidates = Vec::new();
        for id in 1..=n {
            if conf.voters.contains(&id) {
                if conf.voters.len() > min_voters {
                    candidates.push(MemberChange::Remove(id));
                    candidates.push(MemberChange::AddLearner(id));
                }
            } else {
                candidates.push(MemberChange::AddVoter(id));
                if !conf.learners.contains(&id) {
                    candidates.push(MemberChange::AddLearner(id));
                }
            }
        }
        let Some(&change) = candidates.choose(&mut self.rng) else {
            return;
        };
        let proposal = if self.rng.gen_bool(0.5) {
            ConfChange::Single(change)
        } else {
            ConfChange::EnterJoint(vec![change])
        };
        let line = format!("{proposal:?}");
        let result = self.nodes[slot]
            .raft
            .as_mut()
            .map(|r| r.propose_conf_change(proposal));
        if matches!(result, Some(Ok(_))) {
            self.stats.conf_changes += 1;
        }
        self.event(format_args!(
            "membership change on {leader}: {line}: {result:?}"
        ));
    }

    fn compact(&mut self) -> Result<(), Failure> {
        let live = self.live_ids();
        let Some(&id) = live.choose(&mut self.rng) else {
            return Ok(());
        };
        let slot = self.slot(id);
        let node = &mut self.nodes[slot];
        let Some(raft) = node.raft.as_mut() else {
            return Ok(());
        };
        let index = node.applied;
        if index <= raft.storage().snapshot_meta().index {
            return Ok(());
        }
        let conf = raft.status().conf_state;
        let data: Bytes = node.kv.to_bytes();
        raft.storage_mut()
            .compact(index, conf, data)
            .map_err(|e| Failure::Protocol(format!("node {id} compact at {index}: {e}")))?;
        // The snapshot file is written and synced before the log prefix is dropped: the durable
        // copy takes the same snapshot (its own log may still hold an older, overwritten tail).
        let snapshot = raft
            .storage()
            .snapshot()
            .map_err(|e| Failure::Protocol(format!("node {id} snapshot after compact: {e}")))?;
        node.durable.apply_snapshot(snapshot);
        self.stats.compactions += 1;
        self.event(format_args!("node {id} compacts through {index}"));
        self.checker.log_written(id, index);
        self.process(slot)
    }

    // ---- end of run ----------------------------------------------------------------------------

    fn stop_faults(&mut self) -> Result<(), Failure> {
        self.faults_on = false;
        self.event(format_args!(
            "faults stop: heal, reliable network, restart everyone"
        ));
        self.network.heal();
        self.network.set_config(NetworkConfig::reliable());
        let crashed: Vec<NodeId> = self.crashed.iter().copied().collect();
        for id in crashed {
            self.start_node(id)?;
        }
        Ok(())
    }

    fn await_liveness(&mut self) -> Result<(), Failure> {
        let deadline = self.now + self.config.liveness_ticks;
        // Let outstanding operations finish or time out.
        while self.clients.iter().any(|c| c.outstanding.is_some()) && self.now < deadline {
            self.step_time()?;
        }
        // A final write must commit and be answered.
        let client = 0;
        self.clients[client].sequence += 1;
        let c = &self.clients[client];
        let input = KvInput::Put {
            key: 0,
            value: c.id * 1_000_000 + 999_999,
        };
        let command = Command {
            client: c.id,
            sequence: c.sequence,
            input,
        };
        let id = c.id;
        let op = self.history.invoke(id, input);
        self.stats.operations += 1;
        self.event(format_args!("client {id} calls final {input}"));
        self.clients[client].outstanding = Some(Outstanding {
            op,
            command,
            deadline: u64::MAX,
            waiting: Waiting::Submit { at: self.now },
            via_read_index: false,
            retry_at: u64::MAX,
        });
        while self.clients[client].outstanding.is_some() {
            if self.now >= deadline {
                let leader = self.leader();
                return Err(Failure::NoProgress(format!(
                    "no final write committed within {} ticks of the faults stopping (leader: {leader:?})",
                    self.config.liveness_ticks
                )));
            }
            self.step_time()?;
        }
        Ok(())
    }

    fn check_history(&mut self) -> Result<(), Failure> {
        let ops = self.history.operations().len();
        self.event(format_args!("checking linearizability of {ops} operations"));
        // An abandoned operation that no replica ever applied took no effect that anyone could
        // observe: leave it out rather than let the search try every place for it.
        let never: BTreeSet<OpId> = self
            .abandoned
            .iter()
            .filter(|(_, client, seq)| !self.took_effect.contains(&(*client, *seq)))
            .map(|(op, _, _)| *op)
            .collect();
        let operations: Vec<_> = self
            .history
            .operations()
            .iter()
            .enumerate()
            .filter(|(i, _)| !never.contains(&OpId::from_index(*i)))
            .map(|(_, op)| *op)
            .collect();
        let mut verdict = linearizability::check(&operations);
        if matches!(verdict, Verdict::Unknown { .. }) {
            // Rare, crowded histories (many writes of unknown outcome on one key): search longer.
            verdict = linearizability::check_with_budget(
                &operations,
                linearizability::DEFAULT_STEP_BUDGET * 16,
            );
        }
        match verdict {
            Verdict::Linearizable => Ok(()),
            Verdict::NotLinearizable { key, explanation } => {
                Err(Failure::NotLinearizable { key, explanation })
            }
            Verdict::Unknown { key, .. } => Err(Failure::LinearizabilityUnknown { key }),
        }
    }
}
