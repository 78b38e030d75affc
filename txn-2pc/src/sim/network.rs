//! A seeded, faulty network: drops, duplicates, delays, reorders and partitions messages.
//!
//! In-flight messages sit in a `BTreeMap` keyed by (delivery tick, send sequence), so one seed
//! gives one schedule. A restart closes a node's connections: a message sent to a node before it
//! last restarted is never delivered (as with TCP or QUIC, whose connections die with the
//! process). Messages from a node that then crashed may still arrive: they had left.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::types::NodeId;

/// How unreliable the network is; probabilities in parts per million.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Chance a message is lost.
    pub drop_ppm: u32,
    /// Chance a message is delivered twice.
    pub duplicate_ppm: u32,
    /// Chance a message is held back up to four times longer (reordering it).
    pub reorder_ppm: u32,
    /// Chance a message straggles: held 10 to 60 ticks (a retransmission timeout, a paused
    /// process), long enough to arrive after the sender gave up on it.
    pub straggler_ppm: u32,
    /// Smallest delay in ticks (at least 1).
    pub min_delay: u64,
    /// Largest ordinary delay in ticks.
    pub max_delay: u64,
}

impl NetConfig {
    /// Every message once, in order, one tick later.
    pub fn reliable() -> Self {
        NetConfig {
            drop_ppm: 0,
            duplicate_ppm: 0,
            reorder_ppm: 0,
            straggler_ppm: 0,
            min_delay: 1,
            max_delay: 1,
        }
    }

    /// A random faulty network drawn from `rng`.
    pub fn random(rng: &mut ChaCha8Rng) -> Self {
        NetConfig {
            drop_ppm: rng.gen_range(0..=60_000),
            duplicate_ppm: rng.gen_range(0..=50_000),
            reorder_ppm: rng.gen_range(0..=80_000),
            straggler_ppm: rng.gen_range(0..=50_000),
            min_delay: 1,
            max_delay: rng.gen_range(1..=4),
        }
    }
}

/// A message in flight, with the causal depths the bench measures.
#[derive(Clone, Debug)]
pub struct Envelope<M> {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// Tick it was sent.
    pub sent_at: u64,
    /// Longest chain of messages that led to this one, itself included.
    pub message_depth: u64,
    /// Longest chain of forced writes that led to this one.
    pub force_depth: u64,
    /// The message.
    pub message: M,
}

/// What the network did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to `send`.
    pub sent: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Lost at random.
    pub dropped: u64,
    /// Extra copies.
    pub duplicated: u64,
    /// Lost to a cut link or a restart.
    pub cut: u64,
}

/// The simulated network.
#[derive(Debug)]
pub struct Network<M> {
    config: NetConfig,
    in_flight: BTreeMap<(u64, u64), Envelope<M>>,
    sequence: u64,
    cut: BTreeSet<(NodeId, NodeId)>,
    restarted_at: BTreeMap<NodeId, u64>,
    /// Counters.
    pub stats: NetStats,
}

impl<M: Clone> Network<M> {
    /// An empty network.
    pub fn new(config: NetConfig) -> Self {
        Network {
            config,
            in_flight: BTreeMap::new(),
            sequence: 0,
            cut: BTreeSet::new(),
            restarted_at: BTreeMap::new(),
            stats: NetStats::default(),
        }
    }

    /// Replaces the fault settings (e.g. a reliable network once faults stop).
    pub fn set_config(&mut self, config: NetConfig) {
        self.config = config;
    }

    /// Sends a message at tick `now`; the rng decides its fate.
    pub fn send(&mut self, rng: &mut ChaCha8Rng, now: u64, envelope: Envelope<M>) {
        self.stats.sent += 1;
        if self.cut.contains(&(envelope.from, envelope.to)) {
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
            let mut delay =
                rng.gen_range(self.config.min_delay.max(1)..=self.config.max_delay.max(1));
            if rng.gen_range(0..1_000_000) < self.config.reorder_ppm {
                delay += rng.gen_range(0..=3 * self.config.max_delay.max(1));
            }
            if rng.gen_range(0..1_000_000) < self.config.straggler_ppm {
                delay += rng.gen_range(10..=60);
            }
            self.sequence += 1;
            self.in_flight
                .insert((now + delay, self.sequence), envelope.clone());
        }
    }

    /// Messages due at `now` on links that are up, to nodes that did not restart since.
    pub fn deliver_due(&mut self, now: u64) -> Vec<Envelope<M>> {
        let later = self.in_flight.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.in_flight, later);
        let mut delivered = Vec::new();
        for (_, envelope) in due {
            let stale = self
                .restarted_at
                .get(&envelope.to)
                .is_some_and(|&t| envelope.sent_at < t);
            if stale || self.cut.contains(&(envelope.from, envelope.to)) {
                self.stats.cut += 1;
                continue;
            }
            self.stats.delivered += 1;
            delivered.push(envelope);
        }
        delivered
    }

    /// Cuts both directions between every node of `side` and every node not in it.
    pub fn partition(&mut self, side: &BTreeSet<NodeId>, all: &[NodeId]) {
        for &a in side {
            for &b in all.iter().filter(|b| !side.contains(b)) {
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

    /// A node restarted at `now`: what was sent to it before is lost with its connections.
    pub fn restarted(&mut self, node: NodeId, now: u64) {
        self.restarted_at.insert(node, now);
    }

    /// Whether nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }
}
