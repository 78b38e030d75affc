//! The wire protocol: client requests and replies (client ALPN) and messages between nodes (peer
//! ALPN), all postcard-encoded by `net-quic`'s frames.
//!
//! # Client protocol
//! A client sends one [`Request`] per QUIC stream with `net_quic::Client::request` and reads one
//! [`Response`]. Any member answers; a write (and any admin change) sent to a follower is answered
//! with [`ServerError::NotLeader`], carrying the leader's id and the address its clients reach it on,
//! so the client redirects (the server does not forward: a redirect costs one round trip once per
//! leader change, forwarding would cost one on every request).
//!
//! Reads are served by any member: [`Consistency::Linearizable`] (the default) runs a ReadIndex round
//! through the leader and waits until the local state machine has applied through it, so a
//! follower never returns a value older than a write acknowledged before the read started.
//! Whether the leader confirms leadership with a heartbeat round or a lease is the server's
//! `read_mode` setting. [`Consistency::Sequential`] carries the newest store revision the client's
//! session has seen (from its writes' and reads' replies): the member serves it from its own state
//! once it has applied at least that revision — no leader round trip — and answers
//! [`ServerError::Behind`] if it has not caught up within an election timeout, so the client tries
//! another member. That gives read-your-writes and monotonic reads per session, never recency
//! across sessions. [`Consistency::Stale`] reads the local state at once.
//!
//! # Sessions (exactly-once writes)
//! Every write carries a [`Session`]: a client id chosen at random by the client and a sequence
//! number it increments per write. The state machine remembers, per client id, the result of every
//! sequence number at or above the client's `first_unacked`; a retried write (same client id and
//! sequence) is not applied again, it is answered with the original result. A client may have many
//! writes in flight under one id; it advances `first_unacked` past every sequence number it has a
//! reply for, which lets the server forget those results. A retry of a sequence number below what
//! the server remembers is refused with [`ServerError::SessionExpired`] rather than applied twice.
//!
//! # Compatibility
//! [`PROTOCOL_VERSION`] names this layout; `net-quic` frames carry their own version byte too.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub mod peer;
pub mod quiesce;
pub mod shard;
pub mod txn;
pub mod xtxn;
pub use peer::{PeerNodeStatus, PeerReply, PeerRequest, PeerSibling};
pub use shard::{KeyRange, ShardInfo, ShardMap, SplitError, SplitPlan, META_GROUP};
pub use txn::{Compare, CompareOp, CompareTarget, TxnOp, TxnOpResult, MAX_TXN_OPS};
pub use xtxn::{ShardOutcome, ShardTxnId, ShardTxnOp, ShardTxnResult};

/// Version of the message layout in this module.
pub const PROTOCOL_VERSION: u32 = 2;

/// The `net-quic` protocol of a Quorate node.
#[derive(Debug, Clone, Copy)]
pub struct Quorate;

impl net_quic::Protocol for Quorate {
    type Peer = PeerMessage;
    type Request = Request;
    type Response = Response;
}

/// A message between nodes: one protocol message of one replication group.
///
/// The payload is the postcard encoding of the group's protocol message (`Consensus::Message`:
/// a Raft or a Multi-Paxos message), so this envelope stays the same whatever the protocol; the
/// receiving group decodes it with its own type and drops what does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMessage {
    /// The replication group (0 while a node runs one group); routed by on receipt.
    pub group: u64,
    /// The group's range epoch ([`ShardInfo::epoch`]; 0 unsharded): a message of another epoch
    /// is dropped by the receiving node's router.
    pub epoch: u64,
    /// What the payload is: a consensus group's message or a peer-replication message.
    pub class: MessageClass,
    /// Whether the payload is a large transfer (a snapshot), sent on the bulk stream.
    pub bulk: bool,
    /// The protocol message, postcard-encoded.
    pub payload: Bytes,
}

/// The class of a [`PeerMessage`]: which engine decodes its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageClass {
    /// A consensus group's `Consensus::Message`.
    Consensus,
    /// One or more `replication_peer::Message`s back to back (`replication = "peer"`).
    Peer,
    /// A client request one peer node forwards to a replica of its key, or the answer.
    Forward,
    /// A group's quiescence handshake ([`quiesce::Quiesce`]), between the node's loops.
    Control,
}

