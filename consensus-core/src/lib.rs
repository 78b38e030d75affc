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
//!
//! ```
//! use bytes::Bytes;
//! use consensus_core::{ConfState, Config, Consensus, EntryPayload, MemStorage, Raft, Role};
//! use rand::SeedableRng;
//!
//! # fn main() -> Result<(), consensus_core::Error> {
//! // A group of one voter, so no network is needed.
//! let storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
//! let rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let mut raft = Raft::new(Config::new(1), storage, rng)?;
//! raft.campaign()?;
//! let mut applied = Vec::new();
//! let mut drive = |raft: &mut Raft<MemStorage>, applied: &mut Vec<Bytes>| -> Result<(), consensus_core::Error> {
//!     while raft.has_ready() {
//!         let ready = raft.ready();
//!         assert!(ready.messages.is_empty()); // nobody to send to
//!         if let Some(persist) = ready.persist {
//!             raft.storage_mut().write(&persist)?; // persist…
//!             raft.persisted(persist.token)?;      // …confirm…
//!         }
//!         for entry in ready.committed {           // …apply
//!             if let EntryPayload::Data(data) = entry.payload {
//!                 applied.push(data);
//!             }
//!         }
//!     }
//!     Ok(())
//! };
//! drive(&mut raft, &mut applied)?;
//! assert_eq!(raft.role(), Role::Leader);
//! raft.propose(Bytes::from_static(b"hello"))?;
//! drive(&mut raft, &mut applied)?;
//! assert_eq!(applied, vec![Bytes::from_static(b"hello")]);
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod protocol;
pub mod raft;
pub mod sim;
pub mod storage;
pub mod types;

pub use bytes::Bytes;
pub use error::{Error, StorageError};
pub use protocol::{Consensus, Envelope, Persist, PersistToken, Ready};
pub use raft::{Config, Message, MessageBody, PlantedBug, Raft, ReadMode};
pub use rand_chacha::ChaCha8Rng;
pub use storage::{MemStorage, Storage};
pub use types::{
    ConfChange, ConfState, Entry, EntryPayload, HardState, MemberChange, NodeId, Proposed,
    ReadState, Role, Snapshot, SnapshotMeta, SoftState, Status,
};

/// A deterministic RNG for election jitter, seeded from `seed` (what [`Raft::new`] takes).
pub fn seeded_rng(seed: u64) -> ChaCha8Rng {
    use rand::SeedableRng;
    ChaCha8Rng::seed_from_u64(seed)
}
