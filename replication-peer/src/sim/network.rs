//! A seeded faulty network: drops, duplicates, delays, reorders and partitions messages.
//!
//! In-flight messages sit in a `BTreeMap` keyed by (delivery tick, send sequence), so one seed
//! gives one schedule. Every delay is bounded by [`NetConfig::max_in_flight`]: tombstone
//! collection's grace period relies on such a bound, as any real deployment's does.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::message::Message;
use crate::types::NodeId;

/// How unreliable the network is; probabilities in parts per million.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Chance a message is lost.
    pub drop_ppm: u32,
    /// Chance a message is delivered twice.
    pub duplicate_ppm: u32,
    /// Chance a message is held up to four times longer (reordering it).
    pub reorder_ppm: u32,
    /// Largest ordinary delay in ticks (at least 1).
    pub max_delay: u64,
}

impl NetConfig {
    /// Every message once, one or two ticks later.
    pub fn calm() -> Self {
        NetConfig {
            drop_ppm: 0,
            duplicate_ppm: 0,
            reorder_ppm: 0,
            max_delay: 2,
        }
    }

    /// A random faulty network.
    pub fn random(rng: &mut ChaCha8Rng) -> Self {
        NetConfig {
            drop_ppm: rng.gen_range(0..=80_000),
            duplicate_ppm: rng.gen_range(0..=60_000),
            reorder_ppm: rng.gen_range(0..=100_000),
            max_delay: rng.gen_range(1..=4),
        }
    }

    /// The longest any message can stay in flight.
    pub fn max_in_flight(&self) -> u64 {
        self.max_delay * 4
    }
}

/// What the network did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to `send`.
    pub sent: u64,
    /// Delivered to a running node.
    pub delivered: u64,
    /// Lost at random.
    pub dropped: u64,
    /// Extra copies.
    pub duplicated: u64,
    /// Lost to a partition or a crashed receiver.
    pub cut: u64,
}

/// The simulated network.
#[derive(Debug)]
pub struct Network {
    config: NetConfig,
    in_flight: BTreeMap<(u64, u64), (NodeId, NodeId, Message)>,
    sequence: u64,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Counters.
    pub stats: NetStats,
}

impl Network {
    /// An empty network.
    pub fn new(config: NetConfig) -> Self {
        Network {
            config,
            in_flight: BTreeMap::new(),
            sequence: 0,
            cut: BTreeSet::new(),
            stats: NetStats::default(),
        }
    }

    /// Replaces the fault settings.
    pub fn set_config(&mut self, config: NetConfig) {
        self.config = config;
    }

    /// Sends at tick `now`; the rng decides the message's fate.
    pub fn send(&mut self, rng: &mut ChaCha8Rng, now: u64, from: NodeId, to: NodeId, m: Message) {
        self.stats.sent += 1;
        if self.cut.contains(&(from, to)) {
            self.stats.cut += 1;
            return;
        }
        if rng.gen_range(0..1_000_000) < self.config.drop_ppm {
            self.stats.dropped += 1;
            return;
        }
        let copies = if rng.gen_range(0..1_000_000) < self.config.duplicate_ppm {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = rng.gen_range(1..=self.config.max_delay.max(1));
            if rng.gen_range(0..1_000_000) < self.config.reorder_ppm {
                delay = rng.gen_range(delay..=self.config.max_in_flight().max(delay));
            }
            self.sequence += 1;
            self.in_flight
                .insert((now + delay, self.sequence), (from, to, m.clone()));
        }
    }

    /// Messages due at or before `now`, in delivery order.
    pub fn due(&mut self, now: u64) -> Vec<(NodeId, NodeId, Message)> {
        let later = self.in_flight.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.in_flight, later);
        due.into_values().collect()
    }

    /// Cuts every link between the two sides (both ways).
    pub fn partition(&mut self, side_a: &[NodeId], side_b: &[NodeId]) {
        for &a in side_a {
            for &b in side_b {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }

    /// Messages still in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
