//! The branch side of TCC and sagas: a service whose every step writes a **fence record** in
//! the same local step as its business effect (Seata's `tcc_fence_log`, DTM's sub-transaction
//! barrier). One rule then covers the three classic hazards:
//!
//! - **idempotence**: a retried try/execute, confirm or cancel/compensate finds its fence and
//!   repeats the earlier answer without touching the business state again;
//! - **empty rollback**: a cancel for a branch whose try never ran succeeds, and records itself;
//! - **anti-suspension**: because that cancel left a fence, a try arriving after it is refused.
//!
//! A record here *is* the business change (its `effect` bytes) plus the fence, so "written in
//! the same local step" holds by construction: the embedder applies the effect in the same local
//! transaction that stores the record, and recovery rebuilds both from the records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{DurabilityError, RecoveryError, StepError};
use crate::output::{ForceToken, Outbox, Output};
use crate::record::DurableRecord;
use crate::types::{NodeId, TxnId};

/// Names one branch of one global transaction (TCC) or one step of one saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BranchKey {
    /// The global transaction or saga.
    pub txn: TxnId,
    /// The branch or step number within it.
    pub step: u32,
}

/// Orchestrator → service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// TCC try / saga step: do the (tentative) work.
    Do {
        /// Which branch.
        key: BranchKey,
        /// Attempt number; a higher attempt may retry a failed one (forward recovery).
        attempt: u32,
        /// What to do, for the application.
        payload: Vec<u8>,
    },
    /// TCC confirm: make the tried work final.
    Confirm {
        /// Which branch.
        key: BranchKey,
    },
    /// TCC cancel / saga compensation: undo the work, or fence it off if it never ran.
    Undo {
        /// Which branch.
        key: BranchKey,
    },
}

/// Service → orchestrator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The work is done (durably).
    Done {
        /// Which branch.
        key: BranchKey,
    },
    /// The application refused the work in this attempt.
    Failed {
        /// Which branch.
        key: BranchKey,
        /// The attempt that failed.
        attempt: u32,
    },
    /// The branch was already undone (or fenced off): the work will never be done.
    Refused {
        /// Which branch.
        key: BranchKey,
    },
    /// The confirm is durable.
    Confirmed {
        /// Which branch.
        key: BranchKey,
    },
    /// The undo (or the empty-rollback fence) is durable.
    Undone {
        /// Which branch.
        key: BranchKey,
    },
}

impl Reply {
    /// The branch the reply is about.
    pub fn key(&self) -> BranchKey {
        match self {
            Reply::Done { key }
            | Reply::Failed { key, .. }
            | Reply::Refused { key }
            | Reply::Confirmed { key }
            | Reply::Undone { key } => *key,
        }
    }
}

/// A fence record together with the business change it guards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FenceRecord {
    /// The work was done: `effect` is the business change (reservation, debit…).
    Done {
        /// Which branch.
        key: BranchKey,
        /// The attempt that succeeded.
        attempt: u32,
        /// The business change, opaque to this crate.
        effect: Vec<u8>,
    },
    /// The application refused this attempt; nothing changed.
    Failed {
        /// Which branch.
        key: BranchKey,
        /// The attempt.
        attempt: u32,
    },
    /// Confirmed: the done work is final.
    Confirmed {
        /// Which branch.
        key: BranchKey,
    },
    /// Undone: `compensated` says whether there was work to undo (false: an empty rollback,
    /// recorded so that a late try is refused).
    Undone {
        /// Which branch.
        key: BranchKey,
        /// Whether a done effect was reversed.
        compensated: bool,
    },
}

impl DurableRecord for FenceRecord {}

impl FenceRecord {
    /// The branch the record is about.
    pub fn key(&self) -> BranchKey {
        match self {
            FenceRecord::Done { key, .. }
            | FenceRecord::Failed { key, .. }
            | FenceRecord::Confirmed { key }
            | FenceRecord::Undone { key, .. } => *key,
        }
    }
}

