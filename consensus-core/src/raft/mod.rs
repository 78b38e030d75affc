//! Raft (Ongaro & Ousterhout 2014; Ongaro's thesis), as a sans-IO state machine.
//!
//! Modules by concept: log (the in-memory tail over durable storage), progress (per-follower
//! replication state), election (timeouts, pre-vote, votes, leader transfer), replication (appends,
//! commit), read (ReadIndex and lease reads), membership (joint and single-server changes),
//! snapshot (send and install).

mod config;
mod message;

pub use config::{Config, PlantedBug, ReadMode};
pub use message::{Message, MessageBody};

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;

use crate::error::Error;
use crate::protocol::{Consensus, PersistToken, Ready};
use crate::storage::Storage;
use crate::types::{ConfChange, ConfState, Entry, NodeId, Proposed, Role, Status};

/// One Raft member. Drive it through the [`Consensus`] trait.
pub struct Raft<S: Storage> {
    config: Config,
    storage: S,
    #[allow(dead_code)]
    rng: ChaCha8Rng,
}

impl<S: Storage> Raft<S> {
    /// Builds a member from its configuration, its durable state (a fresh [`crate::MemStorage`] for a
    /// new group, or what survived a restart) and a seeded RNG for election jitter.
    pub fn new(config: Config, storage: S, rng: ChaCha8Rng) -> Result<Self, Error> {
        config.validate()?;
        Ok(Raft {
            config,
            storage,
            rng,
        })
    }

    /// Starts an election now (as if the election timeout fired), if this node may vote.
    pub fn campaign(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// The configuration this member runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The membership in force on this node.
    pub fn conf_state(&self) -> &ConfState {
        unimplemented_conf()
    }

    /// Term of the entry at `index`, if this node still has it (in memory or in storage).
    pub fn log_term(&self, _index: u64) -> Option<u64> {
        None
    }

    /// Entries `lo..hi` of this node's log (durable or not), for tests and invariant checks.
    pub fn log_entries(&self, _lo: u64, _hi: u64) -> Result<Vec<Entry>, Error> {
        Ok(Vec::new())
    }

    /// Gives the storage back (to model a crash: restart with [`Raft::new`] on what was durable).
    pub fn into_storage(self) -> S {
        self.storage
    }
}

fn unimplemented_conf() -> &'static ConfState {
    static EMPTY: std::sync::OnceLock<ConfState> = std::sync::OnceLock::new();
    EMPTY.get_or_init(ConfState::default)
}

impl<S: Storage> Consensus for Raft<S> {
    type Message = Message;
    type Storage = S;

    fn id(&self) -> NodeId {
        self.config.id
    }

    fn tick(&mut self) {}

    fn step(&mut self, _message: Message) -> Result<(), Error> {
        Ok(())
    }

    fn propose(&mut self, _data: Bytes) -> Result<Proposed, Error> {
        Err(Error::NoLeader)
    }

    fn propose_conf_change(&mut self, _change: ConfChange) -> Result<Proposed, Error> {
        Err(Error::NoLeader)
    }

    fn read_index(&mut self, _ctx: u64) -> Result<(), Error> {
        Err(Error::NoLeader)
    }

    fn transfer_leader(&mut self, _to: NodeId) -> Result<(), Error> {
        Err(Error::NoLeader)
    }

    fn has_ready(&self) -> bool {
        false
    }

    fn ready(&mut self) -> Ready<Message> {
        Ready {
            messages: Vec::new(),
            persist: None,
            committed: Vec::new(),
            reads: Vec::new(),
            soft_state: None,
        }
    }

    fn persisted(&mut self, token: PersistToken) -> Result<(), Error> {
        Err(Error::PersistOutOfOrder {
            got: token.seq,
            expected: 0,
        })
    }

    fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: Role::Follower,
            term: 0,
            leader: None,
            commit: 0,
            applied: 0,
            last_index: 0,
            persisted_index: 0,
            conf_state: ConfState::default(),
        }
    }

    fn storage(&self) -> &S {
        &self.storage
    }

    fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }
}
