//! The replicated key-value state machine: an ordered map of byte keys with revisions, client
//! sessions for exactly-once writes, and the member address book.
//!
//! Everything here is deterministic: the same commands applied in the same order give the same
//! state and the same results on every member (no clocks, no randomness, ordered maps only). Log
//! entries carry a [`Batch`] of [`Command`]s: the driver packs many client writes into one entry
//! (proposal batching), and each command carries its session so results can be matched back.
//!
//! Invariants: `revision` counts state-changing writes (a cross-shard prepare's locks count:
//! its *lock revision* changes no key, see `shard_txn`) and only grows; every pair's
//! `create_revision <= mod_revision <= revision`; a session never holds results below its floor.
//! Cross-shard transaction steps ([`shard_txn`]) are writes too; a plain write to a key a
//! prepared transaction locks is refused with [`ServerError::Locked`], and so is a checked read
//! ([`KvStore::get_checked`]) of a key one writes.

mod shard_txn;
mod split;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Bound;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::proto::{KeyValue, ServerError, Session, TxnOp, TxnOpResult, WriteOp, WriteResult};
pub use shard_txn::{PreparedTxn, ShardTxns, StagedTxn, MAX_FINISHED_TXNS};
pub use split::SplitState;

/// Results remembered per client at most; the oldest is forgotten beyond this (a client with more
/// writes in flight than this under one id loses exactly-once for the oldest).
pub const MAX_RESULTS_PER_SESSION: usize = 4096;

/// One replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A client write.
    Write {
        /// Which client write.
        session: Session,
        /// The write.
        op: WriteOp,
    },
    /// Records where member `id` listens (proposed just before the membership change adding it).
    SetMemberAddr {
        /// Member.
        id: u64,
        /// Address for peers and clients.
        addr: SocketAddr,
    },
}

/// The payload of one log entry: commands applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The commands.
    pub commands: Vec<Command>,
}

impl Batch {
    /// Encodes for the log.
    pub fn encode(&self) -> Result<Bytes, KvError> {
        // Sized up front: one allocation, no regrowth copies.
        let hint: usize = self
            .commands
            .iter()
            .map(|command| match command {
                Command::Write { op, .. } => {
                    let keys: usize = op.keys().iter().map(|k| k.len() + 8).sum();
                    let values: usize = op.values().iter().map(|v| v.len()).sum();
                    keys + values + 48
                }
                Command::SetMemberAddr { .. } => 48,
            })
            .sum();
        postcard::to_extend(self, Vec::with_capacity(hint + 8))
            .map(Bytes::from)
            .map_err(|e| KvError::Encode(e.to_string()))
    }

    /// Decodes an entry's payload.
    pub fn decode(data: &[u8]) -> Result<Self, KvError> {
        postcard::from_bytes(data).map_err(|e| KvError::Decode(e.to_string()))
    }
}

/// Failures of encoding, decoding or restoring state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A command or snapshot could not be encoded.
    #[error("encoding state: {0}")]
    Encode(String),
    /// An entry or snapshot does not decode: the log or snapshot is corrupt or from another version.
    #[error("decoding state: {0}")]
    Decode(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    value: Bytes,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientSession {
    /// Results for sequence numbers `>= floor`.
    results: BTreeMap<u64, WriteResult>,
    /// Sequence numbers below this were acknowledged by the client (or forgotten).
    floor: u64,
    /// Log index of the latest write, for least-recently-used eviction.
    last_active: u64,
}

/// The state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    data: BTreeMap<Bytes, Stored>,
    revision: u64,
    sessions: BTreeMap<u64, ClientSession>,
    members: BTreeMap<u64, SocketAddr>,
    max_sessions: u64,
    /// `(last_active, client_id)` of every session; derived, rebuilt on restore.
    #[serde(skip)]
    by_activity: BTreeSet<(u64, u64)>,
    /// Cross-shard transactions prepared here and decided here; snapshotted after the rest
    /// (layout version 2).
    #[serde(skip)]
    shard_txns: ShardTxns,
    /// Range splits (layout version 3, after the transaction state).
    #[serde(skip)]
    split: SplitState,
    /// The meta group's bootstrap map (configuration, not replicated state).
    #[serde(skip)]
    base_map: Option<std::sync::Arc<crate::proto::ShardMap>>,
    /// The upper half of a split just applied, until the node takes it.
    #[serde(skip)]
    split_off: Option<Box<(crate::proto::SplitPlan, KvStore)>>,
}

