//! `replication = "peer"`: the node runs a [`replication_peer::Peer`] instead of a consensus
//! group. Any node takes reads and writes for the keys it replicates; all protocol logic
//! (placement, R/W, dotted version vectors, hints, Merkle anti-entropy, tombstones) stays in
//! `replication-peer`. This module only wires it to the disk, the network and the clock:
//!
//! - [`log`]: every `Persist` is a record of `<data dir>/peer-wal`; a sync thread reports how
//!   far it is durable, and only then are the writes' tokens confirmed — the engine holds back
//!   every acknowledgement, read answer and push that depends on a write until then.
//! - [`requests`]: client requests and answers; [`status`]: what `cluster status` shows.
//! - The loop ([`PeerDriver::run`]): one event (shutdown, durability report, tick, peer message,
//!   client request), what else is queued (bounded), then [`PeerDriver::flush`]: the engine's
//!   writes are appended, its messages sent (class [`MessageClass::Peer`], group 0; one
//!   envelope per destination and drain, see [`batch`]), its replies answered — until its
//!   output is empty. Ticks (`[raft] tick_ms`) pass the wall clock
//!   in milliseconds, which drives request timeouts, hint replay, anti-entropy and tombstone
//!   collection, and the hybrid logical clock of LWW keys.

mod batch;
mod forward;
mod log;
mod requests;
mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use net_quic::{ClientRequest, Endpoint, NodeId as NetNodeId, PeerMessage as NetPeerMessage};
use replication_peer::{CrdtKind, Limits, Peer, Policy, PolicyTable, RequestId};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use crate::config::{PeerPolicy, ServeConfig};
use crate::engine::Opened;
use crate::proto::{
    AdminRequest, MessageClass, PeerMessage, PeerReply, PeerRequest, Quorate, Reply, Request,
    Responder, ServerError,
};
use crate::server::ServeError;

use self::batch::Batches;
use self::forward::{Forward, Forwards, Waiter};
use self::log::PeerLog;

/// Peer messages handled per iteration at most (beyond the one that woke the loop).
const PEER_DRAIN: usize = 1024;
/// Client requests handled per iteration at most.
const REQUEST_DRAIN: usize = 1024;

/// The engine's configuration from the node's.
fn engine_config(config: &ServeConfig) -> replication_peer::Config {
    let members = config.members.iter().map(|m| m.id).collect();
    let mut c = replication_peer::Config::new(config.node_id, members);
    let s = &config.peer;
    c.replication = s.n;
    c.vnodes = s.vnodes;
    c.policies = s
        .prefixes
        .iter()
        .fold(PolicyTable::new(policy(s.policy)), |table, (prefix, p)| {
            table.with_prefix(prefix.as_bytes(), policy(*p))
        });
    c.limits = Limits {
        max_key_bytes: config.limits.max_key_bytes as usize,
        max_value_bytes: config.limits.max_value_bytes as usize,
        ..Limits::default()
    };
    c.request_timeout_ms = config.limits.request_timeout_ms;
    c.hint_retry_ms = s.hint_retry_ms;
    c.max_hints_per_peer = s.max_hints_per_peer;
    c.anti_entropy_interval_ms = s.anti_entropy_interval_ms;
    c.gc_interval_ms = s.gc_interval_ms;
    c.tombstone_grace_ms = s.tombstone_grace_ms;
    c.max_pending_requests = config.limits.max_pending_requests;
    // Keys come from clients: the key index's hash seed is drawn from the OS per start.
    c.index_seed = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        config.node_id,
    );
    c
}

/// The engine's policy for the configured one.
fn policy(policy: PeerPolicy) -> Policy {
    match policy {
        PeerPolicy::Siblings => Policy::Siblings,
        PeerPolicy::Lww => Policy::Lww,
        PeerPolicy::Counter => Policy::Crdt(CrdtKind::Counter),
        PeerPolicy::OrSet => Policy::Crdt(CrdtKind::OrSet),
        PeerPolicy::LwwRegister => Policy::Crdt(CrdtKind::LwwRegister),
    }
}

