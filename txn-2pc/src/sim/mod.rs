//! A deterministic, seeded simulator for the commit protocols (feature `sim`).
//!
//! One run = one seed: a coordinator (or orchestrator) and 2–7 participants (or services) built
//! from the crate's real engines, a [`network::Network`] that drops, duplicates, delays,
//! reorders and partitions, [`disk::Disk`]s that lose whatever was not synced when their node
//! crashes, and a ground-truth ledger ([`invariants`], [`branches`]) checked at every event.
//! Every random choice comes from one ChaCha8 rng seeded by the run's seed, so a failing seed
//! replays bit for bit (compare [`Report::trace_hash`]).
//!
//! Harnesses: [`two_phase`], [`three_phase`], [`tcc`], [`saga`].

pub mod branches;
pub mod disk;
pub mod faults;
pub mod invariants;
pub mod network;
pub mod saga;
pub mod tcc;
pub mod three_phase;
pub mod trace;
pub mod two_phase;
pub mod world;

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Counters of one run (what the bench turns into per-transaction costs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ticks simulated.
    pub ticks: u64,
    /// Messages sent, by kind.
    pub messages: BTreeMap<&'static str, u64>,
    /// Forced writes requested.
    pub forced_writes: u64,
    /// Lazy writes requested.
    pub lazy_writes: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Transactions (or sagas) that committed / completed.
    pub committed: u64,
    /// Transactions that aborted / were compensated.
    pub aborted: u64,
    /// Longest message chain until the last participant learnt the decision.
    pub decision_message_depth: u64,
    /// Longest chain of forced writes until the last participant learnt the decision.
    pub decision_force_depth: u64,
    /// Participants left in doubt at the end and reported blocked.
    pub blocked: u64,
    /// Participants left in doubt at the end (blocked or not).
    pub in_doubt: u64,
}

impl Stats {
    /// All messages sent.
    pub fn total_messages(&self) -> u64 {
        self.messages.values().sum()
    }

    /// Messages of the given kinds.
    pub fn messages_of(&self, kinds: &[&str]) -> u64 {
        kinds
            .iter()
            .map(|k| self.messages.get(k).copied().unwrap_or(0))
            .sum()
    }
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct Report {
    /// Which protocol ran.
    pub protocol: &'static str,
    /// The seed.
    pub seed: u64,
    /// Invariant violations (empty: the run is clean).
    pub violations: Vec<String>,
    /// Hash of every trace event: equal hashes, equal runs.
    pub trace_hash: u64,
    /// The last trace events (all of them if the run kept its whole trace).
    pub trace: Vec<String>,
    /// Counters.
    pub stats: Stats,
}

impl Report {
    /// Whether no invariant was violated.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// A human-readable account: violations and the last events.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{} seed {}: {} violation(s), trace hash {:#018x}\n",
            self.protocol,
            self.seed,
            self.violations.len(),
            self.trace_hash
        );
        for violation in self.violations.iter().take(10) {
            let _ = writeln!(text, "  violation: {violation}");
        }
        let _ = writeln!(text, "  last events:");
        for line in &self.trace {
            let _ = writeln!(text, "    {line}");
        }
        text
    }
}

/// A seeded value in `0..1_000_000` derived from a seed and some keys, stable across runs
/// (splitmix64), for choices that must not depend on the order of rng draws (votes, step
/// failures).
pub fn stable_ppm(seed: u64, keys: &[u64]) -> u32 {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    for &k in keys {
        x = x.wrapping_add(k).wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    (x % 1_000_000) as u32
}
