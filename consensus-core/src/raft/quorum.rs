//! Majority arithmetic over a (possibly joint) configuration.
//!
//! A joint configuration decides only with a majority of `voters` **and** a majority of `outgoing`
//! (thesis §4.3); an empty half (the non-joint case) agrees with anything.

use std::collections::BTreeSet;

use crate::types::{ConfState, NodeId};

/// Outcome of counting votes (or acknowledgements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    /// A quorum said yes.
    Won,
    /// A quorum can no longer say yes.
    Lost,
    /// Not decided yet.
    Pending,
}

/// The highest index stored on a majority of `voters`, by `matched` (u64::MAX for an empty set).
fn majority_index(voters: &BTreeSet<NodeId>, matched: &impl Fn(NodeId) -> u64) -> u64 {
    let n = voters.len();
    if n == 0 {
        return u64::MAX;
    }
    // Groups are small: sort on the stack when possible, no allocation on the commit path.
    let mut stack = [0u64; 16];
    let mut heap = Vec::new();
    let values: &mut [u64] = if n <= stack.len() {
        &mut stack[..n]
    } else {
        heap.resize(n, 0);
        &mut heap
    };
    for (slot, &id) in values.iter_mut().zip(voters) {
        *slot = matched(id);
    }
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[n / 2]
}

/// The highest index a quorum of `conf` stores.
pub(crate) fn committed_index(conf: &ConfState, matched: impl Fn(NodeId) -> u64) -> u64 {
    majority_index(&conf.voters, &matched).min(majority_index(&conf.outgoing, &matched))
}

fn majority_vote(voters: &BTreeSet<NodeId>, vote: &impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for &id in voters {
        match vote(id) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if yes >= quorum {
        VoteResult::Won
    } else if yes + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Counts `vote` (None: not heard yet) over both halves of `conf`.
pub(crate) fn vote_result(conf: &ConfState, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    let incoming = majority_vote(&conf.voters, &vote);
    let outgoing = majority_vote(&conf.outgoing, &vote);
    match (incoming, outgoing) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_index_is_the_median_of_a_majority() {
        let conf = ConfState::with_voters([1, 2, 3]);
        assert_eq!(committed_index(&conf, |id| [0, 5, 3, 9][id as usize]), 5);
        let conf = ConfState::with_voters([1, 2, 3, 4]);
        assert_eq!(committed_index(&conf, |id| [0, 5, 3, 9, 1][id as usize]), 3);
    }

    #[test]
    fn joint_configuration_needs_both_majorities() {
        let conf = ConfState {
            voters: [1, 2, 3].into(),
            outgoing: [3, 4, 5].into(),
            ..ConfState::default()
        };
        // 1, 2 have index 10; 4, 5 only 2: the outgoing half holds the commit back.
        assert_eq!(committed_index(&conf, |id| if id <= 2 { 10 } else { 2 }), 2);
        assert_eq!(vote_result(&conf, |id| Some(id <= 3)), VoteResult::Lost);
        assert_eq!(
            vote_result(&conf, |id| (id != 5).then_some(true)),
            VoteResult::Won
        );
        assert_eq!(
            vote_result(&conf, |id| (id <= 2).then_some(true)),
            VoteResult::Pending
        );
    }
}
