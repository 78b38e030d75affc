//! Termination of in-doubt transactions, sans-IO: a participant shard's leader watches the
//! transactions prepared on its shard; one still prepared `timeout` ticks after the leader
//! first saw it is asked about at its coordinator shard ([`ShardTxnOp::Resolve`]: the recorded
//! decision, or ABORT recorded by that request), and the answer is proposed to this shard as
//! [`ShardTxnOp::Decide`]. A new leader starts its timers afresh from the prepared state its log
//! replay rebuilt, so a leader change never loses an in-doubt transaction.
//!
//! A transaction staged on its coordinator shard A (parallel commit, see [`crate::proto::xtxn`])
//! is not presumed aborted: A answers [`ShardTxnResult::InDoubt`] with its participants. It is
//! committed iff every participant holds a yes prepare; this shard (G) holds one, A holds its
//! own, so the resolver fences every other participant ([`ShardTxnOp::Fence`]: after it, one
//! that is not prepared never will be) and settles the outcome at A ([`ShardTxnOp::Settle`]:
//! COMMIT if all are prepared, else ABORT; the first decision recorded there wins). A's answer
//! is then decided here. Fence answers are stable (a prepare is held until A's decision, a
//! fence's refusal forever), so a lost one is simply asked again on the next round.

use std::collections::{BTreeMap, BTreeSet};

use crate::kv::PreparedTxn;
use crate::proto::{ShardOutcome, ShardTxnId, ShardTxnOp, ShardTxnResult};

/// Bugs a test plants to show the bank checker catches them.
#[cfg(any(test, feature = "planted-bugs"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolverBug {
    /// Aborts an in-doubt transaction locally instead of asking the coordinator shard.
    AbortWithoutAsking,
}

/// A staged transaction being fenced: the coordinator shard, the participants, and those whose
/// fence answer is still awaited.
#[derive(Debug)]
struct Fencing {
    coordinator: u64,
    participants: Vec<u64>,
    waiting: BTreeSet<u64>,
}

/// The in-doubt watcher of one shard (`group`).
#[derive(Debug)]
pub struct Resolver {
    group: u64,
    timeout: u64,
    retry: u64,
    now: u64,
    /// Prepared transactions seen: when first seen, when last asked about.
    seen: BTreeMap<ShardTxnId, (u64, Option<u64>)>,
    /// Staged transactions whose participants are being fenced.
    fencing: BTreeMap<ShardTxnId, Fencing>,
    #[cfg(any(test, feature = "planted-bugs"))]
    bug: Option<ResolverBug>,
}

impl Resolver {
    /// A watcher for `group` that asks after `timeout` ticks and again every `retry` ticks.
    pub fn new(group: u64, timeout: u64, retry: u64) -> Self {
        Resolver {
            group,
            timeout,
            retry: retry.max(1),
            now: 0,
            seen: BTreeMap::new(),
            fencing: BTreeMap::new(),
            #[cfg(any(test, feature = "planted-bugs"))]
            bug: None,
        }
    }

    /// Plants a bug (tests and the bank simulator only).
    #[cfg(any(test, feature = "planted-bugs"))]
    pub fn plant_bug(&mut self, bug: ResolverBug) {
        self.bug = Some(bug);
    }

    /// Forgets every timer (this member stopped leading; a new leader starts afresh).
    pub fn reset(&mut self) {
        self.seen.clear();
        self.fencing.clear();
    }

    /// Advances one tick given the shard's prepared transactions; returns the proposals to make:
    /// `(group, op)`, a resolve at a coordinator shard (or, planted bug only, a local decide).
    pub fn tick(&mut self, prepared: &BTreeMap<ShardTxnId, PreparedTxn>) -> Vec<(u64, ShardTxnOp)> {
        self.now += 1;
        let now = self.now;
        self.seen.retain(|txn, _| prepared.contains_key(txn));
        self.fencing.retain(|txn, _| prepared.contains_key(txn));
        let mut out = Vec::new();
        for (&txn, p) in prepared {
            let (first, asked) = self.seen.entry(txn).or_insert((now, None));
            let due = match asked {
                None => now - *first >= self.timeout,
                Some(at) => now - *at >= self.retry,
            };
            if !due {
                continue;
            }
            *asked = Some(now);
            #[cfg(any(test, feature = "planted-bugs"))]
            if self.bug == Some(ResolverBug::AbortWithoutAsking) {
                out.push((
                    self.group,
                    ShardTxnOp::Decide {
                        txn,
                        outcome: crate::proto::ShardOutcome::Abort,
                    },
                ));
                continue;
            }
            out.push((p.coordinator, ShardTxnOp::Resolve { txn }));
        }
        out
    }

