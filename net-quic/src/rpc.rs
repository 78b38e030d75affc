//! Client request streams: the envelope every request and reply frame carries, and the outbox
//! through which many tasks queue frames for one stream's writer.
//!
//! A client connection carries a long-lived bidirectional stream. Each frame on it is an ordinary
//! frame ([`crate::frame`]) whose payload starts with an envelope:
//!
//! ```text
//! +---------+-----------+-------------------+------+------------------------------+
//! | version | length    | request id        | kind | body (postcard)              |
//! | u8 = 1  | u32 LE    | u64 LE            | u8   | length - 9 bytes             |
//! +---------+-----------+-------------------+------+------------------------------+
//! ```
//!
//! `kind` is 0 for a request (client to node), 1 for a reply and 2 for "no reply" (node to client,
//! empty body: the node dropped the request without answering). Replies carry their request's id
//! and may come in any order. The body is at most `max_frame_len` bytes, as before the envelope.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::sync::Notify;

use crate::frame::{FrameError, HEADER_LEN, MAX_REPRESENTABLE_LEN, PROTOCOL_VERSION};

/// Bytes of the envelope (request id and kind) at the start of a frame payload.
pub(crate) const ENVELOPE_LEN: usize = 9;

/// What a frame on a client stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A request, client to node.
    Request = 0,
    /// The reply to the request with the same id, node to client.
    Reply = 1,
    /// The node dropped the request with this id without a reply (empty body).
    NoReply = 2,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            0 => Some(Kind::Request),
            1 => Some(Kind::Reply),
            2 => Some(Kind::NoReply),
            _ => None,
        }
    }
}

/// The decoder limit for a client stream whose bodies may be `max_len` bytes.
pub(crate) fn max_payload(max_len: usize) -> usize {
    max_len
        .min(MAX_REPRESENTABLE_LEN - ENVELOPE_LEN)
        .saturating_add(ENVELOPE_LEN)
}

/// Encodes one frame: header, envelope and `body` (none for [`Kind::NoReply`]), refusing bodies
/// over `max_len` before allocating.
pub(crate) fn encode<T: Serialize + ?Sized>(
    id: u64,
    kind: Kind,
    body: Option<&T>,
    max_len: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = match body {
        Some(body) => postcard::experimental::serialized_size(body).map_err(FrameError::Encode)?,
        None => 0,
    };
    let max = max_len.min(MAX_REPRESENTABLE_LEN - ENVELOPE_LEN);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let payload = ENVELOPE_LEN + len;
    let mut buf = vec![0u8; HEADER_LEN + payload];
    buf[0] = PROTOCOL_VERSION;
    // `payload <= u32::MAX` was checked above.
    buf[1..HEADER_LEN].copy_from_slice(&(payload as u32).to_le_bytes());
    set_id(&mut buf, id);
    buf[HEADER_LEN + 8] = kind as u8;
    if let Some(body) = body {
        let written = postcard::to_slice(body, &mut buf[HEADER_LEN + ENVELOPE_LEN..])
            .map_err(FrameError::Encode)?
            .len();
        if written != len {
            return Err(FrameError::Encode(postcard::Error::SerializeBufferFull));
        }
    }
    Ok(buf)
}

/// Writes `id` into a frame built by [`encode`].
pub(crate) fn set_id(frame: &mut [u8], id: u64) {
    frame[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&id.to_le_bytes());
}

/// Splits a frame payload into its request id, kind and body. A payload too short for the
/// envelope or of an unknown kind is a decode error.
pub(crate) fn parse(mut payload: Bytes) -> Result<(u64, Kind, Bytes), FrameError> {
    let Some(envelope) = payload.first_chunk::<ENVELOPE_LEN>() else {
        return Err(FrameError::Decode(
            postcard::Error::DeserializeUnexpectedEnd,
        ));
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&envelope[..8]);
    let kind = Kind::from_byte(envelope[8])
        .ok_or(FrameError::Decode(postcard::Error::DeserializeBadEnum))?;
    let body = payload.split_off(ENVELOPE_LEN);
    Ok((u64::from_le_bytes(id), kind, body))
}

/// Frames up to this size are copied together into one buffer; larger ones are queued as they are.
const COALESCE_BELOW: usize = 16 << 10;

/// Frames queued for one stream by many tasks, taken all at once by the stream's writer (one
/// stream write per wake-up, however many frames were queued meanwhile).
#[derive(Debug)]
pub(crate) struct Outbox {
    state: parking_lot::Mutex<OutboxState>,
    wake: Notify,
}

#[derive(Debug)]
struct OutboxState {
    /// Small frames, back to back.
    small: BytesMut,
    /// Large frames, each whole. (Frames are independent messages: their order does not matter.)
    large: Vec<Bytes>,
    frames: usize,
    bytes: usize,
    /// Parties that may still queue frames; the writer ends when none is left and all is written.
    senders: usize,
    closed: bool,
}

/// What the writer took from an [`Outbox`].
pub(crate) struct Taken {
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
}

impl Outbox {
    /// An empty outbox with `senders` parties that may queue frames.
    pub(crate) fn new(senders: usize) -> Self {
        Outbox {
            state: parking_lot::Mutex::new(OutboxState {
                small: BytesMut::new(),
                large: Vec::new(),
                frames: 0,
                bytes: 0,
                senders,
                closed: false,
            }),
            wake: Notify::new(),
        }
    }

