//! A node's endpoint: outbound sends (via [`crate::peer`]), inbound connections, shutdown.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use crate::config::Limits;
use crate::frame::{self, FrameDecoder, FrameError};
use crate::identity::{Identity, NodeId};
use crate::peer::{self, Outbound, PeerHandle};
use crate::rpc::{self, Kind, Outbox};
use crate::stats::{add, Stats, StatsSnapshot};
use crate::tls::{self, Credentials, TlsError, CLIENT_ALPN, PEER_ALPN};
use crate::udp::SplitGso;
use crate::{codes, Class, Protocol};

/// How to bind a node's endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The cluster name (the DNS suffix of identity names in certificates).
    pub cluster: String,
    /// UDP address to listen on (port 0 picks one; see [`Endpoint::local_addr`]).
    pub listen: SocketAddr,
    /// The node's certificate, key and the cluster CA. The node's id is read from the certificate.
    pub credentials: Credentials,
    /// Where the other nodes listen (more can be added with [`Endpoint::set_peer_addr`]).
    pub peers: HashMap<NodeId, SocketAddr>,
    /// Sizes, queues and timings.
    pub limits: Limits,
}

/// Why an endpoint (or client) could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The credentials or TLS configuration are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The certificate is valid but not a node certificate.
    #[error("the endpoint certificate names {0}, but a node certificate is required")]
    NotANode(Identity),
    /// The UDP socket could not be bound.
    #[error("binding UDP {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No address is known for the node.
    #[error("no address known for node {0}")]
    UnknownPeer(NodeId),
    /// A node does not send to itself through the network.
    #[error("node {0} is this node")]
    ToSelf(NodeId),
    /// The peer's consensus queue is full; the message was dropped and counted.
    #[error("send queue to node {0} is full; message dropped")]
    QueueFull(NodeId),
    /// The endpoint is shutting down.
    #[error("endpoint is shutting down")]
    ShuttingDown,
    /// The message does not encode within the frame limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A message from a peer, with the node id its certificate proves.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerMessage<M> {
    /// The sending node (from its certificate).
    pub from: NodeId,
    /// The stream class it came on.
    pub class: Class,
    /// The message.
    pub msg: M,
}

/// A client request awaiting its reply.
#[derive(Debug)]
pub struct ClientRequest<P: Protocol> {
    /// The client's identity, from its certificate.
    pub client: Identity,
    /// The request.
    pub request: P::Request,
    /// Replies to the client; dropping it without replying sends the client a "no reply" frame
    /// (the caller gets [`crate::RequestError::NoReply`] at once).
    pub responder: Responder<P::Response>,
}

/// Sends the reply to one client request: queues it for the writer of the client's stream.
#[derive(Debug)]
pub struct Responder<R> {
    id: u64,
    /// `None` once replied.
    stream: Option<Arc<ReplyStream>>,
    max_len: usize,
    _reply: PhantomData<fn(R)>,
}

/// Why a reply could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The reply does not encode within the frame limit (the client is told "no reply").
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The client's stream or connection is gone.
    #[error("client is gone")]
    ClientGone,
}

impl<R: Serialize> Responder<R> {
    /// Sends `reply` to the client.
    pub fn reply(mut self, reply: &R) -> Result<(), ReplyError> {
        let Some(stream) = self.stream.take() else {
            return Err(ReplyError::ClientGone);
        };
        let result = match rpc::encode(self.id, Kind::Reply, Some(reply), self.max_len) {
            Ok(frame) => match stream.queue(frame) {
                true => Ok(()),
                false => Err(ReplyError::ClientGone),
            },
            Err(error) => {
                stream.no_reply(self.id);
                Err(ReplyError::Frame(error))
            }
        };
        stream.outbox.drop_sender();
        result
    }
}

impl<R> Drop for Responder<R> {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            stream.no_reply(self.id);
            stream.outbox.drop_sender();
        }
    }
}

