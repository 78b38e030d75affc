//! One replication group on this node, for any protocol: the event loop around the one replica
//! loop of `consensus-core` ([`consensus_core::Replica`]).
//!
//! - [`host`]: [`host::GroupHost`], the `Host` the replica loop drives — sends through the
//!   endpoint (snapshots on the bulk stream), submits writes to the store, reports the store's
//!   durable index, installs snapshots into and applies entries to the KV service.
//! - [`kv_service`]: client writes (validated, batched into one proposal, answered when applied,
//!   lost proposals detected by payload), reads (ReadIndex, stale) and the state machine.
//! - [`leaderless`]: writes that arrive during an election wait (bounded) for a leader.
//! - [`admin`]: membership changes, leader transfer, status.
//! - [`membership`]: the membership as of the last applied entry (what a split at that entry
//!   gives the new group).
//! - [`snapshot`]: local snapshots written and checkpointed off the loop.
//! - [`sidecar`]: a service driven by the same loop beside the engine, addressed by it as node 0
//!   (primary-backup's configuration manager).
//! - [`quiesce`]: idle groups of a sharded node stop ticking (leader and followers agree first).
//! - [`shard`]: the key range the group serves (`WrongShard` outside it) and the node's table of
//!   groups the shard map is answered from.
//!
//! A driver reads its own [`GroupChannels`]: the endpoint's receivers themselves when the node
//! runs one group, or the channels the node's router (`crate::shards::router`) feeds.
//!
//! # The loop
//! Each iteration waits for one event (a peer message, a client request, a durability report from
//! the store's sync thread, a tick, shutdown), drains what else is queued (bounded), flushes the
//! batched proposal and reads, then calls [`Replica::drive`]: send → persist → confirm → apply,
//! with the persistence contract kept by the replica loop (held votes/acks leave only once their
//! write is durable).
//!
//! # Requests on followers
//! Writes and membership changes are answered with `NotLeader` (leader id and address) so the
//! client redirects; reads are served locally after a ReadIndex round through the leader. A write
//! arriving while no leader is known waits (at most an election timeout) until one is, so the
//! client hears of the new leader as soon as this member does.

mod admin;
mod host;
mod kv_service;
mod leaderless;
mod membership;
pub(crate) mod quiesce;
pub(crate) mod shard;
pub(crate) mod sidecar;
mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use consensus_core::{Consensus, Envelope, Replica, Role, Storage};
use net_quic::{ClientRequest, Endpoint, PeerMessage as NetPeerMessage, Receivers};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::ServeConfig;
use crate::kv::KvStore;
use crate::proto::{Consistency, MessageClass, PeerMessage, Quorate, Request, ServerError};
use crate::server::ServeError;
use crate::store::{Durability, LogStore};

use host::GroupHost;
use quiesce::{Quiescence, View};
use shard::GroupShard;
use sidecar::Sidecar;
use snapshot::SnapshotTask;

/// Peer messages handled per iteration at most (beyond the one that woke the loop).
const PEER_DRAIN: usize = 1024;
/// A loop iteration taking at least this long is logged.
const SLOW_ITERATION: Duration = Duration::from_millis(20);

/// A protocol engine the node can run: any [`Consensus`] on a [`LogStore`] of its durable state.
pub(crate) trait Engine: Consensus + Send + 'static {
    /// The engine's store.
    fn store(&self) -> &LogStore<Self::HardState>;
    /// The engine's store, to adopt a local snapshot.
    fn store_mut(&mut self) -> &mut LogStore<Self::HardState>;
    /// The storage handed to `Host::submit`, as the store it is.
    fn as_store(storage: &mut Self::Storage) -> &mut LogStore<Self::HardState>;
}

