//! # consensus-core
//!
//! Pure, deterministic consensus protocols for Quorate. Raft comes first; Multi-Paxos and Zab will sit
//! beside it behind the same interface, so the node and the simulator drive any of them the same way.
//!
//! This crate is **sans-IO**: events go in (messages, ticks, proposals, storage completions) and
//! actions come out (messages to send, state to persist, entries now committed, reads now safe).
//!
//! It may not depend on tokio, the filesystem, clocks, threads or unseeded randomness; a seeded RNG is
//! passed in. It never depends on any other Quorate crate.
