//! Multi-Paxos tunables and the planted faults.

use super::ballot::MAX_NODE_ID;
use crate::error::Error;
use crate::types::NodeId;

/// How a leader confirms it still leads before serving a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// A ballot-confirmation round: a majority answers that it still promises our ballot.
    Safe,
    /// Lease: no round trip while a majority acknowledged heartbeats sent within the election
    /// timeout (minus a drift margin). Safe because acceptors that heard a leader refuse to
    /// promise another ballot for an election timeout, and a restarted acceptor waits that long
    /// before promising anything.
    LeaseBased,
}

/// Faults that can be switched on to prove the checkers catch them (feature `planted-bugs`).
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// An acceptor accepts proposals whose ballot is below its promise.
    AcceptBelowPromise,
    /// A new leader ignores the accepted values its phase 1 recovered and proposes its own value
    /// (a no-op) in those slots.
    SkipPhaseOneForAcceptedSlot,
    /// Slots are handed out in `Ready::committed` as soon as they are accepted locally, before
    /// they are known chosen.
    ApplyBeforeChosen,
}

/// The planted faults the code checks for; without the `planted-bugs` feature none can be set.
#[cfg(not(feature = "planted-bugs"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlantedBug {
    AcceptBelowPromise,
    SkipPhaseOneForAcceptedSlot,
    ApplyBeforeChosen,
}

/// Configuration of one Multi-Paxos member.
#[derive(Clone, Debug)]
pub struct Config {
    /// This member's id (non-zero, below 65 536: it is encoded in ballots).
    pub id: NodeId,
    /// Ticks without hearing a leader before running phase 1; the actual timeout is drawn
    /// uniformly from `election_tick ..< 2 * election_tick` with the seeded RNG. A follower also
    /// forgets its leader hint after `election_tick` silent ticks.
    pub election_tick: u32,
    /// Ticks between a leader's heartbeats (must be below `election_tick`).
    pub heartbeat_tick: u32,
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Maximum payload bytes in one message (at least one entry is always sent).
    pub max_msg_bytes: u64,
    /// Maximum slots a leader has proposed and not yet seen chosen (the pipeline window).
    pub max_inflight_slots: u64,
    /// Proposals are refused while the leader holds more unchosen payload bytes than this.
    pub max_uncommitted_bytes: u64,
    /// Chosen slots are handed out as a range applied from storage
    /// ([`crate::Ready::committed_in_storage`]); a host that copies them out reads at most this
    /// many payload bytes at a time ([`crate::CommittedRange::max_bytes_per_read`]). The range
    /// itself is every chosen slot not yet handed out.
    pub max_committed_bytes_per_ready: u64,
    /// Maximum reads waiting for confirmation; more are refused.
    pub max_pending_reads: usize,
    /// Index the state machine has already applied when this instance starts (after a restart:
    /// usually the snapshot index). Chosen entries after it are handed out again.
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

    /// Defaults for member `id`: phase 1 after 10–19 silent ticks, heartbeat every tick, safe
    /// reads, 1 MiB messages, 256 slots in flight, 64 MiB unchosen.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            read_mode: ReadMode::Safe,
            max_msg_bytes: 1 << 20,
            max_inflight_slots: 256,
            max_uncommitted_bytes: 64 << 20,
            max_committed_bytes_per_ready: 16 << 20,
            max_pending_reads: 4096,
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
        if self.id > MAX_NODE_ID {
            return Err(Error::InvalidConfig(
                "node ids must be below 65536 (they are encoded in ballots)",
            ));
        }
        if self.heartbeat_tick == 0 {
            return Err(Error::InvalidConfig("heartbeat_tick must be at least 1"));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(Error::InvalidConfig(
                "election_tick must exceed heartbeat_tick",
            ));
        }
        if self.max_inflight_slots == 0 {
            return Err(Error::InvalidConfig(
                "max_inflight_slots must be at least 1",
            ));
        }
        if self.max_pending_reads == 0 {
            return Err(Error::InvalidConfig("max_pending_reads must be at least 1"));
        }
        Ok(())
    }
}
