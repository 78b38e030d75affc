//! Typed errors: bad input is reported, never a panic.

use crate::types::{NodeId, TxnId};

/// A confirmation of a forced write that the engine did not ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurabilityError {
    /// No forced write with this token was ever issued by this engine instance.
    #[error("no forced write has token {0}")]
    UnknownToken(u64),
    /// The token (and every earlier one) was already confirmed.
    #[error("forced write {0} was already confirmed")]
    AlreadyConfirmed(u64),
}

/// A durable record that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Empty input.
    #[error("record is empty")]
    Empty,
    /// The version byte is not one this build reads.
    #[error("record format version {0} is not supported")]
    Version(u8),
    /// The body does not decode.
    #[error("record body does not decode: {0}")]
    Body(String),
}

/// Why an engine refused an input. The engine's state is unchanged when it returns one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The message names a transaction this engine does not know, and no rule covers it.
    #[error("{0} is unknown here")]
    UnknownTxn(TxnId),
    /// A transaction with this id already exists.
    #[error("{0} already exists")]
    DuplicateTxn(TxnId),
    /// The sender is not part of the transaction.
    #[error("node {from} is not a participant of {txn}")]
    NotAParticipant {
        /// The transaction.
        txn: TxnId,
        /// The sender.
        from: NodeId,
    },
    /// The input contradicts a decision already taken (a protocol violation by the sender).
    #[error("{txn}: {detail}")]
    Conflict {
        /// The transaction.
        txn: TxnId,
        /// What contradicts what.
        detail: &'static str,
    },
    /// The call is not valid in the transaction's current state.
    #[error("{txn}: {detail}")]
    WrongState {
        /// The transaction.
        txn: TxnId,
        /// Why.
        detail: &'static str,
    },
    /// The request itself is malformed (no participants, a duplicate participant…).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

/// Why recovery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// A record does not parse.
    #[error("record {index} does not parse: {source}")]
    Unparsable {
        /// Position of the record in the sequence handed to `recover`.
        index: usize,
        /// Why.
        source: RecordError,
    },
    /// The records contradict each other (e.g. COMMIT and ABORT for one transaction).
    #[error("records contradict each other for {txn}: {detail}")]
    Inconsistent {
        /// The transaction.
        txn: TxnId,
        /// What contradicts what.
        detail: &'static str,
    },
}
