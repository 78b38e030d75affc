//! `cargo xtask bench cluster --mode primary-backup --ack all,quorum,async`: the Quorate node with
//! `replication = "primary-backup"`, beside Raft in the same run and with the same load generator.
//!
//! - Throughput and latency: a fresh 3-node cluster per ack mode, the same closed-loop rows as
//!   Raft (puts, then linearizable gets, which the primary serves under its leases), node
//!   defaults otherwise (fsync on, 100 ms ticks: lease 1 s, grace 1.2 s).
//! - Failover, on the same cluster after its rows: four writers put continuously, the primary
//!   is killed with SIGKILL, and two times from the kill are measured against the configured
//!   lease and grace: until a survivor reports itself serving primary (status polled every
//!   10 ms), and until the first write acknowledged after the kill (necessarily by the new
//!   primary). The writers' client gives up on an unanswered attempt after 300 ms (its default
//!   is 2 s, which would otherwise dominate the second figure).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use node::client::Client;
use node::config::{AckSetting, PrimaryBackupSettings, Replication};

use crate::bench_cluster::{run_rows, Quorate, SystemRun};
use crate::cluster::{self, QuorateCluster};

/// One failover measurement.
#[derive(Debug, Clone)]
pub(crate) struct Failover {
    /// The ack mode.
    pub ack: AckSetting,
    /// The primary killed.
    pub killed: u64,
    /// The node serving afterwards.
    pub next: Option<u64>,
    /// Kill → a survivor reports itself serving.
    pub serving: Duration,
    /// Kill → first acknowledged write.
    pub took: Duration,
    /// The configured lease and grace period.
    pub lease: Duration,
    /// Grace period.
    pub grace: Duration,
}

/// The system's name in tables (and in the `cluster-<name>-vs-raft` headline).
fn name(ack: AckSetting) -> &'static str {
    match ack {
        AckSetting::All => "primary-backup-all",
        AckSetting::Quorum => "primary-backup-quorum",
        AckSetting::Async => "primary-backup-async",
    }
}

