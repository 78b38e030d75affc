//! The ZooKeeper side of `cargo xtask bench cluster --protocol zab --peer zookeeper`: the
//! ensemble of [`crate::zookeeper`] driven through the `zookeeper-client` crate (behind the
//! `zookeeper` feature), by the same load generator as Quorate.
//!
//! Keys are znode names under one parent (`/quorate-bench/<16 B key>`), values the znodes' data
//! (256 B). A put is `create` (every key of a row is new), or `setData` if the znode exists; a
//! session-consistent get is plain `getData` (ZooKeeper's reads are served by the server the
//! session is connected to, never older than what the session has seen); a linearizable get is
//! `sync` then `getData` on the same session, both sent at once (ZooKeeper orders a session's
//! requests, so the read waits for the sync). Like Quorate's, the sessions (one TCP connection
//! each) are opened and used once before the measured phase and shared by the tasks, spread over
//! the three servers as ZooKeeper clients spread over a connect string.
//!
//! Also the printing and the headline of the comparison with the `--protocol zab` run.

use std::path::Path;

use indicatif::ProgressBar;

use super::{Args, SystemRun};
use crate::zookeeper::{Install, ZooKeeperCluster};

/// Starts the ensemble under `dir`, runs every row against it, stops it.
pub async fn run_zookeeper(
    install: &Install,
    dir: &Path,
    version: &str,
    args: &Args,
    progress: &ProgressBar,
) -> anyhow::Result<SystemRun> {
    let mut cluster = ZooKeeperCluster::start(install, dir, super::MEMBERS)?;
    let result = async {
        cluster
            .wait_listening(std::time::Duration::from_secs(60))
            .await?;
        let pids = cluster.pids();
        let run = measure(&cluster.client_addrs, &pids, version, args, progress).await;
        cluster.check_running()?;
        run
    }
    .await;
    progress.set_message("stopping ZooKeeper");
    cluster.stop().await?;
    result
}

/// Connects to the servers at `addrs` (processes `pids`) and runs every row.
#[cfg(feature = "zookeeper")]
async fn measure(
    addrs: &[String],
    pids: &[u32],
    version: &str,
    args: &Args,
    progress: &ProgressBar,
) -> anyhow::Result<SystemRun> {
    let system = kv::ZooKeeper::connect(addrs, version).await?;
    super::run_system(&system, pids, args, progress).await
}

#[cfg(not(feature = "zookeeper"))]
async fn measure(
    _addrs: &[String],
    _pids: &[u32],
    _version: &str,
    _args: &Args,
    _progress: &ProgressBar,
) -> anyhow::Result<SystemRun> {
    anyhow::bail!("built without the `zookeeper` feature")
}

