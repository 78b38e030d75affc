//! `cargo xtask bench cluster --txn`: a local 3-node cluster with 2 shards (split at "n");
//! per client count, latency (p50/p99, hdrhistogram µs) and throughput of a single put, a
//! transaction of two puts on one shard (one log entry) and one of two puts on two shards
//! (two-phase commit of blind puts: two PREPAREs in parallel, then the COMMIT entry on the
//! coordinator shard, which answers the client; the other shard's DECIDE and END follow after the
//! answer), every op on fresh keys so nothing conflicts. Then one client alternates a put and a
//! 2-shard transaction, op by op, `--ops` of each: both latencies are sampled under the same
//! conditions of the machine (a shared box drifts between rows), and the last line's ratio comes
//! from that row: `xtxn 2-shard-txn-p50-vs-put (1 client): <ratio>` (target ≤ 2.5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use node::client::Client;
use node::config::ShardsConfig;
use node::proto::TxnOp;

use crate::cluster::{self, QuorateCluster};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Put,
    OneShardTxn,
    TwoShardTxn,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::OneShardTxn => "1-shard txn",
            Workload::TwoShardTxn => "2-shard txn",
        }
    }
}

async fn one(client: &Client, workload: Workload, tag: &str) -> anyhow::Result<()> {
    let put = |key: String| TxnOp::Put {
        key: key.into(),
        value: "v".into(),
    };
    match workload {
        Workload::Put => {
            client.put(format!("a-{tag}"), "v").await?;
        }
        Workload::OneShardTxn => {
            let outcome = client
                .txn(
                    Vec::new(),
                    vec![put(format!("a-{tag}")), put(format!("b-{tag}"))],
                    Vec::new(),
                )
                .await?;
            anyhow::ensure!(outcome.succeeded, "a transaction without compares failed");
        }
        Workload::TwoShardTxn => {
            let outcome = client
                .txn(
                    Vec::new(),
                    vec![put(format!("a-{tag}")), put(format!("x-{tag}"))],
                    Vec::new(),
                )
                .await?;
            anyhow::ensure!(outcome.succeeded, "a transaction without compares failed");
        }
    }
    Ok(())
}

/// Runs `ops` ops of `workload` over `clients` tasks; (ops/s, latency histogram).
async fn row(
    clients: &[Arc<Client>],
    workload: Workload,
    ops: usize,
    round: usize,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let per = ops.div_ceil(clients.len());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
            for i in 0..per {
                let begun = Instant::now();
                one(&client, workload, &format!("{round}-{c}-{i}")).await?;
                hist.record(begun.elapsed().as_micros().max(1) as u64)?;
            }
            anyhow::Ok(hist)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for task in tasks {
        all.add(task.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((all.len() as f64 / secs, all))
}

/// One client alternating a put and a 2-shard transaction, `ops` of each; their latency
/// histograms (put, transaction).
async fn interleaved(
    client: &Client,
    ops: usize,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut put = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut txn = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for i in 0..ops {
        for (workload, hist, tag) in [
            (Workload::Put, &mut put, "mixp"),
            (Workload::TwoShardTxn, &mut txn, "mixt"),
        ] {
            let begun = Instant::now();
            one(client, workload, &format!("{tag}-{i}")).await?;
            hist.record(begun.elapsed().as_micros().max(1) as u64)?;
        }
    }
    Ok((put, txn))
}

/// Runs the benchmark: `clients` concurrent tasks per row, `ops` ops per row.
pub async fn run(clients: &[usize], ops: usize, keep: bool) -> anyhow::Result<()> {
    // The dev profile of this workspace is optimized; a debug xtask measures the dev binary.
    let bin = if cfg!(debug_assertions) {
        let status = cluster::cargo()
            .args(["build", "-p", "node", "--bin", "quorate"])
            .status()
            .context("building quorate")?;
        anyhow::ensure!(status.success(), "building quorate failed");
        cluster::target_dir().join("debug").join("quorate")
    } else {
        cluster::build_quorate()?
    };
    let parent = cluster::target_dir().join("bench-cluster");
    std::fs::create_dir_all(&parent)?;
    let tmp = tempfile::Builder::new()
        .prefix("txn-")
        .tempdir_in(&parent)?;
    let ports = cluster::free_ports(3, true)?;
    let mut quorate = QuorateCluster::start_tuned(&bin, tmp.path(), &ports, &|_, config| {
        config.shards = Some(ShardsConfig {
            split_keys: vec!["n".into()],
            count: None,
            quiesce: true,
        });
    })?;
    let result = async {
        quorate.wait_leader(Duration::from_secs(30)).await?;
        let max = clients.iter().copied().max().unwrap_or(1);
        let mut pool = Vec::new();
        for _ in 0..max {
            let client = Client::connect(quorate.client_config()?)?;
            // Warm up: the map, both shards' leaders, the coordinator's own client.
            for i in 0..3 {
                one(
                    &client,
                    Workload::TwoShardTxn,
                    &format!("warm-{}-{i}", pool.len()),
                )
                .await?;
            }
            pool.push(Arc::new(client));
        }
        println!(
            "{:>8} {:>14} {:>10} {:>10} {:>10}",
            "clients", "workload", "ops/s", "p50 µs", "p99 µs"
        );
        for (round, &n) in clients.iter().enumerate() {
            for workload in [Workload::Put, Workload::OneShardTxn, Workload::TwoShardTxn] {
                let (rate, hist) = row(&pool[..n], workload, ops, round).await?;
                let (p50, p99) = (hist.value_at_quantile(0.5), hist.value_at_quantile(0.99));
                println!(
                    "{n:>8} {:>14} {rate:>10.0} {p50:>10} {p99:>10}",
                    workload.name()
                );
            }
        }
        let (put, txn) = interleaved(&pool[0], ops).await?;
        println!("1 client, a put and a 2-shard txn alternating, {ops} of each:");
        for (name, hist) in [("put", &put), ("2-shard txn", &txn)] {
            println!(
                "{:>8} {name:>14} {:>10} {:>10} {:>10}",
                1,
                "-",
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99)
            );
        }
        println!(
            "xtxn 2-shard-txn-p50-vs-put (1 client): {:.2}",
            txn.value_at_quantile(0.5) as f64 / put.value_at_quantile(0.5).max(1) as f64
        );
        anyhow::Ok(())
    }
    .await;
    quorate.stop().await;
    if keep {
        println!("kept {}", tmp.keep().display());
    }
    result
}