    /// Queues one frame; `false` if the outbox is closed (the frame is dropped).
    pub(crate) fn push(&self, frame: Vec<u8>) -> bool {
        let mut state = self.state.lock();
        if state.closed {
            return false;
        }
        let was_empty = state.frames == 0;
        state.frames += 1;
        state.bytes += frame.len();
        if frame.len() < COALESCE_BELOW {
            if state.small.capacity() - state.small.len() < frame.len() {
                state.small.reserve(frame.len().max(COALESCE_BELOW));
            }
            state.small.extend_from_slice(&frame);
        } else {
            state.large.push(Bytes::from(frame));
        }
        drop(state);
        // A writer that has not taken the earlier frames yet was already woken.
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// One more party may queue frames.
    pub(crate) fn add_sender(&self) {
        self.state.lock().senders += 1;
    }

    /// A party that could queue frames is done.
    pub(crate) fn drop_sender(&self) {
        let mut state = self.state.lock();
        state.senders = state.senders.saturating_sub(1);
        let last = state.senders == 0;
        drop(state);
        if last {
            self.wake.notify_one();
        }
    }

    /// Refuses further frames and discards the queued ones; returns how many were discarded.
    pub(crate) fn close(&self) -> usize {
        let mut state = self.state.lock();
        state.closed = true;
        let discarded = state.frames;
        state.frames = 0;
        state.bytes = 0;
        state.small = BytesMut::new();
        state.large = Vec::new();
        drop(state);
        self.wake.notify_one();
        discarded
    }

    /// Waits for queued frames and takes them all; `None` once the outbox is closed, or has no
    /// senders left and nothing queued.
    pub(crate) async fn take(&self) -> Option<Taken> {
        loop {
            {
                let mut state = self.state.lock();
                if state.frames > 0 {
                    let mut chunks = std::mem::take(&mut state.large);
                    if !state.small.is_empty() {
                        // The rest of the buffer's capacity stays for the next frames.
                        chunks.push(state.small.split().freeze());
                    }
                    let taken = Taken {
                        chunks,
                        frames: state.frames,
                        bytes: state.bytes,
                    };
                    state.frames = 0;
                    state.bytes = 0;
                    return Some(taken);
                }
                if state.closed || state.senders == 0 {
                    return None;
                }
            }
            // `notify_one` stores a wake-up if the writer is not waiting yet: none is lost.
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;

    #[test]
    fn an_envelope_round_trips_through_the_frame_decoder() {
        let mut frame = encode(0, Kind::Reply, Some("hello"), 64).unwrap();
        set_id(&mut frame, 0x0102_0304_0506_0708);
        let none = encode::<str>(9, Kind::NoReply, None, 64).unwrap();
        let mut decoder = FrameDecoder::new(max_payload(64));
        decoder.extend(&frame);
        decoder.extend(&none);
        let (id, kind, body) = parse(decoder.next_payload().unwrap().unwrap()).unwrap();
        assert_eq!((id, kind), (0x0102_0304_0506_0708, Kind::Reply));
        assert_eq!(
            crate::frame::decode_payload::<String>(&body).unwrap(),
            "hello"
        );
        let (id, kind, body) = parse(decoder.next_payload().unwrap().unwrap()).unwrap();
        assert_eq!((id, kind, body.len()), (9, Kind::NoReply, 0));
    }

    #[test]
    fn the_body_limit_excludes_the_envelope() {
        let body = vec![7u8; 100];
        // postcard writes a one-byte length and the bytes: 101 bytes of body.
        assert!(encode(1, Kind::Request, Some(&body), 101).is_ok());
        assert!(matches!(
            encode(1, Kind::Request, Some(&body), 100),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        ));
        let frame = encode(1, Kind::Request, Some(&body), 101).unwrap();
        let mut decoder = FrameDecoder::new(max_payload(101));
        decoder.extend(&frame);
        assert!(decoder.next_payload().unwrap().is_some());
    }

    #[test]
    fn a_short_or_unknown_envelope_is_refused() {
        assert!(parse(Bytes::from_static(&[1, 2, 3])).is_err());
        assert!(parse(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 9])).is_err());
    }

    #[tokio::test]
    async fn the_outbox_hands_over_everything_queued_in_one_take() {
        let outbox = Outbox::new(1);
        assert!(outbox.push(vec![1; 10]));
        assert!(outbox.push(vec![2; 20]));
        assert!(outbox.push(vec![3; COALESCE_BELOW]));
        let taken = outbox.take().await.unwrap();
        assert_eq!((taken.frames, taken.bytes), (3, 30 + COALESCE_BELOW));
        let lens: Vec<usize> = taken.chunks.iter().map(Bytes::len).collect();
        assert_eq!(
            lens,
            vec![COALESCE_BELOW, 30],
            "large frames whole, small ones merged"
        );
        outbox.drop_sender();
        assert!(
            outbox.take().await.is_none(),
            "no sender left, nothing queued"
        );
        let closed = Outbox::new(1);
        assert!(closed.push(vec![1; 10]));
        assert_eq!(closed.close(), 1);
        assert!(!closed.push(vec![1; 10]));
        assert!(closed.take().await.is_none());
    }
}
