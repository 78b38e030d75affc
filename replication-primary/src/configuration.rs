//! The group's configuration as the configuration manager records it, the requests to change it,
//! and the durable state each replica keeps.

use std::collections::BTreeSet;

use consensus_core::NodeId;
use serde::{Deserialize, Serialize};

/// One version of the group's configuration (PacificA's "configuration"): who is primary and who
/// is in the in-sync set. Owned by the configuration manager; replicas only learn it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// Serial number of this configuration; every change installs `version + 1`.
    pub version: u64,
    /// The epoch: the version at which the current primary was installed. It changes only when
    /// the primary does (or re-takes office after a restart); every message carries it and
    /// anything from a lower epoch is refused.
    pub epoch: u64,
    /// The primary, if any.
    pub primary: Option<NodeId>,
    /// The in-sync set: the primary and its backups. Only members may hold a lease on the primary
    /// or (in `all` and `async` modes) ask to become primary.
    pub members: BTreeSet<NodeId>,
}

impl Configuration {
    /// The first configuration of a group: version 1, epoch 1, `primary` leading every replica.
    pub fn bootstrap(primary: NodeId, replicas: impl IntoIterator<Item = NodeId>) -> Self {
        let mut members: BTreeSet<NodeId> = replicas.into_iter().collect();
        members.insert(primary);
        Configuration {
            version: 1,
            epoch: 1,
            primary: Some(primary),
            members,
        }
    }

    /// Whether `id` is in the in-sync set.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.members.contains(&id)
    }
}

/// A change a replica asks the manager for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The primary drops a backup whose lease ran out from the in-sync set.
    Remove(NodeId),
    /// The primary adds a replica that caught up to its commit point.
    Add(NodeId),
    /// A replica asks to become primary (after its grace period), or a restarted primary asks for
    /// a fresh epoch.
    BecomePrimary(NodeId),
}

/// A request to the manager, based on the version the requester knows; the manager refuses it
/// unless that is still the current version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRequest {
    /// The version the request is based on.
    pub based_on: u64,
    /// What to change.
    pub change: Change,
}

/// What a replica keeps durably besides its log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The newest configuration this replica knows (version 0: none yet, use the bootstrap).
    pub config: Configuration,
    /// The epoch whose primary this replica's log was last made a prefix of (set together with
    /// the first entries it accepts in an epoch, after cutting whatever that primary never
    /// prepared). A quorum-mode candidate compares `(synced_epoch, last index)`.
    pub synced_epoch: u64,
}
