//! The fault schedule: crashes, restarts and partitions drawn from the seed's rng.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::types::NodeId;

/// Which faults a run injects, until `until`; probabilities in parts per million.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// Faults stop at this tick (links heal, crashed nodes restart, the network turns reliable).
    pub until: u64,
    /// Chance per tick that an up node crashes.
    pub crash_ppm: u32,
    /// Chance that a node crashes right after asking for a forced write (before it is durable),
    /// losing some of the messages of the same step: the window the durability rules guard.
    pub crash_on_force_ppm: u32,
    /// Ticks a crashed node stays down: (min, max).
    pub down_ticks: (u64, u64),
    /// Chance per tick that a partition starts (if none is on).
    pub partition_ppm: u32,
    /// How long a partition lasts: (min, max) ticks.
    pub partition_ticks: (u64, u64),
    /// Chance that a partition starts in the middle of a broadcast (a step sending to two or
    /// more nodes): the sender and some recipients on one side, the rest on the other.
    pub partition_on_broadcast_ppm: u32,
}

impl FaultPlan {
    /// No faults at all.
    pub fn none() -> Self {
        FaultPlan {
            until: 0,
            crash_ppm: 0,
            crash_on_force_ppm: 0,
            down_ticks: (1, 1),
            partition_ppm: 0,
            partition_ticks: (1, 1),
            partition_on_broadcast_ppm: 0,
        }
    }

    /// Random crashes (no partitions) drawn from `rng`.
    pub fn crashes(rng: &mut ChaCha8Rng, until: u64) -> Self {
        FaultPlan {
            until,
            crash_ppm: rng.gen_range(0..=8_000),
            crash_on_force_ppm: rng.gen_range(100_000..=350_000),
            down_ticks: (2, rng.gen_range(5..=40)),
            partition_ppm: 0,
            partition_ticks: (1, 1),
            partition_on_broadcast_ppm: 0,
        }
    }

    /// Random crashes and partitions drawn from `rng`.
    pub fn crashes_and_partitions(rng: &mut ChaCha8Rng, until: u64) -> Self {
        FaultPlan {
            partition_ppm: rng.gen_range(2_000..=20_000),
            partition_ticks: (20, rng.gen_range(40..=250)),
            partition_on_broadcast_ppm: rng.gen_range(5_000..=40_000),
            ..FaultPlan::crashes(rng, until)
        }
    }
}

/// What the schedule wants done at this tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Crash this node.
    Crash(NodeId),
    /// Restart this node from its disk.
    Restart(NodeId),
    /// Cut this side off from the rest.
    Partition(BTreeSet<NodeId>),
    /// Restore every link.
    Heal,
}

/// Tracks which nodes are down and for how long, and the current partition.
#[derive(Debug, Default)]
pub struct FaultState {
    down_until: BTreeMap<NodeId, u64>,
    /// Nodes that stay down for good.
    pub permanent: BTreeSet<NodeId>,
    partition_until: Option<u64>,
}

impl FaultState {
    /// Whether `node` is up.
    pub fn is_up(&self, node: NodeId) -> bool {
        !self.down_until.contains_key(&node) && !self.permanent.contains(&node)
    }

    /// Records a crash decided elsewhere (a crash on force): down for a random while.
    pub fn crashed(&mut self, rng: &mut ChaCha8Rng, plan: &FaultPlan, node: NodeId, now: u64) {
        let down = rng.gen_range(plan.down_ticks.0..=plan.down_ticks.1.max(plan.down_ticks.0));
        self.down_until.insert(node, now + down);
    }

    /// Whether a partition is on.
    pub fn partitioned(&self) -> bool {
        self.partition_until.is_some()
    }

    /// Starts a partition decided elsewhere (in the middle of a broadcast).
    pub fn partition_started(&mut self, rng: &mut ChaCha8Rng, plan: &FaultPlan, now: u64) {
        let (lo, hi) = plan.partition_ticks;
        self.partition_until = Some(now + rng.gen_range(lo..=hi.max(lo)));
    }

    /// Whether any node is down (permanently down ones excluded).
    pub fn any_down(&self) -> bool {
        !self.down_until.is_empty()
    }

    /// The faults of tick `now`.
    pub fn step(
        &mut self,
        rng: &mut ChaCha8Rng,
        plan: &FaultPlan,
        nodes: &[NodeId],
        now: u64,
    ) -> Vec<Fault> {
        let mut faults = Vec::new();
        let faulty = now < plan.until;
        let due: Vec<NodeId> = self
            .down_until
            .iter()
            .filter(|(_, &t)| t <= now || !faulty)
            .map(|(&n, _)| n)
            .collect();
        for node in due {
            self.down_until.remove(&node);
            faults.push(Fault::Restart(node));
        }
        if let Some(until) = self.partition_until {
            if until <= now || !faulty {
                self.partition_until = None;
                faults.push(Fault::Heal);
            }
        }
        if !faulty {
            return faults;
        }
        for &node in nodes {
            if self.is_up(node) && rng.gen_range(0..1_000_000) < plan.crash_ppm {
                self.crashed(rng, plan, node, now);
                faults.push(Fault::Crash(node));
            }
        }
        if self.partition_until.is_none() && rng.gen_range(0..1_000_000) < plan.partition_ppm {
            let mut shuffled = nodes.to_vec();
            shuffled.shuffle(rng);
            let size = rng.gen_range(1..nodes.len().max(2));
            let side: BTreeSet<NodeId> = shuffled.into_iter().take(size).collect();
            let (lo, hi) = plan.partition_ticks;
            self.partition_until = Some(now + rng.gen_range(lo..=hi.max(lo)));
            faults.push(Fault::Partition(side));
        }
        faults
    }
}