impl PeerMessage {
    /// Wraps peer-replication messages of `group` (`replication = "peer"`): `payload` is one or
    /// more postcard-encoded `replication_peer::Message`s back to back (`node::peer::batch`).
    pub fn peer_batch(group: u64, payload: Vec<u8>) -> Self {
        PeerMessage {
            group,
            epoch: 0,
            class: MessageClass::Peer,
            bulk: false,
            payload: Bytes::from(payload),
        }
    }

    /// Wraps the postcard bytes of a forwarded peer request or its answer.
    pub fn forward(group: u64, payload: Vec<u8>) -> Self {
        PeerMessage {
            group,
            epoch: 0,
            class: MessageClass::Forward,
            bulk: false,
            payload: Bytes::from(payload),
        }
    }

    /// Wraps a quiescence message of `group` at range epoch `epoch`.
    pub fn control(
        group: u64,
        epoch: u64,
        message: &quiesce::Quiesce,
    ) -> Result<Self, postcard::Error> {
        Ok(PeerMessage {
            group,
            epoch,
            class: MessageClass::Control,
            bulk: false,
            payload: Bytes::from(postcard::to_allocvec(message)?),
        })
    }

    /// Wraps a protocol message of `group`.
    pub fn encode<M: Serialize + consensus_core::Envelope>(
        group: u64,
        message: &M,
    ) -> Result<Self, postcard::Error> {
        Ok(PeerMessage {
            group,
            epoch: 0,
            class: MessageClass::Consensus,
            bulk: message.is_bulk(),
            payload: Bytes::from(postcard::to_allocvec(message)?),
        })
    }

    /// The protocol message inside (untrusted bytes: an error, never a panic).
    pub fn decode<M: serde::de::DeserializeOwned>(&self) -> Result<M, postcard::Error> {
        postcard::from_bytes(&self.payload)
    }
}

/// Identifies one write of one client (Raft thesis §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    /// Random per client process; 0 is reserved.
    pub client_id: u64,
    /// Increases by one per write, starting at 1.
    pub seq: u64,
    /// The lowest sequence number this client has no reply for yet; results below it may be
    /// forgotten by the server.
    pub first_unacked: u64,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read was sent (ReadIndex; lease if the server
    /// is configured with `read_mode = "lease"`).
    #[default]
    Linearizable,
    /// The serving member's local state, possibly behind.
    Stale,
    /// Session-consistent (ZooKeeper's guarantee): the serving member's local state once it has
    /// applied at least store revision `min_revision` — the newest the client's session has seen,
    /// which [`crate::client::Client`] fills in (a larger value given here is kept). Any member
    /// serves it; it may miss other sessions' recent writes.
    Sequential {
        /// The lowest store revision the state read may have.
        min_revision: u64,
    },
}

impl Consistency {
    /// A session-consistent read bounded only by what the client's session has seen.
    pub const SEQUENTIAL: Consistency = Consistency::Sequential { min_revision: 0 };
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A write, applied once per session sequence number.
    Write {
        /// Who writes, which write.
        session: Session,
        /// What to write.
        op: WriteOp,
    },
    /// A read.
    Read {
        /// How fresh.
        consistency: Consistency,
        /// What to read.
        op: ReadOp,
    },
    /// Cluster administration.
    Admin(AdminRequest),
    /// A request to a peer-replicated cluster (`replication = "peer"`).
    Peer(PeerRequest),
    /// `request` for replication group `group` at range epoch `epoch` (a sharded cluster; see
    /// [`shard`]). A plain request goes to group 0. Answered `WrongShard` if the node has no such
    /// group, the epoch is not the group's, or a key is outside the group's range.
    Routed {
        /// The group.
        group: u64,
        /// The group's range epoch as the client's map has it.
        epoch: u64,
        /// The request (not itself `Routed`).
        request: Box<Request>,
    },
}

