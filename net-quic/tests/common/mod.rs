//! Shared fixtures: certificates in a temp folder, fast limits, endpoints on loopback.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use net_quic::{
    certs, Credentials, Endpoint, EndpointConfig, Limits, NodeId, PeerMessage, Protocol, Receivers,
};
use serde::{Deserialize, Serialize};

pub const CLUSTER: &str = "quorate";

/// Every test is bounded by this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    Seq { n: u64 },
    Heartbeat { n: u64 },
    Chunk { index: u32, data: Vec<u8> },
}

pub struct Test;
impl Protocol for Test {
    type Peer = Msg;
    type Request = String;
    type Response = String;
}

pub fn write_certs(dir: &Path, nodes: &[u64], clients: &[&str]) {
    let nodes: Vec<NodeId> = nodes.iter().map(|&n| NodeId(n)).collect();
    let clients: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
    certs::write_dev_certs(dir, CLUSTER, &nodes, &clients).unwrap();
}

/// Timings short enough for tests: quick keep-alive, idle timeout and backoff.
pub fn fast_limits() -> Limits {
    Limits {
        keep_alive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..Limits::default()
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn node_config(creds: Credentials, listen: SocketAddr) -> EndpointConfig {
    EndpointConfig {
        cluster: CLUSTER.into(),
        listen,
        credentials: creds,
        peers: HashMap::new(),
        limits: fast_limits(),
    }
}

pub fn bind_node(dir: &Path, id: u64) -> (Endpoint<Test>, Receivers<Test>) {
    bind_node_with(dir, id, fast_limits())
}

pub fn bind_node_with(dir: &Path, id: u64, limits: Limits) -> (Endpoint<Test>, Receivers<Test>) {
    let creds = Credentials::load_node(dir, NodeId(id)).unwrap();
    let mut config = node_config(creds, loopback());
    config.limits = limits;
    Endpoint::bind(config).unwrap()
}

/// Binds nodes 1..=n and tells each where the others are.
pub fn mesh(dir: &Path, n: u64) -> Vec<(Endpoint<Test>, Receivers<Test>)> {
    let nodes: Vec<_> = (1..=n).map(|id| bind_node(dir, id)).collect();
    for (a, _) in &nodes {
        for (b, _) in &nodes {
            if a.id() != b.id() {
                a.set_peer_addr(b.id(), b.local_addr().unwrap());
            }
        }
    }
    nodes
}

pub async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out after {TEST_TIMEOUT:?}"))
}

/// Receives one message, or `None` if nothing arrives within `wait`.
pub async fn recv_within(rx: &mut Receivers<Test>, wait: Duration) -> Option<PeerMessage<Msg>> {
    tokio::time::timeout(wait, rx.peer.recv())
        .await
        .ok()
        .flatten()
}

/// A raw QUIC connection to `addr` as `creds`, offering `alpn`, dialling server name `name`
/// (bounded by [`TEST_TIMEOUT`]).
pub async fn raw_connect(
    creds: &Credentials,
    alpn: &[u8],
    addr: SocketAddr,
    name: &str,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let config = creds.quinn_client_config(alpn).unwrap();
    bounded(
        "raw connect",
        endpoint.connect_with(config, addr, name).unwrap(),
    )
    .await
}

/// Waits until the connection is closed and returns the application error code, if any.
pub async fn close_code(conn: &quinn::Connection) -> Option<u64> {
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        _ => None,
    }
}
