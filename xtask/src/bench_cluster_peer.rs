//! `cargo xtask bench cluster --mode peer`: the Quorate node with `replication = "peer"`, beside
//! Raft in the same run and with the same load generator.
//!
//! - Throughput and latency: a fresh 3-node peer cluster per W (1 and 2), the same closed-loop
//!   rows as Raft (blind puts with W, then gets with R = N + 1 − W so each read sees the write it
//!   checks). Clients spread evenly over the nodes (client `i` at member `i mod 3`; any node
//!   coordinates).
//! - Convergence after a heal: one 3-node peer cluster whose nodes reach each other through UDP
//!   relays; per round node 3 is cut off, `K` new keys are written at node 1 (W = 2, 64 tasks),
//!   the cut heals, and the time until node 3 holds every key is measured. Two series: the
//!   node's defaults (hinted handoff repairs up to 10,000 keys, Merkle anti-entropy the rest),
//!   and anti-entropy alone: `max_hints_per_peer = 1`, and node 3 is killed (SIGKILL) instead
//!   of cut off, then restarted, timed from the restart (process start included) — a cut alone is not enough,
//!   because QUIC retransmits the pushes its window held once the relay passes packets again.
//!   Printed as a table and drawn as `peer-convergence.svg`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use node::client::{Client, ClientConfig};
use node::config::{MemberConfig, Replication};
use plotters::prelude::*;
use replication_peer::VersionVector;

use crate::bench_cluster::{run_rows, KvHandle, System, SystemRun, OP_TIMEOUT};
use crate::cluster::{self, QuorateCluster};

/// Replicas per key (every node, with 3 members).
const N: u32 = 3;
/// Client objects shared by the tasks, as for the Raft system.
const CONNECTIONS: usize = 8;

/// Quorate in peer mode with a fixed W (and R = N + 1 − W).
struct PeerQuorate {
    config: ClientConfig,
    w: u32,
}

#[derive(Clone)]
struct PeerHandle {
    client: Arc<Client>,
    w: u32,
}

impl KvHandle for PeerHandle {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .peer_put(key, value, VersionVector::new(), Some(self.w))
            .await?;
        Ok(())
    }

    async fn get(&mut self, key: Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
        let read = self.client.peer_get(key, Some(N + 1 - self.w)).await?;
        match read.siblings.as_slice() {
            [] => Ok(None),
            [one] => Ok(one.value.as_ref().map(|v| v.to_vec())),
            many => bail!("{} siblings for a key written once", many.len()),
        }
    }
}

impl System for PeerQuorate {
    type Handle = PeerHandle;

    fn name(&self) -> String {
        format!("quorate peer W={}", self.w)
    }

    async fn handles(&self, clients: usize) -> anyhow::Result<Vec<PeerHandle>> {
        let mut shared = Vec::new();
        let mut members: Vec<u64> = self.config.endpoints.iter().map(|(id, _)| *id).collect();
        members.sort_unstable();
        for i in 0..clients.min(CONNECTIONS) {
            let mut config = self.config.clone();
            config.timeout = OP_TIMEOUT;
            // Client `i` coordinates at member `i mod 3`: the load spread evenly, where a
            // random client id (the client's own choice of member) puts 4 or more of the 8 on one node
            // three times in four (P = 0.74), and that node's queue set the row's latency.
            let coordinator = members[i % members.len()];
            config.endpoints.retain(|(id, _)| *id == coordinator);
            let client = Client::connect(config)?;
            client
                .peer_put(
                    format!("warm-up-{i}").into_bytes(),
                    Vec::new(),
                    VersionVector::new(),
                    Some(1),
                )
                .await
                .context("warm-up write")?;
            shared.push(Arc::new(client));
        }
        Ok((0..clients)
            .map(|i| PeerHandle {
                client: shared[i % shared.len()].clone(),
                w: self.w,
            })
            .collect())
    }
}

