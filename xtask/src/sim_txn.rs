//! `cargo xtask sim --protocol 2pc|3pc|3pc-partitions|tcc|saga`: the commit-protocol simulator
//! of txn-2pc over a range of seeds.
//!
//! Each seed is one reproducible run (`txn_2pc::sim`); failing seeds print their violations and
//! last events, and `--seeds 1 --start <seed> --verbose` replays one with its whole trace.
//! `3pc` runs crash faults only (3PC's model: it must stay atomic and terminate);
//! `3pc-partitions` adds partitions and drops, where 3PC is known to split — that run reports
//! the seeds where it did and succeeds if it found any.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use txn_2pc::sim::{branches, saga, tcc, three_phase, two_phase, Report};

use crate::sim::{Args, Protocol};

/// A bug to plant in the txn-2pc engines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnBug {
    /// 2PC: a participant votes yes before PREPARED is durable.
    VoteBeforePrepared,
    /// 2PC: the coordinator sends COMMIT before its decision is durable.
    CommitBeforeDecision,
    /// TCC: a cancel for a branch that never tried acknowledges without writing its fence.
    CancelWithoutFence,
}

/// Whether `protocol` is one of txn-2pc's (the rest of `--protocol` stays in `sim.rs`).
pub fn is_txn(protocol: Protocol) -> bool {
    name(protocol).is_some()
}

fn name(protocol: Protocol) -> Option<&'static str> {
    match protocol {
        Protocol::TwoPc => Some("2pc"),
        Protocol::ThreePc => Some("3pc"),
        Protocol::ThreePcPartitions => Some("3pc-partitions"),
        Protocol::Tcc => Some("tcc"),
        Protocol::Saga => Some("saga"),
        _ => None,
    }
}

/// Runs one seed of `protocol`.
pub fn run_seed(
    protocol: Protocol,
    seed: u64,
    bug: Option<TxnBug>,
    verbose: bool,
) -> anyhow::Result<Report> {
    Ok(match protocol {
        Protocol::TwoPc => {
            let mut config = two_phase::Config::from_seed(seed);
            config.keep_trace = verbose;
            config.bug = match bug {
                Some(TxnBug::VoteBeforePrepared) => {
                    Some(txn_2pc::two_phase::PlantedBug::VoteBeforeForcingPrepared)
                }
                Some(TxnBug::CommitBeforeDecision) => {
                    Some(txn_2pc::two_phase::PlantedBug::CommitBeforeForcingDecision)
                }
                _ => None,
            };
            two_phase::run(config)
        }
        Protocol::ThreePc | Protocol::ThreePcPartitions => {
            let profile = if protocol == Protocol::ThreePc {
                three_phase::Profile::CrashOnly
            } else {
                three_phase::Profile::Partitions
            };
            let mut config = three_phase::Config::with_profile(seed, profile);
            config.keep_trace = verbose;
            three_phase::run(config)
        }
        Protocol::Tcc | Protocol::Saga => {
            let mut config = branches::Config::from_seed(seed);
            config.keep_trace = verbose;
            if bug == Some(TxnBug::CancelWithoutFence) {
                config.bug = Some(txn_2pc::fence::PlantedBug::CancelWithoutFence);
            }
            if protocol == Protocol::Tcc {
                tcc::run(config)
            } else {
                saga::run(config)
            }
        }
        other => anyhow::bail!("{other:?} is not a txn-2pc protocol"),
    })
}

/// Runs the command for a txn-2pc protocol.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let protocol = args.protocol;
    let label =
        name(protocol).ok_or_else(|| anyhow::anyhow!("{protocol:?} is not a txn-2pc protocol"))?;
    let end = args.start.checked_add(args.seeds).ok_or_else(|| {
        anyhow::anyhow!("--start {} + --seeds {} overflows", args.start, args.seeds)
    })?;
    let bar = ProgressBar::new(args.seeds);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} sim {label} [{{bar:40}}] {{pos}}/{{len}} seeds, {{per_sec}}, eta {{eta}} {{msg}}"
        ))?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut committed, mut aborted, mut crashes, mut partitions) = (0u64, 0u64, 0u64, 0u64);
    for seed in args.start..end {
        let report = run_seed(protocol, seed, args.txn_bug, args.verbose)?;
        committed += report.stats.committed;
        aborted += report.stats.aborted;
        crashes += report.stats.crashes;
        partitions += report.stats.partitions;
        if args.verbose && report.is_clean() {
            bar.suspend(|| {
                println!(
                    "seed {seed}: clean, trace hash {:#018x}, {:?}",
                    report.trace_hash, report.stats
                )
            });
        }
        if !report.is_clean() {
            let mut replay =
                format!("cargo xtask sim --protocol {label} --seeds 1 --start {seed} --verbose");
            if let Some(bug) = args
                .txn_bug
                .and_then(|b| clap::ValueEnum::to_possible_value(&b))
            {
                replay.push_str(&format!(" --txn-bug {}", bug.get_name()));
            }
            if protocol != Protocol::ThreePcPartitions || args.verbose {
                bar.suspend(|| println!("{}  replay: {replay}\n", report.render()));
            }
            failures.push(seed);
            bar.set_message(format!("{} with violations", failures.len()));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} seeds in {elapsed:.2} s ({:.1} seeds/s): {committed} committed, {aborted} aborted, \
         {crashes} crashes, {partitions} partitions injected",
        args.seeds,
        args.seeds as f64 / elapsed.max(1e-9)
    );
    if protocol == Protocol::ThreePcPartitions {
        println!(
            "3PC split (atomicity violated) under partitions in {} of {} seeds{} — expected: \
             3PC is non-blocking under crashes only",
            failures.len(),
            args.seeds,
            failures
                .first()
                .map(|s| format!(", first at seed {s}"))
                .unwrap_or_default()
        );
        println!(
            "sim {label}: {} seeds, {} splits",
            args.seeds,
            failures.len()
        );
        return Ok(());
    }
    if !failures.is_empty() {
        println!("failing seeds: {:?}", &failures[..failures.len().min(20)]);
    }
    println!(
        "sim {label}: {} seeds, {} violations",
        args.seeds,
        failures.len()
    );
    if !failures.is_empty() {
        use std::io::Write as _;
        std::io::stdout().flush()?;
        std::process::exit(1);
    }
    Ok(())
}
