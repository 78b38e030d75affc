//! `cargo xtask bench cluster --shards 1,100,1000`: what idle groups cost. For each shard count
//! three `quorate` nodes run that many data groups (plus the meta group), every node in every
//! group; once every group on every node knows its leader (and, with quiescence on, is quiet),
//! the servers' CPU is read over `--idle-secs`. Each count runs with quiescence off first — the
//! baseline of the same run — then on.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench_cluster::process_cpu;
use crate::cluster;

/// One idle measurement.
struct IdleRow {
    shards: usize,
    quiesce: bool,
    ready_after: Duration,
    quiet_groups: usize,
    groups: usize,
    /// Servers' CPU over the window, as a percentage of one core (all three summed).
    cpu_percent: f64,
}

/// Split keys dividing the 8-hex-digit prefixes `00000000`..`ffffffff` into `shards` ranges (the
/// load rows put that prefix, a hash of the key, in front of every key: see
/// `bench_cluster_shard_load`).
pub(crate) fn split_keys(shards: usize) -> Vec<String> {
    (1..shards as u64)
        .map(|i| format!("{:08x}", (i << 32) / shards as u64))
        .collect()
}

/// Runs every shard count, quiescence off then on, and prints the table.
pub(crate) async fn run_idle(
    bin: &Path,
    dir: &Path,
    shards: &[usize],
    window: Duration,
) -> anyhow::Result<()> {
    if shards.iter().any(|&n| n == 0 || n > 100_000) {
        bail!("--shards takes shard counts between 1 and 100000");
    }
    let mut rows = Vec::new();
    for &n in shards {
        for quiesce in [false, true] {
            eprintln!(
                "{n} shards, quiescence {}: starting 3 nodes",
                on_off(quiesce)
            );
            let sub = dir.join(format!("shards-{n}-{}", on_off(quiesce)));
            let row = idle_row(bin, &sub, n, quiesce, window).await?;
            eprintln!(
                "  ready after {:.1}s, {}/{} groups quiet, servers {:.2}% of one core",
                row.ready_after.as_secs_f64(),
                row.quiet_groups,
                row.groups,
                row.cpu_percent
            );
            rows.push(row);
        }
    }
    println!();
    println!(
        "Idle sharded clusters: 3 nodes, every node in every group; servers' CPU summed over the 3 \
         processes, {}s window",
        window.as_secs()
    );
    println!(
        "{:>7} {:>9} {:>10} {:>14} {:>16} {:>13}",
        "shards", "quiesce", "ready (s)", "quiet groups", "CPU (% 1 core)", "vs baseline"
    );
    for row in &rows {
        let baseline = rows
            .iter()
            .find(|r| r.shards == row.shards && !r.quiesce)
            .map_or(row.cpu_percent, |r| r.cpu_percent);
        println!(
            "{:>7} {:>9} {:>10.1} {:>14} {:>16.2} {:>12.3}x",
            row.shards,
            on_off(row.quiesce),
            row.ready_after.as_secs_f64(),
            format!("{}/{}", row.quiet_groups, row.groups),
            row.cpu_percent,
            row.cpu_percent / baseline.max(1e-9)
        );
    }
    Ok(())
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

async fn idle_row(
    bin: &Path,
    dir: &Path,
    shards: usize,
    quiesce: bool,
    window: Duration,
) -> anyhow::Result<IdleRow> {
    let ports = cluster::free_ports(3, true)?;
    let split = split_keys(shards);
    let started = Instant::now();
    let mut nodes = cluster::QuorateCluster::start_tuned(bin, dir, &ports, &|_, config| {
        config.shards = Some(node::config::ShardsConfig {
            quiesce,
            ..node::config::ShardsConfig::split(split.clone())
        });
    })?;
    let result = async {
        let client = node::client::Client::connect(nodes.client_config()?)?;
        let quiet_groups = wait_ready(&mut nodes, &client, shards, quiesce).await?;
        let ready_after = started.elapsed();
        // Let the start-up work (elections, first snapshots, segment preallocation) settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pids: Vec<String> = nodes
            .pids()
            .into_iter()
            .map(|(_, pid)| pid.to_string())
            .collect();
        let cpu = |pids: &[String]| pids.iter().map(|p| process_cpu(p)).sum::<Duration>();
        let before = cpu(&pids);
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let used = cpu(&pids).saturating_sub(before);
        let elapsed = t0.elapsed();
        nodes.check_running()?;
        client.close().await;
        anyhow::Ok(IdleRow {
            shards,
            quiesce,
            ready_after,
            quiet_groups,
            groups: shards * 3,
            cpu_percent: used.as_secs_f64() * 100.0 / elapsed.as_secs_f64(),
        })
    }
    .await
    .context(format!("{shards} shards, quiescence {}", on_off(quiesce)));
    for s in nodes.stop().await {
        if s.killed {
            eprintln!("{} did not stop in time: killed", s.name);
        }
    }
    result
}

/// Waits until every node knows every group's leader (and, with `quiesce`, every group on every
/// node is quiet); returns how many (group, node) pairs are quiet.
pub(crate) async fn wait_ready(
    nodes: &mut cluster::QuorateCluster,
    client: &node::client::Client,
    shards: usize,
    quiesce: bool,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let groups = shards * 3;
    loop {
        nodes.check_running()?;
        let mut ready = true;
        let mut quiet = 0;
        for id in 1..=3 {
            match client.shard_map_of(id).await {
                Ok(map) => {
                    ready &=
                        map.shards.len() == shards && map.shards.iter().all(|s| s.leader.is_some());
                    quiet += map.shards.iter().filter(|s| s.quiet).count();
                }
                Err(_) => ready = false,
            }
        }
        if ready && (!quiesce || quiet == groups) {
            return Ok(quiet);
        }
        if Instant::now() > deadline {
            bail!("{shards} shards not ready within 300s ({quiet}/{groups} quiet)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keys_give_the_asked_number_of_increasing_ranges() {
        assert!(split_keys(1).is_empty());
        let keys = split_keys(1000);
        assert_eq!(keys.len(), 999);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(keys[0], "00418937");
        assert_eq!(split_keys(4), ["40000000", "80000000", "c0000000"]);
    }
}