/// Waits until the cluster takes a write with W = 3 (every node up and connected).
async fn wait_ready(nodes: &mut QuorateCluster, timeout: Duration) -> anyhow::Result<()> {
    let mut config = nodes.client_config()?;
    config.timeout = Duration::from_secs(2);
    let client = Client::connect(config)?;
    let deadline = Instant::now() + timeout;
    loop {
        nodes.check_running()?;
        match client
            .peer_put(b"ready".to_vec(), Vec::new(), VersionVector::new(), Some(N))
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                bail!("the peer cluster took no W = {N} write within {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    client.close().await;
    Ok(())
}

/// The W = 1 and W = 2 systems, each on a fresh cluster.
pub(crate) async fn run_peer(
    bin: &Path,
    dir: &Path,
    clients: &[usize],
    ops: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<SystemRun>> {
    let mut runs = Vec::new();
    for w in [1, 2] {
        progress.set_message(format!("starting 3 Quorate peer nodes (W={w})"));
        let ports = cluster::free_ports(3, true)?;
        let mut nodes =
            QuorateCluster::start_tuned(bin, &dir.join(format!("peer-w{w}")), &ports, &|_, c| {
                c.replication = Replication::Peer;
            })?;
        let result = async {
            wait_ready(&mut nodes, Duration::from_secs(30)).await?;
            let system = PeerQuorate {
                config: nodes.client_config()?,
                w,
            };
            let pids: Vec<u32> = nodes.pids().into_iter().map(|(_, pid)| pid).collect();
            let run = run_rows(&system, &pids, clients, ops, false, progress).await;
            nodes.check_running()?;
            run
        }
        .await;
        nodes.stop().await;
        runs.push(result?);
    }
    Ok(runs)
}

/// A UDP relay in front of one node that can drop everything (how a round cuts node 3 off
/// without firewall rules). Datagrams from the target go back to the last other sender.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn new(target: SocketAddr) -> anyhow::Result<Relay> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let addr = socket.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cut.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut dialer = None;
            while !s.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if c.load(Ordering::Relaxed) {
                    continue;
                }
                let to = if from == target {
                    match dialer {
                        Some(d) => d,
                        None => continue,
                    }
                } else {
                    dialer = Some(from);
                    target
                };
                let _ = socket.send_to(&buf[..len], to);
            }
        });
        Ok(Relay {
            addr,
            cut,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What repairs the node that was cut off.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repair {
    /// The node's defaults: hinted handoff, then anti-entropy past the hint bound.
    HintsAndAntiEntropy,
    /// Merkle anti-entropy only (one hint per peer kept).
    AntiEntropyOnly,
}

impl Repair {
    /// Both series, in the order they run.
    pub const ALL: [Repair; 2] = [Repair::HintsAndAntiEntropy, Repair::AntiEntropyOnly];

    fn name(self) -> &'static str {
        match self {
            Repair::HintsAndAntiEntropy => "hints + anti-entropy",
            Repair::AntiEntropyOnly => "anti-entropy only",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Repair::HintsAndAntiEntropy => RGBColor(0x2c, 0xa0, 0x2c),
            Repair::AntiEntropyOnly => RGBColor(0x1f, 0x77, 0xb4),
        }
    }
}

/// One convergence round.
pub(crate) struct Convergence {
    /// What repaired it.
    pub repair: Repair,
    /// Keys written while node 3 was cut off.
    pub keys: usize,
    /// From the heal (or node 3's restart) until node 3 held them all.
    pub converged: Duration,
    /// Node 1's hints for node 3 at the heal.
    pub hints_at_heal: u64,
}

/// Runs the convergence rounds, one per entry of `divergent`.
pub(crate) async fn convergence(
    bin: &Path,
    dir: &Path,
    divergent: &[usize],
    repair: Repair,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Convergence>> {
    let ports = cluster::free_ports(3, true)?;
    let addr = |id: u64| SocketAddr::from(([127, 0, 0, 1], ports[id as usize - 1]));
    let mut relays = std::collections::BTreeMap::new();
    for a in 1..=3u64 {
        for b in (1..=3u64).filter(|&b| b != a) {
            relays.insert((a, b), Relay::new(addr(b))?);
        }
    }
    let members_of = |id: u64| -> Vec<MemberConfig> {
        (1..=3u64)
            .map(|m| MemberConfig {
                id: m,
                addr: if m == id {
                    addr(m)
                } else {
                    relays[&(id, m)].addr
                },
            })
            .collect()
    };
    let mut nodes =
        QuorateCluster::start_tuned(bin, &dir.join("peer-converge"), &ports, &|id, c| {
            c.replication = Replication::Peer;
            c.members = members_of(id);
            if repair == Repair::AntiEntropyOnly {
                c.peer.max_hints_per_peer = 1;
            }
        })?;
    let result = async {
        wait_ready(&mut nodes, Duration::from_secs(30)).await?;
        let mut config = nodes.client_config()?;
        config.timeout = OP_TIMEOUT;
        config.endpoints.retain(|(id, _)| *id == 1);
        let one = Arc::new(Client::connect(config.clone())?);
        let mut three_config = nodes.client_config()?;
        three_config.endpoints.retain(|(id, _)| *id == 3);
        three_config.timeout = Duration::from_secs(2);
        let three = Client::connect(three_config)?;
        let mut rows = Vec::new();
        let mut total = three.peer_status_of(3).await?.keys;
        for (round, &k) in divergent.iter().enumerate() {
            progress.set_message(format!(
                "peer convergence ({}): {k} divergent keys",
                repair.name()
            ));
            let cut = |on: bool| {
                for (&(a, b), r) in &relays {
                    if a == 3 || b == 3 {
                        r.cut.store(on, Ordering::Relaxed);
                    }
                }
            };
            if repair == Repair::AntiEntropyOnly {
                nodes.kill_node(3)?;
            } else {
                cut(true);
            }
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..64usize {
                let one = one.clone();
                tasks.spawn(async move {
                    for i in (t..k).step_by(64) {
                        let key = format!("div-{round:02}-{i:08}").into_bytes();
                        one.peer_put(key, vec![b'v'; 256], VersionVector::new(), Some(2))
                            .await?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.context("writer task")??;
            }
            total += k as u64;
            let hints_at_heal = one
                .peer_status_of(1)
                .await?
                .hints_pending
                .get(&3)
                .copied()
                .unwrap_or(0);
            let healed = Instant::now();
            if repair == Repair::AntiEntropyOnly {
                nodes.restart_node(3)?;
            } else {
                cut(false);
            }
            loop {
                nodes.check_running()?;
                if let Ok(s) = three.peer_status_of(3).await {
                    if s.keys >= total {
                        break;
                    }
                }
                if healed.elapsed() > Duration::from_secs(300) {
                    bail!("node 3 did not converge within 300 s after the heal ({k} keys)");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            rows.push(Convergence {
                repair,
                keys: k,
                converged: healed.elapsed(),
                hints_at_heal,
            });
        }
        anyhow::Ok(rows)
    }
    .await;
    nodes.stop().await;
    drop(relays);
    result
}

/// Prints the convergence table.
pub(crate) fn print_convergence(rows: &[Convergence]) {
    println!("peer convergence after a heal (node 3 cut off while keys were written at node 1 with W=2; defaults: tick 100 ms, anti-entropy every 1 s, hints replayed 64 per tick, 10,000 hints per peer; anti-entropy only: 1 hint per peer, node 3 killed instead of cut, timed from its restart, process start included)");
    println!(
        "{:>22} {:>15} {:>14} {:>12} {:>18}",
        "repair", "divergent keys", "converged (s)", "keys/s", "hints at heal"
    );
    for r in rows {
        let secs = r.converged.as_secs_f64();
        println!(
            "{:>22} {:>15} {:>14.2} {:>12.0} {:>18}",
            r.repair.name(),
            r.keys,
            secs,
            r.keys as f64 / secs.max(1e-9),
            r.hints_at_heal
        );
    }
}

/// Draws `peer-convergence.svg` (seconds to converge against divergent keys, both log).
pub(crate) fn plot_convergence(dir: &Path, rows: &[Convergence]) -> anyhow::Result<PathBuf> {
    let path = dir.join("peer-convergence.svg");
    draw(&path, rows)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))?;
    Ok(path)
}

fn draw(path: &Path, rows: &[Convergence]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_keys = rows.iter().map(|r| r.keys).max().unwrap_or(10) as f64;
    let max_s = rows
        .iter()
        .map(|r| r.converged.as_secs_f64())
        .fold(0.1, f64::max);
    let min_s = rows
        .iter()
        .map(|r| r.converged.as_secs_f64())
        .fold(f64::INFINITY, f64::min)
        .min(max_s);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Peer replication: convergence time after a heal (3 nodes, loopback)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (0.8..max_keys * 1.25).log_scale(),
            (min_s / 1.5..max_s * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("divergent keys")
        .y_desc("seconds until the healed node holds every key")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;
    for repair in Repair::ALL {
        let c = repair.color();
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.repair == repair)
            .map(|r| (r.keys as f64, r.converged.as_secs_f64()))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(format!("quorate peer ({})", repair.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
