//! Turning a `Txn` (compares, success ops, failure ops) over keys of several shards into what
//! each shard must prepare, once the coordinator has read every key the transaction names.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::proto::xtxn::ExpectedRevision;
use crate::proto::{Compare, KeyValue, TxnOp, TxnOpResult};

/// A transaction as the client sent it (etcd's `Txn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRequest {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Ops when they all hold.
    pub success: Vec<TxnOp>,
    /// Ops otherwise.
    pub failure: Vec<TxnOp>,
}

impl TxnRequest {
    /// Every key the transaction names, once each, in key order.
    pub fn keys(&self) -> BTreeSet<Bytes> {
        self.compared_and(|_| true)
    }

    /// The keys whose current state the transaction depends on: compared, read or deleted
    /// (a delete reports whether the key existed) in either branch. A key only put needs no
    /// read and no validation — its lock at PREPARE is enough.
    pub fn read_keys(&self) -> BTreeSet<Bytes> {
        self.compared_and(|op| !matches!(op, TxnOp::Put { .. }))
    }

    /// The compared keys and those of the ops (either branch) that `op` selects.
    fn compared_and(&self, op: impl Fn(&TxnOp) -> bool) -> BTreeSet<Bytes> {
        self.compares
            .iter()
            .map(|c| c.key.clone())
            .chain(
                self.success
                    .iter()
                    .chain(&self.failure)
                    .filter(|o| op(o))
                    .map(|o| o.key().clone()),
            )
            .collect()
    }

    /// The groups of every key named, with `locate` mapping a key to its group.
    pub fn groups(&self, locate: impl Fn(&[u8]) -> u64) -> BTreeSet<u64> {
        self.keys().iter().map(|k| locate(k)).collect()
    }

    /// The coordinator group: the group of the transaction's first key (first compare, else the
    /// first op of either branch).
    pub fn coordinator(&self, locate: impl Fn(&[u8]) -> u64) -> Option<u64> {
        let first = self
            .compares
            .first()
            .map(|c| &c.key)
            .or_else(|| self.success.first().map(TxnOp::key))
            .or_else(|| self.failure.first().map(TxnOp::key))?;
        Some(locate(first))
    }
}

/// What one shard prepares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardPart {
    /// Keys of this shard the transaction read or compared, as read.
    pub expected: Vec<ExpectedRevision>,
    /// The writes of the branch that runs, on this shard, in order.
    pub writes: Vec<TxnOp>,
}

/// The transaction evaluated against the values read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Whether every compare held (the success branch runs).
    pub succeeded: bool,
    /// What each op of that branch does, as the client will see it if the transaction commits.
    pub results: Vec<TxnOpResult>,
    /// The participants: every shard with a compared key or a key of the branch that runs.
    pub parts: BTreeMap<u64, ShardPart>,
}

impl Plan {
    /// Evaluates `request` against `reads` (every key of [`TxnRequest::read_keys`]; `None`:
    /// absent; a key not read is only put, and not validated). A `Get` after a
    /// write of the same branch sees that write with `mod_revision` 0: the revision is assigned
    /// by the key's shard at commit.
    pub fn new(
        request: &TxnRequest,
        reads: &BTreeMap<Bytes, Option<KeyValue>>,
        locate: impl Fn(&[u8]) -> u64,
    ) -> Plan {
        let read = |key: &Bytes| reads.get(key).cloned().flatten();
        let succeeded = request
            .compares
            .iter()
            .all(|c| c.holds(read(&c.key).as_ref()));
        let branch = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut overlay: BTreeMap<Bytes, Option<KeyValue>> = BTreeMap::new();
        let mut results = Vec::with_capacity(branch.len());
        let mut parts: BTreeMap<u64, ShardPart> = BTreeMap::new();
        for op in branch {
            let key = op.key();
            let current = overlay.get(key).cloned().unwrap_or_else(|| read(key));
            match op {
                TxnOp::Put { value, .. } => {
                    let (create_revision, version) = current
                        .as_ref()
                        .map_or((0, 0), |kv| (kv.create_revision, kv.version));
                    overlay.insert(
                        key.clone(),
                        Some(KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision,
                            mod_revision: 0,
                            version: version + 1,
                        }),
                    );
                    results.push(TxnOpResult::Put);
                }
                TxnOp::Delete { .. } => {
                    overlay.insert(key.clone(), None);
                    results.push(TxnOpResult::Delete {
                        deleted: current.is_some(),
                    });
                }
                TxnOp::Get { .. } => results.push(TxnOpResult::Get { kv: current }),
            }
            let part = parts.entry(locate(key)).or_default();
            if !matches!(op, TxnOp::Get { .. }) {
                part.writes.push(op.clone());
            }
        }
        let validated: BTreeSet<&Bytes> = request
            .compares
            .iter()
            .map(|c| &c.key)
            .chain(branch.iter().map(TxnOp::key))
            .collect();
        for key in validated.into_iter().filter(|k| reads.contains_key(*k)) {
            parts
                .entry(locate(key))
                .or_default()
                .expected
                .push(ExpectedRevision {
                    key: key.clone(),
                    mod_revision: read(key).map_or(0, |kv| kv.mod_revision),
                });
        }
        Plan {
            succeeded,
            results,
            parts,
        }
    }
}
