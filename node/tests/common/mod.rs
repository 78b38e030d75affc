//! A cluster of real `quorate serve` processes on loopback, for end-to-end tests.
//!
//! Each node runs the built binary (`CARGO_BIN_EXE_quorate`) with a TOML file written from
//! [`ServeConfig`], its data under one temporary folder, its log in `node-<id>.log` beside it.
//! Every wait is bounded; dropping the cluster kills every process still running (and, if the
//! test is failing, prints the end of each node's log).

#![allow(dead_code)]

pub mod kv;
pub mod relay;
pub mod timeline;
pub mod writers;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use net_quic::NodeId;
use node::client::{Client, ClientConfig};
use node::config::{MemberConfig, Protocol, ServeConfig};
use node::proto::Role;

pub const CLUSTER: &str = "quorate";
pub const CLIENT_NAME: &str = "test";
/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A UDP port on loopback that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback port");
    socket.local_addr().expect("local address")
}

/// Fast Raft timings so elections finish in well under a second.
pub fn fast(config: &mut ServeConfig) {
    config.raft.tick_ms = 20;
    config.raft.election_ticks = 10;
    config.raft.heartbeat_ticks = 2;
    config.limits.request_timeout_ms = 2_000;
}

/// A local cluster of `quorate` processes.
pub struct ProcCluster {
    dir: tempfile::TempDir,
    /// Certificates (CA, nodes 1..=9, client `test`).
    pub certs: PathBuf,
    /// Every node's address, by id (members and nodes started to join).
    pub addrs: BTreeMap<u64, SocketAddr>,
    /// The initial members.
    initial: Vec<MemberConfig>,
    procs: BTreeMap<u64, Child>,
    tune: fn(&mut ServeConfig),
    protocol: Protocol,
}

impl ProcCluster {
    /// Starts nodes `1..=n` as a fresh Raft cluster, each configured by [`fast`] then `tune`.
    pub fn start(n: u64, tune: fn(&mut ServeConfig)) -> ProcCluster {
        Self::start_with(Protocol::Raft, n, tune)
    }

    /// Starts nodes `1..=n` running `protocol`, each configured by [`fast`] then `tune`.
    pub fn start_with(protocol: Protocol, n: u64, tune: fn(&mut ServeConfig)) -> ProcCluster {
        let mut cluster = Self::prepare(protocol, n, tune);
        for id in 1..=n {
            cluster.write_config(id, false);
            cluster.spawn(id);
        }
        cluster
    }

