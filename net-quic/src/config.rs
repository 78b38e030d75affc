//! Limits and timings of the transport, and the quinn transport configuration built from them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, VarInt};

use crate::Class;

/// Sizes, queue bounds and timings. The defaults suit a LAN cluster.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest payload of a consensus frame, a client request or a reply.
    pub max_frame_len: usize,
    /// Largest payload of a bulk frame (snapshot data; callers should chunk larger transfers).
    pub max_bulk_frame_len: usize,
    /// Frames queued per peer for the consensus stream; when full, new frames are dropped.
    pub consensus_queue: usize,
    /// Frames queued per peer for the bulk stream; when full, `send_bulk` waits (back-pressure).
    pub bulk_queue: usize,
    /// Inbound peer messages (and, separately, client requests) buffered for the application.
    pub inbound_queue: usize,
    /// Bytes of queued frames gathered into one stream write.
    pub write_batch_bytes: usize,
    /// Client requests awaiting their replies per client connection, at most. A client waits for
    /// room before sending more; a node stops reading a connection's requests while it has this
    /// many unanswered (their replies not yet written).
    pub client_requests_in_flight: usize,
    /// Keep-alive interval on idle connections.
    pub keep_alive: Duration,
    /// A connection with no traffic (keep-alives included) for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for one connection attempt (handshake included).
    pub connect_timeout: Duration,
    /// First reconnect delay after a failed attempt; doubles per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Cap of the reconnect delay.
    pub backoff_max: Duration,
    /// QUIC flow-control window per stream, bytes.
    pub stream_window: u32,
    /// QUIC flow-control window per connection, bytes.
    pub connection_window: u32,
    /// Bytes sent to a peer and not yet acknowledged, at most (all streams of the connection
    /// together; the congestion window may allow less). This bounds how much bulk data can queue
    /// ahead of a consensus packet in the kernel and the peer's receive path (the consensus stream
    /// has priority only over data not yet sent), and so bounds heartbeat delay during a snapshot
    /// transfer to about this many bytes' processing time at the receiver (on loopback, during a
    /// 48 MiB transfer: median heartbeat delay ~0.5 ms with 256 KiB, ~2.4 ms with 512 KiB, at the
    /// same throughput). A link with a larger bandwidth × round-trip product needs more.
    pub send_window: u32,
    /// Largest UDP payload (QUIC packet) this endpoint receives, and the ceiling MTU discovery
    /// climbs towards (from 1,200 bytes, probing; a path with a smaller MTU settles lower).
    /// Loopback and jumbo-frame links carry large datagrams, and QUIC's cost is mostly per
    /// packet, so the default is the protocol's maximum (65,527). Also sizes quinn's receive
    /// buffers (this × 64 × 32 bytes of address space, of which only the bytes received are
    /// touched).
    pub max_udp_payload: u16,
    /// UDP socket send and receive buffer size to ask of the kernel, bytes (`None`: the kernel's
    /// default, typically 208 KiB; the kernel may grant less than asked, see `net.core.rmem_max`).
    /// Large datagrams need room: 208 KiB holds three 64 KiB packets, so a short stall of the
    /// receiving process loses packets and QUIC backs off. The queue that forms in this buffer is
    /// bounded by each sender's [`Limits::send_window`], not by the buffer size (with a 2 MiB
    /// buffer and an unbounded window, heartbeats once waited ~100 ms behind a snapshot).
    pub socket_buffer: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: 16 << 20,
            max_bulk_frame_len: 256 << 20,
            consensus_queue: 4096,
            bulk_queue: 16,
            inbound_queue: 4096,
            write_batch_bytes: 256 << 10,
            client_requests_in_flight: 1024,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            stream_window: 8 << 20,
            connection_window: 32 << 20,
            send_window: 256 << 10,
            max_udp_payload: 65_527,
            socket_buffer: Some(2 << 20),
        }
    }
}

impl Limits {
    /// The frame size limit of a message class.
    pub fn max_len(&self, class: Class) -> usize {
        match class {
            Class::Consensus => self.max_frame_len,
            Class::Bulk => self.max_bulk_frame_len,
        }
    }

    /// The next reconnect delay after `current`.
    pub(crate) fn next_backoff(&self, current: Duration) -> Duration {
        (current * 2).min(self.backoff_max)
    }

    /// Binds a UDP socket at `addr` with the configured buffer sizes.
    pub(crate) fn bind_udp(&self, addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
        let socket = std::net::UdpSocket::bind(addr)?;
        let Some(size) = self.socket_buffer else {
            return Ok(socket);
        };
        let state = quinn::udp::UdpSocketState::new((&socket).into())?;
        // Best effort: a smaller buffer than asked only changes how loss and queueing trade off.
        let recv = state.set_recv_buffer_size((&socket).into(), size);
        let send = state.set_send_buffer_size((&socket).into(), size);
        let granted = state.recv_buffer_size((&socket).into()).ok();
        tracing::debug!(
            %addr,
            asked = size,
            recv = ?granted,
            send = ?state.send_buffer_size((&socket).into()),
            recv_error = ?recv.err(),
            send_error = ?send.err(),
            "UDP socket buffers"
        );
        // Linux doubles the size it sets (for its bookkeeping) and reports that; a report below
        // what was asked means the kernel's cap (`net.core.rmem_max`, often 208 KiB) applied.
        if granted.is_some_and(|granted| granted < size) {
            tracing::info!(
                %addr,
                asked = size,
                granted = ?granted,
                "UDP receive buffer smaller than asked: large packets may be lost under load; \
                 raise net.core.rmem_max"
            );
        }
        Ok(socket)
    }

    /// The quinn endpoint configuration of a node: the largest datagram received, the
    /// stateless-reset key and connection ids that a restarted node can answer for.
    pub(crate) fn endpoint_config(&self, reset_key: ring::hmac::Key) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
        config.cid_generator(|| Box::new(crate::tls::RestartableCids::new()));
        // quinn refuses less than QUIC's minimum datagram size, 1,200 bytes.
        let _ = config.max_udp_payload_size(self.max_udp_payload.max(1200));
        config
    }

    pub(crate) fn transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive));
        t.max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok());
        t.stream_receive_window(VarInt::from_u32(self.stream_window));
        t.receive_window(VarInt::from_u32(self.connection_window));
        t.send_window(u64::from(self.send_window));
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_udp_payload);
        t.mtu_discovery_config(Some(mtu));
        t.max_concurrent_uni_streams(VarInt::from_u32(16));
        // A client uses one long-lived request stream per connection.
        t.max_concurrent_bidi_streams(VarInt::from_u32(8));
        Arc::new(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let limits = Limits {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(300),
            ..Limits::default()
        };
        let mut d = limits.backoff_initial;
        let mut seen = vec![];
        for _ in 0..5 {
            seen.push(d.as_millis());
            d = limits.next_backoff(d);
        }
        assert_eq!(seen, vec![50, 100, 200, 300, 300]);
    }
}
