//! Requests for keys this node does not replicate are forwarded to a replica over the peer link
//! (class [`MessageClass::Forward`](crate::proto::MessageClass::Forward)), and its answer is
//! relayed back to the client, so a client may send anything to any node. One hop only: a
//! forwarded request that is not for the receiving node either comes back as `NotAReplica`
//! (with the replicas' addresses, for the client to redirect). Unanswered forwards time out.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::proto::{PeerReply, PeerRequest, Responder, ServerError};

/// What one node asks another on a client's behalf, and the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Forward {
    /// Serve this client request (do not forward it again).
    Request {
        /// The forwarder's id for it.
        id: u64,
        /// The request.
        request: PeerRequest,
    },
    /// The answer to the forward `id`.
    Reply {
        /// Echoed.
        id: u64,
        /// The answer, as the client gets it.
        reply: Result<PeerReply, ServerError>,
    },
}

/// Who waits for an engine request's answer.
pub(super) enum Waiter {
    /// A client of this node; `request` is kept for forwarding if the key is not ours.
    Local {
        /// Answers the client.
        responder: Responder,
        /// The request as the client sent it.
        request: PeerRequest,
    },
    /// A forward from node `from`, id `id` there.
    Remote {
        /// The forwarding node.
        from: u64,
        /// Its id for the forward.
        id: u64,
    },
}

/// Forwards this node sent and waits for.
#[derive(Default)]
pub(super) struct Forwards {
    next: u64,
    waiting: HashMap<u64, (Responder, u64)>,
}

impl Forwards {
    /// Registers a forward that expires at `deadline_ms`; returns its id.
    pub(super) fn start(&mut self, responder: Responder, deadline_ms: u64) -> u64 {
        self.next += 1;
        self.waiting.insert(self.next, (responder, deadline_ms));
        self.next
    }

    /// The client waiting for forward `id`, if it still does.
    pub(super) fn finish(&mut self, id: u64) -> Option<Responder> {
        self.waiting.remove(&id).map(|(r, _)| r)
    }

    /// Answers `Timeout` to every forward past its deadline.
    pub(super) fn expire(&mut self, now_ms: u64) {
        let expired: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some((responder, _)) = self.waiting.remove(&id) {
                let _ = responder.reply(&Err(ServerError::Timeout));
            }
        }
    }

    /// Answers `error` to every forward (at shutdown).
    pub(super) fn fail_all(&mut self, error: ServerError) {
        for (_, (responder, _)) in self.waiting.drain() {
            let _ = responder.reply(&Err(error.clone()));
        }
    }
}
