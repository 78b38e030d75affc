//! The shard side of cross-shard transactions ([`crate::proto::xtxn`]), applied
//! deterministically from the shard's log: as a participant, prepared transactions, the locks
//! they hold and a bounded table of finished ones; as a coordinator shard, the decisions.
//!
//! Rules, all decided at apply time so every member agrees:
//! - PREPARE votes yes only if no key of the transaction (read, compared or written) is locked by
//!   another transaction and every key still has the `mod_revision` the coordinator read; then
//!   it locks every such key and keeps the writes. A no vote changes nothing but is remembered
//!   (a repeated or late prepare of that transaction votes no again, never locks).
//! - A prepare that locks a key (PREPARE, and the coordinator shard's STAGE-FOR and
//!   PREPARE-COMMIT-FOR) moves the store to a new revision, a *lock revision*: no key changes
//!   (no `mod_revision` moves), but every replica at or past it holds the locks, or the
//!   decision that released them. The yes vote ([`ShardTxnResult::Yes`]) and `Staged` carry
//!   it, and the client's answer carries it for every participant, so the client's sequential
//!   reads (served by any replica at or past the revisions the session saw) meet the lock —
//!   and wait for the decision — instead of the value from before its own transaction. So a
//!   revision no longer always changes a key: it always changes the state.
//! - DECIDE applies the kept writes at one new revision of this shard (commit) or drops them
//!   (abort) and releases the locks; a repeat, or a decide for a finished transaction, is
//!   answered from the finished table and applies nothing. An abort for a transaction never
//!   prepared here is remembered, so a prepare that straggles in after it votes no.
//! - Plain writes to a locked key are refused with `ServerError::Locked` (no-wait: nobody ever
//!   waits for a lock, so there is no deadlock, and the client retries).
//! - Reads: a key that a prepared transaction *writes* ([`ShardTxns::writer_of`]) is not read
//!   from this shard until its DECIDE is applied — the group holds a linearizable or sequential
//!   read of it until then ([`super::KvStore::get_checked`]), stale reads excepted. The client is
//!   answered as soon as the decision is recorded, before the other participants apply it, so
//!   serving the old value then could show a read that started after the answer a state before
//!   it. A key only read or compared by a prepared transaction is read as usual (its value is
//!   not about to change).
//! - The first decision recorded for a transaction wins; RESOLVE records ABORT when none is.
//!   COMMIT (the coordinator's) records it and decides the coordinator shard's own part in the
//!   same entry. A client request's COMMIT ([`ShardTxnOp::CommitFor`]) and a run's ABORT of it
//!   ([`ShardTxnOp::AbortFor`]) come under the client's session, which keeps the first of them:
//!   every later run of the same request commits nothing and gets that outcome.
//!   A recorded commit is kept until END (every participant applied it); aborts and ended
//!   commits go to a bounded table, so a late question is still answered truthfully.
//!
//! Isolation: a transaction's reads are validated and its keys locked from PREPARE to DECIDE on
//! every participant, so it serializes at its decision (every key is locked and unchanged since
//! read at that instant): transactions are serializable against each other and against plain
//! writes. A plain read of a key a prepared transaction writes waits for its decision; a
//! read-only transaction goes through the same prepare/validate/lock path, so the values it
//! returns held together at one instant — a bank audit sums exactly the total.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{KvStore, Stored};
use crate::proto::xtxn::{ExpectedRevision, NoVote};
use crate::proto::{
    Session, ShardOutcome, ShardTxnId, ShardTxnOp, ShardTxnResult, TxnOp, TxnOpResult, WriteResult,
};

/// Finished transactions (and decisions) remembered per shard, to answer repeats.
pub const MAX_FINISHED_TXNS: usize = 65_536;

/// A transaction prepared on this shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedTxn {
    /// The group whose log holds the decision.
    pub coordinator: u64,
    /// Every participant group.
    pub participants: Vec<u64>,
    /// Log index of the prepare (a resolver's timer starts when it first sees it).
    pub index: u64,
    keys: Vec<Bytes>,
    writes: Vec<TxnOp>,
}

impl PreparedTxn {
    /// The writes kept for the commit.
    pub fn writes(&self) -> &[TxnOp] {
        &self.writes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Finished {
    outcome: ShardOutcome,
    revision: u64,
}

/// A map that forgets its oldest insertions beyond a bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Bounded<V> {
    map: BTreeMap<ShardTxnId, V>,
    order: VecDeque<ShardTxnId>,
}

impl<V> Default for Bounded<V> {
    fn default() -> Self {
        Bounded {
            map: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V> Bounded<V> {
    fn get(&self, txn: ShardTxnId) -> Option<&V> {
        self.map.get(&txn)
    }

    fn insert(&mut self, txn: ShardTxnId, value: V) {
        if self.map.insert(txn, value).is_none() {
            self.order.push_back(txn);
        }
        while self.order.len() > MAX_FINISHED_TXNS {
            if let Some(oldest) = self.order.pop_front() {
                self.map.remove(&oldest);
            }
        }
    }
}

/// Cross-shard transaction state of one shard (part of its snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTxns {
    prepared: BTreeMap<ShardTxnId, PreparedTxn>,
    locks: BTreeMap<Bytes, ShardTxnId>,
    finished: Bounded<Finished>,
    /// Coordinator shard: commits recorded and not yet ended.
    open_commits: BTreeMap<ShardTxnId, Vec<u64>>,
    /// Coordinator shard: aborts, and commits every participant applied.
    decided: Bounded<ShardOutcome>,
    /// Coordinator shard: staged transactions not settled yet (snapshot layout version 4, after
    /// the split state: the earlier layouts of this struct stay as they were).
    #[serde(skip)]
    pub(super) staged: BTreeMap<ShardTxnId, StagedTxn>,
}

/// A transaction staged on its coordinator shard ([`ShardTxnOp::StageFor`]): committed iff every
/// participant holds a yes prepare; settled by the first decision recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedTxn {
    /// Every participant group.
    pub participants: Vec<u64>,
    /// The client's session whose cached answer is overwritten when it is settled.
    pub origin: Option<Session>,
    /// This shard's lock revision of the staging (see the module doc): the revision every run of
    /// the request is answered with (the answer goes out before the writes apply, at a revision
    /// not known yet); every replica at or past it holds the locks or the decision.
    pub revision: u64,
    succeeded: bool,
    results: Vec<TxnOpResult>,
}

impl ShardTxns {
    /// The first key of `keys` locked by a transaction, with that transaction.
    pub fn locked<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a Bytes>,
    ) -> Option<(Bytes, ShardTxnId)> {
        if self.locks.is_empty() {
            return None;
        }
        keys.into_iter()
            .find_map(|key| self.locks.get(key).map(|&txn| (key.clone(), txn)))
    }

    /// The first key in `range` locked by a transaction, with that transaction.
    pub fn locked_in(&self, range: &crate::proto::KeyRange) -> Option<(Bytes, ShardTxnId)> {
        self.locks
            .range(range.start.clone()..)
            .find(|(key, _)| range.contains(key))
            .map(|(key, &txn)| (key.clone(), txn))
    }

    /// Transactions prepared here, awaiting their decision.
    pub fn prepared(&self) -> &BTreeMap<ShardTxnId, PreparedTxn> {
        &self.prepared
    }

