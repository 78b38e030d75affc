//! The 3PC coordinator. It writes nothing: if it crashes, the participants terminate alone.

use std::collections::{BTreeMap, BTreeSet};

use super::{Config, Message, Vote3};
use crate::error::StepError;
use crate::finished::FinishedLog;
use crate::output::{Outbox, Output};
use crate::two_phase::normalise;
use crate::types::{NodeId, Outcome, TxnId};

/// What the coordinator reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorEvent {
    /// The coordinator decided (commit: DO-COMMIT sent; abort: ABORT sent).
    Decided {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        outcome: Outcome,
    },
}

#[derive(Debug)]
enum Phase {
    Voting {
        votes: BTreeMap<NodeId, Vote3>,
    },
    PreCommitting {
        unacked: BTreeSet<NodeId>,
        since: u64,
    },
}

#[derive(Debug)]
struct Txn {
    participants: Vec<NodeId>,
    started: u64,
    phase: Phase,
}

/// The coordinator of three-phase commit.
#[derive(Debug)]
pub struct Coordinator {
    id: NodeId,
    config: Config,
    now: u64,
    txns: BTreeMap<TxnId, Txn>,
    finished: FinishedLog<Outcome>,
    out: Outbox<Message, (), CoordinatorEvent>,
}

impl Coordinator {
    /// A coordinator (also after a restart: it keeps no durable state).
    pub fn new(id: NodeId, config: Config) -> Self {
        Coordinator {
            id,
            finished: FinishedLog::new(config.remember_finished),
            config,
            now: 0,
            txns: BTreeMap::new(),
            out: Outbox::new(),
        }
    }

    /// This coordinator's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts `txn` across `participants`: CAN-COMMIT to each.
    pub fn begin(&mut self, txn: TxnId, participants: &[NodeId]) -> Result<(), StepError> {
        self.open(txn, participants, None)
    }

    fn open(
        &mut self,
        txn: TxnId,
        participants: &[NodeId],
        initiator: Option<NodeId>,
    ) -> Result<(), StepError> {
        if self.txns.contains_key(&txn) || self.finished.contains(txn) {
            return Err(StepError::DuplicateTxn(txn));
        }
        let participants = normalise(participants).ok_or(StepError::Invalid(
            "participants must be non-empty and distinct",
        ))?;
        let mut votes = BTreeMap::new();
        if let Some(from) = initiator {
            if !participants.contains(&from) {
                return Err(StepError::NotAParticipant { txn, from });
            }
            votes.insert(from, Vote3::Yes);
        }
        for &p in participants.iter().filter(|p| Some(**p) != initiator) {
            self.out.send(
                p,
                Message::CanCommit {
                    txn,
                    participants: participants.clone(),
                },
            );
        }
        self.txns.insert(
            txn,
            Txn {
                participants,
                started: self.now,
                phase: Phase::Voting { votes },
            },
        );
        self.check_votes(txn);
        Ok(())
    }

    /// Handles one message.
    pub fn step(&mut self, from: NodeId, message: Message) -> Result<(), StepError> {
        match message {
            Message::BeginCommit { txn, participants } => {
                match self.open(txn, &participants, Some(from)) {
                    Err(StepError::DuplicateTxn(_)) => Ok(()), // a duplicate, ignored by rule
                    other => other,
                }
            }
            Message::Vote { txn, vote } => {
                let Some(entry) = self.txns.get_mut(&txn) else {
                    return if self.finished.contains(txn) {
                        Ok(())
                    } else {
                        Err(StepError::UnknownTxn(txn))
                    };
                };
                if !entry.participants.contains(&from) {
                    return Err(StepError::NotAParticipant { txn, from });
                }
                if let Phase::Voting { votes } = &mut entry.phase {
                    votes.entry(from).or_insert(vote);
                }
                self.check_votes(txn);
                Ok(())
            }
            Message::PreCommitAck { txn } => {
                if let Some(Txn {
                    phase: Phase::PreCommitting { unacked, .. },
                    ..
                }) = self.txns.get_mut(&txn)
                {
                    unacked.remove(&from);
                    if unacked.is_empty() {
                        self.commit(txn);
                    }
                }
                Ok(())
            }
            Message::DecisionRequest { txn } => {
                if let Some(&outcome) = self.finished.get(txn) {
                    self.out.send(from, Message::DecisionReply { txn, outcome });
                }
                Ok(())
            }
            // Termination traffic among participants is none of the coordinator's business.
            Message::StateRequest { .. } | Message::StateReport { .. } => Ok(()),
            Message::DecisionReply { .. } => Ok(()),
            Message::CanCommit { .. }
            | Message::PreCommit { .. }
            | Message::DoCommit { .. }
            | Message::Abort { .. } => Err(StepError::Invalid(
                "a participant's message sent to the coordinator",
            )),
        }
    }

    fn check_votes(&mut self, txn: TxnId) {
        let Some(Txn {
            participants,
            phase: Phase::Voting { votes },
            ..
        }) = self.txns.get(&txn)
        else {
            return;
        };
        if votes.values().any(|v| *v == Vote3::No) {
            self.abort(txn);
        } else if votes.len() == participants.len() {
            let participants = participants.clone();
            for &p in &participants {
                self.out.send(p, Message::PreCommit { txn });
            }
            if let Some(entry) = self.txns.get_mut(&txn) {
                entry.phase = Phase::PreCommitting {
                    unacked: participants.into_iter().collect(),
                    since: self.now,
                };
            }
        }
    }

    fn abort(&mut self, txn: TxnId) {
        if let Some(entry) = self.txns.remove(&txn) {
            for &p in &entry.participants {
                self.out.send(p, Message::Abort { txn });
            }
            self.finish(txn, Outcome::Abort);
        }
    }

    fn commit(&mut self, txn: TxnId) {
        if let Some(entry) = self.txns.remove(&txn) {
            for &p in &entry.participants {
                self.out.send(p, Message::DoCommit { txn });
            }
            self.finish(txn, Outcome::Commit);
        }
    }

    fn finish(&mut self, txn: TxnId, outcome: Outcome) {
        self.finished.insert(txn, outcome);
        self.out.event(CoordinatorEvent::Decided { txn, outcome });
    }

    /// One tick: vote timeouts abort; PRE-COMMIT is resent to silent participants. DO-COMMIT
    /// waits for every ack, so every participant is durably pre-committed before anyone commits
    /// (a crashed one's silence is the termination protocol's business, not a licence to commit).
    pub fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        let mut aborts = Vec::new();
        for (&txn, entry) in &mut self.txns {
            match &mut entry.phase {
                Phase::Voting { .. } if now - entry.started >= self.config.vote_timeout => {
                    aborts.push(txn)
                }
                Phase::PreCommitting { since, unacked }
                    if now - *since >= self.config.ack_timeout =>
                {
                    *since = now;
                    for &p in unacked.iter() {
                        self.out.send(p, Message::PreCommit { txn });
                    }
                }
                _ => {}
            }
        }
        for txn in aborts {
            self.abort(txn);
        }
    }

    /// Drains messages and events (the coordinator has no writes).
    pub fn take_output(&mut self) -> Output<Message, (), CoordinatorEvent> {
        self.out.take()
    }

    /// How many transactions are live.
    pub fn live(&self) -> usize {
        self.txns.len()
    }
}