/// The writes the key-value store supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Sets `key` to `value`.
    Put {
        /// Key (non-empty).
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// Removes `key` (no error if absent).
    Delete {
        /// Key.
        key: Bytes,
    },
    /// Sets `key` to `new` only if its current value is `expected` (`None`: the key is absent).
    Cas {
        /// Key.
        key: Bytes,
        /// Value required now, or `None` for "must not exist".
        expected: Option<Bytes>,
        /// Value to set.
        new: Bytes,
    },
    /// A transaction ([`txn`]): if every compare holds, the success ops, else the failure ops.
    Txn {
        /// Conditions, all of which must hold.
        compares: Vec<Compare>,
        /// Ops when they all hold.
        success: Vec<TxnOp>,
        /// Ops otherwise.
        failure: Vec<TxnOp>,
    },
    /// One step of a cross-shard transaction, sent by its coordinating node ([`xtxn`]).
    Shard(ShardTxnOp),
    /// Meta group: plan splitting the range holding `key` at `key` and record it in the map
    /// (answered with the plan; asked again, with the same plan).
    SplitMap {
        /// Where the range divides.
        key: Bytes,
    },
    /// Source group: divide the range and its state as the meta group planned; every member
    /// starts the new group from the upper half.
    SplitRange(SplitPlan),
}

impl WriteOp {
    /// Every key the op names (compared, read or written), in order.
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } | WriteOp::Cas { key, .. } => {
                vec![key]
            }
            WriteOp::Txn {
                compares,
                success,
                failure,
            } => compares
                .iter()
                .map(|c| &c.key)
                .chain(success.iter().chain(failure).map(TxnOp::key))
                .collect(),
            WriteOp::Shard(op) => op.keys(),
            WriteOp::SplitMap { .. } | WriteOp::SplitRange(_) => vec![],
        }
    }

    /// Every value the op carries (to set or to compare with).
    pub fn values(&self) -> Vec<&Bytes> {
        match self {
            WriteOp::Put { value, .. } => vec![value],
            WriteOp::Delete { .. } => vec![],
            WriteOp::Cas { expected, new, .. } => std::iter::once(new).chain(expected).collect(),
            WriteOp::Txn {
                compares,
                success,
                failure,
            } => compares
                .iter()
                .filter_map(|c| match &c.target {
                    CompareTarget::Value(v) => Some(v),
                    _ => None,
                })
                .chain(success.iter().chain(failure).filter_map(|op| match op {
                    TxnOp::Put { value, .. } => Some(value),
                    _ => None,
                }))
                .collect(),
            WriteOp::Shard(op) => op.values(),
            WriteOp::SplitMap { .. } | WriteOp::SplitRange(_) => vec![],
        }
    }
}

/// The reads the key-value store supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    /// One key.
    Get {
        /// Key.
        key: Bytes,
    },
    /// Keys in `start ..end` (`end: None`: to the last key), in key order, at most `limit`
    /// (0: the server's maximum).
    Scan {
        /// First key (inclusive).
        start: Bytes,
        /// End key (exclusive), or none.
        end: Option<Bytes>,
        /// Maximum number of pairs returned.
        limit: u32,
    },
    /// The cross-shard transactions prepared on the group and not yet decided (what the
    /// node's in-doubt resolver watches).
    Prepared,
}

/// Cluster administration requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// This member's view: role, term, leader, indexes (answered by any member, locally).
    Status,
    /// The membership and every member's address (answered by any member, locally).
    Members,
    /// Adds a member (leader only). Start the new node with `join = true` first or after.
    AddMember {
        /// The new member's id (its certificate must name it).
        id: u64,
        /// Where it listens (peers and clients).
        addr: SocketAddr,
        /// Add as a non-voting learner.
        learner: bool,
    },
    /// Removes a member (leader only).
    RemoveMember {
        /// The member to remove.
        id: u64,
    },
    /// Hands leadership to `to` (leader only); answered once `to` leads or on timeout.
    TransferLeader {
        /// The member to lead next.
        to: u64,
    },
    /// The shard map with each group's leader and keys as this member knows them (answered by
    /// any member, locally; [`ShardMap::single`] on an unsharded node).
    Shards,
}

