//! The 2PC participant: prepare, vote, learn the outcome, and terminate cooperatively.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::termination::{self, PeerKnowledge, Termination};
use super::{normalise, Answer, Config, Message};
use crate::error::{DurabilityError, RecoveryError, StepError};
use crate::finished::FinishedLog;
use crate::output::{ForceToken, Outbox, Output};
use crate::record::DurableRecord;
use crate::types::{NodeId, Outcome, TxnId, Vote};

/// What a participant writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantRecord {
    /// Forced before voting yes: the participant can commit and will wait for the outcome.
    Prepared {
        /// The transaction.
        txn: TxnId,
        /// Whom to ask for the outcome.
        coordinator: NodeId,
        /// Every participant (peers to ask if the coordinator is silent).
        participants: Vec<NodeId>,
    },
    /// Forced before acknowledging COMMIT.
    Committed {
        /// The transaction.
        txn: TxnId,
    },
    /// Lazy (presumed abort), except for a unilateral abort answered to a peer, which is forced.
    Aborted {
        /// The transaction.
        txn: TxnId,
    },
    /// An operator forced this outcome on an in-doubt transaction (forced).
    Heuristic {
        /// The transaction.
        txn: TxnId,
        /// What the operator chose.
        outcome: Outcome,
    },
}

impl DurableRecord for ParticipantRecord {}

/// What a participant reports to its resource manager and operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantEvent {
    /// Prepare the transaction's work, then call [`Participant::vote`].
    PrepareRequested {
        /// The transaction.
        txn: TxnId,
    },
    /// Apply this outcome to the transaction's work.
    Apply {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        outcome: Outcome,
    },
    /// In doubt, the coordinator silent and every peer uncertain: nobody can decide safely.
    Blocked {
        /// The transaction.
        txn: TxnId,
    },
    /// The operator's heuristic outcome is durable; apply it.
    HeuristicApplied {
        /// The transaction.
        txn: TxnId,
        /// The outcome chosen.
        outcome: Outcome,
    },
    /// The real decision arrived and differs from the heuristic one applied earlier.
    HeuristicDamage {
        /// The transaction.
        txn: TxnId,
        /// What the operator applied.
        heuristic: Outcome,
        /// What the coordinator decided.
        decided: Outcome,
    },
}

/// An in-doubt transaction: prepared, outcome unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubt {
    /// The transaction.
    pub txn: TxnId,
    /// Its coordinator.
    pub coordinator: NodeId,
    /// Every participant.
    pub participants: Vec<NodeId>,
    /// Whether cooperative termination found every peer uncertain too.
    pub blocked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Asked by PREPARE.
    Prepare,
    /// Asked by ONE-PHASE COMMIT: decide alone.
    OnePhase,
    /// This participant starts the commit ([`Participant::initiate`]).
    Initiate,
}

#[derive(Debug)]
enum State {
    Voting {
        coordinator: NodeId,
        participants: Vec<NodeId>,
        mode: Mode,
    },
    Prepared {
        coordinator: NodeId,
        participants: Vec<NodeId>,
        /// `None` once durable (or recovered).
        token: Option<ForceToken>,
        since: u64,
        asked: u32,
        last_ask: u64,
        answers: BTreeMap<NodeId, Answer>,
        blocked: bool,
        /// The operator's outcome, if one was forced.
        heuristic: Option<Outcome>,
    },
}

#[derive(Clone, Copy, Debug)]
enum Done {
    /// The token of the COMMITTED record (`None` once known durable).
    Committed(Option<ForceToken>),
    Aborted,
    ReadOnly,
}

/// A 2PC participant (the resource manager's agent). See the [module docs](super).
#[derive(Debug)]
pub struct Participant {
    id: NodeId,
    config: Config,
    now: u64,
    /// Built by `new` (not `recover`): every vote it ever cast is in memory, so a transaction it
    /// does not know is one it never voted on.
    fresh: bool,
    txns: BTreeMap<TxnId, State>,
    finished: FinishedLog<Done>,
    out: Outbox<Message, ParticipantRecord, ParticipantEvent>,
    #[cfg(feature = "planted-bugs")]
    bug: Option<super::PlantedBug>,
}

