//! The wire messages between replicas, and between replicas and the configuration manager.

use consensus_core::{Entry, NodeId, Snapshot};
use serde::{Deserialize, Serialize};

use crate::configuration::{ChangeRequest, Configuration};

/// The configuration manager's address in [`Message::to`] / [`Message::from`]. `0` is never a
/// replica id; a node routes these to wherever its manager runs.
pub const MANAGER: NodeId = 0;

/// Most entries one [`Body::TailReply`] carries.
pub const MAX_TAIL_ENTRIES: u64 = 1024;

/// One message. `epoch` is the sender's epoch; a replica refuses anything from a lower one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender ([`MANAGER`] for the manager).
    pub from: NodeId,
    /// Addressee ([`MANAGER`] for the manager).
    pub to: NodeId,
    /// The sender's epoch.
    pub epoch: u64,
    /// What it says.
    pub body: Body,
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Primary → replica: entries after `prev_index` (empty: a beacon), the commit point, and
    /// the primary's configuration. `sent_at` is the primary's clock; the answer echoes it and
    /// the lease it grants runs from it.
    Prepare {
        /// The primary's configuration.
        config: Configuration,
        /// The primary's tick count when sent.
        sent_at: u64,
        /// Index of the entry before `entries`.
        prev_index: u64,
        /// Epoch (term) of that entry.
        prev_term: u64,
        /// Entries to store.
        entries: Vec<Entry>,
        /// The primary's commit point.
        commit: u64,
        /// The primary's log end when sent (a replica cuts what it holds beyond it).
        last: u64,
    },
    /// Replica → primary: its log matches the primary's and is durable through `durable`; grants
    /// a lease from `sent_at`. Sent only once that is durable.
    PrepareAck {
        /// Echo of the prepare's `sent_at`.
        sent_at: u64,
        /// Matching and durable through this index.
        durable: u64,
    },
    /// Primary → replica that needs entries the primary's log no longer holds (compacted into a
    /// local snapshot), or that asked to [`Body::Resync`]: the state machine through
    /// `snapshot.meta.index`. The replica replaces its state and log with it and answers
    /// [`Body::PrepareAck`] through that index once durable. Travels on the bulk stream.
    Snapshot {
        /// The primary's configuration.
        config: Configuration,
        /// The primary's tick count when sent (the answer echoes it, granting a lease).
        sent_at: u64,
        /// The primary's latest local snapshot.
        snapshot: Snapshot,
        /// The primary's commit point.
        commit: u64,
    },
    /// Replica → primary (`async` mode only): a new epoch takes back entries this replica
    /// applied, so its state machine must restart from the primary's state — a snapshot newer
    /// than `after`, this replica's own latest snapshot. Grants no lease (it holds nothing the
    /// primary can count on until it has caught up).
    Resync {
        /// Index of this replica's own latest snapshot; the primary's must be newer.
        after: u64,
    },
    /// Replica → primary: `prev_index` did not match; resend from after `hint`. Grants a lease.
    Mismatch {
        /// Echo of the prepare's `sent_at`.
        sent_at: u64,
        /// The replica's log may match through at most this index.
        hint: u64,
    },
    /// Replica → sender of a lower-epoch message: the newer configuration (fencing).
    Fenced {
        /// The configuration the replica knows.
        config: Configuration,
    },
    /// Quorum-mode candidate → replicas: what are your durable tails? `commit` is the
    /// candidate's commit point (a prefix every replica agrees on).
    TailQuery {
        /// Matches replies to the round.
        round: u64,
        /// The candidate's commit point.
        commit: u64,
    },
    /// Replica → candidate: its durable `(synced_epoch, last index, last term)`, and its durable
    /// entries after the candidate's commit point (at most [`MAX_TAIL_ENTRIES`]), so a candidate
    /// can pull a better tail before it takes over.
    TailReply {
        /// Echo of the query's round.
        round: u64,
        /// Durable synced epoch.
        synced_epoch: u64,
        /// Durable last index.
        last_index: u64,
        /// Term of that entry.
        last_term: u64,
        /// Index before `entries` (the candidate's commit point).
        prev_index: u64,
        /// Term of that entry here.
        prev_term: u64,
        /// Durable entries after `prev_index`.
        entries: Vec<Entry>,
    },
    /// Replica → manager.
    Request(ChangeRequest),
    /// Manager → replica: the configuration now in force (an answer, or a broadcast of a change).
    Installed(Configuration),
}

impl consensus_core::Envelope for Message {
    fn from(&self) -> NodeId {
        self.from
    }
    fn to(&self) -> NodeId {
        self.to
    }
    fn is_bulk(&self) -> bool {
        matches!(self.body, Body::Snapshot { .. })
    }
}
