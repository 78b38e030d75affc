//! `cargo xtask bench cluster [--peer etcd | --protocol zab --peer zookeeper]`: a local 3-node
//! Quorate cluster (and, with `--peer etcd`, a local 3-member etcd 3.4 cluster; with `--peer
//! zookeeper`, a local 3-server ZooKeeper 3.8 ensemble, see [`zookeeper_kv`]) driven by one load
//! generator.
//!
//! For each client count (1, 16, 64, 256 by default) the generator runs that many concurrent
//! tasks (closed loop: each waits for its reply before sending the next request) that together
//! issue `--ops` puts of 16 B keys and 256 B values, then `--ops` linearizable gets of the same
//! keys (each checked against the value written). Per row: ops/s and p50/p99/max latency
//! (hdrhistogram, µs), the servers' CPU per op (`srv/op`, all processes) and, for writes, the
//! busiest server's (`node/op`: with a machine per node that is what bounds a leader, while a
//! leaderless mode spreads it). With a peer: ratios Quorate ÷ etcd for throughput and p99, SVG plots, and
//! the last line `cluster-vs-etcd writes@64: <ratio>`. Against ZooKeeper a third phase per row
//! reads at ZooKeeper's own guarantee (session-consistent: Quorate `sequential` against plain
//! `getData`; the linearizable phase is `sync`+`getData` there), and the last line is
//! `cluster-zab-vs-zookeeper writes@64: <ratio>`.
//!
//! The load generator must not favour either system, so it runs in release mode with the same
//! runtime for both: when invoked from a debug build, or with `--peer etcd` without the `etcd`
//! feature, the command installs what it needs (`protoc`, `etcd`) and re-runs itself as
//! `cargo run -p xtask --release [--features etcd] -- bench cluster ...`.
//!
//! Every process it starts runs under a [`Supervisor`](crate::cluster::Supervisor) that kills it
//! on drop, and all data lives in one temporary directory removed at the end, so an error, a
//! panic or Ctrl-C leaves nothing behind.

use std::future::Future;
use std::path::PathBuf;
#[cfg(test)]
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cluster;
use crate::etcd;
use crate::plot;
use crate::zookeeper;

mod zookeeper_kv;

/// Arguments of `cargo xtask bench cluster`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Also run this system as a baseline, in the same run with the same load generator.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// Protocols the Quorate cluster runs, each a system of its own in the same run (Raft always
    /// runs first, as the reference the others are compared with).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "raft")]
    protocol: Vec<Protocol>,
    /// Concurrent client tasks, one row each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Puts per row (and as many gets).
    #[arg(long, default_value_t = 10_000)]
    ops: usize,
    /// Folder for the temporary data directories (default: target/bench-cluster, on the disk
    /// the build uses, so fsync costs what it costs there).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where to write the SVG plots (default: target/bench-cluster).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the data directories and server logs (for looking into a run) instead of removing them.
    #[arg(long)]
    keep: bool,
    /// Run every system this many times, alternating (round 1: each system once, then round
    /// 2…), and give each headline ratio as the median of the rounds' ratios: the machine drifts
    /// between systems run minutes apart, alternating samples both under the same drift.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Skip the Quorate cluster (to check the harness against the peer alone).
    #[arg(long, hide = true)]
    no_quorate: bool,
    /// `peer`: also run the node with `replication = "peer"` (W=1 and W=2) beside Raft, and
    /// measure convergence after a heal (`bench_cluster_peer`).
    #[arg(long, value_enum, default_value = "consensus")]
    mode: Mode,
    /// With `--mode primary-backup`: the ack modes, each a system of its own.
    #[arg(long, value_delimiter = ',', default_value = "all,quorum,async")]
    ack: Vec<node::config::AckSetting>,
    /// With `--mode peer`: keys written while a node is cut off, one convergence round each.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    divergent: Vec<usize>,
    /// Measure sharded clusters instead: 3 nodes with each of these shard counts; what `--measure`
    /// says.
    #[arg(long, value_delimiter = ',')]
    shards: Vec<usize>,
    /// With `--shards`: `idle` is the servers' CPU while idle with quiescence off (the baseline)
    /// and on (`bench_cluster_shards`); `load` is the usual put and get rows per `--clients`, keys
    /// spread over the shards, against 1 shard (`bench_cluster_shard_load`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "idle,load")]
    measure: Vec<ShardMeasure>,
    /// With `--shards`: seconds of idle time measured per run.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Run in this build even if it is a debug build (figures of the load generator suffer).
    #[arg(long, hide = true)]
    no_reexec: bool,
    /// Cross-shard transactions instead (`bench_cluster_txn`): a 2-shard cluster, single put vs
    /// 1-shard vs 2-shard transaction latency and throughput per `--clients`, `--ops` per row.
    #[arg(long)]
    txn: bool,
}

impl Args {
    /// Whether each row also measures session-consistent reads: against ZooKeeper, whose plain
    /// reads are that.
    fn sequential_reads(&self) -> bool {
        self.peer == Some(Peer::Zookeeper)
    }
}

/// A protocol the Quorate nodes run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Raft.
    Raft,
    /// Multi-Paxos.
    MultiPaxos,
    /// Zab.
    Zab,
}

impl Protocol {
    fn node(self) -> node::config::Protocol {
        match self {
            Protocol::Raft => node::config::Protocol::Raft,
            Protocol::MultiPaxos => node::config::Protocol::MultiPaxos,
            Protocol::Zab => node::config::Protocol::Zab,
        }
    }
}

/// Which replication the Quorate systems run besides Raft.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Consensus protocols only.
    Consensus,
    /// Also peer-to-peer replication.
    Peer,
    /// Also primary-backup replication, one system per `--ack` mode (`bench_cluster_primary`).
    PrimaryBackup,
}

