//! The simulated cluster for any [`SimProtocol`]: N members behind one replica loop each, a faulty
//! network, clients and a nemesis. This file holds the run loop and the node lifecycle (start,
//! crash, disk completions, driving the replica loop, checks); `client` the clients and
//! `nemesis` the faults.
//!
//! Every choice — delays, faults, client operations, which node to crash — comes from ChaCha RNGs
//! derived from the seed; every container that is iterated is ordered. Same seed, same run.

use std::collections::BTreeSet;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::client::Client;
use super::config::SimConfig;
use super::history::{History, OpId};
use super::invariants::SharedChecker;
use super::kv::KvStore;
use super::linearizability::{self, Verdict};
use super::network::{Network, NetworkConfig};
use super::node::{Node, SimHost, World};
use super::outcome::{Failure, Outcome, SimStats};
use super::protocol::{ProtocolChecker, SimProtocol};
use super::trace::Trace;
use crate::replica::Replica;
use crate::storage::Storage;
use crate::types::{ConfState, NodeId, Role};

/// Runs protocol `P` on the configuration drawn from `seed` (`nodes` overrides the node count).
pub fn run_seed<P: SimProtocol>(seed: u64, nodes: Option<usize>) -> Outcome<P::Options> {
    run::<P>(SimConfig::from_seed::<P>(seed, nodes))
}

/// Runs one simulation to the end or to the first failure.
pub fn run<P: SimProtocol>(config: SimConfig<P::Options>) -> Outcome<P::Options> {
    let mut sim = Simulation::<P>::new(config);
    let failure = sim.run_all().err();
    let trace = if sim.config.keep_full_trace {
        sim.world
            .trace
            .everything()
            .into_iter()
            .map(str::to_owned)
            .collect()
    } else {
        sim.world.trace.recent().map(str::to_owned).collect()
    };
    Outcome {
        trace_hash: sim.world.trace.hash(),
        failure,
        stats: sim.world.stats,
        trace,
        config: sim.config,
    }
}

pub(super) struct Simulation<P: SimProtocol> {
    pub(super) config: SimConfig<P::Options>,
    pub(super) nodes: Vec<Node<P>>,
    pub(super) world: World<P>,
    pub(super) clients: Vec<Client>,
    pub(super) history: History,
    pub(super) next_read_ctx: u64,
    pub(super) faults_on: bool,
    /// Leader churn: the last leader seen (term, id), and the pending cut-off / heal times.
    pub(super) churn_seen: (u64, NodeId),
    pub(super) churn_cut_at: Option<(u64, NodeId)>,
    pub(super) churn_heal_at: Option<u64>,
    pub(super) crashed: BTreeSet<NodeId>,
    /// Operations abandoned by their client: (operation, client, sequence).
    pub(super) abandoned: Vec<(OpId, u64, u64)>,
}

impl<P: SimProtocol> Simulation<P> {
    fn new(config: SimConfig<P::Options>) -> Self {
        let seed = config.seed;
        let voters: Vec<NodeId> = (1..=config.nodes as NodeId).collect();
        let conf = ConfState::with_voters(voters.iter().copied());
        let mut trace = Trace::new(config.trace_window);
        if config.keep_full_trace {
            trace.keep_everything();
        }
        Simulation {
            nodes: voters
                .iter()
                .map(|&id| Node::new(id, conf.clone()))
                .collect(),
            world: World {
                now: 0,
                rng: ChaCha8Rng::seed_from_u64(seed),
                network: Network::new(
                    config.network.clone(),
                    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ),
                nodes: config.nodes,
                trace,
                stats: SimStats::default(),
                shared: SharedChecker::new(),
                checker: P::Checker::default(),
                took_effect: BTreeSet::new(),
                applied: Vec::new(),
            },
            clients: (0..config.clients).map(Client::new).collect(),
            history: History::new(),
            next_read_ctx: 1,
            faults_on: true,
            churn_seen: (0, 0),
            churn_cut_at: None,
            churn_heal_at: None,
            crashed: BTreeSet::new(),
            abandoned: Vec::new(),
            config,
        }
    }

    pub(super) fn now(&self) -> u64 {
        self.world.now
    }

    pub(super) fn event(&mut self, args: std::fmt::Arguments<'_>) {
        self.world.event(args);
    }

    pub(super) fn slot(&self, id: NodeId) -> usize {
        (id - 1) as usize
    }

