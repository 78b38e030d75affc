//! The seam every replication protocol implements: events in, a [`Ready`] of actions out.
//!
//! # The persistence contract
//!
//! [`Consensus::ready`] drains everything the protocol wants done since the last call:
//!
//! 1. [`Ready::messages`] may be sent **at once**, even while the write below is still running.
//!    They never depend on this node's pending writes: a leader's appends to followers go out while
//!    its own disk write proceeds (Raft thesis §10.2.1); the leader counts itself towards a quorum
//!    only for entries already confirmed durable.
//! 2. [`Ready::persist`] must be written in the order the `Persist`s were issued and, when
//!    [`Write::sync`] is set, made durable before it is confirmed with [`Consensus::persisted`]
//!    (handing back its [`PersistToken`]). A write with `sync == false` (a commit index that moved,
//!    nothing else) may be confirmed as soon as it is written and every earlier token is confirmed:
//!    losing it in a crash is harmless, and a later synced write covers it (storage is a durable
//!    *prefix*). Messages that promise durability are held inside the protocol and come out of a
//!    later `ready()` once their write is confirmed. Tokens are confirmed strictly in order; one
//!    confirmed out of order is refused with [`crate::Error::PersistOutOfOrder`].
//!    The driver applies a write to the engine's storage (its read view, [`Consensus::storage`])
//!    before it calls the engine again, durable or not yet ([`crate::Replica`] does so in
//!    `Host::submit`): an engine may read a slot it handed out back from storage rather than keep
//!    a copy until the write is confirmed (Multi-Paxos does). A crash loses the view, not the
//!    contract: the engine restarts on what was durable.
//! 3. [`Ready::committed`] are entries known committed (chosen), in log order with no gap; apply them
//!    to the state machine. A protocol may instead leave them where they are and name them as a
//!    range, [`Ready::committed_in_storage`]: every entry in it is in the engine's storage once
//!    this `Ready`'s write is submitted (the range may cover slots that write stores), and the
//!    driver applies them from there, after `committed`, before calling the engine again (the
//!    replica loop hands the host the storage: [`crate::Host::apply_stored`]), so no copy of
//!    each entry is made for the hand-over. [`Ready::reads`] are linearizable reads that may be
//!    served once the state machine has applied through their index.
//!
//! A protocol whose storage fails returns the error from `ready()`; the driver stops the member
//! (it must not retry in a loop: the same read would fail again).
//!
//! ## Which messages wait for durability, and why
//!
//! Only messages whose *content* is a promise about this node's durable state wait: an
//! acknowledgement of log entries (Raft `AppendResponse`, Paxos `Accepted`), a vote or promise
//! (Raft `VoteResponse`, Paxos `Promise`) — a crash that forgot them could let two leaders be
//! elected in one term, or a chosen value be forgotten. As in etcd's asynchronous storage mode,
//! requests (a candidate's vote request, a leader's appends) and answers that promise nothing
//! durable (heartbeat responses, pre-vote answers) leave at once. A candidate's own vote, or a
//! proposer's own promise, counts only once the write that records it is confirmed: that keeps
//! the safety the held messages give without putting an fsync in front of every election or
//! every ReadIndex round.
//!
//! Why a drained `Ready` plus an explicit token rather than etcd-raft's `Ready`/`advance`: `advance`
//! couples "I wrote it" with "give me the next batch", which forbids pipelining a second write behind
//! the first, and hides *which* write a held message waits for. With tokens the driver may have
//! several writes in flight (the WAL group-commits them) and keep polling `ready()` for messages to
//! send meanwhile; the held messages are attached to the exact token they depend on.
//!
//! # What differs per protocol, and what is shared
//!
//! Shared: entries ([`Entry`], with `term` = Raft term / Paxos ballot round / Zab epoch and
//! `index` = log position / slot / zxid counter), snapshots, membership ([`crate::ConfState`]),
//! reads, errors, the status core and this write shape. Per protocol: the wire messages
//! ([`Consensus::Message`]) and the durable state ([`Consensus::HardState`] — Raft's term and vote,
//! a Paxos acceptor's promised ballot, Zab's accepted and current epochs). Optional capabilities
//! (membership change, leader transfer, read index) default to [`crate::Error::Unsupported`].
//!
//! # Fit check (Zab, now built on it, and primary-backup, on paper)
//!
//! - **Zab** (built: [`crate::zab`]): `HardState` = `{ accepted_epoch, current_epoch, commit }` (the
//!   epochs persisted before ACKEPOCH /
//!   ACK-NEWLEADER — held messages). A follower's history is contiguous; TRUNC sync is a write with
//!   `truncate_from`, DIFF sync appends entries (term = epoch, index = counter position), SNAP sync
//!   is `Write::snapshot`. PROPOSAL → held ACK after the write → COMMIT advances `committed`.
//!   FastLeaderElection votes ordered by (last zxid, id) are protocol messages. Status: role, leader,
//!   epoch as `term`, detail = accepted/current epoch.
//! - **Primary-backup (PacificA)** (built: crate `replication-primary`): `HardState` =
//!   `{ config, synced_epoch }` — the whole configuration (version, epoch, primary, in-sync set),
//!   since a restarted replica must know whom to fence, plus the epoch its log was last synced to
//!   (what a quorum-mode candidate compares); the primary assigns serial numbers = `index`,
//!   epoch = `term`. PREPARE → held ACK after the write; the commit point travels on later
//!   messages → `committed`. A new primary's reconciliation truncates backups' suffixes it never
//!   prepared → `truncate_from`. The configuration manager's decisions arrive as inputs and
//!   requests go out as messages of the same `Message` type, addressed to a reserved id (0).
//!   Its tokens come from [`crate::WriteQueue`].

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::entries::Entries;
use crate::error::{Error, StorageError};
use crate::storage::Storage;
use crate::types::{
    ConfChange, Entry, MemberChange, NodeId, Proposed, ReadState, Snapshot, SoftState, Status,
};

