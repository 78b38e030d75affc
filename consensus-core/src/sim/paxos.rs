//! Multi-Paxos in the simulator: knobs per seed, construction, message summaries, and
//! [`PaxosChecker`] fed by the harness.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::invariants::Violation;
use super::protocol::{ProtocolChecker, SimProtocol};
use crate::error::Error;
use crate::paxos::invariants::PaxosChecker;
#[cfg(feature = "planted-bugs")]
use crate::paxos::PlantedBug;
use crate::paxos::{Config, HardState, Message, MessageBody, MultiPaxos, ReadMode};
use crate::protocol::{Consensus, Write};
use crate::storage::MemStorage;
use crate::types::{ConfState, Entry, NodeId};

/// Multi-Paxos as the simulator runs it.
pub type PaxosSim = MultiPaxos<MemStorage<HardState>>;

/// Multi-Paxos' knobs for one run.
#[derive(Clone, Debug)]
pub struct PaxosOptions {
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Pipeline window (slots in flight).
    pub max_inflight_slots: u64,
    /// A bug to plant in every member (to show the checks bite).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

impl SimProtocol for PaxosSim {
    type Options = PaxosOptions;
    type Checker = PaxosChecker;

    fn options(rng: &mut ChaCha8Rng) -> PaxosOptions {
        let read_mode = if rng.gen_bool(0.5) {
            ReadMode::Safe
        } else {
            ReadMode::LeaseBased
        };
        PaxosOptions {
            read_mode,
            max_inflight_slots: [1, 4, 16][rng.gen_range(0..3)],
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    fn churn_options(options: &mut PaxosOptions) {
        options.read_mode = ReadMode::Safe;
    }

    fn start(
        id: NodeId,
        options: &PaxosOptions,
        storage: MemStorage<HardState>,
        applied: u64,
        rng: ChaCha8Rng,
    ) -> Result<Self, Error> {
        let mut c = Config::new(id);
        c.read_mode = options.read_mode;
        c.max_msg_bytes = 4096;
        c.max_inflight_slots = options.max_inflight_slots;
        c.applied = applied;
        #[cfg(feature = "planted-bugs")]
        {
            c.planted_bug = options.planted_bug;
        }
        MultiPaxos::new(c, storage, rng)
    }

    fn summarize(message: &Message) -> String {
        let body = match &message.body {
            MessageBody::Accept { entries, commit } => format!(
                "Accept slots={:?} commit={commit}",
                entries.iter().map(|e| e.index).collect::<Vec<_>>()
            ),
            MessageBody::Promise {
                from,
                accepted,
                covered,
                last,
                compacted,
            } => format!(
                "Promise from={from} accepted={:?} covered={covered} last={last} \
                 compacted={compacted}",
                accepted.iter().map(|e| e.index).collect::<Vec<_>>()
            ),
            MessageBody::Chosen { entries, commit } => format!(
                "Chosen slots={:?} commit={commit}",
                entries.iter().map(|e| e.index).collect::<Vec<_>>()
            ),
            MessageBody::Snapshot { snapshot } => format!("Snapshot at {}", snapshot.meta.index),
            other => format!("{other:?}"),
        };
        format!(
            "{}->{} b{} {body}",
            message.from, message.to, message.ballot
        )
    }
}

fn to_violation(detail: String) -> Violation {
    Violation {
        property: "multi-paxos safety",
        detail,
    }
}

impl ProtocolChecker<PaxosSim> for PaxosChecker {
    fn written(&mut self, node: NodeId, write: &Write<HardState>) {
        if let Some(snapshot) = &write.snapshot {
            self.on_restored(node, snapshot.meta.index);
        }
    }

    fn durable(
        &mut self,
        node: NodeId,
        write: &Write<HardState>,
        conf: &ConfState,
    ) -> Result<(), Violation> {
        self.on_durable_write(node, write, &conf.voters)
            .map_err(to_violation)
    }

    fn restarted(&mut self, node: NodeId, _durable: &MemStorage<HardState>, applied: u64) {
        self.on_restored(node, applied);
    }

    fn applied(&mut self, node: NodeId, entry: &Entry) -> Result<(), Violation> {
        self.on_applied(node, entry).map_err(to_violation)
    }

    fn check(&mut self, _node: NodeId, engine: &PaxosSim, applied: u64) -> Result<(), Violation> {
        let status = engine.status();
        if engine.promised() < engine.ballot() && engine.role() != crate::types::Role::Follower {
            return Err(to_violation(format!(
                "node {} acts under ballot {} above its promise {}",
                status.id,
                engine.ballot(),
                engine.promised()
            )));
        }
        let _ = applied;
        Ok(())
    }
}
