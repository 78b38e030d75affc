//! `cargo xtask cluster`: a local Quorate cluster on loopback, plus the process management that
//! `cargo xtask bench cluster` shares (start processes, wait until ready, stop them all).
//!
//! - [`Supervisor`] owns child processes. Each runs in its own process group (so the terminal's
//!   Ctrl-C reaches only this tool, which then stops the children in order), with its output in a
//!   log file. [`Supervisor::stop`] sends SIGTERM, waits a grace period, then SIGKILLs; dropping a
//!   supervisor (an error, a panic) SIGKILLs and reaps whatever still runs, so nothing is left
//!   behind.
//! - [`build_quorate`] builds the release `quorate` binary; [`QuorateCluster`] writes the dev
//!   certificates and one `node.toml` per node, starts the nodes and waits for a leader.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long [`Supervisor::stop`] waits after SIGTERM before it SIGKILLs.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Child processes that are stopped when the supervisor is stopped or dropped.
#[derive(Default)]
pub struct Supervisor {
    procs: Vec<Proc>,
}

/// How one process ended in [`Supervisor::stop`].
#[derive(Debug)]
pub struct Stopped {
    /// The name given to [`Supervisor::spawn`].
    pub name: String,
    /// Its exit status (`None` if it could not be reaped).
    pub status: Option<ExitStatus>,
    /// Whether it needed SIGKILL after the grace period.
    pub killed: bool,
}

