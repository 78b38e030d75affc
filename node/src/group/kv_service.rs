//! The key-value service of a group: client writes (validated, batched into one proposal per
//! iteration, answered once their entry is applied), reads (linearizable through the protocol's
//! read index; sequential, served here once the store reaches the session's revision; or stale)
//! and the state machine they act on.
//!
//! A proposal is lost when the entry committed at its index carries another payload (leadership
//! changed and another leader's entry won the slot). Payloads are compared, not terms: a Paxos
//! leader re-proposes an accepted value under its own, higher ballot, and that is still ours.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use consensus_core::{Consensus, ReadState, Snapshot};
use tokio::time::Instant;

use crate::config::ServeConfig;
use crate::kv::{Batch, Command, KvError, KvStore};
use crate::proto::{
    Consistency, ReadOp, Reply, Responder, ServerError, Session, ShardMap, SplitPlan, WriteOp,
    MAX_TXN_OPS,
};

use super::admin::engine_error;

/// Encoding overhead allowed per write on top of key and value when checking the request limit.
const WRITE_OVERHEAD: u64 = 64;

/// Writes proposed in one entry, answered when it is applied.
struct PendingEntry {
    /// The entry's payload as proposed: the committed entry at this index is ours only if it
    /// carries exactly these bytes.
    data: Bytes,
    /// The commands as proposed: applied from here rather than decoded again.
    commands: Vec<Command>,
    /// One slot per command of the batch (`None` for commands nobody waits on).
    waiters: Vec<Option<Responder>>,
}

/// A read waiting for its read index or for the state machine to catch up.
struct PendingRead {
    op: ReadOp,
    responder: Responder,
}

/// A sequential read waiting for the store to reach its revision.
struct WaitingRead {
    deadline: Instant,
    read: PendingRead,
}

struct ReadBatch {
    deadline: Instant,
    reads: Vec<PendingRead>,
}

/// The state machine and the client requests waiting on it.
pub(crate) struct KvService {
    config: Arc<ServeConfig>,
    kv: KvStore,
    /// Highest log index applied to `kv`.
    applied: u64,
    /// Payload bytes applied since the last snapshot.
    applied_bytes: u64,
    /// Writes gathered this iteration, proposed as one entry.
    batch: Vec<Command>,
    batch_waiters: Vec<Option<Responder>>,
    batch_bytes: u64,
    /// Proposed entries by log index.
    pending_writes: BTreeMap<u64, PendingEntry>,
    pending_write_count: usize,
    /// Linearizable reads gathered this iteration.
    read_batch: Vec<PendingRead>,
    next_read_ctx: u64,
    reads_by_ctx: HashMap<u64, ReadBatch>,
    /// Reads ordered at a log index, waiting for the state machine to apply through it.
    reads_by_index: BTreeMap<u64, Vec<PendingRead>>,
    /// Sequential reads by the store revision they wait for.
    reads_by_revision: BTreeMap<u64, Vec<WaitingRead>>,
    /// Reads of a key a prepared cross-shard transaction writes, waiting for its DECIDE
    /// (`KvStore::get_checked`); answered `Locked` at their deadline (the client retries).
    reads_on_lock: Vec<WaitingRead>,
    /// The meta group's bootstrap map, set again on every restored state.
    base_map: Option<Arc<ShardMap>>,
}

/// What applying one entry did besides answering its writes.
#[derive(Default)]
pub(crate) struct Applied {
    /// Member addresses it recorded.
    pub(crate) addrs: Vec<(u64, SocketAddr)>,
    /// Splits it applied here (source group), each with the upper half of the state and its
    /// writer's answer, held until the new group exists.
    pub(crate) splits: Vec<AppliedSplit>,
}

/// A split an entry applied: the plan, the upper half of the state the new group starts from,
/// and the answer to the write that asked for it (sent once the new group is durable).
pub(crate) struct AppliedSplit {
    /// The plan applied.
    pub(crate) plan: SplitPlan,
    /// The upper half of the state.
    pub(crate) upper: KvStore,
    /// Who waits here for the answer, and the answer.
    pub(crate) answer: Option<(Responder, Result<Reply, ServerError>)>,
}

