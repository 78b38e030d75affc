//! Observers: the learners of the configuration. They follow the leader through the same
//! discovery and synchronisation (so they never take a stale leader's history: their accepted
//! epoch only grows), receive proposals and commits, and ACK them, but never vote in elections,
//! never count towards the epoch, NEWLEADER, commit or read quorums, and never lead. They report
//! role `Follower` with status detail ("state", "observing") (see `Zab::server_state`).

use super::{Zab, ZabStorage};

impl<S: ZabStorage> Zab<S> {
    /// Whether this member is an observer (a learner of the configuration in force).
    pub fn is_observer(&self) -> bool {
        self.conf.learners.contains(&self.config.id)
    }
}
