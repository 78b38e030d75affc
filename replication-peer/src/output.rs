//! What the engine asks of its embedder: messages to send, writes to make durable, replies.
//!
//! The persistence contract: apply `persists` in the order given; once a write and all before it
//! are durable, call [`crate::Peer::persisted`] with its token (a token confirms every earlier
//! one). Nothing that depends on a write leaves the engine before that: acknowledgements, read
//! answers and pushes of a key wait until the key has no write in flight, so no other node and no
//! client ever sees state a crash could take back.

use serde::{Deserialize, Serialize};

use crate::error::RequestError;
use crate::message::{Message, Response};
use crate::object::Object;
use crate::types::{Key, NodeId, RequestId};

/// Identifies one durable write; tokens increase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PersistToken(pub u64);

/// One durable write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    /// Store `object` for `key`, or remove the key (`None`: a collected tombstone).
    Object {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Key,
        /// Its new object.
        object: Option<Object>,
    },
    /// Raise the dot allocator's ceiling: after a restart, counters start above it.
    DotCeiling(u64),
}

/// A write with its token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persist {
    /// Confirm with this.
    pub token: PersistToken,
    /// What to write.
    pub write: Write,
}

/// Everything the engine produced since the last [`crate::Peer::take_output`].
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Messages to send, in order.
    pub messages: Vec<(NodeId, Message)>,
    /// Writes to make durable, in order.
    pub persists: Vec<Persist>,
    /// Answers to client requests.
    pub replies: Vec<(RequestId, Result<Response, RequestError>)>,
}

impl Output {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.persists.is_empty() && self.replies.is_empty()
    }
}