/// The serving primary's id, once one serves and takes a write.
async fn wait_serving(nodes: &mut QuorateCluster, timeout: Duration) -> anyhow::Result<u64> {
    let mut config = nodes.client_config()?;
    config.timeout = Duration::from_secs(2);
    let client = Client::connect(config)?;
    let deadline = Instant::now() + timeout;
    loop {
        nodes.check_running()?;
        if client.put(b"ready".to_vec(), Vec::new()).await.is_ok() {
            for &(id, _) in &nodes.endpoints {
                if let Ok(status) = client.status_of(id).await {
                    if status.role == node::proto::Role::Leader {
                        client.close().await;
                        return Ok(id);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            client.close().await;
            bail!("no primary-backup primary took a write within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills the primary under four writers; returns the time to the first write acknowledged after.
async fn failover(
    nodes: &QuorateCluster,
    primary: u64,
    ack: AckSetting,
    settings: &PrimaryBackupSettings,
    tick: Duration,
) -> anyhow::Result<Failover> {
    let mut config = nodes.client_config()?;
    config.timeout = OP_FAILOVER_TIMEOUT;
    config.attempt_timeout = Duration::from_millis(300);
    let client = Arc::new(Client::connect(config.clone())?);
    let mut probe_config = config;
    probe_config.timeout = Duration::from_millis(200);
    probe_config.attempt_timeout = Duration::from_millis(100);
    let probe = Client::connect(probe_config)?;
    client.put(b"failover-warm".to_vec(), Vec::new()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, stop, acks) = (client.clone(), stop.clone(), acks.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("fo-{w}-{i:08}").into_bytes();
                client.put(key, vec![b'.'; 256]).await?;
                acks.lock().expect("acks").push(Instant::now());
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = nodes
        .pids()
        .into_iter()
        .find(|(n, _)| *n == format!("node-{primary}"))
        .map(|(_, pid)| pid)
        .context("the primary's process")?;
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()?;
    let killed_at = Instant::now();
    if !status.success() {
        bail!("kill -KILL {pid} failed");
    }
    let survivors: Vec<u64> = nodes
        .endpoints
        .iter()
        .map(|&(id, _)| id)
        .filter(|&id| id != primary)
        .collect();
    let deadline = killed_at + OP_FAILOVER_TIMEOUT;
    let (serving, next) = 'found: loop {
        for &id in &survivors {
            if let Ok(s) = probe.status_of(id).await {
                let serves = s.detail("serving") == Some("true");
                if s.role == node::proto::Role::Leader && serves {
                    break 'found (killed_at.elapsed(), Some(id));
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no survivor served within {OP_FAILOVER_TIMEOUT:?} of the primary's death");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    probe.close().await;
    // The first acknowledgement received a moment after the kill (an answer already on its way
    // over loopback when the primary died arrives within microseconds).
    let margin = Duration::from_millis(2);
    let took = loop {
        let first = acks
            .lock()
            .expect("acks")
            .iter()
            .find(|t| **t > killed_at + margin)
            .copied();
        if let Some(t) = first {
            break t - killed_at;
        }
        if Instant::now() > deadline {
            bail!("no write acknowledged within {OP_FAILOVER_TIMEOUT:?} of the primary's death");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.context("writer task")??;
    }
    client.close().await;
    Ok(Failover {
        ack,
        killed: primary,
        next,
        serving,
        took,
        lease: tick * settings.lease_ticks as u32,
        grace: tick * settings.grace_ticks as u32,
    })
}

/// A write that waits for a failover may take this long.
const OP_FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// One system per ack mode, each on a fresh cluster; then (if `with_failover`) a failover on
/// that cluster.
pub(crate) async fn run_primary(
    bin: &Path,
    dir: &Path,
    acks: &[AckSetting],
    clients: &[usize],
    ops: usize,
    with_failover: bool,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<SystemRun>, Vec<Failover>)> {
    let mut runs = Vec::new();
    let mut failovers = Vec::new();
    for &ack in acks {
        progress.set_message(format!(
            "starting 3 Quorate primary-backup nodes (ack={ack})"
        ));
        let ports = cluster::free_ports(3, true)?;
        let mut nodes = QuorateCluster::start_tuned(bin, &dir.join(name(ack)), &ports, &|_, c| {
            c.replication = Replication::PrimaryBackup;
            c.primary_backup.ack = ack;
        })?;
        let settings = PrimaryBackupSettings {
            ack,
            ..PrimaryBackupSettings::default()
        };
        let tick = Duration::from_millis(node::config::RaftSettings::default().tick_ms);
        let result = async {
            wait_serving(&mut nodes, Duration::from_secs(30)).await?;
            let system = Quorate {
                config: nodes.client_config()?,
                protocol: name(ack),
            };
            let pids: Vec<u32> = nodes.pids().into_iter().map(|(_, pid)| pid).collect();
            let run = run_rows(&system, &pids, clients, ops, false, progress).await?;
            nodes.check_running()?;
            if !with_failover {
                return anyhow::Ok((run, None));
            }
            progress.set_message(format!("primary-backup ack={ack}: failover"));
            let primary = wait_serving(&mut nodes, Duration::from_secs(30)).await?;
            let failover = failover(&nodes, primary, ack, &settings, tick).await?;
            anyhow::Ok((run, Some(failover)))
        }
        .await;
        progress.set_message("stopping Quorate primary-backup");
        nodes.stop().await;
        let (run, failover) = result?;
        runs.push(run);
        failovers.extend(failover);
    }
    Ok((runs, failovers))
}

/// Prints the failover table.
pub(crate) fn print_failovers(failovers: &[Failover]) {
    println!(
        "Primary-backup failover: primary killed (SIGKILL) under 4 writers -> first write acknowledged after"
    );
    println!(
        "{:>8} {:>7} {:>5} {:>10} {:>10} {:>8} {:>8} {:>14}",
        "ack", "killed", "next", "serving", "first ack", "lease", "grace", "first ack ÷ lease"
    );
    for f in failovers {
        println!(
            "{:>8} {:>7} {:>5} {:>8}ms {:>8}ms {:>6}ms {:>6}ms {:>14.2}",
            f.ack.name(),
            f.killed,
            f.next.map_or_else(|| "?".into(), |n| n.to_string()),
            f.serving.as_millis(),
            f.took.as_millis(),
            f.lease.as_millis(),
            f.grace.as_millis(),
            f.took.as_secs_f64() / f.lease.as_secs_f64()
        );
    }
}
