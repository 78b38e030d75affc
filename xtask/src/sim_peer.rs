//! `cargo xtask sim --protocol peer`: the replication-peer simulator over a range of seeds.
//!
//! Each seed is one reproducible run (`replication_peer::sim`): real peers under drops,
//! duplicates, reordering, partitions and crashes, then a quiet phase until they converge, then
//! the final invariants. `--bug` plants one of the crate's known bugs; the run then reports the
//! seeds that caught it (and fails if none did).

use std::time::Instant;

use replication_peer::sim::{run_seed, SimOptions};
use replication_peer::PlantedBug;

use crate::sim::{Args, Bug};

fn planted(bug: Option<Bug>) -> anyhow::Result<Option<PlantedBug>> {
    Ok(match bug {
        None => None,
        Some(Bug::MergeDropsSibling) => Some(PlantedBug::MergeDropsSibling),
        Some(Bug::AntiEntropySkipsSubtree) => Some(PlantedBug::AntiEntropySkipsSubtree),
        Some(Bug::EarlyTombstoneCollection) => Some(PlantedBug::EarlyTombstoneCollection),
        Some(other) => anyhow::bail!("--bug {other:?} is not a replication-peer fault"),
    })
}

/// Runs the command.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bug = planted(args.planted_bug)?;
    let end = args.start.checked_add(args.seeds).ok_or_else(|| {
        anyhow::anyhow!("--start {} + --seeds {} overflows", args.start, args.seeds)
    })?;
    let options = SimOptions {
        bug,
        ..SimOptions::default()
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut acked, mut collected, mut crashes, mut partitions) = (0, 0, 0, 0);
    let mut settle: Vec<u64> = Vec::new();
    for seed in args.start..end {
        match run_seed(seed, options) {
            Ok(stats) => {
                acked += stats.writes_acked;
                collected += stats.tombstones_collected;
                crashes += stats.crashes;
                partitions += stats.partitions;
                settle.push(stats.converged_at.saturating_sub(options.faulty_ticks));
                if args.verbose {
                    println!("seed {seed}: clean, {stats:?}");
                }
            }
            Err(failure) => {
                if bug.is_none() || args.verbose {
                    println!("{failure}");
                    println!(
                        "  replay: cargo xtask sim --protocol peer --seeds 1 --start {seed} --verbose\n"
                    );
                }
                failures.push(seed);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    settle.sort_unstable();
    if let (Some(&max), false) = (settle.last(), settle.is_empty()) {
        println!(
            "ticks from the end of faults to convergence: median {}, p99 {}, max {max}",
            settle[settle.len() / 2],
            settle[(settle.len() * 99 / 100).min(settle.len() - 1)]
        );
    }
    println!(
        "{} seeds in {elapsed:.2} s ({:.1} seeds/s); clean seeds: {acked} writes acknowledged, {collected} tombstones collected, {crashes} crashes, {partitions} partitions",
        args.seeds,
        args.seeds as f64 / elapsed.max(1e-9)
    );
    match bug {
        None => {
            println!(
                "sim peer: {} seeds, {} violations",
                args.seeds,
                failures.len()
            );
            if !failures.is_empty() {
                println!("failing seeds: {failures:?}");
                std::process::exit(1);
            }
        }
        Some(b) => {
            println!(
                "sim peer --bug {b:?}: caught by {} of {} seeds (first: {:?})",
                failures.len(),
                args.seeds,
                failures.first()
            );
            if failures.is_empty() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
