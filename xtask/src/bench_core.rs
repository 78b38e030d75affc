//! `cargo xtask bench core`: the Raft engine of consensus-core against tikv's raft-rs, in one run.
//!
//! The harness is the same for both: three members in one process, each with its engine's own
//! in-memory storage, messages delivered by function call through one FIFO queue, every write
//! "persisted" at once (written to the memory storage, then confirmed). Member 1 is elected, then the
//! harness keeps `outstanding` 16-byte proposals in flight: it tops the window up, drains every
//! member's ready state and the message queue until nothing moves, and counts the proposals the
//! leader hands out as committed. Logs are compacted every 64 Ki entries on every member so memory
//! stays flat. Only the process's CPU time is counted (`/proc/thread-self/schedstat`, falling back to
//! `/proc/self/stat`): the figure is committed proposals per CPU-second.
//!
//! raft-rs (`raft` 0.7, prost codec) needs `protoc` to build, so it sits behind the xtask feature
//! `raft-rs`. Without that feature this command installs `protobuf-compiler` with apt-get if `protoc`
//! is missing, then re-runs itself as `cargo run -p xtask --release --features raft-rs -- bench core`
//! (benchmarks are built in release). `--core-only` skips the peer.
//!
//! The last line printed is `core-vs-raft-rs: <ratio>` at 256 outstanding proposals.

use std::collections::VecDeque;
use std::process::Command;

use anyhow::{bail, Context};
use consensus_core::{
    Bytes, ConfState, Config, Consensus, EntryPayload, MemStorage, Message, Raft, Role,
};

/// Arguments of `cargo xtask bench core`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// CPU seconds measured per case (each case is run `--runs` times; the best run is kept).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Runs per case.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Outstanding proposals to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 64, 256])]
    outstanding: Vec<usize>,
    /// Measure consensus-core only (no raft-rs, no re-run with the `raft-rs` feature).
    #[arg(long)]
    core_only: bool,
    /// Do not re-run in release with the `raft-rs` feature (used by the re-run itself).
    #[arg(long, hide = true)]
    no_reexec: bool,
}

/// Proposal payload size.
const PAYLOAD: usize = 16;
/// Entries between compactions.
const COMPACT_EVERY: u64 = 64 * 1024;

/// One engine under test: elect member 1, then run proposals with a fixed window.
trait Harness {
    /// Proposes as many 16-byte payloads as the leader accepts, up to `n`; returns how many.
    fn propose(&mut self, n: usize) -> usize;
    /// Drains ready states and messages until quiescent; returns proposals the leader saw commit.
    fn pump(&mut self) -> usize;
}

/// Process CPU time in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    // Nanosecond precision for this (single-threaded) benchmark's thread.
    if let Ok(text) = std::fs::read_to_string("/proc/thread-self/schedstat") {
        if let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<u64>().ok())
        {
            return ns as f64 / 1e9;
        }
    }
    // utime + stime in clock ticks (USER_HZ is 100 on Linux), after the parenthesised name.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Runs `harness` with `outstanding` proposals in flight for about `seconds` of CPU time.
/// Returns committed proposals per CPU-second.
fn measure(harness: &mut dyn Harness, outstanding: usize, seconds: f64) -> anyhow::Result<f64> {
    // Warm up (allocations, caches) without counting.
    let mut in_flight = 0usize;
    for _ in 0..200 {
        in_flight += harness.propose(outstanding - in_flight);
        in_flight -= harness.pump();
    }
    let start = cpu_seconds();
    let mut committed = 0u64;
    let mut rounds = 0u64;
    loop {
        in_flight += harness.propose(outstanding - in_flight);
        let done = harness.pump();
        in_flight -= done;
        committed += done as u64;
        rounds += 1;
        if rounds.is_multiple_of(64) && cpu_seconds() - start >= seconds {
            break;
        }
        if rounds > 1_000 && committed == 0 {
            bail!("no proposal committed after 1000 rounds");
        }
    }
    let elapsed = (cpu_seconds() - start).max(1e-9);
    Ok(committed as f64 / elapsed)
}

// ---- consensus-core ------------------------------------------------------------------------------

struct Core {
    nodes: Vec<Raft<MemStorage>>,
    queue: VecDeque<Message>,
    payload: Bytes,
    conf: ConfState,
}

impl Core {
    fn new() -> anyhow::Result<Self> {
        let conf = ConfState::with_voters([1, 2, 3]);
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            let mut config = Config::new(id);
            config.max_msg_bytes = 1 << 20;
            config.max_inflight = 256;
            config.max_uncommitted_bytes = 64 << 20;
            let rng = consensus_core::seeded_rng(id);
            nodes.push(Raft::new(
                config,
                MemStorage::new_with_conf(conf.clone()),
                rng,
            )?);
        }
        let mut core = Core {
            nodes,
            queue: VecDeque::new(),
            payload: Bytes::from(vec![7u8; PAYLOAD]),
            conf,
        };
        core.nodes[0].campaign()?;
        for _ in 0..100 {
            core.pump();
            if core.nodes[0].role() == Role::Leader {
                return Ok(core);
            }
        }
        bail!("consensus-core: member 1 was not elected")
    }
}