/// What `--shards` measures.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardMeasure {
    /// Idle groups' CPU, quiescence off and on.
    Idle,
    /// Writes/s and CPU per op as shards grow.
    Load,
}

/// A baseline system.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// etcd 3.4 (Debian package `etcd-server`), through the `etcd-client` crate.
    Etcd,
    /// Apache ZooKeeper 3.8 (Debian package `zookeeper`), through the `zookeeper-client` crate;
    /// compared with the `--protocol zab` run.
    Zookeeper,
}

/// Key and value sizes of the workload.
pub const KEY_SIZE: usize = 16;
/// Value size of the workload.
pub const VALUE_SIZE: usize = 256;
/// A request that takes longer than this fails the run (the bench must end on its own).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Members of each cluster.
const MEMBERS: usize = 3;
/// Set on the re-run so it never re-runs again.
const REEXEC_ENV: &str = "QUORATE_BENCH_CLUSTER_REEXEC";

/// One handle of a system under test, as used by one client task.
pub trait KvHandle: Clone + Send + 'static {
    /// Writes `value` at `key`; returns once the write is durable on a majority.
    fn put(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// A linearizable read of `key`.
    fn get(&mut self, key: Vec<u8>)
        -> impl Future<Output = anyhow::Result<Option<Vec<u8>>>> + Send;
    /// A session-consistent read of `key` (read-your-writes, monotonic); a system without one
    /// reads linearizably.
    fn get_sequential(
        &mut self,
        key: Vec<u8>,
    ) -> impl Future<Output = anyhow::Result<Option<Vec<u8>>>> + Send {
        self.get(key)
    }
}

/// A system under test: hands out one handle per client task (sharing connections as the
/// system's client does best).
pub trait System {
    /// The per-task handle.
    type Handle: KvHandle;
    /// Name in tables and plots.
    fn name(&self) -> String;
    /// `clients` handles, one per task.
    fn handles(&self, clients: usize) -> impl Future<Output = anyhow::Result<Vec<Self::Handle>>>;
}

/// Throughput and latency of one phase (puts or gets) at one client count.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    /// Operations completed.
    pub ops: u64,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Maximum latency, µs.
    pub max_us: u64,
    /// CPU time (user + system) the system's server processes used during the phase.
    pub server_cpu: Duration,
    /// CPU time the load generator (this process) used during the phase.
    pub client_cpu: Duration,
    /// CPU time of the busiest server process during the phase: what bounds throughput once each
    /// node has a machine of its own (a leader's cost, against a leaderless node's share).
    pub busiest_server_cpu: Duration,
}

