//! Quiescence messages between the loops of one group on different nodes (class
//! [`super::MessageClass::Control`]): a leader whose group is idle proposes to go quiet at its
//! last index; each follower that holds and has applied exactly that index acknowledges and
//! stops ticking; the leader stops once every follower has. Any message or request for the
//! group wakes a quiet member. These never touch the protocol's own messages.

use serde::{Deserialize, Serialize};

/// A quiescence message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quiesce {
    /// The leader of `term` proposes to go quiet with `index` its last, committed, index.
    Propose {
        /// The leader's term.
        term: u64,
        /// Its last index.
        index: u64,
    },
    /// The follower holds, and applied, exactly `index` under `term`: it is quiet now.
    Ack {
        /// The term proposed.
        term: u64,
        /// The index proposed.
        index: u64,
    },
    /// The follower is not in that state (behind, another leader, another term): stay awake.
    Refuse {
        /// The term proposed.
        term: u64,
    },
}