impl<C> Engine for C
where
    C: Consensus<Storage = LogStore<<C as Consensus>::HardState>> + Send + 'static,
{
    fn store(&self) -> &LogStore<C::HardState> {
        self.storage()
    }

    fn store_mut(&mut self) -> &mut LogStore<C::HardState> {
        self.storage_mut()
    }

    fn as_store(storage: &mut C::Storage) -> &mut LogStore<C::HardState> {
        storage
    }
}

/// What one group's loop receives: peer messages for the group and client requests to it.
pub(crate) struct GroupChannels {
    /// Peer messages of this group.
    pub(crate) peer: mpsc::Receiver<NetPeerMessage<PeerMessage>>,
    /// Client requests to this group (unwrapped from `Request::Routed` by the router).
    pub(crate) requests: mpsc::Receiver<ClientRequest<Quorate>>,
}

impl From<Receivers<Quorate>> for GroupChannels {
    /// The endpoint's own receivers: the node runs this one group.
    fn from(receivers: Receivers<Quorate>) -> Self {
        GroupChannels {
            peer: receivers.peer,
            requests: receivers.requests,
        }
    }
}

/// How the loop runs an engine beyond the defaults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DriverOptions {
    /// Tick the engine as often as the wall clock says (a late tick is caught up), so an engine
    /// counting leases in ticks never stretches one while the loop stalls.
    pub(crate) wall_clock_ticks: bool,
    /// Take local snapshots (and compact the log) as `[snapshot]` says.
    pub(crate) snapshots: bool,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            wall_clock_ticks: false,
            snapshots: true,
        }
    }
}

/// The group's event loop state. Built by the server, run by [`Driver::run`].
pub(crate) struct Driver<C: Consensus> {
    id: u64,
    config: Arc<ServeConfig>,
    replica: Replica<C>,
    host: GroupHost,
    peer_rx: mpsc::Receiver<NetPeerMessage<PeerMessage>>,
    request_rx: mpsc::Receiver<ClientRequest<Quorate>>,
    durable_rx: watch::Receiver<Durability>,
    shutdown_rx: watch::Receiver<bool>,
    snapshot: SnapshotTask,
    /// Set while a stopping leader waits for its transfer to complete.
    draining_until: Option<Instant>,
    options: DriverOptions,
    /// A service run beside the engine (see [`sidecar`]).
    sidecar: Option<Box<dyn Sidecar<C>>>,
    sidecar_durable: Option<watch::Receiver<Durability>>,
    /// When the loop started, and the ticks given since (wall-clock ticks).
    started: Instant,
    ticks: u64,
    /// Whether this loop closes the endpoint when it stops (not when other groups share it).
    owns_endpoint: bool,
    /// Whether the group is idle and not ticking (see [`quiesce`]).
    quiet: Quiescence,
    /// Quiescence messages to send once this iteration's own messages are out.
    control_out: Vec<(u64, crate::proto::quiesce::Quiesce)>,
}

impl<C: Engine> Driver<C> {
    /// Builds the driver around an engine whose store was opened and a KV store restored from its
    /// snapshot.
    pub(crate) fn new(
        config: Arc<ServeConfig>,
        engine: C,
        kv: KvStore,
        endpoint: Endpoint<Quorate>,
        channels: GroupChannels,
        shutdown_rx: watch::Receiver<bool>,
        shard: GroupShard,
    ) -> Self {
        let store = engine.store();
        let durable_rx = store.subscribe_durable();
        let snapshot = SnapshotTask::new(store.snapshot_meta().index);
        let host = GroupHost::new(
            config.clone(),
            endpoint,
            store.durable_handle(),
            kv,
            engine.status().applied,
            engine.status().conf_state,
            shard,
        );
        Driver {
            id: config.node_id,
            config,
            replica: Replica::new(engine),
            host,
            peer_rx: channels.peer,
            request_rx: channels.requests,
            durable_rx,
            shutdown_rx,
            snapshot,
            draining_until: None,
            options: DriverOptions::default(),
            sidecar: None,
            sidecar_durable: None,
            started: Instant::now(),
            ticks: 0,
            owns_endpoint: true,
            quiet: Quiescence::disabled(),
            control_out: Vec::new(),
        }
    }

