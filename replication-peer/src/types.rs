//! Identifiers shared by every module.

use serde::{Deserialize, Serialize};

/// A peer's id in the cluster.
pub type NodeId = u64;

/// A key: opaque bytes. Placement and policy look at the bytes only.
pub type Key = Vec<u8>;

/// The embedder's id for one client request; it comes back on the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);