impl KvService {
    pub(crate) fn new(
        config: Arc<ServeConfig>,
        mut kv: KvStore,
        applied: u64,
        base_map: Option<Arc<ShardMap>>,
    ) -> Self {
        if let Some(map) = &base_map {
            kv.set_base_map(map.clone());
        }
        KvService {
            base_map,
            config,
            kv,
            applied,
            applied_bytes: 0,
            batch: Vec::new(),
            batch_waiters: Vec::new(),
            batch_bytes: 0,
            pending_writes: BTreeMap::new(),
            pending_write_count: 0,
            read_batch: Vec::new(),
            next_read_ctx: 1,
            reads_by_ctx: HashMap::new(),
            reads_by_index: BTreeMap::new(),
            reads_by_revision: BTreeMap::new(),
            reads_on_lock: Vec::new(),
        }
    }

    pub(crate) fn store(&self) -> &KvStore {
        &self.kv
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    pub(crate) fn applied_bytes(&self) -> u64 {
        self.applied_bytes
    }

    pub(crate) fn reset_applied_bytes(&mut self) {
        self.applied_bytes = 0;
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.pending_write_count
            + self.batch.len()
            + self.read_batch.len()
            + self
                .reads_by_ctx
                .values()
                .map(|b| b.reads.len())
                .sum::<usize>()
            + self.reads_by_index.values().map(Vec::len).sum::<usize>()
            + self.reads_by_revision.values().map(Vec::len).sum::<usize>()
            + self.reads_on_lock.len()
    }

    /// Checks a client write on its own (size limits, session); returns its size.
    pub(crate) fn validate_write(
        &self,
        session: &Session,
        op: &WriteOp,
    ) -> Result<u64, ServerError> {
        let size = self.check_write(op)?;
        if session.client_id == 0 || session.seq == 0 {
            return Err(ServerError::InvalidSession(
                "client id and sequence number must be non-zero".into(),
            ));
        }
        Ok(size)
    }

    /// A client write; `leader` is `Err(what to answer)` when this member does not lead.
    pub(crate) fn write<C: Consensus>(
        &mut self,
        engine: &mut C,
        leader: Result<(), ServerError>,
        session: Session,
        op: WriteOp,
        responder: Responder,
    ) {
        let size = match self.validate_write(&session, &op) {
            Ok(size) => size,
            Err(error) => return reply(responder, Err(error)),
        };
        if let Err(error) = leader {
            return reply(responder, Err(error));
        }
        if self.pending_count() >= self.config.limits.max_pending_requests {
            return reply(
                responder,
                Err(ServerError::Busy("too many writes pending".into())),
            );
        }
        self.batch.push(Command::Write { session, op });
        self.batch_waiters.push(Some(responder));
        self.batch_bytes += size;
        if self.batch.len() >= self.config.limits.max_batch_ops
            || self.batch_bytes >= self.config.raft.max_msg_bytes
        {
            self.flush_proposals(engine, || ServerError::NoLeader);
        }
    }

    /// A client read: served at once (stale, or sequential when the store has the session's
    /// revision), held until the store reaches it (sequential, bounded by an election timeout),
    /// or queued for the next read-index round. A non-stale read of a key a prepared cross-shard
    /// transaction writes is then held until that transaction's DECIDE is applied (`answer`).
    pub(crate) fn read(&mut self, consistency: Consistency, op: ReadOp, responder: Responder) {
        if let Err(error) = self.check_read(&op) {
            return reply(responder, Err(error));
        }
        match consistency {
            Consistency::Stale => {
                let result = self.serve(&op, false);
                reply(responder, result);
            }
            Consistency::Sequential { min_revision } if min_revision <= self.kv.revision() => {
                self.answer(PendingRead { op, responder });
            }
            Consistency::Sequential { min_revision } => {
                if self.pending_count() >= self.config.limits.max_pending_requests {
                    return reply(
                        responder,
                        Err(ServerError::Busy("too many requests pending".into())),
                    );
                }
                let election = self.config.tick() * self.config.raft.election_ticks;
                let deadline = Instant::now() + election.min(self.config.request_timeout());
                self.reads_by_revision
                    .entry(min_revision)
                    .or_default()
                    .push(WaitingRead {
                        deadline,
                        read: PendingRead { op, responder },
                    });
            }
            Consistency::Linearizable => {
                if self.pending_count() >= self.config.limits.max_pending_requests {
                    return reply(
                        responder,
                        Err(ServerError::Busy("too many requests pending".into())),
                    );
                }
                self.read_batch.push(PendingRead { op, responder });
            }
        }
    }

    /// Proposes the writes gathered so far as one entry.
    pub(crate) fn flush_proposals<C: Consensus>(
        &mut self,
        engine: &mut C,
        not_leader: impl Fn() -> ServerError,
    ) {
        if self.batch.is_empty() {
            return;
        }
        let batch = Batch {
            commands: std::mem::take(&mut self.batch),
        };
        let waiters = std::mem::take(&mut self.batch_waiters);
        debug_assert_eq!(batch.commands.len(), waiters.len());
        self.batch_bytes = 0;
        let data = match batch.encode() {
            Ok(data) => data,
            Err(error) => return reply_all(waiters, ServerError::Internal(error.to_string())),
        };
        match engine.propose(data.clone()) {
            Ok(proposed) => {
                self.pending_write_count += waiters.len();
                let lost = self.pending_writes.insert(
                    proposed.index,
                    PendingEntry {
                        data,
                        commands: batch.commands,
                        waiters,
                    },
                );
                // A slot proposed again (this leader lost it and was re-elected).
                if let Some(lost) = lost {
                    self.pending_write_count -= lost.waiters.len();
                    reply_all(lost.waiters, ServerError::LeaderChanged);
                }
            }
            Err(error) => reply_all(waiters, engine_error(error, not_leader)),
        }
    }

    /// Asks the protocol to order the linearizable reads gathered so far (one round for all).
    pub(crate) fn flush_reads<C: Consensus>(
        &mut self,
        engine: &mut C,
        not_leader: impl Fn() -> ServerError,
    ) {
        if self.read_batch.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.read_batch);
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        match engine.read_index(ctx) {
            Ok(()) => {
                let deadline = Instant::now() + self.config.request_timeout();
                self.reads_by_ctx.insert(ctx, ReadBatch { deadline, reads });
            }
            Err(error) => {
                let error = engine_error(error, not_leader);
                for read in reads {
                    reply(read.responder, Err(error.clone()));
                }
            }
        }
    }

