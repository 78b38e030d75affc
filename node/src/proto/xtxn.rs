//! Cross-shard transactions on the wire: the operations a transaction's coordinator (the node that
//! received a `Txn` naming keys of several shards) proposes to the shards' groups, and their
//! results. They travel as ordinary writes ([`super::WriteOp::Shard`], with a session, so a
//! retried request is applied once) and are applied by each shard's state machine
//! (`kv::shard_txn`): the participant's PREPARE and DECIDE, and the coordinator shard's decision
//! record, are entries of the shards' own logs.
//!
//! Protocol (two-phase commit, presumed abort, decision on the coordinator shard's log):
//! 1. the coordinator reads every key the transaction names (linearizable reads at each shard),
//!    evaluates the compares and the branch;
//! 2. [`ShardTxnOp::Prepare`] at every shard the transaction touches (read or written): the shard
//!    checks that no key is locked by another transaction and that every key still has the
//!    `mod_revision` the coordinator read, then locks the keys and keeps the writes (vote yes) —
//!    or changes nothing (vote no);
//! 3. all yes: [`ShardTxnOp::CommitFor`] on the coordinator shard, under the client's session,
//!    records the decision (the first decision recorded for a transaction wins, a later different
//!    one is answered with the first) and decides that shard's own part in the same entry; once it
//!    is applied the client is answered. The session keeps the request's outcome, so a resent
//!    request commits once: a second run meets the first run's answer there and aborts; a run
//!    that aborts records that under the session too ([`ShardTxnOp::AbortFor`]) before it
//!    answers, so an abort answered is final ([`ShardTxnOp::Commit`] and [`ShardTxnOp::Decision`]
//!    are still applied from older logs);
//! 4. [`ShardTxnOp::Decide`] at every other participant, after the answer: apply the writes at one
//!    shard revision (commit) or drop them (abort), release the locks; then [`ShardTxnOp::End`]
//!    lets the coordinator shard forget the decision. Until a participant has applied it, its
//!    keys stay locked, and a read of a key a prepared transaction writes waits (see
//!    `kv::shard_txn`), so no read after the answer sees the old value.
//!
//! A participant that holds a prepared transaction too long asks the coordinator shard with
//! [`ShardTxnOp::Resolve`]: the recorded decision, or — none recorded — ABORT, recorded by that
//! very request (presumed abort), so a crashed coordinating node never blocks the shards.
//!
//! **Parallel commit** (one consensus round, as CockroachDB's parallel commits): when the
//! coordinator shard A is one of several participants that all write, the coordinator sends at
//! once the PREPAREs to the others and [`ShardTxnOp::StageFor`] to A under the client's session;
//! A prepares its own part and records the transaction STAGED (participants, the client's
//! answer). Rule: *a staged transaction is committed iff every participant holds a yes
//! prepare*. So the client is answered commit as soon as A answered `Staged` for this run and
//! every other participant voted yes; then [`ShardTxnOp::Commit`] at A records it (and decides
//! A's part, and overwrites the client's cached `Staged` with `CommittedFor`), and only after
//! A's answer are the others told (DECIDE), then END. Why it is safe:
//! - the decision is still the first one recorded at A, and every path records it there before
//!   telling anyone: the coordinator after a no vote or a vote timeout proposes
//!   [`ShardTxnOp::Settle`] ABORT at A and takes A's answer (a resolver may have committed
//!   first); a resolver settles at A too;
//! - the coordinator answers commit only when the rule holds (A staged, all others voted yes);
//!   a yes prepare is held until A's decision, so it keeps holding, and the only way to record
//!   ABORT for a staged transaction — other than its own coordinator, which has stopped
//!   settling abort once it answered — is a resolver that found a participant *not* prepared
//!   (below), which cannot happen once every one voted yes;
//! - termination: [`ShardTxnOp::Resolve`] of a staged, undecided transaction answers
//!   [`ShardTxnResult::InDoubt`] instead of presuming abort. The resolver, at participant G
//!   (which holds the prepare), fences every participant but A and G ([`ShardTxnOp::Fence`]:
//!   prepared → yes; otherwise ABORT is remembered there, so the prepare can never come later),
//!   then settles COMMIT at A if all were prepared, else ABORT, and decides G with A's answer.
//!   After the fences the rule's truth is fixed, so the settle agrees with any commit answered.
//!   With two participants no fence is needed (A staged, G prepared). A's own resolver (A holds
//!   its part prepared) does the same, so a coordinating node that died right after `StageFor`
//!   leaves nothing blocked;
//! - one commit per request: `StageFor` is under the client's session S, so S's cached answer
//!   is `Staged{T}` until T is settled, when the settle overwrites it with the final answer. A
//!   retried run T2 meets `Staged{T}` (T ≠ T2) for its `StageFor`, `CommitFor` or `AbortFor`:
//!   it drops its prepares and resends its `AbortFor` under S until S holds T's final answer
//!   (T committed → answered with T's commit; aborted → aborted). An abort is answered only
//!   after it is closed under S (`AbortFor`), as on the two-round path.
//!
//! A participant that only reads makes the coordinator take the two-round path (its read
//! locks are released before the answer there). The coordinator shard's revision in a
//! parallel commit's answer is A's lock revision of the staging (its writes apply at the
//! COMMIT, at a later revision not known when the client is answered); the settled answer in
//! the session carries the same one, so every run of a request answers alike.
//!
//! **Revisions in the answer** (the client's sequential reads): a prepare that locks a key
//! moves its shard to a *lock revision* (no key changes; every replica at or past it holds the
//! locks or the decision after them), carried by the yes vote ([`ShardTxnResult::Yes`]) and by
//! `Staged`. The client's answer carries, for every participant, that revision or a later one
//! of it (`WriteResult::CrossShardTxn::shard_revisions`), and the client's session asks for it
//! in its sequential reads there: a replica that serves one holds the lock — so the read waits
//! for the decision — or has applied the transaction.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Session, TxnOp, TxnOpResult};