    /// Commits recorded here (coordinator shard) that some participant may not have applied
    /// yet: kept until END.
    pub fn open_commits(&self) -> usize {
        self.open_commits.len()
    }

    /// The decision recorded here for `txn` (coordinator shard), if any is still remembered.
    pub fn decision(&self, txn: ShardTxnId) -> Option<ShardOutcome> {
        if self.open_commits.contains_key(&txn) {
            return Some(ShardOutcome::Commit);
        }
        self.decided.get(txn).copied()
    }

    /// Staged transactions not settled yet (coordinator shard).
    pub fn staged(&self) -> &BTreeMap<ShardTxnId, StagedTxn> {
        &self.staged
    }

    /// Applies one cross-shard step to the store at log `index`.
    pub(super) fn apply(store: &mut KvStore, op: &ShardTxnOp, index: u64) -> ShardTxnResult {
        let result = Self::apply_op(store, op, index);
        // Whatever recorded a decision for a staged transaction settles it.
        let txn = op.txn();
        if store.shard_txns.staged.contains_key(&txn) {
            if let Some(outcome) = store.shard_txns.decision(txn) {
                Self::settle_staged(store, txn, outcome);
            }
        }
        result
    }

    /// A staged transaction's decision is recorded: decide this shard's part with it and
    /// overwrite the client's cached `Staged` answer with the final one.
    /// Coordinator shard: records `outcome` (the first recorded wins) and decides this shard's own
    /// part with the outcome recorded (final either way); a staged transaction is settled with it
    /// (its part and the client's answer). Not prepared here (a coordinator shard that is no
    /// participant): only the record.
    fn settle(
        store: &mut KvStore,
        txn: ShardTxnId,
        participants: &[u64],
        outcome: ShardOutcome,
    ) -> ShardTxnResult {
        let outcome = store.shard_txns.record(txn, participants, outcome);
        if store.shard_txns.staged.contains_key(&txn) {
            Self::settle_staged(store, txn, outcome);
        } else if store.shard_txns.prepared.contains_key(&txn) {
            Self::decide(store, txn, outcome);
        }
        ShardTxnResult::Committed {
            outcome,
            revision: store.revision,
        }
    }

    fn settle_staged(store: &mut KvStore, txn: ShardTxnId, outcome: ShardOutcome) {
        let Some(staged) = store.shard_txns.staged.remove(&txn) else {
            return;
        };
        if store.shard_txns.prepared.contains_key(&txn) {
            Self::decide(store, txn, outcome);
        }
        let answer = match outcome {
            ShardOutcome::Commit => ShardTxnResult::CommittedFor {
                txn,
                revision: staged.revision,
                succeeded: staged.succeeded,
                results: staged.results,
            },
            ShardOutcome::Abort => ShardTxnResult::Committed {
                outcome,
                revision: store.revision,
            },
        };
        let Some(origin) = staged.origin else {
            return;
        };
        let Some(cached) = store
            .sessions
            .get_mut(&origin.client_id)
            .and_then(|client| client.results.get_mut(&origin.seq))
        else {
            return; // acknowledged or forgotten: nobody asks again
        };
        if matches!(cached, WriteResult::Shard(ShardTxnResult::Staged { txn: t, .. }) if *t == txn)
        {
            *cached = WriteResult::Shard(answer);
        }
    }

    fn apply_op(store: &mut KvStore, op: &ShardTxnOp, index: u64) -> ShardTxnResult {
        match op {
            ShardTxnOp::Prepare {
                txn,
                coordinator,
                participants,
                expected,
                writes,
            } => match Self::prepare(
                store,
                *txn,
                *coordinator,
                participants,
                expected,
                writes,
                index,
            ) {
                Ok(revision) => ShardTxnResult::Yes { revision },
                Err(no) => ShardTxnResult::Vote { no: Some(no) },
            },
            ShardTxnOp::Decide { txn, outcome } => Self::decide(store, *txn, *outcome),
            ShardTxnOp::Decision {
                txn,
                participants,
                outcome,
            } => ShardTxnResult::Decision {
                outcome: store.shard_txns.record(*txn, participants, *outcome),
            },
            ShardTxnOp::Resolve { txn } => match store.shard_txns.staged.get(txn) {
                // Staged, undecided: committed iff every participant holds its prepare, which
                // only they know — no presumed abort.
                Some(staged) if store.shard_txns.decision(*txn).is_none() => {
                    ShardTxnResult::InDoubt {
                        participants: staged.participants.clone(),
                    }
                }
                _ => ShardTxnResult::Decision {
                    outcome: store.shard_txns.record(*txn, &[], ShardOutcome::Abort),
                },
            },
            ShardTxnOp::End { txn } => {
                store.shard_txns.end(*txn);
                ShardTxnResult::Ended
            }
            ShardTxnOp::EndAll { txns } => {
                for txn in txns {
                    store.shard_txns.end(*txn);
                }
                ShardTxnResult::Ended
            }
            ShardTxnOp::Commit { txn, participants } => {
                Self::settle(store, *txn, participants, ShardOutcome::Commit)
            }
            ShardTxnOp::CommitFor {
                txn,
                participants,
                succeeded,
                results,
            } if participants.is_empty() => ShardTxnResult::CommittedFor {
                // A read-only request's answer: kept in the session only, nothing decided.
                txn: *txn,
                revision: store.revision,
                succeeded: *succeeded,
                results: results.clone(),
            },
            ShardTxnOp::CommitFor {
                txn,
                participants,
                succeeded,
                results,
            } => {
                let outcome = store
                    .shard_txns
                    .record(*txn, participants, ShardOutcome::Commit);
                Self::decide_request(store, *txn, outcome, *succeeded, results)
            }
            ShardTxnOp::PrepareCommitFor {
                txn,
                coordinator,
                participants,
                expected,
                writes,
                succeeded,
                results,
            } => {
                let recorded = store.shard_txns.decision(*txn);
                let outcome = match recorded {
                    // A repeat, or a resolver's ABORT first: the recorded outcome stands.
                    Some(outcome) => outcome,
                    None => {
                        let vote = Self::prepare(
                            store,
                            *txn,
                            *coordinator,
                            participants,
                            expected,
                            writes,
                            index,
                        );
                        let outcome = match vote {
                            Ok(_) => ShardOutcome::Commit,
                            Err(_) => ShardOutcome::Abort,
                        };
                        store.shard_txns.record(*txn, participants, outcome)
                    }
                };
                Self::decide_request(store, *txn, outcome, *succeeded, results)
            }
            ShardTxnOp::AbortFor { txn } => ShardTxnResult::Decision {
                outcome: store.shard_txns.record(*txn, &[], ShardOutcome::Abort),
            },
            ShardTxnOp::StageFor {
                txn,
                coordinator,
                participants,
                expected,
                writes,
                succeeded,
                results,
                origin,
            } => {
                if let Some(outcome) = store.shard_txns.decision(*txn) {
                    // A repeat after the settle, or a resolver's decision first: it stands.
                    return Self::decide_request(store, *txn, outcome, *succeeded, results);
                }
                if let Some(staged) = store.shard_txns.staged.get(txn) {
                    return ShardTxnResult::Staged {
                        txn: *txn,
                        revision: staged.revision,
                    };
                }
                let vote = Self::prepare(
                    store,
                    *txn,
                    *coordinator,
                    participants,
                    expected,
                    writes,
                    index,
                );
                match vote {
                    Ok(revision) => {
                        store.shard_txns.staged.insert(
                            *txn,
                            StagedTxn {
                                participants: participants.clone(),
                                origin: *origin,
                                revision,
                                succeeded: *succeeded,
                                results: results.clone(),
                            },
                        );
                        ShardTxnResult::Staged {
                            txn: *txn,
                            revision,
                        }
                    }
                    Err(_) => {
                        let outcome =
                            store
                                .shard_txns
                                .record(*txn, participants, ShardOutcome::Abort);
                        Self::decide_request(store, *txn, outcome, *succeeded, results)
                    }
                }
            }
            ShardTxnOp::Settle {
                txn,
                participants,
                outcome,
            } => Self::settle(store, *txn, participants, *outcome),
            ShardTxnOp::Fence { txn } => {
                let txns = &mut store.shard_txns;
                let prepared = txns.prepared.contains_key(txn)
                    || matches!(
                        txns.finished.get(*txn),
                        Some(Finished {
                            outcome: ShardOutcome::Commit,
                            ..
                        })
                    );
                if !prepared && txns.finished.get(*txn).is_none() {
                    // Never prepared here: remembered, so a straggling prepare votes no.
                    txns.finished.insert(
                        *txn,
                        Finished {
                            outcome: ShardOutcome::Abort,
                            revision: store.revision,
                        },
                    );
                }
                ShardTxnResult::Fenced { prepared }
            }
        }
    }

