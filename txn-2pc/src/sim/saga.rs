//! The saga harness: [`crate::saga::Orchestrator`] over fenced services (see
//! [`super::branches`]). Each generated saga puts its services into groups of one or two
//! parallel steps; a step recovers backward or forward by a stable coin.

use super::branches::{self, Config, Global, Orchestrated};
use super::{stable_ppm, Report};
use crate::error::{DurabilityError, RecoveryError, StepError};
use crate::fence::{BranchKey, Reply, Request};
use crate::output::{ForceToken, Output};
use crate::saga::{
    Config as EngineConfig, Orchestrator, OrchestratorEvent, OrchestratorRecord, Recovery, SagaDef,
    SagaOutcome, Step,
};
use crate::types::{NodeId, TxnId};

/// Whether step `i` of `saga` recovers forward (a stable coin: one in three).
fn is_forward(saga: TxnId, i: usize) -> bool {
    stable_ppm(saga.0, &[i as u64, 11]) < 333_333
}

/// The saga the harness runs for `saga` over `services`: groups of one or two steps.
pub fn definition(saga: TxnId, services: &[NodeId]) -> SagaDef {
    let mut groups: Vec<Vec<Step>> = Vec::new();
    for (i, &service) in services.iter().enumerate() {
        let step = Step {
            service,
            payload: format!("step {i} of {saga}").into_bytes(),
            recovery: if is_forward(saga, i) {
                Recovery::Forward
            } else {
                Recovery::Backward
            },
        };
        let parallel = stable_ppm(saga.0, &[i as u64, 13]) < 400_000;
        match groups.last_mut() {
            Some(group) if parallel && group.len() < 2 => group.push(step),
            _ => groups.push(vec![step]),
        }
    }
    SagaDef { groups }
}

impl Orchestrated for Orchestrator {
    type Record = OrchestratorRecord;
    type Event = OrchestratorEvent;
    const NEEDS_CONFIRM: bool = false;
    const NAME: &'static str = "saga";

    fn recover(id: NodeId, records: Vec<Self::Record>) -> Result<Self, RecoveryError> {
        Orchestrator::recover(id, EngineConfig::default(), records).map(|(o, _)| o)
    }

    fn start(&mut self, txn: TxnId, services: &[NodeId]) -> Result<(), StepError> {
        Orchestrator::start(self, txn, definition(txn, services))
    }

    fn step(&mut self, from: NodeId, reply: Reply) -> Result<(), StepError> {
        Orchestrator::step(self, from, reply)
    }

    fn tick(&mut self) {
        Orchestrator::tick(self)
    }

    fn forced(&mut self, token: ForceToken) -> Result<(), DurabilityError> {
        Orchestrator::forced(self, token)
    }

    fn take_output(&mut self) -> Output<Request, Self::Record, Self::Event> {
        Orchestrator::take_output(self)
    }

    fn live(&self) -> usize {
        Orchestrator::live(self)
    }

    fn decision(event: &Self::Event) -> Option<(TxnId, Global)> {
        match event {
            OrchestratorEvent::Finished { saga, outcome } => Some((
                *saga,
                match outcome {
                    SagaOutcome::Completed => Global::Forward,
                    SagaOutcome::Compensated => Global::Backward,
                },
            )),
            OrchestratorEvent::CompensationStarted { .. } => None,
        }
    }

    fn branches(txn: TxnId, services: &[NodeId]) -> Vec<(BranchKey, NodeId)> {
        definition(txn, services)
            .numbered()
            .map(|(i, _, s)| (BranchKey { txn, step: i }, s.service))
            .collect()
    }
}

/// A backward step fails 10% of the time (for good); a forward one fails its first two
/// attempts 30% of the time each, then succeeds.
fn decide(seed: u64, key: BranchKey, attempt: u32) -> bool {
    let roll = stable_ppm(
        seed,
        &[key.txn.0, u64::from(key.step), u64::from(attempt), 5],
    );
    if is_forward(key.txn, key.step as usize) {
        attempt >= 2 || roll >= 300_000
    } else {
        stable_ppm(seed, &[key.txn.0, u64::from(key.step), 9]) >= 100_000
    }
}

/// Runs one seed of sagas.
pub fn run(config: Config) -> Report {
    branches::run::<Orchestrator>(config, decide)
}
