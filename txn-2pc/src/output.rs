//! The durability contract shared by every engine: records to write, messages to send, events.
//!
//! An engine never sends a message that depends on a record before the embedder has said that
//! record is durable. It cannot forget to, because such messages are *held inside the engine*:
//! [`Write::Force`] carries a [`ForceToken`], and the messages and events waiting on it come out
//! of [`Output`] only after the embedder calls the engine's `forced(token)`. The embedder's
//! duties, in order, for every drained [`Output`]:
//!
//! 1. append every [`Output::writes`] record to its log, in the order given (a lazy record may
//!    stay in a buffer, but must not become durable after a record forced later);
//! 2. for each [`Write::Force`], make the log durable up to it (fsync, or a consensus commit)
//!    and then call `forced(token)`;
//! 3. send [`Output::messages`] — they never depend on a write that is not yet confirmed;
//! 4. act on [`Output::events`] (apply a decision, report a blocked transaction…).

use std::collections::BTreeMap;

use crate::error::DurabilityError;
use crate::types::NodeId;

/// Names a forced write; the embedder hands it back once the write is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ForceToken(pub(crate) u64);

impl ForceToken {
    /// The token's number (unique within one engine instance), for logs.
    pub fn number(self) -> u64 {
        self.0
    }
}

/// A record the engine asks the embedder to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write<R> {
    /// Write and make durable, then confirm with `forced(token)`; messages that depend on the
    /// record are held until then.
    Force {
        /// What to hand back to `forced`.
        token: ForceToken,
        /// The record.
        record: R,
    },
    /// Write, no hurry: losing it in a crash is safe (the protocol presumes its content).
    Lazy {
        /// The record.
        record: R,
    },
}

impl<R> Write<R> {
    /// The record, forced or not.
    pub fn record(&self) -> &R {
        match self {
            Write::Force { record, .. } | Write::Lazy { record } => record,
        }
    }
}

/// Everything an engine wants done, drained with the engine's `take_output()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output<M, R, E> {
    /// Records to write, in order.
    pub writes: Vec<Write<R>>,
    /// Messages to send: (recipient, message). None depends on an unconfirmed write.
    pub messages: Vec<(NodeId, M)>,
    /// Things that happened (decisions to apply, reports).
    pub events: Vec<E>,
}

impl<M, R, E> Default for Output<M, R, E> {
    fn default() -> Self {
        Output {
            writes: Vec::new(),
            messages: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<M, R, E> Output<M, R, E> {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.messages.is_empty() && self.events.is_empty()
    }
}

/// Messages and events waiting for one forced write.
#[derive(Debug)]
struct Held<M, E> {
    messages: Vec<(NodeId, M)>,
    events: Vec<E>,
}

/// The engines' side of the contract: queues output and holds what depends on forced writes.
#[derive(Debug)]
pub(crate) struct Outbox<M, R, E> {
    next_token: u64,
    ready: Output<M, R, E>,
    held: BTreeMap<ForceToken, Held<M, E>>,
}

/// Most forced writes an engine may have unconfirmed; a bound, not a tuning knob.
pub(crate) const MAX_UNCONFIRMED_FORCES: usize = 1 << 20;

impl<M, R, E> Outbox<M, R, E> {
    pub(crate) fn new() -> Self {
        Outbox {
            next_token: 0,
            ready: Output::default(),
            held: BTreeMap::new(),
        }
    }

    /// Queues a lazy write.
    pub(crate) fn lazy(&mut self, record: R) {
        self.ready.writes.push(Write::Lazy { record });
    }

    /// Queues a forced write; what is attached to the returned token waits for `confirm`.
    pub(crate) fn force(&mut self, record: R) -> ForceToken {
        debug_assert!(self.held.len() < MAX_UNCONFIRMED_FORCES);
        let token = ForceToken(self.next_token);
        self.next_token += 1;
        self.ready.writes.push(Write::Force { token, record });
        self.held.insert(
            token,
            Held {
                messages: Vec::new(),
                events: Vec::new(),
            },
        );
        token
    }

    /// Sends now (the message depends on no unconfirmed write).
    pub(crate) fn send(&mut self, to: NodeId, message: M) {
        self.ready.messages.push((to, message));
    }

    /// Sends once `token` is confirmed (at once if it already was).
    pub(crate) fn send_after(&mut self, token: ForceToken, to: NodeId, message: M) {
        match self.held.get_mut(&token) {
            Some(held) => held.messages.push((to, message)),
            None => self.ready.messages.push((to, message)),
        }
    }

    /// Reports now.
    pub(crate) fn event(&mut self, event: E) {
        self.ready.events.push(event);
    }

    /// Reports once `token` is confirmed (at once if it already was).
    pub(crate) fn event_after(&mut self, token: ForceToken, event: E) {
        match self.held.get_mut(&token) {
            Some(held) => held.events.push(event),
            None => self.ready.events.push(event),
        }
    }

    /// Whether `token` is still waiting for its confirmation.
    pub(crate) fn is_pending(&self, token: ForceToken) -> bool {
        self.held.contains_key(&token)
    }

    /// The embedder says `token`'s record is durable: release what waited for it.
    pub(crate) fn confirm(&mut self, token: ForceToken) -> Result<(), DurabilityError> {
        if token.0 >= self.next_token {
            return Err(DurabilityError::UnknownToken(token.0));
        }
        // A record made durable implies every earlier one is (the log is a prefix), so earlier
        // tokens are released too: the embedder may confirm only the last of a batch.
        let later = self.held.split_off(&ForceToken(token.0 + 1));
        let released = std::mem::replace(&mut self.held, later);
        if released.is_empty() {
            return Err(DurabilityError::AlreadyConfirmed(token.0));
        }
        for (_, held) in released {
            self.ready.messages.extend(held.messages);
            self.ready.events.extend(held.events);
        }
        Ok(())
    }

    pub(crate) fn take(&mut self) -> Output<M, R, E> {
        std::mem::take(&mut self.ready)
    }
}
