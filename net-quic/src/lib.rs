//! # net-quic
//!
//! An authenticated QUIC transport (quinn + rustls with the `ring` provider, mutual TLS against a
//! cluster CA) that moves typed, length-prefixed postcard frames between node ids, and carries client
//! requests on its own ALPN.
//!
//! It knows nothing of consensus and depends on no other Quorate crate.
//!
//! ## Pieces
//! - [`Endpoint`]: one per node, server and client at once. [`Endpoint::send`] queues a small
//!   (consensus-class) message to a peer and never blocks: when the peer's queue is full the new
//!   message is dropped and counted ([`Endpoint::send_wait`] waits for room instead;
//!   [`Endpoint::send_encoded`] sends one pre-encoded frame to many peers). [`Endpoint::send_bulk`]
//!   queues a bulk (snapshot) message on its own stream and waits while the bulk queue is full.
//!   Inbound peer messages and client requests arrive on the [`Receivers`] returned by
//!   [`Endpoint::bind`], tagged with the sender's authenticated identity; a request carries a
//!   [`Responder`] for its reply. [`Endpoint::stats`] reads the counters, [`Endpoint::shutdown`]
//!   drains the queues for a grace period and reports what was left.
//! - [`Client`]: request/response against a node on the client ALPN, each request awaited with a
//!   timeout; concurrent requests are pipelined on one stream per node (see below).
//! - [`frame`]: the codec (version byte, `u32` length, postcard payload, hard size limit).
//! - [`certs`]: a dev CA and node/client certificates (rcgen), written as PEM files.
//! - [`identity`]: the rule that maps a certificate to a node id or client name.
//!
//! ## Identity
//! A peer's node id is read from its certificate (DNS SAN `node-<id>.<cluster>`), checked by the TLS
//! handshake against the cluster CA; nothing the peer sends can change it. Clients hold
//! `client-<name>.<cluster>` certificates, which the peer ALPN refuses.
//!
//! ## Connections
//! Each node dials a peer on demand and keeps one connection for its sends (the peer dials its own
//! for the other direction). Packets grow with MTU discovery up to [`Limits::max_udp_payload`]
//! (64 KiB on loopback), and unacknowledged bytes per connection are capped by
//! [`Limits::send_window`], which bounds how long a consensus message can wait behind bulk data.
//! A restarted peer is noticed at once: its new incarnation answers packets on old connections with
//! a stateless reset, and when it connects in, this node probes its own connection to it.
//! [`Endpoint::set_peer_addr`] with a new address closes the connection to the old one.
//!
//! ## Client requests
//! A client connection (ALPN `quorate-client/2`) carries one long-lived bidirectional stream,
//! opened by the client, with frames in both directions. Each is an ordinary frame ([`frame`])
//! whose payload starts with an envelope:
//!
//! ```text
//! +---------+-----------+-------------------+------+------------------------------+
//! | version | length    | request id        | kind | body (postcard)              |
//! | u8 = 1  | u32 LE    | u64 LE            | u8   | length - 9 bytes             |
//! +---------+-----------+-------------------+------+------------------------------+
//! kind 0 = request (client -> node), 1 = reply, 2 = no reply (node -> client, empty body)
//! ```
//!
//! The client numbers its requests per connection; the node answers each with a reply or, when
//! the application dropped the [`Responder`] (or the reply did not fit the frame limit), "no
//! reply", which fails the caller at once with [`RequestError::NoReply`]. Replies go out in the
//! order they are given, not the order of the requests. The body limit is
//! [`Limits::max_frame_len`] as for every frame (the decoder allows it plus the envelope), and a
//! frame of the wrong kind, oversize, of another version or undecodable closes the connection
//! (`codes::BAD_FRAME`, counted in `decode_errors`).
//!
//! Both sides batch: requests (and replies) queued by many tasks while the stream's writer task
//! is busy go out in one stream write. One reader task per stream decodes frames: on the node it
//! hands each request to the application with its responder (no task per request); on the
//! client it wakes the caller waiting on that id. A caller that times out or is dropped removes
//! its waiter, and a reply that comes later is discarded and counted
//! ([`StatsSnapshot::late_replies`]). When the connection fails every waiting caller gets the
//! connection's error at once, and the next request connects again. At most
//! [`Limits::client_requests_in_flight`] requests per connection await replies: the client waits
//! for room before sending, and the node stops reading a connection's stream while that many
//! replies are unwritten. [`Endpoint::shutdown`] waits (within its grace period) for replies the
//! application has given to be written, and reports the requests still unanswered.
//!
//! ## Certificate folder
//! [`certs::write_dev_certs`] (and `cargo xtask certs --dir DIR`) writes PEM files into one folder,
//! which [`Credentials::load_node`] and [`Credentials::load_client`] read back:
//!
//! ```text
//! DIR/ca.pem                    cluster CA certificate (trusted by every party)
//! DIR/ca.key                    CA key (dev only; reused when more certificates are added)
//! DIR/node-<id>.pem, .key       node <id>: DNS SAN node-<id>.<cluster>, server + client auth
//! DIR/client-<name>.pem, .key   client <name>: DNS SAN client-<name>.<cluster>, client auth
//! ```
//!
//! ## Example
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::HashMap;
//! use net_quic::{certs, Credentials, Endpoint, EndpointConfig, Limits, NodeId, Protocol};
//!
//! struct Kv;
//! impl Protocol for Kv {
//!     type Peer = String;
//!     type Request = String;
//!     type Response = String;
//! }
//!
//! let dir = std::path::Path::new("certs");
//! certs::write_dev_certs(dir, "quorate", &[NodeId(1), NodeId(2)], &[])?;
//! let config = EndpointConfig {
//!     cluster: "quorate".into(),
//!     listen: "127.0.0.1:7001".parse()?,
//!     credentials: Credentials::load_node(dir, NodeId(1))?,
//!     peers: HashMap::from([(NodeId(2), "127.0.0.1:7002".parse()?)]),
//!     limits: Limits::default(),
//! };
//! let (endpoint, mut inbound) = Endpoint::<Kv>::bind(config)?;
//! endpoint.send(NodeId(2), &"hello".to_string())?;
//! if let Some(m) = inbound.peer.recv().await {
//!     println!("{} says {}", m.from, m.msg);
//! }
//! # Ok(()) }
//! ```
//! See `examples/ping.rs` for a complete program.

