//! Runs the simulator over a range of seeds and prints what each did, or the first failure.
//!
//! `cargo run -p replication-peer --example sim_seeds -- [SEEDS] [START] [BUG]` where BUG is
//! `drop-sibling`, `skip-subtree` or `early-gc`.

use replication_peer::sim::{run_seed, SimOptions};
use replication_peer::PlantedBug;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seeds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(20);
    let start: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let bug = args.get(2).map(|b| match b.as_str() {
        "drop-sibling" => PlantedBug::MergeDropsSibling,
        "skip-subtree" => PlantedBug::AntiEntropySkipsSubtree,
        "early-gc" => PlantedBug::EarlyTombstoneCollection,
        other => panic!("unknown bug {other}"),
    });
    let options = SimOptions {
        bug,
        ..SimOptions::default()
    };
    let mut failed = 0;
    for seed in start..start + seeds {
        match run_seed(seed, options) {
            Ok(s) => println!(
                "seed {seed}: ok — {} nodes, {} requests, {} writes acked, {} reads, {} failed, {} crashes, {} partitions, converged at t={}, {} tombstones collected, {} hints dropped",
                s.nodes, s.requests, s.writes_acked, s.reads_ok, s.failed, s.crashes, s.partitions, s.converged_at, s.tombstones_collected, s.hints_dropped
            ),
            Err(f) => {
                failed += 1;
                println!("{f}");
                if bug.is_some() && std::env::var_os("ALL").is_none() {
                    break;
                }
            }
        }
    }
    println!("{failed} of the seeds failed");
}
