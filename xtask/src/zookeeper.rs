//! A local 3-server Apache ZooKeeper 3.8 ensemble on loopback, as the baseline of `cargo xtask
//! bench cluster --protocol zab --peer zookeeper`: Debian's `zookeeper` package, `forceSync=yes`
//! (its default: every transaction fsynced before it is acknowledged), each server its own data
//! directory and free loopback ports, the admin HTTP server off.
//!
//! The servers are started as `java ... QuorumPeerMain zoo.cfg` directly (not through
//! `zkServer.sh`, which daemonises), so the [`Supervisor`] holds the JVMs themselves and stops
//! them on every exit path. Only the processes live here; the load generator speaks to ZooKeeper
//! through the `zookeeper-client` crate in `bench_zookeeper` (behind the `zookeeper` feature).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cluster::{free_ports, Supervisor, STOP_GRACE};
use crate::etcd::{apt_install, which};

/// How to get ZooKeeper, for messages.
pub const INSTALL_HINT: &str =
    "apt-get install -y zookeeper   (Debian's ZooKeeper 3.8; puts its jars under /usr/share/java)";

/// The server jar of Debian's package; its manifest's Class-Path names the jars it needs.
const JAR: &str = "/usr/share/java/zookeeper.jar";
/// The server's main class, as the package's `environment` file names it.
const MAIN: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";
/// Heap of each server JVM (three of them share the machine with the load generator).
const HEAP: &str = "-Xmx512m";

/// What runs ZooKeeper: the `java` binary and the server jar.
#[derive(Debug, Clone)]
pub struct Install {
    /// The `java` on PATH.
    pub java: PathBuf,
    /// The server jar.
    pub jar: PathBuf,
}

/// ZooKeeper's jar and a `java`, installing Debian's `zookeeper` (which brings a JRE) with
/// apt-get when either is missing and we are root; otherwise an error that says how.
pub fn ensure_zookeeper() -> anyhow::Result<Install> {
    let found = || {
        let jar = PathBuf::from(JAR);
        Some(Install {
            java: which("java")?,
            jar: jar.is_file().then_some(jar)?,
        })
    };
    if let Some(install) = found() {
        return Ok(install);
    }
    if which("apt-get").is_some() && crate::etcd::is_root() {
        eprintln!("ZooKeeper is not installed: installing Debian's zookeeper with apt-get");
        apt_install("zookeeper")?;
        if let Some(install) = found() {
            return Ok(install);
        }
    }
    bail!("ZooKeeper's {JAR} or `java` is missing. Install ZooKeeper 3.8 with:\n    {INSTALL_HINT}\nthen run the benchmark again.")
}

/// The installed package's version, e.g. `ZooKeeper 3.8.0` (from dpkg; the jar itself prints it
/// only through a running server).
pub fn version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "zookeeper"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let v = String::from_utf8_lossy(&o.stdout).to_string();
            format!("ZooKeeper {}", v.split(['-', '+']).next().unwrap_or(&v))
        })
        .unwrap_or_else(|| "ZooKeeper (unknown version)".into())
}

/// The `zoo.cfg` of server `id` (1-based) of an ensemble whose server `i` (0-based) listens for
/// clients on `client_ports[i]` and for peers on `quorum_ports[i]` / `election_ports[i]`.
pub fn config(
    id: usize,
    data: &Path,
    client_ports: &[u16],
    quorum_ports: &[u16],
    election_ports: &[u16],
) -> String {
    let mut cfg = String::new();
    let _ = writeln!(cfg, "tickTime=2000");
    let _ = writeln!(cfg, "initLimit=10");
    let _ = writeln!(cfg, "syncLimit=5");
    let _ = writeln!(cfg, "dataDir={}", data.display());
    let _ = writeln!(cfg, "clientPort={}", client_ports[id - 1]);
    let _ = writeln!(cfg, "clientPortAddress=127.0.0.1");
    // ZooKeeper's default, written out: fsync each transaction log write before acknowledging.
    let _ = writeln!(cfg, "forceSync=yes");
    let _ = writeln!(cfg, "maxClientCnxns=0");
    let _ = writeln!(cfg, "admin.enableServer=false");
    let _ = writeln!(cfg, "autopurge.purgeInterval=0");
    for (i, (q, e)) in quorum_ports.iter().zip(election_ports).enumerate() {
        let _ = writeln!(cfg, "server.{}=127.0.0.1:{q}:{e}", i + 1);
    }
    cfg
}

/// A running local ZooKeeper ensemble. Dropping it kills the servers; [`ZooKeeperCluster::stop`]
/// stops them with SIGTERM first.
pub struct ZooKeeperCluster {
    /// Client addresses, one per server (`127.0.0.1:<port>`).
    pub client_addrs: Vec<String>,
    procs: Supervisor,
}

impl ZooKeeperCluster {
    /// Starts `members` servers with data under `dir` (one subdirectory each, with its `myid`).
    pub fn start(install: &Install, dir: &Path, members: usize) -> anyhow::Result<Self> {
        let client_ports = free_ports(members, false)?;
        let quorum_ports = free_ports(members, false)?;
        let election_ports = free_ports(members, false)?;
        let mut procs = Supervisor::default();
        for id in 1..=members {
            let name = format!("zookeeper-{id}");
            let home = dir.join(&name);
            let data = home.join("data");
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            std::fs::write(data.join("myid"), format!("{id}\n"))?;
            let cfg = home.join("zoo.cfg");
            std::fs::write(
                &cfg,
                config(id, &data, &client_ports, &quorum_ports, &election_ports),
            )?;
            let mut cmd = Command::new(&install.java);
            cmd.arg(HEAP)
                .arg("-Dzookeeper.admin.enableServer=false")
                .arg("-cp")
                .arg(&install.jar)
                .arg(MAIN)
                .arg(&cfg);
            procs.spawn(&name, &mut cmd, &dir.join(format!("{name}.log")))?;
        }
        let client_addrs = client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        Ok(ZooKeeperCluster {
            client_addrs,
            procs,
        })
    }

    /// Process ids of the servers.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.pids().into_iter().map(|(_, pid)| pid).collect()
    }

    /// Errors if a server has exited (with the end of its log).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.procs.check_running()
    }

    /// Waits until every server accepts TCP connections on its client port, or errors after
    /// `timeout` (or as soon as a server exits). A quorum is awaited by the client's first write.
    pub async fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.procs
            .wait_tcp(&self.client_addrs, "ZooKeeper server", timeout)
            .await
    }

    /// Stops every server (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.procs.stop_reporting(STOP_GRACE).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_every_server_and_this_ones_ports_with_fsync_on() {
        let cfg = config(
            2,
            Path::new("/tmp/zk-2/data"),
            &[2181, 2182, 2183],
            &[3001, 3002, 3003],
            &[4001, 4002, 4003],
        );
        assert!(cfg.contains("clientPort=2182\n"), "{cfg}");
        assert!(cfg.contains("dataDir=/tmp/zk-2/data\n"), "{cfg}");
        assert!(cfg.contains("forceSync=yes\n"), "{cfg}");
        assert!(cfg.contains("admin.enableServer=false\n"), "{cfg}");
        for line in [
            "server.1=127.0.0.1:3001:4001",
            "server.2=127.0.0.1:3002:4002",
            "server.3=127.0.0.1:3003:4003",
        ] {
            assert!(cfg.contains(line), "{line} missing from {cfg}");
        }
    }
}
