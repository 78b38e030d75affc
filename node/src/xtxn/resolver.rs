//! Termination of in-doubt transactions, sans-IO: a participant shard's leader watches the
//! transactions prepared on its shard; one still prepared `timeout` ticks after the leader
//! first saw it is asked about at its coordinator shard ([`ShardTxnOp::Resolve`]: the recorded
//! decision, or ABORT recorded by that request), and the answer is proposed to this shard as
//! [`ShardTxnOp::Decide`]. A new leader starts its timers afresh from the prepared state its log
//! replay rebuilt, so a leader change never loses an in-doubt transaction.

use std::collections::BTreeMap;

use crate::kv::PreparedTxn;
use crate::proto::{ShardTxnId, ShardTxnOp, ShardTxnResult};

/// Bugs a test plants to show the bank checker catches them.
#[cfg(any(test, feature = "planted-bugs"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolverBug {
    /// Aborts an in-doubt transaction locally instead of asking the coordinator shard.
    AbortWithoutAsking,
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
    }

    /// Advances one tick given the shard's prepared transactions; returns the proposals to make:
    /// `(group, op)`, a resolve at a coordinator shard (or, planted bug only, a local decide).
    pub fn tick(&mut self, prepared: &BTreeMap<ShardTxnId, PreparedTxn>) -> Vec<(u64, ShardTxnOp)> {
        self.now += 1;
        let now = self.now;
        self.seen.retain(|txn, _| prepared.contains_key(txn));
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

    /// The answer to a resolve: the decide to propose to this shard.
    pub fn on_result(&self, op: &ShardTxnOp, result: &ShardTxnResult) -> Option<(u64, ShardTxnOp)> {
        match (op, result) {
            (ShardTxnOp::Resolve { txn }, ShardTxnResult::Decision { outcome }) => Some((
                self.group,
                ShardTxnOp::Decide {
                    txn: *txn,
                    outcome: *outcome,
                },
            )),
            _ => None,
        }
    }
}
