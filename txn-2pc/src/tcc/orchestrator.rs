//! The TCC transaction manager.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Config;
use crate::error::{DurabilityError, RecoveryError, StepError};
use crate::fence::{BranchKey, Reply, Request};
use crate::output::{ForceToken, Outbox, Output};
use crate::record::DurableRecord;
use crate::types::{NodeId, TxnId};

/// The second-phase decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Every try succeeded: confirm every branch.
    Confirm,
    /// Cancel every branch (tried or not).
    Cancel,
}

/// What the orchestrator writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrchestratorRecord {
    /// Forced before the tries: the branches (service, payload) to cancel after a crash.
    Begin {
        /// The transaction.
        txn: TxnId,
        /// Each branch's service and try payload, indexed by branch number.
        branches: Vec<(NodeId, Vec<u8>)>,
    },
    /// Forced before the decision is sent.
    Decided {
        /// The transaction.
        txn: TxnId,
        /// The decision.
        decision: Decision,
    },
    /// Lazy: every branch acknowledged.
    End {
        /// The transaction.
        txn: TxnId,
    },
}

impl DurableRecord for OrchestratorRecord {}

/// What the orchestrator reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrchestratorEvent {
    /// The decision is durable.
    Decided {
        /// The transaction.
        txn: TxnId,
        /// The decision.
        decision: Decision,
    },
    /// Every branch acknowledged the decision.
    Finished {
        /// The transaction.
        txn: TxnId,
        /// The decision.
        decision: Decision,
    },
}

#[derive(Debug)]
enum Phase {
    /// BEGIN being forced or tries out.
    Trying { done: BTreeSet<u32> },
    /// Decision taken; `token` is its forced record.
    Deciding {
        decision: Decision,
        token: Option<ForceToken>,
        unacked: BTreeSet<u32>,
        last_sent: u64,
    },
}

#[derive(Debug)]
struct Txn {
    branches: Vec<(NodeId, Vec<u8>)>,
    begin: Option<ForceToken>,
    started: u64,
    phase: Phase,
}

/// The TCC orchestrator.
#[derive(Debug)]
pub struct Orchestrator {
    id: NodeId,
    config: Config,
    now: u64,
    txns: BTreeMap<TxnId, Txn>,
    out: Outbox<Request, OrchestratorRecord, OrchestratorEvent>,
}

impl Orchestrator {
    /// An orchestrator with no history.
    pub fn new(id: NodeId, config: Config) -> Self {
        Orchestrator {
            id,
            config,
            now: 0,
            txns: BTreeMap::new(),
            out: Outbox::new(),
        }
    }

    /// Rebuilds from the durable records: a transaction begun but undecided is cancelled; a
    /// decided one without END has its decision resent. Returns the resumed transactions.
    pub fn recover(
        id: NodeId,
        config: Config,
        records: impl IntoIterator<Item = OrchestratorRecord>,
    ) -> Result<(Self, Vec<TxnId>), RecoveryError> {
        let mut orchestrator = Orchestrator::new(id, config);
        let mut decided: BTreeMap<TxnId, Decision> = BTreeMap::new();
        for record in records {
            match record {
                OrchestratorRecord::Begin { txn, branches } => {
                    orchestrator.txns.insert(
                        txn,
                        Txn {
                            branches,
                            begin: None,
                            started: 0,
                            phase: Phase::Trying {
                                done: BTreeSet::new(),
                            },
                        },
                    );
                }
                OrchestratorRecord::Decided { txn, decision } => {
                    if !orchestrator.txns.contains_key(&txn) {
                        return Err(RecoveryError::Inconsistent {
                            txn,
                            detail: "a decision without BEGIN",
                        });
                    }
                    if decided.insert(txn, decision).is_some_and(|d| d != decision) {
                        return Err(RecoveryError::Inconsistent {
                            txn,
                            detail: "two different decisions",
                        });
                    }
                }
                OrchestratorRecord::End { txn } => {
                    orchestrator.txns.remove(&txn);
                    decided.remove(&txn);
                }
            }
        }
        let resumed: Vec<TxnId> = orchestrator.txns.keys().copied().collect();
        for &txn in &resumed {
            match decided.get(&txn) {
                Some(&decision) => {
                    orchestrator
                        .out
                        .event(OrchestratorEvent::Decided { txn, decision });
                    orchestrator.send_decision(txn, decision, None)
                }
                // Presumed cancel: a try may still be in flight; the fence refuses it.
                None => orchestrator.decide(txn, Decision::Cancel),
            }
        }
        Ok((orchestrator, resumed))
    }

    /// This orchestrator's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts `txn` with one branch per (service, try payload).
    pub fn begin(&mut self, txn: TxnId, branches: Vec<(NodeId, Vec<u8>)>) -> Result<(), StepError> {
        if self.txns.contains_key(&txn) {
            return Err(StepError::DuplicateTxn(txn));
        }
        if branches.is_empty() {
            return Err(StepError::Invalid("a TCC transaction needs branches"));
        }
        let token = self.out.force(OrchestratorRecord::Begin {
            txn,
            branches: branches.clone(),
        });
        for (step, (service, payload)) in branches.iter().enumerate() {
            let key = BranchKey {
                txn,
                step: step as u32,
            };
            self.out.send_after(
                token,
                *service,
                Request::Do {
                    key,
                    attempt: 0,
                    payload: payload.clone(),
                },
            );
        }
        self.txns.insert(
            txn,
            Txn {
                branches,
                begin: Some(token),
                started: self.now,
                phase: Phase::Trying {
                    done: BTreeSet::new(),
                },
            },
        );
        Ok(())
    }

