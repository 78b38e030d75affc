//! `replication = "primary-backup"`: the settings of primary-backup replication (PacificA, crate
//! `replication-primary`).
//!
//! ```toml
//! replication = "primary-backup"
//!
//! [primary_backup]                 # optional; defaults shown
//! ack = "all"                      # or "quorum" or "async": when the primary acknowledges a write
//! beacon_ticks = 2                 # the primary's prepares (beacons) to each replica, in ticks
//! lease_ticks = 10                 # a backup's answer lets the primary serve this long
//! grace_ticks = 12                 # a backup that heard nothing this long asks to take over
//! async_window = 64                # `async`: most entries a backup may lag (what a failover can lose)
//! max_batch = 256                  # entries per prepare
//! ```
//!
//! Ticks are the node's tick (`[raft] tick_ms`), counted from the wall clock (a late tick is
//! caught up, so a stalled loop never stretches its lease). The configuration manager is a Raft
//! group of `[[members]]` using the `[raft]` timing. Every member must use the same `ack`.

use serde::{Deserialize, Serialize};

/// When the primary acknowledges a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckSetting {
    /// Every member of the in-sync set holds it durably (a dead backup is removed first).
    #[default]
    All,
    /// A majority of the replicas hold it durably.
    Quorum,
    /// The primary's own fsync; a failover loses at most `async_window` acknowledged writes.
    Async,
}

impl AckSetting {
    /// The name as in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            AckSetting::All => "all",
            AckSetting::Quorum => "quorum",
            AckSetting::Async => "async",
        }
    }
}

impl std::str::FromStr for AckSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(AckSetting::All),
            "quorum" => Ok(AckSetting::Quorum),
            "async" => Ok(AckSetting::Async),
            other => Err(format!(
                "unknown ack mode {other:?}; expected \"all\", \"quorum\" or \"async\""
            )),
        }
    }
}

impl std::fmt::Display for AckSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `[primary_backup]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrimaryBackupSettings {
    /// Acknowledgement mode.
    pub ack: AckSetting,
    /// Ticks between the primary's beacons to each replica.
    pub beacon_ticks: u64,
    /// Lease a backup's answer grants, in ticks from the prepare's send time.
    pub lease_ticks: u64,
    /// Ticks without a prepare before a backup asks to take over (at least `lease_ticks`).
    pub grace_ticks: u64,
    /// `async` mode: most entries a member's durable acknowledgement may lag the primary's log.
    pub async_window: u64,
    /// Entries per prepare.
    pub max_batch: usize,
}

impl Default for PrimaryBackupSettings {
    fn default() -> Self {
        PrimaryBackupSettings {
            ack: AckSetting::All,
            beacon_ticks: 2,
            lease_ticks: 10,
            grace_ticks: 12,
            async_window: 64,
            max_batch: 256,
        }
    }
}

impl PrimaryBackupSettings {
    /// Checks the timing (the engine's own rules, said in this file's terms).
    pub fn validate(&self) -> Result<(), String> {
        if self.beacon_ticks == 0 || self.lease_ticks <= self.beacon_ticks {
            return Err(
                "primary_backup.lease_ticks must exceed beacon_ticks, which must be at least 1"
                    .into(),
            );
        }
        if self.grace_ticks < self.lease_ticks {
            return Err("primary_backup.grace_ticks must be at least lease_ticks (else two primaries could serve at once)".into());
        }
        if self.async_window == 0 || self.max_batch == 0 {
            return Err("primary_backup.async_window and max_batch must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grace_period_shorter_than_the_lease_is_refused() {
        assert!(PrimaryBackupSettings::default().validate().is_ok());
        let bad = PrimaryBackupSettings {
            grace_ticks: 5,
            ..PrimaryBackupSettings::default()
        };
        assert!(bad.validate().unwrap_err().contains("grace_ticks"));
        assert_eq!("quorum".parse::<AckSetting>(), Ok(AckSetting::Quorum));
        assert!("some".parse::<AckSetting>().unwrap_err().contains("async"));
    }
}
