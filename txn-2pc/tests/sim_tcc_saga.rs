//! The TCC and saga simulators: all-or-nothing, effects at most once, no try after its cancel,
//! and the suspension a cancel without its fence causes.

use txn_2pc::fence::PlantedBug;
use txn_2pc::sim::branches::Config;
use txn_2pc::sim::{saga, tcc};

#[test]
fn three_hundred_faulty_tcc_seeds_end_all_confirmed_or_all_cancelled() {
    let (mut confirmed, mut cancelled) = (0, 0);
    for seed in 0..300 {
        let report = tcc::run(Config::from_seed(seed));
        assert!(report.is_clean(), "{}", report.render());
        confirmed += report.stats.committed;
        cancelled += report.stats.aborted;
    }
    assert!(
        confirmed > 100 && cancelled > 100,
        "{confirmed} {cancelled}"
    );
}

#[test]
fn three_hundred_faulty_saga_seeds_end_all_done_or_all_compensated() {
    let (mut completed, mut compensated) = (0, 0);
    for seed in 0..300 {
        let report = saga::run(Config::from_seed(seed));
        assert!(report.is_clean(), "{}", report.render());
        completed += report.stats.committed;
        compensated += report.stats.aborted;
    }
    assert!(
        completed > 100 && compensated > 100,
        "{completed} {compensated}"
    );
}

#[test]
fn a_cancel_without_its_fence_is_caught_within_50_seeds() {
    let caught = (0..50).find(|&seed| {
        let mut config = Config::from_seed(seed);
        config.bug = Some(PlantedBug::CancelWithoutFence);
        !tcc::run(config).is_clean()
    });
    assert!(caught.is_some(), "no seed below 50 caught the planted bug");
}

#[test]
fn tcc_and_saga_seeds_replay_bit_for_bit() {
    assert_eq!(
        tcc::run(Config::from_seed(4)).trace_hash,
        tcc::run(Config::from_seed(4)).trace_hash
    );
    assert_eq!(
        saga::run(Config::from_seed(4)).trace_hash,
        saga::run(Config::from_seed(4)).trace_hash
    );
}
