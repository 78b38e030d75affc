//! Per-replica settings: the group, the acknowledgement mode and the lease timing.

use consensus_core::{Error, NodeId};
use serde::{Deserialize, Serialize};

use crate::configuration::Configuration;

/// When the primary acknowledges a write (per group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// PacificA: once every member of the in-sync set holds it durably (a dead or slow backup is
    /// first removed through the manager). No acknowledged write is lost by a failover.
    #[default]
    All,
    /// Once a majority of the group's replicas hold it durably. No acknowledged write is lost;
    /// a candidate first checks a majority's tails.
    Quorum,
    /// Once the primary's own write is durable. A failover loses at most
    /// [`Config::async_window`] acknowledged writes: a write is acknowledged only once every
    /// member's durable index is within that window of it.
    Async,
}

/// Planted bugs, to prove the simulator's checks bite. Only with the `planted-bugs` feature.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A backup processes prepares of a lower epoch as if they were current.
    AcceptLowerEpoch,
    /// A backup asks to become primary after two beacon intervals instead of its grace period.
    ServeBeforeGrace,
    /// An `all`-mode primary commits once its own write is durable.
    AllAckBeforeBackups,
    /// A primary answers `read_index` without holding its leases.
    ReadWithoutLease,
}

/// One replica's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica.
    pub id: NodeId,
    /// Every replica of the group (members of the in-sync set or not).
    pub replicas: Vec<NodeId>,
    /// Acknowledgement mode (the same on every replica of a group).
    pub ack: Ack,
    /// Ticks between the primary's beacons (prepares) to each replica.
    pub beacon_ticks: u64,
    /// A backup's answer lets the primary serve for this many ticks from the prepare's send time.
    pub lease_ticks: u64,
    /// A backup that heard nothing from its primary for this many ticks asks to take over;
    /// at least `lease_ticks`, so two primaries never serve at once.
    pub grace_ticks: u64,
    /// Ticks between retries of an unanswered request to the manager.
    pub retry_ticks: u64,
    /// Entries per prepare.
    pub max_batch: usize,
    /// `async` mode: most entries a member's durable acknowledgement may lag the primary's log.
    pub async_window: u64,
    /// Ticks after which a snapshot sent to a replica that has not confirmed it is sent again
    /// (a snapshot is large: it is not resent with every beacon).
    pub snapshot_retry_ticks: u64,
    /// Index the state machine was restored through (entries up to it are not handed out again).
    pub applied: u64,
    /// A planted bug.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

impl Config {
    /// Defaults for replica `id` of `replicas` with mode `ack`.
    pub fn new(id: NodeId, replicas: impl IntoIterator<Item = NodeId>, ack: Ack) -> Self {
        let mut replicas: Vec<NodeId> = replicas.into_iter().collect();
        replicas.sort_unstable();
        replicas.dedup();
        Config {
            id,
            replicas,
            ack,
            beacon_ticks: 2,
            lease_ticks: 10,
            grace_ticks: 12,
            retry_ticks: 4,
            max_batch: 32,
            async_window: 8,
            snapshot_retry_ticks: 40,
            applied: 0,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Refuses settings that would break the protocol's guarantees.
    pub fn validate(&self) -> Result<(), Error> {
        if self.id == 0 || !self.replicas.contains(&self.id) {
            return Err(Error::InvalidConfig(
                "id must be a non-zero member of replicas",
            ));
        }
        if self.grace_ticks < self.lease_ticks {
            return Err(Error::InvalidConfig(
                "grace_ticks must be at least lease_ticks",
            ));
        }
        if self.beacon_ticks == 0 || self.lease_ticks <= self.beacon_ticks {
            return Err(Error::InvalidConfig(
                "lease_ticks must exceed beacon_ticks > 0",
            ));
        }
        if self.max_batch == 0
            || self.retry_ticks == 0
            || self.async_window == 0
            || self.snapshot_retry_ticks == 0
        {
            return Err(Error::InvalidConfig(
                "max_batch, retry_ticks, async_window and snapshot_retry_ticks must be positive",
            ));
        }
        Ok(())
    }

    /// The group's first configuration: the lowest replica leads all of them.
    pub fn bootstrap(&self) -> Configuration {
        Configuration::bootstrap(self.replicas[0], self.replicas.iter().copied())
    }
}
