//! What peers send each other, what clients ask, and what they get back. All serde types, so
//! the embedder frames them as it likes (the Quorate node: postcard over QUIC).

use serde::{Deserialize, Serialize};

use crate::crdt::{CrdtOp, CrdtValue};
use crate::dvv::{Dot, VersionVector};
use crate::object::Object;
use crate::ring::PartitionId;
use crate::types::Key;

/// A message between peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A coordinator pushes a key's (durable) object to a replica; `seq` identifies the push
    /// for hinted handoff, `tag` the client request whose W it counts for (0: a hint replay).
    Replicate {
        /// Coordinator's request tag.
        tag: u64,
        /// Push sequence number.
        seq: u64,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// Its object.
        object: Object,
    },
    /// The replica has the pushed object durably (merged into its own).
    ReplicateAck {
        /// Echoed.
        tag: u64,
        /// Echoed.
        seq: u64,
        /// Echoed.
        #[serde(with = "serde_bytes")]
        key: Key,
    },
    /// A coordinator asks a replica for its (durable) object.
    Read {
        /// Coordinator's request tag.
        tag: u64,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
    },
    /// The replica's object (`None`: it has nothing for the key).
    ReadReply {
        /// Echoed.
        tag: u64,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// Its object.
        object: Option<Object>,
    },
    /// Read repair: the merge of what the replicas answered.
    Repair {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// The merged object.
        object: Object,
    },
    /// Anti-entropy: "these are my hashes of these tree nodes at `level`". The receiver
    /// answers with the children of the nodes that differ (or the leaves' keys).
    AeHashes {
        /// The partition (one tree).
        partition: PartitionId,
        /// Tree level (0: root).
        level: u32,
        /// `(index, hash)` pairs at that level.
        nodes: Vec<(u32, u64)>,
    },
    /// Anti-entropy: the `(key, digest)` entries of differing leaves.
    AeKeys {
        /// The partition.
        partition: PartitionId,
        /// The leaves described (a leaf absent from `entries` is empty).
        leaves: Vec<u32>,
        /// Their entries.
        entries: Vec<(Key, u64)>,
    },
    /// Anti-entropy: objects the other side lacks or holds differently, and the keys the
    /// sender wants in return.
    AeObjects {
        /// The partition.
        partition: PartitionId,
        /// Objects to merge.
        objects: Vec<(Key, Object)>,
        /// Keys to send back.
        want: Vec<Key>,
    },
    /// Tombstone collection: "do you durably hold exactly this tombstone?"
    GcQuery {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// The tombstone's digest.
        digest: u64,
    },
    /// "Yes, durably."
    GcAck {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// Echoed.
        digest: u64,
    },
    /// Every replica holds the tombstone: remove it if yours is still exactly this one.
    Purge {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// The tombstone's digest.
        digest: u64,
    },
}

/// A client request. `r`/`w` are per request: 1 for the lowest latency, `r + w > N` for
/// read-your-writes while no replica fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Read a key from `r` replicas.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// Replicas to hear from.
        r: usize,
    },
    /// Write a value. `context` is what the client read (empty: a blind write); the write
    /// supersedes exactly the siblings it covers.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Context from a read.
        context: VersionVector,
        /// Replicas that must hold it durably before the reply.
        w: usize,
    },
    /// Delete: a tombstone superseding what `context` covers.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// Context from a read.
        context: VersionVector,
        /// Replicas that must hold it durably before the reply.
        w: usize,
    },
    /// Update a CRDT key.
    Update {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// The operation.
        op: CrdtOp,
        /// Replicas that must hold it durably before the reply.
        w: usize,
    },
}

impl Request {
    /// The key the request is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Request::Get { key, .. }
            | Request::Put { key, .. }
            | Request::Delete { key, .. }
            | Request::Update { key, .. } => key,
        }
    }
}

/// One sibling as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingView {
    /// The write that made it.
    pub dot: Dot,
    /// The value (`None`: a delete concurrent with the other siblings).
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A read.
    Read {
        /// Siblings (policy `siblings`: every one; `lww`: the winner; empty when absent).
        siblings: Vec<SiblingView>,
        /// A CRDT key's value.
        crdt: Option<CrdtValue>,
        /// The context to send with the next write.
        context: VersionVector,
    },
    /// A write, durable on at least W replicas.
    Written {
        /// The write's dot.
        dot: Dot,
        /// The key's context at the coordinator right after the write — what a read there
        /// would have returned. It covers every sibling the coordinator held, including
        /// concurrent ones this client never read: write with it only to replace them all.
        context: VersionVector,
    },
}