    /// Lets the group go quiet when idle (not with lease reads, which count ticks).
    pub(crate) fn quiescing(mut self) -> Self {
        if self.config.raft.read_mode == crate::config::ReadModeSetting::ReadIndex {
            let election = self.config.raft.election_ticks;
            self.quiet = Quiescence::new(election, (election / 2).max(1));
        }
        self
    }

    /// What this group reports in the shard map.
    fn group_state(&self) -> shard::GroupState {
        shard::GroupState {
            leader: self.host.soft.leader,
            keys: self.host.kv.store().len() as u64,
            quiet: self.quiet.is_quiet(),
            prepared: self.host.kv.store().shard_txns().prepared().len() as u64,
        }
    }

    /// What quiescence looks at.
    fn quiesce_view(&self) -> View {
        let status = self.replica.engine().status();
        let conf = &status.conf_state;
        View {
            leader_role: status.role == Role::Leader,
            leader: status.leader,
            term: status.term,
            commit: status.commit,
            applied: self.host.kv.applied(),
            last_index: status.last_index,
            idle: self.host.is_idle() && !self.snapshot.running(),
            peers: conf
                .voters
                .iter()
                .chain(conf.learners.iter())
                .copied()
                .filter(|&id| id != self.id)
                .collect(),
        }
    }

    /// The endpoint is shared with other groups: it is closed by the node, not by this loop.
    pub(crate) fn sharing_endpoint(mut self) -> Self {
        self.owns_endpoint = false;
        self
    }

