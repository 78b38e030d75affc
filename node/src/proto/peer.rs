//! The wire of `replication = "peer"`: client requests and replies, and the message class between
//! peer nodes.
//!
//! Any node takes a request. A node that does not replicate the key forwards it to a replica
//! (class [`super::MessageClass::Forward`]) and relays the answer; only if that fails to apply
//! (the replica disagrees) does the client get [`super::ServerError::NotAReplica`], naming the
//! key's replicas and their addresses, and ask one of them itself.
//! Contexts travel as opaque text ([`encode_context`]): what a read returned, handed back
//! unchanged with the write that resolves its siblings.

use std::collections::BTreeMap;

use bytes::Bytes;
use replication_peer::{CrdtOp, CrdtValue, VersionVector};
use serde::{Deserialize, Serialize};

/// A client request to a peer-replicated cluster. `r`/`w` `None`: the cluster's `[peer]`
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Read a key from R replicas: every sibling and the context that resolves them.
    Get {
        /// Key.
        key: Bytes,
        /// Replicas to hear from.
        r: Option<u32>,
    },
    /// Write a value superseding what `context` covers (empty: a blind write, kept beside
    /// concurrent values as a sibling).
    Put {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
        /// Context of a read ([`decode_context`]).
        context: VersionVector,
        /// Replicas that must hold it durably before the reply.
        w: Option<u32>,
    },
    /// Delete (a tombstone) superseding what `context` covers.
    Delete {
        /// Key.
        key: Bytes,
        /// Context of a read.
        context: VersionVector,
        /// Replicas that must hold it durably before the reply.
        w: Option<u32>,
    },
    /// This node's replication status: hints and anti-entropy per peer.
    Status,
    /// Update a CRDT key (a prefix with policy `counter`, `or-set` or `lww-register`); merged
    /// automatically with concurrent updates, so it needs no context.
    Update {
        /// Key.
        key: Bytes,
        /// The operation.
        op: CrdtOp,
        /// Replicas that must hold it durably before the reply.
        w: Option<u32>,
    },
}

/// One sibling of a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSibling {
    /// The node that coordinated the write.
    pub node: u64,
    /// Its counter there.
    pub counter: u64,
    /// The value (`None`: a delete concurrent with the other siblings).
    pub value: Option<Bytes>,
}

/// A successful answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerReply {
    /// A read: no siblings means the key is absent.
    Read {
        /// Every sibling (policy `lww`: the winner).
        siblings: Vec<PeerSibling>,
        /// A CRDT key's value.
        crdt: Option<CrdtValue>,
        /// What to send with the next write to supersede these siblings.
        context: VersionVector,
    },
    /// A write or delete, durable on at least W replicas.
    Written {
        /// The coordinator.
        node: u64,
        /// The write's counter at the coordinator.
        counter: u64,
        /// The key's context at the coordinator right after the write.
        context: VersionVector,
    },
    /// Status.
    Status(PeerNodeStatus),
}

/// One peer node's replication state, for `quorate cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNodeStatus {
    /// This node.
    pub id: u64,
    /// N, R, W as configured.
    pub n: u32,
    /// Default R.
    pub r: u32,
    /// Default W.
    pub w: u32,
    /// Keys held (tombstones included).
    pub keys: u64,
    /// Of which tombstones.
    pub tombstones: u64,
    /// Client requests in progress.
    pub pending_requests: u64,
    /// Hints (pushes not yet acknowledged) pending, per peer.
    pub hints_pending: BTreeMap<u64, u64>,
    /// Pushes not remembered because a peer's hints were full.
    pub hints_dropped: u64,
    /// Milliseconds since each peer's last anti-entropy exchange with this node.
    pub anti_entropy_age_ms: BTreeMap<u64, u64>,
    /// Tombstones collected here.
    pub tombstones_collected: u64,
    /// Peer messages refused.
    pub refused_messages: u64,
    /// Records in this node's write-ahead log.
    pub wal_records: u64,
}

/// Why a context text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Not hexadecimal.
    #[error("context {0:?} is not hexadecimal text (copy it from `quorate kv get --json`)")]
    NotHex(String),
    /// Hexadecimal, but not a context.
    #[error("context does not decode: {0}")]
    Decode(String),
    /// Longer than any context a cluster can produce.
    #[error("context of {0} characters is over the limit of {MAX_CONTEXT_CHARS}")]
    TooLong(usize),
}

/// Longest context text accepted (a version vector of thousands of nodes).
pub const MAX_CONTEXT_CHARS: usize = 64 << 10;

/// A context as text: hexadecimal postcard (empty context: empty text).
pub fn encode_context(context: &VersionVector) -> String {
    if context.is_empty() {
        return String::new();
    }
    let bytes = postcard::to_allocvec(context).unwrap_or_default();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads [`encode_context`]'s text back.
pub fn decode_context(text: &str) -> Result<VersionVector, ContextError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(VersionVector::new());
    }
    if text.len() > MAX_CONTEXT_CHARS {
        return Err(ContextError::TooLong(text.len()));
    }
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ContextError::NotHex(text.chars().take(40).collect()));
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap_or(0))
        .collect();
    postcard::from_bytes(&bytes).map_err(|e| ContextError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication_peer::Dot;

    #[test]
    fn a_context_round_trips_through_text_and_garbage_is_a_typed_error() {
        let mut context = VersionVector::new();
        context.add(Dot {
            node: 2,
            counter: 7,
        });
        context.add(Dot {
            node: 3,
            counter: 1,
        });
        let text = encode_context(&context);
        assert_eq!(decode_context(&text), Ok(context));
        assert_eq!(decode_context(""), Ok(VersionVector::new()));
        assert!(matches!(
            decode_context("xyz"),
            Err(ContextError::NotHex(_))
        ));
        assert!(matches!(
            decode_context("ffffffffffffffffffff"),
            Err(ContextError::Decode(_))
        ));
        let long = "00".repeat(MAX_CONTEXT_CHARS);
        assert!(matches!(
            decode_context(&long),
            Err(ContextError::TooLong(_))
        ));
    }
}