    /// The answer to a proposal this resolver made to `group` (a resolve, a fence or a settle):
    /// the follow-up proposals, `(group, op)` — fences and a settle for a staged transaction, the
    /// decide to propose to this shard once the outcome is known.
    pub fn on_result(
        &mut self,
        group: u64,
        op: &ShardTxnOp,
        result: &ShardTxnResult,
    ) -> Vec<(u64, ShardTxnOp)> {
        let decide = |txn: ShardTxnId, outcome: ShardOutcome| {
            vec![(self.group, ShardTxnOp::Decide { txn, outcome })]
        };
        match (op, result) {
            (ShardTxnOp::Resolve { txn }, ShardTxnResult::Decision { outcome })
            | (ShardTxnOp::Settle { txn, .. }, ShardTxnResult::Committed { outcome, .. }) => {
                self.fencing.remove(txn);
                decide(*txn, *outcome)
            }
            (ShardTxnOp::Resolve { txn }, ShardTxnResult::InDoubt { participants }) => {
                let waiting: BTreeSet<u64> = participants
                    .iter()
                    .copied()
                    .filter(|&g| g != group && g != self.group)
                    .collect();
                if waiting.is_empty() {
                    // The coordinator shard staged it and this shard holds its prepare: that is
                    // every participant.
                    self.fencing.remove(txn);
                    return vec![(group, settle(*txn, participants, ShardOutcome::Commit))];
                }
                let fences = waiting
                    .iter()
                    .map(|&g| (g, ShardTxnOp::Fence { txn: *txn }))
                    .collect();
                self.fencing.insert(
                    *txn,
                    Fencing {
                        coordinator: group,
                        participants: participants.clone(),
                        waiting,
                    },
                );
                fences
            }
            (ShardTxnOp::Fence { txn }, ShardTxnResult::Fenced { prepared }) => {
                let Some(fencing) = self.fencing.get_mut(txn) else {
                    return Vec::new();
                };
                fencing.waiting.remove(&group);
                if *prepared && !fencing.waiting.is_empty() {
                    return Vec::new();
                }
                let outcome = if *prepared {
                    ShardOutcome::Commit
                } else {
                    // This participant will never prepare it: the transaction cannot commit.
                    ShardOutcome::Abort
                };
                let Some(fencing) = self.fencing.remove(txn) else {
                    return Vec::new();
                };
                vec![(
                    fencing.coordinator,
                    settle(*txn, &fencing.participants, outcome),
                )]
            }
            _ => Vec::new(),
        }
    }
}

fn settle(txn: ShardTxnId, participants: &[u64], outcome: ShardOutcome) -> ShardTxnOp {
    ShardTxnOp::Settle {
        txn,
        participants: participants.to_vec(),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ShardOutcome::{Abort, Commit};

    fn in_doubt(participants: &[u64]) -> ShardTxnResult {
        ShardTxnResult::InDoubt {
            participants: participants.to_vec(),
        }
    }

    fn settle_of(out: &[(u64, ShardTxnOp)]) -> Option<(u64, ShardOutcome)> {
        match out {
            [(group, ShardTxnOp::Settle { outcome, .. })] => Some((*group, *outcome)),
            _ => None,
        }
    }

    #[test]
    fn a_staged_transaction_with_two_participants_is_settled_committed_without_fences() {
        // This shard (2) holds the prepare, the coordinator shard (1) staged it.
        let mut resolver = Resolver::new(2, 1, 1);
        let resolve = ShardTxnOp::Resolve { txn: 7 };
        let out = resolver.on_result(1, &resolve, &in_doubt(&[1, 2]));
        assert_eq!(settle_of(&out), Some((1, Commit)));
        let decide = resolver.on_result(
            1,
            &out[0].1,
            &ShardTxnResult::Committed {
                outcome: Abort,
                revision: 3,
            },
        );
        // The coordinator shard's answer is what this shard decides.
        assert_eq!(
            decide,
            vec![(
                2,
                ShardTxnOp::Decide {
                    txn: 7,
                    outcome: Abort
                }
            )]
        );
    }

    #[test]
    fn a_staged_transaction_is_committed_only_if_every_fenced_participant_is_prepared() {
        let mut resolver = Resolver::new(2, 1, 1);
        let resolve = ShardTxnOp::Resolve { txn: 7 };
        let fences = resolver.on_result(1, &resolve, &in_doubt(&[1, 2, 3, 4]));
        assert_eq!(
            fences,
            vec![
                (3, ShardTxnOp::Fence { txn: 7 }),
                (4, ShardTxnOp::Fence { txn: 7 })
            ]
        );
        let fence = ShardTxnOp::Fence { txn: 7 };
        let yes = ShardTxnResult::Fenced { prepared: true };
        let no = ShardTxnResult::Fenced { prepared: false };
        assert!(resolver.on_result(3, &fence, &yes).is_empty());
        assert_eq!(
            settle_of(&resolver.on_result(4, &fence, &yes)),
            Some((1, Commit))
        );
        // A second round: one participant not prepared aborts it at once.
        resolver.on_result(1, &resolve, &in_doubt(&[1, 2, 3, 4]));
        assert_eq!(
            settle_of(&resolver.on_result(4, &fence, &no)),
            Some((1, Abort))
        );
        assert!(resolver.on_result(3, &fence, &yes).is_empty());
    }

    #[test]
    fn a_recorded_decision_is_decided_here_as_before() {
        let mut resolver = Resolver::new(2, 1, 1);
        let out = resolver.on_result(
            1,
            &ShardTxnOp::Resolve { txn: 7 },
            &ShardTxnResult::Decision { outcome: Commit },
        );
        assert_eq!(
            out,
            vec![(
                2,
                ShardTxnOp::Decide {
                    txn: 7,
                    outcome: Commit
                }
            )]
        );
    }
}
