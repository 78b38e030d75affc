//! # consensus-core
//!
//! Pure, deterministic consensus protocols for Quorate. Raft comes first; Multi-Paxos and Zab will sit
//! beside it behind the same [`Consensus`] trait, so the node and the simulator drive any of them the
//! same way.
//!
//! This crate is **sans-IO**: events go in (messages, ticks, proposals, storage completions) and
//! actions come out (messages to send, state to persist, entries now committed, reads now safe).
//! It may not depend on tokio, the filesystem, clocks, threads or unseeded randomness; a seeded RNG is
//! passed in. It never depends on any other Quorate crate.
//!
//! ## The driver's duties
//!
//! A driver owns one [`Raft`] per group and loops:
//!
//! 1. feed events: [`Consensus::tick`] on a timer, [`Consensus::step`] for each message received,
//!    [`Consensus::propose`] / [`Consensus::read_index`] for client requests;
//! 2. take a [`Ready`] with [`Consensus::ready`];
//! 3. **send** `ready.messages` right away — none depends on an unfinished write;
//! 4. **persist** `ready.persist` (snapshot, entries replacing any suffix, hard state), possibly in the
//!    background and group-committed, then hand its token to [`Consensus::persisted`]; messages that
//!    needed that write come out of a later `ready()`;
//! 5. **apply** `ready.committed` in order (installing `persist.snapshot` first if there is one) and
//!    serve `ready.reads` once applied through their index.
//!
//! See [`protocol`] for the full contract and why it has this shape.

pub mod error;
pub mod protocol;
pub mod raft;
pub mod sim;
pub mod storage;
pub mod types;

pub use error::{Error, StorageError};
pub use protocol::{Consensus, Envelope, Persist, PersistToken, Ready};
pub use raft::{Config, Message, MessageBody, PlantedBug, Raft, ReadMode};
pub use storage::{MemStorage, Storage};
pub use types::{
    ConfChange, ConfState, Entry, EntryPayload, HardState, MemberChange, NodeId, Proposed, ReadState, Role,
    Snapshot, SnapshotMeta, SoftState, Status,
};
