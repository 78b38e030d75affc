//! The interface every protocol of this crate implements: events in, a [`Ready`] of actions out.
//!
//! # The persistence contract
//!
//! [`Consensus::ready`] drains everything the protocol wants done since the last call:
//!
//! 1. [`Ready::messages`] may be sent **at once**, even while the write below is still running.
//!    They never depend on this node's pending writes: a leader's appends to followers go out while
//!    its own disk write proceeds (Raft thesis §10.2.1); the leader counts itself towards a quorum
//!    only for entries already confirmed durable.
//! 2. [`Ready::persist`] must be made durable (in the order the `Persist`s were issued), then
//!    confirmed with [`Consensus::persisted`], handing back its [`PersistToken`]. Messages that
//!    promise durability — vote grants, acknowledgements of entries, a candidate's vote requests —
//!    are held inside the protocol and only come out of a later `ready()` once their write is
//!    confirmed. The token cannot be built, cloned or reused outside this crate, and a token
//!    confirmed out of order is refused with [`crate::Error::PersistOutOfOrder`].
//! 3. [`Ready::committed`] are entries known committed, in log order; apply them to the state machine.
//!    [`Ready::reads`] are linearizable reads that may be served once the state machine has applied
//!    through their index.
//!
//! Why a drained `Ready` plus an explicit token rather than etcd-raft's `Ready`/`advance`: `advance`
//! couples "I wrote it" with "give me the next batch", which forbids pipelining a second write behind
//! the first, and hides *which* write a held message waits for. With tokens the driver may have
//! several writes in flight (the WAL group-commits them) and keep polling `ready()` for messages to
//! send meanwhile; the held messages are attached to the exact token they depend on.
//!
//! # Why Multi-Paxos and Zab fit the same trait (checked on paper)
//!
//! - **Multi-Paxos**: `tick` drives the distinguished proposer's lease and phase-1 retries;
//!   `step` takes Prepare/Promise/Accept/Accepted/Commit messages; `propose` assigns the next slot
//!   (`Entry::index`) under the current ballot (`Entry::term`). An acceptor's promised ballot and
//!   accepted values are exactly a [`crate::HardState`] (ballot in `term`) plus entries: it must persist
//!   them before replying Promise/Accepted, which is what held messages express. Chosen slots come out
//!   in `committed` in slot order once the prefix is gap-free; `read_index` is answered by a round of
//!   heartbeats confirming the ballot, as in Raft. Reconfiguration is Paxos' α-window or a vertical
//!   Paxos config entry, both expressible as a [`crate::ConfChange`] entry.
//! - **Zab**: epochs are terms and zxid counters are indexes; PROPOSAL/ACK/COMMIT map to append,
//!   held acknowledgement (after the follower's fsync) and commit advance; the discovery and
//!   synchronisation phases exchange NEWEPOCH/ACKEPOCH/NEWLEADER, whose durable `acceptedEpoch` and
//!   `currentEpoch` fit `HardState::{term, vote}` semantics (persist before answering). A snapshot
//!   (SNAP sync) and truncation (TRUNC sync) are `Persist::snapshot` and the replace-suffix rule of
//!   `Persist::entries`. Zab's dynamic reconfiguration is again a config entry.
//!
//! Protocol-specific messages are the associated type [`Consensus::Message`]; everything the driver
//! handles (entries, hard state, snapshots, reads, errors) is shared.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::Error;
use crate::storage::Storage;
use crate::types::{
    ConfChange, Entry, HardState, NodeId, Proposed, ReadState, Snapshot, SoftState, Status,
};

/// A message's routing information, needed by any transport.
pub trait Envelope {
    /// Sender.
    fn from(&self) -> NodeId;
    /// Addressee.
    fn to(&self) -> NodeId;
}