impl PhaseStats {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Server CPU time per operation, µs: what the system costs the machine, which decides
    /// throughput once the CPUs are busy, and is less noisy than throughput on a shared machine.
    pub fn server_cpu_us_per_op(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// The busiest server process's CPU time per operation, µs. With one core per node and the
    /// CPU the limit, `1e6 / this` would be the writes/s the system could reach: a projection
    /// from measured CPU, not a throughput measurement (disk and network are left out).
    pub fn busiest_server_cpu_us_per_op(&self) -> f64 {
        self.busiest_server_cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// Load generator CPU time per operation, µs (the client library's cost).
    pub fn client_cpu_us_per_op(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
}

/// CPU time (user + system, all threads) of process `pid` so far, from `/proc/<pid>/stat`; zero if
/// it cannot be read (not Linux, process gone).
pub(crate) fn process_cpu(pid: &str) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_cpu(&stat))
        .unwrap_or_default()
}

/// utime + stime of a `/proc/<pid>/stat` line.
fn stat_cpu(stat: &str) -> Option<Duration> {
    // Fields after the parenthesised command name (which may hold spaces and parentheses): the
    // state is field 3, utime and stime are fields 14 and 15, in USER_HZ (100 per second).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time of each server process of `pids` and of this process.
fn cpu_now(pids: &[u32]) -> (Vec<Duration>, Duration) {
    let servers = pids
        .iter()
        .map(|pid| process_cpu(&pid.to_string()))
        .collect();
    (servers, process_cpu("self"))
}

/// The servers' CPU between two readings of [`cpu_now`]: in all, and of the busiest one.
fn server_cpu_between(before: &[Duration], after: &[Duration]) -> (Duration, Duration) {
    let used: Vec<Duration> = before
        .iter()
        .zip(after)
        .map(|(b, a)| a.saturating_sub(*b))
        .collect();
    (
        used.iter().sum(),
        used.iter().max().copied().unwrap_or_default(),
    )
}

/// One row: a system at one client count.
#[derive(Debug, Clone)]
pub struct Row {
    /// Concurrent client tasks.
    pub clients: usize,
    /// The put phase.
    pub writes: PhaseStats,
    /// The linearizable get phase.
    pub reads: PhaseStats,
    /// The session-consistent get phase (only against ZooKeeper).
    pub seq_reads: Option<PhaseStats>,
}

/// All rows of one system.
#[derive(Debug, Clone)]
pub struct SystemRun {
    /// Name in tables and plots.
    pub name: String,
    /// One row per client count, in order.
    pub rows: Vec<Row>,
}

/// The key of operation `i` of task `task` in row `row`: exactly [`KEY_SIZE`] bytes.
fn key(row: usize, task: usize, i: usize) -> Vec<u8> {
    let k = format!("{:02x}{:06x}{:08x}", row & 0xff, task & 0xff_ffff, i);
    debug_assert_eq!(k.len(), KEY_SIZE);
    k.into_bytes()
}

/// The value stored at `key`: [`VALUE_SIZE`] bytes that start with the key, so a get can check it
/// read what was written there.
fn value(key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_SIZE);
    v.extend_from_slice(key);
    v.resize(VALUE_SIZE, b'.');
    v
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    GetSequential,
}

/// Runs one phase: `ops` operations split over `handles.len()` concurrent tasks.
async fn phase<H: KvHandle>(
    handles: Vec<H>,
    pids: &[u32],
    row: usize,
    ops: usize,
    op: Op,
    progress: &ProgressBar,
) -> anyhow::Result<PhaseStats> {
    let tasks = handles.len();
    let cpu_before = cpu_now(pids);
    let start = Instant::now();
    let mut joins = tokio::task::JoinSet::new();
    for (task, mut handle) in handles.into_iter().enumerate() {
        let count = ops / tasks + usize::from(task < ops % tasks);
        let progress = progress.clone();
        joins.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
            for i in 0..count {
                let k = key(row, task, i);
                let t0 = Instant::now();
                match op {
                    Op::Put => {
                        let v = value(&k);
                        tokio::time::timeout(OP_TIMEOUT, handle.put(k, v))
                            .await
                            .context("put timed out")?
                            .context("put failed")?;
                    }
                    Op::Get | Op::GetSequential => {
                        let got = if op == Op::Get {
                            tokio::time::timeout(OP_TIMEOUT, handle.get(k.clone())).await
                        } else {
                            tokio::time::timeout(OP_TIMEOUT, handle.get_sequential(k.clone())).await
                        };
                        let got = got.context("get timed out")?.context("get failed")?;
                        if got.as_deref() != Some(&value(&k)[..]) {
                            bail!(
                                "get of {} returned {:?}, not the value written",
                                String::from_utf8_lossy(&k),
                                got.map(
                                    |v| String::from_utf8_lossy(&v[..v.len().min(32)]).into_owned()
                                )
                            );
                        }
                    }
                }
                hist.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                progress.inc(1);
            }
            anyhow::Ok(hist)
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    while let Some(r) = joins.join_next().await {
        let hist = r.context("client task panicked")??;
        all.add(&hist)?;
    }
    let elapsed = start.elapsed();
    let cpu_after = cpu_now(pids);
    let (server_cpu, busiest_server_cpu) = server_cpu_between(&cpu_before.0, &cpu_after.0);
    Ok(PhaseStats {
        server_cpu,
        busiest_server_cpu,
        client_cpu: cpu_after.1.saturating_sub(cpu_before.1),
        ops: all.len(),
        elapsed,
        p50_us: all.value_at_quantile(0.50),
        p99_us: all.value_at_quantile(0.99),
        max_us: all.max(),
    })
}

/// Runs every row against `system` with the client counts and sequential-read choice of `args`.
async fn run_system<S: System>(
    system: &S,
    pids: &[u32],
    args: &Args,
    progress: &ProgressBar,
) -> anyhow::Result<SystemRun> {
    run_rows(
        system,
        pids,
        &args.clients,
        args.ops,
        args.sequential_reads(),
        progress,
    )
    .await
}

/// Runs every row against `system`: a short warm-up, then puts and gets per client count (and
/// session-consistent gets too when `sequential`).
pub(crate) async fn run_rows<S: System>(
    system: &S,
    pids: &[u32],
    clients: &[usize],
    ops: usize,
    sequential: bool,
    progress: &ProgressBar,
) -> anyhow::Result<SystemRun> {
    let name = system.name();
    progress.set_message(format!("{name}: warm-up"));
    let warm = system.handles(16).await?;
    let hidden = ProgressBar::hidden();
    phase(warm, pids, 0xff, 1000, Op::Put, &hidden).await?;
    let mut rows = Vec::new();
    for (r, &c) in clients.iter().enumerate() {
        // The same handles (and connections) for the puts and the gets that follow them.
        let handles = system.handles(c).await?;
        progress.set_message(format!("{name}: {c} clients, puts"));
        let writes = phase(handles.clone(), pids, r, ops, Op::Put, progress).await?;
        progress.set_message(format!("{name}: {c} clients, linearizable gets"));
        let reads = phase(handles.clone(), pids, r, ops, Op::Get, progress).await?;
        let seq_reads = if sequential {
            progress.set_message(format!("{name}: {c} clients, sequential gets"));
            Some(phase(handles, pids, r, ops, Op::GetSequential, progress).await?)
        } else {
            None
        };
        rows.push(Row {
            clients: c,
            writes,
            reads,
            seq_reads,
        });
    }
    Ok(SystemRun { name, rows })
}

/// A progress bar of `total` operations, as every cluster benchmark shows it.
pub(crate) fn progress_bar(total: u64) -> ProgressBar {
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {percent:>3}% {per_sec:>12} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    progress
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs positive client counts, e.g. 1,16,64,256");
    }
    if args.ops == 0 {
        bail!("--ops must be positive");
    }
    let need_etcd_feature = args.peer == Some(Peer::Etcd) && !cfg!(feature = "etcd");
    let need_zk_feature = args.peer == Some(Peer::Zookeeper) && !cfg!(feature = "zookeeper");
    let debug_build = cfg!(debug_assertions) && !args.no_reexec;
    if (need_etcd_feature || need_zk_feature || debug_build)
        && std::env::var_os(REEXEC_ENV).is_none()
    {
        return reexec(&args);
    }
    if need_etcd_feature {
        bail!("this build of xtask lacks the `etcd` feature: run `cargo run -p xtask --release --features etcd -- bench cluster --peer etcd`");
    }
    if need_zk_feature {
        bail!("this build of xtask lacks the `zookeeper` feature: run `cargo run -p xtask --release --features zookeeper -- bench cluster --protocol zab --peer zookeeper`");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    if args.txn {
        return runtime.block_on(async {
            tokio::select! {
                r = crate::bench_cluster_txn::run(&args.clients, args.ops, args.keep) => r,
                _ = cluster::interrupted() => bail!("interrupted: every process stopped, data removed"),
            }
        });
    }
    runtime.block_on(async {
        tokio::select! {
            r = run_async(args) => r,
            _ = cluster::interrupted() => bail!("interrupted: every process stopped, data removed"),
        }
    })
}

/// Re-runs this command as a release build, with the `etcd` feature when the peer is etcd,
/// after installing `protoc` (needed to build `etcd-client`) and `etcd` when missing.
fn reexec(args: &Args) -> anyhow::Result<()> {
    let mut features = Vec::new();
    if args.peer == Some(Peer::Etcd) {
        etcd::ensure_etcd()?;
        if etcd::which("protoc").is_none() {
            eprintln!("protoc is not on PATH (etcd-client's build needs it): installing protobuf-compiler with apt-get");
            etcd::apt_install("protobuf-compiler").context(
                "installing protoc; do it by hand with: apt-get install -y protobuf-compiler",
            )?;
        }
        features = vec!["--features", "etcd"];
    }
    if args.peer == Some(Peer::Zookeeper) {
        zookeeper::ensure_zookeeper()?;
        features = vec!["--features", "zookeeper"];
    }
    let mut cmd = cluster::cargo();
    cmd.args(["run", "--quiet", "-p", "xtask", "--release"])
        .args(&features)
        .args(["--", "bench", "cluster"])
        .args(std::env::args_os().skip_while(|a| a != "cluster").skip(1))
        .env(REEXEC_ENV, "1");
    eprintln!(
        "running the load generator as a release build: cargo run -p xtask --release {}-- bench cluster ...",
        features.iter().map(|f| format!("{f} ")).collect::<String>()
    );
    // The terminal's Ctrl-C reaches the re-run too, which cleans up; wait for it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .context("running cargo")?;
        loop {
            tokio::select! {
                s = child.wait() => break s.context("waiting for cargo"),
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    })?;
    if !status.success() {
        bail!("the release run of the benchmark failed ({status})");
    }
    Ok(())
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    let base = cluster::target_dir().join("bench-cluster");
    let parent = args.dir.clone().unwrap_or_else(|| base.clone());
    let out = args.out.clone().unwrap_or(base);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;

    let quorate_bin = if args.no_quorate {
        None
    } else {
        Some(cluster::build_quorate()?)
    };
    let etcd_bin = match args.peer {
        Some(Peer::Etcd) => Some(etcd::ensure_etcd()?),
        _ => None,
    };
    let zk_install = match args.peer {
        Some(Peer::Zookeeper) => Some(zookeeper::ensure_zookeeper()?),
        _ => None,
    };

    if !args.shards.is_empty() {
        let bin = cluster::build_quorate()?;
        if args.measure.contains(&ShardMeasure::Idle) {
            crate::bench_cluster_shards::run_idle(
                &bin,
                tmp.path(),
                &args.shards,
                Duration::from_secs(args.idle_secs),
            )
            .await?;
        }
        if args.measure.contains(&ShardMeasure::Load) {
            if args.shards.iter().any(|&n| n > 4096) {
                bail!("--measure load takes shard counts up to 4096");
            }
            crate::bench_cluster_shard_load::run(
                &bin,
                tmp.path(),
                &out,
                &args.shards,
                &args.clients,
                args.ops,
            )
            .await?;
        }
        return Ok(());
    }
    let mut protocols = vec![Protocol::Raft];
    for &p in &args.protocol {
        if !protocols.contains(&p) {
            protocols.push(p);
        }
    }
    let quorate_systems = if quorate_bin.is_some() {
        protocols.len()
    } else {
        0
    };
    let pb_systems = if args.mode == Mode::PrimaryBackup && quorate_bin.is_some() {
        args.ack.len()
    } else {
        0
    };
    let systems =
        quorate_systems + pb_systems + usize::from(etcd_bin.is_some() || zk_install.is_some());
    let phases = if args.sequential_reads() { 3 } else { 2 };
    let rounds = args.rounds.max(1);
    let total = (rounds * systems * args.clients.len() * args.ops * phases) as u64;
    let progress = progress_bar(total);

    let mut all_rounds = Vec::new();
    for round in 0..rounds {
        let round_dir = if rounds == 1 {
            tmp.path().to_path_buf()
        } else {
            tmp.path().join(format!("round-{}", round + 1))
        };
        let mut runs = Vec::new();
        if let Some(etcd_bin) = &etcd_bin {
            let version = etcd::version(etcd_bin);
            progress.set_message(format!("starting 3 etcd members ({version})"));
            let run = run_etcd(
                etcd_bin,
                &round_dir.join("etcd"),
                &version,
                &args,
                &progress,
            )
            .await?;
            runs.push(run);
        }
        if let Some(install) = &zk_install {
            let version = zookeeper::version();
            progress.set_message(format!("starting 3 ZooKeeper servers ({version})"));
            let dir = round_dir.join("zookeeper");
            let run =
                zookeeper_kv::run_zookeeper(install, &dir, &version, &args, &progress).await?;
            runs.push(run);
        }
        if let Some(bin) = &quorate_bin {
            for &protocol in &protocols {
                let name = protocol.node().name();
                progress.set_message(format!("starting 3 Quorate nodes ({name})"));
                let dir = round_dir.join(format!("quorate-{name}"));
                let run = run_quorate(bin, &dir, protocol, &args, &progress).await?;
                runs.push(run);
            }
        }
        let mut convergence = Vec::new();
        let last = round + 1 == rounds;
        if let (Some(bin), Mode::Peer) = (&quorate_bin, args.mode) {
            let peer_dir = round_dir.join("quorate-peer");
            runs.extend(
                crate::bench_cluster_peer::run_peer(
                    bin,
                    &peer_dir,
                    &args.clients,
                    args.ops,
                    &progress,
                )
                .await?,
            );
            // Convergence is measured once, in the last round.
            for repair in crate::bench_cluster_peer::Repair::ALL
                .into_iter()
                .filter(|_| last)
            {
                convergence.extend(
                    crate::bench_cluster_peer::convergence(
                        bin,
                        &peer_dir.join(format!("repair-{}", convergence.len())),
                        &args.divergent,
                        repair,
                        &progress,
                    )
                    .await?,
                );
            }
        }
        let mut failovers = Vec::new();
        if let (Some(bin), Mode::PrimaryBackup) = (&quorate_bin, args.mode) {
            let (pb_runs, pb_failovers) = crate::bench_cluster_primary::run_primary(
                bin,
                &round_dir.join("quorate-primary-backup"),
                &args.ack,
                &args.clients,
                args.ops,
                last,
                &progress,
            )
            .await?;
            runs.extend(pb_runs);
            failovers = pb_failovers;
        }
        all_rounds.push((runs, convergence, failovers));
    }
    progress.finish_and_clear();

    println!(
        "cluster benchmark: 3 members each on loopback, fsync on; closed-loop client tasks; {} puts ({KEY_SIZE} B keys, {VALUE_SIZE} B values) then {} linearizable gets{} per row",
        args.ops,
        args.ops,
        if args.sequential_reads() {
            format!(" then {} sequential (session-consistent) gets", args.ops)
        } else {
            String::new()
        }
    );
    println!(
        "latency in µs per request; data under {}",
        tmp.path().display()
    );
    if rounds > 1 {
        println!(
            "{rounds} rounds, the systems alternating; each headline ratio is the median of the rounds' ratios"
        );
    }
    // Per round: the headline against the peer, and each other protocol's against Raft.
    let mut headlines = Vec::new();
    let mut others_by_round = Vec::new();
    for (r, (runs, _, _)) in all_rounds.iter().enumerate() {
        if rounds > 1 {
            println!();
            println!("== round {} of {rounds}", r + 1);
        }
        let (headline, others) = print_round(runs);
        headlines.push(headline);
        others_by_round.push(others);
    }
    let (runs, convergence, failovers) = all_rounds.last().expect("at least one round");
    let quorate = runs.iter().find(|r| r.name.starts_with("quorate"));
    let peer = runs.iter().find(|r| !r.name.starts_with("quorate"));
    if !convergence.is_empty() {
        println!();
        crate::bench_cluster_peer::print_convergence(convergence);
    }
    if !failovers.is_empty() {
        println!();
        crate::bench_cluster_primary::print_failovers(failovers);
    }
    if !runs.is_empty() {
        let prefix = if zk_install.is_some() {
            "cluster-zab-vs-zookeeper"
        } else {
            "cluster"
        };
        let mut files = plot::write_plots(&out, prefix, runs)?;
        if !convergence.is_empty() {
            files.push(crate::bench_cluster_peer::plot_convergence(
                &out,
                convergence,
            )?);
        }
        println!();
        for f in files {
            println!("plot: {}", f.display());
        }
    }
    if args.keep {
        let kept = tmp.keep();
        println!("kept: {} (data directories and logs)", kept.display());
    } else {
        drop(tmp);
    }
    let names: Vec<String> = others_by_round
        .last()
        .map(|o| o.iter().map(|(name, _)| name.clone()).collect())
        .unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        let ratios: Vec<Option<f64>> = others_by_round.iter().map(|o| o[i].1).collect();
        let name = name.trim_start_matches("quorate ");
        match median_of(&ratios) {
            Some(ratio) => println!(
                "cluster-{name}-vs-raft writes@64: {ratio:.2}{}",
                rounds_detail(&ratios)
            ),
            None => println!("cluster-{name}-vs-raft writes@64: n/a (64 is not in --clients)"),
        }
    }
    if zk_install.is_some() {
        let zab = runs.iter().find(|r| r.name == "quorate zab");
        zookeeper_kv::print_headline(zab, peer);
        return Ok(());
    }
    match (median_of(&headlines), quorate, peer) {
        (Some(ratio), _, _) => println!(
            "cluster-vs-etcd writes@64: {ratio:.2}{}",
            rounds_detail(&headlines)
        ),
        (None, Some(_), Some(_)) => {
            println!("cluster-vs-etcd writes@64: n/a (64 is not in --clients)")
        }
        (None, Some(q), None) => match q.rows.iter().find(|r| r.clients == 64) {
            Some(r) => println!("cluster writes@64: {:.0}/s", r.writes.ops_per_sec()),
            None => println!("cluster writes@64: n/a (64 is not in --clients)"),
        },
        _ => {}
    }
    Ok(())
}

async fn run_etcd(
    bin: &std::path::Path,
    dir: &std::path::Path,
    version: &str,
    args: &Args,
    progress: &ProgressBar,
) -> anyhow::Result<SystemRun> {
    let mut cluster = etcd::EtcdCluster::start(bin, dir, MEMBERS)?;
    let result = async {
        cluster.wait_listening(Duration::from_secs(30)).await?;
        let system = etcd_system(&cluster.client_urls, version).await?;
        let run = run_system(&system, &cluster.pids(), args, progress).await;
        cluster.check_running()?;
        run
    }
    .await;
    progress.set_message("stopping etcd");
    cluster.stop().await?;
    result
}

#[cfg(feature = "etcd")]
async fn etcd_system(urls: &[String], version: &str) -> anyhow::Result<etcd_kv::Etcd> {
    etcd_kv::Etcd::connect(urls, version).await
}

#[cfg(not(feature = "etcd"))]
async fn etcd_system(_urls: &[String], _version: &str) -> anyhow::Result<NoSystem> {
    bail!("built without the `etcd` feature")
}

/// Stands in for a system whose client is not compiled in.
#[cfg(not(feature = "etcd"))]
#[derive(Clone)]
struct NoSystem;

#[cfg(not(feature = "etcd"))]
impl KvHandle for NoSystem {
    async fn put(&mut self, _key: Vec<u8>, _value: Vec<u8>) -> anyhow::Result<()> {
        bail!("no client")
    }
    async fn get(&mut self, _key: Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
        bail!("no client")
    }
}

#[cfg(not(feature = "etcd"))]
impl System for NoSystem {
    type Handle = NoSystem;
    fn name(&self) -> String {
        "none".into()
    }
    async fn handles(&self, _clients: usize) -> anyhow::Result<Vec<NoSystem>> {
        bail!("no client")
    }
}

#[cfg(feature = "etcd")]
mod etcd_kv {
    //! etcd through `etcd-client`: connections to the leader's client URL, shared by the tasks.