    /// Like [`ProcCluster::start_with`], but starts nothing and writes no config file: the test
    /// writes (or adjusts) each node's file at [`ProcCluster::config_path`], then spawns it.
    pub fn prepare(protocol: Protocol, n: u64, tune: fn(&mut ServeConfig)) -> ProcCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let ids: Vec<NodeId> = (1..=9).map(NodeId).collect();
        net_quic::certs::write_dev_certs(&certs, CLUSTER, &ids, &[CLIENT_NAME.to_string()])
            .expect("dev certificates");
        let initial: Vec<MemberConfig> = (1..=n)
            .map(|id| MemberConfig {
                id,
                addr: free_addr(),
            })
            .collect();
        let cluster = ProcCluster {
            addrs: initial.iter().map(|m| (m.id, m.addr)).collect(),
            dir,
            certs,
            initial,
            procs: BTreeMap::new(),
            tune,
            protocol,
        };
        cluster
    }

    /// The temporary folder holding certificates, data and logs.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.root().join(format!("node-{id}"))
    }

    /// Node `id`'s config file.
    pub fn config_path(&self, id: u64) -> PathBuf {
        self.root().join(format!("node-{id}.toml"))
    }

    /// Node `id`'s log file (stdout and stderr).
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.root().join(format!("node-{id}.log"))
    }

    /// The configuration node `id` runs with.
    pub fn config(&self, id: u64, join: bool) -> ServeConfig {
        let addr = self.addrs[&id];
        let members = if join {
            // A joining node knows where the current members are; it is not one yet.
            self.addrs
                .iter()
                .filter(|(&other, _)| other != id)
                .map(|(&id, &addr)| MemberConfig { id, addr })
                .collect()
        } else {
            self.initial.clone()
        };
        let mut config = ServeConfig::new(id, addr, self.data_dir(id), &self.certs, members);
        config.join = join;
        config.protocol = self.protocol;
        fast(&mut config);
        (self.tune)(&mut config);
        config
    }

    /// Writes node `id`'s config file.
    pub fn write_config(&self, id: u64, join: bool) {
        let text = self
            .config(id, join)
            .to_toml_string()
            .expect("config to TOML");
        std::fs::write(self.config_path(id), text).expect("write config");
    }

    /// Starts node `id`'s process from its config file (appending to its log).
    pub fn spawn(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("open log");
        let child = Command::new(env!("CARGO_BIN_EXE_quorate"))
            .arg("serve")
            .arg("--config")
            .arg(self.config_path(id))
            // `QUORATE_TEST_NODE_LOG` raises the nodes' log level when a test is investigated.
            .env(
                "QUORATE_LOG",
                std::env::var("QUORATE_TEST_NODE_LOG").unwrap_or_else(|_| "info,quinn=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn quorate");
        self.procs.insert(id, child);
    }

    /// Allocates an address for a new node `id`, writes its config with `join = true` and starts it.
    pub fn spawn_joiner(&mut self, id: u64) -> SocketAddr {
        let addr = free_addr();
        self.addrs.insert(id, addr);
        self.write_config(id, true);
        self.spawn(id);
        addr
    }

    /// Kills node `id` with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.procs.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to node `id`'s process: `STOP` freezes it in place,
    /// sockets open, until `CONT` (a SIGKILL on drop still ends a frozen one).
    pub fn signal(&self, id: u64, signal: &str) {
        let child = self.procs.get(&id).expect("a running node");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} node {id}");
    }

    /// Stops node `id` with SIGTERM and waits (bounded) for a clean exit; returns its status.
    pub fn terminate(&mut self, id: u64) -> Option<ExitStatus> {
        let mut child = self.procs.remove(&id)?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Waits (bounded) for node `id`'s process to exit on its own; `None` if it is still running.
    pub fn wait_exit(&mut self, id: u64, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let child = self.procs.get_mut(&id)?;
            if let Ok(Some(status)) = child.try_wait() {
                self.procs.remove(&id);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether node `id`'s process is running.
    pub fn is_running(&mut self, id: u64) -> bool {
        match self.procs.get_mut(&id) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Node `id`'s log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// A client knowing every node started so far, with a generous operation timeout.
    pub fn client(&self) -> Client {
        self.client_with_timeout(WAIT, Duration::from_secs(2))
    }

    /// A client knowing every node started so far, giving up on an operation after `timeout`
    /// (each attempt after `attempt`).
    pub fn client_with_timeout(&self, timeout: Duration, attempt: Duration) -> Client {
        let ids: Vec<u64> = self.addrs.keys().copied().collect();
        self.client_of(&ids, timeout, attempt)
    }

    /// A client knowing only members `ids`, giving up on an operation after `timeout` (each
    /// attempt after `attempt`).
    pub fn client_of(&self, ids: &[u64], timeout: Duration, attempt: Duration) -> Client {
        let endpoints: Vec<(u64, SocketAddr)> =
            ids.iter().map(|id| (*id, self.addrs[id])).collect();
        let mut config = ClientConfig::from_cert_dir(CLUSTER, &self.certs, CLIENT_NAME, endpoints)
            .expect("client credentials");
        config.timeout = timeout;
        config.attempt_timeout = attempt;
        Client::connect(config).expect("client")
    }

    /// Waits until one running member reports itself leader and the others that answer agree;
    /// returns its id.
    pub async fn wait_leader(&self, client: &Client, among: &[u64]) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut leaders = Vec::new();
            let mut followers_agree = true;
            for &id in among {
                if let Ok(Ok(status)) =
                    tokio::time::timeout(Duration::from_secs(1), client.status_of(id)).await
                {
                    if status.role == Role::Leader {
                        leaders.push(status.id);
                    } else if status.leader.is_none() {
                        followers_agree = false;
                    }
                }
            }
            if leaders.len() == 1 && followers_agree {
                return leaders[0];
            }
            assert!(
                Instant::now() < deadline,
                "no single leader among {among:?} within {WAIT:?} (leaders seen: {leaders:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the CLI against this cluster; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_with_env(&[], args)
    }

    /// [`ProcCluster::cli`] with extra environment variables (e.g. `QUORATE_LOG` for a CLI
    /// debug log on stderr).
    pub fn cli_with_env(&self, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
        let endpoints: Vec<String> = self
            .addrs
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_quorate"))
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .arg("--certs")
            .arg(&self.certs)
            .arg("--client-name")
            .arg(CLIENT_NAME)
            .arg("--timeout")
            .arg("10s")
            .args(args)
            // The CLI's leader hint cache stays inside this cluster's folder.
            .env("XDG_CACHE_HOME", self.root().join("cache"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run quorate");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        if std::thread::panicking() {
            for &id in self.addrs.keys() {
                let log = self.log(id);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(30)..];
                eprintln!("---- node {id} log (last {} lines) ----", tail.len());
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
