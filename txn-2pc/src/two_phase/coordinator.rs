//! The 2PC coordinator (presumed abort).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{normalise, Answer, Config, Message};
use crate::error::{DurabilityError, RecoveryError, StepError};
use crate::finished::FinishedLog;
use crate::output::{ForceToken, Outbox, Output};
use crate::record::DurableRecord;
use crate::types::{NodeId, Outcome, TxnId, Vote};

/// What the coordinator writes. Presumed abort: nothing at all for a transaction that aborts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorRecord {
    /// The commit decision, forced before any COMMIT leaves; names the yes-voters to tell.
    Commit {
        /// The transaction.
        txn: TxnId,
        /// Participants that voted yes (read-only voters need no phase 2).
        participants: Vec<NodeId>,
    },
    /// Every yes-voter acknowledged; written lazily, lets recovery skip the transaction.
    End {
        /// The transaction.
        txn: TxnId,
    },
}

impl DurableRecord for CoordinatorRecord {}

/// What the coordinator reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorEvent {
    /// The outcome is decided (for a commit: once its record is durable).
    Decided {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        outcome: Outcome,
    },
    /// Nothing more to do for the transaction (all acks in, or an abort).
    Finished {
        /// The transaction.
        txn: TxnId,
    },
}

/// Where a live transaction stands at the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinatorPhase {
    /// Collecting votes.
    Voting,
    /// COMMIT decided; waiting for its record to be durable or for acknowledgements.
    Committing,
    /// One participant: waiting for its own outcome.
    OnePhase,
}

#[derive(Debug)]
enum Phase {
    Voting {
        votes: BTreeMap<NodeId, Vote>,
    },
    Committing {
        token: Option<ForceToken>,
        unacked: BTreeSet<NodeId>,
        last_sent: u64,
    },
    Single {
        last_sent: u64,
    },
}

#[derive(Debug)]
struct Txn {
    participants: Vec<NodeId>,
    started: u64,
    phase: Phase,
}

/// The coordinator of two-phase commit. See the [module docs](super) for the protocol.
#[derive(Debug)]
pub struct Coordinator {
    id: NodeId,
    config: Config,
    now: u64,
    txns: BTreeMap<TxnId, Txn>,
    finished: FinishedLog<Outcome>,
    out: Outbox<Message, CoordinatorRecord, CoordinatorEvent>,
    #[cfg(feature = "planted-bugs")]
    bug: Option<super::PlantedBug>,
}

impl Coordinator {
    /// A coordinator with no history.
    pub fn new(id: NodeId, config: Config) -> Self {
        Coordinator {
            id,
            finished: FinishedLog::new(config.remember_finished),
            config,
            now: 0,
            txns: BTreeMap::new(),
            out: Outbox::new(),
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }

    /// Rebuilds the coordinator from its durable records, in the order they were written.
    /// Every COMMIT without END is resumed (COMMIT resent to its participants); returns them.
    pub fn recover(
        id: NodeId,
        config: Config,
        records: impl IntoIterator<Item = CoordinatorRecord>,
    ) -> Result<(Self, Vec<TxnId>), RecoveryError> {
        let mut coordinator = Coordinator::new(id, config);
        let mut open: BTreeMap<TxnId, Vec<NodeId>> = BTreeMap::new();
        for record in records {
            match record {
                CoordinatorRecord::Commit { txn, participants } => {
                    if coordinator.finished.contains(txn) || open.contains_key(&txn) {
                        return Err(RecoveryError::Inconsistent {
                            txn,
                            detail: "a second COMMIT record",
                        });
                    }
                    open.insert(txn, participants);
                }
                CoordinatorRecord::End { txn } => {
                    if open.remove(&txn).is_none() {
                        return Err(RecoveryError::Inconsistent {
                            txn,
                            detail: "END without COMMIT",
                        });
                    }
                    coordinator.finished.insert(txn, Outcome::Commit);
                }
            }
        }
        let resumed: Vec<TxnId> = open.keys().copied().collect();
        for (txn, participants) in open {
            for &p in &participants {
                coordinator.out.send(p, Message::Commit { txn });
            }
            coordinator.txns.insert(
                txn,
                Txn {
                    participants: participants.clone(),
                    started: 0,
                    phase: Phase::Committing {
                        token: None,
                        unacked: participants.into_iter().collect(),
                        last_sent: 0,
                    },
                },
            );
        }
        Ok((coordinator, resumed))
    }

    /// Plants a known bug (tests and `cargo xtask sim --bug` only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bug(&mut self, bug: super::PlantedBug) {
        self.bug = Some(bug);
    }