    use anyhow::{bail, Context};
    use etcd_client::{Client, KvClient};

    use super::{KvHandle, System};

    /// gRPC connections shared by the client tasks (HTTP/2 multiplexes the rest).
    const CONNECTIONS: usize = 8;

    /// The etcd cluster under test.
    pub struct Etcd {
        leader_url: String,
        version: String,
    }

    impl Etcd {
        /// Waits for a leader and remembers its client URL.
        pub async fn connect(urls: &[String], version: &str) -> anyhow::Result<Self> {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                for url in urls {
                    let Ok(mut client) = Client::connect([url], None).await else {
                        continue;
                    };
                    let Ok(status) = client.status().await else {
                        continue;
                    };
                    let me = status.header().map(|h| h.member_id());
                    if status.leader() != 0 && me == Some(status.leader()) {
                        return Ok(Etcd {
                            leader_url: url.clone(),
                            version: version.to_string(),
                        });
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("no etcd leader within 30 s");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }

    /// One task's handle (a clone of a shared connection).
    #[derive(Clone)]
    pub struct EtcdHandle(KvClient);

    impl KvHandle for EtcdHandle {
        async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
            self.0.put(key, value, None).await?;
            Ok(())
        }

        async fn get(&mut self, key: Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
            // etcd's Range is linearizable unless `serializable` is set.
            let resp = self.0.get(key, None).await?;
            Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
        }
    }

    impl System for Etcd {
        type Handle = EtcdHandle;

        fn name(&self) -> String {
            self.version
                .replace("etcd Version: ", "etcd ")
                .trim()
                .to_string()
        }

        async fn handles(&self, clients: usize) -> anyhow::Result<Vec<EtcdHandle>> {
            let mut conns = Vec::new();
            for _ in 0..clients.min(CONNECTIONS) {
                let client = Client::connect([&self.leader_url], None)
                    .await
                    .with_context(|| format!("connecting to etcd at {}", self.leader_url))?;
                let mut kv = client.kv_client();
                // One write per connection before the measured phase, as for Quorate.
                kv.put(format!("warm-up-{}", conns.len()), Vec::new(), None)
                    .await
                    .context("warm-up write")?;
                conns.push(kv);
            }
            Ok((0..clients)
                .map(|i| EtcdHandle(conns[i % conns.len()].clone()))
                .collect())
        }
    }
}

async fn run_quorate(
    bin: &std::path::Path,
    dir: &std::path::Path,
    protocol: Protocol,
    args: &Args,
    progress: &ProgressBar,
) -> anyhow::Result<SystemRun> {
    let ports = cluster::free_ports(MEMBERS, true)?;
    let mut nodes = cluster::QuorateCluster::start_with(bin, dir, &ports, protocol.node())?;
    let result = async {
        nodes.wait_leader(Duration::from_secs(30)).await?;
        let system = Quorate {
            config: nodes.client_config()?,
            protocol: protocol.node().name(),
        };
        let pids: Vec<u32> = nodes.pids().into_iter().map(|(_, pid)| pid).collect();
        let run = run_system(&system, &pids, args, progress).await;
        nodes.check_running()?;
        run
    }
    .await;
    progress.set_message("stopping Quorate");
    for s in nodes.stop().await {
        if s.killed {
            eprintln!(
                "{} did not stop within {:?}: killed",
                s.name,
                cluster::STOP_GRACE
            );
        }
    }
    result
}

/// Quorate through `node::client::Client`: a few clients (each one QUIC connection per member and
/// one session) shared by the tasks, as the client allows many operations at once.
pub(crate) struct Quorate {
    pub(crate) config: node::client::ClientConfig,
    pub(crate) protocol: &'static str,
}

/// Clients shared by the tasks; as many as etcd gets gRPC connections.
const QUORATE_CONNECTIONS: usize = 8;

#[derive(Clone)]
pub(crate) struct QuorateHandle(std::sync::Arc<node::client::Client>);

impl KvHandle for QuorateHandle {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.0.put(key, value).await?;
        Ok(())
    }

