//! A compact deterministic fault simulator for [`crate::Peer`] (feature `sim`).
//!
//! One seed drives everything: 3–5 real peers (N = 3, 4 vnodes each, small Merkle trees), a
//! network that drops, duplicates, delays and reorders messages and partitions the cluster,
//! disks that make writes durable a few ticks late and lose the rest in a crash, crashes with
//! restarts from disk, and three clients doing gets, puts (with the context of their last read,
//! or blind), deletes and CRDT updates across every policy. After the faulty phase, faults stop
//! and the run goes on until the replicas converge (or a deadline), then the final invariants
//! run (see [`checker`]). A failing seed replays bit for bit and prints its last events.
//!
//! Ideas (not code) from consensus-core's network/nemesis and txn-2pc's simulator; this crate
//! depends on no other Quorate crate, so it has its own.

pub mod checker;
pub mod disk;
pub mod network;
pub mod workload;
mod world;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use checker::Violation;
pub use world::SimStats;

/// How one run goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// Ticks with faults and clients.
    pub faulty_ticks: u64,
    /// Most ticks to wait for convergence once faults stop.
    pub quiet_ticks: u64,
    /// A bug planted in every peer.
    #[cfg(feature = "planted-bugs")]
    pub bug: Option<crate::PlantedBug>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            faulty_ticks: 1_500,
            quiet_ticks: 3_000,
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }
}

/// A seed whose run broke an invariant.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The invariant and what was seen.
    pub violation: Violation,
    /// The last events before it.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {}: {} — {}",
            self.seed, self.violation.invariant, self.violation.detail
        )?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Runs one seed: its statistics, or the invariant it broke.
pub fn run_seed(seed: u64, options: SimOptions) -> Result<SimStats, Box<Failure>> {
    let mut world = world::World::new(ChaCha8Rng::seed_from_u64(seed), options);
    match world.run() {
        Ok(()) => Ok(world.stats.clone()),
        Err(violation) => Err(Box::new(Failure {
            seed,
            violation,
            trace: world.trace(),
        })),
    }
}
