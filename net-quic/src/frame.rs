//! The frame codec: length-prefixed postcard with a protocol version and a hard size limit.
//!
//! Wire format of one frame (all integers little-endian):
//!
//! ```text
//! +---------+-------------------+------------------------------+
//! | version | payload length    | payload (postcard, `len` B)  |
//! | u8 = 1  | u32               |                              |
//! +---------+-------------------+------------------------------+
//! ```
//!
//! The codec is independent of QUIC: [`encode`] builds one frame, [`FrameDecoder`] reassembles frames
//! from arbitrary byte chunks (as a stream delivers them). The decoder validates the header as soon
//! as its five bytes are present, so an oversize length prefix is refused before any payload is
//! buffered; the buffer only ever grows by bytes that actually arrived, never by a declared size.
//!
//! ```
//! use net_quic::frame::{encode, FrameDecoder};
//! let bytes = encode(&("hello", 7u32), 1024).unwrap();
//! let mut decoder = FrameDecoder::new(1024);
//! decoder.extend(&bytes[..3]);
//! assert_eq!(decoder.next_frame::<(String, u32)>().unwrap(), None); // header incomplete
//! decoder.extend(&bytes[3..]);
//! assert_eq!(decoder.next_frame::<(String, u32)>().unwrap(), Some(("hello".into(), 7)));
//! decoder.finish().unwrap(); // nothing left over
//! ```

