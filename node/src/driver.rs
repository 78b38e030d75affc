//! The driver: one tokio task per replication group that owns the Raft engine, its store and the
//! KV state machine, and turns the engine's `Ready`s into network sends, disk writes and replies.
//!
//! # The loop
//! Each iteration waits for one event (a peer message, a client request, a durability report from
//! the store's sync thread, a tick, shutdown), then drains whatever else is already queued on the
//! peer and request channels (bounded), so one iteration handles many events:
//!
//! 1. client writes are validated and packed into one [`Batch`] entry (proposal batching: one
//!    `propose` and one log entry for up to `max_batch_ops` writes);
//! 2. linearizable reads that arrived together share one ReadIndex request;
//! 3. then, while the engine has a `Ready`:
//!    - **send** its messages at once (appends to followers leave before the leader's own disk
//!      write finishes — Raft thesis §10.2.1; snapshots go on the bulk stream from a spawned task);
//!    - **submit** its `Persist` to the store without waiting (the store's sync thread
//!      group-commits everything submitted while the previous `fdatasync` ran) and queue the token;
//!    - **apply** its committed entries to the KV store and answer the waiting clients;
//!    - queue its read states until the KV store has applied through their index;
//! 4. tokens whose write the store reports durable are confirmed in order (`persisted`), which
//!    releases the engine's held messages (votes, acknowledgements) on the next `ready()`.
//!
//! # Durability ordering
//! A client is answered only when its entry is committed, i.e. durable on a majority: the engine
//! counts the leader towards a quorum only for entries its store has reported durable, and
//! followers acknowledge only after their write is confirmed. Messages that promise durability
//! are held by the engine until the token of the write they depend on comes back.
//!
//! # Requests on followers
//! Writes and membership changes are answered with `NotLeader` (leader id and address) so the
//! client redirects; reads are served locally after a ReadIndex round through the leader.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use consensus_core::{
    ConfChange, Consensus, EntryPayload, MemberChange, Message, MessageBody, PersistToken, Raft,
    Role as RaftRole, SoftState, Storage,
};
use net_quic::{ClientRequest, Endpoint, NodeId as NetNodeId, PeerMessage as NetPeerMessage};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::ServeConfig;
use crate::kv::{Batch, Command, KvStore};
use crate::proto::{
    self, AdminRequest, Consistency, Member, NodeStatus, PeerMessage, Quorate, ReadOp, Reply,
    Request, Response, ServerError, WriteOp,
};
use crate::server::ServeError;
use crate::store::{Durability, RaftStore, WrittenSnapshot};

type Responder = net_quic::Responder<Response>;

/// Peer messages handled per iteration at most (beyond the one that woke the loop).
const PEER_DRAIN: usize = 1024;
/// A loop iteration taking at least this long is logged.
const SLOW_ITERATION: Duration = Duration::from_millis(20);
/// Applied payload bytes after which a snapshot is taken regardless of the entry count.
const SNAPSHOT_BYTES: u64 = 64 << 20;
/// Encoding overhead allowed per write on top of key and value when checking the request limit.
const WRITE_OVERHEAD: u64 = 64;

/// Writes proposed in one entry, answered when it is applied.
struct PendingEntry {
    term: u64,
    /// The commands as proposed: applied from here rather than decoded again (log matching: the
    /// entry committed at this index with this term is the one proposed).
    commands: Vec<Command>,
    /// One slot per command of the batch (`None` for commands nobody waits on).
    waiters: Vec<Option<Responder>>,
}

/// A read waiting for its ReadIndex or for the state machine to catch up.
struct PendingRead {
    op: ReadOp,
    responder: Responder,
}

struct ReadBatch {
    deadline: Instant,
    reads: Vec<PendingRead>,
}

enum AdminWait {
    /// A membership change at this log position.
    Conf {
        index: u64,
        term: u64,
        responder: Responder,
    },
}

/// The group's event loop state. Built by the server, run by [`Driver::run`].
pub(crate) struct Driver {
    id: u64,
    config: Arc<ServeConfig>,
    raft: Raft<RaftStore>,
    kv: KvStore,
    endpoint: Endpoint<Quorate>,
    peer_rx: mpsc::Receiver<NetPeerMessage<PeerMessage>>,
    request_rx: mpsc::Receiver<ClientRequest<Quorate>>,
    durable_rx: watch::Receiver<Durability>,
    shutdown_rx: watch::Receiver<bool>,