/// Client requests handed to the application whose reply is not yet written (or discarded).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl InFlight {
    fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }

    fn done(&self, n: usize) {
        if n > 0 && self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until no request is in flight or the deadline passes.
    async fn wait_idle(&self, deadline: tokio::time::Instant) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a wake-up between the two is not lost.
            idle.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

/// One client request stream, server side: its replies' outbox and the bounds it counts against.
#[derive(Debug)]
pub(crate) struct ReplyStream {
    outbox: Outbox,
    /// Requests the connection may still have awaiting replies (shared by its streams).
    permits: Arc<tokio::sync::Semaphore>,
    in_flight: Arc<InFlight>,
}

impl ReplyStream {
    /// `n` requests are finished with (reply written or discarded).
    fn settle(&self, n: usize) {
        self.permits.add_permits(n);
        self.in_flight.done(n);
    }

    /// Queues a reply frame; `false` (and the request is settled) if the stream is gone.
    fn queue(&self, frame: Vec<u8>) -> bool {
        let queued = self.outbox.push(frame);
        if !queued {
            self.settle(1);
        }
        queued
    }

    fn no_reply(&self, id: u64) {
        match rpc::encode::<()>(id, Kind::NoReply, None, 0) {
            Ok(frame) => {
                self.queue(frame);
            }
            Err(_) => self.settle(1),
        }
    }
}

/// The inbound side of an endpoint, handed out once by [`Endpoint::bind`].
#[derive(Debug)]
pub struct Receivers<P: Protocol> {
    /// Messages from peers, in stream order per (peer, class).
    pub peer: mpsc::Receiver<PeerMessage<P::Peer>>,
    /// Requests from clients.
    pub requests: mpsc::Receiver<ClientRequest<P>>,
}

/// What [`Endpoint::shutdown`] managed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Frames still queued when the grace period ended (never handed to QUIC).
    pub undelivered_frames: usize,
    /// Peers whose streams were not drained and acknowledged within the grace period.
    pub peers_not_drained: Vec<NodeId>,
    /// Client requests handed to the application whose reply was not written within the grace
    /// period (their clients see the connection close).
    pub requests_unanswered: usize,
    /// The counters at the end.
    pub stats: StatsSnapshot,
}

/// One node's QUIC endpoint: sends to peers, receives from peers and clients. Cheap to clone.
pub struct Endpoint<P: Protocol> {
    inner: Arc<Inner<P>>,
}