use bytes::{Buf, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

/// The protocol version written into every frame header.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes in a frame header: one version byte and a `u32` payload length.
pub const HEADER_LEN: usize = 5;

/// The largest payload length the header can express (and so the largest possible limit).
pub const MAX_REPRESENTABLE_LEN: usize = u32::MAX as usize;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame header carries a protocol version this build does not speak.
    #[error("unsupported frame protocol version {found} (this build speaks version {expected})")]
    UnsupportedVersion {
        /// The version byte found in the header.
        found: u8,
        /// The version this build speaks.
        expected: u8,
    },
    /// The payload length (declared in a header, or of a message being encoded) exceeds the limit.
    #[error("frame payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The declared or encoded payload length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The payload is not a valid postcard encoding of the expected message type.
    #[error("frame payload does not decode as the expected message type: {0}")]
    Decode(#[source] postcard::Error),
    /// The payload decoded, but left bytes over: the frame is not what the sender meant.
    #[error("frame payload has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message could not be serialized.
    #[error("message does not serialize: {0}")]
    Encode(#[source] postcard::Error),
    /// An earlier frame on this stream was refused; the stream position is lost.
    #[error("an earlier frame on this stream was refused; no further frames are read")]
    AfterError,
    /// The byte stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {buffered} bytes of an incomplete frame were buffered")]
    Truncated {
        /// How many bytes of the incomplete frame had arrived.
        buffered: usize,
    },
}

/// Encodes `msg` as one frame (header and postcard payload), refusing payloads over `max_len`.
///
/// The payload's size is computed first, so an oversize message is refused before anything is
/// allocated and the frame is built in one exactly sized buffer (no regrowth, one copy of any
/// byte strings).
pub fn encode<T: Serialize + ?Sized>(msg: &T, max_len: usize) -> Result<Bytes, FrameError> {
    let len = postcard::experimental::serialized_size(msg).map_err(FrameError::Encode)?;
    let max = max_len.min(MAX_REPRESENTABLE_LEN);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; HEADER_LEN + len];
    buf[0] = PROTOCOL_VERSION;
    // `len <= u32::MAX` was checked just above.
    buf[1..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    let written = postcard::to_slice(msg, &mut buf[HEADER_LEN..])
        .map_err(FrameError::Encode)?
        .len();
    // A `Serialize` impl that writes differently on two passes would leave zeros or fail above.
    if written != len {
        return Err(FrameError::Encode(postcard::Error::SerializeBufferFull));
    }
    Ok(Bytes::from(buf))
}

/// Reassembles frames from byte chunks and decodes them, one at a time.
///
/// Chunks handed over as [`Bytes`] ([`FrameDecoder::push`]) are not copied: whole frames inside
/// them come back as slices of them. Only a frame split across chunks is copied together (from
/// bytes that arrived, never reserving its declared size).
///
/// After an error the decoder is poisoned: the stream position is unknown, so the caller must close
/// the stream (every later call returns [`FrameError::AfterError`] rather than guessing).
#[derive(Debug)]
pub struct FrameDecoder {
    /// The start of a frame split across chunks (copied). Comes before `chunk` in stream order.
    buf: BytesMut,
    /// The unread rest of the last pushed chunk (not copied).
    chunk: Bytes,
    max_len: usize,
    poisoned: bool,
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            chunk: Bytes::new(),
            max_len: max_len.min(MAX_REPRESENTABLE_LEN),
            poisoned: false,
        }
    }

    /// Appends bytes received from the stream (copying them).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.absorb_chunk();
        self.buf.extend_from_slice(bytes);
    }

    /// Appends a chunk received from the stream without copying it. Frames it holds whole are
    /// returned as slices of it (which keep its memory alive while held); call
    /// [`FrameDecoder::next_frame`] until `None` before pushing the next chunk, so that only a
    /// frame split across chunks is ever copied.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.absorb_chunk();
        self.chunk = chunk;
    }

    /// Copies the unread rest of the last chunk into `buf` (to keep stream order).
    fn absorb_chunk(&mut self) {
        if !self.chunk.is_empty() {
            self.buf.extend_from_slice(&self.chunk);
            self.chunk.clear();
        }
    }

    /// Moves up to `want` bytes from the front of `chunk` to the end of `buf`.
    fn top_up(&mut self, want: usize) {
        let n = want.min(self.chunk.len());
        if n > 0 {
            self.buf.extend_from_slice(&self.chunk[..n]);
            self.chunk.advance(n);
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.chunk.len()
    }

    /// Checks a frame header; returns the payload length.
    fn check_header(&mut self, header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
        let version = header[0];
        if version != PROTOCOL_VERSION {
            self.poisoned = true;
            return Err(FrameError::UnsupportedVersion {
                found: version,
                expected: PROTOCOL_VERSION,
            });
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&header[1..HEADER_LEN]);
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > self.max_len {
            self.poisoned = true;
            return Err(FrameError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        Ok(len)
    }

    /// Returns the next complete frame's raw payload, `None` if more bytes are needed.
    pub fn next_payload(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.poisoned {
            return Err(FrameError::AfterError);
        }
        if self.buf.is_empty() {
            // The common case: the next frame starts in the current chunk.
            let Some(&header) = self.chunk.first_chunk::<HEADER_LEN>() else {
                return Ok(None);
            };
            let len = self.check_header(header)?;
            if self.chunk.len() < HEADER_LEN + len {
                return Ok(None);
            }
            self.chunk.advance(HEADER_LEN);
            return Ok(Some(self.chunk.split_to(len)));
        }
        // A frame split across chunks: complete it in `buf` from bytes that arrived.
        self.top_up(HEADER_LEN.saturating_sub(self.buf.len()));
        let Some(&header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = self.check_header(header)?;
        self.top_up((HEADER_LEN + len).saturating_sub(self.buf.len()));
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Returns the next complete frame decoded as `T`, `None` if more bytes are needed.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_payload()? {
            None => Ok(None),
            Some(payload) => decode_payload(&payload).map(Some).inspect_err(|_| {
                self.poisoned = true;
            }),
        }
    }

    /// Declares the end of the stream: an error if an incomplete frame is still buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

/// Decodes one frame payload (without its header) as `T`; the payload must be consumed exactly.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes::<T>(payload).map_err(FrameError::Decode)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Heartbeat { term: u64, commit: u64 },
        Append { entries: Vec<Vec<u8>> },
        Text(String),
    }

    fn msg_strategy() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(term, commit)| Msg::Heartbeat { term, commit }),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6)
                .prop_map(|entries| Msg::Append { entries }),
            ".{0,30}".prop_map(Msg::Text),
        ]
    }

    #[test]
    fn an_oversize_length_prefix_is_refused_before_the_payload_arrives() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff]);
        let err = decoder.next_frame::<Msg>().unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u32::MAX as usize),
            "{err}"
        );
        // Nothing was reserved for the declared 4 GiB.
        assert!(decoder.buf.capacity() < 4096);
        // And the decoder stays refused.
        assert!(matches!(
            decoder.next_frame::<Msg>(),
            Err(FrameError::AfterError)
        ));
    }

    #[test]
    fn a_wrong_version_is_named_in_the_error() {
        let mut bytes = encode(&Msg::Text("x".into()), 1024).unwrap().to_vec();
        bytes[0] = 9;
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(&bytes);
        let err = decoder.next_frame::<Msg>().unwrap_err();
        assert!(matches!(
            err,
            FrameError::UnsupportedVersion {
                found: 9,
                expected: 1
            }
        ));
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn a_truncated_frame_is_reported_at_stream_end() {
        let bytes = encode(&Msg::Text("hello".into()), 1024).unwrap();
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(&bytes[..bytes.len() - 1]);
        assert_eq!(decoder.next_frame::<Msg>().unwrap(), None);
        let err = decoder.finish().unwrap_err();
        assert!(matches!(err, FrameError::Truncated { buffered } if buffered == bytes.len() - 1));
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        let mut decoder = FrameDecoder::new(1024);
        // Variant index 200 does not exist.
        decoder.extend(&[PROTOCOL_VERSION, 2, 0, 0, 0, 200, 1]);
        assert!(matches!(
            decoder.next_frame::<Msg>(),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_refused() {
        let mut bytes = encode(&Msg::Text("a".into()), 1024).unwrap().to_vec();
        bytes.push(0);
        let len = (bytes.len() - HEADER_LEN) as u32;
        bytes[1..5].copy_from_slice(&len.to_le_bytes());
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(&bytes);
        assert!(matches!(
            decoder.next_frame::<Msg>(),
            Err(FrameError::TrailingBytes(1))
        ));
    }

    #[test]
    fn encoding_refuses_messages_over_the_limit() {
        let msg = Msg::Append {
            entries: vec![vec![0u8; 100]],
        };
        assert!(matches!(
            encode(&msg, 50),
            Err(FrameError::TooLarge { max: 50, .. })
        ));
    }

    #[test]
    fn whole_frames_in_a_pushed_chunk_are_not_copied() {
        let a = encode(&Msg::Text("first".into()), 1024).unwrap();
        let b = encode(&Msg::Text("second".into()), 1024).unwrap();
        let mut wire = Vec::new();
        wire.extend_from_slice(&a);
        wire.extend_from_slice(&b);
        wire.extend_from_slice(&a[..3]); // the start of a third frame
        let chunk = Bytes::from(wire);
        let range = chunk.as_ptr_range();
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(chunk.clone());
        for _ in 0..2 {
            let payload = decoder.next_payload().unwrap().unwrap();
            assert!(range.contains(&payload.as_ptr()), "payload was copied");
        }
        assert_eq!(decoder.next_payload().unwrap(), None);
        assert_eq!(decoder.buffered(), 3);
        // The split frame is completed from the next chunk.
        decoder.push(Bytes::copy_from_slice(&a[3..]));
        assert_eq!(
            decoder.next_frame::<Msg>().unwrap(),
            Some(Msg::Text("first".into()))
        );
        decoder.finish().unwrap();
    }

    #[test]
    fn an_oversize_length_prefix_in_a_pushed_chunk_is_refused_at_once() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(Bytes::from_static(&[PROTOCOL_VERSION, 0, 0, 0]));
        assert_eq!(decoder.next_frame::<Msg>().unwrap(), None);
        // The header completes in the next chunk and declares 16 MiB.
        decoder.push(Bytes::from_static(&[1, 7, 7]));
        assert!(matches!(
            decoder.next_frame::<Msg>(),
            Err(FrameError::TooLarge { len, max: 1024 }) if len == 1 << 24
        ));
        assert!(decoder.buf.capacity() < 4096);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn frames_round_trip_across_any_chunking_pushed_or_copied(
            msgs in proptest::collection::vec(msg_strategy(), 0..8),
            cuts in proptest::collection::vec((1usize..60, any::<bool>()), 1..40),
        ) {
            let mut wire = Vec::new();
            for m in &msgs {
                wire.extend_from_slice(&encode(m, 4096).unwrap());
            }
            let mut decoder = FrameDecoder::new(4096);
            let mut out = Vec::new();
            let mut rest = &wire[..];
            let mut cuts = cuts.iter().cycle();
            while !rest.is_empty() {
                let &(len, push) = cuts.next().unwrap();
                let (piece, tail) = rest.split_at(len.min(rest.len()));
                rest = tail;
                if push {
                    decoder.push(Bytes::copy_from_slice(piece));
                } else {
                    decoder.extend(piece);
                }
                // Sometimes drain only every other chunk: pushing over unread bytes must keep order.
                if len % 2 == 0 || rest.is_empty() {
                    while let Some(m) = decoder.next_frame::<Msg>().unwrap() {
                        out.push(m);
                    }
                }
            }
            while let Some(m) = decoder.next_frame::<Msg>().unwrap() {
                out.push(m);
            }
            decoder.finish().unwrap();
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn decoding_arbitrary_pushed_chunks_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
        ) {
            let mut decoder = FrameDecoder::new(64);
            for chunk in chunks {
                decoder.push(Bytes::from(chunk));
                loop {
                    match decoder.next_frame::<Msg>() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
                prop_assert!(decoder.buffered() < HEADER_LEN + 64);
            }
            let _ = decoder.finish();
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            split in 0usize..200,
        ) {
            let mut decoder = FrameDecoder::new(64);
            let split = split.min(bytes.len());
            decoder.extend(&bytes[..split]);
            let mut results = Vec::new();
            loop {
                match decoder.next_frame::<Msg>() {
                    Ok(Some(m)) => results.push(m),
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                }
            }
            decoder.extend(&bytes[split..]);
            loop {
                match decoder.next_frame::<Msg>() {
                    Ok(Some(m)) => results.push(m),
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                }
            }
            // No error: every buffered byte is either a frame or a (reported) truncated tail.
            prop_assert!(decoder.buffered() < HEADER_LEN + 64);
            let _ = decoder.finish();
        }

        #[test]
        fn frames_round_trip_across_any_chunking(
            msgs in proptest::collection::vec(msg_strategy(), 0..8),
            chunk in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for m in &msgs {
                wire.extend_from_slice(&encode(m, 4096).unwrap());
            }
            let mut decoder = FrameDecoder::new(4096);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.extend(piece);
                while let Some(m) = decoder.next_frame::<Msg>().unwrap() {
                    out.push(m);
                }
            }
            decoder.finish().unwrap();
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn a_corrupted_valid_stream_errors_or_decodes_but_never_panics(
            msgs in proptest::collection::vec(msg_strategy(), 1..5),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut wire = Vec::new();
            for m in &msgs {
                wire.extend_from_slice(&encode(m, 4096).unwrap());
            }
            for (at, xor) in flips {
                let i = at % wire.len();
                wire[i] ^= xor;
            }
            let mut decoder = FrameDecoder::new(4096);
            decoder.extend(&wire);
            while let Ok(Some(_)) = decoder.next_frame::<Msg>() {}
        }
    }
}
