//! A peer's configuration. Every member must run with the same members, N, vnodes, policy
//! table and Merkle shape (placement, policies and tree comparison depend on them).

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::policy::{Limits, PolicyTable};
use crate::types::NodeId;

/// Knobs for one peer. Times are in the embedder's milliseconds (whatever `tick(now)` passes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// Every member, this node included.
    pub members: Vec<NodeId>,
    /// N: replicas per key (capped at the member count).
    pub replication: usize,
    /// Points per member on the ring.
    pub vnodes: u32,
    /// Conflict policy per key prefix.
    pub policies: PolicyTable,
    /// Key, value and sibling bounds.
    pub limits: Limits,
    /// A request not answered by R/W replicas within this long fails with `Timeout`.
    pub request_timeout_ms: u64,
    /// An unacknowledged push is replayed (hinted handoff) this often.
    pub hint_retry_ms: u64,
    /// Hints held per peer; past it the push is dropped (counted; anti-entropy repairs it).
    pub max_hints_per_peer: usize,
    /// Hints replayed per peer per tick.
    pub hint_replays_per_tick: usize,
    /// How often anti-entropy exchanges start.
    pub anti_entropy_interval_ms: u64,
    /// Exchanges (one partition with one peer) started each interval.
    pub anti_entropy_exchanges: usize,
    /// Compare every shared partition at once with a peer that returns: heard from for the
    /// first time since this node started, or after ten intervals of silence.
    pub anti_entropy_on_return: bool,
    /// Merkle tree fanout.
    pub merkle_fanout: u32,
    /// Merkle tree depth (levels below the root).
    pub merkle_depth: u32,
    /// How often the owner of a key tries to collect its tombstone.
    pub gc_interval_ms: u64,
    /// Wait after every replica confirmed a tombstone before removing it: longer than any
    /// message (or read repair) carrying an older version can stay in flight.
    pub tombstone_grace_ms: u64,
    /// Dots reserved per durable write of the allocator's ceiling.
    pub dot_block: u64,
    /// Client requests in progress at once.
    pub max_pending_requests: usize,
    /// Seeds the hash of this peer's in-memory key index (local only: not placement, not
    /// persisted, free to differ between members and runs). An embedder that takes keys from
    /// clients should draw it at random, so no one can aim keys at one hash bucket; a fixed
    /// seed keeps a simulation reproducible.
    #[serde(default)]
    pub index_seed: u64,
}

impl Config {
    /// Defaults for a cluster of `members`, seen from `id`: N = 3, 64 vnodes, policy
    /// `siblings` everywhere.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        Config {
            id,
            members,
            replication: 3,
            vnodes: 64,
            policies: PolicyTable::new(crate::Policy::Siblings),
            limits: Limits::default(),
            request_timeout_ms: 1_000,
            hint_retry_ms: 500,
            max_hints_per_peer: 10_000,
            hint_replays_per_tick: 64,
            anti_entropy_interval_ms: 1_000,
            anti_entropy_exchanges: 4,
            anti_entropy_on_return: true,
            merkle_fanout: 16,
            merkle_depth: 3,
            gc_interval_ms: 5_000,
            tombstone_grace_ms: 30_000,
            dot_block: 1_000,
            max_pending_requests: 10_000,
            index_seed: 0,
        }
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.members.contains(&self.id) {
            return Err(ConfigError::NotAMember(self.id));
        }
        let leaves = u64::from(self.merkle_fanout).checked_pow(self.merkle_depth);
        if !(2..=64).contains(&self.merkle_fanout)
            || self.merkle_depth == 0
            || leaves.is_none_or(|l| l > 1 << 20)
        {
            return Err(ConfigError::BadMerkleShape);
        }
        for (name, v) in [
            ("max_hints_per_peer", self.max_hints_per_peer as u64),
            ("hint_replays_per_tick", self.hint_replays_per_tick as u64),
            ("anti_entropy_exchanges", self.anti_entropy_exchanges as u64),
            ("dot_block", self.dot_block),
            ("max_pending_requests", self.max_pending_requests as u64),
            ("limits.max_siblings", self.limits.max_siblings as u64),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroBound(name));
            }
        }
        Ok(())
    }
}
