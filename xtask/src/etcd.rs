//! A local 3-member etcd cluster on loopback, as the baseline of `cargo xtask bench cluster
//! --peer etcd`: default settings (fsync on), each member its own data directory, free ports.
//!
//! Only the processes live here; the load generator speaks to etcd through the `etcd-client`
//! crate in `bench_cluster` (behind the `etcd` feature, whose build needs `protoc`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cluster::{free_ports, Supervisor, STOP_GRACE};

/// How to get etcd, for messages.
pub const INSTALL_HINT: &str =
    "apt-get install -y etcd-server   (Debian's etcd 3.4; puts `etcd` on PATH)";

/// The `etcd` binary on PATH, installing Debian's `etcd-server` with apt-get when it is missing and
/// we are root; otherwise an error that says how to install it.
pub fn ensure_etcd() -> anyhow::Result<PathBuf> {
    if let Some(path) = which("etcd") {
        return Ok(path);
    }
    if which("apt-get").is_some() && is_root() {
        eprintln!("etcd is not on PATH: installing Debian's etcd-server with apt-get");
        apt_install("etcd-server")?;
        if let Some(path) = which("etcd") {
            return Ok(path);
        }
    }
    bail!("`etcd` is not on PATH. Install etcd 3.4 with:\n    {INSTALL_HINT}\nthen run the benchmark again.")
}

/// `apt-get install -y <package>` (after `apt-get update`, which a fresh machine needs).
pub fn apt_install(package: &str) -> anyhow::Result<()> {
    let quiet = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    let update = quiet(&["update", "-q"]).context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed ({update})");
    }
    let install = quiet(&["install", "-y", "-q", package]).context("running apt-get install")?;
    if !install.success() {
        bail!("apt-get install -y {package} failed ({install})");
    }
    Ok(())
}

/// The first `name` in PATH that is a file.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether this process runs as root (so apt-get can install).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `etcd --version`'s first line, e.g. `etcd Version: 3.4.23`.
pub fn version(etcd: &Path) -> String {
    Command::new(etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "etcd (unknown version)".into())
}

/// A running local etcd cluster. Dropping it kills the members; [`EtcdCluster::stop`] stops
/// them with SIGTERM first.
pub struct EtcdCluster {
    /// Client URLs, one per member (`http://127.0.0.1:<port>`).
    pub client_urls: Vec<String>,
    procs: Supervisor,
}

impl EtcdCluster {
    /// Starts `members` etcd members with data under `dir` (one subdirectory each) and waits
    /// until each answers its health endpoint through `etcdctl`-free TCP polling.
    pub fn start(etcd: &Path, dir: &Path, members: usize) -> anyhow::Result<Self> {
        let client_ports = free_ports(members, false)?;
        let peer_ports = free_ports(members, false)?;
        let name = |i: usize| format!("etcd-{i}");
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", peer_ports[i]);
        let client_urls: Vec<String> = client_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let initial_cluster = (0..members)
            .map(|i| format!("{}={}", name(i), peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Supervisor::default();
        for (i, client_url) in client_urls.iter().enumerate() {
            let data = dir.join(name(i));
            std::fs::create_dir_all(&data)?;
            let mut cmd = Command::new(etcd);
            cmd.arg("--name")
                .arg(name(i))
                .arg("--data-dir")
                .arg(&data)
                .arg("--listen-client-urls")
                .arg(client_url)
                .arg("--advertise-client-urls")
                .arg(client_url)
                .arg("--listen-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-token")
                .arg("quorate-bench")
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--logger")
                .arg("zap")
                .arg("--log-level")
                .arg("warn");
            procs.spawn(&name(i), &mut cmd, &dir.join(format!("{}.log", name(i))))?;
        }
        Ok(EtcdCluster { client_urls, procs })
    }

    /// Process ids of the members.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.pids().into_iter().map(|(_, pid)| pid).collect()
    }

    /// Errors if a member has exited (with the end of its log).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.procs.check_running()
    }

    /// Waits until every member accepts TCP connections on its client port, or errors after
    /// `timeout` (or as soon as a member exits).
    pub async fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.procs
            .wait_tcp(
                &self
                    .client_urls
                    .iter()
                    .map(|u| u.trim_start_matches("http://").to_string())
                    .collect::<Vec<_>>(),
                "etcd member",
                timeout,
            )
            .await
    }

    /// Stops every member (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.procs.stop_reporting(STOP_GRACE).await;
        Ok(())
    }
}
