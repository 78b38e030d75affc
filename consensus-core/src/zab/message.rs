//! Zab's wire messages, by phase: election notifications, discovery (FOLLOWERINFO, NEWEPOCH,
//! ACKEPOCH), synchronisation (DIFF / TRUNC / SNAP chunks ending in NEWLEADER, ACK of it) and
//! broadcast (PROPOSAL, ACK, COMMIT, PING / PONG), and a follower's reads forwarded to the
//! leader (READ REQUEST / READ INDEX, as ZooKeeper's SYNC).
//!
//! Zab assumes FIFO channels; the network here may drop, duplicate and reorder, so every message
//! that extends a history names the position it follows (`prev_index`, `prev_epoch`) and a member
//! refuses what does not extend what it holds.

use serde::{Deserialize, Serialize};

use super::zxid::Zxid;
use crate::protocol::Envelope;
use crate::types::{Entry, NodeId, Snapshot};

/// What a member is doing, as its election notifications say (FastLeaderElection's states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerState {
    /// Looking for a leader (an election is running on this member).
    Looking,
    /// Following the leader named in the vote.
    Following,
    /// Leading (the vote names this member).
    Leading,
    /// Observing (a non-voting member following the leader named in the vote).
    Observing,
}

/// A vote: the proposed leader and the history it would bring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Proposed leader.
    pub leader: NodeId,
    /// The proposed leader's current epoch (ZooKeeper's peerEpoch).
    pub epoch: u64,
    /// The proposed leader's last zxid.
    pub zxid: Zxid,
}

/// How a synchronisation chunk brings a follower to the leader's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncKind {
    /// The follower's history is a prefix of the leader's: send the missing proposals.
    Diff,
    /// The follower holds proposals the leader never saw (after `prev_index`): it truncates them.
    Trunc,
    /// The follower is too far behind (the leader compacted): it installs the leader's snapshot.
    Snap,
}

/// The body of a Zab message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// FastLeaderElection notification: the sender's vote in `round`, and what it is doing.
    Notification {
        /// The sender's election round (logical clock).
        round: u64,
        /// The sender's vote (for a following or leading member: its leader).
        vote: Vote,
        /// The sender's state.
        state: PeerState,
    },
    /// FOLLOWERINFO / OBSERVERINFO: a member that chose the addressee as leader.
    FollowerInfo {
        /// The sender's accepted epoch.
        accepted_epoch: u64,
        /// Whether the sender is an observer (never counted towards a quorum).
        observer: bool,
    },
    /// NEWEPOCH: the prospective leader's epoch, above every accepted epoch of a quorum.
    NewEpoch {
        /// The new epoch.
        epoch: u64,
    },
    /// ACKEPOCH: the follower accepted `epoch` (durably) and reports its history.
    AckEpoch {
        /// The epoch acknowledged.
        epoch: u64,
        /// Whether the epoch was newly accepted (only those count towards the leader's quorum; a
        /// member that already accepted this epoch from someone may follow but not vote for it).
        fresh: bool,
        /// The follower's current epoch.
        current_epoch: u64,
        /// The follower's last zxid.
        last: Zxid,
    },
    /// A synchronisation chunk (DIFF / TRUNC / SNAP); the chunk that reaches the leader's history
    /// end carries NEWLEADER.
    Sync {
        /// The leader's epoch.
        epoch: u64,
        /// What kind of synchronisation this chunk is part of.
        kind: SyncKind,
        /// The leader's snapshot, for SNAP.
        snapshot: Option<Snapshot>,
        /// Position the entries follow.
        prev_index: u64,
        /// Epoch of the entry at `prev_index`.
        prev_epoch: u64,
        /// Proposals of the leader's history.
        entries: Vec<Entry>,
        /// NEWLEADER: this chunk reaches the end of the leader's history; the follower adopts the
        /// epoch as its current epoch (durably) and acknowledges.
        new_leader: bool,
    },
    /// ACK of a sync chunk, of NEWLEADER, or of proposals: the follower durably holds the
    /// leader's history through `index`.
    Ack {
        /// The leader's epoch.
        epoch: u64,
        /// Last position durably held.
        index: u64,
        /// Acknowledges NEWLEADER (the follower's current epoch is now `epoch`).
        new_leader: bool,
    },
    /// The follower cannot extend its history at the position sent (a gap, or a mismatch):
    /// resend from after `hint`.
    Nack {
        /// The leader's epoch.
        epoch: u64,
        /// Highest position the leader may assume the follower shares with it.
        hint: u64,
    },
    /// PROPOSAL: new proposals of the leader's epoch (batched), with the commit point.
    Proposal {
        /// The leader's epoch.
        epoch: u64,
        /// Position the entries follow.
        prev_index: u64,
        /// The proposals, in order.
        entries: Vec<Entry>,
        /// The leader's commit point.
        commit: u64,
    },
    /// COMMIT (and UPTODATE once a new leader committed its initial history).
    Commit {
        /// The leader's epoch.
        epoch: u64,
        /// Everything through this position is committed.
        commit: u64,
    },
    /// The leader's heartbeat, with the commit point and the latest read round.
    Ping {
        /// The leader's epoch.
        epoch: u64,
        /// The leader's commit point.
        commit: u64,
        /// The leader's latest read round (0: none).
        read_round: u64,
    },
    /// Answer to a ping: the follower still follows this epoch.
    Pong {
        /// The leader's epoch.
        epoch: u64,
        /// The read round of the ping answered.
        read_round: u64,
    },
    /// A follower's linearizable read, forwarded to its leader (as ZooKeeper's SYNC): the
    /// leader answers with the commit point a quorum round confirmed.
    ReadRequest {
        /// The leader's epoch, as the follower knows it.
        epoch: u64,
        /// The follower's read context.
        ctx: u64,
    },
    /// The leader's answer to [`MessageBody::ReadRequest`]: the follower may serve read `ctx`
    /// once it applied through `index`.
    ReadIndex {
        /// The leader's epoch.
        epoch: u64,
        /// The follower's read context.
        ctx: u64,
        /// The leader's commit point when the read arrived, confirmed by a quorum round.
        index: u64,
    },
}

/// A Zab message with its routing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Addressee.
    pub to: NodeId,
    /// What it says.
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
        matches!(
            self.body,
            MessageBody::Sync {
                snapshot: Some(_),
                ..
            }
        )
    }
}
