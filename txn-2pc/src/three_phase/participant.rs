//! The 3PC participant, with the termination protocol it runs when the coordinator is silent.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::termination::{decide, Decision, LocalState, StateReport};
use super::{Config, Message, Vote3};
use crate::error::{DurabilityError, RecoveryError, StepError};
use crate::finished::FinishedLog;
use crate::output::{ForceToken, Outbox, Output};
use crate::record::DurableRecord;
use crate::two_phase::normalise;
use crate::types::{NodeId, Outcome, TxnId};

/// What a 3PC participant writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantRecord {
    /// Forced before voting yes.
    Uncertain {
        /// The transaction.
        txn: TxnId,
        /// Its coordinator.
        coordinator: NodeId,
        /// Every participant.
        participants: Vec<NodeId>,
    },
    /// Forced before acknowledging PRE-COMMIT.
    PreCommitted {
        /// The transaction.
        txn: TxnId,
    },
    /// Lazy: a lost one recovers as pre-committed, which terminates as commit.
    Committed {
        /// The transaction.
        txn: TxnId,
    },
    /// Forced once the participant had voted yes (lazy before that).
    Aborted {
        /// The transaction.
        txn: TxnId,
    },
}

impl DurableRecord for ParticipantRecord {}

/// What a 3PC participant reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantEvent {
    /// Prepare the work and call [`Participant::vote`].
    PrepareRequested {
        /// The transaction.
        txn: TxnId,
    },
    /// Apply this outcome.
    Apply {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        outcome: Outcome,
    },
    /// This participant started leading the termination protocol.
    TerminationStarted {
        /// The transaction.
        txn: TxnId,
    },
}

#[derive(Debug)]
enum Lead {
    Collecting {
        since: u64,
        reports: BTreeMap<NodeId, StateReport>,
    },
    PreCommitting {
        since: u64,
        unacked: BTreeSet<NodeId>,
    },
}

#[derive(Debug)]
struct Txn {
    coordinator: NodeId,
    participants: Vec<NodeId>,
    /// `None` while waiting for the resource manager's vote.
    state: Option<LocalState>,
    initiator: bool,
    /// The forced write the current state waits for.
    token: Option<ForceToken>,
    recovering: bool,
    /// Last news from the coordinator or a termination leader.
    last_news: u64,
    lead: Option<Lead>,
}

/// A 3PC participant.
#[derive(Debug)]
pub struct Participant {
    id: NodeId,
    config: Config,
    now: u64,
    txns: BTreeMap<TxnId, Txn>,
    finished: FinishedLog<Outcome>,
    out: Outbox<Message, ParticipantRecord, ParticipantEvent>,
}

impl Participant {
    /// A participant with no history.
    pub fn new(id: NodeId, config: Config) -> Self {
        Participant {
            id,
            finished: FinishedLog::new(config.remember_finished),
            config,
            now: 0,
            txns: BTreeMap::new(),
            out: Outbox::new(),
        }
    }

    /// Rebuilds from durable records; returns the transactions left in doubt (recovering).
    pub fn recover(
        id: NodeId,
        config: Config,
        records: impl IntoIterator<Item = ParticipantRecord>,
    ) -> Result<(Self, Vec<TxnId>), RecoveryError> {
        let mut participant = Participant::new(id, config);
        for record in records {
            match record {
                ParticipantRecord::Uncertain {
                    txn,
                    coordinator,
                    participants,
                } => {
                    participant.txns.insert(
                        txn,
                        Txn {
                            coordinator,
                            participants,
                            state: Some(LocalState::Uncertain),
                            initiator: false,
                            token: None,
                            recovering: true,
                            last_news: 0,
                            lead: None,
                        },
                    );
                }
                ParticipantRecord::PreCommitted { txn } => match participant.txns.get_mut(&txn) {
                    Some(t) => t.state = Some(LocalState::PreCommitted),
                    None => {
                        return Err(RecoveryError::Inconsistent {
                            txn,
                            detail: "PRE-COMMITTED without UNCERTAIN",
                        })
                    }
                },
                ParticipantRecord::Committed { txn } | ParticipantRecord::Aborted { txn } => {
                    let outcome = if matches!(record, ParticipantRecord::Committed { .. }) {
                        Outcome::Commit
                    } else {
                        Outcome::Abort
                    };
                    if participant.finished.get(txn).is_some_and(|o| *o != outcome) {
                        return Err(RecoveryError::Inconsistent {
                            txn,
                            detail: "both COMMITTED and ABORTED",
                        });
                    }
                    participant.txns.remove(&txn);
                    participant.finished.insert(txn, outcome);
                }
            }
        }
        let in_doubt = participant.txns.keys().copied().collect();
        Ok((participant, in_doubt))
    }

