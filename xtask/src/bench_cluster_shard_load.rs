//! `cargo xtask bench cluster --shards 1,4,16`: how writes scale with shards on the same three
//! nodes. For each shard count three `quorate` nodes run that many data groups (every node in
//! every group, quiescence on); the usual closed-loop rows of `bench cluster` (puts, then
//! linearizable gets, per `--clients`) run against them with every key prefixed by 8 hex digits of
//! its hash, so the keys spread evenly over the ranges `bench_cluster_shards::split_keys` cuts.
//! The table gives writes/s and server CPU per op per shard count, and each count's writes/s
//! against 1 shard's at the same client count (the baseline of the same run).

use std::path::Path;

use anyhow::Context;
use indicatif::ProgressBar;

use crate::bench_cluster::{self, KvHandle, Quorate, QuorateHandle, System, SystemRun};
use crate::bench_cluster_shards::{split_keys, wait_ready};
use crate::cluster;

/// `key` behind 8 hex digits of its hash (FNV-1a, then a 64-bit finalizer: FNV's high bits alone
/// clump for keys that differ only at the end): where in the shard ranges it falls.
fn spread(key: &[u8]) -> Vec<u8> {
    let mut hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    let mut out = format!("{:08x}", hash >> 32).into_bytes();
    out.extend_from_slice(key);
    out
}

/// The Quorate system of a sharded cluster: its client routes each key to its group's leader.
struct Sharded {
    inner: Quorate,
    shards: usize,
}

#[derive(Clone)]
struct ShardedHandle(QuorateHandle);

impl KvHandle for ShardedHandle {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.0.put(spread(&key), value).await
    }

    async fn get(&mut self, key: Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
        self.0.get(spread(&key)).await
    }
}

impl System for Sharded {
    type Handle = ShardedHandle;

    fn name(&self) -> String {
        format!("{}, {} shards", self.inner.name(), self.shards)
    }

    async fn handles(&self, clients: usize) -> anyhow::Result<Vec<ShardedHandle>> {
        Ok(self
            .inner
            .handles(clients)
            .await?
            .into_iter()
            .map(ShardedHandle)
            .collect())
    }
}

/// Runs the load rows for every shard count; prints the tables, writes the plots into `out`.
pub(crate) async fn run(
    bin: &Path,
    dir: &Path,
    out: &Path,
    shards: &[usize],
    clients: &[usize],
    ops: usize,
) -> anyhow::Result<()> {
    let progress = bench_cluster::progress_bar((shards.len() * clients.len() * ops * 2) as u64);
    let mut runs = Vec::new();
    for &n in shards {
        progress.set_message(format!("{n} shards: starting 3 nodes"));
        let sub = dir.join(format!("load-{n}"));
        let run = load_run(bin, &sub, n, clients, ops, &progress)
            .await
            .with_context(|| format!("{n} shards under load"))?;
        runs.push((n, run));
    }
    progress.finish_and_clear();
    println!();
    println!(
        "Sharded clusters under load: 3 nodes, every node in every group, quiescence on; {ops} puts \
         then {ops} linearizable gets per row, keys spread evenly over the shards"
    );
    for (_, run) in &runs {
        println!();
        bench_cluster::print_system(run);
    }
    println!();
    println!("writes/s and server CPU per write against 1 shard at the same client count");
    println!(
        "{:>7} {:>8} {:>10} {:>9} {:>9} {:>13} {:>10}",
        "shards", "clients", "writes/s", "p50 µs", "p99 µs", "srv µs/write", "vs 1 shard"
    );
    let base = runs.iter().find(|(n, _)| *n == 1).map(|(_, r)| r);
    let mut headline = None;
    for (n, run) in &runs {
        for row in &run.rows {
            let ratio = base
                .and_then(|b| b.rows.iter().find(|r| r.clients == row.clients))
                .map(|b| row.writes.ops_per_sec() / b.writes.ops_per_sec());
            println!(
                "{n:>7} {:>8} {:>10.0} {:>9} {:>9} {:>13.0} {:>10}",
                row.clients,
                row.writes.ops_per_sec(),
                row.writes.p50_us,
                row.writes.p99_us,
                row.writes.server_cpu_us_per_op(),
                ratio.map_or("n/a".to_string(), |r| format!("{r:.2}x"))
            );
            if row.clients == 64 && Some(*n) == shards.iter().copied().max() {
                headline = ratio.map(|r| (*n, r));
            }
        }
    }
    let all: Vec<SystemRun> = runs.into_iter().map(|(_, r)| r).collect();
    let files = crate::plot::write_plots(out, "cluster-shards", &all)?;
    println!();
    for f in files {
        println!("plot: {}", f.display());
    }
    match headline {
        Some((n, r)) => println!("cluster-shards writes@64 {n}-vs-1: {r:.2}"),
        None => {
            println!("cluster-shards writes@64: n/a (needs 1 and 64 in --shards and --clients)")
        }
    }
    Ok(())
}

/// One cluster of `shards` shards: every client count's rows.
async fn load_run(
    bin: &Path,
    dir: &Path,
    shards: usize,
    clients: &[usize],
    ops: usize,
    progress: &ProgressBar,
) -> anyhow::Result<SystemRun> {
    let ports = cluster::free_ports(3, true)?;
    let split = split_keys(shards);
    let mut nodes = cluster::QuorateCluster::start_tuned(bin, dir, &ports, &|_, config| {
        config.shards = Some(node::config::ShardsConfig::split(split.clone()));
    })?;
    let result = async {
        let client = node::client::Client::connect(nodes.client_config()?)?;
        wait_ready(&mut nodes, &client, shards, false).await?;
        client.close().await;
        let system = Sharded {
            inner: Quorate {
                config: nodes.client_config()?,
                protocol: node::config::Protocol::Raft.name(),
            },
            shards,
        };
        let pids: Vec<u32> = nodes.pids().into_iter().map(|(_, pid)| pid).collect();
        let run = bench_cluster::run_rows(&system, &pids, clients, ops, false, progress).await?;
        nodes.check_running()?;
        anyhow::Ok(run)
    }
    .await;
    progress.set_message("stopping Quorate");
    for s in nodes.stop().await {
        if s.killed {
            eprintln!("{} did not stop in time: killed", s.name);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keys_fall_evenly_into_the_split_ranges() {
        let splits = split_keys(16);
        let mut counts = [0usize; 16];
        for i in 0..16_000 {
            let key = spread(format!("{:02x}{:06x}{:08x}", 0, i % 64, i / 64).as_bytes());
            let shard = splits.iter().filter(|s| s.as_bytes() <= &key[..]).count();
            counts[shard] += 1;
        }
        // 1,000 expected per shard; a hash that clumps (or a prefix that is not the hash) fails.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert!(spread(b"ab").ends_with(b"ab"));
        assert_eq!(spread(b"ab"), spread(b"ab"));
    }
}
