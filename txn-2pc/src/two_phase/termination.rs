//! Cooperative termination: how an in-doubt participant finds the outcome without its
//! coordinator.
//!
//! The rules, as pure functions so they read like the textbook (Bernstein, Hadzilacos &
//! Goodman, §7.4) and are tested alone:
//! - a peer that knows the outcome tells it;
//! - a peer that has not voted may abort unilaterally (it records ABORTED first, so it can never
//!   vote yes later) and says so;
//! - a prepared peer is as uncertain as the asker;
//! - when every peer is uncertain, nobody can decide: the transaction is **blocked** until the
//!   coordinator (or a peer that learns the outcome) answers. Guessing would break atomicity.

use std::collections::BTreeMap;

use super::Answer;
use crate::types::{NodeId, Outcome};

/// What one peer's state lets it answer to a decision request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKnowledge {
    /// The peer applied this outcome.
    Decided(Outcome),
    /// The peer is prepared and waits, like the asker.
    Prepared,
    /// The peer has not voted (and knows it has not): it may abort unilaterally.
    NotVoted,
    /// The peer cannot tell whether it voted (it restarted and has no record): it must not claim
    /// an outcome.
    Unknown,
}

/// The answer a peer gives, and whether it must first record a unilateral abort.
pub fn answer_peer(knowledge: PeerKnowledge) -> (Answer, bool) {
    match knowledge {
        PeerKnowledge::Decided(outcome) => (Answer::Decided(outcome), false),
        PeerKnowledge::Prepared | PeerKnowledge::Unknown => (Answer::Uncertain, false),
        PeerKnowledge::NotVoted => (Answer::Decided(Outcome::Abort), true),
    }
}

/// Where an in-doubt participant stands after the answers received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// Some peer knows: apply this outcome.
    Learned(Outcome),
    /// Every peer answered and every one is uncertain: blocked.
    Blocked,
    /// Still waiting for some peer.
    Waiting,
}

/// Combines the peers' answers (`peers` are all the other participants).
pub fn evaluate(peers: &[NodeId], answers: &BTreeMap<NodeId, Answer>) -> Termination {
    if let Some(outcome) = answers.values().find_map(|a| match a {
        Answer::Decided(outcome) => Some(*outcome),
        Answer::Uncertain => None,
    }) {
        return Termination::Learned(outcome);
    }
    if peers
        .iter()
        .all(|p| answers.get(p) == Some(&Answer::Uncertain))
    {
        Termination::Blocked
    } else {
        Termination::Waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_knows_the_outcome_tells_it() {
        let answers = BTreeMap::from([
            (2, Answer::Uncertain),
            (3, Answer::Decided(Outcome::Commit)),
        ]);
        assert_eq!(
            evaluate(&[2, 3], &answers),
            Termination::Learned(Outcome::Commit)
        );
    }

    #[test]
    fn a_peer_that_has_not_voted_aborts_and_says_so() {
        assert_eq!(
            answer_peer(PeerKnowledge::NotVoted),
            (Answer::Decided(Outcome::Abort), true)
        );
        assert_eq!(
            answer_peer(PeerKnowledge::Unknown),
            (Answer::Uncertain, false)
        );
    }

    #[test]
    fn all_uncertain_is_blocked_and_a_missing_answer_is_waiting() {
        let mut answers = BTreeMap::from([(2, Answer::Uncertain)]);
        assert_eq!(evaluate(&[2, 3], &answers), Termination::Waiting);
        answers.insert(3, Answer::Uncertain);
        assert_eq!(evaluate(&[2, 3], &answers), Termination::Blocked);
    }
}
