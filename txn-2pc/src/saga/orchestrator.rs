//! The saga orchestrator and its log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Config, Recovery, SagaDef};
use crate::error::{DurabilityError, RecoveryError, StepError};
use crate::fence::{BranchKey, Reply, Request};
use crate::output::{ForceToken, Outbox, Output};
use crate::record::DurableRecord;
use crate::types::{NodeId, TxnId};

/// How a saga ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaOutcome {
    /// Every step ran.
    Completed,
    /// Every step that may have run was compensated.
    Compensated,
}

/// The saga log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrchestratorRecord {
    /// Forced before the first step is sent.
    Started {
        /// The saga.
        saga: TxnId,
        /// Its definition.
        def: SagaDef,
    },
    /// Lazy: a step is done.
    StepDone {
        /// The saga.
        saga: TxnId,
        /// The step number.
        step: u32,
    },
    /// Lazy: the saga turned to compensation.
    Compensating {
        /// The saga.
        saga: TxnId,
    },
    /// Lazy: a step is compensated.
    StepCompensated {
        /// The saga.
        saga: TxnId,
        /// The step number.
        step: u32,
    },
    /// Lazy: the saga ended.
    Finished {
        /// The saga.
        saga: TxnId,
        /// How.
        outcome: SagaOutcome,
    },
}

impl DurableRecord for OrchestratorRecord {}

/// What the orchestrator reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrchestratorEvent {
    /// A backward step failed: the saga compensates.
    CompensationStarted {
        /// The saga.
        saga: TxnId,
        /// The step that failed.
        failed_step: u32,
    },
    /// The saga ended.
    Finished {
        /// The saga.
        saga: TxnId,
        /// How.
        outcome: SagaOutcome,
    },
}

#[derive(Debug)]
enum Phase {
    Running {
        group: usize,
        done: BTreeSet<u32>,
        attempts: BTreeMap<u32, u32>,
    },
    Compensating {
        group: usize,
        pending: BTreeSet<u32>,
        compensated: BTreeSet<u32>,
    },
}

#[derive(Debug)]
struct Saga {
    def: SagaDef,
    start: Option<ForceToken>,
    last_sent: u64,
    phase: Phase,
}

/// The saga orchestrator.
#[derive(Debug)]
pub struct Orchestrator {
    id: NodeId,
    config: Config,
    now: u64,
    sagas: BTreeMap<TxnId, Saga>,
    out: Outbox<Request, OrchestratorRecord, OrchestratorEvent>,
}

fn steps_of(def: &SagaDef, group: usize) -> Vec<(u32, NodeId, Vec<u8>, Recovery)> {
    def.numbered()
        .filter(|(_, g, _)| *g == group)
        .map(|(i, _, s)| (i, s.service, s.payload.clone(), s.recovery))
        .collect()
}

impl Orchestrator {
    /// An orchestrator with no history.
    pub fn new(id: NodeId, config: Config) -> Self {
        Orchestrator {
            id,
            config,
            now: 0,
            sagas: BTreeMap::new(),
            out: Outbox::new(),
        }
    }

