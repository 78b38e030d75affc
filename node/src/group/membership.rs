//! [`AppliedMembership`]: the group's membership as of the last entry its state machine applied,
//! followed entry by entry, so that anything decided at an entry (the members of a group a
//! split creates) is the same on every member whatever the engine's own view is at that moment
//! (it may already be past later changes of the same batch, or the configuration file may be
//! long out of date after membership changes).

use consensus_core::{ConfChange, ConfState};
use tracing::warn;

/// Membership as of the last applied entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppliedMembership {
    conf: ConfState,
}

impl AppliedMembership {
    /// Starts from the membership as of the applied index the group was opened at.
    pub(crate) fn new(conf: ConfState) -> Self {
        AppliedMembership { conf }
    }

    /// A snapshot was installed: membership is the one it records.
    pub(crate) fn installed(&mut self, conf: &ConfState) {
        self.conf = conf.clone();
    }

    /// A membership change entry was applied.
    pub(crate) fn applied(&mut self, change: &ConfChange) {
        match self.conf.after(change) {
            Ok(next) => self.conf = next,
            // The engine skips the same entry, on every member.
            Err(error) => warn!(%error, "membership change entry skipped"),
        }
    }

    /// The members a group split off here starts with: the voters (the incoming half if the
    /// group is joint; the outgoing ones are on their way out) and the learners.
    pub(crate) fn for_split(&self) -> ConfState {
        ConfState {
            voters: self.conf.voters.clone(),
            outgoing: Default::default(),
            learners: self.conf.learners.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use consensus_core::MemberChange;

    use super::*;

    #[test]
    fn a_split_after_membership_changes_takes_the_members_as_of_its_entry() {
        let mut members = AppliedMembership::new(ConfState::with_voters([1, 2, 3]));
        members.applied(&ConfChange::Single(MemberChange::AddVoter(4)));
        members.applied(&ConfChange::Single(MemberChange::Remove(3)));
        members.applied(&ConfChange::Single(MemberChange::AddLearner(5)));
        let conf = members.for_split();
        assert_eq!(
            conf.voters.iter().copied().collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert_eq!(conf.learners.iter().copied().collect::<Vec<_>>(), vec![5]);
        // An invalid entry (the last voter removed) changes nothing, as in the engine.
        let mut alone = AppliedMembership::new(ConfState::with_voters([1]));
        alone.applied(&ConfChange::Single(MemberChange::Remove(1)));
        assert_eq!(alone.for_split(), ConfState::with_voters([1]));
    }

    #[test]
    fn a_joint_group_splits_to_its_incoming_voters_and_a_snapshot_resets_the_view() {
        let mut members = AppliedMembership::new(ConfState::with_voters([1, 2, 3]));
        members.applied(&ConfChange::EnterJoint(vec![
            MemberChange::Remove(3),
            MemberChange::AddVoter(4),
        ]));
        assert_eq!(members.for_split(), ConfState::with_voters([1, 2, 4]));
        members.installed(&ConfState::with_voters([2, 3, 5]));
        assert_eq!(members.for_split(), ConfState::with_voters([2, 3, 5]));
    }
}
