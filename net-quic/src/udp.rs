//! The endpoint's UDP socket: quinn's tokio socket, with oversize segmentation-offload batches
//! split before they reach the kernel.
//!
//! quinn hands the socket up to ten equal-sized datagrams at once (GSO). The kernel refuses a
//! batch whose total exceeds one IP packet (64 KiB), and quinn counts that refusal as loss. With
//! the large datagrams that MTU discovery finds on loopback or jumbo-frame links (up to 64 KiB,
//! see [`crate::Limits::max_udp_payload`]), ten datagrams never fit: [`SplitGso`] sends such a
//! batch as several calls, each within the limit. Batches of ordinary (1.5 KiB) datagrams pass
//! through untouched.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// Bytes of datagram payload one segmentation-offload call may carry: below the IPv4 and IPv6
/// limits of one IP packet (65,507 and 65,487 bytes of UDP payload), with room to spare.
pub(crate) const MAX_BATCH_BYTES: usize = 65_000;

/// Wraps the runtime's UDP socket and splits oversize send batches.
pub(crate) struct SplitGso {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl SplitGso {
    /// Hands `socket` to the runtime and wraps it.
    pub(crate) fn wrap(
        runtime: &dyn Runtime,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(SplitGso {
            inner: runtime.wrap_udp_socket(socket)?,
        }))
    }
}

impl fmt::Debug for SplitGso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitGso")
            .field("inner", &self.inner)
            .finish()
    }
}

/// The pieces a batch is sent as: whole datagrams, at most [`MAX_BATCH_BYTES`] per piece (or one
/// datagram, if a single one is larger). Each piece is `(contents, segment_size)`.
fn pieces<'a>(
    contents: &'a [u8],
    segment_size: usize,
) -> impl Iterator<Item = (&'a [u8], Option<usize>)> + 'a {
    let segment_size = segment_size.max(1);
    let per_piece = (MAX_BATCH_BYTES / segment_size).max(1) * segment_size;
    contents
        .chunks(per_piece)
        .map(move |piece| (piece, (piece.len() > segment_size).then_some(segment_size)))
}

impl AsyncUdpSocket for SplitGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let Some(segment_size) = transmit.segment_size else {
            return self.inner.try_send(transmit);
        };
        if transmit.contents.len() <= MAX_BATCH_BYTES {
            return self.inner.try_send(transmit);
        }
        for (n, (contents, segment_size)) in pieces(transmit.contents, segment_size).enumerate() {
            let piece = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents,
                segment_size,
                src_ip: transmit.src_ip,
            };
            match self.inner.try_send(&piece) {
                Ok(()) => {}
                // Nothing sent yet: quinn keeps the batch and retries it when writable.
                Err(e) if n == 0 => return Err(e),
                // Part of the batch is out: the rest is lost, as on a congested link, and QUIC's
                // loss recovery resends it (retrying it all would duplicate the part sent).
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(contents: &[u8], segment: usize) -> Vec<(usize, Option<usize>)> {
        pieces(contents, segment)
            .map(|(c, s)| (c.len(), s))
            .collect()
    }

    #[test]
    fn batches_are_split_into_whole_datagrams_within_the_limit() {
        let data = vec![0u8; 10 * 9000];
        // 7 datagrams of 9000 fit in 65,000 bytes; the remaining 3 go in a second call.
        assert_eq!(
            sizes(&data, 9000),
            vec![(63_000, Some(9000)), (27_000, Some(9000))]
        );
        // Datagrams larger than half the limit go one per call, without a segment size.
        let data = vec![0u8; 3 * 40_000 - 100];
        assert_eq!(
            sizes(&data, 40_000),
            vec![(40_000, None), (40_000, None), (39_900, None)]
        );
        // A datagram above the limit still goes alone.
        let data = vec![0u8; 2 * 65_527];
        assert_eq!(sizes(&data, 65_527), vec![(65_527, None), (65_527, None)]);
        // A short last datagram stays in its piece.
        let data = vec![0u8; 8 * 9000 + 10];
        assert_eq!(
            sizes(&data, 9000),
            vec![(63_000, Some(9000)), (9010, Some(9000))]
        );
    }

    #[test]
    fn every_byte_is_sent_once_in_order() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for segment in [1200, 1452, 8952, 16_000, 30_000, 65_527] {
            let mut joined = Vec::new();
            for (piece, size) in pieces(&data, segment) {
                assert!(piece.len() <= MAX_BATCH_BYTES.max(segment));
                if let Some(size) = size {
                    assert_eq!(size, segment);
                }
                joined.extend_from_slice(piece);
            }
            assert_eq!(joined, data, "segment size {segment}");
        }
    }
}
