//! The deterministic fault simulator and the linearizability checker.
//!
//! Everything here is a pure function of a seed: the network ([`network`]), the drivers and the
//! nemesis ([`cluster`]), the clients and their history ([`history`], [`kv`]). Safety invariants are
//! checked after every step ([`invariants`]); the client history is checked for linearizability per
//! key after the run ([`linearizability`]); [`trace`] keeps the last events and a hash of all of them
//! so a failing seed replays bit for bit.
//!
//! ```
//! use consensus_core::sim::{cluster, linearizability};
//!
//! let outcome = cluster::run_seed(7, Some(3), None);
//! assert!(outcome.is_clean(), "{}", outcome.report());
//! // The same seed replays exactly.
//! assert_eq!(cluster::run_seed(7, Some(3), None).trace_hash, outcome.trace_hash);
//! # let _ = linearizability::DEFAULT_STEP_BUDGET;
//! ```

pub mod cluster;
pub mod history;
pub mod invariants;
pub mod kv;
pub mod linearizability;
pub mod network;
pub mod trace;

pub use cluster::{run, run_seed, Failure, Outcome, SimConfig, SimStats};
