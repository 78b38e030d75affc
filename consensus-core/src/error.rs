//! Typed errors. Misuse of the interface gets one of these, never a panic.

use thiserror::Error;

use crate::types::NodeId;

/// What went wrong with a request to a protocol instance.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// Only the leader accepts proposals; `leader` is the last known leader, if any.
    #[error(
        "this node is not the leader (leader hint: {leader:?}); send the request to the leader"
    )]
    NotLeader {
        /// The node believed to lead, if known.
        leader: Option<NodeId>,
    },
    /// No leader is known, so a read cannot be ordered; retry after an election.
    #[error("no leader is known; retry after an election completes")]
    NoLeader,
    /// A membership change is already in flight; wait until it is applied.
    #[error(
        "a membership change is already pending (index {pending_index}); wait until it is applied"
    )]
    ConfChangePending {
        /// Index of the pending change.
        pending_index: u64,
    },
    /// The requested membership change is not allowed.
    #[error("invalid membership change: {reason}")]
    InvalidConfChange {
        /// Why.
        reason: &'static str,
    },
    /// A leader transfer is in progress; proposals are refused until it ends.
    #[error("leadership transfer to {to} in progress; retry shortly")]
    TransferInProgress {
        /// Transfer target.
        to: NodeId,
    },
    /// The node is not a member of the group.
    #[error("node {0} is not a member of this group")]
    UnknownNode(NodeId),
    /// The leader holds too many uncommitted bytes; back off and retry.
    #[error("too many uncommitted bytes ({uncommitted} > {limit}); retry after commits catch up")]
    UncommittedLimit {
        /// Bytes currently uncommitted.
        uncommitted: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A proposal is larger than the largest message allowed.
    #[error("proposal of {size} bytes exceeds the limit of {limit} bytes")]
    ProposalTooLarge {
        /// Size of the proposal.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A persist completion was confirmed out of order.
    #[error("persist token {got} confirmed out of order (expected {expected}); confirm writes in the order issued")]
    PersistOutOfOrder {
        /// Sequence number of the token confirmed.
        got: u64,
        /// Sequence number expected next.
        expected: u64,
    },
    /// A message addressed to another node, or from a node of another group, was stepped in.
    #[error("message for node {to} delivered to node {me}")]
    MisroutedMessage {
        /// Addressee of the message.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// The protocol does not offer this capability.
    #[error("{protocol} does not support {capability}")]
    Unsupported {
        /// The protocol's name.
        protocol: &'static str,
        /// What was asked for.
        capability: &'static str,
    },
    /// This member stopped after a storage failure; restart it.
    #[error("this member stopped after a storage failure: {0}")]
    Stopped(StorageError),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// Storage failed or is inconsistent.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// Failures of a [`crate::storage::Storage`] implementation.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The entry was compacted into a snapshot.
    #[error("index {0} is compacted into a snapshot")]
    Compacted(u64),
    /// The entry is beyond the last stored index.
    #[error("index {0} is not stored yet")]
    Unavailable(u64),
    /// A snapshot is being prepared and is not ready yet.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The stored state contradicts itself.
    #[error("inconsistent storage: {0}")]
    Inconsistent(String),
    /// An I/O or other failure of the underlying store.
    #[error("storage failure: {0}")]
    Other(String),
}