impl<P: Protocol> Clone for Endpoint<P> {
    fn clone(&self) -> Self {
        Endpoint {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<P: Protocol> {
    id: NodeId,
    cluster: String,
    quinn: quinn::Endpoint,
    peer_client_config: quinn::ClientConfig,
    limits: Limits,
    stats: Arc<Stats>,
    addrs: parking_lot::Mutex<HashMap<NodeId, SocketAddr>>,
    peers: parking_lot::Mutex<HashMap<NodeId, PeerHandle>>,
    outbound: Outbound,
    closing: AtomicBool,
    in_flight: Arc<InFlight>,
    accept_task: parking_lot::Mutex<Option<JoinHandle<()>>>,
    _protocol: PhantomData<fn(P)>,
}

impl<P: Protocol> Drop for Inner<P> {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.lock().take() {
            task.abort();
        }
        for (_, peer) in self.peers.lock().drain() {
            peer.tasks.iter().for_each(JoinHandle::abort);
        }
        self.quinn
            .close(VarInt::from_u32(codes::SHUTDOWN), b"endpoint dropped");
    }
}

/// What the inbound tasks need (no reference back to the endpoint, so dropping it stops them).
struct Accepting<P: Protocol> {
    id: NodeId,
    cluster: String,
    limits: Limits,
    stats: Arc<Stats>,
    outbound: Outbound,
    peer_tx: mpsc::Sender<PeerMessage<P::Peer>>,
    request_tx: mpsc::Sender<ClientRequest<P>>,
    in_flight: Arc<InFlight>,
}

impl<P: Protocol> Endpoint<P> {
    /// Binds the node's endpoint and starts accepting. Must be called inside a tokio runtime.
    pub fn bind(config: EndpointConfig) -> Result<(Self, Receivers<P>), BindError> {
        let identity = config.credentials.identity(&config.cluster)?;
        let Identity::Node(id) = identity else {
            return Err(BindError::NotANode(identity));
        };
        let transport = config.limits.transport();
        let mut server = quinn::ServerConfig::with_crypto(tls::server_crypto(&config.credentials)?);
        server.transport_config(transport.clone());
        let mut peer_client_config =
            quinn::ClientConfig::new(tls::client_crypto(&config.credentials, PEER_ALPN)?);
        peer_client_config.transport_config(transport);
        let socket = config
            .limits
            .bind_udp(config.listen)
            .map_err(|source| BindError::Socket {
                addr: config.listen,
                source,
            })?;
        let endpoint_config = config
            .limits
            .endpoint_config(tls::reset_key(&config.credentials));
        let runtime = Arc::new(quinn::TokioRuntime);
        let quinn = SplitGso::wrap(runtime.as_ref(), socket)
            .and_then(|socket| {
                quinn::Endpoint::new_with_abstract_socket(
                    endpoint_config,
                    Some(server),
                    socket,
                    runtime,
                )
            })
            .map_err(|source| BindError::Socket {
                addr: config.listen,
                source,
            })?;

        let stats = Arc::new(Stats::default());
        let outbound = Outbound::default();
        let (peer_tx, peer_rx) = mpsc::channel(config.limits.inbound_queue.max(1));
        let (request_tx, request_rx) = mpsc::channel(config.limits.inbound_queue.max(1));
        let in_flight = Arc::new(InFlight::default());
        let accepting = Arc::new(Accepting {
            id,
            cluster: config.cluster.clone(),
            limits: config.limits.clone(),
            stats: stats.clone(),
            outbound: outbound.clone(),
            peer_tx,
            request_tx,
            in_flight: in_flight.clone(),
        });
        let accept_task = tokio::spawn(accept_loop(quinn.clone(), accepting));
        let local = quinn.local_addr().ok();
        info!(node = %id, ?local, "endpoint bound");
        let inner = Inner {
            id,
            cluster: config.cluster,
            quinn,
            peer_client_config,
            limits: config.limits,
            stats,
            addrs: parking_lot::Mutex::new(config.peers),
            peers: parking_lot::Mutex::new(HashMap::new()),
            outbound,
            closing: AtomicBool::new(false),
            in_flight,
            accept_task: parking_lot::Mutex::new(Some(accept_task)),
            _protocol: PhantomData,
        };
        let receivers = Receivers {
            peer: peer_rx,
            requests: request_rx,
        };
        Ok((
            Endpoint {
                inner: Arc::new(inner),
            },
            receivers,
        ))
    }

    /// This node's id (from its certificate).
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The UDP address the endpoint listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.quinn.local_addr()
    }

    /// Sets (or changes) where node `id` listens; used from the next connection attempt on. An
    /// open connection to a different address is closed (the peer moved, e.g. restarted
    /// elsewhere), so the next send dials the new address.
    pub fn set_peer_addr(&self, id: NodeId, addr: SocketAddr) {
        self.inner.addrs.lock().insert(id, addr);
        if let Some(peer) = self.inner.peers.lock().get(&id) {
            *peer.shared.addr.lock() = addr;
        }
        peer::close_if_moved(&self.inner.outbound, id, addr);
    }

    /// Whether this node has an open connection to node `id` for its sends (connections are made
    /// on demand, and one found stale, e.g. to a peer that restarted, is closed).
    pub fn peer_connected(&self, id: NodeId) -> bool {
        self.inner
            .outbound
            .lock()
            .get(&id)
            .is_some_and(|conn| conn.close_reason().is_none())
    }

    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Runs `f` with the peer's handle, creating it (and its writer tasks) on first use.
    fn with_peer<T>(&self, to: NodeId, f: impl FnOnce(&PeerHandle) -> T) -> Result<T, SendError> {
        let inner = &self.inner;
        if to == inner.id {
            return Err(SendError::ToSelf(to));
        }
        let mut peers = inner.peers.lock();
        // Checked under the lock that shutdown takes to drain the peers.
        if inner.closing.load(Ordering::Acquire) {
            return Err(SendError::ShuttingDown);
        }
        if let Some(peer) = peers.get(&to) {
            return Ok(f(peer));
        }
        let addr = *inner
            .addrs
            .lock()
            .get(&to)
            .ok_or(SendError::UnknownPeer(to))?;
        let peer = PeerHandle::spawn(
            inner.id,
            to,
            addr,
            inner.quinn.clone(),
            inner.peer_client_config.clone(),
            inner.cluster.clone(),
            inner.limits.clone(),
            inner.stats.clone(),
            inner.outbound.clone(),
        );
        let result = f(&peer);
        peers.insert(to, peer);
        Ok(result)
    }

    /// Queues a consensus-class message to node `to`. Never blocks: if the peer's queue is full
    /// the message is dropped, counted, and [`SendError::QueueFull`] returned.
    pub fn send(&self, to: NodeId, msg: &P::Peer) -> Result<(), SendError> {
        let bytes = frame::encode(msg, self.inner.limits.max_frame_len)?;
        self.send_encoded(to, bytes)
    }

    /// Queues an already encoded consensus frame (see [`frame::encode`]); encode once and send
    /// to many peers for a broadcast.
    pub fn send_encoded(&self, to: NodeId, frame: Bytes) -> Result<(), SendError> {
        let stats = &self.inner.stats;
        self.with_peer(to, |peer| {
            peer.shared.queued.fetch_add(1, Ordering::Relaxed);
            match peer.consensus_tx.try_send(frame) {
                Ok(()) => Ok(()),
                Err(_) => {
                    peer.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    add(&stats.dropped_queue_full, 1);
                    Err(SendError::QueueFull(to))
                }
            }
        })?
    }

    /// Queues a consensus-class message to node `to`, waiting while the peer's queue is full
    /// instead of dropping (back-pressure). For senders that would rather slow down than lose a
    /// message, e.g. a stream of client-driven appends; note that it waits as long as the peer is
    /// unreachable, so bound it with a timeout where that matters.
    pub async fn send_wait(&self, to: NodeId, msg: &P::Peer) -> Result<(), SendError> {
        let bytes = frame::encode(msg, self.inner.limits.max_frame_len)?;
        self.enqueue_waiting(to, Class::Consensus, bytes).await
    }

    /// Queues a bulk-class message (e.g. a snapshot chunk) to node `to`, waiting while the
    /// peer's bulk queue is full (back-pressure). Bulk messages use their own stream, so they
    /// never delay consensus messages.
    pub async fn send_bulk(&self, to: NodeId, msg: &P::Peer) -> Result<(), SendError> {
        let bytes = frame::encode(msg, self.inner.limits.max_bulk_frame_len)?;
        self.enqueue_waiting(to, Class::Bulk, bytes).await
    }

    async fn enqueue_waiting(
        &self,
        to: NodeId,
        class: Class,
        frame: Bytes,
    ) -> Result<(), SendError> {
        // Queued at once when there is room; only a full queue costs handles to wait with.
        let full = self.with_peer(to, |peer| {
            let tx = match class {
                Class::Consensus => &peer.consensus_tx,
                Class::Bulk => &peer.bulk_tx,
            };
            peer.shared.queued.fetch_add(1, Ordering::Relaxed);
            match tx.try_send(frame) {
                Ok(()) => Ok(None),
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    Ok(Some((tx.clone(), peer.shared.clone(), frame)))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    peer.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    Err(SendError::ShuttingDown)
                }
            }
        })??;
        let Some((tx, shared, frame)) = full else {
            return Ok(());
        };
        if tx.send(frame).await.is_err() {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(SendError::ShuttingDown);
        }
        Ok(())
    }