    async fn get(&mut self, key: Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
        let kv = self
            .0
            .get(key, node::proto::Consistency::Linearizable)
            .await?;
        Ok(kv.map(|kv| kv.value.to_vec()))
    }

    async fn get_sequential(&mut self, key: Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
        // The client fills in the newest revision its session has seen.
        let kv = self
            .0
            .get(key, node::proto::Consistency::SEQUENTIAL)
            .await?;
        Ok(kv.map(|kv| kv.value.to_vec()))
    }
}

impl System for Quorate {
    type Handle = QuorateHandle;

    fn name(&self) -> String {
        format!("quorate {}", self.protocol)
    }

    async fn handles(&self, clients: usize) -> anyhow::Result<Vec<QuorateHandle>> {
        let mut shared = Vec::new();
        for i in 0..clients.min(QUORATE_CONNECTIONS) {
            let mut config = self.config.clone();
            config.timeout = OP_TIMEOUT;
            let client = node::client::Client::connect(config)?;
            // The client connects lazily: one write here opens its connection to the leader
            // (QUIC + TLS handshake, leader discovery) before the measured phase, as the etcd
            // handles are connected before theirs.
            client
                .put(format!("warm-up-{i}").into_bytes(), Vec::new())
                .await
                .context("warm-up write")?;
            shared.push(std::sync::Arc::new(client));
        }
        Ok((0..clients)
            .map(|i| QuorateHandle(shared[i % shared.len()].clone()))
            .collect())
    }
}

pub(crate) fn print_system(run: &SystemRun) {
    println!("{}", run.name);
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}   {:>10} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "clients",
        "writes/s",
        "p50",
        "p99",
        "max",
        "srv/op",
        "node/op",
        "cli/op",
        "reads/s",
        "p50",
        "p99",
        "max",
        "srv/op",
        "cli/op"
    );
    for r in &run.rows {
        println!(
            "{:>8} {:>10.0} {:>9} {:>9} {:>9} {:>7.0} {:>7.0} {:>7.0}   {:>10.0} {:>9} {:>9} {:>9} {:>7.0} {:>7.0}",
            r.clients,
            r.writes.ops_per_sec(),
            r.writes.p50_us,
            r.writes.p99_us,
            r.writes.max_us,
            r.writes.server_cpu_us_per_op(),
            r.writes.busiest_server_cpu_us_per_op(),
            r.writes.client_cpu_us_per_op(),
            r.reads.ops_per_sec(),
            r.reads.p50_us,
            r.reads.p99_us,
            r.reads.max_us,
            r.reads.server_cpu_us_per_op(),
            r.reads.client_cpu_us_per_op(),
        );
    }
}