impl Participant {
    /// A participant with no history.
    pub fn new(id: NodeId, config: Config) -> Self {
        Participant {
            id,
            finished: FinishedLog::new(config.remember_finished),
            config,
            now: 0,
            fresh: true,
            txns: BTreeMap::new(),
            out: Outbox::new(),
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }

    /// Rebuilds the participant from its durable records (in write order) and lists the
    /// transactions left in doubt; they ask for their outcome after `decision_timeout`.
    pub fn recover(
        id: NodeId,
        config: Config,
        records: impl IntoIterator<Item = ParticipantRecord>,
    ) -> Result<(Self, Vec<InDoubt>), RecoveryError> {
        let mut participant = Participant::new(id, config);
        participant.fresh = false;
        let mut decided: BTreeMap<TxnId, Outcome> = BTreeMap::new();
        for record in records {
            match record {
                ParticipantRecord::Prepared {
                    txn,
                    coordinator,
                    participants,
                } => {
                    participant.txns.insert(
                        txn,
                        State::Prepared {
                            coordinator,
                            participants,
                            token: None,
                            since: 0,
                            asked: 0,
                            last_ask: 0,
                            answers: BTreeMap::new(),
                            blocked: false,
                            heuristic: None,
                        },
                    );
                }
                ParticipantRecord::Committed { txn } | ParticipantRecord::Aborted { txn } => {
                    let outcome = if matches!(record, ParticipantRecord::Committed { .. }) {
                        Outcome::Commit
                    } else {
                        Outcome::Abort
                    };
                    if decided.get(&txn).is_some_and(|d| *d != outcome) {
                        return Err(RecoveryError::Inconsistent {
                            txn,
                            detail: "both COMMITTED and ABORTED",
                        });
                    }
                    decided.insert(txn, outcome);
                    participant.txns.remove(&txn);
                    participant.finished.insert(
                        txn,
                        match outcome {
                            Outcome::Commit => Done::Committed(None),
                            Outcome::Abort => Done::Aborted,
                        },
                    );
                }
                ParticipantRecord::Heuristic { txn, outcome } => {
                    match participant.txns.get_mut(&txn) {
                        Some(State::Prepared { heuristic, .. }) => *heuristic = Some(outcome),
                        _ => {
                            return Err(RecoveryError::Inconsistent {
                                txn,
                                detail: "HEURISTIC for a transaction not in doubt",
                            })
                        }
                    }
                }
            }
        }
        let in_doubt = participant.in_doubt();
        Ok((participant, in_doubt))
    }

    /// Plants a known bug (tests and `cargo xtask sim --bug` only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bug(&mut self, bug: super::PlantedBug) {
        self.bug = Some(bug);
    }