    /// Resumes every unfinished saga from its log. A saga that was running continues with its
    /// first group not known done (steps already done answer "done" again, by their fence); one
    /// that was compensating compensates every step not known compensated.
    pub fn recover(
        id: NodeId,
        config: Config,
        records: impl IntoIterator<Item = OrchestratorRecord>,
    ) -> Result<(Self, Vec<TxnId>), RecoveryError> {
        let mut orchestrator = Orchestrator::new(id, config);
        for record in records {
            match record {
                OrchestratorRecord::Started { saga, def } => {
                    orchestrator.sagas.insert(
                        saga,
                        Saga {
                            def,
                            start: None,
                            last_sent: 0,
                            phase: Phase::Running {
                                group: 0,
                                done: BTreeSet::new(),
                                attempts: BTreeMap::new(),
                            },
                        },
                    );
                }
                OrchestratorRecord::StepDone { saga, step } => {
                    match orchestrator.sagas.get_mut(&saga).map(|s| &mut s.phase) {
                        Some(Phase::Running { done, .. }) => {
                            done.insert(step);
                        }
                        Some(Phase::Compensating { .. }) => {}
                        None => {
                            return Err(RecoveryError::Inconsistent {
                                txn: saga,
                                detail: "a step record without STARTED",
                            })
                        }
                    }
                }
                OrchestratorRecord::Compensating { saga } => {
                    let Some(entry) = orchestrator.sagas.get_mut(&saga) else {
                        return Err(RecoveryError::Inconsistent {
                            txn: saga,
                            detail: "COMPENSATING without STARTED",
                        });
                    };
                    entry.phase = Phase::Compensating {
                        group: entry.def.groups.len().saturating_sub(1),
                        pending: BTreeSet::new(),
                        compensated: BTreeSet::new(),
                    };
                }
                OrchestratorRecord::StepCompensated { saga, step } => {
                    if let Some(Phase::Compensating { compensated, .. }) =
                        orchestrator.sagas.get_mut(&saga).map(|s| &mut s.phase)
                    {
                        compensated.insert(step);
                    }
                }
                OrchestratorRecord::Finished { saga, .. } => {
                    orchestrator.sagas.remove(&saga);
                }
            }
        }
        let resumed: Vec<TxnId> = orchestrator.sagas.keys().copied().collect();
        for &saga in &resumed {
            if let Some(entry) = orchestrator.sagas.get_mut(&saga) {
                if let Phase::Running { group, done, .. } = &mut entry.phase {
                    while *group < entry.def.groups.len()
                        && steps_of(&entry.def, *group)
                            .iter()
                            .all(|(i, ..)| done.contains(i))
                    {
                        *group += 1;
                    }
                }
            }
            orchestrator.advance(saga);
            orchestrator.send_pending(saga);
        }
        Ok((orchestrator, resumed))
    }

    /// This orchestrator's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts a saga.
    pub fn start(&mut self, saga: TxnId, def: SagaDef) -> Result<(), StepError> {
        if self.sagas.contains_key(&saga) {
            return Err(StepError::DuplicateTxn(saga));
        }
        if def.groups.iter().all(|g| g.is_empty()) {
            return Err(StepError::Invalid("a saga needs steps"));
        }
        let token = self.out.force(OrchestratorRecord::Started {
            saga,
            def: def.clone(),
        });
        self.sagas.insert(
            saga,
            Saga {
                def,
                start: Some(token),
                last_sent: self.now,
                phase: Phase::Running {
                    group: 0,
                    done: BTreeSet::new(),
                    attempts: BTreeMap::new(),
                },
            },
        );
        self.advance(saga);
        self.send_pending(saga);
        Ok(())
    }

    /// Sends the requests the saga waits for (steps of the current group not done, or
    /// compensations not acknowledged), after STARTED is durable.
    fn send_pending(&mut self, saga: TxnId) {
        let Some(entry) = self.sagas.get_mut(&saga) else {
            return;
        };
        entry.last_sent = self.now;
        let mut requests = Vec::new();
        match &entry.phase {
            Phase::Running {
                group,
                done,
                attempts,
            } => {
                for (step, service, payload, _) in steps_of(&entry.def, *group) {
                    if !done.contains(&step) {
                        let attempt = attempts.get(&step).copied().unwrap_or(0);
                        let key = BranchKey { txn: saga, step };
                        requests.push((
                            service,
                            Request::Do {
                                key,
                                attempt,
                                payload,
                            },
                        ));
                    }
                }
            }
            Phase::Compensating { group, pending, .. } => {
                for (step, service, ..) in steps_of(&entry.def, *group) {
                    if pending.contains(&step) {
                        let key = BranchKey { txn: saga, step };
                        requests.push((service, Request::Undo { key }));
                    }
                }
            }
        }
        let start = entry.start;
        for (service, request) in requests {
            match start {
                Some(token) => self.out.send_after(token, service, request),
                None => self.out.send(service, request),
            }
        }
    }

    /// Moves past finished groups; ends the saga when nothing is left.
    fn advance(&mut self, saga: TxnId) {
        let Some(entry) = self.sagas.get_mut(&saga) else {
            return;
        };
        let outcome = match &mut entry.phase {
            Phase::Running { group, done, .. } => {
                while *group < entry.def.groups.len()
                    && steps_of(&entry.def, *group)
                        .iter()
                        .all(|(i, ..)| done.contains(i))
                {
                    *group += 1;
                }
                (*group >= entry.def.groups.len()).then_some(SagaOutcome::Completed)
            }
            Phase::Compensating {
                group,
                pending,
                compensated,
            } => loop {
                if pending.is_empty() {
                    let left: BTreeSet<u32> = steps_of(&entry.def, *group)
                        .iter()
                        .map(|(i, ..)| *i)
                        .filter(|i| !compensated.contains(i))
                        .collect();
                    if !left.is_empty() {
                        *pending = left;
                        break None;
                    }
                    if *group == 0 {
                        break Some(SagaOutcome::Compensated);
                    }
                    *group -= 1;
                } else {
                    break None;
                }
            },
        };
        if let Some(outcome) = outcome {
            self.sagas.remove(&saga);
            self.out
                .lazy(OrchestratorRecord::Finished { saga, outcome });
            self.out
                .event(OrchestratorEvent::Finished { saga, outcome });
        }
    }

