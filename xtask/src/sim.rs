//! `cargo xtask sim`: runs the deterministic protocol simulator over a range of seeds.
//!
//! Each seed is an independent, bit-for-bit reproducible run (see `consensus_core::sim`). Failing
//! seeds are printed with their violation and the last events of their trace; rerun one with
//! `--start <seed> --seeds 1 --verbose` to see every event.

use std::time::Instant;

use consensus_core::paxos::PlantedBug as PaxosBug;
use consensus_core::sim::{self, PaxosSim, RaftSim, SimConfig, SimProtocol, ZabSim};
use consensus_core::zab::PlantedBug as ZabBug;
use consensus_core::PlantedBug;
use indicatif::{ProgressBar, ProgressStyle};

/// The protocols the simulator can drive.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The Raft engine of consensus-core.
    Raft,
    /// The Multi-Paxos engine of consensus-core.
    MultiPaxos,
    /// The Zab engine of consensus-core.
    Zab,
    /// txn-2pc: two-phase commit, presumed abort (`sim_txn`).
    #[value(name = "2pc")]
    TwoPc,
    /// txn-2pc: three-phase commit under crash faults (`sim_txn`).
    #[value(name = "3pc")]
    ThreePc,
    /// txn-2pc: three-phase commit under partitions, where it splits (`sim_txn`).
    #[value(name = "3pc-partitions")]
    ThreePcPartitions,
    /// txn-2pc: try/confirm/cancel (`sim_txn`).
    Tcc,
    /// txn-2pc: sagas (`sim_txn`).
    Saga,
    /// replication-peer: multi-master replication with anti-entropy (`sim_peer`).
    Peer,
    /// replication-primary: PacificA primary-backup, `--ack all|quorum|async` (`sim_primary`).
    PrimaryBackup,
    /// node: the bank test of cross-shard transactions, in process (`sim_bank`).
    Bank,
}

/// A bug to plant in every member, to see the simulator catch it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Commit an entry of an earlier term by counting replicas (Raft paper, figure 8).
    CommitPreviousTerm,
    /// Serve reads without confirming leadership.
    ReadWithoutLeadershipCheck,
    /// Grant votes without comparing logs.
    VoteWithoutLogCheck,
    /// Multi-Paxos: an acceptor accepts below its promise.
    AcceptBelowPromise,
    /// Multi-Paxos: a new leader skips phase 1 for a slot holding an accepted value.
    SkipPhaseOne,
    /// Multi-Paxos: a slot is applied before it is chosen.
    ApplyBeforeChosen,
    /// Zab: the leader proposes before a quorum acknowledged NEWLEADER.
    BroadcastBeforeNewLeaderQuorum,
    /// Zab: a follower acknowledges proposals before its write is durable.
    AckBeforeDurable,
    /// Zab: votes are ordered by server id only, ignoring the zxid.
    ElectionIgnoresZxid,
    /// replication-peer: a merge that brings siblings together drops one.
    MergeDropsSibling,
    /// replication-peer: anti-entropy skips a differing subtree.
    AntiEntropySkipsSubtree,
    /// replication-peer: a tombstone is collected before every replica holds it.
    EarlyTombstoneCollection,
    /// replication-primary: a backup accepts prepares of a lower epoch.
    AcceptLowerEpoch,
    /// replication-primary: a backup asks to take over before its grace period.
    ServeBeforeGrace,
    /// replication-primary: an `all`-mode primary acknowledges before every backup did.
    AllAckBeforeBackups,
    /// replication-primary: a primary answers reads without holding its leases.
    ReadWithoutLease,
}

impl Bug {
    /// The Raft fault this names, if it is one of Raft's.
    fn raft(self) -> Option<PlantedBug> {
        match self {
            Bug::CommitPreviousTerm => Some(PlantedBug::CommitPreviousTermByCounting),
            Bug::ReadWithoutLeadershipCheck => Some(PlantedBug::ReadWithoutLeadershipCheck),
            Bug::VoteWithoutLogCheck => Some(PlantedBug::VoteWithoutLogCheck),
            _ => None,
        }
    }

    /// The Multi-Paxos fault this names, if it is one of Multi-Paxos'.
    fn paxos(self) -> Option<PaxosBug> {
        match self {
            Bug::AcceptBelowPromise => Some(PaxosBug::AcceptBelowPromise),
            Bug::SkipPhaseOne => Some(PaxosBug::SkipPhaseOneForAcceptedSlot),
            Bug::ApplyBeforeChosen => Some(PaxosBug::ApplyBeforeChosen),
            _ => None,
        }
    }

    /// The Zab fault this names, if it is one of Zab's.
    fn zab(self) -> Option<ZabBug> {
        match self {
            Bug::BroadcastBeforeNewLeaderQuorum => Some(ZabBug::BroadcastBeforeNewLeaderQuorum),
            Bug::AckBeforeDurable => Some(ZabBug::AckBeforeDurable),
            Bug::ElectionIgnoresZxid => Some(ZabBug::ElectionIgnoresZxid),
            _ => None,
        }
    }
}

/// The planted fault `--bug` names for this protocol, or an error saying it is another's.
fn planted<B>(
    bug: Option<Bug>,
    protocol: &str,
    pick: impl Fn(Bug) -> Option<B>,
) -> anyhow::Result<Option<B>> {
    match bug {
        Some(bug) => pick(bug)
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("--bug {bug:?} is not a {protocol} fault")),
        None => Ok(None),
    }
}

