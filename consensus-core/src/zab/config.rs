//! Zab's tunables and the planted faults.

use crate::error::Error;
use crate::types::NodeId;

/// Faults that can be switched on to prove the simulator catches them (feature `planted-bugs`).
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The leader proposes (and counts acks) before a quorum ACKed NEWLEADER, and followers take
    /// proposals before they are synchronised.
    BroadcastBeforeNewLeaderQuorum,
    /// A follower ACKs proposals before its write is confirmed durable.
    AckBeforeDurable,
    /// Votes (and the leader's check of its followers' histories) are ordered by server id only.
    ElectionIgnoresZxid,
}

/// The planted faults the code checks for; without the `planted-bugs` feature none can be set.
#[cfg(not(feature = "planted-bugs"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlantedBug {
    BroadcastBeforeNewLeaderQuorum,
    AckBeforeDurable,
    ElectionIgnoresZxid,
}

/// Configuration of one Zab member.
#[derive(Clone, Debug)]
pub struct Config {
    /// This member's id (non-zero).
    pub id: NodeId,
    /// Ticks without hearing the leader before a follower goes back to looking; the actual timeout
    /// is drawn from `election_tick ..< 2 * election_tick`. A leader that has not heard from a
    /// quorum within it steps down.
    pub election_tick: u32,
    /// Ticks between the leader's pings (must be below `election_tick`).
    pub heartbeat_tick: u32,
    /// Ticks after which an unanswered request (FOLLOWERINFO, a sync chunk, proposals) is resent.
    pub resend_tick: u32,
    /// Maximum payload bytes in one PROPOSAL or sync message (at least one entry is always sent).
    pub max_msg_bytes: u64,
    /// Maximum proposals sent to one follower and not yet acknowledged.
    pub max_inflight: u64,
    /// Proposals are refused while the leader holds more uncommitted entries than this.
    pub max_uncommitted: u64,
    /// Maximum reads waiting for their quorum round.
    pub max_pending_reads: usize,
    /// Maximum payload bytes of committed entries handed out per `ready()`.
    pub max_committed_bytes_per_ready: u64,
    /// Index the state machine has already applied when this instance starts.
    pub applied: u64,
    /// Test-only fault injection.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

impl Config {
    /// Whether the planted fault `bug` is switched on (always false without `planted-bugs`).
    #[allow(unused_variables)]
    pub(crate) fn has_bug(&self, bug: PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.planted_bug == Some(bug);
        #[cfg(not(feature = "planted-bugs"))]
        return false;
    }

    /// Defaults for member `id`: election timeout 10–19 ticks, pings every 2 ticks, resend after 4,
    /// 1 MiB messages, 256 proposals in flight per follower, 10 000 uncommitted proposals.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            resend_tick: 4,
            max_msg_bytes: 1 << 20,
            max_inflight: 256,
            max_uncommitted: 10_000,
            max_pending_reads: 1024,
            max_committed_bytes_per_ready: 16 << 20,
            applied: 0,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Checks the configuration for contradictions.
    pub fn validate(&self) -> Result<(), Error> {
        if self.id == 0 {
            return Err(Error::InvalidConfig("node id 0 is reserved"));
        }
        if self.heartbeat_tick == 0 || self.resend_tick == 0 {
            return Err(Error::InvalidConfig(
                "heartbeat_tick and resend_tick must be at least 1",
            ));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(Error::InvalidConfig(
                "election_tick must exceed heartbeat_tick",
            ));
        }
        if self.max_inflight == 0 || self.max_pending_reads == 0 {
            return Err(Error::InvalidConfig(
                "max_inflight and max_pending_reads must be at least 1",
            ));
        }
        Ok(())
    }
}