    /// Handles one reply from a service.
    pub fn step(&mut self, from: NodeId, reply: Reply) -> Result<(), StepError> {
        let key = reply.key();
        let saga = key.txn;
        let Some(entry) = self.sagas.get_mut(&saga) else {
            return Ok(()); // a late reply after the end: ignored by rule
        };
        let Some((_, group, step)) = entry.def.numbered().find(|(i, ..)| *i == key.step) else {
            return Err(StepError::Invalid(
                "a reply for a step the saga does not have",
            ));
        };
        if step.service != from {
            return Err(StepError::NotAParticipant { txn: saga, from });
        }
        let recovery = step.recovery;
        let mut moved = false;
        match (&mut entry.phase, reply) {
            (
                Phase::Running {
                    group: current,
                    done,
                    ..
                },
                Reply::Done { .. },
            ) if group == *current && !done.contains(&key.step) => {
                done.insert(key.step);
                self.out.lazy(OrchestratorRecord::StepDone {
                    saga,
                    step: key.step,
                });
                // Move on (and send) only once the whole group is done.
                moved = steps_of(&entry.def, group)
                    .iter()
                    .all(|(i, ..)| done.contains(i));
            }
            (
                Phase::Running {
                    group: current,
                    attempts,
                    ..
                },
                Reply::Failed { attempt, .. },
            ) if group == *current && recovery == Recovery::Forward => {
                let next = attempts.entry(key.step).or_insert(0);
                *next = (*next).max(attempt + 1);
            }
            (
                Phase::Running { group: current, .. },
                Reply::Failed { .. } | Reply::Refused { .. },
            ) if group == *current => {
                // Compensate everything that may have run: this whole group, then the earlier.
                entry.phase = Phase::Compensating {
                    group,
                    pending: BTreeSet::new(),
                    compensated: BTreeSet::new(),
                };
                self.out.lazy(OrchestratorRecord::Compensating { saga });
                self.out.event(OrchestratorEvent::CompensationStarted {
                    saga,
                    failed_step: key.step,
                });
                moved = true;
            }
            (
                Phase::Compensating {
                    group: current,
                    pending,
                    compensated,
                },
                Reply::Undone { .. },
            ) if group == *current && pending.contains(&key.step) => {
                pending.remove(&key.step);
                compensated.insert(key.step);
                self.out.lazy(OrchestratorRecord::StepCompensated {
                    saga,
                    step: key.step,
                });
                moved = pending.is_empty();
            }
            _ => {} // duplicates and answers to requests already superseded
        }
        if moved {
            self.advance(saga);
            self.send_pending(saga);
        }
        Ok(())
    }

    /// One tick: unanswered requests are resent and failed forward steps retried.
    pub fn tick(&mut self) {
        self.now += 1;
        let due: Vec<TxnId> = self
            .sagas
            .iter()
            .filter(|(_, s)| {
                s.start.is_none_or(|t| !self.out.is_pending(t))
                    && self.now - s.last_sent >= self.config.retry_interval
            })
            .map(|(saga, _)| *saga)
            .collect();
        for saga in due {
            if let Some(entry) = self.sagas.get_mut(&saga) {
                entry.start = None;
            }
            self.send_pending(saga);
        }
    }

    /// The embedder made the forced write `token` durable.
    pub fn forced(&mut self, token: ForceToken) -> Result<(), DurabilityError> {
        self.out.confirm(token)
    }

    /// Drains what the embedder must do now.
    pub fn take_output(&mut self) -> Output<Request, OrchestratorRecord, OrchestratorEvent> {
        self.out.take()
    }

    /// How many sagas are live.
    pub fn live(&self) -> usize {
        self.sagas.len()
    }
}
