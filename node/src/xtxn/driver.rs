//! Running a [`CrossShardTxn`] or a [`Resolver`] over real shards: an abstract async
//! [`Shards`] interface (read a key at a group, propose a step to a group and get its applied
//! result), implemented by the node over its client connections and by tests in process.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use txn_2pc::two_phase::Config;

use super::coordinator::{Action, CrossShardTxn, Report};
use super::plan::TxnRequest;
use super::resolver::Resolver;
use crate::kv::PreparedTxn;
use crate::proto::{KeyValue, ServerError, Session, ShardTxnId, ShardTxnOp, ShardTxnResult};

/// What a coordinator or resolver needs of the cluster.
pub trait Shards: Clone + Send + Sync + 'static {
    /// The group holding `key`.
    fn locate(&self, key: &[u8]) -> u64;

    /// A linearizable read of `key` at `group`.
    fn read(
        &self,
        group: u64,
        key: Bytes,
    ) -> impl Future<Output = Result<Option<KeyValue>, ServerError>> + Send;

    /// Proposes `op` to `group` (through its leader, retried with the same session on
    /// transient errors) and returns the result its state machine applied. The session is
    /// `session` if given (a client request's commit), else a fresh one of the proposer's.
    fn propose(
        &self,
        group: u64,
        op: ShardTxnOp,
        session: Option<Session>,
    ) -> impl Future<Output = Result<ShardTxnResult, ServerError>> + Send;

    /// Takes `txn`'s END for `group` to send later with others ([`ShardTxnOp::EndAll`]); false:
    /// not taken, propose it now.
    fn defer_end(&self, _group: u64, _txn: ShardTxnId) -> bool {
        false
    }
}

/// The answer to one action.
enum Done {
    Read(Bytes, Result<Option<KeyValue>, ServerError>),
    Proposed(u64, ShardTxnOp, Result<ShardTxnResult, ServerError>),
}

fn spawn<S: Shards>(set: &mut JoinSet<Done>, shards: &S, action: Action) {
    if let Action::Propose {
        group,
        op: ShardTxnOp::End { txn },
    } = &action
    {
        // Nobody waits for an END's answer.
        if shards.defer_end(*group, *txn) {
            return;
        }
    }
    let shards = shards.clone();
    set.spawn(async move {
        match action {
            Action::Read { group, key } => {
                let result = shards.read(group, key.clone()).await;
                Done::Read(key, result)
            }
            Action::Propose { group, op } => {
                let result = shards.propose(group, op.clone(), None).await;
                Done::Proposed(group, op, result)
            }
            Action::ProposeAs { group, op, session } => {
                let result = shards.propose(group, op.clone(), Some(session)).await;
                Done::Proposed(group, op, result)
            }
        }
    });
}

/// After the answer, a transaction's remaining steps (DECIDEs, END) are driven for at most this
/// many vote timeouts; whatever is still open then is left to the participants' resolvers.
const FINISH_VOTE_TIMEOUTS: u64 = 10;

/// Coordinates `request` as transaction `txn` for the client request `origin` (its session: at
/// most one run of a request commits, see [`CrossShardTxn::with_origin`]) and returns the
/// client's answer as soon as it is known: an abort, or a commit once its decision is durable
/// (possibly an earlier run's); one engine tick per `tick`. The
/// steps still owed after the answer (the other participants' DECIDEs, END) are driven on in a
/// task of their own, so the answer never waits for them.
pub async fn run<S: Shards>(
    shards: S,
    txn: ShardTxnId,
    request: TxnRequest,
    origin: Option<Session>,
    config: Config,
    tick: Duration,
) -> Report {
    let locator = shards.clone();
    let finish_ticks = config.vote_timeout.max(1) * FINISH_VOTE_TIMEOUTS;
    let mut coordinator = CrossShardTxn::new(txn, request, |k| locator.locate(k), config);
    if let Some(session) = origin {
        coordinator = coordinator.with_origin(session);
    }
    let mut set = JoinSet::new();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for action in coordinator.take_actions() {
            spawn(&mut set, &shards, action);
        }
        if let Some(report) = coordinator.report().cloned() {
            if coordinator.is_finished() {
                // Whatever is still in flight finishes on its own (detached, not aborted).
                set.detach_all();
            } else {
                tokio::spawn(finish(shards, coordinator, set, ticker, finish_ticks));
            }
            return report;
        }
        step(&mut coordinator, &mut set, &mut ticker).await;
    }
}

/// Drives an answered transaction until it is finished, for at most `max_ticks` ticks.
async fn finish<S: Shards>(
    shards: S,
    mut coordinator: CrossShardTxn,
    mut set: JoinSet<Done>,
    mut ticker: tokio::time::Interval,
    max_ticks: u64,
) {
    let mut ticks = 0;
    while !coordinator.is_finished() && ticks < max_ticks {
        if step(&mut coordinator, &mut set, &mut ticker).await {
            ticks += 1;
        }
        for action in coordinator.take_actions() {
            spawn(&mut set, &shards, action);
        }
    }
    set.detach_all();
}

/// Feeds the coordinator the next result or tick; true if it was a tick.
async fn step(
    coordinator: &mut CrossShardTxn,
    set: &mut JoinSet<Done>,
    ticker: &mut tokio::time::Interval,
) -> bool {
    tokio::select! {
        Some(done) = set.join_next() => {
            match done {
                Ok(Done::Read(key, result)) => coordinator.on_read(&key, result),
                Ok(Done::Proposed(group, op, result)) => coordinator.on_result(group, &op, result),
                Err(_) => {} // a task panicked or was cancelled: the timers retry
            }
            false
        }
        _ = ticker.tick() => {
            coordinator.tick();
            true
        }
    }
}

/// One resolver round for `group`: asks the coordinator shards about the transactions prepared
/// too long, fences and settles the staged ones, and proposes their decisions to `group` (until
/// the resolver has no follow-up left); returns how many were decided.
pub async fn resolve_round<S: Shards>(
    shards: &S,
    resolver: &mut Resolver,
    prepared: &BTreeMap<ShardTxnId, PreparedTxn>,
) -> usize {
    let mut decided = 0;
    let mut next = resolver.tick(prepared);
    while !next.is_empty() {
        let mut set = JoinSet::new();
        for (target, op) in next.drain(..) {
            spawn(&mut set, shards, Action::Propose { group: target, op });
        }
        while let Some(done) = set.join_next().await {
            if let Ok(Done::Proposed(group, op, Ok(result))) = done {
                if matches!(op, ShardTxnOp::Decide { .. }) {
                    decided += 1;
                }
                next.extend(resolver.on_result(group, &op, &result));
            }
        }
    }
    decided
}
