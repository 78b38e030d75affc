//! Skeen's termination rule, as a pure function over the states a leader collected.

use serde::{Deserialize, Serialize};

/// A participant's state as far as termination is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalState {
    /// Voted yes, waiting.
    Uncertain,
    /// Pre-committed, waiting for DO-COMMIT.
    PreCommitted,
    /// Committed.
    Committed,
    /// Aborted (or never voted yes, and now never will).
    Aborted,
}

/// One participant's answer to a state request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReport {
    /// Its state.
    pub state: LocalState,
    /// It restarted in doubt: it may have missed what happened meanwhile.
    pub recovering: bool,
}

/// What a termination leader does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Tell everyone to commit.
    Commit,
    /// Tell everyone to abort.
    Abort,
    /// Pre-commit the uncertain ones, then commit.
    PreCommitThenCommit,
    /// Not enough information (a recovering leader without every report): ask again.
    Wait,
}

/// Applies the rule to the leader's own report and those collected; `participants` is how many
/// there are in all (a report from each means complete information).
pub fn decide(reports: &[StateReport], participants: usize, leader_recovering: bool) -> Decision {
    let any = |state: LocalState| reports.iter().any(|r| r.state == state);
    if any(LocalState::Committed) {
        return Decision::Commit;
    }
    if any(LocalState::Aborted) {
        return Decision::Abort;
    }
    let complete = reports.len() >= participants;
    let considered: Vec<&StateReport> = if complete {
        reports.iter().collect()
    } else if leader_recovering {
        return Decision::Wait;
    } else {
        // Skeen: only operational participants' states count; a recovering one may be stale.
        reports.iter().filter(|r| !r.recovering).collect()
    };
    if considered.is_empty() {
        return Decision::Wait;
    }
    let pre = considered
        .iter()
        .filter(|r| r.state == LocalState::PreCommitted)
        .count();
    if pre == 0 {
        Decision::Abort
    } else if pre == considered.len() {
        Decision::Commit
    } else {
        Decision::PreCommitThenCommit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(state: LocalState) -> StateReport {
        StateReport {
            state,
            recovering: false,
        }
    }

    #[test]
    fn the_four_rules_of_skeens_termination_protocol() {
        use LocalState::*;
        assert_eq!(
            decide(&[r(Uncertain), r(Committed)], 3, false),
            Decision::Commit
        );
        assert_eq!(
            decide(&[r(PreCommitted), r(Aborted)], 3, false),
            Decision::Abort
        );
        assert_eq!(
            decide(&[r(PreCommitted), r(Uncertain)], 3, false),
            Decision::PreCommitThenCommit
        );
        assert_eq!(
            decide(&[r(Uncertain), r(Uncertain)], 3, false),
            Decision::Abort
        );
    }

    #[test]
    fn a_recovering_state_counts_only_with_complete_information() {
        let stale = StateReport {
            state: LocalState::PreCommitted,
            recovering: true,
        };
        assert_eq!(
            decide(&[r(LocalState::Uncertain), stale], 3, false),
            Decision::Abort
        );
        assert_eq!(
            decide(
                &[r(LocalState::Uncertain), stale, r(LocalState::Uncertain)],
                3,
                false
            ),
            Decision::PreCommitThenCommit
        );
        assert_eq!(decide(&[stale], 3, true), Decision::Wait);
    }
}
