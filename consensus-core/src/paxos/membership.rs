//! Membership changes, Paxos style: the configuration is itself chosen in the log.
//!
//! **Choice: a change chosen at slot `i` governs slots `> i` (Lamport's α = 1), and the leader
//! drains its pipeline behind it** — it lets no slot after an unchosen membership change into
//! the window. Why not α = window (a change at `i` effective at `i + α`, window ≤ α, no drain):
//! the snapshot metadata (and `Status::conf_state`) hold one configuration, the one after the
//! snapshot's last slot. With α > 1 the next α − 1 slots would still be governed by older
//! configurations that a compaction, a restart or a learner installing the snapshot would no
//! longer know; with α = 1 the configuration after slot `i` is exactly what a snapshot at `i`
//! records. The cost is one round trip of pipeline stall per change, which is rare. A stop-sign
//! (ending the log and starting a new instance) would cost the same stall plus a second log.
//!
//! Hence at any moment every slot in the leader's window shares one configuration (`conf`, the
//! one after the chosen prefix), and acceptances are counted against it. Phase 1 reaches a
//! majority of that configuration and of each one an accepted change it recovers leads to.
//! Only single-server changes are offered (joint consensus is Raft's tool; `InvalidConfChange`),
//! one pending at a time. A leader removed from the voters steps down once the change is chosen.

use super::{MultiPaxos, PaxosStorage};
use crate::error::Error;
use crate::types::{ConfChange, ConfState, EntryPayload, MemberChange, Proposed, Role};

/// The configuration after `change`, or why `change` is not allowed from `conf`.
pub(crate) fn apply_change(conf: &ConfState, change: &ConfChange) -> Result<ConfState, Error> {
    let ConfChange::Single(member_change) = change else {
        return Err(Error::InvalidConfChange {
            reason: "multi-paxos supports single-server membership changes only",
        });
    };
    if member_change.node() == 0 || member_change.node() > super::ballot::MAX_NODE_ID {
        return Err(Error::InvalidConfChange {
            reason: "node ids must be in 1..65536",
        });
    }
    let mut next = conf.clone();
    match *member_change {
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
            reason: "the configuration would have no voters",
        });
    }
    Ok(next)
}

impl<S: PaxosStorage> MultiPaxos<S> {
    pub(super) fn propose_membership(&mut self, change: ConfChange) -> Result<Proposed, Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(pending_index) = self.lead.pending_conf {
            return Err(Error::ConfChangePending { pending_index });
        }
        apply_change(&self.conf, &change)?;
        self.propose_payload(EntryPayload::ConfChange(change))
    }
}