impl Harness for Core {
    fn propose(&mut self, n: usize) -> usize {
        let leader = &mut self.nodes[0];
        let mut accepted = 0;
        while accepted < n && leader.propose(self.payload.clone()).is_ok() {
            accepted += 1;
        }
        accepted
    }

    fn pump(&mut self) -> usize {
        let mut committed = 0;
        loop {
            let mut moved = false;
            for (i, node) in self.nodes.iter_mut().enumerate() {
                while node.has_ready() {
                    moved = true;
                    let ready = node.ready();
                    self.queue.extend(ready.messages);
                    if let Some(persist) = ready.persist {
                        if let Err(e) = node.storage_mut().write(&persist) {
                            panic!("memory storage write failed: {e}");
                        }
                        if let Err(e) = node.persisted(persist.token) {
                            panic!("persisted refused: {e}");
                        }
                    }
                    if let Some(last) = ready.committed.last() {
                        let last = last.index;
                        if i == 0 {
                            committed += ready
                                .committed
                                .iter()
                                .filter(|e| matches!(e.payload, EntryPayload::Data(_)))
                                .count();
                        }
                        if last % COMPACT_EVERY == 0 {
                            // Keep a margin so a follower a little behind still finds its entries.
                            let _ = node.storage_mut().compact(
                                last - COMPACT_EVERY / 2,
                                self.conf.clone(),
                                Bytes::new(),
                            );
                        }
                    }
                }
            }
            while let Some(message) = self.queue.pop_front() {
                moved = true;
                let to = message.to as usize - 1;
                let _ = self.nodes[to].step(message);
            }
            if !moved {
                return committed;
            }
        }
    }
}

// ---- raft-rs -------------------------------------------------------------------------------------

#[cfg(feature = "raft-rs")]
mod peer {
    use std::collections::VecDeque;

    use anyhow::bail;
    use raft::eraftpb::{ConfState, Entry, EntryType, Message};
    use raft::storage::MemStorage;
    use raft::{Config, RawNode, StateRole};

    use super::{Harness, COMPACT_EVERY, PAYLOAD};

    pub(super) struct RaftRs {
        nodes: Vec<RawNode<MemStorage>>,
        queue: VecDeque<Message>,
    }

    impl RaftRs {
        pub(super) fn new() -> anyhow::Result<Self> {
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let mut nodes = Vec::new();
            for id in 1..=3u64 {
                // The same tunables as consensus-core's defaults.
                let config = Config {
                    id,
                    election_tick: 10,
                    heartbeat_tick: 1,
                    pre_vote: true,
                    check_quorum: true,
                    max_size_per_msg: 1 << 20,
                    max_inflight_msgs: 256,
                    max_uncommitted_size: 64 << 20,
                    // Its own batching of appends to one follower, as consensus-core batches.
                    batch_append: true,
                    ..Config::default()
                };
                let storage =
                    MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
                nodes.push(RawNode::new(&config, storage, &logger)?);
            }
            let mut harness = RaftRs {
                nodes,
                queue: VecDeque::new(),
            };
            harness.nodes[0].campaign()?;
            for _ in 0..100 {
                harness.pump();
                if harness.nodes[0].raft.state == StateRole::Leader {
                    return Ok(harness);
                }
            }
            bail!("raft-rs: member 1 was not elected")
        }
    }

    fn count_and_compact(node: &mut RawNode<MemStorage>, leader: bool, entries: &[Entry]) -> usize {
        let Some(last) = entries.last() else {
            return 0;
        };
        let count = if leader {
            entries
                .iter()
                .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
                .count()
        } else {
            0
        };
        if last.index % COMPACT_EVERY == 0 {
            // Keep a margin so a follower a little behind still finds its entries.
            let _ = node.store().wl().compact(last.index - COMPACT_EVERY / 2);
        }
        count
    }

    impl Harness for RaftRs {
        fn propose(&mut self, n: usize) -> usize {
            let leader = &mut self.nodes[0];
            let mut accepted = 0;
            while accepted < n && leader.propose(Vec::new(), vec![7u8; PAYLOAD]).is_ok() {
                accepted += 1;
            }
            accepted
        }

