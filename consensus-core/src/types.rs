//! Plain data shared by every protocol: node ids, log entries, durable state, membership, reads.
//!
//! Everything here is `serde`-serializable so the node can send it over the wire (postcard) and write
//! it to its WAL unchanged.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identifies one member of a replication group. `0` is never a valid id (it means "none").
pub type NodeId = u64;

/// One slot of the replicated log.
///
/// `term` is Raft's term, Paxos' ballot, Zab's epoch; `index` is the log position (Paxos slot, Zab
/// counter). The pair `(index, term)` names an entry uniquely (log matching).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term (ballot, epoch) of the leader that created the entry.
    pub term: u64,
    /// Position in the log, starting at 1.
    pub index: u64,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes of application payload (what counts against size limits).
    pub fn payload_size(&self) -> u64 {
        match &self.payload {
            EntryPayload::Data(data) => data.len() as u64,
            EntryPayload::Noop => 0,
            EntryPayload::ConfChange(_) => 64,
        }
    }
}

/// The content of a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// An empty entry a new leader appends to commit entries of earlier terms (Raft §5.4.2).
    Noop,
    /// An application command, opaque to the protocol.
    Data(Bytes),
    /// A membership change; it takes effect on a node when that node learns it is committed.
    ConfChange(ConfChange),
}

/// A membership configuration.
///
/// `outgoing` is non-empty only during joint consensus (C_old,new): a decision then needs a majority
/// of `voters` **and** a majority of `outgoing`. Learners receive the log but never vote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfState {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while joint; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
}

impl ConfState {
    /// A configuration of the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        ConfState {
            voters: voters.into_iter().collect(),
            ..ConfState::default()
        }
    }

    /// Whether the configuration is joint (C_old,new).
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// Whether `id` is a member at all (voter or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member, voters and learners, in ascending id order, without duplicates.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.outgoing.iter().copied());
        all.extend(self.learners.iter().copied());
        all
    }

    /// The configuration after the committed `change` takes effect, or why it does not apply
    /// here (every member skips the same invalid entry). For an observer of a group's applied
    /// log (a host tracking membership entry by entry): the protocols that take only
    /// single-server changes give the same result for every change they commit.
    pub fn after(&self, change: &ConfChange) -> Result<ConfState, crate::Error> {
        crate::raft::membership::apply_change(self, change)
    }
}

/// A single membership edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Make `0` a voter (promoting it if it is a learner).
    AddVoter(NodeId),
    /// Make `0` a learner (demoting it if it is a voter).
    AddLearner(NodeId),
    /// Remove `0` from the group.
    Remove(NodeId),
}

impl MemberChange {
    /// The node the edit is about.
    pub fn node(&self) -> NodeId {
        match *self {
            MemberChange::AddVoter(id)
            | MemberChange::AddLearner(id)
            | MemberChange::Remove(id) => id,
        }
    }
}

/// A membership change request, as proposed and as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChange {
    /// Single-server change (Raft thesis §4.1): at most one voter added or removed. Safe because any
    /// majority of the old and of the new configuration overlap.
    Single(MemberChange),
    /// Enter joint consensus with these edits (thesis §4.3). The leader proposes [`ConfChange::LeaveJoint`]
    /// by itself once the joint configuration is committed.
    EnterJoint(Vec<MemberChange>),
    /// Leave joint consensus: `outgoing` is dropped.
    LeaveJoint,
}

/// Metadata of a snapshot: the last entry it covers and the configuration as of that entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Index of the last entry covered.
    pub index: u64,
    /// Term of the last entry covered.
    pub term: u64,
    /// Membership as of `index`.
    pub conf_state: ConfState,
}

/// A state-machine snapshot with its metadata. `data` is opaque to the protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The application's serialized state.
    pub data: Bytes,
}

/// A linearizable read that may now be served: once the state machine has applied through `index`,
/// reading it returns a value at least as new as any write committed before the read was requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    /// The caller's context given to `read_index`.
    pub ctx: u64,
    /// Apply through this index, then serve the read.
    pub index: u64,
}

/// Where a proposal landed in the log. If the entry committed at `index` carries another payload,
/// the proposal was lost (leadership changed) and may be retried. (Compare payloads, not terms: a
/// Paxos leader re-proposes an accepted value under its own, higher ballot.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    /// Log index of the new entry.
    pub index: u64,
    /// Term of the new entry.
    pub term: u64,
}

/// The role a node plays at the moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks whether it could win an election, without disturbing terms (pre-vote, thesis §9.6).
    PreCandidate,
    /// Runs an election.
    Candidate,
    /// Leads the group.
    Leader,
}

/// Volatile state that the driver may want to react to (a leader change, a role change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// Current leader, if known.
    pub leader: Option<NodeId>,
    /// This node's role.
    pub role: Role,
}

/// A snapshot of a node's state, for status pages, tests and the simulator's invariant checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current term (Raft), ballot round (Multi-Paxos) or epoch (Zab): grows with every new
    /// leadership.
    pub term: u64,
    /// Current leader, if known.
    pub leader: Option<NodeId>,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index handed to the driver in `Ready::committed` (or restored from a snapshot).
    pub applied: u64,
    /// Index of the last entry in the log (durable or not).
    pub last_index: u64,
    /// Highest index known durable on this node.
    pub persisted_index: u64,
    /// The membership in force (as of `applied`).
    pub conf_state: ConfState,
    /// The protocol's name ("raft", "multi-paxos").
    pub protocol: &'static str,
    /// Protocol detail as (name, value) pairs for people: Raft's vote, a Paxos ballot, Zab's epochs.
    pub detail: Vec<(&'static str, String)>,
}
