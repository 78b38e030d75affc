//! Typed errors: a bad request or a bad peer message is an error value, never a panic.

use thiserror::Error;

use crate::policy::Policy;
use crate::types::{Key, NodeId};

/// Why a client request was refused or did not complete.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    /// The key is over the configured size.
    #[error("key of {len} bytes is over the {max}-byte limit")]
    KeyTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is over the configured size.
    #[error("value of {len} bytes is over the {max}-byte limit")]
    ValueTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The write would leave more siblings than allowed: read, then write with the context.
    #[error("the write would leave {count} siblings (limit {max}); resolve them by writing with the context of a read")]
    TooManySiblings {
        /// Siblings the write would leave.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// This node does not replicate the key; send the request to one that does.
    #[error("this node does not replicate the key; its replicas are {replicas:?}")]
    NotAReplica {
        /// The key's preference list.
        replicas: Vec<NodeId>,
    },
    /// The operation does not fit the key's policy (a CRDT op on a siblings key, …).
    #[error("{operation} does not apply to a key with policy {policy:?}")]
    WrongPolicy {
        /// The key's policy.
        policy: Policy,
        /// What was asked.
        operation: &'static str,
    },
    /// R or W outside `1..=N`.
    #[error("quorum {asked} is outside 1..={replicas}")]
    BadQuorum {
        /// The R or W asked for.
        asked: usize,
        /// N.
        replicas: usize,
    },
    /// The context names a write of this node that it never made.
    #[error("the context names write {counter} of node {node}, which has issued only {issued}")]
    ContextFromFuture {
        /// This node.
        node: NodeId,
        /// The counter in the context.
        counter: u64,
        /// The largest counter this node issued.
        issued: u64,
    },
    /// Fewer than R/W replicas answered in time. A write may still have been applied (it is
    /// durable on `acks` replicas and spreads from there).
    #[error("only {acks} of the {needed} replicas needed answered in time")]
    Timeout {
        /// Replicas that answered.
        acks: usize,
        /// R or W.
        needed: usize,
    },
    /// Too many requests in progress at this node.
    #[error("{pending} requests already in progress")]
    Overloaded {
        /// Requests in progress.
        pending: usize,
    },
}

/// Why a peer message was refused (it changes nothing).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StepError {
    /// The sender is not in the configuration.
    #[error("node {0} is not a member")]
    UnknownSender(NodeId),
    /// The message names a key this node does not replicate.
    #[error("this node does not replicate key {0:?}")]
    NotAReplica(Key),
    /// The object does not fit the key's policy or the limits.
    #[error("object for key {key:?} refused: {reason}")]
    BadObject {
        /// The key.
        key: Key,
        /// Why.
        reason: &'static str,
    },
    /// `persisted` named a token the engine never issued.
    #[error("persist token {0} was never issued")]
    UnknownToken(u64),
    /// An anti-entropy message for a partition the two nodes do not share, or a tree node
    /// that does not exist.
    #[error("anti-entropy message for partition {partition} refused: {reason}")]
    BadExchange {
        /// The partition.
        partition: u32,
        /// Why.
        reason: &'static str,
    },
}

/// Why a configuration cannot run.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// No members.
    #[error("the cluster has no members")]
    NoMembers,
    /// A member id twice.
    #[error("a member id appears twice")]
    DuplicateMember,
    /// This node is not among the members.
    #[error("node {0} is not among the members")]
    NotAMember(NodeId),
    /// N = 0.
    #[error("the replication factor must be at least 1")]
    ZeroReplication,
    /// Vnodes outside 1..=4096.
    #[error("vnodes per member must be in 1..=4096, not {0}")]
    BadVnodes(u32),
    /// Merkle shape out of range.
    #[error("Merkle fanout must be 2..=64 and fanout^depth at most 2^20 with depth >= 1")]
    BadMerkleShape,
    /// A zero bound.
    #[error("{0} must be at least 1")]
    ZeroBound(&'static str),
}