        fn pump(&mut self) -> usize {
            let mut committed = 0;
            loop {
                let mut moved = false;
                for (i, node) in self.nodes.iter_mut().enumerate() {
                    while node.has_ready() {
                        moved = true;
                        let mut ready = node.ready();
                        self.queue.extend(ready.take_messages());
                        let store = node.store().clone();
                        if !ready.snapshot().is_empty() {
                            let _ = store.wl().apply_snapshot(ready.snapshot().clone());
                        }
                        let entries = ready.take_committed_entries();
                        committed += count_and_compact(node, i == 0, &entries);
                        if !ready.entries().is_empty() {
                            let _ = store.wl().append(ready.entries());
                        }
                        if let Some(hs) = ready.hs() {
                            store.wl().set_hardstate(hs.clone());
                        }
                        self.queue.extend(ready.take_persisted_messages());
                        let mut light = node.advance(ready);
                        if let Some(commit) = light.commit_index() {
                            store.wl().mut_hard_state().set_commit(commit);
                        }
                        self.queue.extend(light.take_messages());
                        let entries = light.take_committed_entries();
                        committed += count_and_compact(node, i == 0, &entries);
                        node.advance_apply();
                    }
                }
                while let Some(message) = self.queue.pop_front() {
                    moved = true;
                    let to = message.to as usize - 1;
                    let _ = self.nodes[to].step(message);
                }
                if !moved {
                    return committed;
                }
            }
        }
    }
}

// ---- the command ---------------------------------------------------------------------------------

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Makes sure `protoc` is on PATH, installing Debian's `protobuf-compiler` if it is not.
fn ensure_protoc() -> anyhow::Result<()> {
    if which("protoc") {
        return Ok(());
    }
    if !which("apt-get") {
        bail!("protoc is missing and apt-get is not available: install protobuf-compiler, or pass --core-only");
    }
    eprintln!("bench core: protoc is missing; installing protobuf-compiler with apt-get");
    let sudo = !std::env::var("USER").is_ok_and(|u| u == "root") && which("sudo");
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let mut command = if sudo {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        let status = command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed with {status}", args.join(" "));
        }
        Ok(())
    };
    run(&["update", "-qq"])?;
    run(&["install", "-y", "-qq", "protobuf-compiler"])?;
    if !which("protoc") {
        bail!("protobuf-compiler installed but protoc is still not on PATH");
    }
    Ok(())
}

/// Re-runs this command in release with the `raft-rs` feature.
fn reexec(args: &Args) -> anyhow::Result<()> {
    ensure_protoc()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let outstanding: Vec<String> = args.outstanding.iter().map(|n| n.to_string()).collect();
    eprintln!("bench core: building xtask in release with the raft-rs feature (first time: a few minutes)");
    let status = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "xtask",
            "--features",
            "raft-rs",
            "--",
            "bench",
            "core",
            "--no-reexec",
            "--seconds",
            &args.seconds.to_string(),
            "--runs",
            &args.runs.to_string(),
            "--outstanding",
            &outstanding.join(","),
        ])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("bench core (release, raft-rs) failed with {status}");
    }
    Ok(())
}

fn best_of(
    runs: usize,
    make: &dyn Fn() -> anyhow::Result<Box<dyn Harness>>,
    outstanding: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..runs.max(1) {
        let mut harness = make()?;
        best = best.max(measure(harness.as_mut(), outstanding, seconds)?);
    }
    Ok(best)
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let with_peer = cfg!(feature = "raft-rs") && !args.core_only;
    let release = !cfg!(debug_assertions);
    if !args.no_reexec && (!release || (!cfg!(feature = "raft-rs") && !args.core_only)) {
        if args.core_only {
            bail!("benchmarks are built in release: run `cargo run -p xtask --release -- bench core --core-only --no-reexec`");
        }
        return reexec(&args);
    }
    if args.outstanding.contains(&0) {
        bail!("--outstanding must be at least 1");
    }
    if !release {
        eprintln!("warning: not a release build; figures are not comparable");
    }
    println!(
        "bench core: 3 members in one process, in-memory storage, 16-byte proposals; \
         best of {} runs of {:.1} CPU-s each",
        args.runs, args.seconds
    );
    println!(
        "{:>12} {:>22} {:>22} {:>8}",
        "outstanding", "consensus-core ops/s", "raft-rs ops/s", "ratio"
    );
    let mut last_ratio = None;
    for &outstanding in &args.outstanding {
        let core = best_of(
            args.runs,
            &|| Ok(Box::new(Core::new()?) as Box<dyn Harness>),
            outstanding,
            args.seconds,
        )?;
        let peer: Option<f64> = if with_peer {
            #[cfg(feature = "raft-rs")]
            {
                Some(best_of(
                    args.runs,
                    &|| Ok(Box::new(peer::RaftRs::new()?) as Box<dyn Harness>),
                    outstanding,
                    args.seconds,
                )?)
            }
            #[cfg(not(feature = "raft-rs"))]
            {
                None
            }
        } else {
            None
        };
        let ratio = peer.map(|p| core / p.max(1e-9));
        println!(
            "{:>12} {:>22.0} {:>22} {:>8}",
            outstanding,
            core,
            peer.map_or("-".to_owned(), |p| format!("{p:.0}")),
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}")),
        );
        if outstanding == 256 {
            last_ratio = ratio;
        }
    }
    match last_ratio {
        Some(ratio) => println!("core-vs-raft-rs: {ratio:.2}"),
        None => println!("core-vs-raft-rs: n/a (raft-rs not measured at 256 outstanding)"),
    }
    Ok(())
}
