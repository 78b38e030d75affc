//! Zab in the simulator: knobs per seed, construction, message summaries and Zab's invariants
//! ([`crate::zab::invariants::ZabChecker`]).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::invariants::Violation;
use super::protocol::{ProtocolChecker, SimProtocol};
use crate::error::Error;
use crate::protocol::Write;
use crate::storage::MemStorage;
use crate::types::{Entry, NodeId};
use crate::zab::invariants::{ZabChecker, ZabView};
#[cfg(feature = "planted-bugs")]
use crate::zab::PlantedBug;
use crate::zab::{Config, HardState, Message, MessageBody, Zab};

/// Zab as the simulator runs it.
pub type ZabSim = Zab<MemStorage<HardState>>;

/// Zab's knobs for one run.
#[derive(Clone, Debug)]
pub struct ZabOptions {
    /// Ticks between the leader's pings.
    pub heartbeat_tick: u32,
    /// Largest message payload (small values force many batches and sync chunks).
    pub max_msg_bytes: u64,
    /// Proposals in flight per follower.
    pub max_inflight: u64,
    /// A bug to plant in every member (to show the checks bite).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

impl SimProtocol for ZabSim {
    type Options = ZabOptions;
    type Checker = ZabChecker;

    fn options(rng: &mut ChaCha8Rng) -> ZabOptions {
        ZabOptions {
            heartbeat_tick: if rng.gen_bool(0.5) { 1 } else { 2 },
            max_msg_bytes: if rng.gen_bool(0.3) { 256 } else { 4096 },
            max_inflight: if rng.gen_bool(0.3) { 4 } else { 64 },
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    fn churn_options(options: &mut ZabOptions) {
        options.heartbeat_tick = 1;
    }

    fn start(
        id: NodeId,
        options: &ZabOptions,
        storage: MemStorage<HardState>,
        applied: u64,
        rng: ChaCha8Rng,
    ) -> Result<Self, Error> {
        let mut c = Config::new(id);
        c.heartbeat_tick = options.heartbeat_tick;
        c.max_msg_bytes = options.max_msg_bytes;
        c.max_inflight = options.max_inflight;
        c.resend_tick = 3;
        c.applied = applied;
        #[cfg(feature = "planted-bugs")]
        {
            c.planted_bug = options.planted_bug;
        }
        Zab::new(c, storage, rng)
    }

    fn summarize(message: &Message) -> String {
        let body = match &message.body {
            MessageBody::Sync {
                epoch,
                kind,
                snapshot,
                prev_index,
                prev_epoch,
                entries,
                new_leader,
            } => format!(
                "Sync e{epoch} {kind:?} snap={:?} prev={prev_epoch}@{prev_index} n={} newleader={new_leader}",
                snapshot.as_ref().map(|s| s.meta.index),
                entries.len()
            ),
            MessageBody::Proposal {
                epoch,
                prev_index,
                entries,
                commit,
            } => format!(
                "Proposal e{epoch} prev={prev_index} n={} commit={commit}",
                entries.len()
            ),
            other => format!("{other:?}"),
        };
        format!("{}->{} {body}", message.from, message.to)
    }
}

impl ProtocolChecker<ZabSim> for ZabChecker {
    fn written(&mut self, node: NodeId, write: &Write<HardState>) {
        let truncate = [
            write.truncate_from,
            write.snapshot.as_ref().map(|s| s.meta.index + 1),
        ]
        .into_iter()
        .flatten()
        .min();
        ZabChecker::written(self, node, truncate, &write.entries);
    }

    fn durable(
        &mut self,
        node: NodeId,
        write: &Write<HardState>,
        conf: &crate::types::ConfState,
    ) -> Result<(), Violation> {
        let _ = conf;
        ZabChecker::durable(
            self,
            node,
            write.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)),
            write.truncate_from,
            &write.entries,
        );
        Ok(())
    }

    fn restarted(&mut self, node: NodeId, durable: &MemStorage<HardState>, applied: u64) {
        self.restarted_on(node, durable, applied);
    }

    fn applied(&mut self, node: NodeId, entry: &Entry) -> Result<(), Violation> {
        self.delivered(node, entry)
    }

    fn check(&mut self, node: NodeId, engine: &ZabSim, applied: u64) -> Result<(), Violation> {
        let _ = applied;
        let status = crate::protocol::Consensus::status(engine);
        ZabChecker::check(
            self,
            ZabView {
                id: node,
                role: status.role,
                epoch: status.term,
                commit: status.commit,
                log: crate::protocol::Consensus::storage(engine),
            },
            &status.conf_state.voters,
        )
    }
}
