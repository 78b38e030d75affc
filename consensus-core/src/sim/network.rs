//! A seeded, faulty network: drops, duplicates, delays, reorders and partitions messages.
//!
//! Every random choice comes from one ChaCha RNG seeded by the caller, and in-flight messages are
//! kept in a `BTreeMap` ordered by (delivery time, send sequence), so the same seed and the same
//! calls give the same deliveries. Reordering comes from independent random delays per message.
//! A partition blocks a directed link both when a message is sent and when it would be delivered,
//! so messages in flight when a partition starts are lost, as on a real cut link.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A node address in the simulated network.
pub type NodeId = u64;

/// How unreliable the network is. Probabilities are per message, in parts per million.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Chance a message is silently dropped.
    pub drop_ppm: u32,
    /// Chance a message is delivered twice (with independent delays).
    pub duplicate_ppm: u32,
    /// Smallest delay, in ticks.
    pub min_delay: u64,
    /// Largest ordinary delay, in ticks.
    pub max_delay: u64,
    /// Chance a message is held back much longer than usual (up to `4 * max_delay`), which
    /// reorders it behind later messages.
    pub reorder_ppm: u32,
    /// Most messages in flight at once; messages beyond it are dropped (the network has bounded
    /// buffers too).
    pub max_in_flight: usize,
}

impl NetworkConfig {
    /// A network that delivers every message exactly once, in order, after one tick.
    pub fn reliable() -> Self {
        NetworkConfig {
            drop_ppm: 0,
            duplicate_ppm: 0,
            min_delay: 1,
            max_delay: 1,
            reorder_ppm: 0,
            max_in_flight: 100_000,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            drop_ppm: 20_000,
            duplicate_ppm: 10_000,
            min_delay: 1,
            max_delay: 4,
            reorder_ppm: 20_000,
            max_in_flight: 100_000,
        }
    }
}

/// A message in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<M> {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The message.
    pub message: M,
}

/// What happened to a message handed to [`Network::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFate {
    /// Queued for delivery at the given tick.
    Queued(u64),
    /// Queued twice.
    Duplicated(u64, u64),
    /// Dropped by chance or for lack of buffer.
    Dropped,
    /// Dropped because the link is cut.
    Partitioned,
}

/// Counters of what the network did, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Messages handed to `send`.
    pub sent: u64,
    /// Messages handed back by `deliver_due`.
    pub delivered: u64,
    /// Messages dropped at random or for lack of buffer.
    pub dropped: u64,
    /// Extra copies queued.
    pub duplicated: u64,
    /// Messages lost to a cut link.
    pub partitioned: u64,
}

/// The simulated network, generic over the message type.
#[derive(Clone, Debug)]
pub struct Network<M> {
    config: NetworkConfig,
    rng: ChaCha8Rng,
    in_flight: BTreeMap<(u64, u64), Envelope<M>>,
    next_sequence: u64,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    stats: NetworkStats,
}

impl<M: Clone> Network<M> {
    /// A network whose every random choice derives from `seed`.
    pub fn new(config: NetworkConfig, seed: u64) -> Self {
        Network {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            in_flight: BTreeMap::new(),
            next_sequence: 0,
            cut: BTreeSet::new(),
            stats: NetworkStats::default(),
        }
    }

    /// The current configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Replaces the configuration (for example to stop faults at the end of a run).
    pub fn set_config(&mut self, config: NetworkConfig) {
        self.config = config;
    }

    /// Counters so far.
    pub fn stats(&self) -> NetworkStats {
        self.stats
    }

