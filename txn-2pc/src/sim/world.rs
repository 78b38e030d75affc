//! What every harness shares: the clock, the rng, the network, the trace, the fault state, and
//! the causal depths (message and forced-write chains) the bench reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::disk::Disk;
use super::faults::{FaultPlan, FaultState};
use super::network::{Envelope, NetConfig, Network};
use super::trace::Trace;
use super::Stats;
use crate::output::{ForceToken, Write};
use crate::record::DurableRecord;
use crate::types::NodeId;

/// The shared state of one simulated run.
#[derive(Debug)]
pub struct World<M> {
    /// The run's only source of randomness.
    pub rng: ChaCha8Rng,
    /// The current tick.
    pub now: u64,
    /// The network.
    pub net: Network<M>,
    /// The trace.
    pub trace: Trace,
    /// Counters.
    pub stats: Stats,
    /// Who is down.
    pub faults: FaultState,
    /// Which faults to inject.
    pub plan: FaultPlan,
    /// Every node of the run (for partitions).
    pub nodes: Vec<NodeId>,
    depth: BTreeMap<NodeId, (u64, u64)>,
    issued: BTreeMap<NodeId, BTreeMap<ForceToken, u64>>,
}

impl<M: Clone + fmt::Debug> World<M> {
    /// A world whose every choice derives from `seed` (the rng is already advanced by whatever
    /// the harness drew to build its configuration).
    pub fn new(rng: ChaCha8Rng, net: NetConfig, plan: FaultPlan, keep_trace: bool) -> Self {
        World {
            rng,
            now: 0,
            net: Network::new(net),
            trace: Trace::new(60, keep_trace),
            stats: Stats::default(),
            faults: FaultState::default(),
            plan,
            nodes: Vec::new(),
            depth: BTreeMap::new(),
            issued: BTreeMap::new(),
        }
    }

    /// A fresh rng for `seed`.
    pub fn rng_for(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// Whether faults are still being injected.
    pub fn faulty(&self) -> bool {
        self.now < self.plan.until
    }

    /// Records a trace event.
    pub fn log(&mut self, event: fmt::Arguments<'_>) {
        self.trace.record(self.now, event);
    }

    /// Hands a node's writes to its disk and its messages to the network. Returns `true` if the
    /// node crashes right now (a crash on force: some of this step's messages are lost with it).
    pub fn emit<R: DurableRecord + fmt::Debug>(
        &mut self,
        from: NodeId,
        disk: &mut Disk,
        writes: Vec<Write<R>>,
        messages: Vec<(NodeId, M)>,
        kind: fn(&M) -> &'static str,
    ) -> bool {
        let mut forced = false;
        let (message_depth, force_depth) = self.depth.get(&from).copied().unwrap_or((0, 0));
        for write in &writes {
            let delay = self.rng.gen_range(0..=2);
            disk.write(write, self.now, delay);
            match write {
                Write::Force { token, record } => {
                    forced = true;
                    self.stats.forced_writes += 1;
                    self.issued
                        .entry(from)
                        .or_default()
                        .insert(*token, force_depth + 1);
                    self.trace
                        .record(self.now, format_args!("n{from} force {record:?}"));
                }
                Write::Lazy { record } => {
                    self.stats.lazy_writes += 1;
                    self.trace
                        .record(self.now, format_args!("n{from} lazy {record:?}"));
                }
            }
        }
        let crash = forced
            && self.faulty()
            && self.rng.gen_range(0..1_000_000) < self.plan.crash_on_force_ppm;
        let recipients: BTreeSet<NodeId> = messages.iter().map(|(to, _)| *to).collect();
        let split = recipients.len() >= 2
            && self.faulty()
            && !self.faults.partitioned()
            && self.rng.gen_range(0..1_000_000) < self.plan.partition_on_broadcast_ppm;
        for (to, message) in messages {
            if crash && self.rng.gen_bool(0.5) {
                continue;
            }
            *self.stats.messages.entry(kind(&message)).or_insert(0) += 1;
            self.trace
                .record(self.now, format_args!("n{from} -> n{to} {message:?}"));
            let envelope = Envelope {
                from,
                to,
                sent_at: self.now,
                message_depth: message_depth + 1,
                force_depth,
                message,
            };
            let now = self.now;
            self.net.send(&mut self.rng, now, envelope);
        }
        if split {
            // The sender keeps a random part of its recipients; the link to the rest is cut
            // before this step's messages arrive.
            let mut side = BTreeSet::from([from]);
            for to in &recipients {
                if side.len() < recipients.len() && self.rng.gen_bool(0.5) {
                    side.insert(*to);
                }
            }
            let plan = self.plan.clone();
            self.faults
                .partition_started(&mut self.rng, &plan, self.now);
            self.stats.partitions += 1;
            self.trace
                .record(self.now, format_args!("PARTITION mid-broadcast {side:?}"));
            let nodes = self.nodes.clone();
            self.net.partition(&side, &nodes);
        }
        crash
    }

    /// Syncs `node`'s disk if due; returns the token to confirm.
    pub fn sync(&mut self, node: NodeId, disk: &mut Disk) -> Option<ForceToken> {
        let token = disk.sync_due(self.now)?;
        let issued = self.issued.entry(node).or_default();
        let later = issued.split_off(&ForceToken(token.0 + 1));
        let durable = std::mem::replace(issued, later);
        if let Some(deepest) = durable.values().max() {
            let entry = self.depth.entry(node).or_insert((0, 0));
            entry.1 = entry.1.max(*deepest);
        }
        Some(token)
    }

    /// Messages due now; the recipients' depths absorb theirs.
    pub fn deliver(&mut self) -> Vec<Envelope<M>> {
        let due = self.net.deliver_due(self.now);
        for envelope in &due {
            let entry = self.depth.entry(envelope.to).or_insert((0, 0));
            entry.0 = entry.0.max(envelope.message_depth);
            entry.1 = entry.1.max(envelope.force_depth);
        }
        due
    }

    /// `node` crashed: its disk keeps a random prefix of what was not synced.
    pub fn crash(&mut self, node: NodeId, disk: &mut Disk) {
        disk.crash(&mut self.rng);
        self.issued.remove(&node);
        self.stats.crashes += 1;
        self.trace.record(self.now, format_args!("n{node} CRASH"));
    }

    /// `node` restarted: messages sent to it earlier are gone with its connections.
    pub fn restart(&mut self, node: NodeId) {
        self.net.restarted(node, self.now);
        self.trace.record(self.now, format_args!("n{node} RESTART"));
    }
}