    /// Reads the protocol ordered: each is served once the state machine reaches its index.
    pub(crate) fn ordered(&mut self, reads: Vec<ReadState>) {
        for read in reads {
            if let Some(batch) = self.reads_by_ctx.remove(&read.ctx) {
                self.reads_by_index
                    .entry(read.index)
                    .or_default()
                    .extend(batch.reads);
            }
        }
        self.serve_ready_reads();
    }

    /// Restores the state machine from a snapshot received from the leader; returns the member
    /// addresses it records.
    pub(crate) fn install(&mut self, snapshot: &Snapshot) -> Result<(), KvError> {
        self.kv = KvStore::restore(&snapshot.data, self.config.limits.max_sessions)?;
        if let Some(map) = &self.base_map {
            self.kv.set_base_map(map.clone());
        }
        self.applied = snapshot.meta.index;
        self.applied_bytes = 0;
        // Proposals at or below the snapshot can no longer be matched with their entry.
        let later = self.pending_writes.split_off(&(snapshot.meta.index + 1));
        for (_, pending) in std::mem::replace(&mut self.pending_writes, later) {
            self.pending_write_count -= pending.waiters.len();
            reply_all(pending.waiters, ServerError::LeaderChanged);
        }
        self.serve_ready_reads();
        Ok(())
    }

    /// Applies the committed entry at `index` carrying `data`; returns the member addresses it
    /// set and the splits it applied. Waiting clients get their results, or `LeaderChanged` if
    /// another payload won.
    pub(crate) fn apply_data(&mut self, index: u64, data: &Bytes) -> Result<Applied, KvError> {
        self.applied_bytes += data.len() as u64;
        let (commands, mut waiters) = match self.take_pending(index) {
            Some(pending) if pending.data == *data => (pending.commands, pending.waiters),
            Some(pending) => {
                reply_all(pending.waiters, ServerError::LeaderChanged);
                (Batch::decode(data)?.commands, Vec::new())
            }
            None => (Batch::decode(data)?.commands, Vec::new()),
        };
        let mut applied = Applied::default();
        for (i, command) in commands.iter().enumerate() {
            let result = self.kv.apply(command, index);
            if let Command::SetMemberAddr { id, addr } = command {
                applied.addrs.push((*id, *addr));
            }
            if let Some((plan, upper)) = self.kv.take_split_off() {
                let waiter = waiters.get_mut(i).and_then(Option::take);
                let answer = waiter.zip(result.map(|result| result.map(Reply::Write)));
                applied.splits.push(AppliedSplit {
                    plan,
                    upper,
                    answer,
                });
                continue;
            }
            if let (Some(result), Some(slot)) = (result, waiters.get_mut(i)) {
                if let Some(responder) = slot.take() {
                    reply(responder, result.map(Reply::Write));
                }
            }
        }
        self.applied = index;
        Ok(applied)
    }

