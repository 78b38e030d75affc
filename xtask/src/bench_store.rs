//! `cargo xtask bench store`: one write-ahead log shared by every group of a node
//! (`node::store::SharedLog`) against one log per group, measured in the same run on the same
//! filesystem.
//!
//! - Workload: `writers` closed-loop writers (tokio tasks on two worker threads, as a node's
//!   drivers run) spread over G groups: writer i writes to groups i, i + writers, ... in turn.
//!   A write is one 256-byte Raft entry submitted to its group's store (`LogStore::submit`,
//!   synced), then the writer waits on the store's durable-index channel until it covers the
//!   write — the node's pipelined path.
//! - Separate: G stores each opened by `RaftStore::open` in its own directory (own log, own sync
//!   thread, own `fdatasync`s). Shared: one `SharedLog` and G groups of it (one sync thread, one
//!   `fdatasync` per round for all groups). Both preallocate the same segment space in total
//!   (shared: 64 MiB segments; separate: 64 MiB / G each, at least 1 MiB).
//! - The two alternate in slices (separate, shared, shared, separate, ...: which goes first
//!   alternates too, as a slice may pay for the previous one's writeback), each slice on fresh
//!   directories; the ratio is the median over the rounds of that round's shared/separate
//!   appends/s. `fdatasync`s per write come from the logs' counters (segment rolls included).
//!
//! - CPU per write: the process's CPU time (every thread) over the slice, per write; on a loaded
//!   machine it moves less than appends/s (a single sync thread competes for a CPU less well
//!   than G of them).
//!
//! The last two lines printed are `store-separate-vs-shared cpu-per-write@<largest G>: <ratio>`
//! and `store-shared-vs-separate@<largest G>: <ratio>` (appends/s).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use consensus_core::{ConfState, Entry, EntryPayload, HardState, Write};
use node::store::{Identity, RaftStore, SharedLog, SharedOptions, StoreOptions};

/// Arguments of `cargo xtask bench store`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory in which to create the temporary benchmark directory (default: the current one,
    /// so the benchmark measures the filesystem you run it on).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Group counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = GROUPS.to_vec())]
    groups: Vec<usize>,
    /// Closed-loop writers (writes in flight).
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Seconds per slice (each contender runs `rounds` slices per group count).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Alternating rounds per group count.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const GROUPS: [usize; 3] = [1, 16, 256];
const PAYLOAD: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Separate,
    Shared,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    writes: u64,
    syncs: u64,
    seconds: f64,
    /// Process CPU seconds (every thread: writers, sync threads).
    cpu: f64,
}

impl Slice {
    fn per_second(&self) -> f64 {
        self.writes as f64 / self.seconds
    }

    fn syncs_per_write(&self) -> f64 {
        self.syncs as f64 / self.writes.max(1) as f64
    }

    fn cpu_us_per_write(&self) -> f64 {
        self.cpu * 1e6 / self.writes.max(1) as f64
    }
}

/// Process CPU time (utime + stime of every thread) in seconds, from `/proc/self/stat`.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
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

struct Group {
    store: RaftStore,
    next: u64,
}

type Groups = Vec<Arc<Mutex<Group>>>;
/// Reads the total `fdatasync`s of a contender's logs.
type SyncCount = Box<dyn Fn(&[Arc<Mutex<Group>>]) -> u64>;

fn identity(group_id: u64) -> Identity {
    Identity {
        protocol: "raft".into(),
        cluster_id: "bench-store".into(),
        node_id: 1,
        group_id,
    }
}

fn wal_options(segment_size: u64) -> storage_wal::Options {
    storage_wal::Options {
        segment_size,
        ..storage_wal::Options::default()
    }
}

/// Opens G stores of `contender` in `dir`; returns them and a function reading total syncs.
fn open(contender: Contender, dir: &Path, groups: usize) -> anyhow::Result<(Groups, SyncCount)> {
    let bootstrap = || ConfState::with_voters([1]);
    let mut stores = Vec::with_capacity(groups);
    let syncs: SyncCount = match contender {
        Contender::Separate => {
            let segment_size = ((64u64 << 20) / groups as u64).max(1 << 20);
            for g in 0..groups as u64 {
                let options = StoreOptions {
                    wal: wal_options(segment_size),
                    ..StoreOptions::default()
                };
                let store =
                    RaftStore::open(dir.join(format!("g{g}")), identity(g), bootstrap(), options)
                        .context("open a separate store")?;
                stores.push(store);
            }
            Box::new(|groups: &[Arc<Mutex<Group>>]| {
                groups
                    .iter()
                    .map(|g| g.lock().expect("unpoisoned").store.stats().syncs)
                    .sum()
            })
        }
        Contender::Shared => {
            let shared = SharedLog::open(
                dir,
                SharedOptions {
                    wal: wal_options(64 << 20),
                    ..SharedOptions::default()
                },
            )
            .context("open the shared log")?;
            for g in 0..groups as u64 {
                stores.push(
                    shared
                        .open_group(identity(g), bootstrap(), StoreOptions::default())
                        .context("open a group")?,
                );
            }
            Box::new(move |_: &[Arc<Mutex<Group>>]| shared.stats().syncs)
        }
    };
    let groups = stores
        .into_iter()
        .map(|store| Arc::new(Mutex::new(Group { store, next: 1 })))
        .collect();
    Ok((groups, syncs))
}