/// Prints Quorate ÷ peer per client count; returns the writes ratio at 64 clients.
/// Prints one round's tables and ratios; returns the headline ratio against the peer (writes@64)
/// and each other Quorate system's against Raft.
fn print_round(runs: &[SystemRun]) -> (Option<f64>, Vec<(String, Option<f64>)>) {
    for run in runs {
        println!();
        print_system(run);
        zookeeper_kv::print_sequential(run);
    }
    // Raft runs first: the reference for the peer's headline and for the other protocols.
    let quorate = runs.iter().find(|r| r.name.starts_with("quorate"));
    let peer = runs.iter().find(|r| !r.name.starts_with("quorate"));
    let mut headline = None;
    if let (Some(q), Some(p)) = (quorate, peer) {
        println!();
        headline = print_ratios(q, p);
    }
    let mut others = Vec::new();
    for other in runs
        .iter()
        .filter(|r| r.name.starts_with("quorate"))
        .skip(1)
    {
        if let Some(raft) = quorate {
            println!();
            others.push((other.name.clone(), print_ratios(other, raft)));
        }
        if let Some(p) = peer {
            println!();
            print_ratios(other, p);
            zookeeper_kv::print_sequential_ratios(other, p);
        }
    }
    (headline, others)
}

/// The median of the rounds' ratios that exist (the lower middle one of an even count), if any.
fn median_of(ratios: &[Option<f64>]) -> Option<f64> {
    let mut known: Vec<f64> = ratios.iter().flatten().copied().collect();
    known.sort_by(f64::total_cmp);
    if known.is_empty() {
        return None;
    }
    Some(known[(known.len() - 1) / 2])
}