/// Opens the peer log, recovers the engine from it, and returns the driver to start.
pub(crate) async fn open(config: &Arc<ServeConfig>) -> Result<Opened, ServeError> {
    let engine_config = engine_config(config);
    let (data_dir, cluster, node) = (
        config.data_dir.clone(),
        config.cluster.clone(),
        config.node_id,
    );
    let (log, recovered) =
        tokio::task::spawn_blocking(move || PeerLog::open(&data_dir, &cluster, node))
            .await
            .map_err(|e| ServeError::Stopped(format!("opening the peer log: {e}")))?
            .map_err(|e| ServeError::Stopped(e.to_string()))?;
    let keys = recovered.objects.len();
    let peer = Peer::recover(engine_config, recovered)
        .map_err(|e| ServeError::Stopped(format!("peer configuration: {e}")))?;
    let config = config.clone();
    Ok(Opened {
        snapshot_index: 0,
        keys,
        start: Box::new(move |endpoint, receivers, shutdown_rx| {
            let span = tracing::info_span!("peer", node = config.node_id);
            let driver = PeerDriver {
                durable_rx: log.durable_rx(),
                config,
                peer,
                log,
                endpoint,
                peer_rx: receivers.peer,
                request_rx: receivers.requests,
                shutdown_rx,
                waiting: HashMap::new(),
                forwards: Forwards::default(),
                next_request: 0,
                last_now: 0,
            };
            tokio::spawn(driver.run().instrument(span))
        }),
    })
}

/// The event loop of a peer node.
struct PeerDriver {
    config: Arc<ServeConfig>,
    peer: Peer,
    log: PeerLog,
    endpoint: Endpoint<Quorate>,
    peer_rx: mpsc::Receiver<NetPeerMessage<PeerMessage>>,
    request_rx: mpsc::Receiver<ClientRequest<Quorate>>,
    durable_rx: watch::Receiver<log::Durable>,
    shutdown_rx: watch::Receiver<bool>,
    /// Requests the engine is working on, and who waits for each.
    waiting: HashMap<RequestId, Waiter>,
    /// Requests forwarded to a replica, waiting for its answer.
    forwards: Forwards,
    next_request: u64,
    /// The clock never goes back, whatever the wall clock does.
    last_now: u64,
}