    /// This participant's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts a commit from this participant (it votes first, by BEGIN-COMMIT).
    pub fn initiate(
        &mut self,
        txn: TxnId,
        coordinator: NodeId,
        participants: &[NodeId],
    ) -> Result<(), StepError> {
        if self.txns.contains_key(&txn) || self.finished.contains(txn) {
            return Err(StepError::DuplicateTxn(txn));
        }
        let participants = normalise(participants).ok_or(StepError::Invalid(
            "participants must be non-empty and distinct",
        ))?;
        if !participants.contains(&self.id) {
            return Err(StepError::Invalid("the initiator must be a participant"));
        }
        self.open(txn, coordinator, participants, true);
        Ok(())
    }

    fn open(
        &mut self,
        txn: TxnId,
        coordinator: NodeId,
        participants: Vec<NodeId>,
        initiator: bool,
    ) {
        self.txns.insert(
            txn,
            Txn {
                coordinator,
                participants,
                state: None,
                initiator,
                token: None,
                recovering: false,
                last_news: self.now,
                lead: None,
            },
        );
        self.out.event(ParticipantEvent::PrepareRequested { txn });
    }

    /// The resource manager's vote.
    pub fn vote(&mut self, txn: TxnId, vote: Vote3) -> Result<(), StepError> {
        let Some(entry) = self.txns.get_mut(&txn) else {
            return match self.finished.get(txn) {
                Some(Outcome::Abort) => Ok(()),
                _ => Err(StepError::UnknownTxn(txn)),
            };
        };
        if entry.state.is_some() {
            return Err(StepError::WrongState {
                txn,
                detail: "already voted",
            });
        }
        match vote {
            Vote3::Yes => {
                let token = self.out.force(ParticipantRecord::Uncertain {
                    txn,
                    coordinator: entry.coordinator,
                    participants: entry.participants.clone(),
                });
                let message = if entry.initiator {
                    Message::BeginCommit {
                        txn,
                        participants: entry.participants.clone(),
                    }
                } else {
                    Message::Vote { txn, vote }
                };
                self.out.send_after(token, entry.coordinator, message);
                entry.state = Some(LocalState::Uncertain);
                entry.token = Some(token);
                entry.last_news = self.now;
            }
            Vote3::No => {
                let coordinator = entry.coordinator;
                let initiator = entry.initiator;
                self.txns.remove(&txn);
                self.finish(txn, Outcome::Abort, false);
                if !initiator {
                    self.out.send(coordinator, Message::Vote { txn, vote });
                }
            }
        }
        Ok(())
    }

    /// Ends `txn` here: writes its record (ABORTED forced if `forced`) and applies it.
    fn finish(&mut self, txn: TxnId, outcome: Outcome, forced: bool) -> Option<ForceToken> {
        self.txns.remove(&txn);
        self.finished.insert(txn, outcome);
        let record = match outcome {
            Outcome::Commit => ParticipantRecord::Committed { txn },
            Outcome::Abort => ParticipantRecord::Aborted { txn },
        };
        let event = ParticipantEvent::Apply { txn, outcome };
        if forced {
            let token = self.out.force(record);
            self.out.event_after(token, event);
            Some(token)
        } else {
            self.out.lazy(record);
            self.out.event(event);
            None
        }
    }

    fn voted_yes(&self, txn: TxnId) -> bool {
        self.txns.get(&txn).is_some_and(|t| t.state.is_some())
    }

    fn durable(&self, txn: TxnId) -> bool {
        self.txns
            .get(&txn)
            .and_then(|t| t.token)
            .is_none_or(|t| !self.out.is_pending(t))
    }

    /// Handles one message.
    pub fn step(&mut self, from: NodeId, message: Message) -> Result<(), StepError> {
        match message {
            Message::CanCommit { txn, participants } => {
                let participants = normalise(&participants).ok_or(StepError::Invalid(
                    "participants must be non-empty and distinct",
                ))?;
                if !self.txns.contains_key(&txn) && !self.finished.contains(txn) {
                    self.open(txn, from, participants, false);
                } else if self.finished.get(txn) == Some(&Outcome::Abort) {
                    self.out.send(
                        from,
                        Message::Vote {
                            txn,
                            vote: Vote3::No,
                        },
                    );
                }
                Ok(())
            }
            Message::PreCommit { txn } => self.on_pre_commit(from, txn),
            Message::DoCommit { txn } => self.on_outcome(txn, Outcome::Commit),
            Message::Abort { txn } => self.on_outcome(txn, Outcome::Abort),
            Message::DecisionReply { txn, outcome } => {
                if self.voted_yes(txn) {
                    self.on_outcome(txn, outcome)?;
                }
                Ok(())
            }
            Message::StateRequest { txn, rank } => {
                self.on_state_request(from, txn, rank);
                Ok(())
            }
            Message::StateReport { txn, report } => {
                if let Some(Txn {
                    lead: Some(Lead::Collecting { reports, .. }),
                    ..
                }) = self.txns.get_mut(&txn)
                {
                    reports.insert(from, report);
                }
                Ok(())
            }
            Message::PreCommitAck { txn } => {
                if let Some(Txn {
                    lead: Some(Lead::PreCommitting { unacked, .. }),
                    ..
                }) = self.txns.get_mut(&txn)
                {
                    unacked.remove(&from);
                }
                Ok(())
            }
            Message::DecisionRequest { txn } => {
                if let Some(&outcome) = self.finished.get(txn) {
                    self.out.send(from, Message::DecisionReply { txn, outcome });
                }
                Ok(())
            }
            Message::BeginCommit { .. } | Message::Vote { .. } => Err(StepError::Invalid(
                "a coordinator's message sent to a participant",
            )),
        }
    }

