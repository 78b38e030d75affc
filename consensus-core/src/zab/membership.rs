//! Membership: single-server changes as configuration entries in the history.
//!
//! A change is proposed by the established leader like any proposal and **takes effect on a node
//! when that node hands the entry out as committed** (it is applied). One change may be pending at
//! a time; only `ConfChange::Single` is offered (any two majorities of configurations one voter
//! apart overlap); joint consensus is refused. A new leader commits its initial history before it
//! takes any proposal, which plays the part of Raft's no-op. Learners are Zab observers. A leader
//! that is no longer a voter stops leading.

use super::{State, Zab, ZabStorage};
use crate::error::Error;
use crate::types::{ConfChange, ConfState, EntryPayload, MemberChange, Proposed};

/// The configuration after `change`, or why `change` is not allowed from `conf`.
pub(crate) fn apply_change(conf: &ConfState, change: &ConfChange) -> Result<ConfState, Error> {
    let ConfChange::Single(change) = change else {
        return Err(Error::InvalidConfChange {
            reason: "zab takes single-server changes only",
        });
    };
    if change.node() == 0 {
        return Err(Error::InvalidConfChange {
            reason: "node id 0 is reserved",
        });
    }
    let mut next = conf.clone();
    match *change {
        MemberChange::AddVoter(id) => {
            next.learners.remove(&id);
            next.voters.insert(id);
        }
        MemberChange::AddLearner(id) => {
            next.voters.remove(&id);
            next.learners.insert(id);
        }
        MemberChange::Remove(id) => {
            next.voters.remove(&id);
            next.learners.remove(&id);
        }
    }
    if next.voters.is_empty() {
        return Err(Error::InvalidConfChange {
            reason: "a group needs at least one voter",
        });
    }
    Ok(next)
}

impl<S: ZabStorage> Zab<S> {
    pub(crate) fn propose_membership(&mut self, change: ConfChange) -> Result<Proposed, Error> {
        if !matches!(self.state, State::Leading(_)) {
            return Err(Error::NotLeader {
                leader: self.leader(),
            });
        }
        if self.pending_conf_index > self.applied {
            return Err(Error::ConfChangePending {
                pending_index: self.pending_conf_index,
            });
        }
        apply_change(&self.conf, &change)?;
        let proposed = self.propose_entry(EntryPayload::ConfChange(change))?;
        self.pending_conf_index = proposed.index;
        Ok(proposed)
    }

    /// A committed change takes effect.
    pub(crate) fn apply_conf_change(&mut self, change: &ConfChange) {
        match apply_change(&self.conf, change) {
            Ok(next) => self.conf = next,
            Err(error) => {
                tracing::warn!(%error, "zab: committed membership change not applicable; skipped");
                return;
            }
        }
        let me = self.config.id;
        if let State::Leading(l) = &mut self.state {
            let members = self.conf.members();
            l.peers.retain(|id, _| members.contains(id));
            if !self.conf.is_voter(me) {
                self.become_looking();
            }
        }
    }
}
