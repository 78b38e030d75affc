//! Two-phase commit with presumed abort (Mohan, Lindsay & Obermarck's R*; Gray & Lamport).
//!
//! - [`Coordinator`]: collects votes, forces its COMMIT decision before sending it, retries it
//!   until every yes-voter acknowledges, then writes END lazily. It writes nothing for an abort
//!   (no forced write, no acks) and answers "abort" for any transaction it does not know.
//! - [`Participant`]: asks its resource manager to prepare, forces PREPARED before voting yes,
//!   forces COMMITTED before acknowledging, and when in doubt asks the coordinator and then its
//!   peers ([`termination`]); if every peer is uncertain too it reports the transaction blocked.
//!
//! Optimisations: read-only votes skip phase 2; a transaction with one participant commits in
//! one phase; the participant that starts a commit can prepare first and send
//! [`Message::BeginCommit`], which is its yes vote (Gray & Lamport's accounting: 3N−1 messages,
//! 4 message delays and 3 forced-write delays until every participant knows the decision).

mod coordinator;
mod participant;
pub mod termination;

pub use coordinator::{Coordinator, CoordinatorEvent, CoordinatorPhase, CoordinatorRecord};
pub use participant::{InDoubt, Participant, ParticipantEvent, ParticipantRecord};

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, Outcome, TxnId, Vote};

/// The messages of two-phase commit, between coordinator and participants and among peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Initiating participant → coordinator: "commit this; I am prepared" (a yes vote).
    BeginCommit {
        /// The transaction.
        txn: TxnId,
        /// Every participant, the initiator included.
        participants: Vec<NodeId>,
    },
    /// Coordinator → participant: prepare and vote.
    Prepare {
        /// The transaction.
        txn: TxnId,
        /// Every participant (so an in-doubt one knows whom to ask).
        participants: Vec<NodeId>,
    },
    /// Participant → coordinator: the vote.
    Vote {
        /// The transaction.
        txn: TxnId,
        /// The vote.
        vote: Vote,
    },
    /// Coordinator → yes-voter: the decision is commit.
    Commit {
        /// The transaction.
        txn: TxnId,
    },
    /// Coordinator → possible yes-voter: the decision is abort (sent once, never acknowledged).
    Abort {
        /// The transaction.
        txn: TxnId,
    },
    /// Participant → coordinator: COMMITTED is durable here.
    Ack {
        /// The transaction.
        txn: TxnId,
    },
    /// Coordinator → the only participant: decide yourself.
    OnePhaseCommit {
        /// The transaction.
        txn: TxnId,
    },
    /// The only participant → coordinator: what it decided (after forcing it).
    OnePhaseOutcome {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        outcome: Outcome,
    },
    /// In-doubt participant → coordinator or peer: what was decided?
    DecisionRequest {
        /// The transaction.
        txn: TxnId,
    },
    /// The answer to a [`Message::DecisionRequest`].
    DecisionReply {
        /// The transaction.
        txn: TxnId,
        /// What the replier knows.
        answer: Answer,
    },
}

impl Message {
    /// The transaction the message is about.
    pub fn txn(&self) -> TxnId {
        match self {
            Message::BeginCommit { txn, .. }
            | Message::Prepare { txn, .. }
            | Message::Vote { txn, .. }
            | Message::Commit { txn }
            | Message::Abort { txn }
            | Message::Ack { txn }
            | Message::OnePhaseCommit { txn }
            | Message::OnePhaseOutcome { txn, .. }
            | Message::DecisionRequest { txn }
            | Message::DecisionReply { txn, .. } => *txn,
        }
    }
}

/// What a node knows about a transaction's outcome when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// It was decided: this outcome.
    Decided(Outcome),
    /// The replier is prepared and does not know the outcome either.
    Uncertain,
}

/// Timeouts of both roles, in ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A coordinator aborts a transaction whose votes have not all arrived after this long.
    pub vote_timeout: u64,
    /// A coordinator resends COMMIT (or ONE-PHASE COMMIT) to silent participants this often.
    pub retry_interval: u64,
    /// A prepared participant asks the coordinator after this long without a decision, and
    /// again every `retry_interval`.
    pub decision_timeout: u64,
    /// After this many unanswered requests to the coordinator, an in-doubt participant also
    /// asks its peers (cooperative termination).
    pub ask_peers_after: u32,
    /// How many finished transaction ids each engine remembers, to ignore stale duplicates.
    pub remember_finished: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vote_timeout: 40,
            retry_interval: 10,
            decision_timeout: 30,
            ask_peers_after: 2,
            remember_finished: 65_536,
        }
    }
}

/// Known bugs that can be planted to prove the simulator catches them.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A participant sends its yes vote without waiting for PREPARED to be durable.
    VoteBeforeForcingPrepared,
    /// The coordinator sends COMMIT without waiting for its decision to be durable.
    CommitBeforeForcingDecision,
}

/// Participants listed once each, in order, the sender's own id excluded or not.
pub(crate) fn normalise(participants: &[NodeId]) -> Option<Vec<NodeId>> {
    let mut list = participants.to_vec();
    list.sort_unstable();
    let before = list.len();
    list.dedup();
    (before == list.len() && !list.is_empty()).then_some(list)
}