/// A message's routing information, needed by any transport.
pub trait Envelope {
    /// Sender.
    fn from(&self) -> NodeId;
    /// Addressee.
    fn to(&self) -> NodeId;
    /// Whether this is a large transfer (a snapshot) that should travel apart from small
    /// consensus messages so they do not queue behind it.
    fn is_bulk(&self) -> bool {
        false
    }
}

/// Proof of a write to be made durable; give it back to [`Consensus::persisted`] once it is.
///
/// Neither `Clone` nor `Copy`; issued only by a [`TokenSequence`], which checks that tokens come
/// back in the order issued.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a write must be confirmed with `persisted(token)` or held messages are never released"]
pub struct PersistToken {
    seq: u64,
}

impl PersistToken {
    /// The token's sequence number (tokens are issued 1, 2, 3, … and confirmed in that order).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Issues [`PersistToken`]s 1, 2, 3, … and accepts them back strictly in that order. Every
/// protocol, in this crate or another, keeps one.
#[derive(Debug, Default)]
pub struct TokenSequence {
    issued: u64,
    confirmed: u64,
}

impl TokenSequence {
    /// A sequence that has issued nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues the next token.
    pub fn issue(&mut self) -> PersistToken {
        self.issued += 1;
        PersistToken { seq: self.issued }
    }

    /// Takes a token back; it must be the oldest one not yet confirmed. Returns its sequence
    /// number.
    pub fn confirm(&mut self, token: PersistToken) -> Result<u64, Error> {
        let expected = self.confirmed + 1;
        if token.seq != expected || token.seq > self.issued {
            return Err(Error::PersistOutOfOrder {
                got: token.seq,
                expected,
            });
        }
        self.confirmed = token.seq;
        Ok(token.seq)
    }

    /// Tokens issued and not yet confirmed.
    pub fn outstanding(&self) -> u64 {
        self.issued - self.confirmed
    }
}

/// What one [`Persist`] asks storage to write, in this order: `snapshot`, `truncate_from`,
/// `entries`, `hard_state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write<H> {
    /// A snapshot received from a leader: store it and drop every stored entry at or below its
    /// index (entries above it are kept unless `truncate_from` cuts them), then restore the state
    /// machine from `data` before applying later committed entries.
    pub snapshot: Option<Snapshot>,
    /// Discard every stored entry at an index ≥ this before storing `entries` (Raft's log
    /// conflict, Zab's TRUNC). `None`: discard nothing — a Paxos acceptor never cuts higher slots.
    pub truncate_from: Option<u64>,
    /// Entries to store, each at its own index, replacing a stored entry at the same index. In
    /// ascending index order; a protocol that keeps gaps (Paxos) may leave holes between them.
    /// Shared, not owned ([`Entries`]): a storage that keeps entries in memory can keep this
    /// very list (one reference per batch) rather than copy each entry.
    pub entries: Entries,
    /// The protocol's new durable state, when it changed.
    pub hard_state: Option<H>,
    /// Whether the write must be durable before its token is confirmed. `false` only when losing
    /// the write in a crash is harmless (a commit index that moved and nothing else).
    pub sync: bool,
}

impl<H> Write<H> {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.truncate_from.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
    }
}

/// A write to perform, and the token that confirms it.
#[derive(Debug)]
#[must_use = "unwritten state must not be confirmed; write it, then call `persisted(token)`"]
pub struct Persist<H> {
    /// Confirms this write when handed back.
    pub token: PersistToken,
    /// What to write.
    pub write: Write<H>,
}

/// Everything the protocol wants done since the last `ready()`. See the module docs for the order.
#[derive(Debug)]
#[must_use = "a Ready carries messages to send, state to persist and entries to apply"]
pub struct Ready<M, H> {
    /// Messages to send now; none of them depends on `persist` or on any unconfirmed write.
    pub messages: Vec<M>,
    /// State to write, then confirm with `persisted(token)`.
    pub persist: Option<Persist<H>>,
    /// Entries now committed, in order, to apply to the state machine.
    pub committed: Vec<Entry>,
    /// Entries now committed that stay in the engine's storage: apply them from there, after
    /// `committed` (see the module docs, point 3).
    pub committed_in_storage: Option<CommittedRange>,
    /// Reads now ordered: serve each once applied through its index.
    pub reads: Vec<ReadState>,
    /// Set when the leader or this node's role changed.
    pub soft_state: Option<SoftState>,
}

