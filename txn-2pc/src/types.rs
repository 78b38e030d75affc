//! Identifiers and outcomes shared by every protocol.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The address of a coordinator, participant or service, as the embedder's transport knows it.
pub type NodeId = u64;

/// A transaction (or saga) identifier. The embedder must never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId(pub u64);

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T{}", self.0)
    }
}

/// The outcome of an atomic commitment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Every participant makes the transaction's effects permanent.
    Commit,
    /// Every participant undoes the transaction's effects.
    Abort,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Commit => f.write_str("commit"),
            Outcome::Abort => f.write_str("abort"),
        }
    }
}

/// A resource manager's answer to "can you commit?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    /// Prepared: the participant can commit and has forced its PREPARED record.
    Yes,
    /// The participant cannot commit; the transaction must abort.
    No,
    /// The participant changed nothing: it needs no phase 2 and forgets the transaction.
    ReadOnly,
}
