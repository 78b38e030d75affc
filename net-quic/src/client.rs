//! The client side of request/response on the client ALPN: requests pipelined on one long-lived
//! stream per connection, replies matched to their callers by request id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, warn, Instrument};

use crate::config::Limits;
use crate::endpoint::BindError;
use crate::frame::{self, FrameDecoder, FrameError};
use crate::identity::{node_dns_name, Identity, NodeId};
use crate::rpc::{self, Kind, Outbox};
use crate::stats::{add, Stats, StatsSnapshot};
use crate::tls::{self, Credentials, CLIENT_ALPN};
use crate::udp::SplitGso;
use crate::{codes, Protocol};

/// How to create a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The cluster name.
    pub cluster: String,
    /// Local UDP address (e.g. `127.0.0.1:0` or `0.0.0.0:0`).
    pub bind: SocketAddr,
    /// The client's certificate (a client or node certificate), key and the cluster CA.
    pub credentials: Credentials,
    /// Where the nodes listen.
    pub nodes: HashMap<NodeId, SocketAddr>,
    /// Sizes and timings (frame limit, keep-alive, idle timeout, connect timeout).
    pub limits: Limits,
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No address is known for the node.
    #[error("no address known for node {0}")]
    UnknownNode(NodeId),
    /// No reply within the timeout (the request may or may not have been executed).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was refused.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The request could not be written.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The request or reply frame was refused.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The node dropped the request without replying (or closed the request stream).
    #[error("the node dropped the request without a reply")]
    NoReply,
}

/// A client of the cluster: sends requests to nodes and awaits their replies. Requests from
/// many tasks share one connection (and one stream) per node.
pub struct Client<P: Protocol> {
    quinn: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    cluster: String,
    identity: Identity,
    nodes: HashMap<NodeId, SocketAddr>,
    limits: Limits,
    stats: Arc<Stats>,
    live: parking_lot::Mutex<HashMap<NodeId, Arc<ClientConn<P>>>>,
    /// Held while connecting, so concurrent first requests share one connection attempt.
    connecting: tokio::sync::Mutex<()>,
}

/// One connection to a node and its request stream.
struct ClientConn<P: Protocol> {
    conn: Connection,
    /// Request frames for the stream's writer task.
    outbox: Outbox,
    waiters: parking_lot::Mutex<Waiters<P::Response>>,
    /// Requests that may still be sent before a reply comes back (`client_requests_in_flight`).
    permits: Semaphore,
    next_id: AtomicU64,
}

struct Waiters<R> {
    /// Callers awaiting the reply to each request id.
    pending: HashMap<u64, oneshot::Sender<Outcome<R>>>,
    /// Set once the connection or stream failed; every later request fails the same way.
    failed: Option<Failure>,
}

/// What a caller is woken with.
enum Outcome<R> {
    Reply(R),
    NoReply,
    Frame(FrameError),
    Failed(Failure),
}

/// Why a connection's requests all failed.
#[derive(Debug, Clone)]
enum Failure {
    Connection(quinn::ConnectionError),
    /// The node ended the request stream without closing the connection.
    StreamEnded,
}

impl From<Failure> for RequestError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Connection(error) => RequestError::Connection(error),
            Failure::StreamEnded => RequestError::NoReply,
        }
    }
}

impl<P: Protocol> ClientConn<P> {
    fn is_alive(&self) -> bool {
        self.conn.close_reason().is_none() && self.waiters.lock().failed.is_none()
    }

    /// Why the connection failed (a closed connection's reason if nothing was recorded).
    fn failure(&self) -> Failure {
        if let Some(failure) = &self.waiters.lock().failed {
            return failure.clone();
        }
        match self.conn.close_reason() {
            Some(error) => Failure::Connection(error),
            None => Failure::StreamEnded,
        }
    }

    /// Fails every waiting request (and every later one) and stops the writer.
    fn fail(&self, failure: Failure) {
        let pending = {
            let mut waiters = self.waiters.lock();
            let failure = waiters.failed.get_or_insert(failure).clone();
            std::mem::take(&mut waiters.pending)
                .into_values()
                .map(move |tx| (tx, failure.clone()))
                .collect::<Vec<_>>()
        };
        for (tx, failure) in pending {
            let _ = tx.send(Outcome::Failed(failure));
        }
        self.outbox.close();
    }
}

/// Removes a caller's waiter when it stops waiting (reply, timeout or cancellation).
struct Waiting<'a, P: Protocol> {
    conn: &'a ClientConn<P>,
    id: u64,
}

impl<P: Protocol> Drop for Waiting<'_, P> {
    fn drop(&mut self) {
        self.conn.waiters.lock().pending.remove(&self.id);
    }
}

