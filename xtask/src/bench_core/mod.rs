//! `cargo xtask bench core`: the Raft engine of consensus-core against tikv's raft-rs, in one run.
//!
//! The harness is the same for both: three members in one process, each with its engine's own
//! in-memory storage, messages delivered by function call through one FIFO queue, every write
//! "persisted" at once (written to the memory storage, then confirmed). Member 1 is elected, then the
//! harness keeps `outstanding` 16-byte proposals in flight: it tops the window up, drains every
//! member's ready state and the message queue until nothing moves, and counts the proposals the
//! leader hands out as committed. Every member's state machine reads each committed entry (our
//! side by reference where the protocol leaves committed entries in storage, as Multi-Paxos
//! does; the peers through their APIs, which hand out copies: that difference is the seam's, not
//! the harness's). Logs are compacted each time the applied index crosses a multiple of 64 Ki
//! entries, on every member, so memory stays flat. Only the process's CPU time is counted (`/proc/thread-self/schedstat`, falling back to
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
use consensus_core::paxos::{Config as PaxosConfig, HardState as PaxosHardState, MultiPaxos};
use consensus_core::{
    Bytes, CommittedRange, ConfState, Config, Consensus, Entry, EntryPayload, Envelope, Host,
    MemStorage, Raft, Replica, Role, Snapshot, Write,
};

/// The protocols `bench core` measures, each against its peer library.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// consensus-core's Raft against tikv's raft-rs.
    Raft,
    /// consensus-core's Multi-Paxos against the omnipaxos crate.
    MultiPaxos,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Raft => "raft",
            Protocol::MultiPaxos => "multi-paxos",
        }
    }

    fn peer(self) -> &'static str {
        match self {
            Protocol::Raft => "raft-rs",
            Protocol::MultiPaxos => "omnipaxos",
        }
    }
}

/// Arguments of `cargo xtask bench core`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Protocol to measure.
    #[arg(long, value_enum, default_value = "raft")]
    protocol: Protocol,
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
    /// After a measurement (not timed): fails unless every member applied (read) every entry
    /// the leader counted, so a harness cannot count what followers never received.
    fn check(&mut self) -> anyhow::Result<()>;
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
    harness.check()?;
    Ok(committed as f64 / elapsed)
}

// ---- consensus-core ------------------------------------------------------------------------------

/// The bench's host: writes go to the engine's [`MemStorage`] and are durable at once; messages
/// are collected for delivery; the "state machine" reads every committed entry (counting the
/// data entries), by value when the protocol hands copies over ([`Host::apply`]) and by
/// reference when it leaves them in storage ([`Host::apply_stored`]) — as omnipaxos' side
/// reads every decided entry (there `read_decided_suffix` can only hand out copies).
struct BenchHost<M> {
    messages: Vec<M>,
    /// Data entries applied since the caller last took the count.
    applied_data: usize,
    /// Highest index applied since the caller last looked.
    applied_last: Option<u64>,
    /// `applied / COMPACT_EVERY` at the last compaction.
    compacted_round: u64,
    written: u64,
}

impl<M> BenchHost<M> {
    fn new() -> Self {
        BenchHost {
            messages: Vec::new(),
            applied_data: 0,
            applied_last: None,
            compacted_round: 0,
            written: 0,
        }
    }

    fn read(&mut self, entry: &Entry) {
        if matches!(entry.payload, EntryPayload::Data(_)) {
            self.applied_data += 1;
        }
        self.applied_last = Some(entry.index);
    }
}