    /// This coordinator's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts committing `txn` across `participants` (one participant: one-phase commit).
    pub fn begin(&mut self, txn: TxnId, participants: &[NodeId]) -> Result<(), StepError> {
        if self.txns.contains_key(&txn) || self.finished.contains(txn) {
            return Err(StepError::DuplicateTxn(txn));
        }
        let participants = normalise(participants).ok_or(StepError::Invalid(
            "participants must be non-empty and distinct",
        ))?;
        if let [only] = participants[..] {
            self.out.send(only, Message::OnePhaseCommit { txn });
            self.txns.insert(
                txn,
                Txn {
                    participants,
                    started: self.now,
                    phase: Phase::Single {
                        last_sent: self.now,
                    },
                },
            );
            return Ok(());
        }
        for &p in &participants {
            self.out.send(
                p,
                Message::Prepare {
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
                phase: Phase::Voting {
                    votes: BTreeMap::new(),
                },
            },
        );
        Ok(())
    }

    /// Aborts a transaction that is still collecting votes (the application changed its mind).
    pub fn abort(&mut self, txn: TxnId) -> Result<(), StepError> {
        match self.txns.get(&txn).map(|t| &t.phase) {
            Some(Phase::Voting { .. }) => {
                self.decide_abort(txn);
                Ok(())
            }
            Some(_) => Err(StepError::WrongState {
                txn,
                detail: "past the voting phase",
            }),
            None => Err(StepError::UnknownTxn(txn)),
        }
    }

    /// Handles one message from `from`.
    pub fn step(&mut self, from: NodeId, message: Message) -> Result<(), StepError> {
        match message {
            Message::BeginCommit { txn, participants } => {
                self.on_begin_commit(from, txn, &participants)
            }
            Message::Vote { txn, vote } => self.on_vote(from, txn, vote),
            Message::Ack { txn } => {
                self.on_ack(from, txn);
                Ok(())
            }
            Message::OnePhaseOutcome { txn, outcome } => {
                if matches!(
                    self.txns.get(&txn),
                    Some(Txn { phase: Phase::Single { .. }, participants, .. }) if participants == &[from]
                ) {
                    self.txns.remove(&txn);
                    self.finish(txn, outcome);
                }
                Ok(())
            }
            Message::DecisionRequest { txn } => {
                self.on_decision_request(from, txn);
                Ok(())
            }
            Message::Prepare { .. }
            | Message::Commit { .. }
            | Message::Abort { .. }
            | Message::OnePhaseCommit { .. }
            | Message::DecisionReply { .. } => Err(StepError::Invalid(
                "a participant's message sent to the coordinator",
            )),
        }
    }

    fn on_begin_commit(
        &mut self,
        from: NodeId,
        txn: TxnId,
        participants: &[NodeId],
    ) -> Result<(), StepError> {
        if self.txns.contains_key(&txn) || self.finished.contains(txn) {
            return Ok(()); // a duplicate: ignored by rule
        }
        let participants = normalise(participants).ok_or(StepError::Invalid(
            "participants must be non-empty and distinct",
        ))?;
        if !participants.contains(&from) {
            return Err(StepError::NotAParticipant { txn, from });
        }
        for &p in participants.iter().filter(|&&p| p != from) {
            self.out.send(
                p,
                Message::Prepare {
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
                phase: Phase::Voting {
                    votes: BTreeMap::from([(from, Vote::Yes)]),
                },
            },
        );
        self.check_votes(txn);
        Ok(())
    }

    fn on_vote(&mut self, from: NodeId, txn: TxnId, vote: Vote) -> Result<(), StepError> {
        let Some(entry) = self.txns.get_mut(&txn) else {
            return match (self.finished.get(txn), vote) {
                // Presumed abort: a yes-voter of a transaction we do not know learns "abort".
                (None | Some(Outcome::Abort), Vote::Yes) => {
                    // Remember the presumption, so a straggling BEGIN-COMMIT cannot revive it.
                    self.finished.insert(txn, Outcome::Abort);
                    self.out.send(from, Message::Abort { txn });
                    Ok(())
                }
                (Some(_), _) => Ok(()), // a duplicate of a vote already counted
                (None, _) => Err(StepError::UnknownTxn(txn)),
            };
        };
        if !entry.participants.contains(&from) {
            return Err(StepError::NotAParticipant { txn, from });
        }
        let Phase::Voting { votes } = &mut entry.phase else {
            return Ok(()); // late duplicate vote, the decision is taken
        };
        if let Some(previous) = votes.get(&from) {
            if *previous != vote {
                return Err(StepError::Conflict {
                    txn,
                    detail: "a participant changed its vote",
                });
            }
            return Ok(());
        }
        votes.insert(from, vote);
        self.check_votes(txn);
        Ok(())
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
        if votes.values().any(|v| *v == Vote::No) {
            self.decide_abort(txn);
            return;
        }
        if votes.len() < participants.len() {
            return;
        }
        let yes: Vec<NodeId> = votes
            .iter()
            .filter(|(_, v)| **v == Vote::Yes)
            .map(|(p, _)| *p)
            .collect();
        if yes.is_empty() {
            // Every participant was read-only: nothing to write, no phase 2.
            self.txns.remove(&txn);
            self.finish(txn, Outcome::Commit);
            return;
        }
        let token = self.out.force(CoordinatorRecord::Commit {
            txn,
            participants: yes.clone(),
        });
        for &p in &yes {
            #[cfg(feature = "planted-bugs")]
            if self.bug == Some(super::PlantedBug::CommitBeforeForcingDecision) {
                self.out.send(p, Message::Commit { txn });
                continue;
            }
            self.out.send_after(token, p, Message::Commit { txn });
        }
        self.out.event_after(
            token,
            CoordinatorEvent::Decided {
                txn,
                outcome: Outcome::Commit,
            },
        );
        if let Some(entry) = self.txns.get_mut(&txn) {
            entry.phase = Phase::Committing {
                token: Some(token),
                unacked: yes.into_iter().collect(),
                last_sent: self.now,
            };
        }
    }

    fn decide_abort(&mut self, txn: TxnId) {
        let Some(entry) = self.txns.remove(&txn) else {
            return;
        };
        if let Phase::Voting { votes } = &entry.phase {
            // Only a participant that may have voted yes needs to hear it; nobody acknowledges.
            for &p in &entry.participants {
                if matches!(votes.get(&p), None | Some(Vote::Yes)) {
                    self.out.send(p, Message::Abort { txn });
                }
            }
        }
        self.finish(txn, Outcome::Abort);
    }

    fn finish(&mut self, txn: TxnId, outcome: Outcome) {
        self.out.event(CoordinatorEvent::Decided { txn, outcome });
        self.out.event(CoordinatorEvent::Finished { txn });
        self.finished.insert(txn, outcome);
    }

    fn on_ack(&mut self, from: NodeId, txn: TxnId) {
        let Some(Txn {
            phase: Phase::Committing { token, unacked, .. },
            ..
        }) = self.txns.get_mut(&txn)
        else {
            return; // a duplicate ack after END: ignored by rule
        };
        unacked.remove(&from);
        let durable = token.is_none_or(|t| !self.out.is_pending(t));
        if unacked.is_empty() && durable {
            self.txns.remove(&txn);
            self.out.lazy(CoordinatorRecord::End { txn });
            self.out.event(CoordinatorEvent::Finished { txn });
            self.finished.insert(txn, Outcome::Commit);
        }
    }

    fn on_decision_request(&mut self, from: NodeId, txn: TxnId) {
        let answer = match self.txns.get(&txn) {
            Some(Txn {
                phase: Phase::Committing { token, .. },
                ..
            }) => {
                if token.is_some_and(|t| self.out.is_pending(t)) {
                    return; // not durable yet: the COMMIT itself will follow
                }
                Outcome::Commit
            }
            Some(_) => return, // still deciding
            None => match self.finished.get(txn) {
                Some(&outcome) => outcome,
                None => {
                    // Presumed abort. Remembered: a BEGIN-COMMIT for it that straggles in later
                    // (sent before this request) must not start it again.
                    self.finished.insert(txn, Outcome::Abort);
                    Outcome::Abort
                }
            },
        };
        self.out.send(
            from,
            Message::DecisionReply {
                txn,
                answer: Answer::Decided(answer),
            },
        );
    }

    /// Advances time by one tick: vote timeouts abort, unacknowledged decisions are resent.
    pub fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        let mut timed_out = Vec::new();
        for (&txn, entry) in &mut self.txns {
            match &mut entry.phase {
                Phase::Voting { .. } => {
                    if now - entry.started >= self.config.vote_timeout {
                        timed_out.push(txn);
                    }
                }
                Phase::Committing {
                    token,
                    unacked,
                    last_sent,
                } => {
                    let durable = token.is_none_or(|t| !self.out.is_pending(t));
                    if durable && now - *last_sent >= self.config.retry_interval {
                        *last_sent = now;
                        for &p in unacked.iter() {
                            self.out.send(p, Message::Commit { txn });
                        }
                    }
                }
                Phase::Single { last_sent } => {
                    if now - *last_sent >= self.config.retry_interval {
                        *last_sent = now;
                        self.out
                            .send(entry.participants[0], Message::OnePhaseCommit { txn });
                    }
                }
            }
        }
        for txn in timed_out {
            self.decide_abort(txn);
        }
    }

    /// The embedder made the forced write `token` durable.
    pub fn forced(&mut self, token: ForceToken) -> Result<(), DurabilityError> {
        self.out.confirm(token)?;
        // Transactions whose acks all came in while their decision was being forced end now.
        let done: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, t)| {
                matches!(&t.phase, Phase::Committing { token: Some(t), unacked, .. }
                    if unacked.is_empty() && !self.out.is_pending(*t))
            })
            .map(|(txn, _)| *txn)
            .collect();
        for txn in done {
            self.txns.remove(&txn);
            self.out.lazy(CoordinatorRecord::End { txn });
            self.out.event(CoordinatorEvent::Finished { txn });
            self.finished.insert(txn, Outcome::Commit);
        }
        Ok(())
    }

    /// Drains what the embedder must do now.
    pub fn take_output(&mut self) -> Output<Message, CoordinatorRecord, CoordinatorEvent> {
        self.out.take()
    }

    /// Where a live transaction stands (`None` once finished or never known).
    pub fn phase(&self, txn: TxnId) -> Option<CoordinatorPhase> {
        self.txns.get(&txn).map(|t| match t.phase {
            Phase::Voting { .. } => CoordinatorPhase::Voting,
            Phase::Committing { .. } => CoordinatorPhase::Committing,
            Phase::Single { .. } => CoordinatorPhase::OnePhase,
        })
    }

    /// How many transactions are live.
    pub fn live(&self) -> usize {
        self.txns.len()
    }
}
