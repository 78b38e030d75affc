//! Membership changes: single-server (thesis §4.1) and joint consensus (thesis §4.3).
//!
//! A change is an entry in the log; it takes effect on a node when that node hands the entry out as
//! committed (as etcd-raft does). Safety rules: one change pending at a time; none before the leader's
//! first entry of its term commits; a single-server change adds or removes at most one voter; a joint
//! configuration is left by a second entry the leader proposes by itself; a leader that is no longer a
//! voter hands leadership to the most up-to-date voter and steps down.

use super::message::MessageBody;
use super::progress::Progress;
use super::quorum;
use super::Raft;
use super::RaftStorage;
use crate::error::Error;
use crate::types::{ConfChange, ConfState, EntryPayload, MemberChange, Proposed, Role};

fn edit(conf: &mut ConfState, change: MemberChange) {
    match change {
        MemberChange::AddVoter(id) => {
            conf.learners.remove(&id);
            conf.voters.insert(id);
        }
        MemberChange::AddLearner(id) => {
            conf.voters.remove(&id);
            conf.learners.insert(id);
        }
        MemberChange::Remove(id) => {
            conf.voters.remove(&id);
            conf.learners.remove(&id);
        }
    }
}

/// The configuration after `change`, or why `change` is not allowed from `conf`.
pub(crate) fn apply_change(conf: &ConfState, change: &ConfChange) -> Result<ConfState, Error> {
    let mut next = conf.clone();
    match change {
        ConfChange::Single(member_change) => {
            if conf.is_joint() {
                return Err(Error::InvalidConfChange {
                    reason: "cannot make a single-server change while in joint consensus",
                });
            }
            if member_change.node() == 0 {
                return Err(Error::InvalidConfChange {
                    reason: "node id 0 is reserved",
                });
            }
            edit(&mut next, *member_change);
        }
        ConfChange::EnterJoint(changes) => {
            if conf.is_joint() {
                return Err(Error::InvalidConfChange {
                    reason: "already in joint consensus",
                });
            }
            if changes.iter().any(|c| c.node() == 0) {
                return Err(Error::InvalidConfChange {
                    reason: "node id 0 is reserved",
                });
            }
            next.outgoing = conf.voters.clone();
            for change in changes {
                edit(&mut next, *change);
            }
        }
        ConfChange::LeaveJoint => {
            if !conf.is_joint() {
                return Err(Error::InvalidConfChange {
                    reason: "not in joint consensus",
                });
            }
            next.outgoing.clear();
        }
    }
    if next.voters.is_empty() {
        return Err(Error::InvalidConfChange {
            reason: "the configuration would have no voters",
        });
    }
    debug_assert!(
        next.is_joint()
            || conf.is_joint()
            || conf.voters.symmetric_difference(&next.voters).count() <= 1,
        "single-server change alters at most one voter"
    );
    Ok(next)
}

impl<S: RaftStorage> Raft<S> {
    pub(super) fn propose_membership(&mut self, change: ConfChange) -> Result<Proposed, Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(to) = self.lead_transferee {
            return Err(Error::TransferInProgress { to });
        }
        if self.pending_conf_index > self.log.applied {
            return Err(Error::ConfChangePending {
                pending_index: self.pending_conf_index,
            });
        }
        apply_change(&self.conf, &change)?;
        let proposed = self.append_entry(EntryPayload::ConfChange(change));
        self.pending_conf_index = proposed.index;
        Ok(proposed)
    }

    /// A committed membership change is handed out: it takes effect here.
    pub(super) fn apply_conf_change(&mut self, change: &ConfChange) {
        let next = match apply_change(&self.conf, change) {
            Ok(next) => next,
            Err(error) => {
                // Every node skips the same invalid entry (for example a second LeaveJoint).
                tracing::warn!(%error, "skipping a committed membership change");
                return;
            }
        };
        self.conf = next;
        let me = self.config.id;
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let members = self.conf.members();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(last + 1));
        }
        if self
            .lead_transferee
            .is_some_and(|id| !self.conf.is_voter(id))
        {
            self.lead_transferee = None;
        }
        if !self.conf.is_voter(me) {
            // Removed (or demoted): hand over to the most up-to-date voter, then step down.
            let successor = self
                .progress
                .iter()
                .filter(|(&id, _)| id != me && self.conf.is_voter(id))
                .max_by_key(|(_, p)| p.matched)
                .map(|(&id, p)| (id, p.matched));
            if let Some((id, matched)) = successor {
                if matched == last {
                    self.lease_forfeited = true;
                    self.send(id, MessageBody::TimeoutNow);
                }
            }
            let term = self.term;
            self.become_follower(term, None);
            return;
        }
        if matches!(change, ConfChange::EnterJoint(_)) && self.conf.is_joint() {
            let leave = self.append_entry(EntryPayload::ConfChange(ConfChange::LeaveJoint));
            self.pending_conf_index = leave.index;
        }
        // The quorum changed: the commit index may move.
        if self.maybe_commit() {
            self.broadcast_pending = true;
        }
        debug_assert!(
            quorum::committed_index(&self.conf, |_| 0) == 0 || self.conf.voters.is_empty()
        );
    }
}
