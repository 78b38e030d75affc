//! The simulator over many seeds, and the planted bugs it must catch.

use replication_peer::sim::{run_seed, SimOptions};
use replication_peer::PlantedBug;

/// Seeds CI runs (more with `cargo xtask sim --protocol peer --seeds N`).
const SEEDS: u64 = 200;

#[test]
fn every_seed_converges_and_keeps_every_invariant() {
    let mut acked = 0;
    let mut collected = 0;
    for seed in 0..SEEDS {
        match run_seed(seed, SimOptions::default()) {
            Ok(stats) => {
                acked += stats.writes_acked;
                collected += stats.tombstones_collected;
            }
            Err(f) => panic!("{f}"),
        }
    }
    // The runs must exercise what they check.
    assert!(acked > SEEDS * 50, "only {acked} writes acknowledged");
    assert!(collected > 0, "no tombstone was ever collected");
}

fn first_catch(bug: PlantedBug) -> Option<u64> {
    (0..50).find(|&seed| {
        let caught = run_seed(
            seed,
            SimOptions {
                bug: Some(bug),
                ..SimOptions::default()
            },
        );
        if let Err(f) = &caught {
            println!("{bug:?} caught at seed {seed}: {}", f.violation.invariant);
        }
        caught.is_err()
    })
}

#[test]
fn a_seed_replays_bit_for_bit() {
    let a = run_seed(7, SimOptions::default()).unwrap();
    let b = run_seed(7, SimOptions::default()).unwrap();
    assert_eq!(a, b);
    let f1 = run_seed(
        0,
        SimOptions {
            bug: Some(PlantedBug::MergeDropsSibling),
            ..SimOptions::default()
        },
    );
    let f2 = run_seed(
        0,
        SimOptions {
            bug: Some(PlantedBug::MergeDropsSibling),
            ..SimOptions::default()
        },
    );
    assert_eq!(f1.unwrap_err().trace, f2.unwrap_err().trace);
}

#[test]
fn a_merge_that_drops_a_sibling_is_caught_within_50_seeds() {
    let seed = first_catch(PlantedBug::MergeDropsSibling);
    assert!(seed.is_some(), "not caught in 50 seeds");
}

#[test]
fn anti_entropy_that_skips_a_differing_subtree_is_caught_within_50_seeds() {
    let seed = first_catch(PlantedBug::AntiEntropySkipsSubtree);
    assert!(seed.is_some(), "not caught in 50 seeds");
}

#[test]
fn tombstones_collected_too_early_are_caught_within_50_seeds() {
    let seed = first_catch(PlantedBug::EarlyTombstoneCollection);
    assert!(seed.is_some(), "not caught in 50 seeds");
}
