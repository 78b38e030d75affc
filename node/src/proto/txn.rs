//! Transactions, as etcd's `Txn`: compares, then the success ops if every compare holds, else the
//! failure ops — one log entry, applied atomically at one store revision. A branch's ops apply in
//! order (a `Get` sees the branch's earlier writes); the whole transaction bumps the revision once
//! if it changes anything, so every key it writes gets the same `mod_revision`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::KeyValue;

/// Most compares plus ops one transaction may hold (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// One condition on a key's current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    pub key: Bytes,
    /// What of the key is compared.
    pub target: CompareTarget,
    /// How.
    pub op: CompareOp,
}

/// The part of a key a [`Compare`] looks at. An absent key has version, create and mod revision
/// 0 and no value (a value compare on it holds only for `NotEqual`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value, compared bytewise.
    Value(Bytes),
    /// Writes since creation (0: absent).
    Version(u64),
    /// Revision that created the key (0: absent).
    CreateRevision(u64),
    /// Revision of the latest write (0: absent).
    ModRevision(u64),
}

/// A comparison: `current <op> target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Equal.
    Equal,
    /// Not equal.
    NotEqual,
    /// Current is less than the target.
    Less,
    /// Current is greater than the target.
    Greater,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Sets a key.
    Put {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// Removes a key (no error if absent).
    Delete {
        /// Key.
        key: Bytes,
    },
    /// Reads a key (as the branch left it so far).
    Get {
        /// Key.
        key: Bytes,
    },
}

impl TxnOp {
    /// The key the op is about.
    pub fn key(&self) -> &Bytes {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
        }
    }
}

/// What one op of the branch that ran did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    /// The key was set.
    Put,
    /// The key was removed (or did not exist).
    Delete {
        /// Whether it existed.
        deleted: bool,
    },
    /// The key as read (`None`: absent).
    Get {
        /// The pair.
        kv: Option<KeyValue>,
    },
}

/// Whether `current <op> target` holds.
fn ordered<T: Ord>(current: T, op: CompareOp, target: T) -> bool {
    match op {
        CompareOp::Equal => current == target,
        CompareOp::NotEqual => current != target,
        CompareOp::Less => current < target,
        CompareOp::Greater => current > target,
    }
}

impl Compare {
    /// Whether the compare holds for the key's current pair (`None`: absent).
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        match &self.target {
            CompareTarget::Value(target) => match current {
                Some(kv) => ordered(kv.value.as_ref(), self.op, target.as_ref()),
                None => self.op == CompareOp::NotEqual,
            },
            CompareTarget::Version(t) => ordered(current.map_or(0, |kv| kv.version), self.op, *t),
            CompareTarget::CreateRevision(t) => {
                ordered(current.map_or(0, |kv| kv.create_revision), self.op, *t)
            }
            CompareTarget::ModRevision(t) => {
                ordered(current.map_or(0, |kv| kv.mod_revision), self.op, *t)
            }
        }
    }
}
