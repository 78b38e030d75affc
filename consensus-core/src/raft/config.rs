//! Raft's tunables.

use crate::error::Error;
use crate::types::NodeId;

/// How a leader confirms it still leads before serving a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: a heartbeat round acknowledged by a quorum (thesis §6.4). Always safe.
    Safe,
    /// Lease: no round trip while the leader heard from a quorum within the election timeout
    /// (thesis §6.4.1). Relies on bounded clock drift; requires `check_quorum`.
    LeaseBased,
}

/// Faults that can be switched on to prove the simulator catches them (feature `planted-bugs`,
/// which only tests and `cargo xtask sim` turn on).
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Commit an entry of an earlier term as soon as a majority stores it (the Figure 8 bug). A new
    /// leader also skips its no-op entry, as in the paper's figure, so the bug can surface.
    CommitPreviousTermByCounting,
    /// Serve a read at the leader's commit index without confirming leadership.
    ReadWithoutLeadershipCheck,
    /// Grant votes without comparing logs (breaks leader completeness).
    VoteWithoutLogCheck,
}

/// Configuration of one Raft member.
#[derive(Clone, Debug)]
pub struct Config {
    /// This member's id (non-zero).
    pub id: NodeId,
    /// Ticks without hearing a leader before starting an election; the actual timeout is drawn
    /// uniformly from `election_tick ..< 2 * election_tick`.
    pub election_tick: u32,
    /// Ticks between a leader's heartbeats (must be below `election_tick`).
    pub heartbeat_tick: u32,
    /// Run a pre-vote round before real elections (thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum in an election timeout, and followers
    /// that heard from a leader recently refuse votes (thesis §6.2, §9.6).
    pub check_quorum: bool,
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Maximum payload bytes in one append message (at least one entry is always sent).
    pub max_msg_bytes: u64,
    /// Maximum append messages in flight to one follower in replicate state.
    pub max_inflight: usize,
    /// Proposals are refused while the leader holds more uncommitted payload bytes than this.
    pub max_uncommitted_bytes: u64,
    /// Maximum payload bytes of committed entries handed out per `ready()`.
    pub max_committed_bytes_per_ready: u64,
    /// Index the state machine has already applied when this instance starts (after a restart:
    /// usually the snapshot index). Committed entries after it are handed out again.
    pub applied: u64,
    /// Test-only fault injection.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

/// The planted faults the code checks for; without the `planted-bugs` feature none can be set.
#[cfg(not(feature = "planted-bugs"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlantedBug {
    CommitPreviousTermByCounting,
    ReadWithoutLeadershipCheck,
    VoteWithoutLogCheck,
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

    /// Defaults for member `id`: election after 10–19 ticks, heartbeat every tick, pre-vote and
    /// check-quorum on, ReadIndex reads, 1 MiB messages, 256 inflight appends, 64 MiB uncommitted.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            read_mode: ReadMode::Safe,
            max_msg_bytes: 1 << 20,
            max_inflight: 256,
            max_uncommitted_bytes: 64 << 20,
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
        if self.heartbeat_tick == 0 {
            return Err(Error::InvalidConfig("heartbeat_tick must be at least 1"));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(Error::InvalidConfig(
                "election_tick must exceed heartbeat_tick",
            ));
        }
        if self.max_inflight == 0 {
            return Err(Error::InvalidConfig("max_inflight must be at least 1"));
        }
        if self.read_mode == ReadMode::LeaseBased && !self.check_quorum {
            return Err(Error::InvalidConfig(
                "lease-based reads require check_quorum",
            ));
        }
        Ok(())
    }
}