#[cfg(feature = "zookeeper")]
mod kv {
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{bail, Context};
    use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, Error};

    use crate::bench_cluster::{KvHandle, System, OP_TIMEOUT};

    /// The parent of every key's znode.
    const PARENT: &str = "/quorate-bench";
    /// Persistent znodes, open to anyone (no auth on loopback).
    const OPTIONS: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());
    /// Sessions shared by the tasks; as many as Quorate gets clients.
    const SESSIONS: usize = super::super::QUORATE_CONNECTIONS;

    /// The ensemble under test.
    pub struct ZooKeeper {
        addrs: Vec<String>,
        version: String,
    }

    impl ZooKeeper {
        /// Waits for a quorum (a session whose write succeeds) and creates the parent znode.
        pub async fn connect(addrs: &[String], version: &str) -> anyhow::Result<Self> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let all = addrs.join(",");
            loop {
                let attempt = async {
                    let client = session(&all).await?;
                    match client.create(PARENT, b"", &OPTIONS).await {
                        Ok(_) | Err(Error::NodeExists) => anyhow::Ok(()),
                        Err(e) => Err(e.into()),
                    }
                };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) if tokio::time::Instant::now() > deadline => {
                        return Err(e.context("no ZooKeeper quorum within 60 s"))
                    }
                    Err(_) if tokio::time::Instant::now() > deadline => {
                        bail!("no ZooKeeper quorum within 60 s")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
            Ok(ZooKeeper {
                addrs: addrs.to_vec(),
                version: version.to_string(),
            })
        }
    }

    async fn session(addrs: &str) -> anyhow::Result<Client> {
        Client::connector()
            .with_session_timeout(OP_TIMEOUT)
            .with_connection_timeout(Duration::from_secs(5))
            .connect(addrs)
            .await
            .with_context(|| format!("connecting to ZooKeeper at {addrs}"))
    }

    /// One session, shared by several tasks.
    #[derive(Clone)]
    pub struct ZooKeeperHandle(Arc<Client>);

    fn path(key: &[u8]) -> String {
        format!("{PARENT}/{}", String::from_utf8_lossy(key))
    }

    impl KvHandle for ZooKeeperHandle {
        async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
            let path = path(&key);
            match self.0.create(&path, &value, &OPTIONS).await {
                Ok(_) => Ok(()),
                Err(Error::NodeExists) => {
                    self.0.set_data(&path, &value, None).await?;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }

        async fn get(&mut self, key: Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
            let path = path(&key);
            // Both requests leave now, in this order; the session's order makes the read wait
            // for the sync.
            let sync = self.0.sync(&path);
            let get = self.0.get_data(&path);
            let (synced, got) = tokio::join!(sync, get);
            synced.context("sync")?;
            found(got)
        }

        async fn get_sequential(&mut self, key: Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
            found(self.0.get_data(&path(&key)).await)
        }
    }

    fn found(
        got: Result<(Vec<u8>, zookeeper_client::Stat), Error>,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        match got {
            Ok((data, _)) => Ok(Some(data)),
            Err(Error::NoNode) => Ok(None),
            Err(e) => Err(anyhow::Error::from(e).context("getData")),
        }
    }

    impl System for ZooKeeper {
        type Handle = ZooKeeperHandle;

        fn name(&self) -> String {
            self.version.clone()
        }

        async fn handles(&self, clients: usize) -> anyhow::Result<Vec<ZooKeeperHandle>> {
            let mut shared = Vec::new();
            for i in 0..clients.min(SESSIONS) {
                let addr = &self.addrs[i % self.addrs.len()];
                let client = session(addr).await?;
                // Used once before the measured phase, as Quorate's clients are.
                let warm = format!("{PARENT}/warm-up-{i}");
                match client.create(&warm, b"", &OPTIONS).await {
                    Ok(_) | Err(Error::NodeExists) => {}
                    Err(e) => return Err(anyhow::Error::from(e).context("warm-up write")),
                }
                shared.push(Arc::new(client));
            }
            Ok((0..clients)
                .map(|i| ZooKeeperHandle(shared[i % shared.len()].clone()))
                .collect())
        }
    }
}

/// The session-consistent read phase of `run`'s rows, if it has one.
pub fn print_sequential(run: &SystemRun) {
    if run.rows.iter().all(|r| r.seq_reads.is_none()) {
        return;
    }
    println!(
        "{} sequential (session-consistent) gets",
        run.name.trim_start_matches("quorate ")
    );
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "clients", "reads/s", "p50", "p99", "max", "srv/op", "cli/op"
    );
    for r in &run.rows {
        if let Some(s) = &r.seq_reads {
            println!(
                "{:>8} {:>10.0} {:>9} {:>9} {:>9} {:>7.0} {:>7.0}",
                r.clients,
                s.ops_per_sec(),
                s.p50_us,
                s.p99_us,
                s.max_us,
                s.server_cpu_us_per_op(),
                s.client_cpu_us_per_op(),
            );
        }
    }
}

