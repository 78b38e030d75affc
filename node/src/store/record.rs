//! Log records and the identity/checkpoint record, encoded with postcard.
//!
//! The write-ahead log is a redo log of these records in submission order; its own record index
//! (the "WAL index") is a sequence number unrelated to log indexes. One `Write` becomes, in this
//! order: `InstallSnapshot` (if any), `Truncate` (if it cuts anything), one `Entry` per entry,
//! `HardState` (if any). An `Entry` replaces only its own slot; cutting a suffix is explicit.

use consensus_core::{DurableState, Entry, NodeId, SnapshotMeta};
use serde::{Deserialize, Serialize};

use super::view::Base;

/// Version of the record and identity encodings (2: protocol-generic hard state, explicit
/// truncation, protocol name in the identity).
pub(crate) const FORMAT_VERSION: u32 = 2;
const IDENTITY_MAGIC: [u8; 8] = *b"QRMSTORE";

/// A record as written (borrowing), encoded exactly like [`Record`].
#[derive(Serialize)]
pub(crate) enum RecordRef<'a, H> {
    Entry(&'a Entry),
    HardState(&'a H),
    InstallSnapshot(&'a SnapshotMeta),
    Truncate(u64),
}

/// A record as read back.
#[derive(Deserialize, Debug)]
#[serde(bound = "H: DurableState")]
pub(crate) enum Record<H> {
    /// Stores one entry at its index (replacing what the slot held).
    Entry(Entry),
    /// The protocol's new durable state (Raft: term, vote, commit; Paxos: promised ballot).
    HardState(H),
    /// A snapshot from the leader was installed (its data is in the snapshot file).
    InstallSnapshot(SnapshotMeta),
    /// Every entry at an index `>=` this was discarded.
    Truncate(u64),
}

/// Appends the encoding of `record` to `buf`.
pub(crate) fn encode_into<H: Serialize>(
    record: &RecordRef<'_, H>,
    buf: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(record, taken)?;
    Ok(())
}

pub(crate) fn decode<H: DurableState>(bytes: &[u8]) -> Result<Record<H>, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The head of the metadata record: who the directory belongs to. Decoded on its own first, so
/// a directory of another protocol is named as such before its protocol-specific state is read.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaHead {
    pub(crate) magic: [u8; 8],
    pub(crate) version: u32,
    /// The replication protocol the directory was created for ("raft", "multi-paxos", "zab").
    pub(crate) protocol: String,
    pub(crate) cluster_id: String,
    pub(crate) node_id: NodeId,
    pub(crate) group_id: u64,
}

/// Stored in the log's metadata record (replaced atomically): who this directory belongs to, and
/// where replay starts after the last compaction.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(bound = "H: DurableState")]
pub(crate) struct StoreMeta<H> {
    pub(crate) head: MetaHead,
    /// WAL index replay starts at; records below it are obsolete.
    pub(crate) replay_from: u64,
    /// WAL index the checkpoint was taken at: records in `replay_from..checkpoint_end` only
    /// contribute their entries and truncations.
    pub(crate) checkpoint_end: u64,
    /// The state replay starts from.
    pub(crate) base: Base<H>,
}

impl<H: DurableState> StoreMeta<H> {
    pub(crate) fn new(
        identity: &super::Identity,
        replay_from: u64,
        checkpoint_end: u64,
        base: Base<H>,
    ) -> Self {
        StoreMeta {
            head: MetaHead {
                magic: IDENTITY_MAGIC,
                version: FORMAT_VERSION,
                protocol: identity.protocol.clone(),
                cluster_id: identity.cluster_id.clone(),
                node_id: identity.node_id,
                group_id: identity.group_id,
            },
            replay_from,
            checkpoint_end,
            base,
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    /// Decodes the whole record (after [`decode_head`] succeeded).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, MetaDecodeError> {
        postcard::from_bytes(bytes).map_err(|e| MetaDecodeError::Bad(e.to_string()))
    }
}

/// Decodes and checks magic and version of the metadata record; `Err` carries the reason.
pub(crate) fn decode_head(bytes: &[u8]) -> Result<MetaHead, MetaDecodeError> {
    if bytes.len() < 8 || bytes[..8] != IDENTITY_MAGIC {
        return Err(MetaDecodeError::NotStore);
    }
    // The magic is a fixed array (8 raw bytes), then the version as a varint.
    let version: u32 = postcard::take_from_bytes::<u32>(&bytes[8..])
        .map(|(v, _)| v)
        .map_err(|e| MetaDecodeError::Bad(e.to_string()))?;
    if version != FORMAT_VERSION {
        return Err(MetaDecodeError::Version(version));
    }
    postcard::take_from_bytes::<MetaHead>(bytes)
        .map(|(head, _)| head)
        .map_err(|e| MetaDecodeError::Bad(e.to_string()))
}

pub(crate) enum MetaDecodeError {
    NotStore,
    Version(u32),
    Bad(String),
}
