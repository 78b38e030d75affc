//! `cargo xtask sim --protocol primary-backup --ack all,quorum,async`: the replication-primary
//! simulator over a range of seeds, per acknowledgement mode.
//!
//! Each seed is one reproducible run (`replication_primary::sim`). Per mode it prints the
//! failovers seen and, in `async` mode, the acknowledged writes lost per failover (total, max and
//! a histogram). `--bug` plants one of the crate's bugs; the run then reports the seeds that
//! caught it (and fails if none did).

use std::collections::BTreeMap;
use std::time::Instant;

use replication_primary::sim::{run_seed, SimOptions};
use replication_primary::{Ack, PlantedBug};

use crate::sim::{Args, Bug};

/// An acknowledgement mode on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// Every member of the in-sync set (PacificA).
    All,
    /// A majority of the replicas.
    Quorum,
    /// The primary's own fsync.
    Async,
}

impl AckMode {
    fn ack(self) -> Ack {
        match self {
            AckMode::All => Ack::All,
            AckMode::Quorum => Ack::Quorum,
            AckMode::Async => Ack::Async,
        }
    }
}

fn planted(bug: Option<Bug>) -> anyhow::Result<Option<PlantedBug>> {
    Ok(match bug {
        None => None,
        Some(Bug::AcceptLowerEpoch) => Some(PlantedBug::AcceptLowerEpoch),
        Some(Bug::ServeBeforeGrace) => Some(PlantedBug::ServeBeforeGrace),
        Some(Bug::AllAckBeforeBackups) => Some(PlantedBug::AllAckBeforeBackups),
        Some(Bug::ReadWithoutLease) => Some(PlantedBug::ReadWithoutLease),
        Some(other) => anyhow::bail!("--bug {other:?} is not a replication-primary fault"),
    })
}

/// Runs the command.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bug = planted(args.planted_bug)?;
    let end = args.start.checked_add(args.seeds).ok_or_else(|| {
        anyhow::anyhow!("--start {} + --seeds {} overflows", args.start, args.seeds)
    })?;
    let mut any_violation = false;
    for &mode in &args.ack {
        let options = SimOptions {
            ack: mode.ack(),
            nodes: args.nodes.map(|n| n.min(5) as usize),
            bug,
            ..SimOptions::default()
        };
        let started = Instant::now();
        let mut failures = Vec::new();
        let (mut acked, mut failovers, mut crashes, mut rollbacks, mut changes) = (0, 0, 0, 0, 0);
        let (mut snapshots, mut resyncs) = (0, 0);
        let mut reads = 0;
        let mut lost_hist: BTreeMap<u64, u64> = BTreeMap::new();
        let (mut lost_total, mut lost_max) = (0u64, 0u64);
        for seed in args.start..end {
            match run_seed(seed, options) {
                Ok(stats) => {
                    acked += stats.acked;
                    reads += stats.reads;
                    failovers += stats.failovers;
                    crashes += stats.crashes;
                    rollbacks += stats.rollbacks;
                    snapshots += stats.snapshots_installed;
                    resyncs += stats.resyncs;
                    changes += stats.config_changes;
                    for &l in &stats.lost_per_failover {
                        *lost_hist.entry(l).or_default() += 1;
                        lost_total += l;
                        lost_max = lost_max.max(l);
                    }
                    if args.verbose {
                        println!("seed {seed}: clean, {stats:?}");
                    }
                }
                Err(failure) => {
                    if bug.is_none() || args.verbose {
                        println!("{failure}");
                        println!(
                            "  replay: cargo run -p replication-primary --example sim_seed -- {seed} {mode:?}\n"
                        );
                    }
                    failures.push((seed, failure.property));
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "mode {mode:?}: {} seeds in {elapsed:.2} s; clean seeds: {acked} writes acknowledged, {reads} primary reads, {failovers} failovers, {crashes} crashes, {changes} configuration changes, {snapshots} snapshots installed from a primary, {resyncs} resync requests, {rollbacks} async rollbacks",
            args.seeds
        );
        if mode == AckMode::Async {
            let hist: Vec<String> = lost_hist
                .iter()
                .map(|(l, n)| format!("{l} lost: {n}"))
                .collect();
            println!(
                "  async lost acknowledged writes: {lost_total} over {failovers} failovers, max {lost_max} per failover (bound: async_window = {}); per failover: {}",
                replication_primary::Config::new(1, [1], Ack::Async).async_window,
                hist.join(", ")
            );
        }
        match bug {
            None => {
                println!(
                    "sim primary-backup {mode:?}: {} seeds, {} violations",
                    args.seeds,
                    failures.len()
                );
                any_violation |= !failures.is_empty();
            }
            Some(bug) => {
                let seeds: Vec<u64> = failures.iter().map(|f| f.0).collect();
                println!(
                    "planted {bug:?} ({mode:?}): caught in {} of {} seeds, first at {:?} ({:?}); seeds {seeds:?}",
                    failures.len(),
                    args.seeds,
                    failures.first().map(|f| f.0),
                    failures.first().map(|f| f.1)
                );
                any_violation |= failures.is_empty();
            }
        }
    }
    if any_violation {
        anyhow::bail!(if bug.is_some() {
            "the planted bug went unnoticed"
        } else {
            "violations found"
        });
    }
    Ok(())
}
