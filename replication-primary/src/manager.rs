//! The configuration manager's rules, as a pure state machine. The manager itself lives outside
//! this crate (a consensus group of the node, a linearizable service in the simulator): it applies
//! [`ConfigManager::handle`] to each request in one total order and tells the replicas the result.

use std::collections::BTreeSet;

use consensus_core::NodeId;
use thiserror::Error;

use crate::configuration::{Change, ChangeRequest, Configuration};

/// Why the manager refused a request.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Refused {
    /// The request was based on a version that is no longer current.
    #[error("request based on version {based_on}, current is {current}")]
    Stale {
        /// The version the request named.
        based_on: u64,
        /// The manager's current version.
        current: u64,
    },
    /// The requester may not ask for this change.
    #[error("node {from} may not ask for {change:?}")]
    NotAllowed {
        /// Who asked.
        from: NodeId,
        /// What it asked for.
        change: Change,
    },
}

/// The manager's state: the current configuration and the group's replicas.
#[derive(Clone, Debug)]
pub struct ConfigManager {
    current: Configuration,
    replicas: BTreeSet<NodeId>,
}

impl ConfigManager {
    /// A manager for a group of `replicas` starting from `initial`.
    pub fn new(initial: Configuration, replicas: impl IntoIterator<Item = NodeId>) -> Self {
        ConfigManager {
            current: initial,
            replicas: replicas.into_iter().collect(),
        }
    }

    /// The configuration in force.
    pub fn current(&self) -> &Configuration {
        &self.current
    }

    /// Applies `request` from `from`: installs the next version, or refuses.
    ///
    /// Rules: the request must be based on the current version; only the primary removes or adds
    /// backups; only a member may become primary (the primary holds a lease from every member, so
    /// a member that waited out its grace period knows the old primary stopped serving; in `all`
    /// and `async` modes it also holds every acknowledged write, in `quorum` mode it checked a
    /// majority's tails first); the old primary leaves the in-sync set and rejoins through `Add`
    /// once caught up.
    pub fn handle(
        &mut self,
        from: NodeId,
        request: ChangeRequest,
    ) -> Result<&Configuration, Refused> {
        let cur = &self.current;
        if request.based_on != cur.version {
            return Err(Refused::Stale {
                based_on: request.based_on,
                current: cur.version,
            });
        }
        let not_allowed = Err(Refused::NotAllowed {
            from,
            change: request.change,
        });
        let mut next = cur.clone();
        next.version += 1;
        match request.change {
            Change::Remove(x) => {
                if cur.primary != Some(from) || x == from || !cur.is_member(x) {
                    return not_allowed;
                }
                next.members.remove(&x);
            }
            Change::Add(x) => {
                if cur.primary != Some(from) || cur.is_member(x) || !self.replicas.contains(&x) {
                    return not_allowed;
                }
                next.members.insert(x);
            }
            Change::BecomePrimary(x) => {
                if x != from || !cur.is_member(x) {
                    return not_allowed;
                }
                if let Some(old) = cur.primary.filter(|&p| p != x) {
                    next.members.remove(&old);
                }
                next.members.insert(x);
                next.primary = Some(x);
                next.epoch = next.version;
            }
        }
        self.current = next;
        Ok(&self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager() -> ConfigManager {
        ConfigManager::new(Configuration::bootstrap(1, [1, 2, 3]), [1, 2, 3])
    }

    #[test]
    fn a_request_based_on_a_stale_version_is_refused() {
        let mut m = manager();
        let first = ChangeRequest {
            based_on: 1,
            change: Change::Remove(3),
        };
        assert_eq!(m.handle(1, first).unwrap().version, 2);
        let stale = ChangeRequest {
            based_on: 1,
            change: Change::BecomePrimary(2),
        };
        assert_eq!(
            m.handle(2, stale),
            Err(Refused::Stale {
                based_on: 1,
                current: 2
            })
        );
    }

    #[test]
    fn a_failover_starts_an_epoch_and_drops_the_old_primary() {
        let mut m = manager();
        let c = m
            .handle(
                2,
                ChangeRequest {
                    based_on: 1,
                    change: Change::BecomePrimary(2),
                },
            )
            .unwrap();
        assert_eq!((c.version, c.epoch, c.primary), (2, 2, Some(2)));
        assert!(!c.is_member(1));
        // A removed replica may not take over in `all` mode.
        m.handle(
            2,
            ChangeRequest {
                based_on: 2,
                change: Change::Remove(3),
            },
        )
        .unwrap();
        let r = m.handle(
            3,
            ChangeRequest {
                based_on: 3,
                change: Change::BecomePrimary(3),
            },
        );
        assert!(matches!(r, Err(Refused::NotAllowed { .. })));
    }

    #[test]
    fn only_the_primary_edits_the_in_sync_set() {
        let mut m = manager();
        let r = m.handle(
            2,
            ChangeRequest {
                based_on: 1,
                change: Change::Remove(3),
            },
        );
        assert!(matches!(r, Err(Refused::NotAllowed { .. })));
        assert_eq!(m.current().version, 1);
    }
}