/// Snapshot layout version, the first field of every snapshot: 2 appends the cross-shard
/// transaction state to version 1's layout, 3 the split state, 4 the staged cross-shard
/// transactions (versions 1 to 3 still restore, with none staged).
const SNAPSHOT_VERSION: u32 = 4;

impl KvStore {
    /// An empty store that remembers at most `max_sessions` client sessions.
    pub fn new(max_sessions: usize) -> Self {
        KvStore {
            max_sessions: max_sessions.max(1) as u64,
            ..KvStore::default()
        }
    }

    /// The store revision (number of state-changing writes, lock revisions included).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Number of client sessions remembered.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Cross-shard transaction state: prepared transactions, locks, decisions.
    pub fn shard_txns(&self) -> &ShardTxns {
        &self.shard_txns
    }

    /// Member addresses recorded through the log.
    pub fn member_addrs(&self) -> &BTreeMap<u64, SocketAddr> {
        &self.members
    }

    fn kv(key: &Bytes, stored: &Stored) -> KeyValue {
        KeyValue {
            key: key.clone(),
            value: stored.value.clone(),
            create_revision: stored.create_revision,
            mod_revision: stored.mod_revision,
            version: stored.version,
        }
    }

    /// The pair at `key`.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.data
            .get_key_value(key)
            .map(|(key, stored)| Self::kv(key, stored))
    }

    /// The pair at `key` for a linearizable or sequential read: refused with
    /// [`ServerError::Locked`] while a prepared cross-shard transaction writes `key` (it may be
    /// decided already, its client answered; the read waits for the DECIDE — see [`shard_txn`]).
    pub fn get_checked(&self, key: &Bytes) -> Result<Option<KeyValue>, ServerError> {
        match self.shard_txns.writer_of(key) {
            Some(txn) => Err(ServerError::Locked {
                key: key.clone(),
                txn,
            }),
            None => Ok(self.get(key)),
        }
    }

    /// [`KvStore::scan`] for a linearizable or sequential read: refused with
    /// [`ServerError::Locked`] while a prepared cross-shard transaction writes a key of the range.
    pub fn scan_checked(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, bool), ServerError> {
        match self.shard_txns.writer_in(start, end) {
            Some((key, txn)) => Err(ServerError::Locked { key, txn }),
            None => Ok(self.scan(start, end, limit)),
        }
    }

    /// Pairs with `start <= key < end` (no end: to the last key), at most `limit`; the flag says
    /// whether more pairs were left out.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> (Vec<KeyValue>, bool) {
        let upper = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        if let Some(end) = end {
            if end <= start {
                return (Vec::new(), false);
            }
        }
        let mut out = Vec::new();
        let mut range = self.data.range::<[u8], _>((Bound::Included(start), upper));
        for (key, stored) in range.by_ref() {
            if out.len() == limit {
                return (out, true);
            }
            out.push(Self::kv(key, stored));
        }
        (out, false)
    }

    /// Applies one command from the log entry at `index`. Writes return their result (the cached
    /// one for a retried session sequence number); other commands return `None`.
    pub fn apply(
        &mut self,
        command: &Command,
        index: u64,
    ) -> Option<Result<WriteResult, ServerError>> {
        match command {
            Command::Write { session, op } => Some(self.apply_write(*session, op, index)),
            Command::SetMemberAddr { id, addr } => {
                self.members.insert(*id, *addr);
                None
            }
        }
    }

    fn apply_write(
        &mut self,
        session: Session,
        op: &WriteOp,
        index: u64,
    ) -> Result<WriteResult, ServerError> {
        if session.client_id == 0 || session.seq == 0 {
            return Err(ServerError::InvalidSession(
                "client id and sequence number must be non-zero".into(),
            ));
        }
        let client = self.sessions.entry(session.client_id).or_default();
        self.by_activity
            .remove(&(client.last_active, session.client_id));
        client.last_active = index;
        self.by_activity.insert((index, session.client_id));
        if session.first_unacked > client.floor {
            client.floor = session.first_unacked;
            // Drop the results the client no longer asks for, oldest first (no new tree).
            while let Some(oldest) = client.results.first_entry() {
                if *oldest.key() >= client.floor {
                    break;
                }
                oldest.remove();
            }
        }
        if session.seq < client.floor {
            return Err(ServerError::SessionExpired {
                client_id: session.client_id,
                seq: session.seq,
            });
        }
        if let Some(result) = client.results.get(&session.seq) {
            return Ok(result.clone());
        }
        let refused = match op {
            WriteOp::SplitMap { .. } | WriteOp::SplitRange(_) => None,
            _ => self
                .check_owned(op.keys().into_iter().map(|k| &k[..]))
                .err(),
        };
        if let Some(error) = refused {
            // Refused, not remembered: the client retries at the group that owns the key.
            self.evict_sessions();
            return Err(error);
        }
        let result = match op {
            WriteOp::Shard(step) => WriteResult::Shard(ShardTxns::apply(self, step, index)),
            WriteOp::SplitMap { key } => match self.record_split(key) {
                Ok(plan) => WriteResult::Split(plan),
                Err(error) => {
                    self.evict_sessions();
                    return Err(ServerError::Split(error));
                }
            },
            WriteOp::SplitRange(plan) => match self.apply_split_range(plan) {
                Ok(()) => WriteResult::Split(plan.clone()),
                Err(error) => {
                    self.evict_sessions();
                    return Err(error);
                }
            },
            _ => {
                if let Some((key, txn)) = self.shard_txns.locked(op.keys()) {
                    // Refused, not remembered: the retry of this sequence number runs anew.
                    self.evict_sessions();
                    return Err(ServerError::Locked { key, txn });
                }
                Self::execute(&mut self.data, &mut self.revision, op)
            }
        };
        let client = self
            .sessions
            .get_mut(&session.client_id)
            .expect("session created above");
        client.results.insert(session.seq, result.clone());
        if client.results.len() > MAX_RESULTS_PER_SESSION {
            if let Some((&oldest, _)) = client.results.iter().next() {
                client.results.remove(&oldest);
                client.floor = oldest + 1;
            }
        }
        self.evict_sessions();
        Ok(result)
    }

    /// Forgets the least recently active sessions beyond the limit.
    fn evict_sessions(&mut self) {
        while self.sessions.len() as u64 > self.max_sessions {
            let Some((_, client_id)) = self.by_activity.pop_first() else {
                break;
            };
            self.sessions.remove(&client_id);
        }
    }

    fn execute(
        data: &mut BTreeMap<Bytes, Stored>,
        revision: &mut u64,
        op: &WriteOp,
    ) -> WriteResult {
        match op {
            WriteOp::Put { key, value } => {
                *revision += 1;
                Self::put(data, *revision, key, value);
                WriteResult::Put {
                    revision: *revision,
                }
            }
            WriteOp::Delete { key } => {
                let deleted = data.remove(key).is_some();
                if deleted {
                    *revision += 1;
                }
                WriteResult::Delete {
                    revision: *revision,
                    deleted,
                }
            }
            WriteOp::Cas { key, expected, new } => {
                let current = data.get(key);
                let matches = match (current, expected) {
                    (None, None) => true,
                    (Some(stored), Some(expected)) => stored.value == *expected,
                    _ => false,
                };
                if matches {
                    *revision += 1;
                    Self::put(data, *revision, key, new);
                    WriteResult::Cas {
                        succeeded: true,
                        revision: *revision,
                        current: None,
                    }
                } else {
                    WriteResult::Cas {
                        succeeded: false,
                        revision: *revision,
                        current: current.map(|stored| Self::kv(key, stored)),
                    }
                }
            }
            WriteOp::Txn {
                compares,
                success,
                failure,
            } => {
                let succeeded = compares.iter().all(|c| {
                    let current = data.get(&c.key).map(|stored| Self::kv(&c.key, stored));
                    c.holds(current.as_ref())
                });
                let branch = if succeeded { success } else { failure };
                // One revision for the whole transaction, taken only if it changes something.
                let txn_revision = *revision + 1;
                let mut changed = false;
                let results = branch
                    .iter()
                    .map(|op| match op {
                        TxnOp::Put { key, value } => {
                            Self::put(data, txn_revision, key, value);
                            changed = true;
                            TxnOpResult::Put
                        }
                        TxnOp::Delete { key } => {
                            let deleted = data.remove(key).is_some();
                            changed |= deleted;
                            TxnOpResult::Delete { deleted }
                        }
                        TxnOp::Get { key } => TxnOpResult::Get {
                            kv: data.get(key).map(|stored| Self::kv(key, stored)),
                        },
                    })
                    .collect();
                if changed {
                    *revision = txn_revision;
                }
                WriteResult::Txn {
                    succeeded,
                    revision: *revision,
                    results,
                }
            }
            WriteOp::Shard(_) | WriteOp::SplitMap { .. } | WriteOp::SplitRange(_) => {
                unreachable!("cross-shard steps and splits are applied by apply_write")
            }
        }
    }

    fn put(data: &mut BTreeMap<Bytes, Stored>, revision: u64, key: &Bytes, value: &Bytes) {
        // One search of the tree for new and existing keys alike (a new key is the common case
        // of a growing store; `get_mut` then `insert` searched twice).
        match data.entry(key.clone()) {
            Entry::Occupied(mut entry) => {
                let stored = entry.get_mut();
                stored.value = value.clone();
                stored.mod_revision = revision;
                stored.version += 1;
            }
            Entry::Vacant(entry) => {
                entry.insert(Stored {
                    value: value.clone(),
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                });
            }
        }
    }

    /// Serializes the whole state (pairs, revision, sessions, member addresses).
    pub fn snapshot(&self) -> Result<Bytes, KvError> {
        postcard::to_allocvec(&(
            SNAPSHOT_VERSION,
            self,
            &self.shard_txns,
            &self.split,
            &self.shard_txns.staged,
        ))
        .map(Bytes::from)
        .map_err(|e| KvError::Encode(e.to_string()))
    }

    /// Replaces the state with a snapshot's. Empty data is the empty state (a group's bootstrap
    /// snapshot). `max_sessions` is this member's limit (not replicated state).
    pub fn restore(data: &[u8], max_sessions: usize) -> Result<Self, KvError> {
        if data.is_empty() {
            return Ok(KvStore::new(max_sessions));
        }
        let decode = |e: postcard::Error| KvError::Decode(e.to_string());
        let (version, rest): (u32, &[u8]) = postcard::take_from_bytes(data).map_err(decode)?;
        let mut store = match version {
            1 => postcard::from_bytes::<KvStore>(rest).map_err(decode)?,
            2 => {
                let (mut store, shard_txns): (KvStore, ShardTxns) =
                    postcard::from_bytes(rest).map_err(decode)?;
                store.shard_txns = shard_txns;
                store
            }
            3 => {
                let (mut store, shard_txns, split): (KvStore, ShardTxns, SplitState) =
                    postcard::from_bytes(rest).map_err(decode)?;
                store.shard_txns = shard_txns;
                store.split = split;
                store
            }
            SNAPSHOT_VERSION => {
                type Layout = (KvStore, ShardTxns, SplitState, BTreeMap<u64, StagedTxn>);
                let (mut store, mut shard_txns, split, staged): Layout =
                    postcard::from_bytes(rest).map_err(decode)?;
                shard_txns.staged = staged;
                store.shard_txns = shard_txns;
                store.split = split;
                store
            }
            _ => {
                return Err(KvError::Decode(format!(
                    "snapshot version {version}, this build reads 1 to {SNAPSHOT_VERSION}"
                )))
            }
        };
        store.by_activity = store
            .sessions
            .iter()
            .map(|(&id, session)| (session.last_active, id))
            .collect();
        store.max_sessions = max_sessions.max(1) as u64;
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(key: &str, value: &str) -> WriteOp {
        WriteOp::Put {
            key: b(key),
            value: b(value),
        }
    }

    fn session(client_id: u64, seq: u64) -> Session {
        Session {
            client_id,
            seq,
            first_unacked: 1,
        }
    }

    fn write(kv: &mut KvStore, s: Session, op: WriteOp, index: u64) -> WriteResult {
        kv.apply(&Command::Write { session: s, op }, index)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_transaction_runs_one_branch_atomically_at_one_revision() {
        use crate::proto::{Compare, CompareOp, CompareTarget};
        let mut kv = KvStore::new(10);
        write(&mut kv, session(1, 1), put("a", "1"), 1);
        let txn = |compares: Vec<Compare>| WriteOp::Txn {
            compares,
            success: vec![
                TxnOp::Put {
                    key: b("a"),
                    value: b("2"),
                },
                TxnOp::Put {
                    key: b("b"),
                    value: b("new"),
                },
                TxnOp::Get { key: b("b") },
                TxnOp::Delete { key: b("zz") },
            ],
            failure: vec![TxnOp::Get { key: b("a") }],
        };
        let a_is = |value: &str| Compare {
            key: b("a"),
            target: CompareTarget::Value(b(value)),
            op: CompareOp::Equal,
        };
        let b_absent = Compare {
            key: b("b"),
            target: CompareTarget::Version(0),
            op: CompareOp::Equal,
        };
        // Both compares hold: the success branch, every write at revision 2, the get sees the put.
        let WriteResult::Txn {
            succeeded,
            revision,
            results,
        } = write(
            &mut kv,
            session(1, 2),
            txn(vec![a_is("1"), b_absent.clone()]),
            2,
        )
        else {
            panic!("a txn result")
        };
        assert!(succeeded);
        assert_eq!(revision, 2);
        let TxnOpResult::Get { kv: Some(read) } = &results[2] else {
            panic!("{results:?}")
        };
        assert_eq!((read.value.as_ref(), read.mod_revision), (&b"new"[..], 2));
        assert_eq!(results[3], TxnOpResult::Delete { deleted: false });
        let a = kv.get(b"a").expect("a");
        assert_eq!(
            (a.value.as_ref(), a.mod_revision, a.version),
            (&b"2"[..], 2, 2)
        );
        // Now `a` is "2" and `b` exists: the failure branch reads and changes nothing.
        let before = kv.clone();
        let result = write(&mut kv, session(1, 3), txn(vec![a_is("1"), b_absent]), 3);
        let WriteResult::Txn {
            succeeded,
            revision,
            results,
        } = result
        else {
            panic!("a txn result")
        };
        assert!(!succeeded);
        assert_eq!(revision, 2, "a read-only branch takes no revision");
        assert!(matches!(&results[..], [TxnOpResult::Get { kv: Some(_) }]));
        assert_eq!(kv.get(b"a"), before.get(b"a"));
        // A retry of the same session sequence number gets the same answer, applied once.
        let again = write(&mut kv, session(1, 2), txn(vec![]), 4);
        assert!(matches!(
            again,
            WriteResult::Txn {
                succeeded: true,
                revision: 2,
                ..
            }
        ));
        // Ordering compares on revisions; a value compare on an absent key holds only for !=.
        let cmp = |key: &str, target, op| Compare {
            key: b(key),
            target,
            op,
        };
        let absent = kv.get(b"nope");
        assert!(
            cmp("nope", CompareTarget::Value(b("x")), CompareOp::NotEqual).holds(absent.as_ref())
        );
        assert!(!cmp("nope", CompareTarget::Value(b("x")), CompareOp::Less).holds(absent.as_ref()));
        let a = kv.get(b"a");
        assert!(cmp("a", CompareTarget::ModRevision(3), CompareOp::Less).holds(a.as_ref()));
        assert!(cmp("a", CompareTarget::CreateRevision(0), CompareOp::Greater).holds(a.as_ref()));
    }

    #[test]
    fn revisions_count_writes_and_track_each_key() {
        let mut kv = KvStore::new(10);
        assert_eq!(
            write(&mut kv, session(1, 1), put("a", "1"), 1),
            WriteResult::Put { revision: 1 }
        );
        write(&mut kv, session(1, 2), put("b", "1"), 2);
        write(&mut kv, session(1, 3), put("a", "2"), 3);
        let a = kv.get(b"a").unwrap();
        assert_eq!(
            (a.value, a.create_revision, a.mod_revision, a.version),
            (b("2"), 1, 3, 2)
        );
        assert_eq!(kv.revision(), 3);
        assert_eq!(
            write(&mut kv, session(1, 4), WriteOp::Delete { key: b("zz") }, 4),
            WriteResult::Delete {
                revision: 3,
                deleted: false
            }
        );
        assert_eq!(
            write(&mut kv, session(1, 5), WriteOp::Delete { key: b("a") }, 5),
            WriteResult::Delete {
                revision: 4,
                deleted: true
            }
        );
        assert_eq!(kv.get(b"a"), None);
        // Re-created keys start a new life.
        write(&mut kv, session(1, 6), put("a", "3"), 6);
        let a = kv.get(b"a").unwrap();
        assert_eq!((a.create_revision, a.version), (5, 1));
    }

    #[test]
    fn scan_is_ordered_bounded_and_limited() {
        let mut kv = KvStore::new(10);
        for (i, key) in ["d", "a", "c", "b", "e"].iter().enumerate() {
            write(
                &mut kv,
                session(1, i as u64 + 1),
                put(key, "v"),
                i as u64 + 1,
            );
        }
        let keys = |kvs: Vec<KeyValue>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
        let (kvs, more) = kv.scan(b"b", Some(b"e"), 10);
        assert_eq!(keys(kvs), vec![b("b"), b("c"), b("d")]);
        assert!(!more);
        let (kvs, more) = kv.scan(b"", None, 2);
        assert_eq!(keys(kvs), vec![b("a"), b("b")]);
        assert!(more);
        let (kvs, more) = kv.scan(b"e", Some(b"a"), 10);
        assert!(kvs.is_empty() && !more);
        let (kvs, more) = kv.scan(b"a", None, 5);
        assert_eq!(kvs.len(), 5);
        assert!(!more, "exactly `limit` pairs left means nothing more");
    }

    #[test]
    fn cas_sets_only_when_the_expectation_holds() {
        let mut kv = KvStore::new(10);
        let cas = |expected: Option<&str>, new: &str| WriteOp::Cas {
            key: b("k"),
            expected: expected.map(b),
            new: b(new),
        };
        assert!(matches!(
            write(&mut kv, session(1, 1), cas(None, "1"), 1),
            WriteResult::Cas {
                succeeded: true,
                revision: 1,
                ..
            }
        ));
        match write(&mut kv, session(1, 2), cas(None, "2"), 2) {
            WriteResult::Cas {
                succeeded: false,
                current: Some(current),
                revision: 1,
            } => assert_eq!(current.value, b("1")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            write(&mut kv, session(1, 3), cas(Some("1"), "3"), 3),
            WriteResult::Cas {
                succeeded: true,
                ..
            }
        ));
        assert_eq!(kv.get(b"k").unwrap().value, b("3"));
    }

    #[test]
    fn a_retried_write_is_applied_once_and_answered_with_the_original_result() {
        let mut kv = KvStore::new(10);
        let first = write(&mut kv, session(7, 1), put("k", "1"), 1);
        write(&mut kv, session(8, 1), put("k", "other"), 2);
        // The retry of (7, 1) arrives after another client's write: not applied again.
        let retry = write(&mut kv, session(7, 1), put("k", "1"), 3);
        assert_eq!(retry, first);
        assert_eq!(kv.get(b"k").unwrap().value, b("other"));
        assert_eq!(kv.revision(), 2);
    }

    #[test]
    fn acknowledged_results_are_forgotten_and_their_retries_refused() {
        let mut kv = KvStore::new(10);
        write(&mut kv, session(7, 1), put("a", "1"), 1);
        write(&mut kv, session(7, 2), put("b", "1"), 2);
        let acked = Session {
            client_id: 7,
            seq: 3,
            first_unacked: 3,
        };
        write(&mut kv, acked, put("c", "1"), 3);
        let stale = kv.apply(
            &Command::Write {
                session: session(7, 2),
                op: put("b", "again"),
            },
            4,
        );
        assert_eq!(
            stale,
            Some(Err(ServerError::SessionExpired {
                client_id: 7,
                seq: 2
            }))
        );
        assert_eq!(kv.get(b"b").unwrap().value, b("1"));
    }

    #[test]
    fn invalid_sessions_are_refused_without_effect() {
        let mut kv = KvStore::new(10);
        let result = kv.apply(
            &Command::Write {
                session: session(0, 1),
                op: put("a", "1"),
            },
            1,
        );
        assert!(matches!(result, Some(Err(ServerError::InvalidSession(_)))));
        assert!(kv.is_empty());
    }

    #[test]
    fn the_least_recently_active_session_is_evicted_beyond_the_limit() {
        let mut kv = KvStore::new(2);
        write(&mut kv, session(1, 1), put("a", "1"), 1);
        write(&mut kv, session(2, 1), put("a", "2"), 2);
        write(&mut kv, session(1, 2), put("a", "3"), 3);
        write(&mut kv, session(3, 1), put("a", "4"), 4);
        assert_eq!(kv.session_count(), 2);
        // Client 2 was least recently active: its retry is now a new write (documented limit).
        let before = kv.revision();
        write(&mut kv, session(2, 1), put("a", "2"), 5);
        assert_eq!(kv.revision(), before + 1);
        // Client 3 is still remembered (client 1 was evicted when client 2 came back).
        write(&mut kv, session(3, 1), put("a", "4"), 6);
        assert_eq!(kv.revision(), before + 1);
        assert_eq!(kv.session_count(), 2);
    }

    #[test]
    fn snapshot_restores_pairs_sessions_and_members() {
        let mut kv = KvStore::new(10);
        write(&mut kv, session(1, 1), put("a", "1"), 1);
        write(&mut kv, session(2, 1), WriteOp::Delete { key: b("x") }, 2);
        kv.apply(
            &Command::SetMemberAddr {
                id: 4,
                addr: "127.0.0.1:7004".parse().unwrap(),
            },
            3,
        );
        let data = kv.snapshot().unwrap();
        let mut restored = KvStore::restore(&data, 10).unwrap();
        assert_eq!(restored, kv);
        // Sessions survive: the retry is deduplicated after restore.
        write(&mut restored, session(1, 1), put("a", "1"), 4);
        assert_eq!(restored.revision(), 1);
        assert_eq!(restored.member_addrs().len(), 1);
        assert_eq!(KvStore::restore(&[], 10).unwrap(), KvStore::new(10));
        assert!(KvStore::restore(&[0xff, 0xff, 0xff], 10).is_err());
    }

    #[test]
    fn the_same_commands_give_the_same_state_on_every_member() {
        let commands: Vec<Command> = (0..200u64)
            .map(|i| Command::Write {
                session: session(i % 7 + 1, i / 7 + 1),
                op: if i % 5 == 0 {
                    WriteOp::Delete {
                        key: b(&format!("k{}", i % 13)),
                    }
                } else {
                    put(&format!("k{}", i % 13), &format!("v{i}"))
                },
            })
            .collect();
        let batch = Batch { commands };
        let decoded = Batch::decode(&batch.encode().unwrap()).unwrap();
        let (mut one, mut two) = (KvStore::new(5), KvStore::new(5));
        for (i, command) in batch.commands.iter().enumerate() {
            one.apply(command, i as u64 + 1);
        }
        for (i, command) in decoded.commands.iter().enumerate() {
            two.apply(command, i as u64 + 1);
        }
        assert_eq!(one, two);
        assert_eq!(one.snapshot().unwrap(), two.snapshot().unwrap());
    }
}