/// A cross-shard transaction id, chosen at random by the coordinating node (never reused; a
/// retried client request runs under a new one, see [`ShardTxnOp::CommitFor`]).
pub type ShardTxnId = u64;

/// The outcome of a cross-shard transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ShardOutcome {
    /// Every participant applies its writes.
    Commit,
    /// No participant applies anything.
    Abort,
}

/// A key's `mod_revision` as the coordinator read it (0: the key was absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedRevision {
    /// The key (on the shard the prepare goes to).
    pub key: Bytes,
    /// Its `mod_revision` when read.
    pub mod_revision: u64,
}

/// What the coordinator proposes to a shard's group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardTxnOp {
    /// Participant: validate, lock, keep the writes (vote yes) — or vote no, changing nothing.
    Prepare {
        /// The transaction.
        txn: ShardTxnId,
        /// The group whose log holds the decision.
        coordinator: u64,
        /// Every participant group (this one included).
        participants: Vec<u64>,
        /// Every key of this shard the transaction read or compared, as read.
        expected: Vec<ExpectedRevision>,
        /// The writes on this shard (puts and deletes of the branch that ran, in order).
        writes: Vec<TxnOp>,
    },
    /// Participant: apply (commit) or drop (abort) the prepared writes, release the locks.
    Decide {
        /// The transaction.
        txn: ShardTxnId,
        /// The outcome.
        outcome: ShardOutcome,
    },
    /// Coordinator shard: record the decision (the first recorded wins).
    Decision {
        /// The transaction.
        txn: ShardTxnId,
        /// Every participant group.
        participants: Vec<u64>,
        /// The outcome the coordinator reached.
        outcome: ShardOutcome,
    },
    /// Coordinator shard: what was decided? Records ABORT if nothing was (presumed abort).
    Resolve {
        /// The transaction.
        txn: ShardTxnId,
    },
    /// Coordinator shard: every participant applied the decision; forget it (lazily sent).
    End {
        /// The transaction.
        txn: ShardTxnId,
    },
    /// Coordinator shard: record COMMIT (the first decision recorded wins, as for
    /// [`ShardTxnOp::Decision`]) and, in the same entry, decide this shard's own prepared part
    /// with the outcome recorded — so the coordinator shard needs no DECIDE of its own, and the
    /// client can be answered once this one entry is applied.
    Commit {
        /// The transaction.
        txn: ShardTxnId,
        /// Every participant group.
        participants: Vec<u64>,
    },
    /// [`ShardTxnOp::Commit`] for a client's request, with the answer the client is to get. It
    /// is proposed under the *client's* session (its id and the request's sequence number), so
    /// the shard's session table keeps the request's outcome: a second run of the same request
    /// (the client resent it after a lost reply, to any member) is answered with the first
    /// run's [`ShardTxnResult::CommittedFor`] and aborts its own prepares. Found aborted (a
    /// resolver recorded ABORT first), it answers [`ShardTxnResult::Committed`] with `Abort`,
    /// and that closes the request as [`ShardTxnOp::AbortFor`] does.
    CommitFor {
        /// The transaction.
        txn: ShardTxnId,
        /// Every participant group; none for a read-only request, whose answer is only kept in
        /// the session (nothing is decided).
        participants: Vec<u64>,
        /// Whether every compare held (the success branch ran).
        succeeded: bool,
        /// What each op of the branch did, as the client is answered.
        results: Vec<TxnOpResult>,
    },
    /// Coordinator shard, under the client's session, once every *other* participant voted yes:
    /// its own PREPARE and the COMMIT in one entry (the last-agent optimisation). The shard
    /// validates its part as a PREPARE would; if it holds, it records COMMIT and applies its
    /// writes (answer: [`ShardTxnResult::CommittedFor`]); if not, it records ABORT (answer:
    /// [`ShardTxnResult::Committed`] with `Abort`). One consensus round fewer than PREPARE then
    /// [`ShardTxnOp::CommitFor`].
    PrepareCommitFor {
        /// The transaction.
        txn: ShardTxnId,
        /// This shard (the coordinator shard).
        coordinator: u64,
        /// Every participant group (this one included).
        participants: Vec<u64>,
        /// Every key of this shard the transaction read or compared, as read.
        expected: Vec<ExpectedRevision>,
        /// The writes on this shard.
        writes: Vec<TxnOp>,
        /// Whether every compare held (the success branch ran).
        succeeded: bool,
        /// What each op of the branch did, as the client is answered.
        results: Vec<TxnOpResult>,
    },
    /// Coordinator shard: [`ShardTxnOp::End`] for many transactions in one entry (a node
    /// gathers the ENDs its coordinators owe a shard and sends them now and then, so they cost
    /// the shard's log one entry per batch instead of one per transaction).
    EndAll {
        /// The transactions every participant applied.
        txns: Vec<ShardTxnId>,
    },
    /// Coordinator shard, under the client's session: this run of the request aborted — record
    /// ABORT for `txn` and close the request, so no other run of it commits later. Proposed
    /// before an abort is answered; answered with the request's outcome as first recorded in
    /// the session (an earlier run's [`ShardTxnResult::CommittedFor`], if one committed).
    AbortFor {
        /// The transaction (this run).
        txn: ShardTxnId,
    },
    /// Coordinator shard, under the client's session, sent together with the PREPAREs to every
    /// other participant (parallel commit, one consensus round): this shard prepares its own
    /// part as [`ShardTxnOp::Prepare`] does and, if it holds, records the transaction STAGED —
    /// its participants and the client's answer — and answers [`ShardTxnResult::Staged`]. A
    /// staged transaction is committed iff every participant holds a yes (or read-only)
    /// prepare. Its part does not hold: ABORT is recorded (answer [`ShardTxnResult::Committed`]
    /// with `Abort`). A decision already recorded is answered as [`ShardTxnOp::PrepareCommitFor`]
    /// answers it.
    StageFor {
        /// The transaction.
        txn: ShardTxnId,
        /// This shard (the coordinator shard).
        coordinator: u64,
        /// Every participant group (this one included).
        participants: Vec<u64>,
        /// Every key of this shard the transaction read or compared, as read.
        expected: Vec<ExpectedRevision>,
        /// The writes on this shard.
        writes: Vec<TxnOp>,
        /// Whether every compare held (the success branch ran).
        succeeded: bool,
        /// What each op of the branch did, as the client is answered.
        results: Vec<TxnOpResult>,
        /// The client's session this op is proposed under: when the transaction is settled, the
        /// request's cached answer there (`Staged`) is overwritten with the final one.
        origin: Option<Session>,
    },
    /// Coordinator shard: record `outcome` for a transaction (the first decision recorded wins)
    /// and, in the same entry, decide this shard's own part with the outcome recorded; for a
    /// staged transaction also overwrite the client's cached `Staged` answer with the final one.
    /// Answered [`ShardTxnResult::Committed`] with the outcome recorded. Proposed by the
    /// coordinator after a no vote or a vote timeout (before anyone is told abort), and by a
    /// resolver that fenced a staged transaction.
    Settle {
        /// The transaction.
        txn: ShardTxnId,
        /// Every participant group.
        participants: Vec<u64>,
        /// The outcome to record (unless another was recorded first).
        outcome: ShardOutcome,
    },
    /// Participant, from a resolver of a staged transaction: is `txn` prepared here? Prepared
    /// (or committed): [`ShardTxnResult::Fenced`] `true`. Otherwise ABORT is remembered for
    /// `txn` here, so a PREPARE of it that straggles in votes no, and the answer is `false`.
    Fence {
        /// The transaction.
        txn: ShardTxnId,
    },
}

