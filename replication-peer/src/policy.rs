//! How a key resolves conflicts, chosen per key prefix, and the bounds on what a key may hold.

use serde::{Deserialize, Serialize};

use crate::crdt::CrdtKind;

/// A key's conflict-resolution policy. Every peer must be configured with the same table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// Concurrent writes are all kept; reads return every sibling and the context that
    /// resolves them; the next write naming that context replaces them. Nothing is lost.
    Siblings,
    /// Last writer wins by hybrid logical clock. **Concurrent writes are dropped**: of writes
    /// neither of which saw the other, only the one with the largest timestamp survives.
    /// Causality is still kept: a write that saw another always replaces it (dotted version
    /// vectors decide that, not the clocks).
    Lww,
    /// A CRDT, merged automatically; written with [`crate::CrdtOp`]s, never deleted.
    Crdt(CrdtKind),
}

/// Longest-prefix table from key prefixes to policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyTable {
    default: Policy,
    /// Sorted by prefix length, longest first.
    prefixes: Vec<(Vec<u8>, Policy)>,
}

impl PolicyTable {
    /// Every key uses `default` until prefixes are added.
    pub fn new(default: Policy) -> Self {
        PolicyTable {
            default,
            prefixes: Vec::new(),
        }
    }

    /// Keys starting with `prefix` use `policy` (the longest matching prefix wins).
    pub fn with_prefix(mut self, prefix: impl Into<Vec<u8>>, policy: Policy) -> Self {
        let prefix = prefix.into();
        self.prefixes.retain(|(p, _)| *p != prefix);
        self.prefixes.push((prefix, policy));
        self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        self
    }

    /// The policy of `key`.
    pub fn policy(&self, key: &[u8]) -> Policy {
        self.prefixes
            .iter()
            .find(|(p, _)| key.starts_with(p))
            .map_or(self.default, |(_, pol)| *pol)
    }
}

/// Bounds on keys, values and siblings. Past them a write is refused with a typed error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest key.
    pub max_key_bytes: usize,
    /// Largest value (a sibling's bytes, or a CRDT's payload).
    pub max_value_bytes: usize,
    /// Most siblings a write may leave behind. Merges of concurrent writes made at different
    /// coordinators can exceed it (dropping one would lose an acknowledged write); the next
    /// write must then resolve them.
    pub max_siblings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_siblings: 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_decides() {
        let t = PolicyTable::new(Policy::Siblings)
            .with_prefix("c/", Policy::Crdt(CrdtKind::Counter))
            .with_prefix("c/lww/", Policy::Lww);
        assert_eq!(t.policy(b"x"), Policy::Siblings);
        assert_eq!(t.policy(b"c/1"), Policy::Crdt(CrdtKind::Counter));
        assert_eq!(t.policy(b"c/lww/1"), Policy::Lww);
    }
}
