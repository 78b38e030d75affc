//! Identifiers shared by every module.

use std::collections::HashMap;

use foldhash::fast::FixedState;
use serde::{Deserialize, Serialize};

/// A peer's id in the cluster.
pub type NodeId = u64;

/// A key: opaque bytes. Placement and policy look at the bytes only.
pub type Key = Vec<u8>;

/// A peer's in-memory map by key: hashed, seeded with `Config::index_seed` (local to the peer).
pub(crate) type KeyMap<V> = HashMap<Key, V, FixedState>;

/// An empty [`KeyMap`] whose hash is seeded with `seed`.
pub(crate) fn key_map<V>(seed: u64) -> KeyMap<V> {
    HashMap::with_hasher(FixedState::with_seed(seed))
}

/// The embedder's id for one client request; it comes back on the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);