/// Quorate ÷ peer for the session-consistent reads, per client count.
pub fn print_sequential_ratios(q: &SystemRun, p: &SystemRun) {
    let rows: Vec<_> = q
        .rows
        .iter()
        .filter_map(|qr| {
            let pr = p.rows.iter().find(|r| r.clients == qr.clients)?;
            Some((qr.clients, qr.seq_reads.as_ref()?, pr.seq_reads.as_ref()?))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    println!(
        "{} ÷ {}, sequential gets (Quorate `sequential` against plain getData)",
        q.name, p.name
    );
    println!(
        "{:>8} {:>10} {:>10} {:>12}",
        "clients", "reads/s", "read p99", "read srv/op"
    );
    for (clients, qs, ps) in rows {
        println!(
            "{clients:>8} {:>10.2} {:>10.2} {:>12.2}",
            qs.ops_per_sec() / ps.ops_per_sec(),
            qs.p99_us as f64 / ps.p99_us as f64,
            qs.server_cpu_us_per_op() / ps.server_cpu_us_per_op(),
        );
    }
}

/// The write ratios Zab ÷ ZooKeeper at 64 clients: (throughput, p99), if both ran it.
pub fn writes_at_64(zab: &SystemRun, zk: &SystemRun) -> Option<(f64, f64)> {
    let q = zab.rows.iter().find(|r| r.clients == 64)?;
    let p = zk.rows.iter().find(|r| r.clients == 64)?;
    Some((
        q.writes.ops_per_sec() / p.writes.ops_per_sec(),
        q.writes.p99_us as f64 / p.writes.p99_us as f64,
    ))
}

/// The closing lines: the write p99 ratio, then `cluster-zab-vs-zookeeper writes@64: <ratio>`.
pub fn print_headline(zab: Option<&SystemRun>, zk: Option<&SystemRun>) {
    match (zab, zk) {
        (Some(zab), Some(zk)) => match writes_at_64(zab, zk) {
            Some((writes, p99)) => {
                println!("cluster-zab-vs-zookeeper write-p99@64: {p99:.2} (lower is better)");
                println!("cluster-zab-vs-zookeeper writes@64: {writes:.2}");
            }
            None => println!("cluster-zab-vs-zookeeper writes@64: n/a (64 is not in --clients)"),
        },
        _ => println!(
            "cluster-zab-vs-zookeeper writes@64: n/a (needs --protocol zab and the Quorate run)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_cluster::{PhaseStats, Row};
    use std::time::Duration;

    fn stats(ops: u64, p99_us: u64) -> PhaseStats {
        PhaseStats {
            ops,
            elapsed: Duration::from_secs(1),
            p50_us: p99_us / 2,
            p99_us,
            max_us: p99_us * 2,
            server_cpu: Duration::from_millis(ops),
            busiest_server_cpu: Duration::from_millis(ops / 2),
            client_cpu: Duration::from_millis(ops),
        }
    }

    fn run(name: &str, writes: u64, p99: u64) -> SystemRun {
        SystemRun {
            name: name.into(),
            rows: [16, 64]
                .iter()
                .map(|&clients| Row {
                    clients,
                    writes: stats(writes * clients as u64 / 64, p99),
                    reads: stats(1000, 100),
                    seq_reads: Some(stats(2000, 50)),
                })
                .collect(),
        }
    }

    #[test]
    fn the_headline_compares_writes_and_p99_at_64_clients() {
        let (writes, p99) = writes_at_64(
            &run("quorate zab", 9000, 2000),
            &run("ZooKeeper 3.8.0", 3000, 4000),
        )
        .unwrap();
        assert!((writes - 3.0).abs() < 1e-9, "{writes}");
        assert!((p99 - 0.5).abs() < 1e-9, "{p99}");
        let mut no64 = run("quorate zab", 9000, 2000);
        no64.rows.retain(|r| r.clients != 64);
        assert!(writes_at_64(&no64, &run("zk", 1, 1)).is_none());
    }
}