/// What the service reports to its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceEvent {
    /// Decide whether the work can be done, then call [`Service::decide`] with its effect.
    DoRequested {
        /// Which branch.
        key: BranchKey,
        /// Which attempt.
        attempt: u32,
        /// What to do.
        payload: Vec<u8>,
    },
    /// A record is durable: its business change is now in effect.
    Applied {
        /// The record.
        record: FenceRecord,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Fence {
    /// Waiting for the application's decision on this attempt.
    Deciding {
        attempt: u32,
        from: NodeId,
    },
    Done {
        attempt: u32,
    },
    Failed {
        attempt: u32,
    },
    Confirmed,
    Undone,
}

/// Known bugs that can be planted to prove the simulator catches them.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A cancel for a branch that never tried acknowledges without writing a fence: a late try
    /// then succeeds and its reservation hangs forever (suspension).
    CancelWithoutFence,
}

/// A TCC branch or saga step service, guarded by fence records.
#[derive(Debug)]
pub struct Service {
    id: NodeId,
    fences: BTreeMap<BranchKey, Fence>,
    /// Tokens of records whose replies may be repeated only once durable.
    tokens: BTreeMap<BranchKey, ForceToken>,
    out: Outbox<Reply, FenceRecord, ServiceEvent>,
    #[cfg(feature = "planted-bugs")]
    bug: Option<PlantedBug>,
}

impl Service {
    /// A service with no history.
    pub fn new(id: NodeId) -> Self {
        Service {
            id,
            fences: BTreeMap::new(),
            tokens: BTreeMap::new(),
            out: Outbox::new(),
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }

    /// Rebuilds the fence table from the durable records (in write order).
    pub fn recover(
        id: NodeId,
        records: impl IntoIterator<Item = FenceRecord>,
    ) -> Result<Self, RecoveryError> {
        let mut service = Service::new(id);
        for record in records {
            let key = record.key();
            let previous = service.fences.get(&key);
            let next = match (&record, previous) {
                (FenceRecord::Done { attempt, .. }, None | Some(Fence::Failed { .. })) => {
                    Fence::Done { attempt: *attempt }
                }
                (FenceRecord::Failed { attempt, .. }, None | Some(Fence::Failed { .. })) => {
                    Fence::Failed { attempt: *attempt }
                }
                (FenceRecord::Confirmed { .. }, Some(Fence::Done { .. })) => Fence::Confirmed,
                (
                    FenceRecord::Undone { .. },
                    None | Some(Fence::Done { .. } | Fence::Failed { .. }),
                ) => Fence::Undone,
                _ => {
                    return Err(RecoveryError::Inconsistent {
                        txn: key.txn,
                        detail: "a fence record out of order",
                    })
                }
            };
            service.fences.insert(key, next);
        }
        Ok(service)
    }

    /// Plants a known bug (tests and `cargo xtask sim --bug` only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bug(&mut self, bug: PlantedBug) {
        self.bug = Some(bug);
    }

