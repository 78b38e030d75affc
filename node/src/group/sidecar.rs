//! [`Sidecar`]: a service that runs inside a group's event loop beside its engine — today
//! primary-backup's configuration manager (`crate::primary::manager`), a Raft group of its own.
//!
//! The engine addresses it as node 0 (reserved: no member has id 0): such messages never reach
//! the network; the loop hands them to the sidecar, and the sidecar's answers come back into the
//! engine's `step` as if received. Its peer messages carry its own group id, so one endpoint
//! carries both groups.

use consensus_core::Consensus;
use tokio::sync::watch;

use crate::proto::PeerMessage;
use crate::server::ServeError;
use crate::store::Durability;

/// Node id the engine uses to address its sidecar.
pub(crate) const LOCAL_SERVICE: u64 = 0;

/// A service driven by a group's loop (see the module docs).
pub(crate) trait Sidecar<C: Consensus>: Send {
    /// The group id its peer messages carry (never the engine's).
    fn group(&self) -> u64;
    /// Durability reports of its own store (they wake the loop).
    fn subscribe_durable(&self) -> watch::Receiver<Durability>;
    /// One tick of the node's clock.
    fn tick(&mut self);
    /// A peer message of its group from `from` (the sender's certificate id).
    fn step(&mut self, from: u64, message: PeerMessage);
    /// A message the engine addressed to [`LOCAL_SERVICE`], encoded as the engine's message.
    fn take_from_engine(&mut self, message: PeerMessage);
    /// Runs its own work (its replica loop); returns messages for the engine, encoded as the
    /// engine's messages, to be stepped in as they are.
    fn drive(&mut self) -> Result<Vec<PeerMessage>, ServeError>;
    /// `(name, value)` pairs for the node's status.
    fn status_detail(&self) -> Vec<(String, String)>;
}