impl<P: Protocol> Client<P> {
    /// Creates the client's endpoint. Must be called inside a tokio runtime.
    pub fn new(config: ClientConfig) -> Result<Self, BindError> {
        let identity = config.credentials.identity(&config.cluster)?;
        let mut client_config =
            quinn::ClientConfig::new(tls::client_crypto(&config.credentials, CLIENT_ALPN)?);
        client_config.transport_config(config.limits.transport());
        let socket_error = |source| BindError::Socket {
            addr: config.bind,
            source,
        };
        let socket = config.limits.bind_udp(config.bind).map_err(socket_error)?;
        // quinn's default datagram limit (1,472 bytes) for what the client receives: replies are
        // small, and it keeps the client's receive buffers small. What it sends may still grow
        // with MTU discovery, hence the splitting socket.
        let runtime = Arc::new(quinn::TokioRuntime);
        let quinn = SplitGso::wrap(runtime.as_ref(), socket)
            .and_then(|socket| {
                quinn::Endpoint::new_with_abstract_socket(
                    quinn::EndpointConfig::default(),
                    None,
                    socket,
                    runtime,
                )
            })
            .map_err(socket_error)?;
        Ok(Client {
            quinn,
            client_config,
            cluster: config.cluster,
            identity,
            nodes: config.nodes,
            limits: config.limits,
            stats: Arc::new(Stats::default()),
            live: parking_lot::Mutex::new(HashMap::new()),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// This client's identity (from its certificate).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    fn live_connection(&self, node: NodeId) -> Option<Arc<ClientConn<P>>> {
        let mut live = self.live.lock();
        let conn = live.get(&node)?;
        if conn.is_alive() {
            return Some(conn.clone());
        }
        live.remove(&node);
        None
    }

    async fn connection(&self, node: NodeId) -> Result<Arc<ClientConn<P>>, RequestError> {
        if let Some(conn) = self.live_connection(node) {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.live_connection(node) {
            return Ok(conn);
        }
        let addr = *self
            .nodes
            .get(&node)
            .ok_or(RequestError::UnknownNode(node))?;
        let connecting = self.quinn.connect_with(
            self.client_config.clone(),
            addr,
            &node_dns_name(&self.cluster, node),
        )?;
        let conn = match tokio::time::timeout(self.limits.connect_timeout, connecting).await {
            Ok(result) => result?,
            Err(_) => {
                add(&self.stats.connect_failures, 1);
                return Err(RequestError::Timeout(self.limits.connect_timeout));
            }
        };
        // Opening a stream only takes an id; the node sees it with the first request.
        let (send, recv) = conn.open_bi().await?;
        debug!(%node, %addr, "client connected");
        let shared = Arc::new(ClientConn {
            conn,
            outbox: Outbox::new(1),
            waiters: parking_lot::Mutex::new(Waiters {
                pending: HashMap::new(),
                failed: None,
            }),
            permits: Semaphore::new(self.limits.client_requests_in_flight.max(1)),
            next_id: AtomicU64::new(0),
        });
        let span = tracing::debug_span!("net.client_conn", client = %self.identity, %node);
        tokio::spawn(
            write_requests(shared.clone(), send, self.stats.clone()).instrument(span.clone()),
        );
        tokio::spawn(
            read_replies(
                shared.clone(),
                recv,
                self.stats.clone(),
                self.limits.max_frame_len,
            )
            .instrument(span),
        );
        self.live.lock().insert(node, shared.clone());
        Ok(shared)
    }

    /// Sends `request` to `node` and awaits the reply, for at most `timeout` (connecting
    /// included). A timed-out request may still be executed by the node; its late reply is
    /// discarded (and counted, [`StatsSnapshot::late_replies`]). Many requests may be awaited
    /// at once: they share one connection per node, up to
    /// [`Limits::client_requests_in_flight`] of them in flight (more wait for room).
    pub async fn request(
        &self,
        node: NodeId,
        request: &P::Request,
        timeout: Duration,
    ) -> Result<P::Response, RequestError> {
        // The id is written in once the request has a connection.
        let mut frame = rpc::encode(0, Kind::Request, Some(request), self.limits.max_frame_len)?;
        let span = tracing::debug_span!("net.request", client = %self.identity, %node);
        let exchange = async {
            let conn = self.connection(node).await?;
            let Ok(_permit) = conn.permits.acquire().await else {
                return Err(conn.failure().into());
            };
            let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
            rpc::set_id(&mut frame, id);
            let (tx, rx) = oneshot::channel();
            {
                let mut waiters = conn.waiters.lock();
                if let Some(failure) = &waiters.failed {
                    return Err(failure.clone().into());
                }
                waiters.pending.insert(id, tx);
            }
            let _waiting = Waiting { conn: &conn, id };
            if !conn.outbox.push(frame) {
                return Err(conn.failure().into());
            }
            match rx.await {
                Ok(Outcome::Reply(reply)) => Ok(reply),
                Ok(Outcome::NoReply) => Err(RequestError::NoReply),
                Ok(Outcome::Frame(error)) => Err(RequestError::Frame(error)),
                Ok(Outcome::Failed(failure)) => Err(failure.into()),
                Err(_) => Err(conn.failure().into()),
            }
        };
        match tokio::time::timeout(timeout, exchange.instrument(span)).await {
            Ok(result) => result,
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }

    /// Closes every connection and waits (briefly) for the close to reach the nodes.
    pub async fn close(&self) {
        self.quinn
            .close(VarInt::from_u32(codes::SHUTDOWN), b"client closing");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.quinn.wait_idle()).await;
    }
}

impl<P: Protocol> Drop for Client<P> {
    fn drop(&mut self) {
        // The connections' tasks hold them open (keep-alives) until they are closed.
        for conn in self.live.get_mut().values() {
            conn.conn
                .close(VarInt::from_u32(codes::SHUTDOWN), b"client dropped");
        }
    }
}

/// Writes queued requests to the stream, everything queued in one write.
async fn write_requests<P: Protocol>(
    shared: Arc<ClientConn<P>>,
    mut send: SendStream,
    stats: Arc<Stats>,
) {
    while let Some(mut taken) = shared.outbox.take().await {
        if let Err(error) = send.write_all_chunks(&mut taken.chunks).await {
            debug!(%error, "request stream write failed");
            let failure = match error {
                quinn::WriteError::ConnectionLost(error) => Failure::Connection(error),
                _ => shared.failure(),
            };
            shared.fail(failure);
            return;
        }
        add(&stats.frames_sent, taken.frames as u64);
        add(&stats.bytes_sent, taken.bytes as u64);
    }
    let _ = send.finish();
}

/// Reads replies and wakes their callers; when the stream or connection fails, fails every
/// waiting request at once.
async fn read_replies<P: Protocol>(
    shared: Arc<ClientConn<P>>,
    mut recv: RecvStream,
    stats: Arc<Stats>,
    max_len: usize,
) {
    let failure = read_reply_frames(&shared, &mut recv, &stats, max_len).await;
    debug!(?failure, "request stream ended");
    shared.fail(failure);
}

async fn read_reply_frames<P: Protocol>(
    shared: &ClientConn<P>,
    recv: &mut RecvStream,
    stats: &Stats,
    max_len: usize,
) -> Failure {
    let mut decoder = FrameDecoder::new(rpc::max_payload(max_len));
    let mut chunks: [Bytes; 32] = Default::default();
    let bad_frame = |error: &FrameError| {
        add(&stats.decode_errors, 1);
        warn!(%error, "bad reply frame; closing the connection");
        shared
            .conn
            .close(VarInt::from_u32(codes::BAD_FRAME), b"bad reply frame");
        shared.failure()
    };
    loop {
        let count = match recv.read_chunks(&mut chunks).await {
            Ok(Some(count)) => count,
            Ok(None) => {
                if let Err(error) = decoder.finish() {
                    return bad_frame(&error);
                }
                return Failure::StreamEnded;
            }
            Err(quinn::ReadError::ConnectionLost(error)) => return Failure::Connection(error),
            Err(_) => return shared.failure(),
        };
        for chunk in &mut chunks[..count] {
            add(&stats.bytes_received, chunk.len() as u64);
            decoder.push(std::mem::take(chunk));
            loop {
                let (id, kind, body) = match decoder
                    .next_payload()
                    .and_then(|payload| payload.map(rpc::parse).transpose())
                {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(error) => return bad_frame(&error),
                };
                if kind == Kind::Request {
                    return bad_frame(&FrameError::Decode(postcard::Error::DeserializeBadEnum));
                }
                add(&stats.frames_received, 1);
                let Some(tx) = shared.waiters.lock().pending.remove(&id) else {
                    // Its caller timed out or gave up.
                    add(&stats.late_replies, 1);
                    continue;
                };
                let outcome = match kind {
                    Kind::NoReply => Outcome::NoReply,
                    _ => match frame::decode_payload::<P::Response>(&body) {
                        Ok(reply) => Outcome::Reply(reply),
                        Err(error) => {
                            let failure = bad_frame(&error);
                            let _ = tx.send(Outcome::Frame(error));
                            return failure;
                        }
                    },
                };
                let _ = tx.send(outcome);
            }
        }
    }
}