impl<C> Host<C> for BenchHost<C::Message>
where
    C: Consensus<Storage = MemStorage<<C as Consensus>::HardState>>,
{
    type Error = consensus_core::Error;

    fn send(&mut self, message: C::Message) -> Result<(), Self::Error> {
        self.messages.push(message);
        Ok(())
    }

    fn submit(
        &mut self,
        storage: &mut MemStorage<C::HardState>,
        write: &Write<C::HardState>,
    ) -> Result<u64, Self::Error> {
        storage.write(write)?;
        self.written += 1;
        Ok(self.written)
    }

    fn submit_owned(
        &mut self,
        storage: &mut MemStorage<C::HardState>,
        write: Write<C::HardState>,
    ) -> Result<u64, Self::Error> {
        storage.write_owned(write)?;
        self.written += 1;
        Ok(self.written)
    }

    fn durable(&self) -> u64 {
        self.written
    }

    fn install_snapshot(&mut self, _snapshot: &Snapshot) -> Result<(), Self::Error> {
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Self::Error> {
        for entry in &entries {
            self.read(entry);
        }
        Ok(())
    }

    fn apply_stored(
        &mut self,
        storage: &MemStorage<C::HardState>,
        range: CommittedRange,
    ) -> Result<(), Self::Error> {
        storage.for_each_committed(range, |entry| {
            self.read(entry);
            Ok::<(), consensus_core::Error>(())
        })
    }
}

/// Any consensus-core protocol over in-memory storage, each member run by the one replica loop.
struct Core<C: Consensus<Storage = MemStorage<<C as Consensus>::HardState>>> {
    nodes: Vec<Replica<C>>,
    hosts: Vec<BenchHost<C::Message>>,
    queue: VecDeque<C::Message>,
    payload: Bytes,
    conf: ConfState,
}

impl<C: Consensus<Storage = MemStorage<<C as Consensus>::HardState>>> Core<C> {
    /// Three members built by `make`; `elect` makes member 1 run for leader.
    fn new(
        make: impl Fn(u64, MemStorage<C::HardState>) -> anyhow::Result<C>,
        elect: impl Fn(&mut C) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let conf = ConfState::with_voters([1, 2, 3]);
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            nodes.push(Replica::new(make(
                id,
                MemStorage::new_with_conf(conf.clone()),
            )?));
        }
        let mut core = Core {
            hosts: (0..3).map(|_| BenchHost::new()).collect(),
            nodes,
            queue: VecDeque::new(),
            payload: Bytes::from(vec![7u8; PAYLOAD]),
            conf,
        };
        elect(core.nodes[0].engine_mut())?;
        for _ in 0..1000 {
            core.pump();
            if core.nodes[0].engine().status().role == Role::Leader {
                return Ok(core);
            }
            for node in &mut core.nodes {
                node.engine_mut().tick();
            }
        }
        bail!("consensus-core: member 1 was not elected")
    }
}

/// The Multi-Paxos engine, member 1 running phase 1 at once.
fn paxos_core() -> anyhow::Result<Core<MultiPaxos<MemStorage<PaxosHardState>>>> {
    Core::new(
        |id, storage| {
            let mut config = PaxosConfig::new(id);
            config.max_msg_bytes = 1 << 20;
            config.max_uncommitted_bytes = 64 << 20;
            Ok(MultiPaxos::new(
                config,
                storage,
                consensus_core::seeded_rng(id),
            )?)
        },
        |paxos| Ok(paxos.campaign()?),
    )
}

/// The Raft engine, member 1 campaigning at once.
fn raft_core() -> anyhow::Result<Core<Raft<MemStorage>>> {
    Core::new(
        |id, storage| {
            let mut config = Config::new(id);
            config.max_msg_bytes = 1 << 20;
            config.max_inflight = 256;
            config.max_uncommitted_bytes = 64 << 20;
            Ok(Raft::new(config, storage, consensus_core::seeded_rng(id))?)
        },
        |raft| Ok(raft.campaign()?),
    )
}

impl<C: Consensus<Storage = MemStorage<<C as Consensus>::HardState>>> Harness for Core<C> {
    fn propose(&mut self, n: usize) -> usize {
        let leader = self.nodes[0].engine_mut();
        let mut accepted = 0;
        while accepted < n && leader.propose(self.payload.clone()).is_ok() {
            accepted += 1;
        }
        accepted
    }

    fn pump(&mut self) -> usize {
        let mut committed = 0;
        let mut idle_ticks = 0;
        loop {
            let mut moved = false;
            for (i, (node, host)) in self.nodes.iter_mut().zip(&mut self.hosts).enumerate() {
                if let Err(e) = node.drive(host) {
                    panic!("replica loop failed: {e}");
                }
                let applied = std::mem::take(&mut host.applied_data);
                moved |= !host.messages.is_empty() || host.applied_last.is_some();
                self.queue.extend(host.messages.drain(..));
                if let Some(last) = host.applied_last.take() {
                    if i == 0 {
                        committed += applied;
                    }
                    // Compact each time the applied index crosses a multiple of
                    // COMPACT_EVERY (the rule omnipaxos' side follows; testing `last` for an
                    // exact multiple missed every crossing that fell inside a batch, so logs
                    // grew without bound).
                    if last / COMPACT_EVERY > host.compacted_round {
                        host.compacted_round = last / COMPACT_EVERY;
                        // Keep a margin so a follower a little behind still finds its entries.
                        let _ = node.engine_mut().storage_mut().compact(
                            last - COMPACT_EVERY / 2,
                            self.conf.clone(),
                            Bytes::new(),
                        );
                    }
                }
            }
            while let Some(message) = self.queue.pop_front() {
                moved = true;
                let to = message.to() as usize - 1;
                let _ = self.nodes[to].engine_mut().step(message);
            }
            if !moved {
                if committed == 0 && idle_ticks < 4 {
                    // A protocol that moves its commit point on heartbeats (Multi-Paxos tells
                    // followers, and learns its own chosen slots, with the next message) needs
                    // time to pass when nothing else moves.
                    idle_ticks += 1;
                    for node in &mut self.nodes {
                        node.engine_mut().tick();
                    }
                    continue;
                }
                return committed;
            }
        }
    }