impl PeerDriver {
    async fn run(mut self) -> Result<(), ServeError> {
        info!(
            node = self.config.node_id,
            n = self.config.peer.n,
            r = self.config.peer.r,
            w = self.config.peer.w,
            "peer replication running"
        );
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
                changed = self.shutdown_rx.changed() => {
                    if changed.is_err() || *self.shutdown_rx.borrow() {
                        info!(node = self.config.node_id, "peer driver stopping");
                        return Ok(());
                    }
                }
                changed = self.durable_rx.changed() => {
                    if changed.is_err() {
                        return Err(ServeError::Stopped("the peer log's sync thread stopped".into()));
                    }
                    let durable = self.durable_rx.borrow_and_update().clone();
                    if let Some(error) = durable.error {
                        return Err(ServeError::Stopped(format!("peer log sync failed: {error}")));
                    }
                    if let Some(token) = self.log.confirmed(durable.index) {
                        self.peer.persisted(token).map_err(|e| {
                            ServeError::Stopped(format!("confirming a durable write: {e}"))
                        })?;
                    }
                }
                _ = ticker.tick() => {
                    let now = self.now_ms();
                    self.peer.tick(now);
                    self.forwards.expire(now);
                }
                Some(message) = self.peer_rx.recv() => self.step(message),
                Some(request) = self.request_rx.recv() => self.handle_request(request),
            }
            for _ in 0..PEER_DRAIN {
                match self.peer_rx.try_recv() {
                    Ok(message) => self.step(message),
                    Err(_) => break,
                }
            }
            for _ in 0..REQUEST_DRAIN {
                match self.request_rx.try_recv() {
                    Ok(request) => self.handle_request(request),
                    Err(_) => break,
                }
            }
            self.flush()?;
            // `len()`, not `count()`: this runs every iteration, and walking every key here
            // cost more CPU than the writes themselves once the node held some 10^4 keys.
            if self.log.wants_checkpoint(self.peer.local_objects().len()) {
                let started = std::time::Instant::now();
                self.log
                    .checkpoint(self.peer.local_objects())
                    .map_err(|e| ServeError::Stopped(e.to_string()))?;
                info!(
                    node = self.config.node_id,
                    took_ms = started.elapsed().as_millis() as u64,
                    "peer log checkpointed"
                );
            }
        }
    }

    /// Wall-clock milliseconds, never going back.
    fn now_ms(&mut self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_now = self.last_now.max(wall);
        self.last_now
    }

    /// Drains the engine: writes to the log, messages to the network, replies to clients.
    fn flush(&mut self) -> Result<(), ServeError> {
        loop {
            let out = self.peer.take_output();
            if out.is_empty() {
                return Ok(());
            }
            self.log
                .append(&out.persists)
                .map_err(|e| ServeError::Stopped(e.to_string()))?;
            let mut batches = Batches::default();
            for (to, message) in &out.messages {
                if let Err(error) = batches.push(*to, message) {
                    warn!(node = self.config.node_id, %error, "peer message does not encode");
                }
            }
            for (to, payload) in batches.into_payloads() {
                // A full queue or an unreachable peer loses the batch; the engine's hints,
                // retries and anti-entropy make up for it.
                let envelope = PeerMessage::peer_batch(0, payload);
                if let Err(error) = self.endpoint.send(NetNodeId(to), &envelope) {
                    debug!(node = self.config.node_id, to, %error, "peer messages not sent");
                }
            }
            for (id, answer) in out.replies {
                match self.waiting.remove(&id) {
                    Some(Waiter::Local { responder, request }) => match answer {
                        Err(replication_peer::RequestError::NotAReplica { replicas }) => {
                            self.forward(responder, request, &replicas)
                        }
                        answer => {
                            let reply = requests::reply(&self.config, answer).map(Reply::Peer);
                            let _ = responder.reply(&reply);
                        }
                    },
                    Some(Waiter::Remote { from, id }) => {
                        let reply = requests::reply(&self.config, answer);
                        self.send_forward(from, &Forward::Reply { id, reply });
                    }
                    None => {}
                }
            }
        }
    }

    /// Sends a client's request for a key this node does not replicate to the first of its
    /// replicas; the answer comes back as a [`Forward::Reply`].
    fn forward(&mut self, responder: Responder, request: PeerRequest, replicas: &[u64]) {
        let Some(&to) = replicas.first() else {
            let _ = responder.reply(&Err(ServerError::NotAReplica { replicas: vec![] }));
            return;
        };
        let deadline = self.now_ms() + self.config.limits.request_timeout_ms;
        let id = self.forwards.start(responder, deadline);
        self.send_forward(to, &Forward::Request { id, request });
    }

    fn send_forward(&mut self, to: u64, forward: &Forward) {
        match postcard::to_allocvec(forward) {
            Ok(bytes) => {
                if let Err(error) = self
                    .endpoint
                    .send(NetNodeId(to), &PeerMessage::forward(0, bytes))
                {
                    debug!(node = self.config.node_id, to, %error, "forward not sent");
                }
            }
            Err(error) => warn!(node = self.config.node_id, %error, "forward does not encode"),
        }
    }

    fn on_forward(&mut self, from: u64, forward: Forward) {
        match forward {
            Forward::Request { id, request } => {
                match requests::engine_request(request, &self.config.peer) {
                    Ok(Some(request)) => {
                        self.next_request += 1;
                        let rid = RequestId(self.next_request);
                        self.waiting.insert(rid, Waiter::Remote { from, id });
                        self.peer.client_request(rid, request);
                    }
                    Ok(None) => {
                        let reply = Ok(PeerReply::Status(self.peer_status()));
                        self.send_forward(from, &Forward::Reply { id, reply });
                    }
                    Err(error) => self.send_forward(
                        from,
                        &Forward::Reply {
                            id,
                            reply: Err(error),
                        },
                    ),
                }
            }
            Forward::Reply { id, reply } => {
                if let Some(responder) = self.forwards.finish(id) {
                    let _ = responder.reply(&reply.map(Reply::Peer));
                }
            }
        }
    }

    fn step(&mut self, message: NetPeerMessage<PeerMessage>) {
        let from = message.from.0;
        let envelope = message.msg;
        if envelope.group == 0 && envelope.class == MessageClass::Forward {
            match envelope.decode::<Forward>() {
                Ok(forward) => self.on_forward(from, forward),
                Err(error) => {
                    warn!(node = self.config.node_id, from, %error, "dropping a forward that does not decode")
                }
            }
            return;
        }
        if envelope.group != 0 || envelope.class != MessageClass::Peer {
            debug!(
                node = self.config.node_id,
                from, "dropping a message that is not a peer-replication message"
            );
            return;
        }
        for decoded in batch::decode(&envelope.payload) {
            let decoded = match decoded {
                Ok(m) => m,
                Err(error) => {
                    warn!(node = self.config.node_id, from, %error, "dropping the rest of a peer batch that does not decode");
                    return;
                }
            };
            // The sender is the certificate's node id; the engine refuses non-members.
            if let Err(error) = self.peer.step(from, decoded) {
                debug!(node = self.config.node_id, from, %error, "peer message refused");
            }
        }
    }

    fn handle_request(&mut self, request: ClientRequest<Quorate>) {
        let ClientRequest {
            request, responder, ..
        } = request;
        let answer = match request {
            Request::Peer(request) => {
                match requests::engine_request(request.clone(), &self.config.peer) {
                    Ok(Some(engine_request)) => {
                        self.next_request += 1;
                        let id = RequestId(self.next_request);
                        self.waiting
                            .insert(id, Waiter::Local { responder, request });
                        self.peer.client_request(id, engine_request);
                        return;
                    }
                    Ok(None) => Ok(Reply::Peer(PeerReply::Status(self.peer_status()))),
                    Err(error) => Err(error),
                }
            }
            Request::Admin(AdminRequest::Status) => {
                let peer_status = self.peer_status();
                Ok(Reply::Status(status::node_status(
                    &self.config,
                    &peer_status,
                )))
            }
            Request::Admin(AdminRequest::Members) => Ok(Reply::Members {
                members: status::members(&self.config),
                leader: None,
            }),
            Request::Admin(AdminRequest::Shards) => {
                Ok(Reply::Shards(crate::proto::ShardMap::single()))
            }
            Request::Admin(_) => Err(ServerError::PeerReplication(
                "its membership is fixed by [[members]] and it has no leader".into(),
            )),
            Request::Write { .. } | Request::Read { .. } | Request::Routed { .. } => {
                Err(ServerError::PeerReplication(
                    "send peer requests (`quorate kv get/put/del` do when the node answers so)"
                        .into(),
                ))
            }
        };
        let _ = responder.reply(&answer);
    }

    fn peer_status(&mut self) -> crate::proto::PeerNodeStatus {
        let now = self.now_ms();
        status::peer_status(&self.config, &self.peer, now, self.log.records())
    }

    /// Answers what waits, makes the log durable, closes the endpoint.
    async fn finish(&mut self) {
        self.request_rx.close();
        while let Ok(request) = self.request_rx.try_recv() {
            let _ = request.responder.reply(&Err(ServerError::ShuttingDown));
        }
        for (_, waiter) in self.waiting.drain() {
            if let Waiter::Local { responder, .. } = waiter {
                let _ = responder.reply(&Err(ServerError::ShuttingDown));
            }
        }
        self.forwards.fail_all(ServerError::ShuttingDown);
        if let Err(error) = self.log.sync() {
            warn!(node = self.config.node_id, %error, "final sync failed");
        }
        let report = self.endpoint.shutdown(Duration::from_millis(500)).await;
        debug!(node = self.config.node_id, ?report, "endpoint closed");
    }
}
