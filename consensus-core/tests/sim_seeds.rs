//! The simulator as CI runs it on Raft: a fixed range of seeds must run clean, each planted bug
//! must be caught by the simulator's own checks within a few seeds, and a failing seed must replay
//! exactly.

use consensus_core::sim::{self, RaftOptions, RaftSim};
use consensus_core::PlantedBug;

type Outcome = sim::Outcome<RaftOptions>;
type SimConfig = sim::SimConfig<RaftOptions>;

fn from_seed(seed: u64) -> SimConfig {
    SimConfig::from_seed::<RaftSim>(seed, None)
}

fn churn_from_seed(seed: u64) -> SimConfig {
    SimConfig::churn_from_seed::<RaftSim>(seed)
}

/// Seeds CI runs on every push.
const CI_SEEDS: u64 = 300;
/// A planted bug must be caught within this many seeds.
const CATCH_WITHIN: u64 = 50;

fn failures(outcomes: impl Iterator<Item = Outcome>) -> Vec<Outcome> {
    outcomes.filter(|o| !o.is_clean()).collect()
}

fn first_catch(bug: PlantedBug, config: impl Fn(u64) -> SimConfig) -> Option<Outcome> {
    (0..CATCH_WITHIN)
        .map(|seed| {
            let mut c = config(seed);
            c.protocol.planted_bug = Some(bug);
            sim::run::<RaftSim>(c)
        })
        .find(|o| !o.is_clean())
}

#[test]
fn ci_seeds_run_clean() {
    let failed = failures((0..CI_SEEDS).map(|seed| sim::run_seed::<RaftSim>(seed, None)));
    let reports: Vec<String> = failed.iter().map(Outcome::report).collect();
    assert!(
        failed.is_empty(),
        "{} of {CI_SEEDS} seeds failed:\n{}",
        failed.len(),
        reports.join("\n")
    );
}

#[test]
fn the_leader_churn_profile_runs_clean() {
    let failed = failures((0..100).map(|seed| sim::run::<RaftSim>(churn_from_seed(seed))));
    let reports: Vec<String> = failed.iter().map(Outcome::report).collect();
    assert!(failed.is_empty(), "{}", reports.join("\n"));
}

#[test]
fn planted_vote_without_log_check_is_caught() {
    let caught = first_catch(PlantedBug::VoteWithoutLogCheck, from_seed);
    let caught = caught.expect("the simulator missed a vote granted without a log check");
    println!("caught at {}", caught.report());
}

#[test]
fn planted_read_without_leadership_check_is_caught() {
    let caught = first_catch(PlantedBug::ReadWithoutLeadershipCheck, from_seed);
    let caught = caught.expect("the simulator missed reads served without confirming leadership");
    assert!(
        matches!(caught.failure, Some(sim::Failure::NotLinearizable { .. })),
        "a stale read shows as a non-linearizable history: {}",
        caught.report()
    );
}

#[test]
fn planted_commit_previous_term_by_counting_is_caught() {
    // Figure 8 needs short-lived leaders with competing tails: the leader-churn profile.
    let caught = first_catch(PlantedBug::CommitPreviousTermByCounting, churn_from_seed);
    let caught = caught.expect("the simulator missed a previous-term entry committed by counting");
    assert!(
        matches!(caught.failure, Some(sim::Failure::Invariant(_))),
        "{}",
        caught.report()
    );
}

#[test]
fn a_failing_seed_replays_bit_for_bit() {
    let first = first_catch(PlantedBug::VoteWithoutLogCheck, from_seed).expect("a failing seed");
    let again = first.config.clone();
    let second = sim::run::<RaftSim>(again);
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.trace, second.trace);
    assert_eq!(first.failure, second.failure);
    assert_eq!(first.stats, second.stats);
    assert!(!first.trace.is_empty() && first.report().contains("invariant violated"));
}

/// A longer scan for local use: `SEEDS=2000 START=0 cargo test -p consensus-core --test sim_seeds
/// -- --ignored scan` (add `CHURN=1` for the leader-churn profile).
#[test]
#[ignore]
fn scan() {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (start, seeds) = (var("START", 0), var("SEEDS", 1000));
    let churn = std::env::var("CHURN").is_ok();
    let failed = failures((start..start + seeds).map(|seed| {
        sim::run::<RaftSim>(if churn {
            churn_from_seed(seed)
        } else {
            from_seed(seed)
        })
    }));
    for outcome in &failed {
        println!("{}", outcome.report());
    }
    assert!(
        failed.is_empty(),
        "{} of {seeds} seeds failed",
        failed.len()
    );
}