    fn check(&mut self) -> anyhow::Result<()> {
        // A protocol that tells followers the commit point with the next message needs a tick
        // or two of quiet time before they catch up.
        for _ in 0..20 {
            let leader = self.nodes[0].engine().status().applied;
            if self
                .nodes
                .iter()
                .all(|n| n.engine().status().applied == leader)
            {
                return Ok(());
            }
            for node in &mut self.nodes {
                node.engine_mut().tick();
            }
            self.pump();
        }
        let applied: Vec<u64> = self
            .nodes
            .iter()
            .map(|n| n.engine().status().applied)
            .collect();
        bail!("consensus-core: members applied {applied:?}, not all as far as the leader")
    }
}

#[cfg(feature = "omnipaxos")]
mod omnipaxos;
#[cfg(feature = "raft-rs")]
mod raft_rs;

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
    eprintln!(
        "bench core: building xtask in release with the peer libraries (first time: a few minutes)"
    );
    let status = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "xtask",
            "--features",
            "raft-rs,omnipaxos",
            "--",
            "bench",
            "core",
            "--no-reexec",
            "--protocol",
            args.protocol.name(),
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
        bail!("bench core (release, with peers) failed with {status}");
    }
    Ok(())
}

fn best_of(
    runs: usize,
    make: &dyn Fn(usize) -> anyhow::Result<Box<dyn Harness>>,
    outstanding: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..runs.max(1) {
        let mut harness = make(outstanding)?;
        best = best.max(measure(harness.as_mut(), outstanding, seconds)?);
    }
    Ok(best)
}

/// The engine under test and its peer, as harness factories taking the window they will run with.
type Factory = Box<dyn Fn(usize) -> anyhow::Result<Box<dyn Harness>>>;

fn factories(protocol: Protocol, with_peer: bool) -> (Factory, Option<Factory>) {
    let _ = with_peer;
    match protocol {
        Protocol::Raft => {
            let core: Factory = Box::new(|_| Ok(Box::new(raft_core()?) as Box<dyn Harness>));
            #[cfg(feature = "raft-rs")]
            let peer: Option<Factory> = with_peer
                .then(|| -> Factory { Box::new(|_| Ok(Box::new(raft_rs::RaftRs::new()?) as _)) });
            #[cfg(not(feature = "raft-rs"))]
            let peer: Option<Factory> = None;
            (core, peer)
        }
        Protocol::MultiPaxos => {
            let core: Factory = Box::new(|_| Ok(Box::new(paxos_core()?) as Box<dyn Harness>));
            #[cfg(feature = "omnipaxos")]
            let peer: Option<Factory> = with_peer.then(|| -> Factory {
                Box::new(|outstanding: usize| {
                    // A batch larger than the window never fills: omnipaxos would then wait for
                    // its flush tick on every proposal.
                    let batch = OMNIPAXOS_BATCH.min(outstanding);
                    Ok(Box::new(omnipaxos::OmniPaxosPeer::new(batch)?) as _)
                })
            });
            #[cfg(not(feature = "omnipaxos"))]
            let peer: Option<Factory> = None;
            (core, peer)
        }
    }
}

/// omnipaxos' batch size (its default of 1 means no batching; consensus-core batches every
/// proposal made between two `ready()`s into one message).
#[cfg(feature = "omnipaxos")]
const OMNIPAXOS_BATCH: usize = 64;

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let peers_built = cfg!(feature = "raft-rs") && cfg!(feature = "omnipaxos");
    let with_peer = peers_built && !args.core_only;
    let release = !cfg!(debug_assertions);
    if !args.no_reexec && (!release || (!peers_built && !args.core_only)) {
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
    let (name, peer_name) = (args.protocol.name(), args.protocol.peer());
    println!(
        "bench core: {name}, 3 members in one process, in-memory storage, 16-byte proposals; \
         best of {} runs of {:.1} CPU-s each",
        args.runs, args.seconds
    );
    println!(
        "{:>12} {:>22} {:>22} {:>8}",
        "outstanding",
        "consensus-core ops/s",
        format!("{peer_name} ops/s"),
        "ratio"
    );
    let (core_factory, peer_factory) = factories(args.protocol, with_peer);
    let mut last_ratio = None;
    for &outstanding in &args.outstanding {
        let core = best_of(args.runs, &*core_factory, outstanding, args.seconds)?;
        let peer = match &peer_factory {
            Some(make) => Some(best_of(args.runs, &**make, outstanding, args.seconds)?),
            None => None,
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
    let headline = match args.protocol {
        Protocol::Raft => "core-vs-raft-rs",
        Protocol::MultiPaxos => "core-vs-omnipaxos",
    };
    match last_ratio {
        Some(ratio) => println!("{headline}: {ratio:.2}"),
        None => println!("{headline}: n/a ({peer_name} not measured at 256 outstanding)"),
    }
    Ok(())
}