    /// A client request's commit entry: decides this shard's part (if prepared here) with the
    /// `outcome` recorded and answers with the request's result, or the abort.
    fn decide_request(
        store: &mut KvStore,
        txn: ShardTxnId,
        outcome: ShardOutcome,
        succeeded: bool,
        results: &[crate::proto::TxnOpResult],
    ) -> ShardTxnResult {
        if store.shard_txns.prepared.contains_key(&txn) {
            Self::decide(store, txn, outcome);
        }
        match outcome {
            ShardOutcome::Commit => ShardTxnResult::CommittedFor {
                txn,
                revision: store.revision,
                succeeded,
                results: results.to_vec(),
            },
            ShardOutcome::Abort => ShardTxnResult::Committed {
                outcome,
                revision: store.revision,
            },
        }
    }

    /// The transaction whose prepared writes include `key`, if any. Such a key's committed value
    /// may already be out of date: the transaction can be decided (its client answered) before
    /// this shard applies the decision, so a read must not be served from it until then.
    pub fn writer_of(&self, key: &[u8]) -> Option<ShardTxnId> {
        let txn = *self.locks.get(key)?;
        let prepared = self.prepared.get(&txn)?;
        prepared
            .writes
            .iter()
            .any(|w| w.key().as_ref() == key)
            .then_some(txn)
    }