/// A stored pair with its revisions (etcd's meaning: `create_revision` is the revision of the write
/// that created the key, `mod_revision` of the last write to it, `version` counts writes since
/// creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// Key.
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
    /// Revision that created the key.
    pub create_revision: u64,
    /// Revision of the latest write to the key.
    pub mod_revision: u64,
    /// Writes to the key since it was created (1 after creation).
    pub version: u64,
}

/// The result of a write, as the state machine computed it (and as a retry gets it again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    /// The key was set.
    Put {
        /// Store revision of this write.
        revision: u64,
    },
    /// The key was removed, or did not exist.
    Delete {
        /// Store revision after the request (unchanged if nothing was deleted).
        revision: u64,
        /// Whether the key existed.
        deleted: bool,
    },
    /// A compare-and-set.
    Cas {
        /// Whether the comparison held and the value was set.
        succeeded: bool,
        /// Store revision after the request.
        revision: u64,
        /// When it failed: the current pair (`None` if absent).
        current: Option<KeyValue>,
    },
    /// A transaction.
    Txn {
        /// Whether every compare held (the success branch ran).
        succeeded: bool,
        /// Store revision after the transaction (one more than before if it changed anything).
        revision: u64,
        /// What each op of the branch that ran did, in order.
        results: Vec<TxnOpResult>,
    },
    /// A step of a cross-shard transaction ([`xtxn`]).
    Shard(ShardTxnResult),
    /// A range split, planned (meta group) or applied (source group).
    Split(SplitPlan),
    /// A transaction across shards, as its coordinating member answers it (never kept in a
    /// session; appended last so older encodings of this type still decode).
    CrossShardTxn {
        /// Whether every compare held (the success branch ran).
        succeeded: bool,
        /// The coordinator shard's revision after the transaction (its lock revision on the
        /// parallel-commit path, where the answer precedes its writes).
        revision: u64,
        /// What each op of the branch that ran did, in order.
        results: Vec<TxnOpResult>,
        /// For every participant group, a revision of it at or past which every replica shows
        /// the transaction: holds its locks (a read of what it writes waits for the decision)
        /// or has applied it. The client raises its session's revision of each group to these,
        /// so its sequential reads on any replica see its own transaction.
        shard_revisions: Vec<(u64, u64)>,
    },
}

/// A member's role, as reported by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader.
    Follower,
    /// Checks whether it could win an election.
    PreCandidate,
    /// Runs an election.
    Candidate,
    /// Leads.
    Leader,
    /// Receives the log without voting.
    Learner,
}

/// One member's view of itself and the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This member.
    pub id: u64,
    /// Cluster name.
    pub cluster: String,
    /// Role.
    pub role: Role,
    /// The replication protocol ("raft", "multi-paxos", "zab").
    pub protocol: String,
    /// Current term (Raft), ballot round (Multi-Paxos).
    pub term: u64,
    /// Protocol detail as (name, value) pairs: Raft's vote, a Paxos ballot.
    pub detail: Vec<(String, String)>,
    /// Known leader.
    pub leader: Option<u64>,
    /// Highest committed log index known here.
    pub commit_index: u64,
    /// Highest index applied to the state machine here.
    pub applied_index: u64,
    /// Last log index here (durable or not).
    pub last_index: u64,
    /// Highest log index durable here.
    pub persisted_index: u64,
    /// Index of the latest snapshot here.
    pub snapshot_index: u64,
    /// Store revision (number of writes applied).
    pub revision: u64,
    /// Number of keys.
    pub keys: u64,
    /// Membership as seen here.
    pub members: Vec<Member>,
}

