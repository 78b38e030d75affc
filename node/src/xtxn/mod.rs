//! Atomic transactions across shards: two-phase commit whose participant PREPAREs and whose
//! coordinator decision are entries in the shards' own consensus logs, so no single crash
//! blocks a transaction (the participant state machine is `kv::shard_txn`, the wire steps
//! [`crate::proto::xtxn`]).
//!
//! - [`plan`]: a `Txn` evaluated against the values its coordinator read — the branch that runs,
//!   its results, what each shard prepares.
//! - [`coordinator`]: [`CrossShardTxn`], one transaction's coordinator, sans-IO, its phases run
//!   by txn-2pc's two-phase coordinator (presumed abort).
//! - [`driver`]: runs them over an abstract async [`driver::Shards`] (the node's client
//!   connections, or an in-process test double).
//! - [`resolver`]: [`Resolver`], a participant shard's leader asking the coordinator shard about
//!   transactions prepared too long (ABORT recorded if nothing was decided).
//! - [`bank`]: the deterministic in-process bank test under crashes, drops, duplicates,
//!   reordering and leader changes (`cargo xtask sim --protocol bank`).

pub mod bank;
pub mod coordinator;
pub mod driver;
pub mod plan;
pub mod resolver;

pub use coordinator::{Action, CrossShardTxn, Report};
pub use plan::{Plan, TxnRequest};
pub use resolver::Resolver;
