//! Log records and the identity/checkpoint record, encoded with postcard.
//!
//! The write-ahead log is a redo log of these records in submission order; its own record index
//! (the "WAL index") is a sequence number unrelated to Raft indexes. One `Persist` becomes, in
//! this order: `InstallSnapshot` (if any), one `Entry` per entry, `HardState` (if any).

use consensus_core::{Entry, HardState, NodeId, SnapshotMeta};
use serde::{Deserialize, Serialize};

use super::view::Base;

/// Version of the record and identity encodings.
pub(crate) const FORMAT_VERSION: u32 = 1;
const IDENTITY_MAGIC: [u8; 8] = *b"QRMSTORE";

/// A record as written (borrowing), encoded exactly like [`Record`].
#[derive(Serialize)]
pub(crate) enum RecordRef<'a> {
    Entry(&'a Entry),
    HardState(&'a HardState),
    InstallSnapshot(&'a SnapshotMeta),
}

/// A record as read back.
#[derive(Deserialize, Debug)]
pub(crate) enum Record {
    /// Replaces stored entries from its index on (the first of a batch) or extends them.
    Entry(Entry),
    /// New term, vote and commit.
    HardState(HardState),
    /// A snapshot from the leader was installed (its data is in the snapshot file).
    InstallSnapshot(SnapshotMeta),
}

pub(crate) fn encode(record: &RecordRef<'_>) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(record)
}

/// Appends the encoding of `record` to `buf`.
pub(crate) fn encode_into(
    record: &RecordRef<'_>,
    buf: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(record, taken)?;
    Ok(())
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Record, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Stored in the log's metadata record (replaced atomically): who this directory belongs to, and
/// where replay starts after the last compaction.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreMeta {
    pub(crate) magic: [u8; 8],
    pub(crate) version: u32,
    pub(crate) cluster_id: String,
    pub(crate) node_id: NodeId,
    pub(crate) group_id: u64,
    /// WAL index replay starts at; records below it are obsolete.
    pub(crate) replay_from: u64,
    /// WAL index the checkpoint was taken at: records in `replay_from..checkpoint_end` only
    /// contribute their entries.
    pub(crate) checkpoint_end: u64,
    /// The state replay starts from.
    pub(crate) base: Base,
}

impl StoreMeta {
    pub(crate) fn new(
        identity: &super::Identity,
        replay_from: u64,
        checkpoint_end: u64,
        base: Base,
    ) -> Self {
        StoreMeta {
            magic: IDENTITY_MAGIC,
            version: FORMAT_VERSION,
            cluster_id: identity.cluster_id.clone(),
            node_id: identity.node_id,
            group_id: identity.group_id,
            replay_from,
            checkpoint_end,
            base,
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    /// Decodes and checks magic and version; `Err` carries the reason.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, MetaDecodeError> {
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
        postcard::from_bytes(bytes).map_err(|e| MetaDecodeError::Bad(e.to_string()))
    }
}

pub(crate) enum MetaDecodeError {
    NotStore,
    Version(u32),
    Bad(String),
}