impl ShardTxnOp {
    /// The transaction the op is about.
    pub fn txn(&self) -> ShardTxnId {
        match self {
            ShardTxnOp::Prepare { txn, .. }
            | ShardTxnOp::Decide { txn, .. }
            | ShardTxnOp::Decision { txn, .. }
            | ShardTxnOp::Resolve { txn }
            | ShardTxnOp::End { txn }
            | ShardTxnOp::Commit { txn, .. }
            | ShardTxnOp::CommitFor { txn, .. }
            | ShardTxnOp::AbortFor { txn }
            | ShardTxnOp::PrepareCommitFor { txn, .. }
            | ShardTxnOp::StageFor { txn, .. }
            | ShardTxnOp::Settle { txn, .. }
            | ShardTxnOp::Fence { txn } => *txn,
            // About many: no coordinator waits for its answer.
            ShardTxnOp::EndAll { .. } => 0,
        }
    }

    /// Every key the op names.
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
            ShardTxnOp::Prepare {
                expected, writes, ..
            }
            | ShardTxnOp::PrepareCommitFor {
                expected, writes, ..
            }
            | ShardTxnOp::StageFor {
                expected, writes, ..
            } => expected
                .iter()
                .map(|e| &e.key)
                .chain(writes.iter().map(TxnOp::key))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every value the op carries.
    pub fn values(&self) -> Vec<&Bytes> {
        match self {
            ShardTxnOp::Prepare { writes, .. }
            | ShardTxnOp::PrepareCommitFor { writes, .. }
            | ShardTxnOp::StageFor { writes, .. } => writes
                .iter()
                .filter_map(|op| match op {
                    TxnOp::Put { value, .. } => Some(value),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Why a participant voted no.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoVote {
    /// Another transaction holds a key (no-wait: the requester aborts, never waits).
    Locked {
        /// The key.
        key: Bytes,
        /// The transaction holding it.
        by: ShardTxnId,
    },
    /// A key changed since the coordinator read it.
    Changed {
        /// The key.
        key: Bytes,
        /// The `mod_revision` the coordinator read.
        expected: u64,
        /// The `mod_revision` now (0: absent).
        current: u64,
    },
    /// The transaction is already decided here (a late or repeated prepare).
    Finished(ShardOutcome),
    /// The prepare is malformed (a write that is not a put or delete, no participants…).
    Invalid(String),
}

/// What a shard's state machine answered to a [`ShardTxnOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardTxnResult {
    /// The answer to a prepare that does not hold: why not. (`None`, a yes vote, is what
    /// builds before [`ShardTxnResult::Yes`] answered; a session may still hold one.)
    Vote {
        /// Why the shard voted no (`None`: an older build's yes).
        no: Option<NoVote>,
    },
    /// The answer to a decide: what this shard did (or had already done) with the transaction.
    Decided {
        /// The outcome applied here (for a commit asked of a shard that never prepared or already
        /// aborted: `Abort` — the coordinator then knows something is wrong).
        outcome: ShardOutcome,
        /// The shard's revision after applying the writes (commit), else the current one (for a
        /// repeat, or a transaction already finished here: the current one, past its decision).
        revision: u64,
    },
    /// The answer to a decision record or a resolve: the decision recorded on this shard.
    Decision {
        /// The first outcome recorded for the transaction.
        outcome: ShardOutcome,
    },
    /// The decision is forgotten (or was never held).
    Ended,
    /// The answer to [`ShardTxnOp::Commit`]: the decision recorded, and this shard's revision
    /// after deciding its own part with it (the current one if it had nothing to write).
    Committed {
        /// The first outcome recorded for the transaction.
        outcome: ShardOutcome,
        /// The coordinator shard's revision after the entry.
        revision: u64,
    },
    /// The answer to a [`ShardTxnOp::CommitFor`] that committed — possibly an earlier run of the
    /// same client request (`txn` then differs from the one proposed), remembered in the
    /// client's session.
    CommittedFor {
        /// The transaction that committed the request.
        txn: ShardTxnId,
        /// The coordinator shard's revision after that entry.
        revision: u64,
        /// Whether every compare held.
        succeeded: bool,
        /// What each op of the branch did.
        results: Vec<TxnOpResult>,
    },
    /// The answer to a [`ShardTxnOp::StageFor`] whose part held: the transaction is staged (it
    /// is committed once every participant holds a yes prepare). Kept in the client's session
    /// until the transaction is settled; a later run of the same request meets it there (`txn`
    /// then differs from its own) and waits for the final answer.
    Staged {
        /// The staged transaction.
        txn: ShardTxnId,
        /// The coordinator shard's revision when it staged (its writes apply at the commit, at
        /// a later revision).
        revision: u64,
    },
    /// The answer to a [`ShardTxnOp::Resolve`] of a staged transaction with no decision
    /// recorded: not presumed aborted — the resolver fences the participants and settles it.
    InDoubt {
        /// Every participant group.
        participants: Vec<u64>,
    },
    /// The answer to a [`ShardTxnOp::Fence`]: whether the transaction holds a prepare here (if
    /// not, it never will).
    Fenced {
        /// Prepared (or committed) here.
        prepared: bool,
    },
    /// The answer to a prepare that holds: a yes vote, the keys locked. (Appended after the
    /// other variants so every older encoding, in logs' results cached by sessions and in
    /// snapshots, still decodes; an older build's yes vote is [`ShardTxnResult::Vote`] with no
    /// reason, read as a yes at an unknown revision.)
    Yes {
        /// This shard's lock revision (or, for a repeated prepare, its current one): every
        /// replica at or past it holds the transaction's locks or the decision that released
        /// them — what the client's answer carries for this shard (`kv::shard_txn`).
        revision: u64,
    },
}
