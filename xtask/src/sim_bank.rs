//! `cargo xtask sim --protocol bank`: the in-process bank test of the node's cross-shard
//! transactions (`node::xtxn::bank`) over a range of seeds — real shard state machines,
//! coordinators and resolvers under drops, duplicates, reordering, coordinator crashes and
//! leader changes, with a lagging replica per shard serving the workers' sequential reads of
//! their own transfers. `--xtxn-bug` plants a known bug; the run then succeeds only if some seed
//! caught it.

use std::time::Instant;

use node::xtxn::bank::{self, BankBug, BankConfig, BankReport};

use crate::sim::Args;

/// A bug to plant in the cross-shard transaction code.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum XtxnBug {
    /// The coordinator counts a no vote as yes (commits without every yes vote).
    CommitWithoutAllYes,
    /// An in-doubt participant aborts on its own instead of asking the coordinator shard.
    ResolveWithoutAsking,
    /// A shard reads through a prepared transaction's write lock (the value before a commit
    /// already acknowledged).
    ReadThroughLocks,
    /// A coordinator answers an abort without recording it under the client's session (a resent
    /// request whose first run committed is answered "aborted").
    AbortWithoutSession,
    /// Parallel commit: the coordinator answers commit once the other participants voted yes,
    /// without waiting for the coordinator shard's `Staged` (whose own part may not hold).
    AnswerBeforeStaged,
    /// A commit is answered with the coordinator shard's revision only: the client's
    /// sequential reads at a lagging replica of another participant miss its own transfer.
    OnlyCoordinatorRevision,
}

/// Runs the seeds of `args`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bug = args.xtxn_bug.map(|bug| match bug {
        XtxnBug::CommitWithoutAllYes => BankBug::CommitWithoutAllYes,
        XtxnBug::ResolveWithoutAsking => BankBug::ResolveWithoutAsking,
        XtxnBug::ReadThroughLocks => BankBug::ReadThroughLocks,
        XtxnBug::AbortWithoutSession => BankBug::AbortWithoutSession,
        XtxnBug::AnswerBeforeStaged => BankBug::AnswerBeforeStaged,
        XtxnBug::OnlyCoordinatorRevision => BankBug::OnlyCoordinatorRevision,
    });
    let started = Instant::now();
    let mut totals = BankReport::default();
    let mut failed = Vec::new();
    for seed in args.start..args.start + args.seeds {
        let mut config = BankConfig::from_seed(seed);
        config.bug = bug;
        let report = bank::run(config.clone());
        if args.verbose {
            println!(
                "seed {seed}: {} shards, {} accounts, {} workers: transfers {}/{} committed, audits {}/{} committed, {} coordinator crashes, {} resolved, {} locked, {} leader changes, {} violations",
                config.shards,
                config.accounts,
                config.workers,
                report.transfers_committed,
                report.transfers_committed + report.transfers_aborted,
                report.audits_committed,
                report.audits_committed + report.audits_aborted,
                report.coordinator_crashes,
                report.resolved,
                report.locked_refusals,
                report.leader_changes,
                report.violations.len()
            );
        }
        totals.transfers_committed += report.transfers_committed;
        totals.transfers_aborted += report.transfers_aborted;
        totals.audits_committed += report.audits_committed;
        totals.audits_aborted += report.audits_aborted;
        totals.coordinator_crashes += report.coordinator_crashes;
        totals.resent += report.resent;
        totals.answered_by_earlier_run += report.answered_by_earlier_run;
        totals.resolved += report.resolved;
        totals.locked_refusals += report.locked_refusals;
        totals.leader_changes += report.leader_changes;
        totals.session_reads += report.session_reads;
        totals.session_reads_held += report.session_reads_held;
        totals.steps += report.steps;
        if !report.violations.is_empty() {
            if failed.len() < 3 || args.verbose {
                println!("seed {seed} FAILED:");
                for violation in report.violations.iter().take(5) {
                    println!("  {violation}");
                }
            }
            failed.push(seed);
        }
    }
    println!(
        "bank: {} seeds from {} in {:.1}s: transfers {} committed / {} aborted, audits {} committed / {} aborted, {} coordinator crashes, {} requests resent ({} answered by an earlier run), {} resolver decides, {} plain writes refused on locks, {} leader changes, {} sequential reads of a worker's own transfer at a lagging replica ({} held first), {} steps",
        args.seeds,
        args.start,
        started.elapsed().as_secs_f64(),
        totals.transfers_committed,
        totals.transfers_aborted,
        totals.audits_committed,
        totals.audits_aborted,
        totals.coordinator_crashes,
        totals.resent,
        totals.answered_by_earlier_run,
        totals.resolved,
        totals.locked_refusals,
        totals.leader_changes,
        totals.session_reads,
        totals.session_reads_held,
        totals.steps
    );
    match (bug, failed.is_empty()) {
        (None, true) => {
            println!("every seed kept the bank invariant");
            Ok(())
        }
        (None, false) => anyhow::bail!("{} seeds failed: {failed:?}", failed.len()),
        (Some(bug), false) => {
            println!(
                "planted {bug:?} caught by {} of {} seeds (first: {})",
                failed.len(),
                args.seeds,
                failed[0]
            );
            Ok(())
        }
        (Some(bug), true) => anyhow::bail!("planted {bug:?} was not caught by any seed"),
    }
}
