//! Records of the node-wide shared log ([`SharedLog`](super::SharedLog)) and its identity record.
//!
//! Every payload of the shared log is an *envelope*: `group (varint) | kind (u8) | body`.
//! - kind 0, a group's log record: the body is a [`Record`](super::record::Record), exactly as a
//!   single group's store writes it.
//! - kind 1, a group's checkpoint: the body is `replay_from (varint) | Base<H>` (postcard): the
//!   group's state as of this record (snapshot metadata, first kept index, term before it, hard
//!   state), and the first WAL index holding a record the group still needs (its live entries).
//!
//! The envelope's head is read without knowing the protocol's hard-state type, so the log is
//! split by group once at open, before any group is opened.

use consensus_core::{DurableState, NodeId};
use serde::{Deserialize, Serialize};

use super::record::FORMAT_VERSION;
use super::view::Base;
use super::Identity;

pub(crate) const KIND_RECORD: u8 = 0;
pub(crate) const KIND_CHECKPOINT: u8 = 1;
const SHARED_MAGIC: [u8; 8] = *b"QRMSHARD";

/// Appends an envelope head to `buf` (the body follows).
pub(crate) fn push_head(group: u64, kind: u8, buf: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(&(group, kind), taken)?;
    Ok(())
}

/// A whole checkpoint envelope of `group`.
pub(crate) fn encode_checkpoint<H: DurableState>(
    group: u64,
    replay_from: u64,
    base: &Base<H>,
) -> Result<Vec<u8>, postcard::Error> {
    let mut buf = Vec::new();
    push_head(group, KIND_CHECKPOINT, &mut buf)?;
    postcard::to_extend(&(replay_from, base), buf)
}

/// An envelope read back, borrowing the payload.
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    pub(crate) group: u64,
    pub(crate) kind: Kind<'a>,
}

#[derive(Debug)]
pub(crate) enum Kind<'a> {
    /// A group's log record (decode with `record::decode`).
    Record(&'a [u8]),
    /// A group's checkpoint; `base` decodes with [`decode_base`].
    Checkpoint { replay_from: u64, base: &'a [u8] },
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Envelope<'_>, String> {
    let ((group, kind), body) =
        postcard::take_from_bytes::<(u64, u8)>(bytes).map_err(|e| format!("envelope: {e}"))?;
    let kind = match kind {
        KIND_RECORD => Kind::Record(body),
        KIND_CHECKPOINT => {
            let (replay_from, base) = postcard::take_from_bytes::<u64>(body)
                .map_err(|e| format!("checkpoint of group {group}: {e}"))?;
            Kind::Checkpoint { replay_from, base }
        }
        other => return Err(format!("unknown record kind {other} (group {group})")),
    };
    Ok(Envelope { group, kind })
}

pub(crate) fn decode_base<H: DurableState>(bytes: &[u8]) -> Result<Base<H>, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The shared log's metadata record: whose node's log this is. Per-group state lives in the
/// log's checkpoint records, so this record is written once, when the first group is created.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharedMeta {
    magic: [u8; 8],
    version: u32,
    pub(crate) protocol: String,
    pub(crate) cluster_id: String,
    pub(crate) node_id: NodeId,
}

pub(crate) enum SharedMetaError {
    NotShared,
    Version(u32),
    Bad(String),
}

impl SharedMeta {
    pub(crate) fn new(identity: &Identity) -> Self {
        SharedMeta {
            magic: SHARED_MAGIC,
            version: FORMAT_VERSION,
            protocol: identity.protocol.clone(),
            cluster_id: identity.cluster_id.clone(),
            node_id: identity.node_id,
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, SharedMetaError> {
        if bytes.len() < 8 || bytes[..8] != SHARED_MAGIC {
            return Err(SharedMetaError::NotShared);
        }
        let version: u32 = postcard::take_from_bytes::<u32>(&bytes[8..])
            .map(|(v, _)| v)
            .map_err(|e| SharedMetaError::Bad(e.to_string()))?;
        if version != FORMAT_VERSION {
            return Err(SharedMetaError::Version(version));
        }
        postcard::from_bytes(bytes).map_err(|e| SharedMetaError::Bad(e.to_string()))
    }
}
