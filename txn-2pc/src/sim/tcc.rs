//! The TCC harness: [`crate::tcc::Orchestrator`] over fenced services (see [`super::branches`]).

use super::branches::{self, Config, Global, Orchestrated};
use super::{stable_ppm, Report};
use crate::error::{DurabilityError, RecoveryError, StepError};
use crate::fence::{BranchKey, Reply, Request};
use crate::output::{ForceToken, Output};
use crate::tcc::{
    Config as EngineConfig, Decision, Orchestrator, OrchestratorEvent, OrchestratorRecord,
};
use crate::types::{NodeId, TxnId};

impl Orchestrated for Orchestrator {
    type Record = OrchestratorRecord;
    type Event = OrchestratorEvent;
    const NEEDS_CONFIRM: bool = true;
    const NAME: &'static str = "tcc";

    fn recover(id: NodeId, records: Vec<Self::Record>) -> Result<Self, RecoveryError> {
        Orchestrator::recover(id, EngineConfig::default(), records).map(|(o, _)| o)
    }

    fn start(&mut self, txn: TxnId, services: &[NodeId]) -> Result<(), StepError> {
        let branches = services
            .iter()
            .map(|&s| (s, format!("hold for {txn}").into_bytes()))
            .collect();
        self.begin(txn, branches)
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
            OrchestratorEvent::Decided { txn, decision } => Some((
                *txn,
                match decision {
                    Decision::Confirm => Global::Forward,
                    Decision::Cancel => Global::Backward,
                },
            )),
            OrchestratorEvent::Finished { .. } => None,
        }
    }

    fn branches(txn: TxnId, services: &[NodeId]) -> Vec<(BranchKey, NodeId)> {
        services
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                (
                    BranchKey {
                        txn,
                        step: i as u32,
                    },
                    s,
                )
            })
            .collect()
    }
}

/// A try is refused 8% of the time (stable per seed and branch).
fn decide(seed: u64, key: BranchKey, _attempt: u32) -> bool {
    stable_ppm(seed, &[key.txn.0, u64::from(key.step), 7]) >= 80_000
}

/// Runs one seed of TCC.
pub fn run(config: Config) -> Report {
    branches::run::<Orchestrator>(config, decide)
}
