//! The deterministic fault simulator for primary-backup (feature `sim`).
//!
//! A run is a pure function of its seed: 3–5 replicas driven through consensus-core's replica
//! loop ([`consensus_core::Replica`]) over its seeded [`consensus_core::sim::network`] (drops,
//! duplicates, delays, reordering, partitions, one-way cuts), a disk per replica that makes writes
//! durable a few ticks later and loses the unfinished ones in a crash (`disk.rs`), the
//! configuration manager as a linearizable service at [`crate::MANAGER`] (requests reach it
//! through the same faulty network and are applied by [`crate::ConfigManager`] in arrival order),
//! clients that write at whichever replica serves, and a nemesis (`run.rs`) that crashes replicas,
//! crashes or isolates the primary, partitions and heals.
//!
//! Checked after every tick (`checker.rs`, `leases.rs`): no two replicas serve at once, and no
//! replica serves while a lease it granted a primary of an older epoch still runs; in `all` and `quorum`
//! modes every committed entry is durable where the mode says (every member / a majority) when the
//! primary commits it, every replica applies the same entry at each position, and no
//! acknowledged write is missing from a new primary's log when it starts serving, and a read at
//! the primary is ordered after every acknowledged write; in `async`
//! mode the writes missing at each failover are *counted* and must stay within
//! [`crate::Config::async_window`]. Replicas snapshot and compact their logs now and then, so
//! lagging and restarted ones catch up from a primary's snapshot. After the faults: a primary
//! serves again, a final write is
//! acknowledged, and every member holds the primary's committed prefix.
//!
//! ```
//! use replication_primary::sim::{run_seed, SimOptions};
//! use replication_primary::Ack;
//!
//! let stats = run_seed(3, SimOptions { ack: Ack::All, ..SimOptions::default() }).unwrap();
//! assert!(stats.acked > 0);
//! ```

mod checker;
mod disk;
mod leases;
mod run;
mod state;

use crate::config::Ack;
#[cfg(feature = "planted-bugs")]
use crate::config::PlantedBug;

pub use run::run_seed;

/// Knobs of a run besides the seed.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// The group's acknowledgement mode.
    pub ack: Ack,
    /// Replicas (3–5); `None`: drawn from the seed.
    pub nodes: Option<usize>,
    /// Ticks with faults.
    pub fault_ticks: u64,
    /// Ticks after the faults for a primary to serve again and a final write to be acknowledged.
    pub quiet_ticks: u64,
    /// Events kept for a failure report.
    pub trace_window: usize,
    /// A planted bug.
    #[cfg(feature = "planted-bugs")]
    pub bug: Option<PlantedBug>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            ack: Ack::All,
            nodes: None,
            fault_ticks: 800,
            quiet_ticks: 400,
            trace_window: 80,
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }
}

/// What a clean run saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Replicas in the group.
    pub nodes: usize,
    /// Writes acknowledged to clients.
    pub acked: u64,
    /// Linearizable reads served at the primary.
    pub reads: u64,
    /// Times a new epoch's primary started serving (the first primary not counted).
    pub failovers: u64,
    /// Acknowledged writes missing from the new primary's log, per failover (`async` only; all
    /// zero otherwise).
    pub lost_per_failover: Vec<u64>,
    /// Crashes injected.
    pub crashes: u64,
    /// Replicas restarted because an `async` failover took back what they had applied.
    pub rollbacks: u64,
    /// Snapshots replicas installed from a primary (they fell behind its compacted log, or
    /// restarted their state after an `async` failover took back what they had applied).
    pub snapshots_installed: u64,
    /// Requests for a newer snapshot by `async` backups whose own snapshot held entries a
    /// failover took back.
    pub resyncs: u64,
    /// Configuration changes the manager installed.
    pub config_changes: u64,
    /// Ticks run.
    pub ticks: u64,
}

impl SimStats {
    /// Acknowledged writes lost over the run.
    pub fn lost(&self) -> u64 {
        self.lost_per_failover.iter().sum()
    }

    /// The most lost in one failover.
    pub fn max_lost(&self) -> u64 {
        self.lost_per_failover.iter().copied().max().unwrap_or(0)
    }
}

/// A violated property, with the trace that led to it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The property.
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
    /// The last events.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}: {}: {}", self.seed, self.property, self.detail)?;
        for line in &self.trace {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}