fn run_slice(
    runtime: &tokio::runtime::Runtime,
    contender: Contender,
    root: &Path,
    groups: usize,
    writers: usize,
    seconds: f64,
) -> anyhow::Result<Slice> {
    let dir = tempfile::tempdir_in(root).context("slice directory")?;
    let (stores, syncs) = open(contender, dir.path(), groups)?;
    let stores = Arc::new(stores);
    let syncs_before = syncs(&stores);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let payload = consensus_core::Bytes::from(vec![7u8; PAYLOAD]);
    let started = Instant::now();
    let cpu_before = process_cpu();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (stores, stop, writes, payload) = (
                stores.clone(),
                stop.clone(),
                writes.clone(),
                payload.clone(),
            );
            runtime.spawn(async move {
                let mut turn = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let g = (w + turn * writers) % stores.len();
                    turn += 1;
                    let (token, mut durable) = {
                        let mut group = stores[g].lock().expect("unpoisoned");
                        let index = group.next;
                        group.next += 1;
                        let write: Write<HardState> = Write {
                            snapshot: None,
                            truncate_from: None,
                            entries: vec![Entry {
                                term: 1,
                                index,
                                payload: EntryPayload::Data(payload.clone()),
                            }]
                            .into(),
                            hard_state: None,
                            sync: true,
                        };
                        let token = group.store.submit(&write).expect("submit");
                        (token, group.store.subscribe_durable())
                    };
                    durable
                        .wait_for(|d| d.index >= token || d.error.is_some())
                        .await
                        .expect("sync thread alive");
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu_before;
    let done = writes.load(Ordering::Relaxed);
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    let slice = Slice {
        writes: done,
        syncs: syncs(&stores) - syncs_before,
        seconds: elapsed,
        cpu,
    };
    drop(syncs);
    drop(stores);
    Ok(slice)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let root = tempfile::tempdir_in(&root).context("benchmark directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "bench store: {} writers, {PAYLOAD}-byte entries, {} s slices, {} rounds, in {}",
        args.writers,
        args.seconds,
        args.rounds,
        root.path().display()
    );
    println!(
        "{:>6} {:>10} {:>12} {:>12} {:>14}",
        "groups", "contender", "appends/s", "syncs/write", "cpu µs/write"
    );
    let mut headline = None;
    for &groups in &args.groups {
        let mut results: Vec<(Slice, Slice)> = Vec::new();
        for round in 0..args.rounds {
            let mut pair = [Slice::default(); 2];
            // Alternate which runs first: a slice may pay for the previous one's writeback.
            let mut order = [(0, Contender::Separate), (1, Contender::Shared)];
            if round % 2 == 1 {
                order.reverse();
            }
            for (i, contender) in order {
                eprintln!(
                    "  groups {groups} round {}/{}: {contender:?} ...",
                    round + 1,
                    args.rounds
                );
                pair[i] = run_slice(
                    &runtime,
                    contender,
                    root.path(),
                    groups,
                    args.writers,
                    args.seconds,
                )?;
                eprintln!(
                    "    {:.0} appends/s, {:.3} fdatasyncs/write, {:.1} cpu µs/write",
                    pair[i].per_second(),
                    pair[i].syncs_per_write(),
                    pair[i].cpu_us_per_write()
                );
            }
            results.push((pair[0], pair[1]));
        }
        let ratio = median(
            results
                .iter()
                .map(|(separate, shared)| shared.per_second() / separate.per_second())
                .collect(),
        );
        for (name, pick) in [("separate", 0usize), ("shared", 1)] {
            let slices: Vec<Slice> = results
                .iter()
                .map(|(a, b)| if pick == 0 { *a } else { *b })
                .collect();
            println!(
                "{groups:>6} {name:>10} {:>12.0} {:>12.3} {:>14.1}",
                median(slices.iter().map(Slice::per_second).collect()),
                median(slices.iter().map(Slice::syncs_per_write).collect()),
                median(slices.iter().map(Slice::cpu_us_per_write).collect()),
            );
        }
        let cpu_ratio = median(
            results
                .iter()
                .map(|(separate, shared)| separate.cpu_us_per_write() / shared.cpu_us_per_write())
                .collect(),
        );
        println!(
            "{groups:>6} {:>10} {ratio:>11.2}x {:>12} {cpu_ratio:>13.2}x  (shared vs separate: \
             appends/s, and CPU per write separate/shared; medians of per-round ratios)",
            "ratio", ""
        );
        headline = Some((groups, ratio, cpu_ratio));
    }
    if let Some((groups, ratio, cpu_ratio)) = headline {
        println!("store-separate-vs-shared cpu-per-write@{groups}: {cpu_ratio:.2}");
        println!("store-shared-vs-separate@{groups}: {ratio:.2}");
    }
    Ok(())
}