impl Supervisor {
    /// Starts `cmd` as `name` in its own process group, stdin closed, stdout and stderr appended
    /// to `log`.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        });
        Ok(())
    }

    /// The process ids, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), p.child.id()))
            .collect()
    }

    /// An error naming the first process that has exited, with the end of its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    log_tail(&p.log, 20)
                );
            }
        }
        Ok(())
    }

    /// Waits until every address accepts TCP connections, or errors after `timeout` (or as soon
    /// as a process exits); `what` names a server in the error ("etcd member", …).
    pub async fn wait_tcp(
        &mut self,
        addrs: &[String],
        what: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for addr in addrs {
            loop {
                self.check_running()?;
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("{what} at {addr} did not listen within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// [`Supervisor::stop`], saying on stderr which processes had to be killed.
    pub async fn stop_reporting(&mut self, grace: Duration) {
        for s in self.stop(grace).await {
            if s.killed {
                eprintln!("{} did not stop within {grace:?}: killed", s.name);
            }
        }
    }

    /// Kills `name` at once (SIGKILL, as a crash) and forgets it; `false` if no such process.
    pub fn kill(&mut self, name: &str) -> bool {
        let Some(at) = self.procs.iter().position(|p| p.name == name) else {
            return false;
        };
        let mut p = self.procs.remove(at);
        let _ = p.child.kill();
        let _ = p.child.wait();
        true
    }

    /// Stops every process: SIGTERM to all, wait up to `grace` for them to exit, SIGKILL the rest.
    pub async fn stop(&mut self, grace: Duration) -> Vec<Stopped> {
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                signal(p.child.id(), "TERM");
            }
        }
        let deadline = Instant::now() + grace;
        let mut stopped = Vec::new();
        for mut p in std::mem::take(&mut self.procs) {
            let mut status = None;
            let mut killed = false;
            loop {
                match p.child.try_wait() {
                    Ok(Some(s)) => {
                        status = Some(s);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(None) => {
                        killed = true;
                        let _ = p.child.kill();
                        status = p.child.wait().ok();
                        break;
                    }
                    Err(_) => break,
                }
            }
            stopped.push(Stopped {
                name: p.name,
                status,
                killed,
            });
        }
        stopped
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, so either way the caller stops its children and
/// removes its data instead of dying with them still running.
pub async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Sends a signal by name (`TERM`, `KILL`) with kill(1): the workspace forbids `unsafe`, and this
/// avoids a libc binding for one call.
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `lines` lines of a text file (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `n` distinct free loopback ports for `proto` (`tcp` or `udp`), found by binding port 0. The
/// sockets are closed before returning, so another program could take a port in between; the
/// window is small and the failure (a process that cannot bind) is reported clearly.
pub fn free_ports(n: usize, udp: bool) -> anyhow::Result<Vec<u16>> {
    let mut tcp_keep = Vec::new();
    let mut udp_keep = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = if udp {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let port = s.local_addr()?.port();
            udp_keep.push(s);
            port
        } else {
            let s = std::net::TcpListener::bind("127.0.0.1:0")?;
            let port = s.local_addr()?.port();
            tcp_keep.push(s);
            port
        };
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory for this workspace (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The cargo that runs this tool (`$CARGO`), or `cargo`, without the package variables that
/// `cargo run` gave this process: build scripts (ring's) watch some of them, so inheriting them
/// would make the nested build differ from a plain `cargo build` and rebuild half the tree.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    for (name, _) in std::env::vars_os() {
        let name_str = name.to_string_lossy();
        if name_str.starts_with("CARGO_PKG_")
            || name_str.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*name_str,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// Builds `quorate` in release mode and returns the binary's path.
pub fn build_quorate() -> anyhow::Result<PathBuf> {
    let status = cargo()
        .args(["build", "--release", "-p", "node", "--bin", "quorate"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p node --bin quorate failed ({status})");
    }
    let bin = target_dir().join("release").join("quorate");
    if !bin.exists() {
        bail!("built quorate but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// The cluster name of the dev certificates.
pub const CLUSTER: &str = "quorate";
/// The client certificate `cargo xtask cluster` writes (the CLI's default `--client-name`).
pub const CLIENT_NAME: &str = "admin";

/// A running local Quorate cluster: node `i` (1-based) listens on `127.0.0.1:<ports[i-1]>`
/// (UDP, QUIC, peers and clients), keeps its data in `<dir>/node-<i>/data` and its log in
/// `<dir>/node-<i>/node.log`, and reads `<dir>/node-<i>/node.toml`. Certificates are in
/// `<dir>/certs`.
pub struct QuorateCluster {
    /// The folder holding everything.
    pub dir: PathBuf,
    /// Node ids and client addresses.
    pub endpoints: Vec<(u64, std::net::SocketAddr)>,
    bin: PathBuf,
    procs: Supervisor,
}

impl QuorateCluster {
    /// Writes certificates (reusing an existing CA in `<dir>/certs`) and node configs, then starts
    /// one `bin serve --config <node.toml>` per port.
    pub fn start(bin: &Path, dir: &Path, ports: &[u16]) -> anyhow::Result<Self> {
        Self::start_with(bin, dir, ports, node::config::Protocol::Raft)
    }

    /// [`QuorateCluster::start`] with the nodes running `protocol`.
    pub fn start_with(
        bin: &Path,
        dir: &Path,
        ports: &[u16],
        protocol: node::config::Protocol,
    ) -> anyhow::Result<Self> {
        Self::start_tuned(bin, dir, ports, &|_, config| config.protocol = protocol)
    }

    /// [`QuorateCluster::start`] with each node's configuration adjusted by `tune(id, config)`
    /// before it is written (replication mode, member addresses, timings).
    pub fn start_tuned(
        bin: &Path,
        dir: &Path,
        ports: &[u16],
        tune: &dyn Fn(u64, &mut node::config::ServeConfig),
    ) -> anyhow::Result<Self> {
        use node::config::{MemberConfig, ServeConfig};

        let dir = absolute(dir)?;
        let certs = dir.join("certs");
        let ids: Vec<u64> = (1..=ports.len() as u64).collect();
        let node_ids: Vec<net_quic::NodeId> = ids.iter().map(|&id| net_quic::NodeId(id)).collect();
        net_quic::certs::write_dev_certs(&certs, CLUSTER, &node_ids, &[CLIENT_NAME.to_string()])
            .with_context(|| format!("writing dev certificates to {}", certs.display()))?;
        let endpoints: Vec<(u64, std::net::SocketAddr)> = ids
            .iter()
            .zip(ports)
            .map(|(&id, &port)| (id, std::net::SocketAddr::from(([127, 0, 0, 1], port))))
            .collect();
        let members: Vec<MemberConfig> = endpoints
            .iter()
            .map(|&(id, addr)| MemberConfig { id, addr })
            .collect();
        let mut procs = Supervisor::default();
        for &(id, addr) in &endpoints {
            let node_dir = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir)
                .with_context(|| format!("creating {}", node_dir.display()))?;
            let mut config =
                ServeConfig::new(id, addr, node_dir.join("data"), &certs, members.clone());
            config.cluster = CLUSTER.to_string();
            tune(id, &mut config);
            config.validate()?;
            let toml_path = node_dir.join("node.toml");
            std::fs::write(&toml_path, config.to_toml_string()?)
                .with_context(|| format!("writing {}", toml_path.display()))?;
            spawn_node(&mut procs, bin, &dir, id)?;
        }
        Ok(QuorateCluster {
            dir,
            endpoints,
            bin: bin.to_path_buf(),
            procs,
        })
    }

    /// Kills node `id` with SIGKILL (a crash: nothing unsynced survives).
    pub fn kill_node(&mut self, id: u64) -> anyhow::Result<()> {
        if !self.procs.kill(&format!("node-{id}")) {
            bail!("node {id} is not running");
        }
        Ok(())
    }

    /// Starts node `id` again from its configuration and data.
    pub fn restart_node(&mut self, id: u64) -> anyhow::Result<()> {
        spawn_node(&mut self.procs, &self.bin, &self.dir, id)
    }

    /// The certificate folder.
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// A client configuration for the `admin` client certificate.
    pub fn client_config(&self) -> anyhow::Result<node::client::ClientConfig> {
        Ok(node::client::ClientConfig::from_cert_dir(
            CLUSTER,
            &self.certs(),
            CLIENT_NAME,
            self.endpoints.clone(),
        )?)
    }

    /// `--endpoints` as the CLI takes it.
    pub fn endpoints_flag(&self) -> String {
        self.endpoints
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Errors if a node has exited (with the end of its log).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.procs.check_running()
    }

    /// The process ids, by node name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs.pids()
    }

    /// Waits until every node reports the same leader, or errors after `timeout` (at once if a
    /// node exits). Returns the leader's id.
    pub async fn wait_leader(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let mut config = self.client_config()?;
        config.timeout = Duration::from_millis(500);
        config.attempt_timeout = Duration::from_millis(300);
        let client = node::client::Client::connect(config)?;
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            self.procs.check_running()?;
            let mut leaders = Vec::new();
            for &(id, _) in &self.endpoints {
                match client.status_of(id).await {
                    Ok(status) => leaders.push(status.leader),
                    Err(e) => {
                        last = format!("node {id}: {e}");
                        leaders.push(None);
                    }
                }
            }
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader)) {
                    client.close().await;
                    return Ok(*leader);
                }
            }
            if Instant::now() > deadline {
                client.close().await;
                bail!("no leader agreed by every node within {timeout:?} ({last})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every node (SIGTERM, then SIGKILL after [`STOP_GRACE`]).
    pub async fn stop(mut self) -> Vec<Stopped> {
        self.procs.stop(STOP_GRACE).await
    }
}

/// `bin serve --config <dir>/node-<id>/node.toml`, its output appended to that node's log.
fn spawn_node(procs: &mut Supervisor, bin: &Path, dir: &Path, id: u64) -> anyhow::Result<()> {
    let node_dir = dir.join(format!("node-{id}"));
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(node_dir.join("node.toml"));
    procs.spawn(&format!("node-{id}"), &mut cmd, &node_dir.join("node.log"))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// Arguments of `cargo xtask cluster`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Folder holding certificates, node configs, data and logs (default: target/quorate-cluster).
    /// An existing cluster folder is reused: its nodes restart from their data.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// UDP port of node 1; node i listens on base-port + i - 1 (the CLI's default endpoints are
    /// 127.0.0.1:7001,7002,7003).
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Delete the folder's data, configs and certificates first.
    #[arg(long)]
    fresh: bool,
}

/// Runs the command: build, certificates, configs, start, wait for a leader, print how to reach
/// it, then wait for Ctrl-C and stop every node.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes must be between 1 and 64");
    }
    let Some(last_port) = args.base_port.checked_add(args.nodes as u16 - 1) else {
        bail!(
            "--base-port {} + {} nodes overflows the port range",
            args.base_port,
            args.nodes
        );
    };
    let dir = absolute(
        &args
            .dir
            .unwrap_or_else(|| target_dir().join("quorate-cluster")),
    )?;
    if args.fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ports: Vec<u16> = (args.base_port..=last_port).collect();
    for &port in &ports {
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            bail!("UDP port 127.0.0.1:{port} is taken (another cluster running?); stop it or pass --base-port");
        }
    }
    eprintln!("building quorate (release)...");
    let bin = build_quorate()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mut cluster = QuorateCluster::start(&bin, &dir, &ports)?;
        let outcome = tokio::select! {
            r = cluster.wait_leader(Duration::from_secs(30)) => r.map(Some),
            _ = interrupted() => Ok(None),
        };
        let leader = match outcome {
            Ok(Some(leader)) => leader,
            Ok(None) => {
                eprintln!("interrupted before a leader was elected; stopping");
                report_stopped(cluster.stop().await);
                return Ok(());
            }
            Err(e) => {
                report_stopped(cluster.stop().await);
                return Err(e);
            }
        };
        print_banner(&cluster, &bin, leader);
        let watch = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Err(e) = cluster.check_running() {
                    return e;
                }
            }
        };
        let exited = tokio::select! {
            e = watch => Some(e),
            _ = interrupted() => None,
        };
        eprintln!(
            "stopping {} nodes (SIGTERM, SIGKILL after {STOP_GRACE:?})...",
            cluster.endpoints.len()
        );
        report_stopped(cluster.stop().await);
        match exited {
            Some(e) => Err(e.context("a node stopped on its own")),
            None => Ok(()),
        }
    })
}

fn report_stopped(stopped: Vec<Stopped>) {
    for s in stopped {
        let how = match (s.killed, s.status) {
            (true, _) => "did not stop in time: killed".to_string(),
            (false, Some(status)) => format!("stopped ({status})"),
            (false, None) => "could not be reaped".to_string(),
        };
        eprintln!("  {}: {how}", s.name);
    }
}

fn print_banner(cluster: &QuorateCluster, bin: &Path, leader: u64) {
    let certs = cluster.certs();
    let endpoints = cluster.endpoints_flag();
    let bin = bin.display();
    println!();
    println!(
        "Quorate cluster up: {} nodes, leader node-{leader}",
        cluster.endpoints.len()
    );
    println!("  folder:    {}", cluster.dir.display());
    for ((name, pid), (id, addr)) in cluster.pids().iter().zip(&cluster.endpoints) {
        let leads = if *id == leader { "  (leader)" } else { "" };
        println!(
            "  {name}:    {addr} (UDP/QUIC)  pid {pid}  config {}  log {}{leads}",
            cluster.dir.join(format!("node-{id}/node.toml")).display(),
            cluster.dir.join(format!("node-{id}/node.log")).display()
        );
    }
    println!(
        "  certs:     {} (client certificate `{CLIENT_NAME}`)",
        certs.display()
    );
    println!();
    println!("Try it (from another terminal):");
    println!(
        "  export QUORATE_ENDPOINTS={endpoints} QUORATE_CERTS={}",
        certs.display()
    );
    println!("  {bin} kv put greeting hello");
    println!("  {bin} kv get greeting");
    println!("  {bin} cluster status");
    println!("or with explicit flags:");
    println!(
        "  {bin} kv put greeting hello --endpoints {endpoints} --certs {}",
        certs.display()
    );
    println!();
    println!("Ctrl-C stops every node.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_terminates_children_and_reports_how() {
        let dir = tempfile::tempdir().unwrap();
        let mut procs = Supervisor::default();
        procs
            .spawn(
                "sleeper",
                Command::new("sleep").arg("300"),
                &dir.path().join("s.log"),
            )
            .unwrap();
        // A child that ignores SIGTERM needs the SIGKILL after the grace period.
        procs
            .spawn(
                "stubborn",
                Command::new("sh").args(["-c", "trap '' TERM; echo ready; sleep 300"]),
                &dir.path().join("t.log"),
            )
            .unwrap();
        procs.check_running().unwrap();
        // Let the shell install its trap before it is signalled.
        while !std::fs::read_to_string(dir.path().join("t.log"))
            .unwrap()
            .contains("ready")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stopped = procs.stop(Duration::from_millis(300)).await;
        assert_eq!(stopped.len(), 2);
        assert!(!stopped[0].killed, "sleep stops on SIGTERM");
        assert!(stopped[1].killed, "the trap ignores SIGTERM");
        assert!(stopped.iter().all(|s| s.status.is_some()));
    }

    #[test]
    fn drop_kills_what_still_runs_and_an_exit_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let pid;
        {
            let mut procs = Supervisor::default();
            procs
                .spawn(
                    "sleeper",
                    Command::new("sleep").arg("300"),
                    &dir.path().join("s.log"),
                )
                .unwrap();
            pid = procs.pids()[0].1;
        }
        // Reaped by the drop: no such process any more.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());

        let mut procs = Supervisor::default();
        procs
            .spawn(
                "failing",
                Command::new("sh").args(["-c", "echo cannot bind; exit 3"]),
                &dir.path().join("f.log"),
            )
            .unwrap();
        let err = loop {
            match procs.check_running() {
                Ok(()) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => break e.to_string(),
            }
        };
        assert!(err.contains("failing exited"), "{err}");
        assert!(err.contains("cannot bind"), "{err}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(5, true).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
    }
}