    /// This service's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    fn reply_after_durable(&mut self, key: BranchKey, to: NodeId, reply: Reply) {
        match self.tokens.get(&key) {
            Some(&token) => self.out.send_after(token, to, reply),
            None => self.out.send(to, reply),
        }
    }

    fn write(&mut self, key: BranchKey, record: FenceRecord) -> ForceToken {
        let token = self.out.force(record.clone());
        self.out
            .event_after(token, ServiceEvent::Applied { record });
        self.tokens.insert(key, token);
        token
    }

    /// Handles one request from `from`.
    pub fn step(&mut self, from: NodeId, request: Request) -> Result<(), StepError> {
        match request {
            Request::Do {
                key,
                attempt,
                payload,
            } => {
                match self.fences.get(&key) {
                    None => {}
                    Some(Fence::Failed { attempt: failed }) if attempt > *failed => {}
                    Some(Fence::Failed { attempt: failed }) => {
                        let failed = *failed;
                        self.reply_after_durable(
                            key,
                            from,
                            Reply::Failed {
                                key,
                                attempt: failed,
                            },
                        );
                        return Ok(());
                    }
                    Some(Fence::Deciding { .. }) => return Ok(()),
                    Some(Fence::Done { .. } | Fence::Confirmed) => {
                        self.reply_after_durable(key, from, Reply::Done { key });
                        return Ok(());
                    }
                    // Anti-suspension: the branch was cancelled (maybe before this try arrived).
                    Some(Fence::Undone) => {
                        self.reply_after_durable(key, from, Reply::Refused { key });
                        return Ok(());
                    }
                }
                self.fences.insert(key, Fence::Deciding { attempt, from });
                self.out.event(ServiceEvent::DoRequested {
                    key,
                    attempt,
                    payload,
                });
                Ok(())
            }
            Request::Confirm { key } => match self.fences.get(&key) {
                Some(Fence::Done { .. }) => {
                    let token = self.write(key, FenceRecord::Confirmed { key });
                    self.fences.insert(key, Fence::Confirmed);
                    self.out.send_after(token, from, Reply::Confirmed { key });
                    Ok(())
                }
                Some(Fence::Confirmed) => {
                    self.reply_after_durable(key, from, Reply::Confirmed { key });
                    Ok(())
                }
                Some(Fence::Undone) => Err(StepError::Conflict {
                    txn: key.txn,
                    detail: "CONFIRM for a cancelled branch",
                }),
                _ => Err(StepError::WrongState {
                    txn: key.txn,
                    detail: "CONFIRM for a branch whose try did not succeed",
                }),
            },
            Request::Undo { key } => match self.fences.get(&key).cloned() {
                Some(Fence::Done { .. }) => {
                    let token = self.write(
                        key,
                        FenceRecord::Undone {
                            key,
                            compensated: true,
                        },
                    );
                    self.fences.insert(key, Fence::Undone);
                    self.out.send_after(token, from, Reply::Undone { key });
                    Ok(())
                }
                Some(Fence::Undone) => {
                    self.reply_after_durable(key, from, Reply::Undone { key });
                    Ok(())
                }
                Some(Fence::Confirmed) => Err(StepError::Conflict {
                    txn: key.txn,
                    detail: "CANCEL for a confirmed branch",
                }),
                None | Some(Fence::Failed { .. }) | Some(Fence::Deciding { .. }) => {
                    #[cfg(feature = "planted-bugs")]
                    if self.bug == Some(PlantedBug::CancelWithoutFence) {
                        if !matches!(self.fences.get(&key), Some(Fence::Deciding { .. })) {
                            self.fences.remove(&key);
                        }
                        self.out.send(from, Reply::Undone { key });
                        return Ok(());
                    }
                    // Empty rollback: nothing to undo, but the fence is written so that a try
                    // arriving later (or being decided right now) is refused.
                    let token = self.write(
                        key,
                        FenceRecord::Undone {
                            key,
                            compensated: false,
                        },
                    );
                    self.fences.insert(key, Fence::Undone);
                    self.out.send_after(token, from, Reply::Undone { key });
                    Ok(())
                }
            },
        }
    }

    /// The application's decision after [`ServiceEvent::DoRequested`]: `Ok(effect)` does the
    /// work (effect and fence in one durable record), `Err(())` refuses this attempt.
    pub fn decide(
        &mut self,
        key: BranchKey,
        decision: Result<Vec<u8>, ()>,
    ) -> Result<(), StepError> {
        let Some(Fence::Deciding { attempt, from }) = self.fences.get(&key).cloned() else {
            return match self.fences.get(&key) {
                // Cancelled while deciding: the work is refused by the fence.
                Some(Fence::Undone) => Ok(()),
                _ => Err(StepError::WrongState {
                    txn: key.txn,
                    detail: "no decision was requested",
                }),
            };
        };
        match decision {
            Ok(effect) => {
                let token = self.write(
                    key,
                    FenceRecord::Done {
                        key,
                        attempt,
                        effect,
                    },
                );
                self.fences.insert(key, Fence::Done { attempt });
                self.out.send_after(token, from, Reply::Done { key });
            }
            Err(()) => {
                let token = self.write(key, FenceRecord::Failed { key, attempt });
                self.fences.insert(key, Fence::Failed { attempt });
                self.out
                    .send_after(token, from, Reply::Failed { key, attempt });
            }
        }
        Ok(())
    }

    /// The embedder made the forced write `token` durable.
    pub fn forced(&mut self, token: ForceToken) -> Result<(), DurabilityError> {
        self.out.confirm(token)?;
        self.tokens.retain(|_, t| self.out.is_pending(*t));
        Ok(())
    }

    /// Drains what the embedder must do now.
    pub fn take_output(&mut self) -> Output<Reply, FenceRecord, ServiceEvent> {
        self.out.take()
    }

    /// Branches whose application decision is pending.
    pub fn deciding(&self) -> usize {
        self.fences
            .values()
            .filter(|f| matches!(f, Fence::Deciding { .. }))
            .count()
    }
}
