//! [`WriteQueue`]: the bookkeeping every engine needs between handing a write out in
//! [`Ready::persist`](crate::Ready) and hearing it is durable — the in-order tokens, what the
//! engine must do once each write is durable, and the messages held back until then.
//!
//! A message that promises durability (a vote, an acceptance, an ACK) is held with
//! [`WriteQueue::hold`] when the engine produces it; at the end of `ready()`,
//! [`WriteQueue::attach_held`] ties every held message to the newest write issued so far (the one
//! that holds what the message promises, or a later one) or, when no write is outstanding, lets it
//! leave at once. [`WriteQueue::confirm`] hands back the record of the oldest write and the
//! messages it released. Any protocol crate may use it (it is what `Consensus::persisted` needs).

use std::collections::VecDeque;

use crate::error::Error;
use crate::protocol::{PersistToken, TokenSequence};

/// One write handed out and not yet durable.
#[derive(Debug)]
struct Pending<T, M> {
    seq: u64,
    record: T,
    held: Vec<M>,
}

/// Writes handed out and not yet durable, oldest first: each with the engine's record `T` of it
/// and the messages `M` it releases.
#[derive(Debug)]
pub struct WriteQueue<T, M> {
    tokens: TokenSequence,
    pending: VecDeque<Pending<T, M>>,
    held: Vec<M>,
}

impl<T, M> Default for WriteQueue<T, M> {
    fn default() -> Self {
        WriteQueue {
            tokens: TokenSequence::new(),
            pending: VecDeque::new(),
            held: Vec::new(),
        }
    }
}

impl<T, M> WriteQueue<T, M> {
    /// A queue with nothing outstanding.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues the token of a new write described by `record`.
    pub fn issue(&mut self, record: T) -> PersistToken {
        let token = self.tokens.issue();
        self.pending.push_back(Pending {
            seq: token.seq(),
            record,
            held: Vec::new(),
        });
        token
    }

    /// Holds `message` until every write issued by the next [`attach_held`](Self::attach_held)
    /// is durable.
    pub fn hold(&mut self, message: M) {
        self.held.push(message);
    }

    /// Whether messages wait to be attached.
    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Ties the held messages to the newest write issued; with none outstanding they are moved
    /// to `send` at once.
    pub fn attach_held(&mut self, send: &mut Vec<M>) {
        if self.held.is_empty() {
            return;
        }
        match self.pending.back_mut() {
            Some(newest) => newest.held.append(&mut self.held),
            None => send.append(&mut self.held),
        }
    }

    /// The oldest write is durable: returns its record and the messages it released. A token out
    /// of order is an error and changes nothing.
    pub fn confirm(&mut self, token: PersistToken) -> Result<(T, Vec<M>), Error> {
        let seq = self.tokens.confirm(token)?;
        let Some(pending) = self.pending.pop_front() else {
            return Err(Error::PersistOutOfOrder {
                got: seq,
                expected: seq + 1,
            });
        };
        debug_assert_eq!(pending.seq, seq, "records and tokens advance together");
        Ok((pending.record, pending.held))
    }

    /// Records of the writes outstanding, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &T> {
        self.pending.iter().map(|p| &p.record)
    }

    /// Records of the writes outstanding, oldest first, to amend (a truncation cutting what an
    /// earlier write covered, say).
    pub fn records_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.pending.iter_mut().map(|p| &mut p.record)
    }

    /// Writes outstanding.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_messages_leave_with_the_newest_write_issued_when_they_were_attached() {
        let mut queue: WriteQueue<&str, u32> = WriteQueue::new();
        let mut send = Vec::new();
        let first = queue.issue("first");
        queue.hold(1);
        queue.attach_held(&mut send);
        let second = queue.issue("second");
        queue.hold(2);
        queue.attach_held(&mut send);
        assert!(send.is_empty(), "both wait for a write");
        assert_eq!(queue.confirm(first).unwrap(), ("first", vec![1]));
        assert_eq!(queue.confirm(second).unwrap(), ("second", vec![2]));
        assert_eq!(queue.outstanding(), 0);
    }

    #[test]
    fn with_no_write_outstanding_held_messages_leave_at_once() {
        let mut queue: WriteQueue<(), u32> = WriteQueue::new();
        let mut send = Vec::new();
        queue.hold(7);
        assert!(queue.has_held());
        queue.attach_held(&mut send);
        assert_eq!(send, vec![7]);
        assert!(!queue.has_held());
    }

    #[test]
    fn a_token_out_of_order_is_refused_and_changes_nothing() {
        let mut queue: WriteQueue<u8, ()> = WriteQueue::new();
        let _first = queue.issue(1);
        let second = queue.issue(2);
        assert!(matches!(
            queue.confirm(second),
            Err(Error::PersistOutOfOrder {
                got: 2,
                expected: 1
            })
        ));
        assert_eq!(queue.records().copied().collect::<Vec<_>>(), vec![1, 2]);
    }
}
