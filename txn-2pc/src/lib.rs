//! # txn-2pc
//!
//! Sans-IO atomic commitment: two-phase commit (presumed abort), three-phase commit, TCC and
//! sagas, plus (feature `sim`) a seeded fault simulator that checks their invariants.
//! Deterministic; no I/O, clocks, threads or randomness inside.

pub mod error;
pub mod fence;
mod finished;
pub mod output;
pub mod record;
pub mod saga;
#[cfg(feature = "sim")]
pub mod sim;
pub mod tcc;
pub mod three_phase;
pub mod two_phase;
pub mod types;

pub use error::{DurabilityError, RecordError, RecoveryError, StepError};
pub use output::{ForceToken, Output, Write};
pub use record::DurableRecord;
pub use types::{NodeId, Outcome, TxnId, Vote};