use serde::{de::DeserializeOwned, Serialize};

pub mod certs;
mod client;
mod config;
mod endpoint;
pub mod frame;
pub mod identity;
mod peer;
mod rpc;
mod stats;
mod tls;
mod udp;

/// The buffer type of encoded frames ([`frame::encode`], [`Endpoint::send_encoded`]).
pub use bytes::Bytes;
pub use client::{Client, ClientConfig, RequestError};
pub use config::Limits;
pub use endpoint::{
    BindError, ClientRequest, Endpoint, EndpointConfig, PeerMessage, Receivers, ReplyError,
    Responder, SendError, ShutdownReport,
};
pub use identity::{Identity, NodeId};
pub use stats::StatsSnapshot;
pub use tls::{Credentials, TlsError, CLIENT_ALPN, PEER_ALPN};

/// The message types one deployment speaks: peer messages, client requests and their replies.
pub trait Protocol: Send + Sync + 'static {
    /// Messages between nodes (consensus traffic and bulk transfers).
    type Peer: Serialize + DeserializeOwned + Send + 'static;
    /// Requests from clients.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// Replies to client requests.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// The class of a peer message, which picks its stream, queue policy and size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Small, latency-sensitive messages (votes, appends, heartbeats). Queue full: drop newest.
    Consensus,
    /// Large transfers (snapshot chunks). Queue full: the sender waits.
    Bulk,
}

impl Class {
    /// The byte that opens a stream of this class.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Class::Consensus => 1,
            Class::Bulk => 2,
        }
    }

    /// The class a stream's opening byte names.
    pub(crate) fn from_tag(tag: u8) -> Option<Class> {
        match tag {
            1 => Some(Class::Consensus),
            2 => Some(Class::Bulk),
            _ => None,
        }
    }

    /// QUIC send priority: consensus data goes out before bulk data on the same connection.
    pub(crate) fn priority(self) -> i32 {
        match self {
            Class::Consensus => 10,
            Class::Bulk => 0,
        }
    }
}

/// QUIC application error codes this transport closes connections and streams with.
pub mod codes {
    /// Orderly shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The peer's certificate names no usable identity, or the wrong kind for the ALPN.
    pub const NOT_AUTHORIZED: u32 = 1;
    /// A frame was oversize, of another version, undecodable or truncated.
    pub const BAD_FRAME: u32 = 2;
    /// A stream kind the ALPN does not allow (e.g. a peer stream on a client connection).
    pub const PROTOCOL_VIOLATION: u32 = 3;
    /// The server dropped a client request without replying.
    pub const NO_REPLY: u32 = 4;
    /// The peer was given a new address; the connection to the old one is closed.
    pub const ADDRESS_CHANGED: u32 = 5;
}
