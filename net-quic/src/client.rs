//! The client side of request/response: one QUIC stream per request, on the client ALPN.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, VarInt};
use tracing::{debug, Instrument};

use crate::config::Limits;
use crate::endpoint::{read_one_frame, BindError};
use crate::frame::{self, FrameError};
use crate::identity::{node_dns_name, Identity, NodeId};
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
    /// The server closed the request stream without replying.
    #[error("the node dropped the request without a reply")]
    NoReply,
}

/// A client of the cluster: sends requests to nodes and awaits their replies.
pub struct Client<P: Protocol> {
    quinn: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    cluster: String,
    identity: Identity,
    nodes: HashMap<NodeId, SocketAddr>,
    limits: Limits,
    stats: Arc<Stats>,
    conns: tokio::sync::Mutex<HashMap<NodeId, Connection>>,
    _protocol: PhantomData<fn(P)>,
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
            conns: tokio::sync::Mutex::new(HashMap::new()),
            _protocol: PhantomData,
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

    async fn connection(&self, node: NodeId) -> Result<Connection, RequestError> {
        let mut conns = self.conns.lock().await;
        if let Some(conn) = conns.get(&node) {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            conns.remove(&node);
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
        debug!(%node, %addr, "client connected");
        conns.insert(node, conn.clone());
        Ok(conn)
    }

    /// Sends `request` to `node` and awaits the reply, for at most `timeout` (connecting
    /// included). A timed-out request may still be executed by the node.
    pub async fn request(
        &self,
        node: NodeId,
        request: &P::Request,
        timeout: Duration,
    ) -> Result<P::Response, RequestError> {
        let bytes = frame::encode(request, self.limits.max_frame_len)?;
        let span = tracing::debug_span!("net.request", client = %self.identity, %node);
        let exchange = async {
            let conn = self.connection(node).await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&bytes).await?;
            // Only fails if the stream is already closed, which reading the reply reports.
            let _ = send.finish();
            add(&self.stats.frames_sent, 1);
            add(&self.stats.bytes_sent, bytes.len() as u64);
            match read_one_frame::<P::Response>(&mut recv, self.limits.max_frame_len).await {
                Ok(Some((reply, len))) => {
                    add(&self.stats.frames_received, 1);
                    add(&self.stats.bytes_received, len as u64);
                    Ok(reply)
                }
                Ok(None) => match conn.close_reason() {
                    Some(error) => Err(RequestError::Connection(error)),
                    None => Err(RequestError::NoReply),
                },
                Err(error) => {
                    add(&self.stats.decode_errors, 1);
                    conn.close(VarInt::from_u32(codes::BAD_FRAME), b"bad reply frame");
                    Err(RequestError::Frame(error))
                }
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
