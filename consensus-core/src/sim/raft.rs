//! Raft in the simulator: knobs per seed, construction, message summaries and Raft's invariants.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::invariants::raft::{NodeView, RaftChecker};
use super::invariants::Violation;
use super::protocol::{ProtocolChecker, SimProtocol};
use crate::error::Error;
use crate::protocol::{Consensus, Write};
#[cfg(feature = "planted-bugs")]
use crate::raft::PlantedBug;
use crate::raft::{Config, HardState, Message, MessageBody, Raft, ReadMode};
use crate::storage::{MemStorage, Storage};
use crate::types::NodeId;

/// Raft as the simulator runs it.
pub type RaftSim = Raft<MemStorage>;

/// Raft's knobs for one run.
#[derive(Clone, Debug)]
pub struct RaftOptions {
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Pre-vote on or off.
    pub pre_vote: bool,
    /// Check-quorum on or off (always on with lease reads, which need it).
    pub check_quorum: bool,
    /// A bug to plant in every member (to show the checks bite).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

impl SimProtocol for RaftSim {
    type Options = RaftOptions;
    type Checker = RaftChecker;

    fn options(rng: &mut ChaCha8Rng) -> RaftOptions {
        let read_mode = if rng.gen_bool(0.5) {
            ReadMode::Safe
        } else {
            ReadMode::LeaseBased
        };
        let pre_vote = rng.gen_bool(0.8);
        let check_quorum = read_mode == ReadMode::LeaseBased || rng.gen_bool(0.6);
        RaftOptions {
            read_mode,
            pre_vote,
            check_quorum,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    fn churn_options(options: &mut RaftOptions) {
        // Neither pre-vote nor check-quorum slows elections down: short-lived leaders then leave
        // competing uncommitted tails of different terms, where Raft's Figure 8 plays out.
        options.pre_vote = false;
        options.check_quorum = false;
        options.read_mode = ReadMode::Safe;
    }

    fn start(
        id: NodeId,
        options: &RaftOptions,
        storage: MemStorage,
        applied: u64,
        rng: ChaCha8Rng,
    ) -> Result<Self, Error> {
        let mut c = Config::new(id);
        c.pre_vote = options.pre_vote;
        c.check_quorum = options.check_quorum;
        c.read_mode = options.read_mode;
        c.max_msg_bytes = 4096;
        c.max_inflight = 16;
        c.applied = applied;
        #[cfg(feature = "planted-bugs")]
        {
            c.planted_bug = options.planted_bug;
        }
        Raft::new(c, storage, rng)
    }

    fn summarize(message: &Message) -> String {
        let body = match &message.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => format!(
                "Append prev=({prev_index},{prev_term}) n={} last_term={} commit={commit}",
                entries.len(),
                entries.last().map_or(0, |e| e.term)
            ),
            MessageBody::InstallSnapshot { snapshot } => format!(
                "InstallSnapshot ({},{})",
                snapshot.meta.index, snapshot.meta.term
            ),
            other => format!("{other:?}"),
        };
        format!("{}->{} t{} {body}", message.from, message.to, message.term)
    }
}

impl ProtocolChecker<RaftSim> for RaftChecker {
    fn written(&mut self, node: NodeId, write: &Write<HardState>) {
        let from = [
            write.truncate_from,
            write.entries.first().map(|e| e.index),
            write.snapshot.as_ref().map(|s| s.meta.index),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(from) = from {
            self.log_written(node, from);
        }
    }

    fn compacted(&mut self, node: NodeId, index: u64) {
        self.log_written(node, index);
    }

    fn restarted(&mut self, node: NodeId, durable: &MemStorage, applied: u64) {
        RaftChecker::restarted(self, node, durable.hard_state().term, applied);
    }

    fn check(&mut self, node: NodeId, engine: &RaftSim, applied: u64) -> Result<(), Violation> {
        let meta = engine.storage().snapshot_meta();
        let view = NodeView {
            id: node,
            role: engine.role(),
            term: engine.term(),
            commit: engine.status().commit,
            applied,
            snapshot: (meta.index, meta.term),
            log: engine.storage(),
        };
        RaftChecker::check(self, &[view])
    }
}
