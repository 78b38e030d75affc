//! # txn-2pc
//!
//! Sans-IO atomic commitment: commit one transaction across several resource managers
//! (shards, services, databases). Every engine is a deterministic state machine: messages,
//! ticks and durability confirmations in; records to write, messages to send and events out.
//! No I/O, clocks, threads or randomness inside; no other Quorate crate needed.
//!
//! ## The durability contract
//!
//! Engines return an [`Output`]: [`Write::Force`] records must be durable before the embedder
//! calls the engine's `forced(token)`, and the messages that depend on them stay *inside the
//! engine* until then — a yes vote cannot leave before its PREPARED record, nor a COMMIT before
//! the coordinator's decision. [`Write::Lazy`] records may be lost in a crash: the protocol
//! presumes their content. Where the records go is the embedder's choice — a local log, or a
//! consensus log, so that a coordinator crash does not block (what the Quorate node will do).
//! Records encode with [`DurableRecord::encode`]; [`DurableRecord::decode`] and `recover()`
//! turn bad bytes or contradictory logs into typed errors.
//!
//! ## Which protocol
//!
//! | protocol | pick it when | price |
//! |---|---|---|
//! | [`two_phase`] (presumed abort) | the participants can *prepare* (hold locks, promise to commit) — databases, shards | blocks while the coordinator is down after the votes, unless its decision lives on a consensus log |
//! | [`three_phase`] (opt-in) | you want no blocking under *crash* failures and can bound message delays | one more round; **unsafe under partitions** (the simulator shows the split) |
//! | [`tcc`] | the participants are services that can *reserve* (hold money, a seat) and confirm or cancel | every branch needs try/confirm/cancel handlers; reservations are visible meanwhile |
//! | [`saga`] | long or cross-service work with no reservations; each step commits locally | no isolation: others see intermediate states; compensations must be semantic undos |
//!
//! TCC and sagas share the branch side, [`fence::Service`]: a fence record written with each
//! business effect makes retries idempotent, lets a cancel that overtakes its try succeed (empty
//! rollback) and refuses the late try (anti-suspension).
//!
//! ## The simulator (feature `sim`)
//!
//! [`sim`] runs the real engines under a seeded network (drop, duplicate, delay, reorder,
//! straggle, partition) and crashes that lose unsynced records, and checks atomicity, validity,
//! that decisions never change, all-or-nothing branches and at-most-once effects at every step.
//! `cargo xtask sim --protocol 2pc|3pc|3pc-partitions|tcc|saga --seeds N` runs it; the feature
//! `planted-bugs` adds the known bugs it must catch.

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