    fn on_pre_commit(&mut self, from: NodeId, txn: TxnId) -> Result<(), StepError> {
        if self.finished.get(txn) == Some(&Outcome::Commit) {
            self.out.send(from, Message::PreCommitAck { txn });
            return Ok(());
        }
        let now = self.now;
        let Some(entry) = self.txns.get_mut(&txn) else {
            return Err(StepError::Conflict {
                txn,
                detail: "PRE-COMMIT for a transaction not prepared here",
            });
        };
        entry.last_news = now;
        match entry.state {
            Some(LocalState::Uncertain) => {
                let token = self.out.force(ParticipantRecord::PreCommitted { txn });
                self.out
                    .send_after(token, from, Message::PreCommitAck { txn });
                entry.state = Some(LocalState::PreCommitted);
                entry.token = Some(token);
                Ok(())
            }
            Some(LocalState::PreCommitted) => {
                match entry.token {
                    Some(token) => self
                        .out
                        .send_after(token, from, Message::PreCommitAck { txn }),
                    None => self.out.send(from, Message::PreCommitAck { txn }),
                }
                Ok(())
            }
            _ => Err(StepError::Conflict {
                txn,
                detail: "PRE-COMMIT before this participant voted",
            }),
        }
    }

    fn on_outcome(&mut self, txn: TxnId, outcome: Outcome) -> Result<(), StepError> {
        if let Some(&done) = self.finished.get(txn) {
            return if done == outcome {
                Ok(())
            } else {
                Err(StepError::Conflict {
                    txn,
                    detail: "an outcome contradicting the one applied here",
                })
            };
        }
        let Some(entry) = self.txns.get(&txn) else {
            if outcome == Outcome::Abort {
                self.finished.insert(txn, Outcome::Abort);
            }
            return Ok(());
        };
        if entry.state.is_none() && outcome == Outcome::Commit {
            return Err(StepError::Conflict {
                txn,
                detail: "COMMIT before this participant voted",
            });
        }
        let forced = outcome == Outcome::Abort && entry.state.is_some();
        self.finish(txn, outcome, forced);
        Ok(())
    }

    fn on_state_request(&mut self, from: NodeId, txn: TxnId, rank: u32) {
        let my_rank = self.rank(txn);
        let now = self.now;
        let report = match (self.txns.get_mut(&txn), self.finished.get(txn)) {
            (_, Some(&outcome)) => StateReport {
                state: match outcome {
                    Outcome::Commit => LocalState::Committed,
                    Outcome::Abort => LocalState::Aborted,
                },
                recovering: false,
            },
            (Some(entry), None) if entry.state.is_some() => {
                if entry.lead.is_some() && my_rank < rank {
                    return; // a better-ranked leader (this one) is already at work
                }
                entry.lead = None;
                entry.last_news = now;
                // Report the durable state: a pre-commit still being forced may not survive.
                let pending = entry.token.is_some_and(|t| self.out.is_pending(t));
                let state = match entry.state {
                    Some(LocalState::PreCommitted) if !pending => LocalState::PreCommitted,
                    _ => LocalState::Uncertain,
                };
                StateReport {
                    state,
                    recovering: entry.recovering,
                }
            }
            _ => {
                // Never voted yes (or unknown: a yes vote is always recorded first): abort
                // unilaterally, durably, and say so.
                let token = self.finish(txn, Outcome::Abort, true);
                let report = Message::StateReport {
                    txn,
                    report: StateReport {
                        state: LocalState::Aborted,
                        recovering: false,
                    },
                };
                if let Some(token) = token {
                    self.out.send_after(token, from, report);
                }
                return;
            }
        };
        self.out.send(from, Message::StateReport { txn, report });
    }

