//! Outbound side of one peer: its bounded queues, its connection (connect on demand, reconnect
//! with capped exponential backoff) and one writer task per message class, each owning a
//! long-lived unidirectional stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, SendStream, VarInt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::config::Limits;
use crate::identity::{node_dns_name, Identity, NodeId};
use crate::stats::{add, Stats};
use crate::tls::peer_identity;
use crate::{codes, Class};

/// The open outbound connection to each peer, shared by the peers' writers (which set it), the
/// endpoint (which closes one whose peer moved) and the accept side (which probes one whose peer
/// just connected in).
pub(crate) type Outbound = Arc<parking_lot::Mutex<HashMap<NodeId, Connection>>>;

/// What the endpoint keeps per peer.
pub(crate) struct PeerHandle {
    pub(crate) consensus_tx: mpsc::Sender<Bytes>,
    pub(crate) bulk_tx: mpsc::Sender<Bytes>,
    pub(crate) shared: Arc<PeerShared>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

/// State shared by a peer's writer tasks.
pub(crate) struct PeerShared {
    pub(crate) id: NodeId,
    pub(crate) addr: parking_lot::Mutex<SocketAddr>,
    /// Frames queued and not yet handed to QUIC (both classes).
    pub(crate) queued: AtomicUsize,
    quinn: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    cluster: String,
    limits: Limits,
    stats: Arc<Stats>,
    outbound: Outbound,
    conn: tokio::sync::Mutex<ConnState>,
}

struct ConnState {
    current: Option<Connection>,
    ever_connected: bool,
    backoff: Duration,
    retry_at: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("handshake: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    #[error("handshake timed out")]
    Timeout,
    #[error("server is {0}, not the node dialled")]
    WrongPeer(String),
}

#[derive(Debug, thiserror::Error)]
enum WriteFailure {
    #[error("open stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
}

impl PeerHandle {
    /// Creates the peer's queues and spawns its writers (which connect when there is work).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawn(
        local: NodeId,
        id: NodeId,
        addr: SocketAddr,
        quinn: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        cluster: String,
        limits: Limits,
        stats: Arc<Stats>,
        outbound: Outbound,
    ) -> Self {
        let (consensus_tx, consensus_rx) = mpsc::channel(limits.consensus_queue.max(1));
        let (bulk_tx, bulk_rx) = mpsc::channel(limits.bulk_queue.max(1));
        let shared = Arc::new(PeerShared {
            id,
            addr: parking_lot::Mutex::new(addr),
            queued: AtomicUsize::new(0),
            quinn,
            client_config,
            cluster,
            conn: tokio::sync::Mutex::new(ConnState {
                current: None,
                ever_connected: false,
                backoff: limits.backoff_initial,
                retry_at: None,
            }),
            limits,
            stats,
            outbound,
        });
        let span = tracing::info_span!("net.peer_out", node = %local, peer = %id);
        let tasks = vec![
            tokio::spawn(
                run_writer(shared.clone(), Class::Consensus, consensus_rx).instrument(span.clone()),
            ),
            tokio::spawn(run_writer(shared.clone(), Class::Bulk, bulk_rx).instrument(span)),
        ];
        PeerHandle {
            consensus_tx,
            bulk_tx,
            shared,
            tasks,
        }
    }
}

impl PeerShared {
    /// The live connection, connecting (with backoff after failures) if there is none.
    async fn connection(&self) -> Connection {
        let mut state = self.conn.lock().await;
        loop {
            if let Some(conn) = &state.current {
                if conn.close_reason().is_none() {
                    return conn.clone();
                }
                info!(reason = ?conn.close_reason(), "connection lost");
                state.current = None;
            }
            if let Some(at) = state.retry_at {
                tokio::time::sleep_until(at).await;
            }
            let addr = *self.addr.lock();
            match self.connect(addr).await {
                Ok(conn) => {
                    if state.ever_connected {
                        add(&self.stats.reconnects, 1);
                    }
                    info!(%addr, reconnect = state.ever_connected, "connected");
                    state.ever_connected = true;
                    state.backoff = self.limits.backoff_initial;
                    state.retry_at = None;
                    state.current = Some(conn.clone());
                    self.outbound.lock().insert(self.id, conn.clone());
                    return conn;
                }
                Err(error) => {
                    add(&self.stats.connect_failures, 1);
                    warn!(%addr, %error, retry_in = ?state.backoff, "connection attempt failed");
                    state.retry_at = Some(Instant::now() + state.backoff);
                    state.backoff = self.limits.next_backoff(state.backoff);
                }
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Connection, ConnectError> {
        let server_name = node_dns_name(&self.cluster, self.id);
        let connecting = self
            .quinn
            .connect_with(self.client_config.clone(), addr, &server_name)?;
        let conn = tokio::time::timeout(self.limits.connect_timeout, connecting)
            .await
            .map_err(|_| ConnectError::Timeout)??;
        // The TLS layer already checked the certificate names `server_name`; check again here so
        // the identity rule lives in one place.
        match peer_identity(&conn, &self.cluster) {
            Ok(Identity::Node(id)) if id == self.id => Ok(conn),
            Ok(other) => Err(ConnectError::WrongPeer(other.to_string())),
            Err(e) => Err(ConnectError::WrongPeer(e.to_string())),
        }
    }

    async fn write_batch(
        &self,
        class: Class,
        stream: &mut Option<(usize, SendStream)>,
        batch: &mut [Bytes],
    ) -> Result<(), WriteFailure> {
        let conn = self.connection().await;
        let reuse = matches!(stream, Some((id, _)) if *id == conn.stable_id());
        if !reuse {
            let mut fresh = conn.open_uni().await?;
            // Fails only if the stream is already closed, which the write below reports.
            let _ = fresh.set_priority(class.priority());
            fresh.write_all(&[class.tag()]).await?;
            *stream = Some((conn.stable_id(), fresh));
        }
        if let Some((_, s)) = stream {
            s.write_all_chunks(batch).await?;
        }
        Ok(())
    }
}

/// Frames up to this size are copied together into shared chunks before they reach QUIC.
const COALESCE_BELOW: usize = 16 << 10;
/// The size of one coalesced chunk.
const COALESCED_CHUNK: usize = 64 << 10;

/// One write's worth of frames. Small frames are copied into a few large chunks: QUIC keeps each
/// written chunk until it is acknowledged and looks data up by walking those chunks, so thousands
/// of 1 KiB chunks in flight cost far more than the copy. Large frames are passed on as they are.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    small: BytesMut,
}

impl Batch {
    fn push(&mut self, frame: Bytes) {
        if frame.len() >= COALESCE_BELOW {
            self.flush_small();
            self.chunks.push(frame);
            return;
        }
        if self.small.len() + frame.len() > COALESCED_CHUNK {
            self.flush_small();
        }
        if self.small.capacity() == 0 {
            self.small.reserve(COALESCED_CHUNK);
        }
        self.small.extend_from_slice(&frame);
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            // Take the whole buffer: the next chunk starts in a fresh allocation rather than
            // growing the sliver of capacity a split would leave.
            self.chunks.push(std::mem::take(&mut self.small).freeze());
        }
    }

    /// The chunks to write, leaving the batch empty for the next round.
    fn finish(&mut self) -> Vec<Bytes> {
        self.flush_small();
        std::mem::take(&mut self.chunks)
    }
}

/// Sends one class's queue to the peer, batching queued frames into one stream write.
/// Ends when every sender is dropped and the queue is drained (shutdown).
async fn run_writer(shared: Arc<PeerShared>, class: Class, mut rx: mpsc::Receiver<Bytes>) {
    let mut stream: Option<(usize, SendStream)> = None;
    let mut batch = Batch::default();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.len();
        let mut frames = 1;
        batch.push(first);
        while bytes < shared.limits.write_batch_bytes {
            match rx.try_recv() {
                Ok(frame) => {
                    bytes += frame.len();
                    frames += 1;
                    batch.push(frame);
                }
                Err(_) => break,
            }
        }
        let mut chunks = batch.finish();
        let result = shared.write_batch(class, &mut stream, &mut chunks).await;
        shared.queued.fetch_sub(frames, Ordering::Relaxed);
        match result {
            Ok(()) => {
                add(&shared.stats.frames_sent, frames as u64);
                add(&shared.stats.bytes_sent, bytes as u64);
            }
            Err(error) => {
                // Consensus tolerates loss, and a bulk sender learns of it from the counter and
                // its own protocol (a snapshot is retried from the start).
                add(&shared.stats.lost_in_flight, frames as u64);
                debug!(?class, frames, %error, "write failed; frames lost");
                stream = None;
            }
        }
    }
    if let Some((_, mut s)) = stream {
        if s.finish().is_ok() {
            // Wait until the peer has acknowledged everything written.
            let _ = s.stopped().await;
        }
    }
}

/// Closes the connection to a peer that moved to `addr` (if it goes elsewhere), so the next send
/// dials the new address. Without this, a peer that crashed and came back elsewhere would be
/// reached only when the old connection's idle timeout fires.
pub(crate) fn close_if_moved(outbound: &Outbound, id: NodeId, addr: SocketAddr) {
    if let Some(conn) = outbound.lock().get(&id) {
        if !same_addr(conn.remote_address(), addr) && conn.close_reason().is_none() {
            info!(peer = %id, old = %conn.remote_address(), new = %addr, "peer moved; closing the old connection");
            conn.close(
                VarInt::from_u32(codes::ADDRESS_CHANGED),
                b"peer address changed",
            );
        }
    }
}

/// Whether two addresses are the same endpoint, counting an IPv4-mapped IPv6 address (as a dual-stack
/// socket reports an IPv4 peer) as the IPv4 address.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    fn canonical(addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => addr,
            },
            SocketAddr::V4(_) => addr,
        }
    }
    canonical(a) == canonical(b)
}