    /// Writes submitted to the store and not yet confirmed: (WAL index, token), in order.
    unconfirmed: VecDeque<(u64, PersistToken)>,
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
    admin: Vec<AdminWait>,
    transfer: Option<(u64, Instant, Responder)>,

    soft: SoftState,
    applied: u64,
    snapshot_index: u64,
    applied_bytes_since_snapshot: u64,
    /// The local snapshot being written or checkpointed on a blocking thread (at most one).
    snapshot_task: Option<tokio::task::JoinHandle<Result<SnapshotStep, ServeError>>>,
    /// Addresses of members: the configured ones, then those recorded through the log.
    addrs: BTreeMap<u64, SocketAddr>,
    shutting_down: bool,
    /// Set while a stopping leader waits for its transfer to complete.
    draining_until: Option<Instant>,
}

impl Driver {
    /// Builds the driver around an engine whose store was opened and a KV store restored from its
    /// snapshot.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Arc<ServeConfig>,
        raft: Raft<RaftStore>,
        kv: KvStore,
        endpoint: Endpoint<Quorate>,
        peer_rx: mpsc::Receiver<NetPeerMessage<PeerMessage>>,
        request_rx: mpsc::Receiver<ClientRequest<Quorate>>,
        shutdown_rx: watch::Receiver<bool>,
    ) -> Self {
        let durable_rx = raft.storage().subscribe_durable();
        let snapshot_index = raft.storage().snapshot_meta().index;
        let mut addrs: BTreeMap<u64, SocketAddr> =
            config.members.iter().map(|m| (m.id, m.addr)).collect();
        for (&id, &addr) in kv.member_addrs() {
            addrs.insert(id, addr);
        }
        for (&id, &addr) in &addrs {
            if id != config.node_id {
                endpoint.set_peer_addr(NetNodeId(id), addr);
            }
        }
        Driver {
            id: config.node_id,
            soft: SoftState {
                leader: None,
                role: RaftRole::Follower,
            },
            applied: raft.status().applied,
            snapshot_index,
            applied_bytes_since_snapshot: 0,
            snapshot_task: None,
            config,
            raft,
            kv,
            endpoint,
            peer_rx,
            request_rx,
            durable_rx,
            shutdown_rx,
            unconfirmed: VecDeque::new(),
            batch: Vec::new(),
            batch_waiters: Vec::new(),
            batch_bytes: 0,
            pending_writes: BTreeMap::new(),
            pending_write_count: 0,
            read_batch: Vec::new(),
            next_read_ctx: 1,
            reads_by_ctx: HashMap::new(),
            reads_by_index: BTreeMap::new(),
            admin: Vec::new(),
            transfer: None,
            addrs,
            shutting_down: false,
            draining_until: None,
        }
    }

    /// Runs until shutdown is requested or a fatal error (a storage failure) happens.
    pub(crate) async fn run(mut self) -> Result<(), ServeError> {
        let mut ticker = tokio::time::interval(self.config.tick());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = self.event_loop(&mut ticker).await;
        self.finish().await;
        result
    }

    async fn event_loop(&mut self, ticker: &mut tokio::time::Interval) -> Result<(), ServeError> {
        loop {
            tokio::select! {
                biased;
                changed = self.shutdown_rx.changed(), if self.draining_until.is_none() => {
                    if (changed.is_err() || *self.shutdown_rx.borrow()) && !self.start_draining() {
                        info!(node = self.id, "driver stopping");
                        return Ok(());
                    }
                }
                changed = self.durable_rx.changed() => {
                    if changed.is_err() {
                        return Err(ServeError::Stopped("the store's sync thread stopped".into()));
                    }
                    let durability = self.durable_rx.borrow_and_update().clone();
                    if let Some(error) = durability.error {
                        return Err(ServeError::Stopped(format!("store sync failed: {error}")));
                    }
                    self.confirm_durable(durability.index)?;
                }
                done = join_snapshot_task(&mut self.snapshot_task), if self.snapshot_task.is_some() => {
                    self.snapshot_task = None;
                    self.on_snapshot_step(done)?;
                }
                // Before the message channels: under constant load they are never empty, and
                // the engine's clock (leases, check-quorum, timeouts) must not stall behind them.
                _ = ticker.tick() => {
                    self.raft.tick();
                    self.expire(Instant::now());
                }
                Some(message) = self.peer_rx.recv() => self.step(message),
                Some(request) = self.request_rx.recv() => self.handle_request(request),
            }
            let woke = std::time::Instant::now();
            let mut peer_messages = 0;
            for _ in 0..PEER_DRAIN {
                match self.peer_rx.try_recv() {
                    Ok(message) => self.step(message),
                    Err(_) => break,
                }
                peer_messages += 1;
            }
            let mut requests = 0;
            for _ in 0..self.config.limits.max_batch_ops {
                match self.request_rx.try_recv() {
                    Ok(request) => self.handle_request(request),
                    Err(_) => break,
                }
                requests += 1;
            }
            self.flush_proposals();
            self.flush_reads();
            self.process_ready()?;
            let took = woke.elapsed();
            if took >= SLOW_ITERATION {
                warn!(
                    node = self.id,
                    took_ms = took.as_millis() as u64,
                    peer_messages,
                    requests,
                    "slow driver iteration (requests and replication wait for it)"
                );
            }
            if let Some(deadline) = self.draining_until {
                let handed_off = self.soft.leader.is_some_and(|leader| leader != self.id);
                if handed_off || Instant::now() >= deadline {
                    info!(node = self.id, leader = ?self.soft.leader, "driver stopping after handing off leadership");
                    return Ok(());
                }
            }
        }
    }

    /// On shutdown, a leader first hands leadership to another voter so the group does not wait
    /// an election timeout; returns whether the loop should keep running meanwhile.
    fn start_draining(&mut self) -> bool {
        if self.soft.role != RaftRole::Leader {
            return false;
        }
        let Some(to) = self
            .raft
            .conf_state()
            .voters
            .iter()
            .copied()
            .find(|&id| id != self.id)
        else {
            return false;
        };
        if self.raft.transfer_leader(to).is_err() {
            return false;
        }
        let ticks = u64::from(self.config.raft.election_ticks);
        self.draining_until = Some(Instant::now() + self.config.tick() * ticks as u32);
        info!(node = self.id, to, "handing off leadership before stopping");
        true
    }

    /// Answers everything still waiting, lets the store finish its writes, and closes the
    /// endpoint's sends.
    async fn finish(&mut self) {
        self.shutting_down = true;
        self.request_rx.close();
        while let Ok(request) = self.request_rx.try_recv() {
            let _ = request.responder.reply(&Err(ServerError::ShuttingDown));
        }
        self.fail_batch(ServerError::ShuttingDown);
        self.fail_pending_writes(ServerError::ShuttingDown);
        for (_, batch) in self.reads_by_ctx.drain() {
            for read in batch.reads {
                let _ = read.responder.reply(&Err(ServerError::ShuttingDown));
            }
        }
        for (_, reads) in std::mem::take(&mut self.reads_by_index) {
            for read in reads {
                let _ = read.responder.reply(&Err(ServerError::ShuttingDown));
            }
        }
        for wait in self.admin.drain(..) {
            let AdminWait::Conf { responder, .. } = wait;
            let _ = responder.reply(&Err(ServerError::ShuttingDown));
        }
        if let Some((_, _, responder)) = self.transfer.take() {
            let _ = responder.reply(&Err(ServerError::ShuttingDown));
        }
        // A snapshot in the background is finished, so the next start replays from it.
        while self.snapshot_task.is_some() {
            let done = join_snapshot_task(&mut self.snapshot_task).await;
            self.snapshot_task = None;
            if let Err(error) = self.on_snapshot_step(done) {
                warn!(node = self.id, %error, "snapshot not completed");
            }
        }
        if let Err(error) = self.raft.storage().sync() {
            warn!(node = self.id, %error, "final sync failed");
        }
        let report = self.endpoint.shutdown(Duration::from_millis(500)).await;
        debug!(node = self.id, ?report, "endpoint closed");
    }

    // ---- inbound ------------------------------------------------------------------------------

    fn step(&mut self, message: NetPeerMessage<PeerMessage>) {
        let PeerMessage::Raft(raft_message) = message.msg;
        // The sender's id comes from its certificate; a message claiming another is dropped.
        if raft_message.from != message.from.0 {
            warn!(
                node = self.id,
                claimed = raft_message.from,
                authenticated = message.from.0,
                "dropping a Raft message whose sender does not match its certificate"
            );
            return;
        }
        if let Err(error) = self.raft.step(raft_message) {
            debug!(node = self.id, %error, "message refused by the engine");
        }
    }

    fn handle_request(&mut self, request: ClientRequest<Quorate>) {
        let ClientRequest {
            request, responder, ..
        } = request;
        if self.shutting_down {
            let _ = responder.reply(&Err(ServerError::ShuttingDown));
            return;
        }
        match request {
            Request::Write { session, op } => self.handle_write(session, op, responder),
            Request::Read { consistency, op } => {
                if let Err(error) = self.check_read(&op) {
                    let _ = responder.reply(&Err(error));
                    return;
                }
                match consistency {
                    Consistency::Stale => {
                        let reply = self.read(&op);
                        let _ = responder.reply(&Ok(reply));
                    }
                    Consistency::Linearizable => {
                        if self.pending_count() >= self.config.limits.max_pending_requests {
                            let _ = responder
                                .reply(&Err(ServerError::Busy("too many requests pending".into())));
                            return;
                        }
                        self.read_batch.push(PendingRead { op, responder });
                    }
                }
            }
            Request::Admin(admin) => self.handle_admin(admin, responder),
        }
    }

    fn pending_count(&self) -> usize {
        self.pending_write_count
            + self.batch.len()
            + self.read_batch.len()
            + self
                .reads_by_ctx
                .values()
                .map(|b| b.reads.len())
                .sum::<usize>()
            + self.reads_by_index.values().map(Vec::len).sum::<usize>()
    }

    fn not_leader(&self) -> ServerError {
        match self.soft.leader {
            Some(leader) if leader != self.id => ServerError::NotLeader {
                leader: Some(leader),
                leader_addr: self.addrs.get(&leader).copied(),
            },
            _ => ServerError::NoLeader,
        }
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
        self.check_key(op.key())?;
        let limits = &self.config.limits;
        let values: Vec<&Bytes> = match op {
            WriteOp::Put { value, .. } => vec![value],
            WriteOp::Delete { .. } => vec![],
            WriteOp::Cas { expected, new, .. } => {
                let mut v = vec![new];
                v.extend(expected.iter());
                v
            }
        };
        let mut size = op.key().len() as u64 + WRITE_OVERHEAD;
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
        }
    }

    fn handle_write(&mut self, session: proto::Session, op: WriteOp, responder: Responder) {
        let size = match self.check_write(&op) {
            Ok(size) => size,
            Err(error) => {
                let _ = responder.reply(&Err(error));
                return;
            }
        };
        if session.client_id == 0 || session.seq == 0 {
            let _ = responder.reply(&Err(ServerError::InvalidSession(
                "client id and sequence number must be non-zero".into(),
            )));
            return;
        }
        if self.soft.role != RaftRole::Leader {
            let _ = responder.reply(&Err(self.not_leader()));
            return;
        }
        if self.pending_count() >= self.config.limits.max_pending_requests {
            let _ = responder.reply(&Err(ServerError::Busy("too many writes pending".into())));
            return;
        }
        self.batch.push(Command::Write { session, op });
        self.batch_waiters.push(Some(responder));
        self.batch_bytes += size;
        if self.batch.len() >= self.config.limits.max_batch_ops
            || self.batch_bytes >= self.config.raft.max_msg_bytes
        {
            self.flush_proposals();
        }
    }

    fn handle_admin(&mut self, admin: AdminRequest, responder: Responder) {
        let result = match admin {
            AdminRequest::Status => Ok(Reply::Status(self.status())),
            AdminRequest::Members => Ok(Reply::Members {
                members: self.members(),
                leader: self.soft.leader,
            }),
            AdminRequest::AddMember { id, addr, learner } => {
                let proposed = self.add_member(id, addr, learner);
                return self.answer_when_applied(proposed, responder);
            }
            AdminRequest::RemoveMember { id } => {
                let proposed = self.remove_member(id);
                return self.answer_when_applied(proposed, responder);
            }
            AdminRequest::TransferLeader { to } => {
                if self.soft.role != RaftRole::Leader {
                    Err(self.not_leader())
                } else if to == self.id {
                    Ok(Reply::Done)
                } else if !self.raft.conf_state().is_voter(to) {
                    Err(ServerError::UnknownNode(to))
                } else {
                    match self.raft.transfer_leader(to) {
                        Ok(()) => {
                            let deadline = Instant::now() + self.config.request_timeout();
                            if let Some((_, _, old)) =
                                self.transfer.replace((to, deadline, responder))
                            {
                                let _ = old.reply(&Err(ServerError::LeaderChanged));
                            }
                            return;
                        }
                        Err(error) => Err(self.engine_error(error)),
                    }
                }
            }
        };
        let _ = responder.reply(&result);
    }

    /// A proposed configuration change is answered once it applies; a refused one at once.
    fn answer_when_applied(
        &mut self,
        proposed: Result<(u64, u64), ServerError>,
        responder: Responder,
    ) {
        match proposed {
            Ok((index, term)) => self.admin.push(AdminWait::Conf {
                index,
                term,
                responder,
            }),
            Err(error) => {
                let _ = responder.reply(&Err(error));
            }
        }
    }

    fn add_member(
        &mut self,
        id: u64,
        addr: SocketAddr,
        learner: bool,
    ) -> Result<(u64, u64), ServerError> {
        if self.soft.role != RaftRole::Leader {
            return Err(self.not_leader());
        }
        if id == 0 {
            return Err(ServerError::InvalidMembership(
                "node id 0 is reserved".into(),
            ));
        }
        let conf = self.raft.conf_state();
        if conf.is_voter(id) || (learner && conf.contains(id)) {
            return Err(ServerError::InvalidMembership(format!(
                "node {id} is already a member"
            )));
        }
        // The address goes through the log first, so every member (and any later snapshot)
        // knows where the new member listens by the time the change applies.
        self.endpoint.set_peer_addr(NetNodeId(id), addr);
        self.addrs.insert(id, addr);
        let batch = Batch {
            commands: vec![Command::SetMemberAddr { id, addr }],
        };
        let data = batch
            .encode()
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        self.raft
            .propose(data)
            .map_err(|error| self.engine_error(error))?;
        let change = if learner {
            MemberChange::AddLearner(id)
        } else {
            MemberChange::AddVoter(id)
        };
        let proposed = self
            .raft
            .propose_conf_change(ConfChange::Single(change))
            .map_err(|error| self.engine_error(error))?;
        info!(node = self.id, member = id, %addr, learner, index = proposed.index, "adding member");
        Ok((proposed.index, proposed.term))
    }

    fn remove_member(&mut self, id: u64) -> Result<(u64, u64), ServerError> {
        if self.soft.role != RaftRole::Leader {
            return Err(self.not_leader());
        }
        if !self.raft.conf_state().contains(id) {
            return Err(ServerError::UnknownNode(id));
        }
        let proposed = self
            .raft
            .propose_conf_change(ConfChange::Single(MemberChange::Remove(id)))
            .map_err(|error| self.engine_error(error))?;
        info!(
            node = self.id,
            member = id,
            index = proposed.index,
            "removing member"
        );
        Ok((proposed.index, proposed.term))
    }

    fn engine_error(&self, error: consensus_core::Error) -> ServerError {
        use consensus_core::Error as E;
        match error {
            E::NotLeader { .. } => self.not_leader(),
            E::NoLeader => ServerError::NoLeader,
            E::ConfChangePending { pending_index } => ServerError::InvalidMembership(format!(
                "a membership change is already pending at index {pending_index}; retry once it is applied"
            )),
            E::InvalidConfChange { reason } => ServerError::InvalidMembership(reason.into()),
            E::UnknownNode(id) => ServerError::UnknownNode(id),
            E::TransferInProgress { to } => {
                ServerError::Busy(format!("leadership transfer to {to} in progress"))
            }
            E::UncommittedLimit { .. } => {
                ServerError::Busy("too much uncommitted data on the leader".into())
            }
            E::ProposalTooLarge { size, limit } => ServerError::RequestTooLarge { size, limit },
            other => ServerError::Internal(other.to_string()),
        }
    }

    // ---- proposals and reads ------------------------------------------------------------------

    fn flush_proposals(&mut self) {
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
            Err(error) => {
                reply_all(waiters, ServerError::Internal(error.to_string()));
                return;
            }
        };
        match self.raft.propose(data) {
            Ok(proposed) => {
                self.pending_write_count += waiters.len();
                self.pending_writes.insert(
                    proposed.index,
                    PendingEntry {
                        term: proposed.term,
                        commands: batch.commands,
                        waiters,
                    },
                );
            }
            Err(error) => {
                let error = self.engine_error(error);
                reply_all(waiters, error);
            }
        }
    }

    fn fail_batch(&mut self, error: ServerError) {
        self.batch.clear();
        self.batch_bytes = 0;
        reply_all(std::mem::take(&mut self.batch_waiters), error);
    }

    fn fail_pending_writes(&mut self, error: ServerError) {
        for (_, entry) in std::mem::take(&mut self.pending_writes) {
            reply_all(entry.waiters, error.clone());
        }
        self.pending_write_count = 0;
    }

    fn flush_reads(&mut self) {
        if self.read_batch.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.read_batch);
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        match self.raft.read_index(ctx) {
            Ok(()) => {
                let deadline = Instant::now() + self.config.request_timeout();
                self.reads_by_ctx.insert(ctx, ReadBatch { deadline, reads });
            }
            Err(error) => {
                let error = self.engine_error(error);
                for read in reads {
                    let _ = read.responder.reply(&Err(error.clone()));
                }
            }
        }
    }

    fn read(&self, op: &ReadOp) -> Reply {
        match op {
            ReadOp::Get { key } => Reply::Get {
                revision: self.kv.revision(),
                kv: self.kv.get(key),
            },
            ReadOp::Scan { start, end, limit } => {
                let max = self.config.limits.max_scan_limit;
                let limit = if *limit == 0 { max } else { (*limit).min(max) };
                let (kvs, more) = self.kv.scan(start, end.as_deref(), limit as usize);
                Reply::Scan {
                    revision: self.kv.revision(),
                    kvs,
                    more,
                }
            }
        }
    }

    fn serve_ready_reads(&mut self) {
        while let Some(entry) = self.reads_by_index.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            for read in entry.remove() {
                let reply = self.read(&read.op);
                let _ = read.responder.reply(&Ok(reply));
            }
        }
    }

    /// Times out reads whose ReadIndex never came back (leader lost) and stuck transfers.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .reads_by_ctx
            .iter()
            .filter(|(_, batch)| batch.deadline <= now)
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in expired {
            if let Some(batch) = self.reads_by_ctx.remove(&ctx) {
                for read in batch.reads {
                    let _ = read.responder.reply(&Err(ServerError::Timeout));
                }
            }
        }
        if let Some((_, deadline, _)) = &self.transfer {
            if *deadline <= now {
                if let Some((_, _, responder)) = self.transfer.take() {
                    let _ = responder.reply(&Err(ServerError::Timeout));
                }
            }
        }
    }

    // ---- ready --------------------------------------------------------------------------------

    fn process_ready(&mut self) -> Result<(), ServeError> {
        while self.raft.has_ready() {
            let ready = self.raft.ready();
            self.send(ready.messages);
            if let Some(soft) = ready.soft_state {
                self.on_soft_state(soft);
            }
            if let Some(persist) = ready.persist {
                let wal_index = self.raft.storage_mut().submit(&persist)?;
                if let Some(snapshot) = &persist.snapshot {
                    self.install_snapshot(snapshot)?;
                }
                self.unconfirmed.push_back((wal_index, persist.token));
            }
            self.apply(ready.committed)?;
            for read in ready.reads {
                if let Some(batch) = self.reads_by_ctx.remove(&read.ctx) {
                    self.reads_by_index
                        .entry(read.index)
                        .or_default()
                        .extend(batch.reads);
                }
            }
            let durable = self.raft.storage().durable_index();
            self.confirm_durable(durable)?;
        }
        self.serve_ready_reads();
        self.maybe_snapshot()?;
        Ok(())
    }

    fn send(&self, messages: Vec<Message>) {
        for message in messages {
            let to = NetNodeId(message.to);
            if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                let endpoint = self.endpoint.clone();
                let node = self.id;
                tokio::spawn(async move {
                    if let Err(error) = endpoint.send_bulk(to, &PeerMessage::Raft(message)).await {
                        warn!(node, %to, %error, "snapshot not sent");
                    }
                });
                continue;
            }
            if let Err(error) = self.endpoint.send(to, &PeerMessage::Raft(message)) {
                debug!(node = self.id, %to, %error, "message not sent");
            }
        }
    }

    fn on_soft_state(&mut self, soft: SoftState) {
        let was_leader = self.soft.role == RaftRole::Leader;
        if soft.leader != self.soft.leader || soft.role != self.soft.role {
            info!(node = self.id, leader = ?soft.leader, role = ?soft.role, term = self.raft.term(), "role change");
        }
        self.soft = soft;
        if was_leader && soft.role != RaftRole::Leader {
            // Entries proposed here may still commit under the next leader, or not: the clients
            // retry with the same session sequence numbers, which apply at most once.
            self.fail_batch(ServerError::LeaderChanged);
            self.fail_pending_writes(ServerError::LeaderChanged);
            for wait in self.admin.drain(..) {
                let AdminWait::Conf { responder, .. } = wait;
                let _ = responder.reply(&Err(ServerError::LeaderChanged));
            }
        }
        if let Some((to, _, _)) = &self.transfer {
            if soft.leader == Some(*to) {
                if let Some((_, _, responder)) = self.transfer.take() {
                    let _ = responder.reply(&Ok(Reply::Done));
                }
            }
        }
    }

    fn install_snapshot(&mut self, snapshot: &consensus_core::Snapshot) -> Result<(), ServeError> {
        self.kv = KvStore::restore(&snapshot.data, self.config.limits.max_sessions)?;
        for (&id, &addr) in self.kv.member_addrs() {
            self.addrs.insert(id, addr);
            if id != self.id {
                self.endpoint.set_peer_addr(NetNodeId(id), addr);
            }
        }
        self.applied = snapshot.meta.index;
        self.snapshot_index = self.snapshot_index.max(snapshot.meta.index);
        self.applied_bytes_since_snapshot = 0;
        info!(
            node = self.id,
            index = snapshot.meta.index,
            keys = self.kv.len(),
            "installed snapshot from the leader"
        );
        Ok(())
    }

    fn apply(&mut self, entries: Vec<consensus_core::Entry>) -> Result<(), ServeError> {
        for entry in entries {
            let index = entry.index;
            let waiting = self.pending_writes.remove(&index);
            match entry.payload {
                EntryPayload::Noop => {}
                EntryPayload::Data(data) => {
                    self.applied_bytes_since_snapshot += data.len() as u64;
                    let (commands, mut waiters) = match waiting {
                        Some(pending) => {
                            self.pending_write_count -= pending.waiters.len();
                            if pending.term == entry.term {
                                (pending.commands, pending.waiters)
                            } else {
                                reply_all(pending.waiters, ServerError::LeaderChanged);
                                (Batch::decode(&data)?.commands, Vec::new())
                            }
                        }
                        None => (Batch::decode(&data)?.commands, Vec::new()),
                    };
                    for (i, command) in commands.iter().enumerate() {
                        let result = self.kv.apply(command, index);
                        if let Command::SetMemberAddr { id, addr } = command {
                            self.addrs.insert(*id, *addr);
                            if *id != self.id {
                                self.endpoint.set_peer_addr(NetNodeId(*id), *addr);
                            }
                        }
                        if let (Some(result), Some(slot)) = (result, waiters.get_mut(i)) {
                            if let Some(responder) = slot.take() {
                                let _ = responder.reply(&result.map(Reply::Write));
                            }
                        }
                    }
                }
                EntryPayload::ConfChange(change) => {
                    info!(node = self.id, index, ?change, conf = ?self.raft.conf_state(), "membership change applied");
                    let mut i = 0;
                    while i < self.admin.len() {
                        let AdminWait::Conf {
                            index: at, term, ..
                        } = &self.admin[i];
                        if *at == index {
                            let ok = *term == entry.term;
                            let AdminWait::Conf { responder, .. } = self.admin.swap_remove(i);
                            let reply = if ok {
                                Ok(Reply::Done)
                            } else {
                                Err(ServerError::LeaderChanged)
                            };
                            let _ = responder.reply(&reply);
                        } else {
                            i += 1;
                        }
                    }
                }
            }
            self.applied = index;
        }
        Ok(())
    }

    fn confirm_durable(&mut self, durable: u64) -> Result<(), ServeError> {
        while let Some((wal_index, _)) = self.unconfirmed.front() {
            if *wal_index > durable {
                break;
            }
            let (_, token) = self.unconfirmed.pop_front().expect("front exists");
            self.raft.persisted(token)?;
        }
        Ok(())
    }

    /// Starts a snapshot of the state machine once enough was applied since the last one. Only
    /// entries durable here are covered. The loop only clones the state (shared keys and values:
    /// no bytes copied); serialising it and writing the file run on a blocking thread, and
    /// [`on_snapshot_step`](Self::on_snapshot_step) adopts the result, so a large snapshot does not
    /// stall requests and replication.
    fn maybe_snapshot(&mut self) -> Result<(), ServeError> {
        if self.snapshot_task.is_some() {
            return Ok(());
        }
        let since = self.applied.saturating_sub(self.snapshot_index);
        if since == 0
            || (since < self.config.snapshot.entries
                && self.applied_bytes_since_snapshot < SNAPSHOT_BYTES)
        {
            return Ok(());
        }
        let status = self.raft.status();
        if self.applied > status.persisted_index {
            return Ok(());
        }
        let index = self.applied;
        let conf = self.raft.conf_state().clone();
        let Some(job) = self.raft.storage().begin_snapshot(index, conf)? else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let state = self.kv.clone();
        debug!(
            node = self.id,
            index,
            clone_us = started.elapsed().as_micros() as u64,
            "snapshot started"
        );
        self.snapshot_index = index;
        self.applied_bytes_since_snapshot = 0;
        self.snapshot_task = Some(tokio::task::spawn_blocking(move || {
            let data = state.snapshot()?;
            drop(state);
            Ok(SnapshotStep::Written(job.write(data)?))
        }));
        Ok(())
    }

    /// Adopts a snapshot written in the background (then records its checkpoint and compacts the
    /// log, again in the background), or notes that the checkpoint is done.
    fn on_snapshot_step(
        &mut self,
        done: Result<Result<SnapshotStep, ServeError>, tokio::task::JoinError>,
    ) -> Result<(), ServeError> {
        let step =
            done.map_err(|e| ServeError::Stopped(format!("snapshot task failed: {e}")))??;
        match step {
            SnapshotStep::Written(written) => {
                let index = written.meta().index;
                if let Some(checkpoint) = self.raft.storage_mut().finish_snapshot(written)? {
                    debug!(
                        node = self.id,
                        index, "snapshot written, recording checkpoint"
                    );
                    self.snapshot_task = Some(tokio::task::spawn_blocking(move || {
                        checkpoint.run()?;
                        Ok(SnapshotStep::Checkpointed(index))
                    }));
                }
            }
            SnapshotStep::Checkpointed(index) => {
                debug!(node = self.id, index, "snapshot taken, log compacted");
            }
        }
        Ok(())
    }

    // ---- status -------------------------------------------------------------------------------

    fn members(&self) -> Vec<Member> {
        let conf = self.raft.conf_state();
        conf.members()
            .into_iter()
            .map(|id| Member {
                id,
                addr: self.addrs.get(&id).copied(),
                voter: conf.is_voter(id),
                leader: self.soft.leader == Some(id),
            })
            .collect()
    }

    fn status(&self) -> NodeStatus {
        let status = self.raft.status();
        let conf = self.raft.conf_state();
        let role = match status.role {
            RaftRole::Leader => proto::Role::Leader,
            RaftRole::Candidate => proto::Role::Candidate,
            RaftRole::PreCandidate => proto::Role::PreCandidate,
            RaftRole::Follower if conf.learners.contains(&self.id) => proto::Role::Learner,
            RaftRole::Follower => proto::Role::Follower,
        };
        NodeStatus {
            id: self.id,
            cluster: self.config.cluster.clone(),
            role,
            term: status.term,
            leader: status.leader,
            commit_index: status.commit,
            applied_index: self.applied,
            last_index: status.last_index,
            persisted_index: status.persisted_index,
            snapshot_index: self.raft.storage().snapshot_meta().index,
            revision: self.kv.revision(),
            keys: self.kv.len() as u64,
            members: self.members(),
        }
    }
}

/// What a background snapshot task finished.
enum SnapshotStep {
    /// The snapshot file is written; the store adopts it next.
    Written(WrittenSnapshot),
    /// The checkpoint at this snapshot index is recorded and the log compacted.
    Checkpointed(u64),
}

/// Waits for the background snapshot task (the caller checks there is one).
async fn join_snapshot_task(
    task: &mut Option<tokio::task::JoinHandle<Result<SnapshotStep, ServeError>>>,
) -> Result<Result<SnapshotStep, ServeError>, tokio::task::JoinError> {
    match task {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

fn reply_all(waiters: Vec<Option<Responder>>, error: ServerError) {
    for responder in waiters.into_iter().flatten() {
        let _ = responder.reply(&Err(error.clone()));
    }
}