impl NodeStatus {
    /// The protocol detail named `name` (Raft's `vote`, Zab's `state`, primary-backup's
    /// `serving`, …), if the member reported it.
    pub fn detail(&self, name: &str) -> Option<&str> {
        self.detail
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A group member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Address for peers and clients, if known.
    pub addr: Option<SocketAddr>,
    /// Votes (false: learner).
    pub voter: bool,
    /// Whether it is the leader as far as the answering member knows.
    pub leader: bool,
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A write's result.
    Write(WriteResult),
    /// A get: the pair if present, at store revision `revision`.
    Get {
        /// Store revision the read saw.
        revision: u64,
        /// The pair, if the key exists.
        kv: Option<KeyValue>,
    },
    /// A scan.
    Scan {
        /// Store revision the read saw.
        revision: u64,
        /// Pairs in key order.
        kvs: Vec<KeyValue>,
        /// Whether the limit cut the range short (continue after the last key).
        more: bool,
    },
    /// Status of the answering member.
    Status(NodeStatus),
    /// The membership as the answering member sees it.
    Members {
        /// Members, by id.
        members: Vec<Member>,
        /// Known leader.
        leader: Option<u64>,
    },
    /// An admin change is done (committed and applied on the leader, or leadership moved).
    Done,
    /// The answer to a [`PeerRequest`].
    Peer(PeerReply),
    /// The cross-shard transactions prepared on the group ([`ReadOp::Prepared`]).
    Prepared {
        /// By transaction id.
        txns: Vec<(ShardTxnId, crate::kv::PreparedTxn)>,
    },
    /// The shard map ([`AdminRequest::Shards`]).
    Shards(ShardMap),
}

/// A reply to a [`Request`].
pub type Response = Result<Reply, ServerError>;

/// Why a request failed. Every variant says what to do next in its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServerError {
    /// This member does not lead; send the request to `leader` at `leader_addr`.
    #[error(
        "node is not the leader (leader: {leader:?} at {leader_addr:?}); send the request there"
    )]
    NotLeader {
        /// The leader, if known.
        leader: Option<u64>,
        /// Where the leader accepts clients, if known.
        leader_addr: Option<SocketAddr>,
    },
    /// No leader is known (an election is running); retry shortly.
    #[error("no leader is known right now; retry in a moment")]
    NoLeader,
    /// The key is empty.
    #[error("the key is empty; keys must have at least one byte")]
    EmptyKey,
    /// The key exceeds the limit.
    #[error("key of {size} bytes exceeds the limit of {limit} bytes")]
    KeyTooLarge {
        /// Key size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The value exceeds the limit.
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Value size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The request exceeds the limit.
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    RequestTooLarge {
        /// Request size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The server could not finish in time; a write may or may not have been applied: retry it with
    /// the same session sequence number and it is applied at most once.
    #[error("timed out; retry (writes with the same session sequence number apply at most once)")]
    Timeout,
    /// The server is overloaded (too much uncommitted data or too many pending requests); back off.
    #[error("server busy: {0}; back off and retry")]
    Busy(String),
    /// A write was proposed but leadership changed before it committed; retry it (same sequence).
    #[error(
        "leadership changed before the write committed; retry it with the same sequence number"
    )]
    LeaderChanged,
    /// The session's result for this sequence number was already forgotten (the client had
    /// acknowledged it); the write is not applied again.
    #[error("session {client_id} sequence {seq} is older than the server remembers; it was applied before and its reply acknowledged")]
    SessionExpired {
        /// Client id.
        client_id: u64,
        /// Sequence number.
        seq: u64,
    },
    /// The session is invalid (client id 0 or sequence 0).
    #[error("invalid session: {0}")]
    InvalidSession(String),
    /// The node id is not a member.
    #[error("node {0} is not a member of the cluster; see `quorate cluster members`")]
    UnknownNode(u64),
    /// The membership change is not allowed.
    #[error("membership change refused: {0}")]
    InvalidMembership(String),
    /// The member is shutting down.
    #[error("the node is shutting down; use another member")]
    ShuttingDown,
    /// A sequential read asked for a revision this member has not applied, and it did not catch
    /// up in time (it lags, is cut off, or just restarted); another member may serve it.
    #[error("this member has applied revision {applied} of the {wanted} the session has seen and did not catch up in time; read from another member")]
    Behind {
        /// The store revision applied here.
        applied: u64,
        /// The revision the read asked for.
        wanted: u64,
    },
    /// Anything else (a bug or a storage failure); the message has details.
    #[error("internal error: {0}")]
    Internal(String),
    /// The cluster's protocol lacks the capability asked for (Zab has no leader transfer).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The cluster runs `replication = "peer"`: send a [`Request::Peer`] instead.
    #[error("this cluster runs peer-to-peer replication (replication = \"peer\"); {0}")]
    PeerReplication(String),
    /// This node does not replicate the key; send the request to one of its replicas.
    #[error("this node does not replicate the key; send the request to one of its replicas {replicas:?}")]
    NotAReplica {
        /// The key's replicas and their addresses, if known.
        replicas: Vec<(u64, Option<SocketAddr>)>,
    },
    /// A peer request was refused (a bad context, a bound, R/W out of range) or fewer than R/W
    /// replicas answered in time (then a write may still have been applied and spreads).
    #[error("{0}")]
    PeerRefused(String),
    /// Fewer than R/W replicas answered in time; a write is durable on `acks` of them and
    /// spreads from there.
    #[error(
        "only {acks} of the {needed} replicas needed answered in time; a write may still spread"
    )]
    QuorumTimeout {
        /// Replicas that answered.
        acks: u32,
        /// R or W.
        needed: u32,
    },
    /// A transaction holds more compares and ops than allowed.
    #[error("transaction of {ops} compares and ops exceeds the limit of {limit}")]
    TxnTooLarge {
        /// Compares plus ops of both branches.
        ops: u64,
        /// Limit ([`MAX_TXN_OPS`]).
        limit: u64,
    },
    /// The request reached a group that does not serve its key (or named a stale epoch): fetch
    /// the shard map again (`AdminRequest::Shards`) and resend to the group it names.
    #[error("wrong shard: group {group} at epoch {epoch} does not serve this key; refresh the shard map and retry")]
    WrongShard {
        /// The group that refused (or that was named).
        group: u64,
        /// That group's current range epoch.
        epoch: u64,
    },
    /// A transaction names keys of several shards: raised inside the client, which then sends it
    /// to a member to coordinate (`Client::txn`); never sent by a server.
    #[error("the transaction's keys are on several shards (groups {groups:?})")]
    CrossShard {
        /// The groups the keys are on.
        groups: Vec<u64>,
    },
    /// The key is locked by a prepared cross-shard transaction (no-wait rule: the write is
    /// refused, not queued, so no deadlock); retry shortly — the lock goes at its decision.
    #[error(
        "key {key:?} is locked by cross-shard transaction {txn} until it is decided; retry shortly"
    )]
    Locked {
        /// The key.
        key: Bytes,
        /// The transaction holding it.
        txn: u64,
    },
    /// A cross-shard transaction aborted (a key was locked by another transaction or changed
    /// since it was read, or a participant timed out); nothing of it was applied: retry it.
    #[error("cross-shard transaction aborted, nothing applied: {0}; retry it")]
    TxnAborted(String),
    /// A range split (`quorate cluster split`) was refused; the reason says what to do.
    #[error("split refused: {0}")]
    Split(SplitError),
}

/// Answers one client request.
pub(crate) type Responder = net_quic::Responder<Response>;

#[cfg(test)]
mod tests {
    use super::*;
    use consensus_core::{Message, MessageBody, Snapshot};

    #[test]
    fn a_peer_message_carries_its_group_and_whether_it_is_bulk() {
        let heartbeat = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Heartbeat {
                commit: 4,
                read_round: 0,
            },
        };
        let envelope = PeerMessage::encode(7, &heartbeat).unwrap();
        assert_eq!((envelope.group, envelope.bulk), (7, false));
        assert_eq!(envelope.decode::<Message>().unwrap(), heartbeat);
        let snapshot = Message {
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot::default(),
            },
            ..heartbeat
        };
        assert!(PeerMessage::encode(0, &snapshot).unwrap().bulk);
    }

    #[test]
    fn a_payload_that_does_not_decode_is_an_error_not_a_panic() {
        let envelope = PeerMessage {
            group: 0,
            epoch: 0,
            class: MessageClass::Consensus,
            bulk: false,
            payload: Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        };
        assert!(envelope.decode::<Message>().is_err());
        assert!(envelope.decode::<consensus_core::paxos::Message>().is_err());
    }
}