    /// An entry without client data (a no-op, a membership change) was applied at `index`.
    pub(crate) fn apply_other(&mut self, index: u64) {
        if let Some(pending) = self.take_pending(index) {
            reply_all(pending.waiters, ServerError::LeaderChanged);
        }
        self.applied = index;
    }

    fn take_pending(&mut self, index: u64) -> Option<PendingEntry> {
        let pending = self.pending_writes.remove(&index)?;
        self.pending_write_count -= pending.waiters.len();
        Some(pending)
    }

    pub(crate) fn serve_ready_reads(&mut self) {
        while let Some(entry) = self.reads_by_index.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            for read in entry.remove() {
                self.answer(read);
            }
        }
        while let Some(entry) = self.reads_by_revision.first_entry() {
            if *entry.key() > self.kv.revision() {
                break;
            }
            for waiting in entry.remove() {
                self.answer(waiting.read);
            }
        }
        if !self.reads_on_lock.is_empty() {
            for waiting in std::mem::take(&mut self.reads_on_lock) {
                match self.serve(&waiting.read.op, true) {
                    Err(ServerError::Locked { .. }) => self.reads_on_lock.push(waiting),
                    result => reply(waiting.read.responder, result),
                }
            }
        }
    }

    /// Answers a read whose turn has come (linearizable or sequential), or holds it while a
    /// prepared cross-shard transaction writes what it reads: that transaction may be decided
    /// and its client answered already, so the committed value here could be out of date.
    fn answer(&mut self, read: PendingRead) {
        match self.serve(&read.op, true) {
            Err(ServerError::Locked { .. }) => {
                let election = self.config.tick() * self.config.raft.election_ticks;
                let deadline = Instant::now() + election.min(self.config.request_timeout());
                self.reads_on_lock.push(WaitingRead { deadline, read });
            }
            result => reply(read.responder, result),
        }
    }

    /// Times out reads whose read index never came back (leader lost).
    pub(crate) fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .reads_by_ctx
            .iter()
            .filter(|(_, batch)| batch.deadline <= now)
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in expired {
            if let Some(batch) = self.reads_by_ctx.remove(&ctx) {
                for read in batch.reads {
                    reply(read.responder, Err(ServerError::Timeout));
                }
            }
        }
        if !self.reads_on_lock.is_empty() {
            let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_on_lock)
                .into_iter()
                .partition(|w| w.deadline <= now);
            self.reads_on_lock = waiting;
            for w in late {
                // Still locked (else it was answered on apply): `Locked`, which clients retry.
                let result = self.serve(&w.read.op, true);
                reply(w.read.responder, result);
            }
        }
        let applied = self.kv.revision();
        self.reads_by_revision.retain(|&wanted, reads| {
            let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(reads)
                .into_iter()
                .partition(|w| w.deadline <= now);
            for w in late {
                reply(
                    w.read.responder,
                    Err(ServerError::Behind { applied, wanted }),
                );
            }
            *reads = waiting;
            !reads.is_empty()
        });
    }

    /// Leadership was lost: writes proposed here may still commit under the next leader, or
    /// not; clients retry with the same session sequence numbers, which apply at most once.
    pub(crate) fn fail_writes(&mut self, error: ServerError) {
        self.batch.clear();
        self.batch_bytes = 0;
        reply_all(std::mem::take(&mut self.batch_waiters), error.clone());
        for (_, entry) in std::mem::take(&mut self.pending_writes) {
            reply_all(entry.waiters, error.clone());
        }
        self.pending_write_count = 0;
    }

    /// Answers every waiting request with `error` (shutdown).
    pub(crate) fn fail_all(&mut self, error: ServerError) {
        self.fail_writes(error.clone());
        for read in self.read_batch.drain(..) {
            reply(read.responder, Err(error.clone()));
        }
        for (_, batch) in self.reads_by_ctx.drain() {
            for read in batch.reads {
                reply(read.responder, Err(error.clone()));
            }
        }
        for (_, reads) in std::mem::take(&mut self.reads_by_index) {
            for read in reads {
                reply(read.responder, Err(error.clone()));
            }
        }
        for (_, reads) in std::mem::take(&mut self.reads_by_revision) {
            for waiting in reads {
                reply(waiting.read.responder, Err(error.clone()));
            }
        }
        for waiting in std::mem::take(&mut self.reads_on_lock) {
            reply(waiting.read.responder, Err(error.clone()));
        }
    }

    /// Answers a read from the state machine (`WrongShard` if a split moved its keys away since
    /// it was accepted); `checked` (every read but a stale one): `Locked` if a prepared
    /// cross-shard transaction writes a key it reads.
    fn serve(&self, op: &ReadOp, checked: bool) -> Result<Reply, ServerError> {
        match op {
            ReadOp::Get { key } => self.kv.check_owned(std::iter::once(&key[..]))?,
            ReadOp::Scan { start, end, .. } => self.kv.check_owned_scan(start, end.as_deref())?,
            ReadOp::Prepared => {}
        }
        Ok(match op {
            ReadOp::Get { key } => Reply::Get {
                revision: self.kv.revision(),
                kv: if checked {
                    self.kv.get_checked(key)?
                } else {
                    self.kv.get(key)
                },
            },
            ReadOp::Scan { start, end, limit } => {
                let max = self.config.limits.max_scan_limit;
                let limit = if *limit == 0 { max } else { (*limit).min(max) };
                let (kvs, more) = if checked {
                    self.kv
                        .scan_checked(start, end.as_deref(), limit as usize)?
                } else {
                    self.kv.scan(start, end.as_deref(), limit as usize)
                };
                Reply::Scan {
                    revision: self.kv.revision(),
                    kvs,
                    more,
                }
            }
            ReadOp::Prepared => Reply::Prepared {
                txns: self
                    .kv
                    .shard_txns()
                    .prepared()
                    .iter()
                    .map(|(txn, p)| (*txn, p.clone()))
                    .collect(),
            },
        })
    }

    fn check_key(&self, key: &Bytes) -> Result<(), ServerError> {
        let limit = self.config.limits.max_key_bytes;
        if key.is_empty() {
            return Err(ServerError::EmptyKey);
        }
        if key.len() as u64 > limit {
            return Err(ServerError::KeyTooLarge {
                size: key.len() as u64,
                limit,
            });
        }
        Ok(())
    }

    fn check_write(&self, op: &WriteOp) -> Result<u64, ServerError> {
        if let WriteOp::Txn {
            compares,
            success,
            failure,
        } = op
        {
            let ops = compares.len() + success.len() + failure.len();
            if ops > MAX_TXN_OPS {
                return Err(ServerError::TxnTooLarge {
                    ops: ops as u64,
                    limit: MAX_TXN_OPS as u64,
                });
            }
        }
        let keys = op.keys();
        for key in &keys {
            self.check_key(key)?;
        }
        let limits = &self.config.limits;
        let values = op.values();
        let mut size = keys.iter().map(|k| k.len() as u64).sum::<u64>() + WRITE_OVERHEAD;
        for value in values {
            if value.len() as u64 > limits.max_value_bytes {
                return Err(ServerError::ValueTooLarge {
                    size: value.len() as u64,
                    limit: limits.max_value_bytes,
                });
            }
            size += value.len() as u64;
        }
        if size > limits.max_request_bytes {
            return Err(ServerError::RequestTooLarge {
                size,
                limit: limits.max_request_bytes,
            });
        }
        Ok(size)
    }

    fn check_read(&self, op: &ReadOp) -> Result<(), ServerError> {
        match op {
            ReadOp::Get { key } => self.check_key(key),
            ReadOp::Scan { start, end, .. } => {
                let limit = self.config.limits.max_key_bytes;
                for key in std::iter::once(start).chain(end.iter()) {
                    if key.len() as u64 > limit {
                        return Err(ServerError::KeyTooLarge {
                            size: key.len() as u64,
                            limit,
                        });
                    }
                }
                Ok(())
            }
            ReadOp::Prepared => Ok(()),
        }
    }
}

pub(crate) fn reply(responder: Responder, response: Result<Reply, ServerError>) {
    let _ = responder.reply(&response);
}

fn reply_all(waiters: Vec<Option<Responder>>, error: ServerError) {
    for responder in waiters.into_iter().flatten() {
        reply(responder, Err(error.clone()));
    }
}