    fn rank(&self, txn: TxnId) -> u32 {
        self.txns
            .get(&txn)
            .and_then(|t| t.participants.iter().position(|p| *p == self.id))
            .unwrap_or(0) as u32
    }

    /// One tick: silent coordinators start termination; leaders move on.
    pub fn tick(&mut self) {
        self.now += 1;
        let txns: Vec<TxnId> = self.txns.keys().copied().collect();
        for txn in txns {
            if self.voted_yes(txn) && self.durable(txn) {
                self.tick_txn(txn);
            }
        }
    }

    fn tick_txn(&mut self, txn: TxnId) {
        let now = self.now;
        let rank = self.rank(txn);
        let config = self.config.clone();
        let id = self.id;
        let Some(entry) = self.txns.get_mut(&txn) else {
            return;
        };
        match &mut entry.lead {
            None => {
                let timeout = config.termination_timeout + u64::from(rank) * config.rank_stagger;
                if now - entry.last_news < timeout {
                    return;
                }
                let own = StateReport {
                    state: entry.state.unwrap_or(LocalState::Uncertain),
                    recovering: entry.recovering,
                };
                entry.lead = Some(Lead::Collecting {
                    since: now,
                    reports: BTreeMap::from([(id, own)]),
                });
                let peers: Vec<NodeId> = entry
                    .participants
                    .iter()
                    .copied()
                    .filter(|p| *p != id)
                    .collect();
                self.out.event(ParticipantEvent::TerminationStarted { txn });
                for peer in peers {
                    self.out.send(peer, Message::StateRequest { txn, rank });
                }
            }
            Some(Lead::Collecting { since, reports }) => {
                if now - *since < config.collect_window {
                    return;
                }
                let collected: Vec<StateReport> = reports.values().copied().collect();
                // Pre-commit every peer not known to be pre-committed, reporters or not.
                let uncertain: BTreeSet<NodeId> = entry
                    .participants
                    .iter()
                    .copied()
                    .filter(|p| {
                        *p != id
                            && reports.get(p).map(|r| r.state) != Some(LocalState::PreCommitted)
                    })
                    .collect();
                let peers: Vec<NodeId> = entry
                    .participants
                    .iter()
                    .copied()
                    .filter(|p| *p != id)
                    .collect();
                match decide(&collected, entry.participants.len(), entry.recovering) {
                    Decision::Commit => self.lead_outcome(txn, Outcome::Commit, &peers),
                    Decision::Abort => self.lead_outcome(txn, Outcome::Abort, &peers),
                    Decision::Wait => {
                        entry.lead = None;
                        entry.last_news = now - config.termination_timeout;
                    }
                    Decision::PreCommitThenCommit => {
                        if entry.state == Some(LocalState::Uncertain) {
                            let token = self.out.force(ParticipantRecord::PreCommitted { txn });
                            entry.state = Some(LocalState::PreCommitted);
                            entry.token = Some(token);
                        }
                        for &p in &uncertain {
                            self.out.send(p, Message::PreCommit { txn });
                        }
                        entry.lead = Some(Lead::PreCommitting {
                            since: now,
                            unacked: uncertain,
                        });
                    }
                }
            }
            Some(Lead::PreCommitting { since, unacked }) => {
                if unacked.is_empty() || now - *since >= config.collect_window {
                    let peers: Vec<NodeId> = entry
                        .participants
                        .iter()
                        .copied()
                        .filter(|p| *p != id)
                        .collect();
                    self.lead_outcome(txn, Outcome::Commit, &peers);
                }
            }
        }
    }

    fn lead_outcome(&mut self, txn: TxnId, outcome: Outcome, peers: &[NodeId]) {
        let message = match outcome {
            Outcome::Commit => Message::DoCommit { txn },
            Outcome::Abort => Message::Abort { txn },
        };
        match self.finish(txn, outcome, outcome == Outcome::Abort) {
            Some(token) => {
                for &p in peers {
                    self.out.send_after(token, p, message.clone());
                }
            }
            None => {
                for &p in peers {
                    self.out.send(p, message.clone());
                }
            }
        }
    }

    /// The embedder made the forced write `token` durable.
    pub fn forced(&mut self, token: ForceToken) -> Result<(), DurabilityError> {
        self.out.confirm(token)
    }

    /// Drains what the embedder must do now.
    pub fn take_output(&mut self) -> Output<Message, ParticipantRecord, ParticipantEvent> {
        self.out.take()
    }

    /// Transactions voted yes on whose outcome is unknown here.
    pub fn in_doubt(&self) -> Vec<TxnId> {
        self.txns
            .iter()
            .filter(|(_, t)| t.state.is_some())
            .map(|(txn, _)| *txn)
            .collect()
    }

    /// How many transactions are live.
    pub fn live(&self) -> usize {
        self.txns.len()
    }
}
