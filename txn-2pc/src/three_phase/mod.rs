//! Three-phase commit (Skeen, 1981) with its termination protocol. **Opt-in.**
//!
//! CanCommit → (votes) → PreCommit → (acks) → DoCommit. Between "uncertain" and "committed"
//! every participant passes through "pre-committed", so no operational participant can be
//! uncertain while another has committed; when the coordinator falls silent the participants
//! elect a termination leader (lowest rank first, by staggered timeouts) which collects states
//! and applies [`termination::decide`]: any committed ⇒ commit; any aborted ⇒ abort; some
//! pre-committed ⇒ pre-commit the rest, then commit; all uncertain ⇒ abort.
//!
//! The honest summary: **non-blocking under crash failures** in a synchronous system (timeouts
//! longer than any message delay, so silence means a crash), **unsafe under partitions or
//! unbounded delays** — a side that sees only uncertain participants aborts while the other
//! side, holding a pre-committed one, commits. The simulator finds such seeds
//! (`sim::three_phase`). Production systems instead keep the 2PC coordinator's state on a
//! consensus log. The coordinator here keeps no log at all: the termination protocol covers its
//! crash, and it answers only from memory.
//!
//! Participants force UNCERTAIN before voting yes, PRE-COMMITTED before acknowledging, and
//! ABORTED once they have voted yes; COMMITTED is lazy (a lost one recovers as pre-committed,
//! which terminates as commit). A participant that restarts in doubt is *recovering*: its state
//! counts only when every participant reports (Skeen's recovery rule).

mod coordinator;
mod participant;
pub mod termination;

pub use coordinator::{Coordinator, CoordinatorEvent};
pub use participant::{Participant, ParticipantEvent, ParticipantRecord};
pub use termination::{Decision, LocalState, StateReport};

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, Outcome, TxnId};

/// A 3PC vote (no read-only optimisation in this protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote3 {
    /// Uncertain state forced; ready to commit.
    Yes,
    /// Cannot commit.
    No,
}

/// The messages of three-phase commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Initiating participant → coordinator: commit this; my vote is yes.
    BeginCommit {
        /// The transaction.
        txn: TxnId,
        /// Every participant.
        participants: Vec<NodeId>,
    },
    /// Coordinator → participant: can you commit?
    CanCommit {
        /// The transaction.
        txn: TxnId,
        /// Every participant.
        participants: Vec<NodeId>,
    },
    /// Participant → coordinator.
    Vote {
        /// The transaction.
        txn: TxnId,
        /// The vote.
        vote: Vote3,
    },
    /// Coordinator or termination leader → participant: enter pre-committed.
    PreCommit {
        /// The transaction.
        txn: TxnId,
    },
    /// Participant → whoever sent PRE-COMMIT.
    PreCommitAck {
        /// The transaction.
        txn: TxnId,
    },
    /// Coordinator or termination leader → participant: commit.
    DoCommit {
        /// The transaction.
        txn: TxnId,
    },
    /// Coordinator or termination leader → participant: abort.
    Abort {
        /// The transaction.
        txn: TxnId,
    },
    /// Termination leader → participant: report your state.
    StateRequest {
        /// The transaction.
        txn: TxnId,
        /// The leader's rank (lower wins).
        rank: u32,
    },
    /// Participant → termination leader.
    StateReport {
        /// The transaction.
        txn: TxnId,
        /// The state.
        report: StateReport,
    },
    /// Anyone → anyone: do you know the outcome?
    DecisionRequest {
        /// The transaction.
        txn: TxnId,
    },
    /// The outcome, from someone who knows it.
    DecisionReply {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        outcome: Outcome,
    },
}

/// Timeouts in ticks. Safety under crash faults needs them longer than any message delay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The coordinator aborts if votes are missing after this long.
    pub vote_timeout: u64,
    /// The coordinator resends PRE-COMMIT to participants that have not acknowledged it this
    /// often (it sends DO-COMMIT only once every participant has).
    pub ack_timeout: u64,
    /// A participant in doubt starts termination after this long without news …
    pub termination_timeout: u64,
    /// … plus this much per rank, so the lowest-ranked live participant leads.
    pub rank_stagger: u64,
    /// How long a termination leader collects states or pre-commit acks.
    pub collect_window: u64,
    /// How many finished transactions each engine remembers.
    pub remember_finished: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vote_timeout: 40,
            ack_timeout: 30,
            termination_timeout: 100,
            rank_stagger: 50,
            collect_window: 30,
            remember_finished: 65_536,
        }
    }
}
