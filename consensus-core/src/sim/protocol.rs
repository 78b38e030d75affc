//! What a protocol provides to be simulated: how to build a member from durable storage, the
//! knobs a seed chooses, a one-line summary of each message, and its own invariants.
//!
//! Everything else — the network, the disk that loses unsynced writes, crashes, clients with
//! sessions and retries, linearizability, the shared invariants, liveness — is the harness's, and
//! the same for every protocol. A protocol in another crate implements these two traits in its
//! tests (with `consensus-core` as a dev-dependency) and gets the whole harness.

use rand_chacha::ChaCha8Rng;

use super::invariants::Violation;
use crate::error::Error;
use crate::protocol::{Consensus, Write};
use crate::storage::MemStorage;
use crate::types::{ConfState, Entry, NodeId};

/// A protocol the simulator can run: a [`Consensus`] over [`MemStorage`].
pub trait SimProtocol:
    Consensus<Storage = MemStorage<<Self as Consensus>::HardState>> + Sized
{
    /// Per-run knobs derived from the seed (read mode, pre-vote, … and a planted bug in tests).
    type Options: Clone + std::fmt::Debug;
    /// The protocol's own invariants.
    type Checker: ProtocolChecker<Self>;

    /// Draws the knobs of one run.
    fn options(rng: &mut ChaCha8Rng) -> Self::Options;
    /// Adjusts the knobs for the leader-churn profile (elections as fast as possible).
    fn churn_options(options: &mut Self::Options) {
        let _ = options;
    }
    /// Builds member `id` on what its disk holds, its state machine restored through `applied`.
    fn start(
        id: NodeId,
        options: &Self::Options,
        storage: MemStorage<Self::HardState>,
        applied: u64,
        rng: ChaCha8Rng,
    ) -> Result<Self, Error>;
    /// One line describing a message, for the trace.
    fn summarize(message: &Self::Message) -> String {
        format!("{message:?}")
    }
}

/// A protocol's own safety checks, fed by the harness. Every hook but `check` has a default that
/// ignores the event.
pub trait ProtocolChecker<P: SimProtocol>: Default {
    /// `write` was submitted on `node` (it is in the engine's storage view at once).
    fn written(&mut self, node: NodeId, write: &Write<P::HardState>) {
        let _ = (node, write);
    }
    /// `write` reached `node`'s disk; `conf` is the membership the node is in.
    fn durable(
        &mut self,
        node: NodeId,
        write: &Write<P::HardState>,
        conf: &ConfState,
    ) -> Result<(), Violation> {
        let _ = (node, write, conf);
        Ok(())
    }
    /// `node` compacted its log through `index`.
    fn compacted(&mut self, node: NodeId, index: u64) {
        let _ = (node, index);
    }
    /// `node` restarted from its disk, its state machine restored through `applied`.
    fn restarted(&mut self, node: NodeId, durable: &MemStorage<P::HardState>, applied: u64) {
        let _ = (node, durable, applied);
    }
    /// `node` applied `entry`.
    fn applied(&mut self, node: NodeId, entry: &Entry) -> Result<(), Violation> {
        let _ = (node, entry);
        Ok(())
    }
    /// Called after every step on a live `node`, whose state machine has applied through
    /// `applied`.
    fn check(&mut self, node: NodeId, engine: &P, applied: u64) -> Result<(), Violation>;
}
