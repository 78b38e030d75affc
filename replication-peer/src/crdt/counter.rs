//! Positive-negative counter: one grow-only count per node for increments, one for decrements.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Lattice;
use crate::types::NodeId;

/// A PN-counter. Merge takes the per-node maximum of both halves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PnCounter {
    increments: BTreeMap<NodeId, u64>,
    decrements: BTreeMap<NodeId, u64>,
}

impl PnCounter {
    /// Adds `by` (negative: subtracts) on behalf of `node`. Saturates rather than wraps.
    pub fn increment(&mut self, node: NodeId, by: i64) {
        let half = if by >= 0 {
            &mut self.increments
        } else {
            &mut self.decrements
        };
        let e = half.entry(node).or_insert(0);
        *e = e.saturating_add(by.unsigned_abs());
    }

    /// The counter's value, saturated to `i64`.
    pub fn value(&self) -> i64 {
        let p: i128 = self.increments.values().map(|&v| i128::from(v)).sum();
        let n: i128 = self.decrements.values().map(|&v| i128::from(v)).sum();
        (p - n).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// Number of per-node entries.
    pub fn entries(&self) -> usize {
        self.increments.len() + self.decrements.len()
    }
}

impl Lattice for PnCounter {
    fn merge(&mut self, other: &Self) {
        for (half, theirs) in [
            (&mut self.increments, &other.increments),
            (&mut self.decrements, &other.decrements),
        ] {
            for (&n, &v) in theirs {
                let e = half.entry(n).or_insert(0);
                *e = (*e).max(v);
            }
        }
    }
}
