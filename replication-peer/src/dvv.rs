//! Dotted version vectors (Preguiça, Baquero, Almeida et al., "Dotted Version Vectors", 2010;
//! the representation Riak KV ≥ 2.0 uses to stop sibling explosion).
//!
//! A key's state is a [`Dvv`]: a causal context (a [`VersionVector`]) that summarises every
//! write the replica has seen, and the siblings still alive, each tagged with the [`Dot`] of the
//! write that made it. A write names the context its client read; it supersedes exactly the
//! siblings that context covers and nothing else, so a concurrent write survives as a sibling.
//!
//! Why this does not explode: the context is one entry per *coordinating node*, not per client,
//! and a sibling is dropped as soon as any write that saw it reaches the replica.
//!
//! The dot counters come from the coordinating node's own allocator, strictly increasing across
//! all keys and restarts (see `peer/durability.rs`); so "`vv[n] >= c`" really does mean "has seen
//! every write node `n` coordinated for this key up to `c`": a node ships its whole object, which
//! carries every earlier dot of its own that is still alive.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// One write's identity: the node that coordinated it and that node's counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Coordinating node.
    pub node: NodeId,
    /// The node's counter (unique per node, never reused).
    pub counter: u64,
}

/// A version vector: for each node, the largest counter of its writes that has been seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionVector {
    entries: BTreeMap<NodeId, u64>,
}

impl VersionVector {
    /// The empty vector: has seen nothing (the context of a blind write).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether this context has seen `dot`.
    pub fn covers(&self, dot: Dot) -> bool {
        self.get(dot.node) >= dot.counter
    }

    /// The counter seen for `node` (0: none).
    pub fn get(&self, node: NodeId) -> u64 {
        self.entries.get(&node).copied().unwrap_or(0)
    }

    /// Records `dot` as seen.
    pub fn add(&mut self, dot: Dot) {
        let e = self.entries.entry(dot.node).or_insert(0);
        *e = (*e).max(dot.counter);
    }

    /// Least upper bound, in place.
    pub fn join(&mut self, other: &VersionVector) {
        for (&n, &c) in &other.entries {
            self.add(Dot {
                node: n,
                counter: c,
            });
        }
    }

    /// Whether every write `other` has seen, this one has seen too.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|(&n, &c)| self.get(n) >= c)
    }

    /// The `(node, counter)` entries, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.entries.iter().map(|(&n, &c)| (n, c))
    }

    /// Number of nodes with an entry.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the vector has seen nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (node, counter) in iter {
            vv.add(Dot { node, counter });
        }
        vv
    }
}

/// A key's causal state: context plus live siblings, each with the dot of its write.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dvv<T> {
    context: VersionVector,
    /// Sorted by dot; dots are unique.
    siblings: Vec<(Dot, T)>,
}

impl<T> Default for Dvv<T> {
    fn default() -> Self {
        Dvv {
            context: VersionVector::new(),
            siblings: Vec::new(),
        }
    }
}

impl<T: Clone> Dvv<T> {
    /// No writes seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// The causal context: what a client must send back to supersede what it read.
    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// Live siblings in dot order.
    pub fn siblings(&self) -> &[(Dot, T)] {
        &self.siblings
    }

    /// Applies a write made at `dot` by a client that had read `read_context`: siblings the
    /// context covers go, the others stay (they are concurrent with this write), the new value
    /// joins them. `dot` must be new (its node's allocator guarantees that).
    pub fn write(&mut self, read_context: &VersionVector, dot: Dot, value: T) {
        debug_assert!(!self.context.covers(dot), "dot {dot:?} reused");
        self.siblings.retain(|(d, _)| !read_context.covers(*d));
        self.context.join(read_context);
        self.context.add(dot);
        self.siblings.push((dot, value));
        self.siblings.sort_by_key(|(d, _)| *d);
    }

    /// Merges another replica's state: a sibling survives if the other side still has it or
    /// has not seen it; contexts join. Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &Dvv<T>) {
        let mut merged: Vec<(Dot, T)> = Vec::with_capacity(self.siblings.len());
        for (d, v) in &self.siblings {
            if !other.context.covers(*d) || other.has_dot(*d) {
                merged.push((*d, v.clone()));
            }
        }
        for (d, v) in &other.siblings {
            if !self.context.covers(*d) && !self.has_dot(*d) {
                merged.push((*d, v.clone()));
            }
        }
        merged.sort_by_key(|(d, _)| *d);
        self.siblings = merged;
        self.context.join(&other.context);
    }

    /// Drops the sibling at position `i` (only the planted bug does this outside LWW).
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn drop_sibling(&mut self, i: usize) {
        if i < self.siblings.len() {
            self.siblings.remove(i);
        }
    }

    fn has_dot(&self, dot: Dot) -> bool {
        self.siblings
            .binary_search_by_key(&dot, |(d, _)| *d)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(node: NodeId, counter: u64) -> Dot {
        Dot { node, counter }
    }

    #[test]
    fn concurrent_writes_keep_siblings_and_a_write_with_the_read_context_resolves_them() {
        let mut a: Dvv<&str> = Dvv::new();
        a.write(&VersionVector::new(), dot(1, 1), "x");
        let mut b: Dvv<&str> = Dvv::new();
        b.write(&VersionVector::new(), dot(2, 1), "y");
        a.merge(&b);
        assert_eq!(a.siblings().len(), 2);
        let ctx = a.context().clone();
        a.write(&ctx, dot(1, 2), "z");
        assert_eq!(a.siblings(), &[(dot(1, 2), "z")]);
    }

    #[test]
    fn a_write_supersedes_exactly_what_its_context_saw() {
        let mut a: Dvv<&str> = Dvv::new();
        a.write(&VersionVector::new(), dot(1, 1), "x");
        let saw_x = a.context().clone();
        let mut b = a.clone();
        b.write(&VersionVector::new(), dot(2, 5), "y"); // blind, concurrent with x
        a.merge(&b);
        a.write(&saw_x, dot(1, 2), "z");
        let values: Vec<_> = a.siblings().iter().map(|(_, v)| *v).collect();
        assert_eq!(values, ["z", "y"]); // dot order: (1,2) before (2,5)
    }

    #[test]
    fn an_old_copy_arriving_late_does_not_bring_back_a_superseded_sibling() {
        let mut old: Dvv<&str> = Dvv::new();
        old.write(&VersionVector::new(), dot(1, 1), "x");
        let mut new = old.clone();
        let ctx = new.context().clone();
        new.write(&ctx, dot(2, 1), "y");
        new.merge(&old);
        assert_eq!(new.siblings(), &[(dot(2, 1), "y")]);
    }
}