    /// The first key in `[start, end)` (`end` `None`: to the last key) that a prepared
    /// transaction writes, with that transaction ([`ShardTxns::writer_of`] for a scan).
    pub fn writer_in(&self, start: &[u8], end: Option<&[u8]>) -> Option<(Bytes, ShardTxnId)> {
        use std::ops::Bound;
        if self.locks.is_empty() || end.is_some_and(|end| end <= start) {
            return None;
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        self.locks
            .range::<[u8], _>((Bound::Included(start), upper))
            .find_map(|(key, _)| self.writer_of(key).map(|txn| (key.clone(), txn)))
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare(
        store: &mut KvStore,
        txn: ShardTxnId,
        coordinator: u64,
        participants: &[u64],
        expected: &[ExpectedRevision],
        writes: &[TxnOp],
        index: u64,
    ) -> Result<u64, NoVote> {
        let txns = &mut store.shard_txns;
        if let Some(finished) = txns.finished.get(txn) {
            return Err(NoVote::Finished(finished.outcome));
        }
        if txns.prepared.contains_key(&txn) {
            // A repeat: the keys are ours already, locked at or before the current revision.
            return Ok(store.revision);
        }
        let refuse = |txns: &mut ShardTxns, why: NoVote| {
            // Remembered: a repeat of this prepare must not lock later.
            txns.finished.insert(
                txn,
                Finished {
                    outcome: ShardOutcome::Abort,
                    revision: 0,
                },
            );
            Err(why)
        };
        if participants.is_empty() {
            return refuse(txns, NoVote::Invalid("no participants".into()));
        }
        if writes.iter().any(|w| matches!(w, TxnOp::Get { .. })) {
            return refuse(txns, NoVote::Invalid("a read among the writes".into()));
        }
        let keys: BTreeSet<&Bytes> = expected
            .iter()
            .map(|e| &e.key)
            .chain(writes.iter().map(TxnOp::key))
            .collect();
        for key in &keys {
            if let Some(&by) = txns.locks.get(*key) {
                return refuse(
                    txns,
                    NoVote::Locked {
                        key: (*key).clone(),
                        by,
                    },
                );
            }
        }
        for e in expected {
            let current = store.data.get(&e.key).map_or(0, |s| s.mod_revision);
            if current != e.mod_revision {
                return refuse(
                    txns,
                    NoVote::Changed {
                        key: e.key.clone(),
                        expected: e.mod_revision,
                        current,
                    },
                );
            }
        }
        for key in &keys {
            txns.locks.insert((*key).clone(), txn);
        }
        let locks_any = !keys.is_empty();
        txns.prepared.insert(
            txn,
            PreparedTxn {
                coordinator,
                participants: participants.to_vec(),
                index,
                keys: keys.into_iter().cloned().collect(),
                writes: writes.to_vec(),
            },
        );
        if locks_any {
            // The lock revision: no key changes, but every replica at or past it holds these
            // locks (or the decision that released them), so a sequential read there that asks
            // for it is held until the decision rather than served the value from before it.
            store.revision += 1;
        }
        Ok(store.revision)
    }

    fn decide(store: &mut KvStore, txn: ShardTxnId, outcome: ShardOutcome) -> ShardTxnResult {
        if let Some(finished) = store.shard_txns.finished.get(txn) {
            // Answered with the current revision, at or past the decision: a coordinator that
            // releases a run superseded by an earlier one takes it as a revision past that
            // run's prepare (see `xtxn::coordinator`).
            return ShardTxnResult::Decided {
                outcome: finished.outcome,
                revision: store.revision,
            };
        }
        let Some(prepared) = store.shard_txns.prepared.remove(&txn) else {
            if outcome == ShardOutcome::Abort {
                // Never prepared here: remembered, so a straggling prepare votes no.
                store.shard_txns.finished.insert(
                    txn,
                    Finished {
                        outcome,
                        revision: store.revision,
                    },
                );
            }
            // A commit for a transaction this shard never prepared (or long forgot) applies
            // nothing: it answers abort, which tells the coordinator something is wrong.
            return ShardTxnResult::Decided {
                outcome: ShardOutcome::Abort,
                revision: store.revision,
            };
        };
        for key in &prepared.keys {
            store.shard_txns.locks.remove(key);
        }
        if outcome == ShardOutcome::Commit {
            Self::apply_writes(&mut store.data, &mut store.revision, &prepared.writes);
        }
        store.shard_txns.finished.insert(
            txn,
            Finished {
                outcome,
                revision: store.revision,
            },
        );
        ShardTxnResult::Decided {
            outcome,
            revision: store.revision,
        }
    }

    /// The writes at one new revision (taken only if they change something).
    fn apply_writes(data: &mut BTreeMap<Bytes, Stored>, revision: &mut u64, writes: &[TxnOp]) {
        let txn_revision = *revision + 1;
        let mut changed = false;
        for op in writes {
            match op {
                TxnOp::Put { key, value } => {
                    KvStore::put(data, txn_revision, key, value);
                    changed = true;
                }
                TxnOp::Delete { key } => changed |= data.remove(key).is_some(),
                TxnOp::Get { .. } => {}
            }
        }
        if changed {
            *revision = txn_revision;
        }
    }

    /// Every participant applied `txn`'s commit: forget it (a late question is still answered
    /// from the bounded table).
    fn end(&mut self, txn: ShardTxnId) {
        if self.open_commits.remove(&txn).is_some() {
            self.decided.insert(txn, ShardOutcome::Commit);
        }
    }

    fn record(
        &mut self,
        txn: ShardTxnId,
        participants: &[u64],
        outcome: ShardOutcome,
    ) -> ShardOutcome {
        if let Some(first) = self.decision(txn) {
            return first;
        }
        match outcome {
            ShardOutcome::Commit => {
                self.open_commits.insert(txn, participants.to_vec());
            }
            ShardOutcome::Abort => self.decided.insert(txn, ShardOutcome::Abort),
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Command;
    use crate::proto::{ServerError, Session, TxnOpResult, WriteOp, WriteResult};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    struct Shard {
        kv: KvStore,
        index: u64,
    }

    impl Shard {
        fn new() -> Self {
            Shard {
                kv: KvStore::new(100),
                index: 0,
            }
        }

        fn write(&mut self, op: WriteOp) -> Result<WriteResult, ServerError> {
            let session = Session {
                client_id: 1,
                seq: self.index + 1,
                first_unacked: 1,
            };
            self.write_as(session, op)
        }

        fn write_as(&mut self, session: Session, op: WriteOp) -> Result<WriteResult, ServerError> {
            self.index += 1;
            self.kv
                .apply(&Command::Write { session, op }, self.index)
                .expect("a write has a result")
        }

        fn step(&mut self, op: ShardTxnOp) -> ShardTxnResult {
            match self.write(WriteOp::Shard(op)) {
                Ok(WriteResult::Shard(result)) => result,
                other => panic!("unexpected {other:?}"),
            }
        }

        fn put(&mut self, key: &str, value: &str) -> u64 {
            match self.write(WriteOp::Put {
                key: b(key),
                value: b(value),
            }) {
                Ok(WriteResult::Put { revision }) => revision,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn prepare(txn: u64, expected: &[(&str, u64)], writes: &[(&str, &str)]) -> ShardTxnOp {
        ShardTxnOp::Prepare {
            txn,
            coordinator: 1,
            participants: vec![1, 2],
            expected: expected
                .iter()
                .map(|(k, r)| ExpectedRevision {
                    key: b(k),
                    mod_revision: *r,
                })
                .collect(),
            writes: writes
                .iter()
                .map(|(k, v)| TxnOp::Put {
                    key: b(k),
                    value: b(v),
                })
                .collect(),
        }
    }

    fn decide(txn: u64, outcome: ShardOutcome) -> ShardTxnOp {
        ShardTxnOp::Decide { txn, outcome }
    }

    impl Shard {
        /// Steps a prepare that must vote yes and lock: at a new revision (its lock revision),
        /// which it returns.
        fn lock(&mut self, op: ShardTxnOp) -> u64 {
            let before = self.kv.revision();
            let vote = self.step(op);
            assert_eq!(
                vote,
                ShardTxnResult::Yes {
                    revision: before + 1
                }
            );
            assert_eq!(self.kv.revision(), before + 1);
            before + 1
        }
    }

    #[test]
    fn a_prepare_locks_its_keys_and_a_commit_applies_the_writes_once_at_one_revision() {
        let mut shard = Shard::new();
        let ra = shard.put("a", "1");
        shard.lock(prepare(
            7,
            &[("a", ra), ("b", 0)],
            &[("a", "2"), ("b", "3")],
        ));
        // Locked: plain writes are refused (no-wait), reads see the committed value.
        assert_eq!(
            shard.write(WriteOp::Delete { key: b("b") }),
            Err(ServerError::Locked {
                key: b("b"),
                txn: 7
            })
        );
        assert_eq!(shard.kv.get(b"a").unwrap().value, b("1"));
        assert_eq!(shard.kv.shard_txns().locked([&b("a")]), Some((b("a"), 7)));
        // A repeated prepare is the same yes; another transaction on a locked key votes no.
        let revision = shard.kv.revision();
        assert_eq!(
            shard.step(prepare(7, &[("a", ra)], &[])),
            ShardTxnResult::Yes { revision }
        );
        assert_eq!(shard.kv.revision(), revision, "a repeat takes no revision");
        assert!(matches!(
            shard.step(prepare(8, &[("a", ra)], &[])),
            ShardTxnResult::Vote {
                no: Some(NoVote::Locked { by: 7, .. })
            }
        ));
        let before = shard.kv.revision();
        let committed = shard.step(decide(7, ShardOutcome::Commit));
        assert_eq!(
            committed,
            ShardTxnResult::Decided {
                outcome: ShardOutcome::Commit,
                revision: before + 1
            }
        );
        let (a, bb) = (shard.kv.get(b"a").unwrap(), shard.kv.get(b"b").unwrap());
        assert_eq!((a.value, bb.value), (b("2"), b("3")));
        assert_eq!((a.mod_revision, bb.mod_revision), (before + 1, before + 1));
        assert!(shard.kv.shard_txns().prepared().is_empty());
        assert_eq!(shard.kv.shard_txns().locked([&b("a"), &b("b")]), None);
        // Repeats are answered from the finished table and apply nothing.
        assert_eq!(shard.step(decide(7, ShardOutcome::Commit)), committed);
        assert_eq!(shard.step(decide(7, ShardOutcome::Abort)), committed);
        assert_eq!(shard.kv.revision(), before + 1);
        assert_eq!(
            shard.step(prepare(7, &[("a", before + 1)], &[("a", "9")])),
            ShardTxnResult::Vote {
                no: Some(NoVote::Finished(ShardOutcome::Commit))
            }
        );
        // The lock is gone: plain writes go through again.
        shard.put("b", "4");
    }

    #[test]
    fn a_prepare_that_locks_moves_the_store_to_a_lock_revision_that_changes_no_key() {
        let mut shard = Shard::new();
        let ra = shard.put("a", "1");
        let lock = shard.lock(prepare(7, &[("a", ra)], &[("a", "2"), ("b", "3")]));
        // No key changed: the compared key keeps its mod revision, the put one is not there.
        assert_eq!(shard.kv.get(b"a").unwrap().mod_revision, ra);
        assert!(shard.kv.get(b"b").is_none());
        // Nothing to lock, or a no vote: no revision taken.
        let revision = shard.kv.revision();
        assert_eq!(
            shard.step(prepare(8, &[], &[])),
            ShardTxnResult::Yes { revision }
        );
        assert!(matches!(
            shard.step(prepare(9, &[("a", ra)], &[("c", "1")])),
            ShardTxnResult::Vote { no: Some(_) }
        ));
        assert_eq!(shard.kv.revision(), revision);
        // The writes apply at a revision past the lock's.
        assert!(matches!(
            shard.step(decide(7, ShardOutcome::Commit)),
            ShardTxnResult::Decided { revision, .. } if revision == lock + 1
        ));
    }

    #[test]
    fn every_replica_at_or_past_the_lock_revision_holds_the_lock_or_shows_the_commit() {
        // The log of one shard; a replica that applied a prefix of it is at that prefix's
        // revision. A session that saw the yes vote's revision reads at any replica at or past
        // it: it must not be served the value from before its own transaction.
        let put = |key: &str, value: &str| WriteOp::Put {
            key: b(key),
            value: b(value),
        };
        let log = [
            put("a", "old"),
            put("c", "x"),
            WriteOp::Shard(prepare(7, &[("a", 1)], &[("a", "new")])),
            put("c", "y"),
            WriteOp::Shard(decide(7, ShardOutcome::Commit)),
            put("c", "z"),
        ];
        let mut leader = Shard::new();
        let mut lock = None;
        for op in log.iter().cloned() {
            if let Ok(WriteResult::Shard(ShardTxnResult::Yes { revision })) = leader.write(op) {
                lock = Some(revision);
            }
        }
        let lock = lock.expect("the prepare voted yes");
        for prefix in 0..=log.len() {
            let mut replica = Shard::new();
            for op in log[..prefix].iter().cloned() {
                let _ = replica.write(op);
            }
            if replica.kv.revision() < lock {
                continue; // a session read that asks for the lock revision is not served here
            }
            match replica.kv.get_checked(&b("a")) {
                Err(ServerError::Locked { txn: 7, .. }) => {}
                Ok(Some(kv)) => assert_eq!(kv.value, b("new"), "prefix {prefix}"),
                other => panic!("prefix {prefix}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_yes_vote_of_older_builds_and_the_other_results_keep_their_encodings() {
        // Sessions cache these results, and snapshots hold the sessions: the variants added for
        // lock revisions come last, so what an older build wrote decodes as it was.
        let old_yes = WriteResult::Shard(ShardTxnResult::Vote { no: None });
        assert_eq!(postcard::to_allocvec(&old_yes).unwrap(), vec![4, 0, 0]);
        let txn = WriteResult::Txn {
            succeeded: true,
            revision: 5,
            results: vec![],
        };
        assert_eq!(postcard::to_allocvec(&txn).unwrap(), vec![3, 1, 5, 0]);
        let mut shard = Shard::new();
        let session = Session {
            client_id: 5,
            seq: 1,
            first_unacked: 1,
        };
        let op = WriteOp::Shard(prepare(7, &[], &[("a", "1")]));
        shard.write_as(session, op.clone()).unwrap();
        *shard
            .kv
            .sessions
            .get_mut(&5)
            .unwrap()
            .results
            .get_mut(&1)
            .unwrap() = old_yes.clone();
        let restored = KvStore::restore(&shard.kv.snapshot().unwrap(), 100).unwrap();
        assert_eq!(restored, shard.kv);
        shard.kv = restored;
        assert_eq!(shard.write_as(session, op).unwrap(), old_yes);
    }

    #[test]
    fn a_prepare_on_a_changed_key_votes_no_and_changes_nothing() {
        let mut shard = Shard::new();
        let ra = shard.put("a", "1");
        shard.put("a", "2");
        let before = shard.kv.clone();
        let vote = shard.step(prepare(5, &[("a", ra)], &[("a", "3")]));
        assert!(matches!(
            vote,
            ShardTxnResult::Vote { no: Some(NoVote::Changed { expected, current, .. }) }
                if expected == ra && current == ra + 1
        ));
        assert_eq!(shard.kv.get(b"a"), before.get(b"a"));
        assert_eq!(shard.kv.shard_txns().locked([&b("a")]), None);
        // Remembered: the same prepare again still votes no, even though nothing blocks it now.
        assert!(matches!(
            shard.step(prepare(5, &[("a", ra + 1)], &[])),
            ShardTxnResult::Vote {
                no: Some(NoVote::Finished(ShardOutcome::Abort))
            }
        ));
        // A key the coordinator read as absent must still be absent.
        assert!(matches!(
            shard.step(prepare(6, &[("a", 0)], &[])),
            ShardTxnResult::Vote {
                no: Some(NoVote::Changed { expected: 0, .. })
            }
        ));
    }

    #[test]
    fn an_abort_that_overtakes_its_prepare_makes_the_late_prepare_vote_no() {
        let mut shard = Shard::new();
        assert!(matches!(
            shard.step(decide(3, ShardOutcome::Abort)),
            ShardTxnResult::Decided {
                outcome: ShardOutcome::Abort,
                ..
            }
        ));
        assert!(matches!(
            shard.step(prepare(3, &[("a", 0)], &[("a", "1")])),
            ShardTxnResult::Vote {
                no: Some(NoVote::Finished(ShardOutcome::Abort))
            }
        ));
        assert_eq!(shard.kv.shard_txns().locked([&b("a")]), None);
        // A commit for a transaction never prepared here applies nothing and says so.
        assert!(matches!(
            shard.step(decide(4, ShardOutcome::Commit)),
            ShardTxnResult::Decided {
                outcome: ShardOutcome::Abort,
                ..
            }
        ));
        assert!(shard.kv.is_empty());
        // An abort of a prepared transaction drops its writes and frees its keys.
        shard.lock(prepare(9, &[("a", 0)], &[("a", "1")]));
        shard.step(decide(9, ShardOutcome::Abort));
        assert!(shard.kv.is_empty());
        shard.put("a", "free");
    }

    #[test]
    fn the_first_decision_recorded_wins_and_resolve_presumes_abort() {
        let mut shard = Shard::new();
        let decision = |txn, outcome| ShardTxnOp::Decision {
            txn,
            participants: vec![1, 2],
            outcome,
        };
        let is = |outcome| ShardTxnResult::Decision { outcome };
        assert_eq!(
            shard.step(decision(1, ShardOutcome::Commit)),
            is(ShardOutcome::Commit)
        );
        assert_eq!(
            shard.step(ShardTxnOp::Resolve { txn: 1 }),
            is(ShardOutcome::Commit)
        );
        assert_eq!(
            shard.step(decision(1, ShardOutcome::Abort)),
            is(ShardOutcome::Commit)
        );
        // Nothing recorded: the question records ABORT, and a later commit is refused with it.
        assert_eq!(
            shard.step(ShardTxnOp::Resolve { txn: 2 }),
            is(ShardOutcome::Abort)
        );
        assert_eq!(
            shard.step(decision(2, ShardOutcome::Commit)),
            is(ShardOutcome::Abort)
        );
        // END forgets the open commit but the answer stays truthful.
        assert_eq!(
            shard.step(ShardTxnOp::End { txn: 1 }),
            ShardTxnResult::Ended
        );
        assert_eq!(
            shard.kv.shard_txns().decision(1),
            Some(ShardOutcome::Commit)
        );
        assert_eq!(
            shard.step(ShardTxnOp::Resolve { txn: 1 }),
            is(ShardOutcome::Commit)
        );
    }

    #[test]
    fn end_all_forgets_every_commit_it_names_and_the_answers_stay_truthful() {
        let mut shard = Shard::new();
        for txn in [1, 2, 3] {
            shard.step(ShardTxnOp::Decision {
                txn,
                participants: vec![1, 2],
                outcome: ShardOutcome::Commit,
            });
        }
        assert_eq!(shard.kv.shard_txns().open_commits(), 3);
        assert_eq!(
            shard.step(ShardTxnOp::EndAll {
                txns: vec![1, 3, 9]
            }),
            ShardTxnResult::Ended
        );
        assert_eq!(shard.kv.shard_txns().open_commits(), 1);
        for txn in [1, 2, 3] {
            assert_eq!(
                shard.kv.shard_txns().decision(txn),
                Some(ShardOutcome::Commit)
            );
        }
        assert_eq!(shard.kv.shard_txns().decision(9), None);
    }

    #[test]
    fn the_coordinator_shard_prepares_and_commits_its_part_in_one_entry_or_aborts_it() {
        let mut shard = Shard::new();
        let rc = shard.put("c", "0");
        let combined = |txn, expected: u64, key: &str| ShardTxnOp::PrepareCommitFor {
            txn,
            coordinator: 1,
            participants: vec![1, 2],
            expected: vec![ExpectedRevision {
                key: b("c"),
                mod_revision: expected,
            }],
            writes: vec![TxnOp::Put {
                key: b(key),
                value: b("1"),
            }],
            succeeded: true,
            results: vec![TxnOpResult::Put],
        };
        // Its part holds: prepared, committed and applied at once, the decision recorded.
        let committed = shard.step(combined(7, rc, "a"));
        assert!(
            matches!(committed, ShardTxnResult::CommittedFor { txn: 7, .. }),
            "{committed:?}"
        );
        assert_eq!(shard.kv.get(b"a").unwrap().value, b("1"));
        assert!(shard.kv.shard_txns().prepared().is_empty());
        assert_eq!(shard.kv.shard_txns().locked([&b("a")]), None);
        assert_eq!(
            shard.kv.shard_txns().decision(7),
            Some(ShardOutcome::Commit)
        );
        // A repeat applies nothing more.
        let revision = shard.kv.revision();
        assert!(matches!(
            shard.step(combined(7, rc, "a")),
            ShardTxnResult::CommittedFor { txn: 7, .. }
        ));
        assert_eq!(shard.kv.revision(), revision);
        // A key changed since it was read: ABORT is recorded, nothing applied or locked, and a
        // late PREPARE of that transaction votes no.
        assert_eq!(
            shard.step(combined(8, rc + 100, "b")),
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Abort,
                revision
            }
        );
        assert!(shard.kv.get(b"b").is_none());
        assert_eq!(shard.kv.shard_txns().decision(8), Some(ShardOutcome::Abort));
        assert_eq!(shard.kv.shard_txns().locked([&b("b")]), None);
        assert!(matches!(
            shard.step(prepare(8, &[], &[("b", "2")])),
            ShardTxnResult::Vote { no: Some(_) }
        ));
        // A resolver recorded ABORT first: the entry aborts and applies nothing.
        shard.step(ShardTxnOp::Resolve { txn: 9 });
        assert!(matches!(
            shard.step(combined(9, rc, "d")),
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Abort,
                ..
            }
        ));
        assert!(shard.kv.get(b"d").is_none());
        // Another transaction's lock on its key: no.
        shard.lock(prepare(10, &[], &[("e", "x")]));
        assert!(matches!(
            shard.step(combined(11, rc, "e")),
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Abort,
                ..
            }
        ));
        assert_eq!(
            shard.kv.shard_txns().locked([&b("e")]).map(|(_, t)| t),
            Some(10)
        );
    }

    #[test]
    fn commit_records_the_decision_and_decides_the_coordinator_shards_own_part_in_one_entry() {
        let mut shard = Shard::new();
        shard.lock(prepare(7, &[], &[("a", "1")]));
        let before = shard.kv.revision();
        let commit = |txn| ShardTxnOp::Commit {
            txn,
            participants: vec![1, 2],
        };
        let committed = shard.step(commit(7));
        assert_eq!(
            committed,
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Commit,
                revision: before + 1
            }
        );
        assert_eq!(shard.kv.get(b"a").unwrap().value, b("1"));
        assert_eq!(shard.kv.shard_txns().locked([&b("a")]), None);
        assert_eq!(
            shard.kv.shard_txns().decision(7),
            Some(ShardOutcome::Commit)
        );
        // A repeat applies nothing more; a DECIDE that still comes is answered as done.
        assert_eq!(shard.step(commit(7)), committed);
        assert_eq!(
            shard.step(decide(7, ShardOutcome::Commit)),
            ShardTxnResult::Decided {
                outcome: ShardOutcome::Commit,
                revision: before + 1
            }
        );
        // A resolver recorded ABORT first: the commit is refused and this shard's part dropped.
        let lock = shard.lock(prepare(8, &[], &[("b", "2")]));
        assert_eq!(
            shard.step(ShardTxnOp::Resolve { txn: 8 }),
            ShardTxnResult::Decision {
                outcome: ShardOutcome::Abort
            }
        );
        assert_eq!(
            shard.step(commit(8)),
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Abort,
                revision: lock
            }
        );
        assert!(shard.kv.get(b"b").is_none());
        assert!(shard.kv.shard_txns().prepared().is_empty());
        // The coordinator shard need not be a participant: only the decision is recorded.
        assert!(matches!(
            shard.step(commit(9)),
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Commit,
                ..
            }
        ));
        assert_eq!(shard.kv.revision(), lock);
    }

    #[test]
    fn a_second_run_of_a_client_request_meets_the_first_runs_commit_and_applies_nothing() {
        let mut shard = Shard::new();
        // The client's request: session (client 77, seq 5), whichever member coordinates it.
        let request = Session {
            client_id: 77,
            seq: 5,
            first_unacked: 5,
        };
        let commit_for = |txn| {
            WriteOp::Shard(ShardTxnOp::CommitFor {
                txn,
                participants: vec![1, 2],
                succeeded: true,
                results: vec![TxnOpResult::Put],
            })
        };
        shard.lock(prepare(7, &[], &[("a", "1")]));
        let first = shard.write_as(request, commit_for(7)).unwrap();
        let revision = shard.kv.revision();
        assert_eq!(
            first,
            WriteResult::Shard(ShardTxnResult::CommittedFor {
                txn: 7,
                revision,
                succeeded: true,
                results: vec![TxnOpResult::Put],
            })
        );
        // The reply was lost; the client's retry ran as transaction 8, which prepared the same
        // write: its commit is answered with run 7's, and 8's part stays prepared (to abort).
        let lock = shard.lock(prepare(8, &[], &[("b", "2")]));
        assert_eq!(shard.write_as(request, commit_for(8)).unwrap(), first);
        assert_eq!(shard.kv.revision(), lock, "8's commit applied nothing");
        assert!(shard.kv.get(b"b").is_none());
        assert_eq!(shard.kv.shard_txns().decision(8), None);
        assert!(shard.kv.shard_txns().prepared().contains_key(&8));
        shard.step(decide(8, ShardOutcome::Abort));
        // A run that aborted closes the request: a later run's commit applies nothing.
        let other = Session {
            seq: 6,
            first_unacked: 5,
            ..request
        };
        let closed = shard
            .write_as(other, WriteOp::Shard(ShardTxnOp::AbortFor { txn: 9 }))
            .unwrap();
        assert_eq!(
            closed,
            WriteResult::Shard(ShardTxnResult::Decision {
                outcome: ShardOutcome::Abort
            })
        );
        shard.lock(prepare(10, &[], &[("c", "3")]));
        assert_eq!(shard.write_as(other, commit_for(10)).unwrap(), closed);
        assert!(shard.kv.get(b"c").is_none());
        assert_eq!(shard.kv.shard_txns().decision(10), None);
        // And an abort after the commit is answered with the commit.
        assert_eq!(
            shard
                .write_as(request, WriteOp::Shard(ShardTxnOp::AbortFor { txn: 11 }))
                .unwrap(),
            first
        );
        assert_eq!(shard.kv.shard_txns().decision(11), None);
    }

    #[test]
    fn a_checked_read_of_a_key_a_prepared_transaction_writes_is_refused_until_its_decide() {
        let mut shard = Shard::new();
        let rc = shard.put("c", "0");
        shard.put("d", "old");
        shard.lock(prepare(7, &[("c", rc)], &[("d", "new")]));
        fn locked<T>(key: &str) -> Result<T, ServerError> {
            Err(ServerError::Locked {
                key: b(key),
                txn: 7,
            })
        }
        // "d" is written: its committed value may be stale once the transaction is decided.
        assert_eq!(shard.kv.get_checked(&b("d")), locked("d"));
        assert_eq!(shard.kv.get(b"d").unwrap().value, b("old"));
        // "c" is only compared: it is not about to change, and is read as usual.
        assert_eq!(
            shard.kv.get_checked(&b("c")).unwrap().unwrap().value,
            b("0")
        );
        assert_eq!(
            shard
                .kv
                .scan_checked(b"a", None, 10)
                .map(|(kvs, _)| kvs.len()),
            locked("d")
        );
        assert_eq!(
            shard
                .kv
                .scan_checked(b"a", Some(b"d"), 10)
                .map(|(kvs, _)| kvs.len()),
            Ok(1)
        );
        assert_eq!(
            shard
                .kv
                .scan_checked(b"e", Some(b"a"), 10)
                .map(|(kvs, _)| kvs.len()),
            Ok(0)
        );
        // A key not yet there but about to be put is held back too.
        shard.lock(prepare(8, &[], &[("e", "1")]));
        assert_eq!(
            shard.kv.get_checked(&b("e")),
            Err(ServerError::Locked {
                key: b("e"),
                txn: 8
            })
        );
        shard.step(decide(7, ShardOutcome::Commit));
        assert_eq!(
            shard.kv.get_checked(&b("d")).unwrap().unwrap().value,
            b("new")
        );
        shard.step(decide(8, ShardOutcome::Abort));
        assert_eq!(shard.kv.get_checked(&b("e")), Ok(None));
    }

    #[test]
    fn prepared_transactions_locks_and_decisions_survive_a_snapshot() {
        let mut shard = Shard::new();
        shard.put("a", "1");
        shard.lock(prepare(7, &[("a", 1)], &[("a", "2")]));
        shard.step(ShardTxnOp::Decision {
            txn: 8,
            participants: vec![1, 2],
            outcome: ShardOutcome::Commit,
        });
        shard.step(decide(9, ShardOutcome::Abort));
        let data = shard.kv.snapshot().unwrap();
        let mut restored = KvStore::restore(&data, 100).unwrap();
        assert_eq!(restored, shard.kv);
        assert_eq!(restored.shard_txns().locked([&b("a")]), Some((b("a"), 7)));
        assert_eq!(
            restored.shard_txns().decision(8),
            Some(ShardOutcome::Commit)
        );
        shard.kv = restored.clone();
        assert!(matches!(
            shard.step(decide(7, ShardOutcome::Commit)),
            ShardTxnResult::Decided {
                outcome: ShardOutcome::Commit,
                ..
            }
        ));
        assert_eq!(shard.kv.get(b"a").unwrap().value, b("2"));
        // A version 1 snapshot (before cross-shard transactions) still restores, empty of them.
        restored.shard_txns = ShardTxns::default();
        let v1 = postcard::to_allocvec(&(1u32, &restored)).unwrap();
        let old = KvStore::restore(&v1, 100).unwrap();
        assert_eq!(old, restored);
        assert!(
            KvStore::restore(&postcard::to_allocvec(&(5u32, &restored)).unwrap(), 100).is_err()
        );
    }

    fn stage(txn: u64, expected: &[(&str, u64)], key: &str, origin: Session) -> WriteOp {
        WriteOp::Shard(ShardTxnOp::StageFor {
            txn,
            coordinator: 1,
            participants: vec![1, 2],
            expected: expected
                .iter()
                .map(|(k, r)| ExpectedRevision {
                    key: b(k),
                    mod_revision: *r,
                })
                .collect(),
            writes: vec![TxnOp::Put {
                key: b(key),
                value: b("1"),
            }],
            succeeded: true,
            results: vec![TxnOpResult::Put],
            origin: Some(origin),
        })
    }

    fn client(seq: u64) -> Session {
        Session {
            client_id: 77,
            seq,
            first_unacked: 1,
        }
    }

    fn shard_result(r: Result<WriteResult, ServerError>) -> ShardTxnResult {
        match r {
            Ok(WriteResult::Shard(result)) => result,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stage_for_prepares_and_stages_or_aborts_and_a_repeat_is_answered_alike() {
        let mut shard = Shard::new();
        let rc = shard.put("c", "0");
        let before = shard.kv.revision();
        // Its part holds: staged, the keys locked, nothing applied, no decision yet; answered
        // with its lock revision.
        let staged =
            shard_result(shard.write_as(client(1), stage(7, &[("c", rc)], "a", client(1))));
        assert_eq!(
            staged,
            ShardTxnResult::Staged {
                txn: 7,
                revision: before + 1
            }
        );
        assert_eq!(shard.kv.revision(), before + 1);
        assert!(shard.kv.get(b"a").is_none());
        assert_eq!(shard.kv.shard_txns().decision(7), None);
        assert!(shard.kv.shard_txns().staged().contains_key(&7));
        assert_eq!(
            shard.kv.get_checked(&b("a")),
            Err(ServerError::Locked {
                key: b("a"),
                txn: 7
            })
        );
        // A repeat (the same session, or another one) changes nothing.
        assert_eq!(
            shard_result(shard.write_as(client(1), stage(7, &[("c", rc)], "a", client(1)))),
            staged
        );
        assert_eq!(
            shard_result(shard.write_as(client(9), stage(7, &[("c", rc)], "a", client(1)))),
            staged
        );
        // A key changed since read: ABORT recorded, nothing staged or locked.
        let no =
            shard_result(shard.write_as(client(2), stage(8, &[("c", rc + 5)], "b", client(2))));
        assert!(
            matches!(
                no,
                ShardTxnResult::Committed {
                    outcome: ShardOutcome::Abort,
                    ..
                }
            ),
            "{no:?}"
        );
        assert_eq!(shard.kv.shard_txns().decision(8), Some(ShardOutcome::Abort));
        assert!(!shard.kv.shard_txns().staged().contains_key(&8));
        assert_eq!(shard.kv.shard_txns().locked([&b("b")]), None);
        // A key locked by the staged transaction: no as well.
        let locked = shard_result(shard.write_as(client(3), stage(9, &[], "a", client(3))));
        assert!(matches!(
            locked,
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Abort,
                ..
            }
        ));
    }

    #[test]
    fn settling_a_staged_transaction_first_wins_decides_its_part_and_overwrites_the_session() {
        let mut shard = Shard::new();
        shard
            .write_as(client(1), stage(7, &[], "a", client(1)))
            .unwrap();
        // A retried run of the same request meets the staged answer under the session.
        assert_eq!(
            shard_result(shard.write_as(client(1), stage(70, &[], "x", client(1)))),
            ShardTxnResult::Staged {
                txn: 7,
                revision: 1
            }
        );
        let commit = shard.step(ShardTxnOp::Commit {
            txn: 7,
            participants: vec![1, 2],
        });
        let revision = shard.kv.revision();
        assert_eq!(
            commit,
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Commit,
                revision
            }
        );
        assert_eq!(shard.kv.get(b"a").unwrap().value, b("1"));
        assert!(shard.kv.shard_txns().staged().is_empty());
        assert_eq!(shard.kv.shard_txns().locked([&b("a")]), None);
        // The revision every run is answered with is its lock revision (1 here).
        let final_answer = ShardTxnResult::CommittedFor {
            txn: 7,
            revision: 1,
            succeeded: true,
            results: vec![TxnOpResult::Put],
        };
        // The session now holds the final answer: a later run's ops meet it.
        assert_eq!(
            shard_result(
                shard.write_as(client(1), WriteOp::Shard(ShardTxnOp::AbortFor { txn: 70 }))
            ),
            final_answer
        );
        // A later abort does not undo it.
        assert_eq!(
            shard.step(ShardTxnOp::Settle {
                txn: 7,
                participants: vec![1, 2],
                outcome: ShardOutcome::Abort
            }),
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Commit,
                revision
            }
        );
        // Settled ABORT: the part dropped, the session answers abort, a late commit is refused.
        shard
            .write_as(client(2), stage(8, &[], "b", client(2)))
            .unwrap();
        let abort = ShardTxnResult::Committed {
            outcome: ShardOutcome::Abort,
            revision: revision + 1, // 8's lock revision; the abort applies nothing
        };
        assert_eq!(
            shard.step(ShardTxnOp::Settle {
                txn: 8,
                participants: vec![1, 2],
                outcome: ShardOutcome::Abort
            }),
            abort
        );
        assert!(shard.kv.get(b"b").is_none());
        assert_eq!(shard.kv.shard_txns().locked([&b("b")]), None);
        assert_eq!(
            shard_result(
                shard.write_as(client(2), WriteOp::Shard(ShardTxnOp::AbortFor { txn: 80 }))
            ),
            abort
        );
        assert_eq!(
            shard.step(ShardTxnOp::Commit {
                txn: 8,
                participants: vec![1, 2]
            }),
            abort
        );
        assert!(shard.kv.get(b"b").is_none());
        // A settle COMMIT (a resolver's) works as the coordinator's COMMIT does.
        shard
            .write_as(client(3), stage(9, &[], "d", client(3)))
            .unwrap();
        assert!(matches!(
            shard.step(ShardTxnOp::Settle {
                txn: 9,
                participants: vec![1, 2],
                outcome: ShardOutcome::Commit
            }),
            ShardTxnResult::Committed {
                outcome: ShardOutcome::Commit,
                ..
            }
        ));
        assert_eq!(shard.kv.get(b"d").unwrap().value, b("1"));
        assert!(matches!(
            shard_result(shard.write_as(client(3), stage(9, &[], "d", client(3)))),
            ShardTxnResult::CommittedFor { txn: 9, .. }
        ));
    }

    #[test]
    fn resolve_of_a_staged_transaction_is_in_doubt_not_presumed_aborted() {
        let mut shard = Shard::new();
        shard
            .write_as(client(1), stage(7, &[], "a", client(1)))
            .unwrap();
        assert_eq!(
            shard.step(ShardTxnOp::Resolve { txn: 7 }),
            ShardTxnResult::InDoubt {
                participants: vec![1, 2]
            }
        );
        assert_eq!(shard.kv.shard_txns().decision(7), None);
        // Once settled, the decision is answered as usual.
        shard.step(ShardTxnOp::Commit {
            txn: 7,
            participants: vec![1, 2],
        });
        assert_eq!(
            shard.step(ShardTxnOp::Resolve { txn: 7 }),
            ShardTxnResult::Decision {
                outcome: ShardOutcome::Commit
            }
        );
        // Not staged: presumed abort as before.
        assert_eq!(
            shard.step(ShardTxnOp::Resolve { txn: 8 }),
            ShardTxnResult::Decision {
                outcome: ShardOutcome::Abort
            }
        );
    }

    #[test]
    fn a_fence_answers_prepared_or_leaves_a_tombstone_that_makes_a_later_prepare_vote_no() {
        let mut shard = Shard::new();
        shard.lock(prepare(7, &[], &[("a", "1")]));
        assert_eq!(
            shard.step(ShardTxnOp::Fence { txn: 7 }),
            ShardTxnResult::Fenced { prepared: true }
        );
        // Still prepared: the fence changed nothing.
        assert!(shard.kv.shard_txns().prepared().contains_key(&7));
        shard.step(decide(7, ShardOutcome::Commit));
        assert_eq!(
            shard.step(ShardTxnOp::Fence { txn: 7 }),
            ShardTxnResult::Fenced { prepared: true }
        );
        // Never prepared: "not prepared", and a prepare that straggles in votes no.
        assert_eq!(
            shard.step(ShardTxnOp::Fence { txn: 8 }),
            ShardTxnResult::Fenced { prepared: false }
        );
        assert_eq!(
            shard.step(prepare(8, &[], &[("b", "1")])),
            ShardTxnResult::Vote {
                no: Some(NoVote::Finished(ShardOutcome::Abort))
            }
        );
        assert_eq!(shard.kv.shard_txns().locked([&b("b")]), None);
        // Aborted here: not prepared.
        shard.lock(prepare(9, &[], &[("c", "1")]));
        shard.step(decide(9, ShardOutcome::Abort));
        assert_eq!(
            shard.step(ShardTxnOp::Fence { txn: 9 }),
            ShardTxnResult::Fenced { prepared: false }
        );
    }

    #[test]
    fn staged_transactions_survive_a_snapshot_and_a_version_3_snapshot_restores_none() {
        let mut shard = Shard::new();
        shard
            .write_as(client(1), stage(7, &[], "a", client(1)))
            .unwrap();
        let data = shard.kv.snapshot().unwrap();
        let restored = KvStore::restore(&data, 100).unwrap();
        assert_eq!(restored, shard.kv);
        assert!(restored.shard_txns().staged().contains_key(&7));
        shard.kv = restored;
        assert_eq!(
            shard.step(ShardTxnOp::Resolve { txn: 7 }),
            ShardTxnResult::InDoubt {
                participants: vec![1, 2]
            }
        );
        let v3 = postcard::to_allocvec(&(3u32, &shard.kv, &shard.kv.shard_txns, &shard.kv.split))
            .unwrap();
        let old = KvStore::restore(&v3, 100).unwrap();
        assert!(old.shard_txns().staged().is_empty());
        assert!(old.shard_txns().prepared().contains_key(&7));
    }
}
