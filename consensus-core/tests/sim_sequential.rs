//! Sequential (session-consistent) reads in the simulator, for every protocol it runs: clients
//! issue them beside linearizable ones in the ordinary CI seeds (`sim_seeds`, `paxos_sim`,
//! `sim_zab`); here, a harness that serves them without waiting for the session's revision must
//! be caught by the checker within 50 seeds, and the ordinary runs must serve them, some after
//! waiting for a member to catch up.

use consensus_core::sim::{self, HarnessBug, PaxosSim, RaftSim, SimConfig, SimProtocol, ZabSim};

/// A planted bug must be caught within this many seeds.
const CATCH_WITHIN: u64 = 50;

/// The first seed (and its report) where a member serving sequential reads at once, whatever the
/// session has seen, breaks the history check.
fn first_catch<P: SimProtocol>() -> Option<(u64, sim::Outcome<P::Options>)> {
    (0..CATCH_WITHIN)
        .map(|seed| {
            let mut config = SimConfig::from_seed::<P>(seed, None);
            config.harness_bug = Some(HarnessBug::SequentialReadIgnoresSession);
            (seed, sim::run::<P>(config))
        })
        .find(|(_, outcome)| !outcome.is_clean())
}

fn assert_caught<P: SimProtocol>() {
    let (seed, caught) = first_catch::<P>().unwrap_or_else(|| {
        panic!(
            "{}: a sequential read served behind its session went unnoticed in {CATCH_WITHIN} seeds",
            P::NAME
        )
    });
    assert!(
        matches!(caught.failure, Some(sim::Failure::NotLinearizable { .. })),
        "the history check catches it, not something else: {}",
        caught.report()
    );
    // The same seed without the bug runs clean: the bug, not the seed, failed it.
    assert!(sim::run_seed::<P>(seed, None).is_clean());
    println!("{}: caught at seed {seed}: {}", P::NAME, caught.report());
}

#[test]
fn raft_sequential_read_ignoring_the_session_is_caught() {
    assert_caught::<RaftSim>();
}

#[test]
fn multi_paxos_sequential_read_ignoring_the_session_is_caught() {
    assert_caught::<PaxosSim>();
}

#[test]
fn zab_sequential_read_ignoring_the_session_is_caught() {
    assert_caught::<ZabSim>();
}

/// Over 20 seeds, sequential reads are served, and some had to wait for their member.
fn assert_served_and_held<P: SimProtocol>() {
    let (mut served, mut held) = (0, 0);
    for seed in 0..20 {
        let outcome = sim::run_seed::<P>(seed, None);
        assert!(outcome.is_clean(), "{}", outcome.report());
        served += outcome.stats.sequential_reads;
        held += outcome.stats.sequential_held;
    }
    println!(
        "{}: 20 seeds, {served} sequential reads served, {held} held",
        P::NAME
    );
    assert!(served > 100, "{}: only {served} served", P::NAME);
    assert!(held > 0, "{}: no read ever waited for its session", P::NAME);
}

#[test]
fn sequential_reads_are_served_and_some_wait_for_the_session() {
    assert_served_and_held::<RaftSim>();
    assert_served_and_held::<PaxosSim>();
    assert_served_and_held::<ZabSim>();
}

/// How many of the first 50 seeds catch the planted bug, per protocol: `cargo test -p
/// consensus-core --test sim_sequential -- --ignored --nocapture catch_rates`.
#[test]
#[ignore]
fn catch_rates() {
    fn rate<P: SimProtocol>() -> usize {
        (0..CATCH_WITHIN)
            .filter(|&seed| {
                let mut config = SimConfig::from_seed::<P>(seed, None);
                config.harness_bug = Some(HarnessBug::SequentialReadIgnoresSession);
                !sim::run::<P>(config).is_clean()
            })
            .count()
    }
    println!(
        "caught in {} (raft), {} (multi-paxos), {} (zab) of {CATCH_WITHIN} seeds",
        rate::<RaftSim>(),
        rate::<PaxosSim>(),
        rate::<ZabSim>()
    );
}