/// Proof of a write to be made durable; give it back to [`Consensus::persisted`] once it is.
///
/// Deliberately neither `Clone` nor `Copy` nor constructible outside this crate.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a write must be confirmed with `persisted(token)` or held messages are never released"]
pub struct PersistToken {
    pub(crate) seq: u64,
}

impl PersistToken {
    /// The token's sequence number (tokens are issued 1, 2, 3, … and confirmed in that order).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// State the driver must make durable, all of it atomically or in the order listed:
/// `snapshot`, then `entries`, then `hard_state`.
#[derive(Debug)]
#[must_use = "unwritten state must not be confirmed; write it, then call `persisted(token)`"]
pub struct Persist {
    /// Confirms this write when handed back.
    pub token: PersistToken,
    /// A snapshot received from the leader: store it, drop stored entries it covers that disagree
    /// with it, and restore the state machine from `data` before applying later committed entries.
    pub snapshot: Option<Snapshot>,
    /// Entries to store. Any stored entry at index ≥ `entries[0].index` is discarded first
    /// (a log conflict truncates the suffix); see [`Persist::truncates_from`].
    pub entries: Vec<Entry>,
    /// New term / vote / commit, when they changed.
    pub hard_state: Option<HardState>,
}

impl Persist {
    /// The index from which stored entries must be discarded before appending `entries`.
    pub fn truncates_from(&self) -> Option<u64> {
        self.entries.first().map(|e| e.index)
    }

    /// Whether there is nothing to write (only the token to confirm).
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }
}

/// Everything the protocol wants done since the last `ready()`. See the module docs for the order.
#[derive(Debug)]
#[must_use = "a Ready carries messages to send, state to persist and entries to apply"]
pub struct Ready<M> {
    /// Messages to send now; none of them depends on `persist` or on any unconfirmed write.
    pub messages: Vec<M>,
    /// State to make durable, then confirm with `persisted(token)`.
    pub persist: Option<Persist>,
    /// Entries now committed, in order, to apply to the state machine.
    pub committed: Vec<Entry>,
    /// Reads now ordered: serve each once applied through its index.
    pub reads: Vec<ReadState>,
    /// Set when the leader or this node's role changed.
    pub soft_state: Option<SoftState>,
}

impl<M> Ready<M> {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_none()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.soft_state.is_none()
    }
}

/// A sans-IO consensus protocol instance (one member of one group).
pub trait Consensus {
    /// The protocol's wire messages.
    type Message: Envelope + Clone + std::fmt::Debug + Serialize + DeserializeOwned;
    /// The storage it reads.
    type Storage: Storage;

    /// This member's id.
    fn id(&self) -> NodeId;
    /// One unit of logical time has passed (elections and heartbeats count ticks).
    fn tick(&mut self);
    /// A message from a peer arrived.
    fn step(&mut self, message: Self::Message) -> Result<(), Error>;
    /// Appends `data` to the log, if this node leads.
    fn propose(&mut self, data: Bytes) -> Result<Proposed, Error>;
    /// Proposes a membership change, if this node leads and no other change is pending.
    fn propose_conf_change(&mut self, change: ConfChange) -> Result<Proposed, Error>;
    /// Requests a linearizable read tagged `ctx`; it comes back in [`Ready::reads`].
    fn read_index(&mut self, ctx: u64) -> Result<(), Error>;
    /// Asks the leader to hand leadership to `to`.
    fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error>;
    /// Whether `ready()` would return something.
    fn has_ready(&self) -> bool;
    /// Drains the actions accumulated so far.
    fn ready(&mut self) -> Ready<Self::Message>;
    /// Confirms that the write of a [`Persist`] is durable.
    fn persisted(&mut self, token: PersistToken) -> Result<(), Error>;
    /// Current state, for status output and invariant checks.
    fn status(&self) -> Status;
    /// The storage this instance reads.
    fn storage(&self) -> &Self::Storage;
    /// The storage, to write a `Persist` into it or compact it.
    fn storage_mut(&mut self) -> &mut Self::Storage;
}
