//! What a replica stores for one key, and the one merge every path uses (push, read repair,
//! hinted handoff, anti-entropy).

use serde::{Deserialize, Serialize};

use crate::crdt::Crdt;
use crate::dvv::{Dot, Dvv, VersionVector};
use crate::hash::{domain, stable_hash};
use crate::hlc::Timestamp;
use crate::policy::Policy;

/// One sibling's content: a value or a delete (tombstone), and when it was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned {
    /// `None`: a delete.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// The coordinator's clock when written (decides LWW).
    pub at: Timestamp,
}

/// A key's replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Object {
    /// Siblings or LWW keys: dotted version vector over values and tombstones.
    Causal(Dvv<Versioned>),
    /// CRDT keys.
    Crdt(Crdt),
}

/// Why two objects could not merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindMismatch;

impl Object {
    /// Merges `other` in. The same lattice join for every policy: LWW picks its winner when
    /// read (see [`Object::lww_winner`]), never by dropping siblings during a merge — eager
    /// dropping is not associative (a sibling dropped for a write that a third write later
    /// supersedes would be gone on one replica and the winner on another).
    pub fn merge(&mut self, other: &Object) -> Result<(), KindMismatch> {
        match (self, other) {
            (Object::Causal(a), Object::Causal(b)) => {
                a.merge(b);
                Ok(())
            }
            (Object::Crdt(a), Object::Crdt(b)) => {
                if a.merge_same_kind(b) {
                    Ok(())
                } else {
                    Err(KindMismatch)
                }
            }
            _ => Err(KindMismatch),
        }
    }

    /// A digest equal on two replicas exactly when their states are equal.
    pub fn digest(&self) -> u64 {
        stable_hash(domain::OBJECT_DIGEST, self)
    }

    /// Bytes of user data it holds: sibling values, or a CRDT's payload (a size hint for
    /// encoders; the encoding adds the dots, clocks and context).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Object::Causal(d) => d
                .siblings()
                .iter()
                .map(|(_, v)| v.value.as_ref().map_or(0, Vec::len))
                .sum(),
            Object::Crdt(c) => c.payload_bytes(),
        }
    }

    /// Whether every sibling is a delete: the key reads as absent and may be collected.
    pub fn is_tombstone(&self) -> bool {
        match self {
            Object::Causal(d) => d.siblings().iter().all(|(_, v)| v.value.is_none()),
            Object::Crdt(_) => false,
        }
    }

    /// The causal context (empty for CRDTs, which need none).
    pub fn context(&self) -> VersionVector {
        match self {
            Object::Causal(d) => d.context().clone(),
            Object::Crdt(_) => VersionVector::new(),
        }
    }

    /// The dots of live siblings (empty for CRDTs).
    pub fn sibling_dots(&self) -> Vec<Dot> {
        match self {
            Object::Causal(d) => d.siblings().iter().map(|(dot, _)| *dot).collect(),
            Object::Crdt(_) => Vec::new(),
        }
    }

    /// Largest timestamp inside.
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        match self {
            Object::Causal(d) => d.siblings().iter().map(|(_, v)| v.at).max(),
            Object::Crdt(c) => c.max_timestamp(),
        }
    }

    /// Largest counter of `node`'s dots inside (for the allocator after a restart).
    pub fn max_counter_of(&self, node: crate::types::NodeId) -> u64 {
        match self {
            Object::Causal(d) => d.context().get(node),
            Object::Crdt(_) => 0,
        }
    }
}

impl Object {
    /// LWW's visible sibling: the largest `(timestamp, dot)`. Deterministic, so every replica
    /// with the same state shows the same winner; the others are the concurrent writes the
    /// policy drops (the next write, which names the whole context, removes them).
    pub fn lww_winner(&self) -> Option<(Dot, &Versioned)> {
        match self {
            Object::Causal(d) => d
                .siblings()
                .iter()
                .max_by_key(|(dot, v)| (v.at, *dot))
                .map(|(dot, v)| (*dot, v)),
            Object::Crdt(_) => None,
        }
    }

    /// Whether a read shows nothing: a tombstone, or (LWW) a winning delete.
    pub fn reads_as_absent(&self, policy: Policy) -> bool {
        match policy {
            Policy::Lww => self.lww_winner().is_none_or(|(_, v)| v.value.is_none()),
            _ => self.is_tombstone(),
        }
    }
}
