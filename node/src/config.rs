//! `ServeConfig`: everything one `quorate serve` process needs, loaded from TOML.
//!
//! ```toml
//! node_id = 1
//! cluster = "quorate"
//! listen = "127.0.0.1:7001"        # one QUIC endpoint for peers and clients (ALPNs differ)
//! data_dir = "data/node-1"
//! # join = true                    # a new member added with `quorate cluster add`: no bootstrap
//! protocol = "raft"                # or "multi-paxos" or "zab"; recorded in the data dir at creation
//! # replication = "peer"           # multi-master instead of one consensus group: see `config::peer`
//! # replication = "primary-backup" # PacificA primary-backup: see `config::primary`
//!
//! [certs]
//! dir = "certs"                    # ca.pem, node-<id>.pem, node-<id>.key (as `cargo xtask certs`)
//! # or explicit: cert = "...", key = "...", ca = "..."
//!
//! [[members]]                      # the initial cluster (this node included)
//! id = 1
//! addr = "127.0.0.1:7001"
//! [[members]]
//! id = 2
//! addr = "127.0.0.1:7002"
//!
//! [raft]                           # optional; defaults shown
//! tick_ms = 100
//! election_ticks = 10
//! heartbeat_ticks = 1
//! read_mode = "read-index"         # or "lease"
//!
//! [limits]                         # optional; defaults shown
//! max_key_bytes = 8192
//! max_value_bytes = 1048576
//! max_request_bytes = 2097152
//!
//! [snapshot]                       # optional; defaults shown
//! entries = 10000                  # snapshot + compact after this many applied entries (or 64 MiB)
//! trailing_entries = 1024          # entries kept below the snapshot for slightly lagging followers
//! ```
//!
//! Unknown keys are refused, so a typo is an error rather than a silently ignored setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod peer;
pub mod primary;
pub mod shards;
pub use peer::{PeerPolicy, PeerSettings, Replication};
pub use primary::{AckSetting, PrimaryBackupSettings};
pub use shards::ShardsConfig;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown or mistyped keys.
    #[error("parsing config: {0}")]
    Parse(#[from] toml::de::Error),
    /// The settings contradict each other or are out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The replication protocol a node runs its group with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Raft (`consensus_core::Raft`).
    #[default]
    Raft,
    /// Multi-Paxos (`consensus_core::paxos::MultiPaxos`).
    MultiPaxos,
    /// Zab, ZooKeeper's atomic broadcast (`consensus_core::zab::Zab`).
    Zab,
}

impl Protocol {
    /// The protocol's name as its engine reports it (`Consensus::NAME`) and as the data directory
    /// records it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Raft => "raft",
            Protocol::MultiPaxos => "multi-paxos",
            Protocol::Zab => "zab",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raft" => Ok(Protocol::Raft),
            "multi-paxos" | "multipaxos" | "paxos" => Ok(Protocol::MultiPaxos),
            "zab" => Ok(Protocol::Zab),
            other => Err(format!(
                "unknown protocol {other:?}; expected \"raft\", \"multi-paxos\" or \"zab\""
            )),
        }
    }
}

/// How a linearizable read confirms that the leader still leads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadModeSetting {
    /// A heartbeat round acknowledged by a quorum per batch of reads (always safe).
    #[default]
    ReadIndex,
    /// The leader's lease (no round trip; assumes bounded clock drift).
    Lease,
}

/// An initial member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Node id (non-zero; its certificate must name it).
    pub id: u64,
    /// Where it listens for peers and clients.
    pub addr: SocketAddr,
}

/// Where the node's TLS files are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertConfig {
    /// A folder laid out as `net_quic::certs` writes it (`ca.pem`, `node-<id>.pem/.key`).
    pub dir: Option<PathBuf>,
    /// Explicit certificate path (overrides `dir`).
    pub cert: Option<PathBuf>,
    /// Explicit key path (overrides `dir`).
    pub key: Option<PathBuf>,
    /// Explicit CA path (overrides `dir`).
    pub ca: Option<PathBuf>,
}