/// Arguments of this command.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Protocol to simulate.
    #[arg(long, value_enum, default_value = "raft")]
    pub protocol: Protocol,
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Number of nodes (3 to 7); by default each seed picks its own.
    #[arg(long, value_parser = clap::value_parser!(u64).range(3..=7))]
    pub nodes: Option<u64>,
    /// Print each seed's outcome, and the whole trace of failing seeds.
    #[arg(long)]
    pub verbose: bool,
    /// Plant a known bug in every member (the run should then report violations).
    #[arg(long, visible_alias = "bug", value_enum)]
    pub planted_bug: Option<Bug>,
    /// Schedule profile: `mixed` derives everything from the seed; `churn` cuts off every new
    /// leader shortly after it appears (three nodes, no pre-vote or check-quorum), where Raft's
    /// Figure 8 plays out.
    #[arg(long, value_enum, default_value = "mixed")]
    pub profile: Profile,
    /// Plant a known bug in the txn-2pc engines (for `--protocol 2pc|tcc`).
    #[arg(long, value_enum)]
    pub txn_bug: Option<crate::sim_txn::TxnBug>,
    /// Plant a known bug in the node's cross-shard transactions (for `--protocol bank`).
    #[arg(long, value_enum)]
    pub xtxn_bug: Option<crate::sim_bank::XtxnBug>,
    /// Acknowledgement mode(s) for `--protocol primary-backup`, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub ack: Vec<crate::sim_primary::AckMode>,
}

/// How a seed's schedule is chosen.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Everything (nodes, faults, read mode, pre-vote, churn, bursts…) drawn from the seed.
    Mixed,
    /// The leader-churn profile (`SimConfig::churn_from_seed`).
    Churn,
}

/// The command line that replays exactly one seed of this run, printing every event.
fn replay_command(args: &Args, seed: u64) -> String {
    let protocol = clap::ValueEnum::to_possible_value(&args.protocol)
        .map_or_else(|| "raft".to_owned(), |v| v.get_name().to_owned());
    let mut line =
        format!("cargo xtask sim --protocol {protocol} --seeds 1 --start {seed} --verbose");
    if let Some(nodes) = args.nodes {
        line.push_str(&format!(" --nodes {nodes}"));
    }
    if let Some(bug) = args.planted_bug {
        if let Some(value) = clap::ValueEnum::to_possible_value(&bug) {
            line.push_str(&format!(" --bug {}", value.get_name()));
        }
    }
    if args.profile == Profile::Churn {
        line.push_str(" --profile churn");
    }
    line
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    if crate::sim_txn::is_txn(args.protocol) {
        return crate::sim_txn::run(&args);
    }
    match args.protocol {
        Protocol::Peer => crate::sim_peer::run(&args),
        Protocol::PrimaryBackup => crate::sim_primary::run(&args),
        Protocol::Bank => crate::sim_bank::run(&args),
        Protocol::Raft => {
            let bug = planted(args.planted_bug, "Raft", Bug::raft)?;
            scan::<RaftSim>(&args, "raft", |options| options.planted_bug = bug)
        }
        Protocol::MultiPaxos => {
            let bug = planted(args.planted_bug, "Multi-Paxos", Bug::paxos)?;
            scan::<PaxosSim>(&args, "multi-paxos", |options| options.planted_bug = bug)
        }
        Protocol::Zab => {
            let bug = planted(args.planted_bug, "Zab", Bug::zab)?;
            scan::<ZabSim>(&args, "zab", |options| options.planted_bug = bug)
        }
        other => anyhow::bail!("{other:?} is not a consensus protocol"),
    }
}

/// Runs protocol `P` over the seeds of `args`; `plant` sets the planted fault in its knobs.
fn scan<P: SimProtocol>(
    args: &Args,
    name: &str,
    plant: impl Fn(&mut P::Options),
) -> anyhow::Result<()> {
    let end = args.start.checked_add(args.seeds).ok_or_else(|| {
        anyhow::anyhow!("--start {} + --seeds {} overflows", args.start, args.seeds)
    })?;
    let bar = ProgressBar::new(args.seeds);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} sim {name} [{{bar:40}}] {{pos}}/{{len}} seeds, {{per_sec}}, eta {{eta}} {{msg}}"
        ))?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in args.start..end {
        let mut config = match args.profile {
            Profile::Mixed => SimConfig::from_seed::<P>(seed, args.nodes.map(|n| n as usize)),
            Profile::Churn => SimConfig::churn_from_seed::<P>(seed),
        };
        plant(&mut config.protocol);
        config.keep_full_trace = args.verbose;
        let outcome = sim::run::<P>(config);
        if args.verbose {
            bar.suspend(|| {
                if outcome.is_clean() {
                    println!(
                        "seed {seed}: clean, trace hash {:#018x}, {:?}",
                        outcome.trace_hash, outcome.stats
                    );
                }
            });
        }
        if !outcome.is_clean() {
            let replay = replay_command(args, seed);
            bar.suspend(|| println!("{}  replay: {replay}\n", outcome.report()));
            failures.push(seed);
            bar.set_message(format!("{} violations", failures.len()));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} seeds in {elapsed:.2} s ({:.1} seeds/s)",
        args.seeds,
        args.seeds as f64 / elapsed.max(1e-9)
    );
    if !failures.is_empty() {
        println!("failing seeds: {failures:?}");
        if let Some(&seed) = failures.first() {
            println!("replay the first with: {}", replay_command(args, seed));
        }
    }
    println!(
        "sim {name}: {} seeds, {} violations",
        args.seeds,
        failures.len()
    );
    if !failures.is_empty() {
        // The summary above stays the last line; the exit status says the run failed.
        use std::io::Write as _;
        std::io::stdout().flush()?;
        std::process::exit(1);
    }
    Ok(())
}
