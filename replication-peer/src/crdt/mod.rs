//! State-based CRDTs a key can hold instead of siblings: merged automatically, no client
//! resolution. Every type's `merge` is commutative, associative and idempotent (proptests in
//! `tests/crdt_laws.rs`), which is what lets replicas exchange whole states in any order, any
//! number of times, and converge.

mod counter;
mod lww_register;
mod or_set;

pub use counter::PnCounter;
pub use lww_register::LwwRegister;
pub use or_set::OrSet;

use serde::{Deserialize, Serialize};

use crate::dvv::Dot;
use crate::hlc::Timestamp;
use crate::types::NodeId;

/// A join-semilattice: `merge` is the least upper bound.
pub trait Lattice {
    /// `self := self ⊔ other`.
    fn merge(&mut self, other: &Self);
}

/// Which CRDT a prefix holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CrdtKind {
    /// Positive-negative counter.
    Counter,
    /// Observed-remove set (add wins over a concurrent remove).
    OrSet,
    /// Last-writer-wins register by hybrid logical clock.
    LwwRegister,
}

/// A CRDT's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Crdt {
    /// See [`PnCounter`].
    Counter(PnCounter),
    /// See [`OrSet`].
    OrSet(OrSet),
    /// See [`LwwRegister`].
    LwwRegister(LwwRegister),
}

/// An update a client asks for on a CRDT key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrdtOp {
    /// Add (negative: subtract) to a counter.
    Increment(i64),
    /// Add an element to a set.
    Add(Vec<u8>),
    /// Remove an element from a set (the adds this replica has seen).
    Remove(Vec<u8>),
    /// Set a register.
    Assign(Vec<u8>),
}

/// What a client reads from a CRDT key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrdtValue {
    /// A counter's value.
    Counter(i64),
    /// A set's elements, sorted.
    Set(Vec<Vec<u8>>),
    /// A register's value (`None`: never assigned).
    Register(Option<Vec<u8>>),
}

/// What an operation needs from the coordinating node.
pub struct OpContext {
    /// The coordinating node.
    pub node: NodeId,
    /// A fresh dot from the node's allocator (used by the set).
    pub dot: Dot,
    /// A fresh timestamp from the node's clock (used by the register).
    pub now: Timestamp,
}

impl Crdt {
    /// The empty state of a kind.
    pub fn empty(kind: CrdtKind) -> Self {
        match kind {
            CrdtKind::Counter => Crdt::Counter(PnCounter::default()),
            CrdtKind::OrSet => Crdt::OrSet(OrSet::default()),
            CrdtKind::LwwRegister => Crdt::LwwRegister(LwwRegister::default()),
        }
    }

    /// The kind of this state.
    pub fn kind(&self) -> CrdtKind {
        match self {
            Crdt::Counter(_) => CrdtKind::Counter,
            Crdt::OrSet(_) => CrdtKind::OrSet,
            Crdt::LwwRegister(_) => CrdtKind::LwwRegister,
        }
    }

    /// Applies `op`; `None` if the op does not fit this kind.
    pub fn apply(&mut self, op: &CrdtOp, ctx: &OpContext) -> Option<()> {
        match (self, op) {
            (Crdt::Counter(c), CrdtOp::Increment(by)) => c.increment(ctx.node, *by),
            (Crdt::OrSet(s), CrdtOp::Add(e)) => s.add(e.clone(), ctx.dot),
            (Crdt::OrSet(s), CrdtOp::Remove(e)) => s.remove(e),
            (Crdt::LwwRegister(r), CrdtOp::Assign(v)) => r.assign(v.clone(), ctx.now),
            _ => return None,
        }
        Some(())
    }

    /// The client-visible value.
    pub fn value(&self) -> CrdtValue {
        match self {
            Crdt::Counter(c) => CrdtValue::Counter(c.value()),
            Crdt::OrSet(s) => CrdtValue::Set(s.elements()),
            Crdt::LwwRegister(r) => CrdtValue::Register(r.value().map(<[u8]>::to_vec)),
        }
    }

    /// Merges a state of the same kind; `false` (and no change) for a different kind.
    pub fn merge_same_kind(&mut self, other: &Crdt) -> bool {
        match (self, other) {
            (Crdt::Counter(a), Crdt::Counter(b)) => a.merge(b),
            (Crdt::OrSet(a), Crdt::OrSet(b)) => a.merge(b),
            (Crdt::LwwRegister(a), Crdt::LwwRegister(b)) => a.merge(b),
            _ => return false,
        }
        true
    }

    /// Bytes of user data held (for the value-size limit).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Crdt::Counter(c) => c.entries() * 16,
            Crdt::OrSet(s) => s.payload_bytes(),
            Crdt::LwwRegister(r) => r.value().map_or(0, <[u8]>::len),
        }
    }

    /// Largest timestamp inside (for the clock after a restart).
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        match self {
            Crdt::LwwRegister(r) => r.timestamp(),
            _ => None,
        }
    }
}