    fn run_all(&mut self) -> Result<(), Failure> {
        let seed = self.config.seed;
        self.event(format_args!("start seed {seed} ({})", P::NAME));
        for id in 1..=self.config.nodes as NodeId {
            self.start_node(id)?;
        }
        while self.now() < self.config.fault_ticks {
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

    /// One tick: disk completions, deliveries, ticks, clients.
    pub(super) fn step_time(&mut self) -> Result<(), Failure> {
        self.world.now += 1;
        self.world.stats.ticks = self.world.now;
        for slot in 0..self.nodes.len() {
            self.complete_writes(slot)?;
        }
        let now = self.now();
        for envelope in self.world.network.deliver_due(now) {
            let slot = self.slot(envelope.to);
            let Some(engine) = self.nodes[slot].engine_mut() else {
                continue;
            };
            let line = P::summarize(&envelope.message);
            let result = engine.step(envelope.message);
            self.world.stats.messages += 1;
            self.event(format_args!("deliver {line}"));
            if let Err(e) = result {
                self.event(format_args!("step error on {}: {e}", envelope.to));
            }
            self.process(slot)?;
        }
        for slot in 0..self.nodes.len() {
            if let Some(engine) = self.nodes[slot].engine_mut() {
                engine.tick();
                self.process(slot)?;
            }
        }
        for client in 0..self.clients.len() {
            self.client_step(client)?;
        }
        Ok(())
    }

    pub(super) fn start_node(&mut self, id: NodeId) -> Result<(), Failure> {
        let slot = self.slot(id);
        let seed = self.config.seed;
        let node = &mut self.nodes[slot];
        let state = &mut node.state;
        state.incarnation += 1;
        let storage = state.disk.durable.clone();
        let snapshot = storage
            .snapshot()
            .map_err(|e| Failure::Protocol(format!("node {id} snapshot unreadable: {e}")))?;
        state.kv = KvStore::from_bytes(&snapshot.data)
            .map_err(|e| Failure::Protocol(format!("node {id} snapshot undecodable: {e}")))?;
        state.applied = snapshot.meta.index;
        state.reads.clear();
        let rng = ChaCha8Rng::seed_from_u64(
            seed ^ id.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (state.incarnation << 48),
        );
        let applied = state.applied;
        let engine = P::start(id, &self.config.protocol, storage, applied, rng)
            .map_err(|e| Failure::Protocol(format!("node {id} failed to start: {e}")))?;
        let term = engine.status().term;
        node.replica = Some(Replica::new(engine));
        let digest = node.state.kv.digest();
        self.world
            .checker
            .restarted(id, &self.nodes[slot].state.disk.durable, applied);
        self.crashed.remove(&id);
        self.event(format_args!(
            "start node {id} (term {term}, snapshot {applied})"
        ));
        self.world.shared.restarted(id, term, applied);
        self.world.shared.restored(id, applied, digest)?;
        self.process(slot)
    }

    pub(super) fn crash(&mut self, id: NodeId) {
        use rand::Rng;
        let slot = self.slot(id);
        // A prefix of the queued writes may have reached the disk unreported.
        let survive = if self.world.rng.gen_bool(0.3) {
            self.world.rng.gen_range(0..=16)
        } else {
            0
        };
        let node = &mut self.nodes[slot];
        node.replica = None;
        node.state.reads.clear();
        let queued = node.state.disk.crash(survive);
        self.crashed.insert(id);
        self.world.network.forget_node(id);
        self.world.stats.crashes += 1;
        self.event(format_args!(
            "crash node {id} ({} of {queued} unconfirmed writes survive)",
            survive.min(queued)
        ));
        self.clients_forget_node(id);
    }

    fn complete_writes(&mut self, slot: usize) -> Result<(), Failure> {
        let now = self.now();
        let node = &mut self.nodes[slot];
        let Some(replica) = node.replica.as_ref() else {
            return Ok(());
        };
        let conf = replica.engine().status().conf_state;
        let id = node.state.id;
        let done = node.state.disk.complete(now)?;
        if done.is_empty() {
            return Ok(());
        }
        for write in &done {
            self.world.checker.durable(id, write, &conf)?;
        }
        let n = done.len();
        self.event(format_args!("node {id}: {n} writes durable"));
        self.process(slot)
    }

    /// Runs the node's replica loop until it has nothing more to do, then answers clients and
    /// checks the invariants on it.
    pub(super) fn process(&mut self, slot: usize) -> Result<(), Failure> {
        let node = &mut self.nodes[slot];
        let Some(replica) = node.replica.as_mut() else {
            return Ok(());
        };
        let mut host = SimHost {
            node: &mut node.state,
            world: &mut self.world,
        };
        replica.drive(&mut host)?;
        self.answer_applied();
        self.serve_reads(slot);
        self.check_node(slot)
    }

    fn check_node(&mut self, slot: usize) -> Result<(), Failure> {
        let node = &self.nodes[slot];
        let Some(engine) = node.engine() else {
            return Ok(());
        };
        let status = engine.status();
        self.world.stats.commit_index = self.world.stats.commit_index.max(status.commit);
        self.world.shared.check(&status, node.state.applied)?;
        self.world
            .checker
            .check(node.state.id, engine, node.state.applied)?;
        Ok(())
    }

    pub(super) fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.replica.is_some())
            .map(|n| n.state.id)
            .collect()
    }

    /// The leader of the highest term among live nodes.
    pub(super) fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.engine().map(|e| (n.state.id, e.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    // ---- end of run ----------------------------------------------------------------------------

    fn stop_faults(&mut self) -> Result<(), Failure> {
        self.faults_on = false;
        self.event(format_args!(
            "faults stop: heal, reliable network, restart everyone"
        ));
        self.world.network.heal();
        self.world.network.set_config(NetworkConfig::reliable());
        let crashed: Vec<NodeId> = self.crashed.iter().copied().collect();
        for id in crashed {
            self.start_node(id)?;
        }
        Ok(())
    }

    fn await_liveness(&mut self) -> Result<(), Failure> {
        let deadline = self.now() + self.config.liveness_ticks;
        // Let outstanding operations finish or time out.
        while self.clients.iter().any(|c| c.outstanding.is_some()) && self.now() < deadline {
            self.step_time()?;
        }
        // A final write must commit and be answered.
        self.call_final_write(0);
        while self.clients[0].outstanding.is_some() {
            if self.now() >= deadline {
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
            .filter(|(_, client, seq)| !self.world.took_effect.contains(&(*client, *seq)))
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
