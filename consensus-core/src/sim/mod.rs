//! The deterministic fault simulator and the linearizability checker, for any protocol.
//!
//! Everything here is a pure function of a seed: the network ([`network`]), the nodes with their
//! replica loop and a disk that loses unsynced writes (`node`), the run loop ([`cluster`]), the
//! faults (`nemesis`), the clients and their history (`client`, [`history`], [`kv`]). Safety
//! invariants are checked after every step ([`invariants`]: the shared ones plus each protocol's);
//! the client history is checked for linearizability per key after the run ([`linearizability`]),
//! sequential (session-consistent) reads against their own, weaker spec;
//! [`trace`] keeps the last events and a hash of all of them so a failing seed replays bit for bit.
//!
//! A protocol plugs in by implementing [`SimProtocol`] (and its [`ProtocolChecker`]); [`raft`] is
//! Raft's adapter, [`paxos`] Multi-Paxos'.
//!
//! ```
//! use consensus_core::sim::{cluster, RaftSim};
//!
//! let outcome = cluster::run_seed::<RaftSim>(7, Some(3));
//! assert!(outcome.is_clean(), "{}", outcome.report());
//! // The same seed replays exactly.
//! assert_eq!(cluster::run_seed::<RaftSim>(7, Some(3)).trace_hash, outcome.trace_hash);
//! ```

mod client;
pub mod cluster;
pub mod config;
pub mod history;
pub mod invariants;
pub mod kv;
pub mod linearizability;
mod nemesis;
pub mod network;
mod node;
pub mod outcome;
pub mod paxos;
pub mod protocol;
pub mod raft;
pub mod trace;
pub mod zab;

#[cfg(feature = "planted-bugs")]
pub use client::HarnessBug;
pub use cluster::{run, run_seed};
pub use config::SimConfig;
pub use outcome::{Failure, Outcome, SimStats};
pub use paxos::{PaxosOptions, PaxosSim};
pub use protocol::{ProtocolChecker, SimProtocol};
pub use raft::{RaftOptions, RaftSim};
pub use zab::{ZabOptions, ZabSim};