/// Raft timing and tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Ticks without a leader before an election (randomized up to twice this).
    pub election_ticks: u32,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: u32,
    /// How linearizable reads are confirmed.
    pub read_mode: ReadModeSetting,
    /// Append messages in flight per follower.
    pub max_inflight: usize,
    /// Payload bytes per append message.
    pub max_msg_bytes: u64,
    /// Uncommitted payload bytes the leader accepts before refusing writes as busy.
    pub max_uncommitted_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 1,
            read_mode: ReadModeSetting::ReadIndex,
            max_inflight: 256,
            max_msg_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest key.
    pub max_key_bytes: u64,
    /// Largest value.
    pub max_value_bytes: u64,
    /// Largest encoded request.
    pub max_request_bytes: u64,
    /// Most pairs a scan returns (and the value used for `limit = 0`).
    pub max_scan_limit: u32,
    /// Client requests waiting (proposed or reading) before new ones are refused as busy.
    pub max_pending_requests: usize,
    /// A request still unanswered after this long is answered with a timeout.
    pub request_timeout_ms: u64,
    /// Writes packed into one log entry at most (proposal batching).
    pub max_batch_ops: usize,
    /// Client sessions remembered; the least recently used is forgotten beyond this.
    pub max_sessions: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_key_bytes: 8 << 10,
            max_value_bytes: 1 << 20,
            max_request_bytes: 2 << 20,
            max_scan_limit: 10_000,
            max_pending_requests: 65_536,
            request_timeout_ms: 5_000,
            max_batch_ops: 4_096,
            max_sessions: 100_000,
        }
    }
}

/// When to snapshot the state machine and compact the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Take a snapshot once this many entries were applied since the last one.
    pub entries: u64,
    /// Entries kept in the log at and below a snapshot's index, so a follower slightly behind
    /// gets entries rather than a whole snapshot (0: compact everything the snapshot covers).
    pub trailing_entries: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            entries: 10_000,
            trailing_entries: 1024,
        }
    }
}

/// The configuration of one `quorate serve` process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// This node's id (non-zero; must match its certificate).
    pub node_id: u64,
    /// Cluster name (the certificates' DNS suffix; also recorded in the data dir).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// UDP address of the QUIC endpoint (peers and clients).
    pub listen: SocketAddr,
    /// Where the WAL and snapshots live.
    pub data_dir: PathBuf,
    /// TLS files.
    #[serde(default)]
    pub certs: CertConfig,
    /// The initial cluster, this node included (also the address book for peers).
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// Start as a new, not yet configured member that waits to be added (no bootstrap).
    #[serde(default)]
    pub join: bool,
    /// The replication protocol (default Raft).
    #[serde(default)]
    pub protocol: Protocol,
    /// Raft timing and tuning.
    #[serde(default)]
    pub raft: RaftSettings,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Snapshot policy.
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// Consensus (default) or peer-to-peer replication.
    #[serde(default)]
    pub replication: Replication,
    /// Peer-to-peer settings (used with `replication = "peer"`).
    #[serde(default)]
    pub peer: PeerSettings,
    /// Primary-backup settings (used with `replication = "primary-backup"`).
    #[serde(default)]
    pub primary_backup: PrimaryBackupSettings,
    /// Key-range shards (absent: one group holds every key); see `config::shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardsConfig>,
}

fn default_cluster() -> String {
    "quorate".to_string()
}

impl ServeConfig {
    /// A configuration with defaults for node `node_id` listening on `listen`, storing in
    /// `data_dir`, with TLS files in `cert_dir` and the given initial members.
    pub fn new(
        node_id: u64,
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
        cert_dir: impl Into<PathBuf>,
        members: Vec<MemberConfig>,
    ) -> Self {
        ServeConfig {
            node_id,
            cluster: default_cluster(),
            listen,
            data_dir: data_dir.into(),
            certs: CertConfig {
                dir: Some(cert_dir.into()),
                ..CertConfig::default()
            },
            members,
            join: false,
            protocol: Protocol::default(),
            raft: RaftSettings::default(),
            limits: LimitsConfig::default(),
            snapshot: SnapshotConfig::default(),
            replication: Replication::default(),
            peer: PeerSettings::default(),
            primary_backup: PrimaryBackupSettings::default(),
            shards: None,
        }
    }

