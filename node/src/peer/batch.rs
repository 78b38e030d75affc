//! The engine's messages to one peer travel together: every message of one drain of the
//! engine's output addressed to the same node goes in one envelope (class
//! [`MessageClass::Peer`](crate::proto::MessageClass::Peer)), whose payload is the messages'
//! postcard encodings back to back, in the order the engine produced them. A single message is
//! the same bytes as before batching.
//!
//! Why: a write makes its coordinator push to N−1 replicas, and each replica acknowledges each
//! push; sent one envelope per message, each was framed, queued, read and handed over the
//! receiver's channel on its own — several per client write. Batched per destination, that is
//! one envelope per peer per drain of the loop, however many writes the drain carries.
//! Envelopes stay under [`MAX_BATCH_BYTES`] (a message longer than that on its own goes alone,
//! as it did), far below the transport's frame limit.

use replication_peer::Message;

/// Payload bytes after which a batch is closed and the next message starts a new envelope.
pub(super) const MAX_BATCH_BYTES: usize = 1 << 20;

/// Per destination, in order of first appearance: one or more payloads, each a batch.
#[derive(Debug, Default)]
pub(super) struct Batches {
    open: Vec<(u64, Vec<Vec<u8>>)>,
}

impl Batches {
    /// Adds `message` for `to`, after every earlier message for `to`. On an encoding error
    /// (a bug: the engine's messages always encode) nothing is added.
    pub(super) fn push(&mut self, to: u64, message: &Message) -> Result<(), postcard::Error> {
        let slot = match self.open.iter().position(|(node, _)| *node == to) {
            Some(i) => i,
            None => {
                self.open.push((to, vec![Vec::new()]));
                self.open.len() - 1
            }
        };
        let payloads = &mut self.open[slot].1;
        if payloads.is_empty() {
            payloads.push(Vec::new());
        }
        let last = payloads.last_mut().expect("a payload was just ensured");
        // Encoded straight onto the open payload (no copy through a buffer of its own); if
        // that takes the payload past the limit, the message moves to a payload of its own.
        let before = last.len();
        if let Err(e) = postcard::to_extend(message, Append(last)) {
            last.truncate(before);
            return Err(e);
        }
        if before > 0 && last.len() > MAX_BATCH_BYTES {
            let alone = last.split_off(before);
            payloads.push(alone);
        }
        Ok(())
    }

    /// Every payload, with its destination (a destination's payloads in order).
    pub(super) fn into_payloads(self) -> impl Iterator<Item = (u64, Vec<u8>)> {
        self.open
            .into_iter()
            .flat_map(|(to, payloads)| payloads.into_iter().map(move |p| (to, p)))
            .filter(|(_, p)| !p.is_empty())
    }
}

/// The messages of one envelope's payload, in order; stops at the first that does not decode
/// (the rest cannot be found without it).
pub(super) fn decode(
    payload: &[u8],
) -> impl Iterator<Item = Result<Message, postcard::Error>> + '_ {
    let mut rest = payload;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        match postcard::take_from_bytes::<Message>(rest) {
            Ok((message, tail)) => {
                rest = tail;
                Some(Ok(message))
            }
            Err(error) => {
                failed = true;
                Some(Err(error))
            }
        }
    })
}

/// Appends to a borrowed buffer (postcard's `to_extend` takes its sink by value).
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication_peer::Message;

    fn ack(tag: u64) -> Message {
        Message::ReplicateAck {
            tag,
            seq: tag,
            key: format!("key-{tag}").into_bytes(),
        }
    }

    fn big(tag: u64, len: usize) -> Message {
        Message::GcQuery {
            key: vec![b'k'; len],
            digest: tag,
        }
    }

    #[test]
    fn messages_to_one_peer_share_an_envelope_and_keep_their_order() {
        let mut batches = Batches::default();
        for tag in 1..=5 {
            batches.push(2, &ack(tag)).unwrap();
            batches.push(3, &ack(tag + 100)).unwrap();
        }
        let payloads: Vec<_> = batches.into_payloads().collect();
        assert_eq!(payloads.len(), 2, "one envelope per destination");
        for (to, payload) in payloads {
            let got: Vec<Message> = decode(&payload).map(Result::unwrap).collect();
            let base = if to == 2 { 0 } else { 100 };
            assert_eq!(got, (1..=5).map(|t| ack(t + base)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn one_message_is_the_same_bytes_as_unbatched() {
        let mut batches = Batches::default();
        batches.push(2, &ack(7)).unwrap();
        let payloads: Vec<_> = batches.into_payloads().collect();
        assert_eq!(payloads, vec![(2, postcard::to_allocvec(&ack(7)).unwrap())]);
    }

    #[test]
    fn a_batch_closes_at_the_byte_limit_and_a_long_message_goes_alone() {
        let mut batches = Batches::default();
        let third = MAX_BATCH_BYTES / 3;
        for tag in 0..4 {
            batches.push(2, &big(tag, third)).unwrap();
        }
        batches.push(2, &big(9, MAX_BATCH_BYTES + 10)).unwrap();
        batches.push(2, &ack(10)).unwrap();
        let payloads: Vec<_> = batches.into_payloads().map(|(_, p)| p).collect();
        assert!(payloads
            .iter()
            .all(|p| p.len() <= MAX_BATCH_BYTES || decode(p).count() == 1));
        let counts: Vec<usize> = payloads.iter().map(|p| decode(p).count()).collect();
        assert_eq!(counts, vec![2, 2, 1, 1]);
        let all: Vec<Message> = payloads
            .iter()
            .flat_map(|p| decode(p).map(Result::unwrap).collect::<Vec<_>>())
            .collect();
        let mut expected: Vec<Message> = (0..4).map(|t| big(t, third)).collect();
        expected.push(big(9, MAX_BATCH_BYTES + 10));
        expected.push(ack(10));
        assert_eq!(all, expected);
    }

    #[test]
    fn a_payload_that_does_not_decode_yields_one_error_and_stops() {
        let mut payload = postcard::to_allocvec(&ack(1)).unwrap();
        payload.extend([0xff, 0xff, 0xff]);
        let got: Vec<_> = decode(&payload).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap(), &ack(1));
        assert!(got[1].is_err());
    }
}