/// Sends an empty stream on the outbound connection to a peer that has just connected in. If the
/// peer restarted, its new incarnation answers with a stateless reset and the stale connection
/// closes now, instead of swallowing the next message to find out. A live connection just sees an
/// empty stream. (Probing, rather than replacing the connection, cannot set off a reconnect loop
/// between two nodes.)
pub(crate) async fn probe(outbound: &Outbound, id: NodeId, wait: Duration) {
    let Some(conn) = outbound.lock().get(&id).cloned() else {
        return;
    };
    if conn.close_reason().is_some() {
        return;
    }
    let _ = tokio::time::timeout(wait, async {
        if let Ok(mut stream) = conn.open_uni().await {
            let _ = stream.finish();
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_ipv6_address_is_the_same_as_its_ipv4_address() {
        let v4: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:7001".parse().unwrap();
        assert!(same_addr(v4, mapped));
        assert!(same_addr(mapped, v4));
        assert!(!same_addr(v4, "127.0.0.1:7002".parse().unwrap()));
        assert!(!same_addr(v4, "127.0.0.2:7001".parse().unwrap()));
        assert!(!same_addr(mapped, "[::1]:7001".parse().unwrap()));
    }

    #[test]
    fn a_batch_merges_small_frames_in_order_and_passes_large_ones_through() {
        let small = |n: u8, len: usize| Bytes::from(vec![n; len]);
        let large = Bytes::from(vec![9u8; COALESCE_BELOW]);
        let mut frames = Vec::new();
        for n in 0..100u8 {
            frames.push(small(n, 1000));
        }
        frames.push(large.clone());
        frames.push(small(200, 10));
        let mut batch = Batch::default();
        for frame in &frames {
            batch.push(frame.clone());
        }
        let chunks = batch.finish();
        // 100 KB of small frames in 64 KiB chunks, the large frame alone, then the tail.
        assert_eq!(
            chunks.len(),
            4,
            "{:?}",
            chunks.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert!(chunks.iter().all(|c| c.len() <= COALESCED_CHUNK));
        assert_eq!(chunks[2], large, "large frames are not copied into a chunk");
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        assert_eq!(joined, expected, "bytes and order unchanged");
        assert!(batch.finish().is_empty(), "finish leaves the batch empty");
    }
}
