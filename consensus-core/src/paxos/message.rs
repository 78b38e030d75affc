//! Multi-Paxos wire messages.

use serde::{Deserialize, Serialize};

use super::ballot::Ballot;
use crate::entries::Entries;
use crate::protocol::Envelope;
use crate::types::{Entry, NodeId, Snapshot};

/// A message between two members of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Addressee.
    pub to: NodeId,
    /// The ballot the sender acts under (a proposer's own ballot, or the ballot an acceptor
    /// answers).
    pub ballot: Ballot,
    /// What the message says.
    pub body: MessageBody,
}

impl Envelope for Message {
    fn from(&self) -> NodeId {
        self.from
    }

    fn to(&self) -> NodeId {
        self.to
    }

    fn is_bulk(&self) -> bool {
        matches!(self.body, MessageBody::Snapshot { .. })
    }
}

/// The kinds of Multi-Paxos messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Phase 1a for every slot ≥ `from`: promise not to accept below `ballot`.
    Prepare {
        /// First slot the prepare covers (the proposer's first unchosen slot).
        from: u64,
        /// Set when the leader handed leadership over ([`MessageBody::TimeoutNow`]): it
        /// overrides leader stickiness.
        transfer: bool,
    },
    /// Phase 1b, sent once the promise is durable.
    Promise {
        /// The `from` of the prepare answered.
        from: u64,
        /// Accepted entries in `from ..= covered`, each with its ballot in `term`.
        accepted: Vec<Entry>,
        /// Last slot this promise reports on (below `last` when the size limit cut it short).
        covered: u64,
        /// The acceptor's last accepted slot.
        last: u64,
        /// The acceptor compacted every slot through this (they are chosen, but their values are
        /// only in its snapshot).
        compacted: u64,
    },
    /// Phase 2a for a batch of slots (each entry's `term` is the proposer's ballot).
    Accept {
        /// Proposed entries, ascending slots (possibly with holes between batches). Shared with
        /// the proposer's log and the other peers' copies of the message in process; on the
        /// wire a sequence of entries like any other.
        entries: Entries,
        /// The proposer's chosen prefix (slots ≤ this are chosen).
        commit: u64,
    },
    /// Phase 2b, sent once the accepted entries are durable: every slot in `first ..= last`
    /// was accepted under the message's ballot (one message per contiguous run, so a batch is
    /// acknowledged by one range, not a list of its slots).
    Accepted {
        /// First slot of the run.
        first: u64,
        /// Last slot of the run.
        last: u64,
    },
    /// A ballot at or above the sender's promise was refused: `promised` is higher.
    Nack {
        /// The acceptor's promise.
        promised: Ballot,
    },
    /// Leader liveness, commit propagation and ballot confirmation for reads.
    Heartbeat {
        /// The leader's chosen prefix.
        commit: u64,
        /// Read-confirmation round (0: none).
        read_round: u64,
    },
    /// The receiver still promises the heartbeat's ballot (nothing higher).
    HeartbeatAck {
        /// Echo of the heartbeat's round.
        read_round: u64,
    },
    /// The leader hands leadership to the addressee: run phase 1 now.
    TimeoutNow,
    /// A learner asks for chosen values from slot `from` on.
    Fetch {
        /// First slot wanted.
        from: u64,
    },
    /// Chosen values, answering [`MessageBody::Fetch`].
    Chosen {
        /// Chosen entries from the fetch's `from`, contiguous, with their original ballots.
        entries: Vec<Entry>,
        /// The sender's chosen prefix.
        commit: u64,
    },
    /// The requested slots are compacted: the sender's latest snapshot instead.
    Snapshot {
        /// The snapshot (its slots are chosen).
        snapshot: Snapshot,
    },
    /// A follower asks the leader to order a read.
    ReadIndex {
        /// The follower's read context.
        ctx: u64,
    },
    /// The leader's answer: read at `index` or later.
    ReadIndexResponse {
        /// The follower's read context.
        ctx: u64,
        /// The read index.
        index: u64,
    },
}
