//! The 3PC simulator: atomic and non-blocking under crash faults, split under partitions.

use txn_2pc::sim::three_phase::{self, Config, Profile, Start};

#[test]
fn three_hundred_crash_only_seeds_stay_atomic_and_terminate() {
    let mut committed = 0;
    let mut aborted = 0;
    let mut crashes = 0;
    for seed in 0..300 {
        let report = three_phase::run(Config::from_seed(seed));
        assert!(report.is_clean(), "{}", report.render());
        committed += report.stats.committed;
        aborted += report.stats.aborted;
        crashes += report.stats.crashes;
    }
    assert!(
        committed > 100 && aborted > 50 && crashes > 100,
        "{committed} {aborted} {crashes}"
    );
}

#[test]
fn three_phase_commit_terminates_when_the_coordinator_dies_after_every_yes_vote() {
    for participants in [2, 3, 5] {
        let report = three_phase::run(Config::coordinator_dies_after_votes(7, participants));
        assert!(report.is_clean(), "{}", report.render());
        assert_eq!(report.stats.in_doubt, 0, "{}", report.render());
        // Every participant was only uncertain: the termination protocol aborts.
        assert_eq!(report.stats.aborted, 1, "{}", report.render());
    }
}

#[test]
fn three_phase_commit_splits_under_a_partition() {
    let split = (0..300).find(|&seed| {
        let report = three_phase::run(Config::with_profile(seed, Profile::Partitions));
        report.violations.iter().any(|v| v.contains("atomicity"))
    });
    assert!(
        split.is_some(),
        "no seed of 300 showed the partition anomaly"
    );
}

#[test]
fn fault_free_three_phase_commit_costs_one_round_more_than_two_phase() {
    for n in [2u64, 3, 5] {
        let report = three_phase::run(Config::fault_free(1, n as usize, Start::Initiator));
        assert!(report.is_clean(), "{}", report.render());
        let s = &report.stats;
        assert_eq!(s.committed, 1);
        assert_eq!(s.total_messages(), 5 * n - 1, "{:?}", s.messages);
        assert_eq!(s.messages_of(&["pre-commit", "pre-commit-ack"]), 2 * n);
        assert_eq!(s.decision_message_depth, 6);
        assert_eq!(s.decision_force_depth, 3);
    }
}

#[test]
fn a_seed_replays_bit_for_bit() {
    let a = three_phase::run(Config::with_profile(5, Profile::Partitions));
    let b = three_phase::run(Config::with_profile(5, Profile::Partitions));
    assert_eq!(a.trace_hash, b.trace_hash);
}