    /// Parses and validates TOML.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: ServeConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Serializes to TOML (e.g. for `cargo xtask cluster` to write node files).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Checks ranges and contradictions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.node_id == 0 {
            return invalid("node_id must be non-zero".into());
        }
        if self.cluster.is_empty() {
            return invalid("cluster must not be empty".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for member in &self.members {
            if member.id == 0 {
                return invalid("member id 0 is reserved".into());
            }
            if !seen.insert(member.id) {
                return invalid(format!("member {} is listed twice", member.id));
            }
        }
        if !self.join && !seen.contains(&self.node_id) {
            return invalid(format!(
                "node {} is not in [[members]]; list it there, or set join = true for a node to be added later",
                self.node_id
            ));
        }
        if self.raft.tick_ms == 0 {
            return invalid("raft.tick_ms must be at least 1".into());
        }
        if self.raft.election_ticks <= self.raft.heartbeat_ticks || self.raft.heartbeat_ticks == 0 {
            return invalid(
                "raft.election_ticks must exceed raft.heartbeat_ticks, which must be at least 1"
                    .into(),
            );
        }
        if self.limits.max_key_bytes == 0 || self.limits.max_request_bytes == 0 {
            return invalid("limits must be non-zero".into());
        }
        if self.limits.max_batch_ops == 0 || self.limits.max_pending_requests == 0 {
            return invalid(
                "limits.max_batch_ops and max_pending_requests must be non-zero".into(),
            );
        }
        if self.certs.dir.is_none()
            && (self.certs.cert.is_none() || self.certs.key.is_none() || self.certs.ca.is_none())
        {
            return invalid("[certs] needs `dir`, or all of `cert`, `key` and `ca`".into());
        }
        if self.replication == Replication::Peer {
            self.peer.validate().map_err(ConfigError::Invalid)?;
            if self.join {
                return invalid(
                    "replication = \"peer\" has a fixed membership: join is not supported".into(),
                );
            }
        }
        if let Some(shards) = &self.shards {
            shards.validate().map_err(ConfigError::Invalid)?;
            if self.replication != Replication::Consensus {
                let name = match self.replication {
                    Replication::Peer => "peer",
                    _ => "primary-backup",
                };
                return invalid(format!(
                    "[shards] needs consensus replication (the default); replication = \"{name}\" runs one group"
                ));
            }
            if self.join {
                return invalid(
                    "[shards] groups have a fixed membership for now: join is not supported".into(),
                );
            }
        }
        if self.replication == Replication::PrimaryBackup {
            self.primary_backup
                .validate()
                .map_err(ConfigError::Invalid)?;
            if self.join {
                return invalid(
                    "replication = \"primary-backup\" has a fixed set of replicas: join is not supported".into(),
                );
            }
        }
        Ok(())
    }

    /// The tick interval.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.raft.tick_ms)
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.request_timeout_ms)
    }

    /// Certificate, key and CA paths.
    pub fn cert_paths(&self) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.certs.dir.clone().unwrap_or_default();
        let (cert, key) = net_quic::certs::node_paths(&dir, net_quic::NodeId(self.node_id));
        let ca = net_quic::certs::ca_cert_path(&dir);
        (
            self.certs.cert.clone().unwrap_or(cert),
            self.certs.key.clone().unwrap_or(key),
            self.certs.ca.clone().unwrap_or(ca),
        )
    }

    /// The address of member `id` in the initial member list.
    pub fn member_addr(&self, id: u64) -> Option<SocketAddr> {
        self.members.iter().find(|m| m.id == id).map(|m| m.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        node_id = 1
        listen = "127.0.0.1:7001"
        data_dir = "data/node-1"
        [certs]
        dir = "certs"
        [[members]]
        id = 1
        addr = "127.0.0.1:7001"
        [[members]]
        id = 2
        addr = "127.0.0.1:7002"
        [raft]
        tick_ms = 20
        read_mode = "lease"
    "#;

    #[test]
    fn parses_the_documented_layout_with_defaults() {
        let config = ServeConfig::from_toml_str(EXAMPLE).unwrap();
        assert_eq!(config.node_id, 1);
        assert_eq!(config.cluster, "quorate");
        assert_eq!(config.members.len(), 2);
        assert_eq!(config.raft.tick_ms, 20);
        assert_eq!(config.raft.read_mode, ReadModeSetting::Lease);
        assert_eq!(config.raft.election_ticks, 10);
        assert_eq!(config.limits, LimitsConfig::default());
        let (cert, key, ca) = config.cert_paths();
        assert_eq!(cert, Path::new("certs/node-1.pem"));
        assert_eq!(key, Path::new("certs/node-1.key"));
        assert_eq!(ca, Path::new("certs/ca.pem"));
    }

    #[test]
    fn the_protocol_defaults_to_raft_and_names_multi_paxos_and_zab() {
        let config = ServeConfig::from_toml_str(EXAMPLE).unwrap();
        assert_eq!(config.protocol, Protocol::Raft);
        let paxos = format!("protocol = \"multi-paxos\"\n{EXAMPLE}");
        let config = ServeConfig::from_toml_str(&paxos).unwrap();
        assert_eq!(config.protocol, Protocol::MultiPaxos);
        assert_eq!(config.protocol.name(), "multi-paxos");
        let zab = format!("protocol = \"zab\"\n{EXAMPLE}");
        let config = ServeConfig::from_toml_str(&zab).unwrap();
        assert_eq!(config.protocol, Protocol::Zab);
        assert_eq!(config.protocol.name(), "zab");
        let unknown = format!("protocol = \"viewstamped\"\n{EXAMPLE}");
        let error = ServeConfig::from_toml_str(&unknown).unwrap_err();
        assert!(error.to_string().contains("multi-paxos"), "{error}");
        assert_eq!("multi-paxos".parse::<Protocol>(), Ok(Protocol::MultiPaxos));
        assert_eq!("zab".parse::<Protocol>(), Ok(Protocol::Zab));
        let error = "vr".parse::<Protocol>().unwrap_err();
        assert!(error.contains("\"zab\""), "{error}");
    }

    #[test]
    fn round_trips_through_toml() {
        let config = ServeConfig::from_toml_str(EXAMPLE).unwrap();
        let text = config.to_toml_string().unwrap();
        assert_eq!(ServeConfig::from_toml_str(&text).unwrap(), config);
    }

    #[test]
    fn refuses_unknown_keys() {
        let text = format!("{EXAMPLE}\nelection_tiks = 3\n");
        assert!(matches!(
            ServeConfig::from_toml_str(&text),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn refuses_a_node_missing_from_members_unless_joining() {
        let text = EXAMPLE.replace("node_id = 1", "node_id = 3");
        let error = ServeConfig::from_toml_str(&text).unwrap_err();
        assert!(error.to_string().contains("join = true"), "{error}");
        let joining = format!("join = true\n{text}");
        assert!(ServeConfig::from_toml_str(&joining).is_ok());
    }

    #[test]
    fn refuses_duplicate_members_and_bad_timing() {
        let dup = EXAMPLE.replace("id = 2", "id = 1");
        assert!(ServeConfig::from_toml_str(&dup).is_err());
        let timing = EXAMPLE.replace("tick_ms = 20", "tick_ms = 20\nelection_ticks = 1");
        assert!(ServeConfig::from_toml_str(&timing).is_err());
    }
}
