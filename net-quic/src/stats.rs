//! Counters of what the transport did, readable at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by every task of one endpoint (or client).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) lost_in_flight: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) rejected_connections: AtomicU64,
    pub(crate) protocol_violations: AtomicU64,
    pub(crate) late_replies: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            frames_sent: get(&self.frames_sent),
            frames_received: get(&self.frames_received),
            dropped_queue_full: get(&self.dropped_queue_full),
            lost_in_flight: get(&self.lost_in_flight),
            reconnects: get(&self.reconnects),
            connect_failures: get(&self.connect_failures),
            decode_errors: get(&self.decode_errors),
            rejected_connections: get(&self.rejected_connections),
            protocol_violations: get(&self.protocol_violations),
            late_replies: get(&self.late_replies),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Frame bytes (headers included) handed to QUIC for sending.
    pub bytes_sent: u64,
    /// Stream bytes received.
    pub bytes_received: u64,
    /// Frames handed to QUIC for sending.
    pub frames_sent: u64,
    /// Frames received and decoded.
    pub frames_received: u64,
    /// Consensus-class frames dropped because the peer's queue was full (drop-newest policy).
    pub dropped_queue_full: u64,
    /// Frames dequeued for sending whose write failed because the connection broke.
    pub lost_in_flight: u64,
    /// Connections to a peer re-established after an earlier one was lost.
    pub reconnects: u64,
    /// Outbound connection attempts that failed (each is followed by a backoff).
    pub connect_failures: u64,
    /// Inbound frames refused (oversize, wrong version, undecodable, truncated); each closed its
    /// connection.
    pub decode_errors: u64,
    /// Inbound connections refused: failed handshake (e.g. a certificate from another CA), no
    /// identity, or a certificate of the wrong kind for the ALPN.
    pub rejected_connections: u64,
    /// Connections closed for using a stream kind their ALPN does not allow.
    pub protocol_violations: u64,
    /// Client side: replies that arrived after their caller stopped waiting (timed out or
    /// dropped); they were discarded.
    pub late_replies: u64,
}