    /// Runs `sidecar` in this loop and applies `options`.
    pub(crate) fn with_sidecar(
        mut self,
        sidecar: Box<dyn Sidecar<C>>,
        options: DriverOptions,
    ) -> Self {
        self.sidecar_durable = Some(sidecar.subscribe_durable());
        self.sidecar = Some(sidecar);
        self.options = options;
        self
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
                }
                done = self.snapshot.join(), if self.snapshot.running() => {
                    self.on_snapshot_step(done)?;
                }
                changed = sidecar_changed(self.sidecar_durable.as_mut()) => {
                    if let Some(error) = changed?.error {
                        return Err(ServeError::Stopped(format!("sidecar store sync failed: {error}")));
                    }
                }
                // Before the message channels: under constant load they are never empty, and
                // the engine's clock (leases, timeouts) must not stall behind them.
                _ = ticker.tick(), if self.quiet.ticker_runs() => {
                    self.on_tick();
                    self.host.expire(Instant::now());
                    // Sent after this iteration's own messages (the tick's heartbeats):
                    // no heartbeat may follow a proposal to go quiet.
                    let view = self.quiesce_view();
                    self.control_out.extend(self.quiet.on_tick(&view));
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
            self.host.flush_proposals(self.replica.engine_mut());
            self.host.flush_reads(self.replica.engine_mut());
            self.replica.drive(&mut self.host)?;
            for (to, message) in std::mem::take(&mut self.control_out) {
                self.host.send_control(to, &message);
            }
            self.drive_sidecar()?;
            if self.host.release_parked(self.replica.engine_mut()) {
                self.host.flush_proposals(self.replica.engine_mut());
                self.replica.drive(&mut self.host)?;
            }
            // Before a checkpoint can cover a split's entry: the new group is durable first.
            self.create_split_groups().await?;
            if self.options.snapshots {
                self.maybe_snapshot()?;
            }
            let state = self.group_state();
            self.host.shard.table.publish(self.host.group(), state);
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
                let leader = self.host.soft.leader;
                if leader.is_some_and(|leader| leader != self.id) || Instant::now() >= deadline {
                    info!(
                        node = self.id,
                        ?leader,
                        "driver stopping after handing off leadership"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// On shutdown, a leader first hands leadership to another voter (if its protocol can) so the
    /// group does not wait an election timeout; returns whether the loop should keep running.
    fn start_draining(&mut self) -> bool {
        // A quiet group ticks again: the hand-off and its deadline need the clock.
        self.quiet.on_request();
        if self.host.soft.role != Role::Leader {
            return false;
        }
        let status = self.replica.engine().status();
        let Some(to) = status
            .conf_state
            .voters
            .iter()
            .copied()
            .find(|&id| id != self.id)
        else {
            return false;
        };
        if self.replica.engine_mut().transfer_leader(to).is_err() {
            return false;
        }
        let ticks = self.config.raft.election_ticks;
        self.draining_until = Some(Instant::now() + self.config.tick() * ticks);
        info!(node = self.id, to, "handing off leadership before stopping");
        true
    }

    /// Creates the groups of the splits this iteration applied, in order, off the async workers
    /// (a store's and `shards.json`'s fsyncs); this loop waits, other groups' loops run on.
    async fn create_split_groups(&mut self) -> Result<(), ServeError> {
        match self.host.take_pending_splits() {
            Some((splits, pending)) => splits.create(pending).await,
            None => Ok(()),
        }
    }

    /// Answers everything still waiting, lets the store finish its writes, and closes the
    /// endpoint's sends.
    async fn finish(&mut self) {
        self.request_rx.close();
        while let Ok(request) = self.request_rx.try_recv() {
            let _ = request.responder.reply(&Err(ServerError::ShuttingDown));
        }
        self.host.fail_all(ServerError::ShuttingDown);
        // A snapshot in the background is finished, so the next start replays from it.
        while self.snapshot.running() {
            let done = self.snapshot.join().await;
            if let Err(error) = self.on_snapshot_step(done) {
                warn!(node = self.id, %error, "snapshot not completed");
            }
        }
        if let Err(error) = self.replica.engine().store().sync() {
            warn!(node = self.id, %error, "final sync failed");
        }
        if !self.owns_endpoint {
            return;
        }
        let report = self
            .host
            .endpoint()
            .shutdown(Duration::from_millis(500))
            .await;
        debug!(node = self.id, ?report, "endpoint closed");
    }

    /// One tick, or as many as the wall clock says are due (`wall_clock_ticks`).
    fn on_tick(&mut self) {
        let due = if self.options.wall_clock_ticks {
            let tick = self.config.tick().as_nanos().max(1);
            let elapsed = self.started.elapsed().as_nanos() / tick;
            // Bounded: after a very long stall (SIGSTOP) the rest is skipped, not spun through.
            (elapsed as u64).saturating_sub(self.ticks).min(100_000)
        } else {
            1
        };
        for _ in 0..due {
            if !self.quiet.ticks_engine() {
                break;
            }
            self.replica.engine_mut().tick();
            if let Some(sidecar) = &mut self.sidecar {
                sidecar.tick();
            }
        }
        self.ticks = if self.options.wall_clock_ticks {
            (self.started.elapsed().as_nanos() / self.config.tick().as_nanos().max(1)) as u64
        } else {
            self.ticks + 1
        };
    }

    /// Hands the sidecar what the engine addressed to it, runs it, and steps its answers into the
    /// engine (a few rounds: an answer may make the engine address it again).
    fn drive_sidecar(&mut self) -> Result<(), ServeError> {
        let Some(sidecar) = &mut self.sidecar else {
            return Ok(());
        };
        for _ in 0..4 {
            for message in std::mem::take(&mut self.host.local) {
                sidecar.take_from_engine(message);
            }
            let answers = sidecar.drive()?;
            if answers.is_empty() {
                break;
            }
            for answer in answers {
                match answer.decode::<C::Message>() {
                    Ok(message) => {
                        if let Err(error) = self.replica.engine_mut().step(message) {
                            debug!(node = self.id, %error, "sidecar message refused by the engine");
                        }
                    }
                    Err(error) => {
                        warn!(node = self.id, %error, "sidecar message does not decode");
                    }
                }
            }
            self.replica.drive(&mut self.host)?;
        }
        Ok(())
    }

    fn step(&mut self, message: NetPeerMessage<PeerMessage>) {
        let authenticated = message.from.0;
        let envelope = message.msg;
        if let Some(sidecar) = &mut self.sidecar {
            if envelope.group == sidecar.group() {
                sidecar.step(authenticated, envelope);
                return;
            }
        }
        if envelope.group == self.host.group() && envelope.class == MessageClass::Control {
            return self.on_control(authenticated, &envelope);
        }
        if envelope.group != self.host.group() || envelope.class != MessageClass::Consensus {
            debug!(
                node = self.id,
                group = envelope.group,
                "dropping a message for another group"
            );
            return;
        }
        let decoded: C::Message = match envelope.decode() {
            Ok(decoded) => decoded,
            Err(error) => {
                warn!(node = self.id, from = authenticated, %error, "dropping a peer message that does not decode");
                return;
            }
        };
        // The sender's id comes from its certificate; a message claiming another is dropped.
        if decoded.from() != authenticated || decoded.to() != self.id {
            warn!(
                node = self.id,
                claimed = decoded.from(),
                to = decoded.to(),
                authenticated,
                "dropping a peer message whose sender or addressee does not match"
            );
            return;
        }
        self.quiet.on_message();
        if let Err(error) = self.replica.engine_mut().step(decoded) {
            debug!(node = self.id, %error, "message refused by the engine");
        }
    }

    fn on_control(&mut self, from: u64, envelope: &PeerMessage) {
        let message = match envelope.decode() {
            Ok(message) => message,
            Err(error) => {
                warn!(node = self.id, from, %error, "dropping a quiescence message that does not decode");
                return;
            }
        };
        let view = self.quiesce_view();
        let was_quiet = self.quiet.is_quiet();
        if let Some(answer) = self.quiet.on_control(from, message, &view) {
            self.control_out.push((from, answer));
        }
        if self.quiet.is_quiet() != was_quiet {
            debug!(
                node = self.id,
                group = self.host.group(),
                quiet = !was_quiet,
                "quiescence"
            );
        }
    }

    fn handle_request(&mut self, request: ClientRequest<Quorate>) {
        let ClientRequest {
            request, responder, ..
        } = request;
        // A stale read is answered from this replica's state at once: it needs no ticks, so a
        // quiet group stays quiet (the node's resolver reads prepared transactions this way).
        if !matches!(
            request,
            Request::Read {
                consistency: Consistency::Stale,
                ..
            }
        ) {
            self.quiet.on_request();
        }
        match request {
            Request::Write { session, op } => {
                self.host
                    .handle_write(self.replica.engine_mut(), session, op, responder)
            }
            Request::Read { consistency, op } => self.host.handle_read(consistency, op, responder),
            Request::Admin(admin) => self.handle_admin(admin, responder),
            Request::Routed { group, epoch, .. } => {
                // The router unwraps one level; a nested or unrouted one is refused.
                let _ = responder.reply(&Err(ServerError::WrongShard { group, epoch }));
            }
            Request::Peer(_) => {
                let _ = responder.reply(&Err(ServerError::Unsupported(
                    "this cluster runs a consensus group, not replication = \"peer\"".into(),
                )));
            }
        }
    }
}

/// The sidecar's next durability report (never, without a sidecar).
async fn sidecar_changed(
    rx: Option<&mut watch::Receiver<Durability>>,
) -> Result<Durability, ServeError> {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        return Err(ServeError::Stopped(
            "the sidecar store's sync thread stopped".into(),
        ));
    }
    let durability = rx.borrow_and_update().clone();
    Ok(durability)
}