    /// Handles one reply from a branch service.
    pub fn step(&mut self, from: NodeId, reply: Reply) -> Result<(), StepError> {
        let key = reply.key();
        let Some(entry) = self.txns.get_mut(&key.txn) else {
            return Ok(()); // a late reply after END: ignored by rule
        };
        if entry.branches.get(key.step as usize).map(|b| b.0) != Some(from) {
            return Err(StepError::NotAParticipant { txn: key.txn, from });
        }
        match (&mut entry.phase, reply) {
            (Phase::Trying { done }, Reply::Done { .. }) => {
                done.insert(key.step);
                if done.len() == entry.branches.len() {
                    self.decide(key.txn, Decision::Confirm);
                }
            }
            (Phase::Trying { .. }, Reply::Failed { .. } | Reply::Refused { .. }) => {
                self.decide(key.txn, Decision::Cancel);
            }
            (
                Phase::Deciding {
                    decision: Decision::Confirm,
                    unacked,
                    ..
                },
                Reply::Confirmed { .. },
            )
            | (
                Phase::Deciding {
                    decision: Decision::Cancel,
                    unacked,
                    ..
                },
                Reply::Undone { .. },
            ) => {
                unacked.remove(&key.step);
                self.maybe_end(key.txn);
            }
            // Late try answers after the decision, or acks of the other kind: ignored by rule.
            _ => {}
        }
        Ok(())
    }

    fn decide(&mut self, txn: TxnId, decision: Decision) {
        let token = self
            .out
            .force(OrchestratorRecord::Decided { txn, decision });
        self.out
            .event_after(token, OrchestratorEvent::Decided { txn, decision });
        self.send_decision(txn, decision, Some(token));
    }

    fn send_decision(&mut self, txn: TxnId, decision: Decision, token: Option<ForceToken>) {
        let Some(entry) = self.txns.get_mut(&txn) else {
            return;
        };
        for (step, (service, _)) in entry.branches.iter().enumerate() {
            let key = BranchKey {
                txn,
                step: step as u32,
            };
            let request = match decision {
                Decision::Confirm => Request::Confirm { key },
                Decision::Cancel => Request::Undo { key },
            };
            match token {
                Some(token) => self.out.send_after(token, *service, request),
                None => self.out.send(*service, request),
            }
        }
        entry.phase = Phase::Deciding {
            decision,
            token,
            unacked: (0..entry.branches.len() as u32).collect(),
            last_sent: self.now,
        };
    }

    fn maybe_end(&mut self, txn: TxnId) {
        let Some(Txn {
            phase:
                Phase::Deciding {
                    decision,
                    token,
                    unacked,
                    ..
                },
            ..
        }) = self.txns.get(&txn)
        else {
            return;
        };
        if unacked.is_empty() && token.is_none_or(|t| !self.out.is_pending(t)) {
            let decision = *decision;
            self.txns.remove(&txn);
            self.out.lazy(OrchestratorRecord::End { txn });
            self.out
                .event(OrchestratorEvent::Finished { txn, decision });
        }
    }

    /// One tick: tries that take too long are cancelled; decisions are resent until acked.
    pub fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        let mut timed_out = Vec::new();
        for (&txn, entry) in &mut self.txns {
            match &mut entry.phase {
                Phase::Trying { .. } => {
                    let begun = entry.begin.is_none_or(|t| !self.out.is_pending(t));
                    if begun && now - entry.started >= self.config.try_timeout {
                        timed_out.push(txn);
                    }
                }
                Phase::Deciding {
                    decision,
                    token,
                    unacked,
                    last_sent,
                } => {
                    let durable = token.is_none_or(|t| !self.out.is_pending(t));
                    if durable && now - *last_sent >= self.config.retry_interval {
                        *last_sent = now;
                        for &step in unacked.iter() {
                            let key = BranchKey { txn, step };
                            let request = match decision {
                                Decision::Confirm => Request::Confirm { key },
                                Decision::Cancel => Request::Undo { key },
                            };
                            self.out.send(entry.branches[step as usize].0, request);
                        }
                    }
                }
            }
        }
        for txn in timed_out {
            self.decide(txn, Decision::Cancel);
        }
    }

    /// The embedder made the forced write `token` durable.
    pub fn forced(&mut self, token: ForceToken) -> Result<(), DurabilityError> {
        self.out.confirm(token)?;
        let txns: Vec<TxnId> = self.txns.keys().copied().collect();
        for txn in txns {
            self.maybe_end(txn);
        }
        Ok(())
    }

    /// Drains what the embedder must do now.
    pub fn take_output(&mut self) -> Output<Request, OrchestratorRecord, OrchestratorEvent> {
        self.out.take()
    }

    /// How many transactions are live.
    pub fn live(&self) -> usize {
        self.txns.len()
    }
}
