//! # consensus-core
//!
//! Pure, deterministic consensus protocols for Quorate: Raft, Multi-Paxos ([`paxos`]) and Zab
//! ([`zab`]) behind one [`Consensus`] trait, so the node, the simulator and the benches drive
//! any of them the same way through one replica loop ([`Replica`]).
//!
//! This crate is **sans-IO**: events go in (messages, ticks, proposals, storage completions) and
//! actions come out (messages to send, state to persist, entries now committed, reads now safe).
//! It may not depend on tokio, the filesystem, clocks, threads or unseeded randomness; a seeded RNG is
//! passed in. It never depends on any other Quorate crate.
//!
//! ## The driver's duties
//!
//! A driver owns one protocol instance per group inside a [`Replica`] and feeds it events:
//! [`Consensus::tick`] on a timer, [`Consensus::step`] for each message received,
//! [`Consensus::propose`] / [`Consensus::read_index`] for client requests. After each event it calls
//! [`Replica::drive`] with its [`Host`] — the loop that sends `ready.messages` at once, submits
//! `ready.persist` (possibly group-committed in the background), confirms tokens once the host
//! reports them durable, installs received snapshots and applies committed entries in order.
//! See [`protocol`] for the full contract and why it has this shape, and [`replica`] for the loop.
//!
//! ```
//! use bytes::Bytes;
//! use consensus_core::{
//!     ConfState, Config, Consensus, Entry, EntryPayload, Host, MemStorage, Raft, Replica, Role,
//!     Snapshot, Write,
//! };
//!
//! /// A host with no network and a disk that is durable at once.
//! #[derive(Default)]
//! struct Local {
//!     written: u64,
//!     applied: Vec<Bytes>,
//! }
//!
//! impl Host<Raft<MemStorage>> for Local {
//!     type Error = consensus_core::Error;
//!     fn send(&mut self, _: consensus_core::Message) -> Result<(), Self::Error> {
//!         unreachable!("a group of one sends nothing")
//!     }
//!     fn submit(&mut self, storage: &mut MemStorage, write: &Write<consensus_core::HardState>) -> Result<u64, Self::Error> {
//!         storage.write(write)?;
//!         self.written += 1;
//!         Ok(self.written)
//!     }
//!     fn durable(&self) -> u64 {
//!         self.written
//!     }
//!     fn install_snapshot(&mut self, _: &Snapshot) -> Result<(), Self::Error> {
//!         Ok(())
//!     }
//!     fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Self::Error> {
//!         for entry in entries {
//!             if let EntryPayload::Data(data) = entry.payload {
//!                 self.applied.push(data);
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), consensus_core::Error> {
//! // A group of one voter, so no network is needed.
//! let storage = MemStorage::new_with_conf(ConfState::with_voters([1]));
//! let mut replica = Replica::new(Raft::new(Config::new(1), storage, consensus_core::seeded_rng(7))?);
//! let mut host = Local::default();
//! replica.engine_mut().campaign()?;
//! replica.drive(&mut host)?;
//! assert_eq!(replica.engine().role(), Role::Leader);
//! replica.engine_mut().propose(Bytes::from_static(b"hello"))?;
//! replica.drive(&mut host)?;
//! assert_eq!(host.applied, vec![Bytes::from_static(b"hello")]);
//! # Ok(())
//! # }
//! ```

pub mod entries;
pub mod error;
pub mod paxos;
pub mod protocol;
pub mod raft;
pub mod replica;
pub mod sim;
pub mod storage;
pub mod types;
pub mod write_queue;
pub mod zab;

pub use bytes::Bytes;
pub use entries::Entries;
pub use error::{Error, StorageError};
pub use paxos::{
    Config as PaxosConfig, HardState as PaxosHardState, Message as PaxosMessage, MultiPaxos,
};
pub use protocol::{
    CommittedRange, Consensus, DurableState, Envelope, Persist, PersistToken, Ready, TokenSequence,
    Write,
};
#[cfg(feature = "planted-bugs")]
pub use raft::PlantedBug;
pub use raft::{Config, HardState, Message, MessageBody, Raft, RaftStorage, ReadMode};
pub use rand_chacha::ChaCha8Rng;
pub use replica::{Host, MemHost, Replica, ReplicaLoop};
pub use storage::{MemStorage, Storage};
pub use types::{
    ConfChange, ConfState, Entry, EntryPayload, MemberChange, NodeId, Proposed, ReadState, Role,
    Snapshot, SnapshotMeta, SoftState, Status,
};
pub use write_queue::WriteQueue;
pub use zab::{Config as ZabConfig, HardState as ZabHardState, Message as ZabMessage, Zab};

/// A deterministic RNG for election jitter, seeded from `seed` (what [`Raft::new`] takes).
pub fn seeded_rng(seed: u64) -> ChaCha8Rng {
    use rand::SeedableRng;
    ChaCha8Rng::seed_from_u64(seed)
}
