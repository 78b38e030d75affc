//! The 2PC simulator: atomicity and termination over many seeds, the planted bugs it must
//! catch, and the blocking the literature predicts.

use txn_2pc::sim::two_phase::{self, Config, Start};
use txn_2pc::two_phase::PlantedBug;

fn first_failing(bug: PlantedBug, seeds: std::ops::Range<u64>) -> Option<u64> {
    seeds.into_iter().find(|&seed| {
        let mut config = Config::from_seed(seed);
        config.bug = Some(bug);
        !two_phase::run(config).is_clean()
    })
}

#[test]
fn three_hundred_faulty_seeds_keep_atomicity_validity_and_terminate() {
    let mut committed = 0;
    let mut aborted = 0;
    let mut crashes = 0;
    for seed in 0..300 {
        let report = two_phase::run(Config::from_seed(seed));
        assert!(report.is_clean(), "{}", report.render());
        committed += report.stats.committed;
        aborted += report.stats.aborted;
        crashes += report.stats.crashes;
    }
    // The seeds exercise both outcomes and real crashes, or the test proves little.
    assert!(
        committed > 100 && aborted > 50 && crashes > 100,
        "{committed} {aborted} {crashes}"
    );
}

#[test]
fn a_seed_replays_bit_for_bit() {
    for seed in [3, 17, 99] {
        let a = two_phase::run(Config::from_seed(seed));
        let b = two_phase::run(Config::from_seed(seed));
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.stats, b.stats);
    }
    let a = two_phase::run(Config::from_seed(1));
    let b = two_phase::run(Config::from_seed(2));
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn voting_yes_before_forcing_prepared_is_caught_within_50_seeds() {
    let seed = first_failing(PlantedBug::VoteBeforeForcingPrepared, 0..50);
    assert!(seed.is_some(), "no seed below 50 caught the planted bug");
}

#[test]
fn sending_commit_before_forcing_the_decision_is_caught_within_50_seeds() {
    let seed = first_failing(PlantedBug::CommitBeforeForcingDecision, 0..50);
    assert!(seed.is_some(), "no seed below 50 caught the planted bug");
}

#[test]
fn two_phase_commit_blocks_when_the_coordinator_dies_after_every_yes_vote() {
    for participants in [2, 3, 5] {
        let report = two_phase::run(Config::coordinator_dies_after_votes(7, participants));
        assert!(report.is_clean(), "{}", report.render());
        // Every participant is in doubt, and termination found every peer uncertain: blocked,
        // and nobody guessed an outcome.
        assert_eq!(
            report.stats.in_doubt,
            participants as u64,
            "{}",
            report.render()
        );
        assert_eq!(
            report.stats.blocked,
            participants as u64,
            "{}",
            report.render()
        );
        assert_eq!(report.stats.committed + report.stats.aborted, 0);
    }
}

#[test]
fn fault_free_commit_costs_what_gray_and_lamport_count() {
    for n in [2u64, 3, 5] {
        let report = two_phase::run(Config::fault_free(1, n as usize, Start::Initiator));
        assert!(report.is_clean(), "{}", report.render());
        let s = &report.stats;
        assert_eq!(s.committed, 1);
        let critical = s.messages_of(&["begin-commit", "prepare", "vote", "commit"]);
        assert_eq!(critical, 3 * n - 1, "{:?}", s.messages);
        assert_eq!(s.messages_of(&["ack"]), n);
        assert_eq!(s.total_messages(), 4 * n - 1, "{:?}", s.messages);
        assert_eq!(s.decision_message_depth, 4);
        assert_eq!(s.decision_force_depth, 3);
        assert_eq!(s.forced_writes, 2 * n + 1);
    }
}