/// " (median of 3 rounds: 2.85, 4.10, 4.40)", or nothing for one round.
fn rounds_detail(ratios: &[Option<f64>]) -> String {
    if ratios.len() < 2 {
        return String::new();
    }
    let each: Vec<String> = ratios
        .iter()
        .map(|r| r.map_or("n/a".to_string(), |r| format!("{r:.2}")))
        .collect();
    format!(" (median of {} rounds: {})", ratios.len(), each.join(", "))
}

fn print_ratios(q: &SystemRun, p: &SystemRun) -> Option<f64> {
    println!(
        "{} ÷ {} (throughput: higher is better; p99 and server CPU per op: lower is better)",
        q.name, p.name
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>12} {:>13} {:>12}",
        "clients",
        "writes/s",
        "reads/s",
        "write p99",
        "read p99",
        "write srv/op",
        "write node/op",
        "read srv/op"
    );
    let mut headline = None;
    for qr in &q.rows {
        let Some(pr) = p.rows.iter().find(|r| r.clients == qr.clients) else {
            continue;
        };
        let writes = qr.writes.ops_per_sec() / pr.writes.ops_per_sec();
        let reads = qr.reads.ops_per_sec() / pr.reads.ops_per_sec();
        let wp99 = qr.writes.p99_us as f64 / pr.writes.p99_us as f64;
        let rp99 = qr.reads.p99_us as f64 / pr.reads.p99_us as f64;
        let wcpu = qr.writes.server_cpu_us_per_op() / pr.writes.server_cpu_us_per_op();
        let rcpu = qr.reads.server_cpu_us_per_op() / pr.reads.server_cpu_us_per_op();
        let wnode =
            qr.writes.busiest_server_cpu_us_per_op() / pr.writes.busiest_server_cpu_us_per_op();
        println!(
            "{:>8} {writes:>10.2} {reads:>10.2} {wp99:>10.2} {rp99:>10.2} {wcpu:>12.2} {wnode:>13.2} {rcpu:>12.2}",
            qr.clients
        );
        if qr.clients == 64 {
            headline = Some(writes);
        }
    }
    headline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headline_of_several_rounds_is_their_median_and_lists_each() {
        assert_eq!(median_of(&[Some(4.4), Some(2.85), Some(4.1)]), Some(4.1));
        // An even count takes the lower middle one (never flatters the result).
        assert_eq!(
            median_of(&[Some(5.0), Some(3.0), Some(4.0), Some(6.0)]),
            Some(4.0)
        );
        assert_eq!(median_of(&[None, Some(2.0)]), Some(2.0));
        assert_eq!(median_of(&[None]), None);
        assert_eq!(
            rounds_detail(&[Some(2.85), None, Some(4.1)]),
            " (median of 3 rounds: 2.85, n/a, 4.10)"
        );
        assert_eq!(rounds_detail(&[Some(2.85)]), "");
    }

    #[test]
    fn keys_and_values_have_the_workload_sizes_and_differ() {
        let a = key(3, 255, 9_999);
        let b = key(3, 256, 9_999);
        assert_eq!(a.len(), KEY_SIZE);
        assert_eq!(b.len(), KEY_SIZE);
        assert_ne!(a, b);
        let v = value(&a);
        assert_eq!(v.len(), VALUE_SIZE);
        assert!(v.starts_with(&a));
        assert_ne!(value(&a), value(&b));
    }

    /// An in-memory system: checks that the phases issue every operation once and that a get
    /// returning the wrong value fails the run.
    #[derive(Clone, Default)]
    struct Memory {
        map: Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>>,
        corrupt: bool,
    }

    impl KvHandle for Memory {
        async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
            self.map.lock().unwrap().insert(key, value);
            Ok(())
        }
        async fn get(&mut self, key: Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
            let v = self.map.lock().unwrap().get(&key).cloned();
            Ok(if self.corrupt {
                v.map(|mut v| {
                    v[0] ^= 1;
                    v
                })
            } else {
                v
            })
        }
    }

    #[tokio::test]
    async fn a_phase_runs_every_operation_and_checks_reads() {
        let system = Memory::default();
        let bar = ProgressBar::hidden();
        let stats = phase(vec![system.clone(); 7], &[], 1, 100, Op::Put, &bar)
            .await
            .unwrap();
        assert_eq!(stats.ops, 100);
        assert_eq!(system.map.lock().unwrap().len(), 100);
        let reads = phase(vec![system.clone(); 7], &[], 1, 100, Op::Get, &bar)
            .await
            .unwrap();
        assert_eq!(reads.ops, 100);
        let corrupt = Memory {
            corrupt: true,
            ..system
        };
        let err = phase(vec![corrupt; 3], &[], 1, 100, Op::Get, &bar)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not the value written"), "{err}");
    }

    #[test]
    fn cpu_time_is_read_from_proc_stat_past_an_awkward_command_name() {
        let line = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu(line), Some(Duration::from_millis(3250)));
        assert_eq!(stat_cpu("4242 (x) S 1"), None);
        assert_eq!(stat_cpu("garbage"), None);
        // Burning CPU shows up in this process's reading (ticks are 10 ms).
        if cfg!(target_os = "linux") {
            let before = process_cpu("self");
            let start = Instant::now();
            let mut x = 0u64;
            while process_cpu("self") <= before {
                for i in 0..1_000_000u64 {
                    x = x.wrapping_mul(31).wrapping_add(i);
                }
                std::hint::black_box(x);
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "CPU time never grew"
                );
            }
        }
    }

    #[test]
    fn the_busiest_server_is_the_one_that_used_most_cpu_in_the_phase() {
        let ms = Duration::from_millis;
        // The second process was busiest in the phase though the first used more in all.
        let before = [ms(5_000), ms(100), ms(300)];
        let after = [ms(5_200), ms(700), ms(400)];
        assert_eq!(server_cpu_between(&before, &after), (ms(900), ms(600)));
        // A process that went away (its reading drops to zero) counts as idle.
        assert_eq!(
            server_cpu_between(&[ms(50), ms(10)], &[ms(0), ms(30)]),
            (ms(20), ms(20))
        );
        assert_eq!(
            server_cpu_between(&[], &[]),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn the_headline_is_the_write_ratio_at_64_clients() {
        let stats = |ops: u64| PhaseStats {
            ops,
            elapsed: Duration::from_secs(1),
            p50_us: 100,
            p99_us: 1000,
            max_us: 2000,
            server_cpu: Duration::from_millis(ops),
            busiest_server_cpu: Duration::from_millis(ops / 2),
            client_cpu: Duration::from_millis(ops / 2),
        };
        let run = |name: &str, ops: u64| SystemRun {
            name: name.into(),
            rows: [1, 64]
                .iter()
                .map(|&clients| Row {
                    clients,
                    writes: stats(ops * clients as u64),
                    reads: stats(ops),
                    seq_reads: None,
                })
                .collect(),
        };
        let ratio = print_ratios(&run("quorate", 300), &run("etcd", 100)).unwrap();
        assert!((ratio - 3.0).abs() < 1e-9, "{ratio}");
    }
}