impl<M, H> Ready<M, H> {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_none()
            && self.committed.is_empty()
            && self.committed_in_storage.is_none()
            && self.reads.is_empty()
            && self.soft_state.is_none()
    }
}

/// Committed entries `first ..= last` (no gap), to be applied from the engine's storage rather
/// than handed over as copies ([`Ready::committed_in_storage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedRange {
    /// First index to apply.
    pub first: u64,
    /// Last index to apply (`first <= last`).
    pub last: u64,
    /// A driver that copies the entries out reads at most this many payload bytes at a time (the
    /// protocol's per-`Ready` limit on committed bytes), so memory stays bounded.
    pub max_bytes_per_read: u64,
}

impl CommittedRange {
    /// Reads the range from `storage` in chunks of at most `max_bytes_per_read` payload bytes
    /// (at least one entry each) and hands each chunk to `apply`, in order. A hole, an entry
    /// out of place or one that is missing is [`StorageError::Inconsistent`]: the committed
    /// prefix never has a gap.
    pub fn read<S: Storage, E: From<Error>>(
        &self,
        storage: &S,
        mut apply: impl FnMut(Vec<Entry>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut next = self.first;
        while next <= self.last {
            let mut chunk = Vec::new();
            storage
                .entries(next, self.last + 1, self.max_bytes_per_read, &mut chunk)
                .map_err(Error::from)?;
            for entry in &chunk {
                if entry.index != next {
                    return Err(missing(next).into());
                }
                next += 1;
            }
            if chunk.is_empty() {
                return Err(missing(next).into());
            }
            apply(chunk)?;
        }
        Ok(())
    }
}

/// The error for a committed entry the storage does not hold where it should.
pub(crate) fn missing(index: u64) -> Error {
    Error::Storage(StorageError::Inconsistent(format!(
        "committed entry {index} is missing from storage"
    )))
}

/// Durable protocol state: what a protocol persists besides its log (bounds only).
pub trait DurableState:
    Clone + std::fmt::Debug + Default + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<T> DurableState for T where
    T: Clone
        + std::fmt::Debug
        + Default
        + PartialEq
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A sans-IO replication protocol instance (one member of one group).
pub trait Consensus {
    /// The protocol's wire messages.
    type Message: Envelope + Clone + std::fmt::Debug + Serialize + DeserializeOwned + Send;
    /// The protocol's durable state besides the log.
    type HardState: DurableState;
    /// The storage it reads.
    type Storage: Storage<HardState = Self::HardState>;

    /// The protocol's name, for status output and errors ("raft", "multi-paxos").
    const NAME: &'static str;

    /// This member's id.
    fn id(&self) -> NodeId;
    /// One unit of logical time has passed (elections and heartbeats count ticks).
    fn tick(&mut self);
    /// A message from a peer arrived.
    fn step(&mut self, message: Self::Message) -> Result<(), Error>;
    /// Appends `data` to the log, if this node leads.
    fn propose(&mut self, data: Bytes) -> Result<Proposed, Error>;
    /// Proposes a membership change in the protocol's own form.
    fn propose_conf_change(&mut self, change: ConfChange) -> Result<Proposed, Error> {
        let _ = change;
        Err(Error::Unsupported {
            protocol: Self::NAME,
            capability: "membership change",
        })
    }
    /// Adds, demotes or removes one member the way this protocol does it safely (Raft: a
    /// single-server change).
    fn change_membership(&mut self, change: MemberChange) -> Result<Proposed, Error> {
        self.propose_conf_change(ConfChange::Single(change))
    }
    /// Requests a linearizable read tagged `ctx`; it comes back in [`Ready::reads`].
    fn read_index(&mut self, ctx: u64) -> Result<(), Error> {
        let _ = ctx;
        Err(Error::Unsupported {
            protocol: Self::NAME,
            capability: "read index",
        })
    }
    /// Asks the leader to hand leadership to `to`.
    fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error> {
        let _ = to;
        Err(Error::Unsupported {
            protocol: Self::NAME,
            capability: "leader transfer",
        })
    }
    /// Whether `ready()` would return something.
    fn has_ready(&self) -> bool;
    /// Drains the actions accumulated so far. An error (storage failure) means this member must
    /// stop.
    fn ready(&mut self) -> Result<Ready<Self::Message, Self::HardState>, Error>;
    /// Confirms that the write of a [`Persist`] is done (durable, if it asked to be synced).
    fn persisted(&mut self, token: PersistToken) -> Result<(), Error>;
    /// Current state, for status output and invariant checks.
    fn status(&self) -> Status;
    /// The storage this instance reads.
    fn storage(&self) -> &Self::Storage;
    /// The storage, to write a `Persist` into it or compact it.
    fn storage_mut(&mut self) -> &mut Self::Storage;
}
