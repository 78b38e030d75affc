//! Ground truth and the invariants of atomic commitment, checked as events happen.
//!
//! The ledger outlives crashes: it is the simulator's knowledge, not any node's. A participant
//! whose prepared work is lost in a crash (no PREPARED record survived) counts as having
//! aborted — its resource manager cannot commit what it no longer has.

use std::collections::BTreeMap;

use crate::types::{NodeId, Outcome, TxnId, Vote};

#[derive(Debug, Default)]
struct Truth {
    participants: Vec<NodeId>,
    votes: BTreeMap<NodeId, Vote>,
    outcomes: BTreeMap<NodeId, Outcome>,
}

/// What every node voted and decided, and the violations seen so far.
#[derive(Debug, Default)]
pub struct CommitLedger {
    txns: BTreeMap<TxnId, Truth>,
    /// Invariant violations, in the order found.
    pub violations: Vec<String>,
}

impl CommitLedger {
    /// A transaction started over these participants.
    pub fn begin(&mut self, txn: TxnId, participants: &[NodeId]) {
        self.txns.entry(txn).or_default().participants = participants.to_vec();
    }

    /// A participant's resource manager voted (the first vote counts).
    pub fn voted(&mut self, txn: TxnId, node: NodeId, vote: Vote) {
        self.txns
            .entry(txn)
            .or_default()
            .votes
            .entry(node)
            .or_insert(vote);
    }

    /// What `node` voted first, if it did.
    pub fn vote_of(&self, txn: TxnId, node: NodeId) -> Option<Vote> {
        self.txns
            .get(&txn)
            .and_then(|t| t.votes.get(&node).copied())
    }

    /// What `node` decided or applied, if anything.
    pub fn outcome_of(&self, txn: TxnId, node: NodeId) -> Option<Outcome> {
        self.txns
            .get(&txn)
            .and_then(|t| t.outcomes.get(&node).copied())
    }

    /// Transactions `node` voted yes on.
    pub fn voted_yes(&self, node: NodeId) -> Vec<TxnId> {
        self.txns
            .iter()
            .filter(|(_, t)| t.votes.get(&node) == Some(&Vote::Yes))
            .map(|(txn, _)| *txn)
            .collect()
    }

    /// `node` decided or applied `outcome` for `txn`: checks that a decision never changes
    /// (crashes included), atomicity (no two nodes disagree) and validity (commit only if every
    /// participant voted yes or read-only).
    pub fn decided(&mut self, now: u64, txn: TxnId, node: NodeId, outcome: Outcome) {
        let truth = self.txns.entry(txn).or_default();
        if let Some(previous) = truth.outcomes.get(&node) {
            if *previous != outcome {
                self.violations.push(format!(
                    "t={now}: decision changed: node {node} had {previous} for {txn}, now {outcome}"
                ));
            }
            return;
        }
        if let Some((other, theirs)) = truth.outcomes.iter().find(|(_, o)| **o != outcome) {
            let past = |o: &Outcome| match o {
                Outcome::Commit => "committed",
                Outcome::Abort => "aborted",
            };
            self.violations.push(format!(
                "t={now}: atomicity: node {node} {outcome}s {txn} but node {other} {} it",
                past(theirs)
            ));
        }
        if outcome == Outcome::Commit {
            let missing: Vec<NodeId> = truth
                .participants
                .iter()
                .copied()
                .filter(|p| !matches!(truth.votes.get(p), Some(Vote::Yes | Vote::ReadOnly)))
                .collect();
            if !missing.is_empty() {
                self.violations.push(format!(
                    "t={now}: validity: node {node} commits {txn} without a yes vote from {missing:?}"
                ));
            }
        }
        truth.outcomes.insert(node, outcome);
    }

    /// Once faults stopped and the run settled: every yes-voter learnt the outcome.
    pub fn check_complete(&mut self) {
        for (txn, truth) in &self.txns {
            for (node, vote) in &truth.votes {
                if *vote == Vote::Yes && !truth.outcomes.contains_key(node) {
                    self.violations.push(format!(
                        "termination: node {node} voted yes on {txn} and never learnt the outcome"
                    ));
                }
            }
        }
    }

    /// (committed, aborted) transactions, by what any node decided.
    pub fn counts(&self) -> (usize, usize) {
        let mut committed = 0;
        let mut aborted = 0;
        for truth in self.txns.values() {
            if truth.outcomes.values().any(|o| *o == Outcome::Commit) {
                committed += 1;
            } else if !truth.outcomes.is_empty() {
                aborted += 1;
            }
        }
        (committed, aborted)
    }
}
