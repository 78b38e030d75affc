//! The simulator on Multi-Paxos: a range of seeds must run clean, each planted bug must be caught
//! within 50 seeds, and a seed must replay exactly.

use consensus_core::paxos::PlantedBug;
use consensus_core::sim::{self, PaxosOptions, PaxosSim};

type Outcome = sim::Outcome<PaxosOptions>;
type SimConfig = sim::SimConfig<PaxosOptions>;

/// Seeds run on every push.
const SEEDS: u64 = 300;
/// A planted bug must be caught within this many seeds.
const CATCH_WITHIN: u64 = 50;

fn failures(outcomes: impl Iterator<Item = Outcome>) -> Vec<Outcome> {
    outcomes.filter(|o| !o.is_clean()).collect()
}

fn first_catch(bug: PlantedBug, config: impl Fn(u64) -> SimConfig) -> Option<(u64, Outcome)> {
    (0..CATCH_WITHIN)
        .map(|seed| {
            let mut c = config(seed);
            c.protocol.planted_bug = Some(bug);
            (seed, sim::run::<PaxosSim>(c))
        })
        .find(|(_, o)| !o.is_clean())
}

fn from_seed(seed: u64) -> SimConfig {
    SimConfig::from_seed::<PaxosSim>(seed, None)
}

fn churn_from_seed(seed: u64) -> SimConfig {
    SimConfig::churn_from_seed::<PaxosSim>(seed)
}

#[test]
fn paxos_seeds_run_clean() {
    let failed = failures((0..SEEDS).map(|seed| sim::run_seed::<PaxosSim>(seed, None)));
    let reports: Vec<String> = failed.iter().take(3).map(Outcome::report).collect();
    assert!(
        failed.is_empty(),
        "{} of {SEEDS} seeds failed:\n{}",
        failed.len(),
        reports.join("\n")
    );
}

#[test]
fn paxos_leader_churn_profile_runs_clean() {
    let failed = failures((0..50).map(|seed| sim::run::<PaxosSim>(churn_from_seed(seed))));
    let reports: Vec<String> = failed.iter().take(3).map(Outcome::report).collect();
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        reports.join("\n")
    );
}

#[test]
fn paxos_seed_replays_exactly() {
    let a = sim::run_seed::<PaxosSim>(11, Some(5));
    let b = sim::run_seed::<PaxosSim>(11, Some(5));
    assert_eq!(a.trace_hash, b.trace_hash);
}

#[test]
fn planted_accept_below_promise_is_caught() {
    let caught = first_catch(PlantedBug::AcceptBelowPromise, churn_from_seed)
        .or_else(|| first_catch(PlantedBug::AcceptBelowPromise, from_seed));
    let (seed, outcome) = caught.expect("the simulator missed an acceptance below a promise");
    eprintln!("caught at seed {seed}: {}", outcome.report());
}

#[test]
fn planted_skip_phase_one_for_accepted_slot_is_caught() {
    let caught = first_catch(PlantedBug::SkipPhaseOneForAcceptedSlot, churn_from_seed)
        .or_else(|| first_catch(PlantedBug::SkipPhaseOneForAcceptedSlot, from_seed));
    let (seed, outcome) = caught.expect("the simulator missed a leader that skipped phase 1");
    eprintln!("caught at seed {seed}: {}", outcome.report());
}

#[test]
fn planted_apply_before_chosen_is_caught() {
    let caught = first_catch(PlantedBug::ApplyBeforeChosen, from_seed);
    let (seed, outcome) = caught.expect("the simulator missed a slot applied before chosen");
    eprintln!("caught at seed {seed}: {}", outcome.report());
}

#[test]
fn paxos_runs_make_progress() {
    let mut committed = 0;
    let mut completed = 0;
    for seed in 0..20 {
        let outcome = sim::run_seed::<PaxosSim>(seed, None);
        eprintln!("seed {seed}: {:?}", outcome.stats);
        committed += outcome.stats.commit_index;
        completed += outcome.stats.completed;
    }
    assert!(committed > 20 * 10, "slots get chosen: {committed}");
    assert!(
        completed > 20 * 5,
        "client operations complete: {completed}"
    );
}

/// More seeds than CI runs: `PAXOS_SEEDS=2000 cargo test -p consensus-core --test paxos_sim
/// -- --ignored`.
#[test]
#[ignore]
fn paxos_many_seeds() {
    let n: u64 = std::env::var("PAXOS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let plain = (0..n).map(|seed| sim::run_seed::<PaxosSim>(seed, None));
    let churn = (0..n / 2).map(|seed| sim::run::<PaxosSim>(churn_from_seed(seed)));
    let failed = failures(plain.chain(churn));
    let reports: Vec<String> = failed.iter().take(2).map(Outcome::report).collect();
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        reports.join("\n")
    );
}

/// Replays one seed with a long trace: `PAXOS_SEED=751 cargo test -p consensus-core --test
/// paxos_sim paxos_replay_seed -- --ignored --nocapture`.
#[test]
#[ignore]
fn paxos_replay_seed() {
    let seed: u64 = std::env::var("PAXOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut config = from_seed(seed);
    config.trace_window = 4000;
    let outcome = sim::run::<PaxosSim>(config);
    eprintln!("{}", outcome.report());
}
