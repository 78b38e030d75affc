//! Sagas: ordered steps, each with a compensation, run by an [`Orchestrator`] over
//! [`fence::Service`](crate::fence::Service)s.
//!
//! A saga is a list of groups run in order; the steps of one group run in parallel. A step
//! that fails either retries (forward recovery, [`Recovery::Forward`]) or makes the saga
//! compensate every step that may have run, newest group first ([`Recovery::Backward`]). The
//! saga log (STARTED forced; step, compensation and end records lazy) lets a crashed
//! orchestrator resume where it stopped: whatever the lost tail of the log held is replayed, and
//! the services' fences make the replay idempotent. Pick a saga when a transaction is long or
//! crosses services that cannot hold reservations: each step commits locally at once, so other
//! transactions see intermediate states (no isolation) and compensations must be semantic undos.

mod orchestrator;

pub use orchestrator::{Orchestrator, OrchestratorEvent, OrchestratorRecord, SagaOutcome};

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// What to do when a step fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recovery {
    /// Compensate every step that may have run, in reverse order, and end the saga.
    Backward,
    /// Retry the step (with a new attempt number) until it succeeds.
    Forward,
}

/// One step of a saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The service that runs it (and its compensation).
    pub service: NodeId,
    /// What to do, for the service's application.
    pub payload: Vec<u8>,
    /// What to do if it fails.
    pub recovery: Recovery,
}

/// A saga: groups of steps, run group after group; the steps of a group run in parallel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaDef {
    /// The groups, in order.
    pub groups: Vec<Vec<Step>>,
}

impl SagaDef {
    /// A saga of single steps, in order.
    pub fn sequence(steps: Vec<Step>) -> Self {
        SagaDef {
            groups: steps.into_iter().map(|s| vec![s]).collect(),
        }
    }

    /// Every step, numbered in order across groups: (number, group, step).
    pub fn numbered(&self) -> impl Iterator<Item = (u32, usize, &Step)> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(g, steps)| steps.iter().map(move |s| (g, s)))
            .enumerate()
            .map(|(i, (g, s))| (i as u32, g, s))
    }
}

/// Timeouts in ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Resend unanswered step or compensation requests (and retry forward steps) this often.
    pub retry_interval: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { retry_interval: 10 }
    }
}