    /// This participant's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts a commit from this participant: its resource manager prepares first, and its yes
    /// vote goes to `coordinator` as [`Message::BeginCommit`]. Alone (`participants == [self]`)
    /// it commits locally with no coordinator at all.
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
        self.txns.insert(
            txn,
            State::Voting {
                coordinator,
                participants,
                mode: Mode::Initiate,
            },
        );
        self.out.event(ParticipantEvent::PrepareRequested { txn });
        Ok(())
    }

    /// The resource manager's vote after [`ParticipantEvent::PrepareRequested`].
    pub fn vote(&mut self, txn: TxnId, vote: Vote) -> Result<(), StepError> {
        let Some(State::Voting {
            coordinator,
            participants,
            mode,
        }) = self.txns.get(&txn)
        else {
            return match self.finished.get(txn) {
                // Aborted meanwhile (by the coordinator or unilaterally): the vote is moot.
                Some(Done::Aborted) => Ok(()),
                _ => Err(StepError::WrongState {
                    txn,
                    detail: "no vote was requested",
                }),
            };
        };
        let (coordinator, participants, mode) = (*coordinator, participants.clone(), *mode);
        match (mode, vote) {
            (Mode::Initiate, Vote::ReadOnly) => {
                return Err(StepError::Invalid(
                    "an initiator cannot vote read-only; use Coordinator::begin",
                ))
            }
            (Mode::Initiate, Vote::Yes) if participants == [self.id] => {
                self.txns.remove(&txn);
                self.commit_locally(txn, None);
            }
            (Mode::Prepare | Mode::Initiate, Vote::Yes) => {
                let token = self.out.force(ParticipantRecord::Prepared {
                    txn,
                    coordinator,
                    participants: participants.clone(),
                });
                let message = if mode == Mode::Initiate {
                    Message::BeginCommit {
                        txn,
                        participants: participants.clone(),
                    }
                } else {
                    Message::Vote {
                        txn,
                        vote: Vote::Yes,
                    }
                };
                self.send_vote(token, coordinator, message);
                self.txns.insert(
                    txn,
                    State::Prepared {
                        coordinator,
                        participants,
                        token: Some(token),
                        since: self.now,
                        asked: 0,
                        last_ask: self.now,
                        answers: BTreeMap::new(),
                        blocked: false,
                        heuristic: None,
                    },
                );
            }
            (Mode::OnePhase, Vote::Yes) => {
                self.txns.remove(&txn);
                self.commit_locally(txn, Some(coordinator));
            }
            (_, Vote::No) => {
                self.txns.remove(&txn);
                self.abort_locally(txn, false);
                match mode {
                    Mode::Prepare => self.out.send(coordinator, Message::Vote { txn, vote }),
                    Mode::OnePhase => self.out.send(
                        coordinator,
                        Message::OnePhaseOutcome {
                            txn,
                            outcome: Outcome::Abort,
                        },
                    ),
                    Mode::Initiate => {} // nobody else has heard of it
                }
            }
            (Mode::Prepare, Vote::ReadOnly) => {
                self.txns.remove(&txn);
                self.finished.insert(txn, Done::ReadOnly);
                self.out.send(coordinator, Message::Vote { txn, vote });
            }
            (Mode::OnePhase, Vote::ReadOnly) => {
                self.txns.remove(&txn);
                self.finished.insert(txn, Done::ReadOnly);
                self.out.send(
                    coordinator,
                    Message::OnePhaseOutcome {
                        txn,
                        outcome: Outcome::Commit,
                    },
                );
            }
        }
        Ok(())
    }

    fn send_vote(&mut self, token: ForceToken, coordinator: NodeId, message: Message) {
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(super::PlantedBug::VoteBeforeForcingPrepared) {
            self.out.send(coordinator, message);
            return;
        }
        self.out.send_after(token, coordinator, message);
    }

    /// Forces COMMITTED, then applies and (if `ack_to`) tells the coordinator.
    fn commit_locally(&mut self, txn: TxnId, one_phase_coordinator: Option<NodeId>) {
        let token = self.out.force(ParticipantRecord::Committed { txn });
        self.out.event_after(
            token,
            ParticipantEvent::Apply {
                txn,
                outcome: Outcome::Commit,
            },
        );
        if let Some(coordinator) = one_phase_coordinator {
            self.out.send_after(
                token,
                coordinator,
                Message::OnePhaseOutcome {
                    txn,
                    outcome: Outcome::Commit,
                },
            );
        }
        self.finished.insert(txn, Done::Committed(Some(token)));
    }

    /// Records ABORTED (forced if a peer will be told) and applies it; returns the token.
    fn abort_locally(&mut self, txn: TxnId, forced: bool) -> Option<ForceToken> {
        let event = ParticipantEvent::Apply {
            txn,
            outcome: Outcome::Abort,
        };
        self.finished.insert(txn, Done::Aborted);
        if forced {
            let token = self.out.force(ParticipantRecord::Aborted { txn });
            self.out.event_after(token, event);
            Some(token)
        } else {
            self.out.lazy(ParticipantRecord::Aborted { txn });
            self.out.event(event);
            None
        }
    }

    /// Handles one message from `from`.
    pub fn step(&mut self, from: NodeId, message: Message) -> Result<(), StepError> {
        match message {
            Message::Prepare { txn, participants } => self.on_prepare(from, txn, participants),
            Message::OnePhaseCommit { txn } => {
                self.on_one_phase(from, txn);
                Ok(())
            }
            Message::Commit { txn } => self.on_decision(from, txn, Outcome::Commit),
            Message::Abort { txn } => self.on_decision(from, txn, Outcome::Abort),
            Message::DecisionRequest { txn } => {
                self.on_decision_request(from, txn);
                Ok(())
            }
            Message::DecisionReply { txn, answer } => {
                self.on_decision_reply(from, txn, answer);
                Ok(())
            }
            Message::BeginCommit { .. }
            | Message::Vote { .. }
            | Message::Ack { .. }
            | Message::OnePhaseOutcome { .. } => Err(StepError::Invalid(
                "a coordinator's message sent to a participant",
            )),
        }
    }

    fn on_prepare(
        &mut self,
        from: NodeId,
        txn: TxnId,
        participants: Vec<NodeId>,
    ) -> Result<(), StepError> {
        let participants = normalise(&participants).ok_or(StepError::Invalid(
            "participants must be non-empty and distinct",
        ))?;
        if !participants.contains(&self.id) {
            return Err(StepError::Invalid("PREPARE names other participants only"));
        }
        match (self.txns.get(&txn), self.finished.get(txn)) {
            (Some(State::Prepared { token, .. }), _) => {
                // A duplicate: repeat the vote, but only once PREPARED is durable.
                if token.is_none_or(|t| !self.out.is_pending(t)) {
                    self.out.send(
                        from,
                        Message::Vote {
                            txn,
                            vote: Vote::Yes,
                        },
                    );
                }
            }
            (Some(State::Voting { .. }), _) => {}
            (None, Some(Done::Aborted)) => self.out.send(
                from,
                Message::Vote {
                    txn,
                    vote: Vote::No,
                },
            ),
            (None, Some(Done::ReadOnly)) => self.out.send(
                from,
                Message::Vote {
                    txn,
                    vote: Vote::ReadOnly,
                },
            ),
            (None, Some(Done::Committed(_))) => {}
            (None, None) => {
                self.txns.insert(
                    txn,
                    State::Voting {
                        coordinator: from,
                        participants,
                        mode: Mode::Prepare,
                    },
                );
                self.out.event(ParticipantEvent::PrepareRequested { txn });
            }
        }
        Ok(())
    }

    fn on_one_phase(&mut self, from: NodeId, txn: TxnId) {
        let outcome = match (self.txns.get(&txn), self.finished.get(txn).copied()) {
            (Some(_), _) => return,
            (None, Some(Done::Committed(token))) => {
                let reply = Message::OnePhaseOutcome {
                    txn,
                    outcome: Outcome::Commit,
                };
                match token {
                    Some(token) => self.out.send_after(token, from, reply),
                    None => self.out.send(from, reply),
                }
                return;
            }
            (None, Some(Done::ReadOnly)) => Outcome::Commit,
            (None, Some(Done::Aborted)) => Outcome::Abort,
            (None, None) => {
                self.txns.insert(
                    txn,
                    State::Voting {
                        coordinator: from,
                        participants: vec![self.id],
                        mode: Mode::OnePhase,
                    },
                );
                self.out.event(ParticipantEvent::PrepareRequested { txn });
                return;
            }
        };
        self.out
            .send(from, Message::OnePhaseOutcome { txn, outcome });
    }

    fn on_decision(&mut self, from: NodeId, txn: TxnId, outcome: Outcome) -> Result<(), StepError> {
        match (self.txns.get(&txn), self.finished.get(txn).copied()) {
            (Some(State::Prepared { .. }), _) => {
                self.learn(txn, outcome);
                Ok(())
            }
            (Some(State::Voting { .. }), _) => match outcome {
                Outcome::Abort => {
                    self.txns.remove(&txn);
                    self.abort_locally(txn, false);
                    Ok(())
                }
                Outcome::Commit => Err(StepError::Conflict {
                    txn,
                    detail: "COMMIT before this participant voted",
                }),
            },
            (None, Some(Done::Committed(token))) => match outcome {
                Outcome::Commit => {
                    match token {
                        Some(token) => self.out.send_after(token, from, Message::Ack { txn }),
                        None => self.out.send(from, Message::Ack { txn }),
                    }
                    Ok(())
                }
                Outcome::Abort => Err(StepError::Conflict {
                    txn,
                    detail: "ABORT for a transaction committed here",
                }),
            },
            (None, Some(Done::Aborted)) => match outcome {
                Outcome::Abort => Ok(()),
                Outcome::Commit => Err(StepError::Conflict {
                    txn,
                    detail: "COMMIT for a transaction aborted here",
                }),
            },
            (None, Some(Done::ReadOnly)) => Ok(()),
            (None, None) => {
                match outcome {
                    // COMMIT goes only to yes-voters; one without a trace finished and forgot.
                    Outcome::Commit => self.out.send(from, Message::Ack { txn }),
                    // Remember it, so a PREPARE reordered behind it is answered "no".
                    Outcome::Abort => self.finished.insert(txn, Done::Aborted),
                }
                Ok(())
            }
        }
    }

    /// Applies the outcome of a prepared transaction, however it was learnt.
    fn learn(&mut self, txn: TxnId, outcome: Outcome) {
        let Some(State::Prepared {
            coordinator,
            heuristic,
            ..
        }) = self.txns.remove(&txn)
        else {
            return;
        };
        if let Some(heuristic) = heuristic {
            if heuristic != outcome {
                self.out.event(ParticipantEvent::HeuristicDamage {
                    txn,
                    heuristic,
                    decided: outcome,
                });
            }
        }
        match outcome {
            Outcome::Commit => {
                let token = self.out.force(ParticipantRecord::Committed { txn });
                if heuristic.is_none() {
                    self.out.event_after(
                        token,
                        ParticipantEvent::Apply {
                            txn,
                            outcome: Outcome::Commit,
                        },
                    );
                }
                self.out
                    .send_after(token, coordinator, Message::Ack { txn });
                self.finished.insert(txn, Done::Committed(Some(token)));
            }
            Outcome::Abort => {
                self.finished.insert(txn, Done::Aborted);
                self.out.lazy(ParticipantRecord::Aborted { txn });
                if heuristic.is_none() {
                    self.out.event(ParticipantEvent::Apply {
                        txn,
                        outcome: Outcome::Abort,
                    });
                }
            }
        }
    }

    fn on_decision_request(&mut self, from: NodeId, txn: TxnId) {
        let knowledge = match (self.txns.get(&txn), self.finished.get(txn)) {
            (Some(State::Prepared { .. }), _) => PeerKnowledge::Prepared,
            (Some(State::Voting { .. }), _) => PeerKnowledge::NotVoted,
            (None, Some(Done::Committed(_))) => PeerKnowledge::Decided(Outcome::Commit),
            (None, Some(Done::Aborted)) => PeerKnowledge::Decided(Outcome::Abort),
            // Voted read-only: it does not know how the others ended.
            (None, Some(Done::ReadOnly)) => PeerKnowledge::Unknown,
            (None, None) if self.fresh => PeerKnowledge::NotVoted,
            (None, None) => PeerKnowledge::Unknown,
        };
        let (answer, abort_first) = termination::answer_peer(knowledge);
        let reply = Message::DecisionReply { txn, answer };
        if abort_first {
            let voting = self.txns.remove(&txn);
            let token = self.abort_locally(txn, true);
            if let (
                Some(token),
                Some(State::Voting {
                    coordinator, mode, ..
                }),
            ) = (token, voting)
            {
                if mode == Mode::Prepare {
                    let no = Message::Vote {
                        txn,
                        vote: Vote::No,
                    };
                    self.out.send_after(token, coordinator, no);
                }
            }
            if let Some(token) = token {
                self.out.send_after(token, from, reply);
            }
        } else {
            self.out.send(from, reply);
        }
    }

    fn on_decision_reply(&mut self, from: NodeId, txn: TxnId, answer: Answer) {
        let Some(State::Prepared {
            coordinator,
            participants,
            answers,
            blocked,
            ..
        }) = self.txns.get_mut(&txn)
        else {
            return; // already decided here, or unknown: a stale reply, ignored by rule
        };
        if let Answer::Decided(outcome) = answer {
            self.learn(txn, outcome);
            return;
        }
        if from == *coordinator {
            return;
        }
        answers.insert(from, answer);
        let peers: Vec<NodeId> = participants
            .iter()
            .copied()
            .filter(|&p| p != self.id)
            .collect();
        match termination::evaluate(&peers, answers) {
            Termination::Learned(outcome) => self.learn(txn, outcome),
            Termination::Blocked if !*blocked => {
                *blocked = true;
                self.out.event(ParticipantEvent::Blocked { txn });
            }
            Termination::Blocked | Termination::Waiting => {}
        }
    }

    /// Forces an operator's outcome on an in-doubt transaction (a heuristic decision). It is
    /// recorded, applied once durable, and checked against the real decision when that comes.
    pub fn force_heuristic(&mut self, txn: TxnId, outcome: Outcome) -> Result<(), StepError> {
        match self.txns.get_mut(&txn) {
            Some(State::Prepared {
                heuristic: heuristic @ None,
                token,
                ..
            }) if token.is_none_or(|t| !self.out.is_pending(t)) => {
                *heuristic = Some(outcome);
                let token = self
                    .out
                    .force(ParticipantRecord::Heuristic { txn, outcome });
                self.out
                    .event_after(token, ParticipantEvent::HeuristicApplied { txn, outcome });
                Ok(())
            }
            Some(_) => Err(StepError::WrongState {
                txn,
                detail: "not in doubt (or a heuristic outcome is already recorded)",
            }),
            None => Err(StepError::UnknownTxn(txn)),
        }
    }

    /// Advances time by one tick: in-doubt transactions ask the coordinator, then the peers.
    pub fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        for (&txn, state) in &mut self.txns {
            let State::Prepared {
                coordinator,
                participants,
                token,
                since,
                asked,
                last_ask,
                ..
            } = state
            else {
                continue;
            };
            if token.is_some_and(|t| self.out.is_pending(t)) {
                continue;
            }
            *token = None;
            if now - *since < self.config.decision_timeout
                || (*asked > 0 && now - *last_ask < self.config.retry_interval)
            {
                continue;
            }
            *asked += 1;
            *last_ask = now;
            self.out
                .send(*coordinator, Message::DecisionRequest { txn });
            if *asked > self.config.ask_peers_after {
                for &peer in participants.iter().filter(|&&p| p != self.id) {
                    self.out.send(peer, Message::DecisionRequest { txn });
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

    /// How many transactions are live (voting or in doubt).
    pub fn live(&self) -> usize {
        self.txns.len()
    }

    /// Every prepared transaction whose outcome is unknown here (heuristic ones included).
    pub fn in_doubt(&self) -> Vec<InDoubt> {
        self.txns
            .iter()
            .filter_map(|(&txn, state)| match state {
                State::Prepared {
                    coordinator,
                    participants,
                    blocked,
                    ..
                } => Some(InDoubt {
                    txn,
                    coordinator: *coordinator,
                    participants: participants.clone(),
                    blocked: *blocked,
                }),
                State::Voting { .. } => None,
            })
            .collect()
    }
}
