//! Raft's wire messages.

use serde::{Deserialize, Serialize};

use crate::protocol::Envelope;
use crate::types::{Entry, NodeId, Snapshot};

/// A Raft message between two members of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Addressee.
    pub to: NodeId,
    /// Sender's term (for a pre-vote request: the term it would campaign in).
    pub term: u64,
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
        matches!(self.body, MessageBody::InstallSnapshot { .. })
    }
}

/// The kinds of Raft messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Would you vote for me in `term` (thesis §9.6)? Changes no state at the receiver.
    PreVote {
        /// Index of the candidate's last entry.
        last_index: u64,
        /// Term of the candidate's last entry.
        last_term: u64,
    },
    /// Answer to [`MessageBody::PreVote`].
    PreVoteResponse {
        /// Whether the pre-vote is granted.
        granted: bool,
    },
    /// RequestVote (Raft §5.2).
    Vote {
        /// Index of the candidate's last entry.
        last_index: u64,
        /// Term of the candidate's last entry.
        last_term: u64,
        /// Set when the election was started by a leader transfer: it overrides leader stickiness.
        leader_transfer: bool,
    },
    /// Answer to [`MessageBody::Vote`]; a grant is sent only after the vote is durable.
    VoteResponse {
        /// Whether the vote is granted.
        granted: bool,
    },
    /// AppendEntries (Raft §5.3).
    Append {
        /// Index of the entry just before `entries`.
        prev_index: u64,
        /// Term of the entry at `prev_index`.
        prev_term: u64,
        /// New entries (possibly none: a probe).
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: u64,
    },
    /// Answer to [`MessageBody::Append`] or [`MessageBody::InstallSnapshot`].
    AppendResponse {
        /// On success: the follower's log matches the leader's through this index (durably).
        /// On rejection: the `prev_index` that did not match.
        index: u64,
        /// Whether the append was rejected.
        reject: bool,
        /// On rejection: the leader should retry from at most this index (fast backtracking).
        hint_index: u64,
        /// On rejection: the term of the follower's entry at `hint_index`.
        hint_term: u64,
    },
    /// Leader liveness and commit propagation; also confirms leadership for reads.
    Heartbeat {
        /// Leader's commit index, capped at what the follower is known to hold.
        commit: u64,
        /// Read-confirmation round this heartbeat belongs to (0: none).
        read_round: u64,
    },
    /// Answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// Echo of the heartbeat's round.
        read_round: u64,
    },
    /// InstallSnapshot (Raft §7), sent whole.
    InstallSnapshot {
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// Start an election now, bypassing timeouts and pre-vote (leader transfer, thesis §3.10).
    TimeoutNow,
    /// A follower asks the leader to order a read (ReadIndex, thesis §6.4).
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
