//! `replication = "peer"`: the settings of peer-to-peer (multi-master) replication.
//!
//! ```toml
//! replication = "peer"             # default "consensus" (the `protocol` group)
//!
//! [peer]                           # optional; defaults shown
//! n = 3                            # replicas per key (capped at the member count)
//! r = 2                            # replicas a read hears from, unless the client asks otherwise
//! w = 2                            # replicas holding a write durably before it is acknowledged
//! vnodes = 64                      # points per member on the hash ring
//! policy = "siblings"              # or "lww": how concurrent writes resolve
//! anti_entropy_interval_ms = 1000  # Merkle exchanges start this often
//! hint_retry_ms = 500              # unacknowledged pushes (hints) are replayed this often
//! max_hints_per_peer = 10000       # hints kept per peer; past it anti-entropy repairs instead
//! gc_interval_ms = 5000            # tombstone collection attempts
//! tombstone_grace_ms = 30000       # wait after every replica holds a tombstone
//!
//! [peer.prefixes]                  # optional: a policy per key prefix (longest prefix wins)
//! "cache/" = "lww"
//! "views/" = "counter"             # CRDTs, merged automatically: "counter" (PN-counter),
//! "tags/" = "or-set"               # "or-set" (add wins over a concurrent remove),
//! "owner/" = "lww-register"        # "lww-register"; written with `quorate kv update`
//! ```
//!
//! Every member must use the same `n`, `vnodes`, `policy` and `prefixes` (placement and merges
//! depend on them). Timing is driven by the node's tick (`[raft] tick_ms`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which replication the node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replication {
    /// One consensus group (`protocol` picks Raft, Multi-Paxos or Zab).
    #[default]
    Consensus,
    /// Peer-to-peer multi-master replication (`replication-peer`): any node takes writes.
    Peer,
    /// Primary-backup replication (`replication-primary`, PacificA) with a Raft configuration
    /// manager: see `config::primary`.
    PrimaryBackup,
}

impl std::str::FromStr for Replication {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "consensus" => Ok(Replication::Consensus),
            "peer" => Ok(Replication::Peer),
            "primary-backup" => Ok(Replication::PrimaryBackup),
            other => Err(format!(
                "unknown replication {other:?}; expected \"consensus\", \"peer\" or \"primary-backup\""
            )),
        }
    }
}

/// How concurrent writes to one key resolve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerPolicy {
    /// Reads return every concurrent value; a write with the read's context resolves them.
    #[default]
    Siblings,
    /// Last writer wins by hybrid logical clock: concurrent writes are dropped (documented loss).
    Lww,
    /// A positive-negative counter (CRDT): `kv update KEY incr N`; concurrent increments add up.
    Counter,
    /// An observed-remove set (CRDT): `kv update KEY add|remove ELEMENT`; an add wins over a
    /// concurrent remove.
    OrSet,
    /// A last-writer-wins register (CRDT) by hybrid logical clock: `kv update KEY assign VALUE`.
    LwwRegister,
}

impl PeerPolicy {
    /// Whether keys under this policy are CRDTs (written with `kv update`, never deleted).
    pub fn is_crdt(self) -> bool {
        matches!(
            self,
            PeerPolicy::Counter | PeerPolicy::OrSet | PeerPolicy::LwwRegister
        )
    }
}

/// `[peer]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSettings {
    /// N: replicas per key.
    pub n: usize,
    /// Default R.
    pub r: usize,
    /// Default W.
    pub w: usize,
    /// Ring points per member.
    pub vnodes: u32,
    /// Conflict policy of every key no prefix names. Must not be a CRDT (it would make every
    /// key a CRDT, which no `kv put` can write).
    pub policy: PeerPolicy,
    /// Policies per key prefix (the longest matching prefix wins).
    pub prefixes: BTreeMap<String, PeerPolicy>,
    /// Anti-entropy interval.
    pub anti_entropy_interval_ms: u64,
    /// Hint replay interval.
    pub hint_retry_ms: u64,
    /// Hints kept per peer (at least 1); pushes past it are left to anti-entropy.
    pub max_hints_per_peer: usize,
    /// Tombstone collection interval.
    pub gc_interval_ms: u64,
    /// Grace after every replica holds a tombstone.
    pub tombstone_grace_ms: u64,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            n: 3,
            r: 2,
            w: 2,
            vnodes: 64,
            policy: PeerPolicy::Siblings,
            prefixes: BTreeMap::new(),
            anti_entropy_interval_ms: 1_000,
            hint_retry_ms: 500,
            max_hints_per_peer: 10_000,
            gc_interval_ms: 5_000,
            tombstone_grace_ms: 30_000,
        }
    }
}

impl PeerSettings {
    /// Checks the quorum settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.n == 0 {
            return Err("peer.n must be at least 1".into());
        }
        for (name, v) in [("peer.r", self.r), ("peer.w", self.w)] {
            if !(1..=self.n).contains(&v) {
                return Err(format!("{name} = {v} must be in 1..={} (peer.n)", self.n));
            }
        }
        if self.vnodes == 0 {
            return Err("peer.vnodes must be at least 1".into());
        }
        if self.max_hints_per_peer == 0 {
            return Err("peer.max_hints_per_peer must be at least 1".into());
        }
        if self.policy.is_crdt() {
            return Err(format!(
                "peer.policy = {:?} is a CRDT; name CRDT key ranges in [peer.prefixes] and keep \
                 the default \"siblings\" or \"lww\"",
                self.policy
            ));
        }
        if self.prefixes.contains_key("") {
            return Err(
                "peer.prefixes: an empty prefix would cover every key; set peer.policy instead"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_must_fit_n() {
        assert!(PeerSettings::default().validate().is_ok());
        let bad = PeerSettings {
            w: 4,
            ..PeerSettings::default()
        };
        assert!(bad.validate().unwrap_err().contains("peer.w"));
        assert_eq!("peer".parse::<Replication>(), Ok(Replication::Peer));
        assert!("gossip".parse::<Replication>().is_err());
    }

    #[test]
    fn prefixes_parse_from_toml_and_a_crdt_default_is_refused() {
        let settings: PeerSettings = toml::from_str(
            "policy = \"lww\"\n[prefixes]\n\"views/\" = \"counter\"\n\"tags/\" = \"or-set\"\n\"owner/\" = \"lww-register\"\n",
        )
        .expect("parses");
        assert_eq!(settings.policy, PeerPolicy::Lww);
        assert_eq!(settings.prefixes["views/"], PeerPolicy::Counter);
        assert_eq!(settings.prefixes["tags/"], PeerPolicy::OrSet);
        assert_eq!(settings.prefixes["owner/"], PeerPolicy::LwwRegister);
        assert!(settings.validate().is_ok());
        let crdt_default = PeerSettings {
            policy: PeerPolicy::Counter,
            ..PeerSettings::default()
        };
        assert!(crdt_default.validate().unwrap_err().contains("CRDT"));
        let mut empty = PeerSettings::default();
        empty.prefixes.insert(String::new(), PeerPolicy::Lww);
        assert!(empty.validate().unwrap_err().contains("empty prefix"));
        assert!(toml::from_str::<PeerSettings>("[prefixes]\n\"a/\" = \"gcounter\"\n").is_err());
    }
}
