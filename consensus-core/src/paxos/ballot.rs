//! Ballots: `(round, node)` pairs, totally ordered, unique per proposer.
//!
//! A ballot travels in [`crate::Entry::term`] encoded as one `u64`: `round << 16 | node`. The
//! encoding keeps the order (round first, node id as tie-break), which is why node ids must stay
//! below 65 536 ([`super::Config::validate`] checks it).

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Bits of the encoded ballot that hold the node id.
pub const NODE_BITS: u32 = 16;
/// Node ids must be below this to fit in an encoded ballot.
pub const MAX_NODE_ID: NodeId = (1 << NODE_BITS) - 1;

/// A proposal number: higher rounds win, equal rounds are ordered by node id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// The round; every new leadership attempt takes a higher one.
    pub round: u64,
    /// The proposer that owns this ballot (0 only in the zero ballot).
    pub node: NodeId,
}

impl Ballot {
    /// The ballot below every real one (nothing promised yet).
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    /// A ballot of `round` owned by `node`.
    pub fn new(round: u64, node: NodeId) -> Self {
        Ballot { round, node }
    }

    /// The ballot as one `u64` (what [`crate::Entry::term`] holds); order-preserving.
    pub fn encode(self) -> u64 {
        (self.round << NODE_BITS) | (self.node & MAX_NODE_ID)
    }

    /// The ballot an [`crate::Entry::term`] holds.
    pub fn decode(term: u64) -> Self {
        Ballot {
            round: term >> NODE_BITS,
            node: term & MAX_NODE_ID,
        }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}