    /// Stops accepting sends, waits for the replies to client requests already handed to the
    /// application to be written, lets every peer's writers drain their queues and wait for the
    /// peer's acknowledgement, all within `grace`; then closes the endpoint. Reports what was not
    /// delivered. Inbound receivers end once their connections are closed.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let inner = &self.inner;
        let peers: Vec<(NodeId, PeerHandle)> = {
            let mut peers = inner.peers.lock();
            inner.closing.store(true, Ordering::Release);
            peers.drain().collect()
        };
        let deadline = tokio::time::Instant::now() + grace;
        // Replies first: draining the peers below then gives their packets time to leave.
        inner.in_flight.wait_idle(deadline).await;
        let requests_unanswered = inner.in_flight.count();
        let mut peers_not_drained = Vec::new();
        let mut undelivered_frames = 0;
        let mut waiting = Vec::new();
        for (id, peer) in peers {
            // Dropping the senders ends each writer once its queue is empty (bulk senders
            // blocked in `send_wait`/`send_bulk` hold clones and are cut off by the deadline below).
            drop(peer.consensus_tx);
            drop(peer.bulk_tx);
            waiting.push((id, peer.shared, peer.tasks));
        }
        for (id, shared, mut tasks) in waiting {
            let mut drained = true;
            for task in &mut tasks {
                if tokio::time::timeout_at(deadline, &mut *task).await.is_err() {
                    drained = false;
                    task.abort();
                }
            }
            undelivered_frames += shared.queued.load(Ordering::Relaxed);
            if !drained {
                peers_not_drained.push(id);
            }
        }
        if let Some(task) = inner.accept_task.lock().take() {
            task.abort();
        }
        inner
            .quinn
            .close(VarInt::from_u32(codes::SHUTDOWN), b"shutdown");
        inner.outbound.lock().clear();
        let idle_deadline = deadline.max(tokio::time::Instant::now() + Duration::from_millis(200));
        let _ = tokio::time::timeout_at(idle_deadline, inner.quinn.wait_idle()).await;
        peers_not_drained.sort();
        let report = ShutdownReport {
            undelivered_frames,
            peers_not_drained,
            requests_unanswered,
            stats: inner.stats.snapshot(),
        };
        info!(node = %inner.id, ?report, "endpoint shut down");
        report
    }
}