    /// Messages currently in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.rng.gen_range(0..1_000_000u32) < ppm
    }

    fn delay(&mut self) -> u64 {
        let (lo, hi) = (
            self.config.min_delay,
            self.config.max_delay.max(self.config.min_delay),
        );
        let base = self.rng.gen_range(lo..=hi);
        if self.chance(self.config.reorder_ppm) {
            base + self.rng.gen_range(hi..=hi.saturating_mul(4).max(hi + 1))
        } else {
            base
        }
    }

    fn enqueue(&mut self, at: u64, envelope: Envelope<M>) {
        self.in_flight.insert((at, self.next_sequence), envelope);
        self.next_sequence += 1;
    }

    /// Sends `message` from `from` to `to` at tick `now`; the network decides its fate.
    pub fn send(&mut self, now: u64, from: NodeId, to: NodeId, message: M) -> SendFate {
        self.stats.sent += 1;
        if self.is_cut(from, to) {
            self.stats.partitioned += 1;
            return SendFate::Partitioned;
        }
        if self.in_flight.len() >= self.config.max_in_flight || self.chance(self.config.drop_ppm) {
            self.stats.dropped += 1;
            return SendFate::Dropped;
        }
        let first = now + self.delay();
        if self.chance(self.config.duplicate_ppm) {
            let second = now + self.delay();
            self.stats.duplicated += 1;
            let copy = Envelope {
                from,
                to,
                message: message.clone(),
            };
            self.enqueue(first, copy);
            self.enqueue(second, Envelope { from, to, message });
            return SendFate::Duplicated(first, second);
        }
        self.enqueue(first, Envelope { from, to, message });
        SendFate::Queued(first)
    }

    /// Removes and returns every message due at or before `now`, in delivery order. Messages whose
    /// link was cut while they were in flight are lost.
    pub fn deliver_due(&mut self, now: u64) -> Vec<Envelope<M>> {
        let mut due = Vec::new();
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let envelope = entry.remove();
            if self.is_cut(envelope.from, envelope.to) {
                self.stats.partitioned += 1;
            } else {
                self.stats.delivered += 1;
                due.push(envelope);
            }
        }
        due
    }

    /// Drops every message in flight to or from `node` (it crashed: its sockets are gone).
    pub fn forget_node(&mut self, node: NodeId) {
        self.in_flight
            .retain(|_, envelope| envelope.from != node && envelope.to != node);
    }

    /// Whether messages from `from` to `to` are currently blocked.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Cuts the link from `from` to `to` only (a one-way partition).
    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        if from != to {
            self.cut.insert((from, to));
        }
    }

    /// Splits `nodes` into the given groups: links between different groups are cut both ways.
    /// Nodes not named in any group are isolated from everyone.
    pub fn partition(&mut self, nodes: &[NodeId], groups: &[Vec<NodeId>]) {
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        for &a in nodes {
            for &b in nodes {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// The cut directed links, for traces.
    pub fn cut_links(&self) -> impl Iterator<Item = (NodeId, NodeId)> + '_ {
        self.cut.iter().copied()
    }

    /// Draws from the network's RNG (for callers that want their choices in the same stream).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, config: NetworkConfig) -> Vec<(u64, Envelope<u32>)> {
        let mut net = Network::new(config, seed);
        let mut out = Vec::new();
        for now in 0..200u64 {
            net.send(now, now % 3, (now + 1) % 3, now as u32);
            for e in net.deliver_due(now) {
                out.push((now, e));
            }
        }
        for now in 200..300 {
            for e in net.deliver_due(now) {
                out.push((now, e));
            }
        }
        out
    }

    fn lossy() -> NetworkConfig {
        NetworkConfig {
            drop_ppm: 100_000,
            duplicate_ppm: 100_000,
            min_delay: 1,
            max_delay: 5,
            reorder_ppm: 100_000,
            max_in_flight: 1000,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_deliveries() {
        assert_eq!(run(7, lossy()), run(7, lossy()));
        assert_ne!(run(7, lossy()), run(8, lossy()));
    }

    #[test]
    fn a_reliable_network_delivers_everything_once_in_order() {
        let got: Vec<u32> = run(1, NetworkConfig::reliable())
            .into_iter()
            .map(|(_, e)| e.message)
            .collect();
        assert_eq!(got, (0..200).collect::<Vec<u32>>());
    }

    #[test]
    fn a_lossy_network_drops_duplicates_and_reorders() {
        let got: Vec<u32> = run(3, lossy())
            .into_iter()
            .map(|(_, e)| e.message)
            .collect();
        let distinct: BTreeSet<u32> = got.iter().copied().collect();
        assert!(distinct.len() < 200, "some messages are dropped");
        assert!(got.len() > distinct.len(), "some messages are duplicated");
        assert!(
            got.windows(2).any(|w| w[0] > w[1]),
            "some messages are reordered"
        );
    }

    #[test]
    fn a_symmetric_partition_blocks_both_directions_and_heals() {
        let mut net: Network<u8> = Network::new(NetworkConfig::reliable(), 0);
        net.partition(&[1, 2, 3], &[vec![1], vec![2, 3]]);
        assert_eq!(net.send(0, 1, 2, 0), SendFate::Partitioned);
        assert_eq!(net.send(0, 3, 1, 0), SendFate::Partitioned);
        assert_eq!(net.send(0, 2, 3, 9), SendFate::Queued(1));
        net.heal();
        assert_eq!(net.send(0, 1, 2, 0), SendFate::Queued(1));
        assert_eq!(net.deliver_due(1).len(), 2);
    }

    #[test]
    fn a_one_way_cut_blocks_only_one_direction() {
        let mut net: Network<u8> = Network::new(NetworkConfig::reliable(), 0);
        net.cut_one_way(1, 2);
        assert_eq!(net.send(0, 1, 2, 0), SendFate::Partitioned);
        assert_eq!(net.send(0, 2, 1, 0), SendFate::Queued(1));
    }

    #[test]
    fn messages_in_flight_when_a_link_is_cut_are_lost() {
        let mut net: Network<u8> = Network::new(NetworkConfig::reliable(), 0);
        net.send(0, 1, 2, 5);
        net.cut_one_way(1, 2);
        assert!(net.deliver_due(10).is_empty());
        assert_eq!(net.stats().partitioned, 1);
    }

    #[test]
    fn a_crashed_node_loses_its_messages_in_flight() {
        let mut net: Network<u8> = Network::new(NetworkConfig::reliable(), 0);
        net.send(0, 1, 2, 5);
        net.send(0, 2, 3, 6);
        net.forget_node(1);
        let left: Vec<u8> = net.deliver_due(5).into_iter().map(|e| e.message).collect();
        assert_eq!(left, vec![6]);
    }

    #[test]
    fn the_in_flight_bound_drops_the_excess() {
        let mut config = NetworkConfig::reliable();
        config.max_in_flight = 2;
        let mut net: Network<u8> = Network::new(config, 0);
        for _ in 0..5 {
            net.send(0, 1, 2, 0);
        }
        assert_eq!(net.in_flight(), 2);
        assert_eq!(net.stats().dropped, 3);
    }
}
