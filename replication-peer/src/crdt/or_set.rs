//! Observed-remove set without tombstones (ORSWOT, as Riak's `riak_dt_orswot`): each element
//! carries the dots of the adds that made it present; a causal context says which adds the
//! replica has seen. A remove drops the element's dots — only the adds it observed — so a
//! concurrent add survives (add wins).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Lattice;
use crate::dvv::{Dot, VersionVector};

/// An add-wins observed-remove set of byte strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrSet {
    entries: BTreeMap<Vec<u8>, BTreeSet<Dot>>,
    context: VersionVector,
}

impl OrSet {
    /// Adds `element` with the fresh `dot`; the element's older dots are superseded.
    pub fn add(&mut self, element: Vec<u8>, dot: Dot) {
        self.context.add(dot);
        self.entries.insert(element, BTreeSet::from([dot]));
    }

    /// Removes `element` as this replica sees it.
    pub fn remove(&mut self, element: &[u8]) {
        self.entries.remove(element);
    }

    /// Present elements, sorted.
    pub fn elements(&self) -> Vec<Vec<u8>> {
        self.entries.keys().cloned().collect()
    }

    /// Bytes of element data.
    pub fn payload_bytes(&self) -> usize {
        self.entries.keys().map(|e| e.len() + 16).sum()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Lattice for OrSet {
    fn merge(&mut self, other: &Self) {
        let keys: BTreeSet<Vec<u8>> = self
            .entries
            .keys()
            .chain(other.entries.keys())
            .cloned()
            .collect();
        let empty = BTreeSet::new();
        let mut merged = BTreeMap::new();
        for k in keys {
            let mine = self.entries.get(&k).unwrap_or(&empty);
            let theirs = other.entries.get(&k).unwrap_or(&empty);
            // A dot survives if both have it, or if the side lacking it never saw it.
            let dots: BTreeSet<Dot> = mine
                .iter()
                .filter(|d| theirs.contains(d) || !other.context.covers(**d))
                .chain(
                    theirs
                        .iter()
                        .filter(|d| mine.contains(d) || !self.context.covers(**d)),
                )
                .copied()
                .collect();
            if !dots.is_empty() {
                merged.insert(k, dots);
            }
        }
        self.entries = merged;
        self.context.join(&other.context);
    }
}