async fn accept_loop<P: Protocol>(quinn: quinn::Endpoint, accepting: Arc<Accepting<P>>) {
    while let Some(incoming) = quinn.accept().await {
        let accepting = accepting.clone();
        tokio::spawn(async move { accepting.handle_incoming(incoming).await });
    }
}

fn close(conn: &Connection, code: u32, reason: &str) {
    // Close reasons travel in one packet: keep them short.
    let reason = &reason.as_bytes()[..reason.len().min(200)];
    conn.close(VarInt::from_u32(code), reason);
}

impl<P: Protocol> Accepting<P> {
    async fn handle_incoming(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(conn) => conn,
            Err(error) => {
                add(&self.stats.rejected_connections, 1);
                warn!(node = %self.id, %remote, %error, "inbound handshake failed");
                return;
            }
        };
        let identity = match tls::peer_identity(&conn, &self.cluster) {
            Ok(identity) => identity,
            Err(error) => {
                add(&self.stats.rejected_connections, 1);
                warn!(node = %self.id, %remote, %error, "inbound connection has no identity");
                close(&conn, codes::NOT_AUTHORIZED, &error.to_string());
                return;
            }
        };
        let alpn = tls::negotiated_alpn(&conn).unwrap_or_default();
        let span = tracing::info_span!(
            "net.conn_in",
            node = %self.id,
            peer = %identity,
            %remote,
            alpn = %String::from_utf8_lossy(&alpn),
        );
        async move {
            if alpn == PEER_ALPN {
                match identity {
                    Identity::Node(from) if from != self.id => self.serve_peer(conn, from).await,
                    other => {
                        add(&self.stats.rejected_connections, 1);
                        warn!(peer = %other, "refused: the peer ALPN needs another node's certificate");
                        close(&conn, codes::NOT_AUTHORIZED, "peer ALPN requires a node certificate");
                    }
                }
            } else if alpn == CLIENT_ALPN {
                self.serve_client(conn, identity).await;
            } else {
                add(&self.stats.rejected_connections, 1);
                close(&conn, codes::NOT_AUTHORIZED, "unknown ALPN");
            }
        }
        .instrument(span)
        .await
    }

    /// A node's connection: it may only open unidirectional class streams.
    async fn serve_peer(self: Arc<Self>, conn: Connection, from: NodeId) {
        debug!("peer connection accepted");
        // If the peer restarted, our own connection to it is stale: find out now.
        let outbound = self.outbound.clone();
        let wait = self.limits.connect_timeout;
        tokio::spawn(
            async move { peer::probe(&outbound, from, wait).await }
                .instrument(tracing::Span::current()),
        );
        loop {
            tokio::select! {
                uni = conn.accept_uni() => match uni {
                    Ok(recv) => {
                        let this = self.clone();
                        let conn = conn.clone();
                        tokio::spawn(
                            async move { this.read_peer_stream(conn, from, recv).await }
                                .instrument(tracing::Span::current()),
                        );
                    }
                    Err(error) => {
                        debug!(%error, "peer connection ended");
                        return;
                    }
                },
                bi = conn.accept_bi() => {
                    if bi.is_ok() {
                        add(&self.stats.protocol_violations, 1);
                        warn!("peer opened a bidirectional stream; closing");
                        close(&conn, codes::PROTOCOL_VIOLATION, "peer connections carry unidirectional streams only");
                    }
                    return;
                }
            }
        }
    }

    fn frame_error(&self, conn: &Connection, error: &FrameError) {
        add(&self.stats.decode_errors, 1);
        warn!(%error, "refusing frame; closing the connection");
        close(conn, codes::BAD_FRAME, &error.to_string());
    }

    async fn read_peer_stream(&self, conn: Connection, from: NodeId, mut recv: RecvStream) {
        let mut tag = [0u8; 1];
        if recv.read_exact(&mut tag).await.is_err() {
            return;
        }
        let Some(class) = Class::from_tag(tag[0]) else {
            add(&self.stats.protocol_violations, 1);
            warn!(tag = tag[0], "unknown stream class; closing");
            close(&conn, codes::PROTOCOL_VIOLATION, "unknown stream class");
            return;
        };
        let mut decoder = FrameDecoder::new(self.limits.max_len(class));
        // Up to this many received chunks (about one packet each) per read: one call into the
        // connection per batch rather than per packet.
        let mut chunks: [Bytes; 32] = Default::default();
        loop {
            match recv.read_chunks(&mut chunks).await {
                Ok(Some(count)) => {
                    for chunk in &mut chunks[..count] {
                        add(&self.stats.bytes_received, chunk.len() as u64);
                        // Frames whole in the chunk are decoded from it in place.
                        decoder.push(std::mem::take(chunk));
                        loop {
                            match decoder.next_frame::<P::Peer>() {
                                Ok(Some(msg)) => {
                                    add(&self.stats.frames_received, 1);
                                    let message = PeerMessage { from, class, msg };
                                    if self.peer_tx.send(message).await.is_err() {
                                        return; // the application dropped its receiver
                                    }
                                }
                                Ok(None) => break,
                                Err(error) => return self.frame_error(&conn, &error),
                            }
                        }
                    }
                }
                Ok(None) => {
                    if let Err(error) = decoder.finish() {
                        self.frame_error(&conn, &error);
                    }
                    return;
                }
                Err(error) => {
                    debug!(?class, %error, "peer stream ended");
                    return;
                }
            }
        }
    }

    /// A client's connection: long-lived bidirectional request streams (see the crate docs);
    /// nothing else is allowed.
    async fn serve_client(self: Arc<Self>, conn: Connection, client: Identity) {
        debug!("client connection accepted");
        // Requests awaiting replies, for all the connection's streams together.
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.limits.client_requests_in_flight.max(1),
        ));
        loop {
            tokio::select! {
                bi = conn.accept_bi() => match bi {
                    Ok((send, recv)) => {
                        let stream = Arc::new(ReplyStream {
                            outbox: Outbox::new(1),
                            permits: permits.clone(),
                            in_flight: self.in_flight.clone(),
                        });
                        tokio::spawn(
                            write_replies(stream.clone(), send, self.stats.clone())
                                .instrument(tracing::Span::current()),
                        );
                        let this = self.clone();
                        let conn = conn.clone();
                        let client = client.clone();
                        tokio::spawn(
                            async move {
                                this.read_requests(&conn, &client, &stream, recv).await;
                                // The writer ends once the last responder has answered.
                                stream.outbox.drop_sender();
                            }
                            .instrument(tracing::Span::current()),
                        );
                    }
                    Err(error) => {
                        debug!(%error, "client connection ended");
                        return;
                    }
                },
                uni = conn.accept_uni() => {
                    if uni.is_ok() {
                        add(&self.stats.protocol_violations, 1);
                        warn!("client opened a unidirectional (peer) stream; closing");
                        close(&conn, codes::PROTOCOL_VIOLATION, "client connections may not send peer messages");
                    }
                    return;
                }
            }
        }
    }

    /// Reads one client stream's requests and hands them to the application, each with a
    /// responder that queues its reply on `stream`. Waits (reading nothing more) while the
    /// connection has `client_requests_in_flight` requests unanswered.
    async fn read_requests(
        &self,
        conn: &Connection,
        client: &Identity,
        stream: &Arc<ReplyStream>,
        mut recv: RecvStream,
    ) {
        let max_len = self.limits.max_frame_len;
        let mut decoder = FrameDecoder::new(rpc::max_payload(max_len));
        let mut chunks: [Bytes; 32] = Default::default();
        loop {
            let count = match recv.read_chunks(&mut chunks).await {
                Ok(Some(count)) => count,
                Ok(None) => {
                    if let Err(error) = decoder.finish() {
                        self.frame_error(conn, &error);
                    }
                    return;
                }
                Err(error) => {
                    // The connection (or stream) is gone: replies can no longer be delivered.
                    debug!(%error, "client stream ended");
                    let discarded = stream.outbox.close();
                    stream.settle(discarded);
                    return;
                }
            };
            for chunk in &mut chunks[..count] {
                add(&self.stats.bytes_received, chunk.len() as u64);
                decoder.push(std::mem::take(chunk));
                loop {
                    let payload = match decoder.next_payload() {
                        Ok(Some(payload)) => payload,
                        Ok(None) => break,
                        Err(error) => return self.frame_error(conn, &error),
                    };
                    let (id, request) = match decode_request::<P::Request>(payload) {
                        Ok(decoded) => decoded,
                        Err(error) => return self.frame_error(conn, &error),
                    };
                    add(&self.stats.frames_received, 1);
                    match stream.permits.acquire().await {
                        Ok(permit) => permit.forget(), // given back when the reply is written
                        Err(_) => return,
                    }
                    stream.in_flight.add(1);
                    stream.outbox.add_sender();
                    let responder = Responder {
                        id,
                        stream: Some(stream.clone()),
                        max_len,
                        _reply: PhantomData,
                    };
                    let request = ClientRequest {
                        client: client.clone(),
                        request,
                        responder,
                    };
                    if self.request_tx.send(request).await.is_err() {
                        // The application is gone; the dropped responder answered "no reply".
                        return;
                    }
                }
            }
        }
    }
}

/// A request frame's id and request; any other kind of frame is refused.
fn decode_request<T: serde::de::DeserializeOwned>(payload: Bytes) -> Result<(u64, T), FrameError> {
    let (id, kind, body) = rpc::parse(payload)?;
    if kind != Kind::Request {
        return Err(FrameError::Decode(postcard::Error::DeserializeBadEnum));
    }
    Ok((id, frame::decode_payload(&body)?))
}

/// Writes one client stream's replies as they are queued, all queued replies in one write.
/// Ends (finishing the stream) when the request reader and every responder are done, or when a
/// write fails (the replies still queued or queued later are discarded).
async fn write_replies(stream: Arc<ReplyStream>, mut send: SendStream, stats: Arc<Stats>) {
    while let Some(mut taken) = stream.outbox.take().await {
        let result = send.write_all_chunks(&mut taken.chunks).await;
        stream.settle(taken.frames);
        if let Err(error) = result {
            debug!(%error, "client stream write failed; replies discarded");
            let discarded = stream.outbox.close();
            stream.settle(discarded);
            return;
        }
        add(&stats.frames_sent, taken.frames as u64);
        add(&stats.bytes_sent, taken.bytes as u64);
    }
    let _ = send.finish();
}
