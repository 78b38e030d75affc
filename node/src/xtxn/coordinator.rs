//! The coordinator of one cross-shard transaction, sans-IO: it asks for reads and proposals
//! ([`Action`]), is told their results, and ticks. The phases are txn-2pc's
//! [`txn_2pc::two_phase::Coordinator`] (presumed abort): its PREPARE / COMMIT / ABORT messages
//! become proposals to the participant groups, its forced COMMIT record becomes the
//! [`ShardTxnOp::Commit`] entry on the coordinator shard's log (`forced` once that entry is
//! applied and answers commit; the same entry decides the coordinator shard's own part, so the
//! engine's COMMIT to that shard is acknowledged at once), its lazy END becomes
//! [`ShardTxnOp::End`].
//!
//! The client's answer ([`CrossShardTxn::report`]) is ready as soon as the commit is durable —
//! the COMMIT entry applied, every PREPARE before it voted yes — not after every participant
//! applied it: the DECIDEs to the other participants (and the END) are still to be driven, by
//! ticks and results, until [`CrossShardTxn::is_finished`]. A participant that has not applied
//! its DECIDE yet holds its keys locked and holds back reads of what it writes, so a read after
//! the answer never sees the state before the transaction (`kv::shard_txn`). An abort is
//! answered when the engine decides it (presumed abort: nothing to force). A commit's answer
//! carries every participant's revision the run learnt (yes votes' lock revisions, the
//! coordinator shard's after its entry; [`Report::shard_revisions`]) for the client's session.
//!
//! Before the engine starts, the coordinator reads every key the transaction compares, reads or
//! deletes (a key it only puts is locked at PREPARE, not read) and evaluates it ([`Plan`]). A participant that only reads votes read-only to the engine (no
//! phase 2 in txn-2pc's accounting) but still holds its read locks until the decision: it is
//! told the outcome as soon as the engine decides, which releases them. A transaction whose
//! participants all only read needs no decision record at all.
//!
//! Parallel commit: when every participant writes, there are at least two and the coordinator
//! shard is one, the engine is not used (`Staging`): the PREPAREs and the coordinator shard's
//! [`ShardTxnOp::StageFor`] go at once, the client is answered commit once that shard answered
//! `Staged` for this run and every other participant voted yes (one consensus round), then
//! [`ShardTxnOp::Commit`] records it there and, after its answer, the DECIDEs and END follow. A
//! no vote or a vote timeout settles ABORT at the coordinator shard ([`ShardTxnOp::Settle`])
//! before anyone is told; its answer is the outcome. See [`crate::proto::xtxn`] for why.
//!
//! Nothing here has to survive a crash of the coordinating node: every prepared participant
//! asks the coordinator shard after a timeout ([`super::resolver`]) and, if no decision is
//! recorded, records ABORT itself.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use txn_2pc::two_phase::{Config, Coordinator, CoordinatorEvent, CoordinatorRecord, Message};
use txn_2pc::{ForceToken, Outcome, TxnId, Vote, Write};

use super::plan::{Plan, TxnRequest};
use crate::proto::xtxn::NoVote;
use crate::proto::{
    KeyValue, ServerError, Session, ShardOutcome, ShardTxnId, ShardTxnOp, ShardTxnResult,
};
use crate::proto::{TxnOpResult, WriteResult};

/// Something the coordinator needs done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A linearizable read of `key` at `group`; answer with [`CrossShardTxn::on_read`].
    Read {
        /// The key's group.
        group: u64,
        /// The key.
        key: Bytes,
    },
    /// Propose `op` to `group` (through its leader); answer with [`CrossShardTxn::on_result`].
    Propose {
        /// The group.
        group: u64,
        /// The step.
        op: ShardTxnOp,
    },
    /// Propose `op` to `group` under `session` — the client's, for the commit of a client
    /// request ([`ShardTxnOp::CommitFor`]) — and answer with [`CrossShardTxn::on_result`].
    ProposeAs {
        /// The group.
        group: u64,
        /// The step.
        op: ShardTxnOp,
        /// The session to propose it under.
        session: Session,
    },
}

/// How a transaction ended, as its client learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The transaction; on a commit, the one that committed the request (an earlier run's, when
    /// a retried request met its first run's commit).
    pub txn: ShardTxnId,
    /// Commit or abort.
    pub outcome: ShardOutcome,
    /// Whether every compare held (the success branch ran); meaningful on commit.
    pub succeeded: bool,
    /// What each op of the branch did; meaningful on commit.
    pub results: Vec<TxnOpResult>,
    /// The coordinator shard's revision after the transaction (0 if it did not write there).
    pub revision: u64,
    /// On commit, for every participant group (and the coordinator shard), a revision at or
    /// past which every replica of it shows the transaction: its lock revision (the yes vote's;
    /// the locks hold reads of what it writes until the decision), or its revision after
    /// applying it. The client's session takes them, so its sequential reads see its own
    /// transaction on any replica. An answer taken from an earlier run of the request carries
    /// the revisions this run's abort DECIDEs were answered with, at every group of the request.
    pub shard_revisions: Vec<(u64, u64)>,
    /// The participant groups.
    pub participants: Vec<u64>,
    /// Why it aborted (a no vote, a timeout, a participant that resolved it first).
    pub reason: Option<String>,
    /// The outcome is not known: this run aborted but could not record that under the client's
    /// session in time, and an earlier run of the request may have committed. The client is
    /// answered `Timeout` and resends the request under the same session.
    pub unknown: bool,
}

impl Report {
    /// This report with the outcome marked unknown (the shard that decides did not answer in
    /// time; the resolvers settle it).
    fn unknown_outcome(&self) -> Self {
        Report {
            unknown: true,
            ..self.clone()
        }
    }

    /// An abort of `txn` among `participants`, for `reason`.
    fn aborted(txn: ShardTxnId, participants: Vec<u64>, reason: &str) -> Self {
        Report {
            txn,
            outcome: ShardOutcome::Abort,
            succeeded: false,
            results: Vec::new(),
            revision: 0,
            shard_revisions: Vec::new(),
            participants,
            reason: Some(reason.into()),
            unknown: false,
        }
    }

    /// The client acknowledged the request already (its session forgot it): the outcome is
    /// unknown here and left to the resolvers; nobody waits for this answer.
    fn answered_elsewhere(txn: ShardTxnId) -> Self {
        Report {
            unknown: true,
            ..Report::aborted(
                txn,
                Vec::new(),
                "the request was answered elsewhere; left to the resolvers",
            )
        }
    }

    /// This answer replaced by the commit of an earlier run `txn` of the same request, as the
    /// client's session at the coordinator shard `coordinator` holds it (its revision there;
    /// the other groups' are learnt while releasing, see `State::Releasing`).
    fn committed_by(
        self,
        txn: ShardTxnId,
        coordinator: u64,
        revision: u64,
        succeeded: bool,
        results: Vec<TxnOpResult>,
    ) -> Self {
        Report {
            txn,
            outcome: ShardOutcome::Commit,
            succeeded,
            results,
            revision,
            shard_revisions: vec![(coordinator, revision)],
            reason: None,
            ..self
        }
    }

    /// The client's answer: the transaction's result on commit, else a typed error to retry on.
    pub fn into_result(self) -> Result<WriteResult, ServerError> {
        if self.unknown {
            return Err(ServerError::Timeout);
        }
        match self.outcome {
            ShardOutcome::Commit => Ok(WriteResult::CrossShardTxn {
                succeeded: self.succeeded,
                revision: self.revision,
                results: self.results,
                shard_revisions: self.shard_revisions,
            }),
            ShardOutcome::Abort => Err(ServerError::TxnAborted(
                self.reason.unwrap_or_else(|| "aborted".into()),
            )),
        }
    }
}

/// Bugs a test plants to show the bank checker catches them.
#[cfg(any(test, feature = "planted-bugs"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorBug {
    /// Counts a participant's no vote as yes: commits without every yes vote.
    CommitWithoutAllYes,
    /// Answers an abort without recording it under the client's session: a run of the same
    /// request still in flight, or one that committed already, goes unseen.
    AbortWithoutSession,
    /// Staged path: answers commit once every other participant voted yes, without waiting for
    /// the coordinator shard's `Staged` (its own part may not hold).
    AnswerBeforeStaged,
    /// Answers a commit with the coordinator shard's revision only, not the other participants'
    /// lock revisions (the client's sequential reads there may miss its own transaction).
    OnlyCoordinatorRevision,
}

enum State {
    Reading {
        reads: BTreeMap<Bytes, Option<KeyValue>>,
        since: u64,
        last_sent: u64,
    },
    Committing(Box<Committing>),
    /// The parallel-commit path ([`ShardTxnOp::StageFor`]), driven here rather than by the engine.
    Staging(Box<Staging>),
    /// The outcome is known; before it is answered it is recorded under the client's session at
    /// `group` (`op`: [`ShardTxnOp::AbortFor`], or a read-only run's answer), which answers with
    /// an earlier run's outcome if one closed the request first.
    Fencing {
        group: u64,
        op: ShardTxnOp,
        report: Box<Report>,
        since: u64,
        last_sent: u64,
    },
    /// An earlier run of the request committed it: this run's answer is that commit, given once
    /// every group of the request answered this run's abort DECIDE. Each such DECIDE is applied
    /// after the earlier run's commit was recorded, so after its prepares (all applied before
    /// that), and the revision it answers with is one at which the group's replicas show the
    /// earlier run — what the answer carries for the client's session. No answer in time: the
    /// outcome is reported unknown (the client resends and meets the commit again), never a
    /// commit without those revisions.
    Releasing {
        report: Box<Report>,
        pending: BTreeSet<u64>,
        revisions: BTreeMap<u64, u64>,
        since: u64,
        last_sent: u64,
    },
    Done,
}

struct Committing {
    plan: Plan,
    coordinator: u64,
    engine: Coordinator,
    /// The single participant, when the engine runs one-phase commit.
    one_phase: Option<u64>,
    /// The coordinator shard is a participant: its PREPARE waits until every other participant
    /// voted yes and then goes with the COMMIT in one entry (`PrepareCommitFor`); this is when
    /// that entry was last sent. Once sent, only its answer (or a resolver at that shard)
    /// decides: the engine's timers stop, so it cannot abort the others behind its back.
    combined: Option<u64>,
    /// Participants other than the coordinator shard that voted yes or read-only.
    voted: BTreeSet<u64>,
    /// END was proposed to the coordinator shard.
    end_sent: bool,
    /// Participants that only read (voted read-only): told the outcome when it is decided.
    read_only: BTreeSet<u64>,
    /// Read-only participants told the outcome that have not confirmed yet (their read locks
    /// are released before the client hears back, so its next transaction does not meet them).
    releases: BTreeMap<u64, ShardOutcome>,
    releases_sent: u64,
    /// The engine reported the transaction finished.
    engine_finished: bool,
    /// The COMMIT entry applied and decided the coordinator shard's own part.
    decided_here: bool,
    /// This run's outcome is recorded under the client's session (its commit applied).
    recorded: bool,
    /// The decision record being proposed: its force token, when it was last sent.
    decision: Option<(ForceToken, u64)>,
    decided: Option<ShardOutcome>,
    revisions: BTreeMap<u64, u64>,
    reason: Option<String>,
}

/// The parallel-commit path: `StageFor` at the coordinator shard A and `Prepare` at every other
/// participant, sent at once. Committed iff A staged it and every other participant holds a yes
/// prepare, so the client is answered as soon as both are known — one consensus round. The
/// decision is then recorded at A (`Commit`), and only after A answered is anyone else told.
/// A no vote or a timeout: ABORT is settled at A first (a resolver may have committed it there
/// already: A's answer is the outcome).
struct Staging {
    plan: Plan,
    coordinator: u64,
    participants: Vec<u64>,
    /// Other participants that voted yes, with the lock revision each voted at (or, for one
    /// whose vote was missed and that a resolver's commit reached, the revision its DECIDE
    /// answered with).
    voted: BTreeMap<u64, u64>,
    /// A answered `Staged` for this transaction, at this revision.
    staged: Option<u64>,
    since: u64,
    last_sent: u64,
    phase: Phase,
    reason: Option<String>,
}

impl Staging {
    /// The client's answer's revisions: the coordinator shard's lock revision `staged` and the
    /// other participants' yes votes' (every replica at or past one holds the locks).
    fn shard_revisions(&self, staged: u64) -> Vec<(u64, u64)> {
        let mut revisions = self.voted.clone();
        revisions.insert(self.coordinator, staged);
        revisions.into_iter().collect()
    }
}

enum Phase {
    Voting,
    /// `outcome` proposed to A (`Commit` after a commit answer, else `Settle` abort); A's answer
    /// is the outcome recorded.
    Settling {
        outcome: ShardOutcome,
        since: u64,
    },
    /// A recorded `outcome`; the other participants' DECIDEs not confirmed yet.
    Deciding {
        outcome: ShardOutcome,
        pending: BTreeSet<u64>,
    },
}

/// One cross-shard transaction's coordinator.
pub struct CrossShardTxn {
    txn: ShardTxnId,
    request: TxnRequest,
    groups: BTreeMap<Bytes, u64>,
    /// The keys read before the engine starts ([`TxnRequest::read_keys`]).
    to_read: BTreeSet<Bytes>,
    config: Config,
    now: u64,
    state: State,
    /// The client's answer, once there is one (possibly before the state is `Done`).
    answer: Option<Report>,
    /// The client request's session, under which the commit is proposed.
    origin: Option<Session>,
    actions: Vec<Action>,
    anomalies: Vec<String>,
    #[cfg(any(test, feature = "planted-bugs"))]
    bug: Option<CoordinatorBug>,
}

impl CrossShardTxn {
    /// Starts coordinating `request` as transaction `txn` (an id never used before), with
    /// `locate` naming each key's group. Asks for the reads first.
    pub fn new(
        txn: ShardTxnId,
        request: TxnRequest,
        locate: impl Fn(&[u8]) -> u64,
        config: Config,
    ) -> Self {
        let groups: BTreeMap<Bytes, u64> = request
            .keys()
            .into_iter()
            .map(|k| {
                let g = locate(&k);
                (k, g)
            })
            .collect();
        let to_read = request.read_keys();
        let mut this = CrossShardTxn {
            txn,
            request,
            to_read,
            groups,
            config,
            now: 0,
            state: State::Reading {
                reads: BTreeMap::new(),
                since: 0,
                last_sent: 0,
            },
            answer: None,
            origin: None,
            actions: Vec::new(),
            anomalies: Vec::new(),
            #[cfg(any(test, feature = "planted-bugs"))]
            bug: None,
        };
        if this.to_read.is_empty() {
            this.start(&BTreeMap::new());
        } else {
            this.send_reads();
        }
        this
    }

    /// Runs the transaction for the client request `session` names: its commit is proposed
    /// under that session, so of several runs of one request (the client retried it after a
    /// lost reply) at most one commits and every run answers with that one's result.
    pub fn with_origin(mut self, session: Session) -> Self {
        self.origin = Some(session);
        // Nothing to read: `new` started already, and its `StageFor` must go under the session.
        let before = self.actions.len();
        self.actions.retain(|a| {
            !matches!(
                a,
                Action::Propose {
                    op: ShardTxnOp::StageFor { .. },
                    ..
                }
            )
        });
        if self.actions.len() != before {
            self.send_stage_for();
        }
        self
    }

    /// Plants a bug (tests and `cargo xtask sim --protocol bank --xtxn-bug` only).
    #[cfg(any(test, feature = "planted-bugs"))]
    pub fn plant_bug(&mut self, bug: CoordinatorBug) {
        self.bug = Some(bug);
    }

    /// The transaction id.
    pub fn txn(&self) -> ShardTxnId {
        self.txn
    }

    /// What to do now.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The client's answer, once it is known: an abort, or a commit made durable (the other
    /// participants may still be applying it; see [`CrossShardTxn::is_finished`]).
    pub fn report(&self) -> Option<&Report> {
        self.answer.as_ref()
    }

    /// Whether nothing is left to drive: every participant applied the outcome (or it was an
    /// abort), read locks are released, END is sent. Until then, keep ticking and feeding results.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn done(&mut self, report: Report) {
        if self.answer.is_none() {
            self.answer_with(report);
        }
        self.state = State::Done;
    }

    /// Sets the client's answer.
    fn answer_with(&mut self, #[allow(unused_mut)] mut report: Report) {
        #[cfg(any(test, feature = "planted-bugs"))]
        if self.bug == Some(CoordinatorBug::OnlyCoordinatorRevision) {
            let groups = &self.groups;
            let coordinator = self
                .request
                .coordinator(|k| groups.get(k).copied().unwrap_or(0));
            report
                .shard_revisions
                .retain(|(group, _)| Some(*group) == coordinator);
        }
        self.answer = Some(report);
    }

    /// Results that contradict the protocol (a participant answering abort to a commit): empty
    /// unless something is broken.
    pub fn anomalies(&self) -> &[String] {
        &self.anomalies
    }

    fn send_reads(&mut self) {
        let State::Reading { reads, .. } = &self.state else {
            return;
        };
        for key in &self.to_read {
            if !reads.contains_key(key) {
                self.actions.push(Action::Read {
                    group: self.groups.get(key).copied().unwrap_or(0),
                    key: key.clone(),
                });
            }
        }
    }

    /// The answer to an [`Action::Read`].
    pub fn on_read(&mut self, key: &Bytes, result: Result<Option<KeyValue>, ServerError>) {
        let State::Reading { reads, .. } = &mut self.state else {
            return;
        };
        let Ok(kv) = result else {
            return; // retried on a later tick
        };
        if !self.to_read.contains(key) {
            return;
        }
        reads.insert(key.clone(), kv);
        if reads.len() == self.to_read.len() {
            let reads = std::mem::take(reads);
            self.start(&reads);
        }
    }

    fn start(&mut self, reads: &BTreeMap<Bytes, Option<KeyValue>>) {
        let groups = &self.groups;
        let plan = Plan::new(&self.request, reads, |k| {
            groups.get(k).copied().unwrap_or(0)
        });
        let participants: Vec<u64> = plan.parts.keys().copied().collect();
        // Fixed by the request's keys, not by this run's plan: every run of a request records
        // its outcome under the client's session at the same group.
        let coordinator = self
            .request
            .coordinator(|k| groups.get(k).copied().unwrap_or(0))
            .unwrap_or(0);
        if participants.is_empty() {
            // Nothing compared, nothing in the branch: commits trivially.
            self.done(Report {
                txn: self.txn,
                outcome: ShardOutcome::Commit,
                succeeded: plan.succeeded,
                results: plan.results,
                revision: 0,
                shard_revisions: Vec::new(),
                participants,
                reason: None,
                unknown: false,
            });
            return;
        }
        let mut engine = Coordinator::new(coordinator, self.config.clone());
        // The id is fresh and the participants distinct and non-empty: begin cannot refuse.
        if let Err(error) = engine.begin(TxnId(self.txn), &participants) {
            self.anomalies.push(format!("begin refused: {error}"));
        }
        // Parallel commit when the coordinator shard is one of several participants that all
        // write (a read-only participant takes the engine's path: its read locks are released
        // before the answer there).
        if participants.len() >= 2
            && plan.parts.contains_key(&coordinator)
            && plan.parts.values().all(|part| !part.writes.is_empty())
        {
            self.state = State::Staging(Box::new(Staging {
                plan,
                coordinator,
                participants,
                voted: BTreeMap::new(),
                staged: None,
                since: self.now,
                last_sent: self.now,
                phase: Phase::Voting,
                reason: None,
            }));
            self.send_staging(&BTreeSet::new());
            return;
        }
        let one_phase = (participants.len() == 1).then(|| participants[0]);
        self.state = State::Committing(Box::new(Committing {
            plan,
            coordinator,
            engine,
            one_phase,
            combined: None,
            voted: BTreeSet::new(),
            end_sent: false,
            read_only: BTreeSet::new(),
            releases: BTreeMap::new(),
            releases_sent: 0,
            engine_finished: false,
            decided_here: false,
            recorded: false,
            decision: None,
            decided: None,
            revisions: BTreeMap::new(),
            reason: None,
        }));
        self.drain();
    }

    /// The answer to an [`Action::Propose`] of `op` to `group`.
    pub fn on_result(
        &mut self,
        group: u64,
        op: &ShardTxnOp,
        result: Result<ShardTxnResult, ServerError>,
    ) {
        if op.txn() != self.txn {
            return;
        }
        if let State::Fencing { op: fence, .. } = &self.state {
            if op == fence {
                self.on_fence_result(result);
            }
            return;
        }
        if let State::Releasing {
            report,
            pending,
            revisions,
            ..
        } = &mut self.state
        {
            if let (ShardTxnOp::Decide { .. }, Ok(ShardTxnResult::Decided { revision, .. })) =
                (op, result)
            {
                if pending.remove(&group) {
                    revisions.insert(group, revision);
                }
                if pending.is_empty() {
                    let mut report = (**report).clone();
                    for (&group, &revision) in revisions.iter() {
                        match report.shard_revisions.iter_mut().find(|(g, _)| *g == group) {
                            Some((_, seen)) => *seen = (*seen).max(revision),
                            None => report.shard_revisions.push((group, revision)),
                        }
                    }
                    report.shard_revisions.sort_unstable();
                    self.done(report);
                }
            }
            return;
        }
        if matches!(self.state, State::Staging(_)) {
            self.on_staging_result(group, op, result);
            return;
        }
        if !matches!(self.state, State::Committing(_)) {
            return;
        }
        let result = match (op, result) {
            (
                ShardTxnOp::CommitFor { .. } | ShardTxnOp::PrepareCommitFor { .. },
                Err(ServerError::SessionExpired { .. }),
            ) => {
                // The client acknowledged this request already: another run answered it, or it
                // gave up. Whether this run's commit was applied before is unknown here (the
                // session forgot it), so nothing is decided: the participants' resolvers ask
                // the coordinator shard, which knows. Nobody waits for this answer.
                self.done(Report::answered_elsewhere(self.txn));
                return;
            }
            (_, Ok(result)) => result,
            // Lost or refused: the engine's timers retry or abort.
            (_, Err(_)) => return,
        };
        let State::Committing(c) = &mut self.state else {
            return;
        };
        let txn = TxnId(self.txn);
        match (op, result) {
            (
                ShardTxnOp::Prepare { writes, .. },
                vote @ (ShardTxnResult::Vote { .. } | ShardTxnResult::Yes { .. }),
            ) => {
                if let Some(revision) = yes_revision(&vote) {
                    let seen = c.revisions.entry(group).or_default();
                    *seen = (*seen).max(revision);
                }
                let no = match vote {
                    ShardTxnResult::Vote { no } => no,
                    _ => None,
                };
                if let Some(why) = &no {
                    c.reason.get_or_insert_with(|| describe(group, why));
                }
                if c.one_phase == Some(group) {
                    match no {
                        // The commit point: recorded at the coordinator shard (under the client's
                        // session), which decides this part too when it is that shard.
                        None => self.actions.push(commit_action(
                            self.txn,
                            self.origin,
                            c.coordinator,
                            &c.plan,
                        )),
                        Some(_) => {
                            let _ = c.engine.step(
                                group,
                                Message::OnePhaseOutcome {
                                    txn,
                                    outcome: Outcome::Abort,
                                },
                            );
                        }
                    }
                } else {
                    #[allow(unused_mut)]
                    let mut vote = match no {
                        None if writes.is_empty() => Vote::ReadOnly,
                        None => Vote::Yes,
                        Some(_) => Vote::No,
                    };
                    #[cfg(any(test, feature = "planted-bugs"))]
                    if self.bug == Some(CoordinatorBug::CommitWithoutAllYes) && vote == Vote::No {
                        vote = Vote::Yes;
                    }
                    if vote == Vote::ReadOnly {
                        c.read_only.insert(group);
                    }
                    if vote != Vote::No {
                        c.voted.insert(group);
                    }
                    // A repeated vote is ignored by the engine; a changed one is its error.
                    let _ = c.engine.step(group, Message::Vote { txn, vote });
                }
            }
            (
                ShardTxnOp::Decide { outcome: asked, .. },
                ShardTxnResult::Decided { outcome, revision },
            ) => {
                c.revisions.insert(group, revision);
                if c.read_only.contains(&group) {
                    c.releases.remove(&group);
                }
                if c.one_phase == Some(group) {
                    if outcome == ShardOutcome::Commit && group != c.coordinator {
                        // Applied: the coordinator shard may forget the decision.
                        self.actions.push(Action::Propose {
                            group: c.coordinator,
                            op: ShardTxnOp::End { txn: self.txn },
                        });
                    }
                    let outcome = match outcome {
                        ShardOutcome::Commit => Outcome::Commit,
                        ShardOutcome::Abort => Outcome::Abort,
                    };
                    let _ = c
                        .engine
                        .step(group, Message::OnePhaseOutcome { txn, outcome });
                } else if *asked == ShardOutcome::Commit && !c.read_only.contains(&group) {
                    if outcome != ShardOutcome::Commit {
                        self.anomalies.push(format!(
                            "group {group} answered {outcome:?} to a commit of txn {}",
                            self.txn
                        ));
                    }
                    let _ = c.engine.step(group, Message::Ack { txn });
                }
            }
            (
                ShardTxnOp::CommitFor { .. } | ShardTxnOp::PrepareCommitFor { .. },
                ShardTxnResult::CommittedFor {
                    txn: first,
                    revision,
                    succeeded,
                    results,
                },
            ) if first != self.txn => {
                // An earlier run of this request committed: that is the client's answer, and
                // this run's prepares are dropped.
                let coordinator = c.coordinator;
                let report = self
                    .abort_all("an earlier run of the request committed")
                    .committed_by(first, coordinator, revision, succeeded, results);
                self.answer_after_release(report);
                return;
            }
            (
                ShardTxnOp::CommitFor { .. } | ShardTxnOp::PrepareCommitFor { .. },
                ShardTxnResult::Decision { .. },
            ) => {
                // An earlier run's abort closed the request: this run commits nothing.
                let report = self.abort_all("an earlier run of the request aborted");
                self.done(report);
                return;
            }
            (
                ShardTxnOp::PrepareCommitFor { .. },
                ShardTxnResult::CommittedFor { revision, .. },
            ) => {
                if c.combined.take().is_none() {
                    return; // a repeated answer
                }
                // Prepared, committed and applied here in one entry: the decision is durable.
                c.revisions.insert(group, revision);
                c.recorded = true;
                c.decided_here = true;
                if c.one_phase == Some(group) {
                    let outcome = Outcome::Commit;
                    let _ = c
                        .engine
                        .step(group, Message::OnePhaseOutcome { txn, outcome });
                } else {
                    let writes = c
                        .plan
                        .parts
                        .get(&group)
                        .is_some_and(|p| !p.writes.is_empty());
                    let vote = if writes { Vote::Yes } else { Vote::ReadOnly };
                    if vote == Vote::ReadOnly {
                        c.read_only.insert(group);
                    }
                    let _ = c.engine.step(group, Message::Vote { txn, vote });
                }
            }
            (ShardTxnOp::PrepareCommitFor { .. }, ShardTxnResult::Committed { .. }) => {
                // The coordinator shard's part did not hold (or a resolver aborted first): ABORT
                // is recorded there, the others drop theirs.
                let report = self.abort_all(
                    "the coordinator shard's part could not be prepared (a conflict or a changed key)",
                );
                self.done(report);
                return;
            }
            (ShardTxnOp::CommitFor { .. }, ShardTxnResult::CommittedFor { revision, .. })
                if c.one_phase.is_some() =>
            {
                let only = c.one_phase.unwrap_or(group);
                c.recorded = true;
                if only == group {
                    // The same entry decided the participant's part.
                    c.revisions.insert(group, revision);
                    let outcome = Outcome::Commit;
                    let _ = c
                        .engine
                        .step(only, Message::OnePhaseOutcome { txn, outcome });
                } else {
                    self.actions.push(Action::Propose {
                        group: only,
                        op: ShardTxnOp::Decide {
                            txn: self.txn,
                            outcome: ShardOutcome::Commit,
                        },
                    });
                }
            }
            (ShardTxnOp::CommitFor { .. }, ShardTxnResult::Committed { .. })
                if c.one_phase.is_some() =>
            {
                // A resolver recorded ABORT first.
                let only = c.one_phase.unwrap_or(group);
                c.reason
                    .get_or_insert_with(|| "resolved as aborted before its commit".into());
                let outcome = Outcome::Abort;
                let _ = c
                    .engine
                    .step(only, Message::OnePhaseOutcome { txn, outcome });
            }
            (ShardTxnOp::Commit { .. } | ShardTxnOp::CommitFor { .. }, result) => {
                let (outcome, revision) = match result {
                    ShardTxnResult::Committed { outcome, revision } => (outcome, revision),
                    ShardTxnResult::CommittedFor { revision, .. } => {
                        (ShardOutcome::Commit, revision)
                    }
                    _ => return, // not an answer to a commit
                };
                let Some((token, _)) = c.decision.take() else {
                    return; // a repeated answer
                };
                match outcome {
                    ShardOutcome::Commit => {
                        // Durable; the entry decided this shard's part too (its revision).
                        c.revisions.insert(group, revision);
                        c.decided_here = true;
                        c.recorded = true;
                        if let Err(error) = c.engine.forced(token) {
                            self.anomalies.push(format!("forced refused: {error}"));
                        }
                    }
                    ShardOutcome::Abort => {
                        // A participant asked first and recorded ABORT: that is the outcome.
                        let report = self
                            .abort_all("a participant resolved the transaction as aborted first");
                        self.done(report);
                        return;
                    }
                }
            }
            _ => {}
        }
        self.drain();
    }

    /// Answers `report`, an abort: for a client request only once it is recorded under the
    /// request's session at `group` (the coordinator shard), so that no other run of the request
    /// commits later — or, if one did already, with that run's commit.
    fn answer_abort(&mut self, report: Report, group: u64) {
        #[cfg(any(test, feature = "planted-bugs"))]
        if self.bug == Some(CoordinatorBug::AbortWithoutSession) {
            self.done(report);
            return;
        }
        let op = ShardTxnOp::AbortFor { txn: self.txn };
        self.answer_recorded(report, group, op);
    }

    /// Answers `report` once `op` — the request's outcome, under the client's session — is
    /// applied at `group`; without a client session, at once.
    fn answer_recorded(&mut self, report: Report, group: u64, op: ShardTxnOp) {
        let Some(session) = self.origin else {
            self.done(report);
            return;
        };
        self.actions.push(Action::ProposeAs {
            group,
            op: op.clone(),
            session,
        });
        self.state = State::Fencing {
            group,
            op,
            report: Box::new(report),
            since: self.now,
            last_sent: self.now,
        };
    }

    fn on_fence_result(&mut self, result: Result<ShardTxnResult, ServerError>) {
        let State::Fencing { report, group, .. } = &mut self.state else {
            return;
        };
        let group = *group;
        let mut report = (**report).clone();
        match result {
            // An earlier run of the request is staged and not settled yet: asked again on a tick
            // until its final answer replaces this one.
            Ok(ShardTxnResult::Staged { .. }) => return,
            // This run's answer is the request's (a read-only run's, recorded now).
            Ok(ShardTxnResult::CommittedFor { txn, .. }) if txn == self.txn => {}
            Ok(ShardTxnResult::CommittedFor {
                txn,
                revision,
                succeeded,
                results,
            }) => {
                // An earlier run committed the request: that is the answer.
                let report = report.committed_by(txn, group, revision, succeeded, results);
                self.answer_after_release(report);
                return;
            }
            Ok(ShardTxnResult::Decision {
                outcome: ShardOutcome::Commit,
            }) => {
                self.anomalies.push(format!(
                    "txn {}: the abort of this run found it committed",
                    self.txn
                ));
                report.unknown = true;
            }
            // This run's abort recorded now, or an earlier run's: the request is aborted.
            Ok(_) => {
                if report.outcome == ShardOutcome::Commit {
                    report.outcome = ShardOutcome::Abort;
                    report.results = Vec::new();
                    report.reason = Some("an earlier run of the request aborted".into());
                }
            }
            // The client acknowledged the request already: nobody waits for this answer.
            Err(ServerError::SessionExpired { .. }) => report.unknown = true,
            Err(_) => return, // resent on a tick
        }
        self.done(report);
    }

    /// `report` is an earlier run's commit: this run's abort DECIDE goes to every group of the
    /// request, and the answer waits for their revisions (`State::Releasing`).
    fn answer_after_release(&mut self, report: Report) {
        let pending: BTreeSet<u64> = self.groups.values().copied().collect();
        self.state = State::Releasing {
            report: Box::new(report),
            pending,
            revisions: BTreeMap::new(),
            since: self.now,
            last_sent: self.now,
        };
        self.send_releases();
    }

    fn send_releases(&mut self) {
        let State::Releasing { pending, .. } = &self.state else {
            return;
        };
        for &group in pending {
            self.actions.push(Action::Propose {
                group,
                op: ShardTxnOp::Decide {
                    txn: self.txn,
                    outcome: ShardOutcome::Abort,
                },
            });
        }
    }

    /// Asks every participant to drop the transaction and returns the abort answer (the
    /// resolvers finish what these proposals miss).
    fn abort_all(&mut self, reason: &str) -> Report {
        let parts: Vec<u64> = match &self.state {
            State::Committing(c) => c.plan.parts.keys().copied().collect(),
            _ => Vec::new(),
        };
        let succeeded = match &self.state {
            State::Committing(c) => c.plan.succeeded,
            _ => false,
        };
        for &group in &parts {
            self.actions.push(Action::Propose {
                group,
                op: ShardTxnOp::Decide {
                    txn: self.txn,
                    outcome: ShardOutcome::Abort,
                },
            });
        }
        Report {
            succeeded,
            ..Report::aborted(self.txn, parts, reason)
        }
    }

    /// Staged path: (re)sends `StageFor` to the coordinator shard unless it answered, and
    /// `Prepare` to every other participant not in `skip`.
    fn send_staging(&mut self, skip: &BTreeSet<u64>) {
        let State::Staging(st) = &self.state else {
            return;
        };
        let mut stage = false;
        for &group in &st.participants {
            let part = st.plan.parts.get(&group).cloned().unwrap_or_default();
            if group == st.coordinator {
                stage = st.staged.is_none();
            } else if !st.voted.contains_key(&group) && !skip.contains(&group) {
                self.actions.push(Action::Propose {
                    group,
                    op: ShardTxnOp::Prepare {
                        txn: self.txn,
                        coordinator: st.coordinator,
                        participants: st.participants.clone(),
                        expected: part.expected,
                        writes: part.writes,
                    },
                });
            }
        }
        if stage {
            self.send_stage_for();
        }
    }

    /// Staged path: `StageFor` to the coordinator shard, under the client's session.
    fn send_stage_for(&mut self) {
        let State::Staging(st) = &self.state else {
            return;
        };
        let group = st.coordinator;
        let part = st.plan.parts.get(&group).cloned().unwrap_or_default();
        let op = ShardTxnOp::StageFor {
            txn: self.txn,
            coordinator: group,
            participants: st.participants.clone(),
            expected: part.expected,
            writes: part.writes,
            succeeded: st.plan.succeeded,
            results: st.plan.results.clone(),
            origin: self.origin,
        };
        self.actions.push(match self.origin {
            Some(session) => Action::ProposeAs { group, op, session },
            None => Action::Propose { group, op },
        });
    }

    /// Staged path: proposes `outcome` to the coordinator shard (`Commit`, or `Settle` abort).
    fn send_settle(&mut self, outcome: ShardOutcome) {
        let State::Staging(st) = &self.state else {
            return;
        };
        let op = match outcome {
            ShardOutcome::Commit => ShardTxnOp::Commit {
                txn: self.txn,
                participants: st.participants.clone(),
            },
            ShardOutcome::Abort => ShardTxnOp::Settle {
                txn: self.txn,
                participants: st.participants.clone(),
                outcome,
            },
        };
        self.actions.push(Action::Propose {
            group: st.coordinator,
            op,
        });
    }

    /// Staged path: from voting to settling `outcome` at the coordinator shard.
    fn start_settle(&mut self, outcome: ShardOutcome) {
        let now = self.now;
        let State::Staging(st) = &mut self.state else {
            return;
        };
        if !matches!(st.phase, Phase::Voting) {
            return;
        }
        st.phase = Phase::Settling {
            outcome,
            since: now,
        };
        st.last_sent = now;
        self.send_settle(outcome);
    }

    /// Staged path: this run's StageFor met another run's answer in the client's session (or
    /// the session is gone): this run drops its prepares and answers with that.
    fn staging_superseded(&mut self, result: ShardTxnResult) {
        let State::Staging(st) = &self.state else {
            return;
        };
        let succeeded = st.plan.succeeded;
        let participants = st.participants.clone();
        let coordinator = st.coordinator;
        for &group in &participants {
            self.actions.push(Action::Propose {
                group,
                op: ShardTxnOp::Decide {
                    txn: self.txn,
                    outcome: ShardOutcome::Abort,
                },
            });
        }
        let report = Report {
            succeeded,
            ..Report::aborted(
                self.txn,
                participants,
                "an earlier run of the request closed it",
            )
        };
        match result {
            ShardTxnResult::CommittedFor {
                txn,
                revision,
                succeeded,
                results,
            } => self.answer_after_release(report.committed_by(
                txn,
                coordinator,
                revision,
                succeeded,
                results,
            )),
            // An earlier run's abort closed the request.
            ShardTxnResult::Decision { .. } => self.done(report),
            // An earlier run is staged, not settled: wait under the session for its answer.
            _ => {
                let op = ShardTxnOp::AbortFor { txn: self.txn };
                self.answer_recorded(report, coordinator, op);
            }
        }
    }

    /// Staged path: the coordinator shard recorded `outcome` (A's answer is authoritative):
    /// answer the client if not yet, tell the other participants, then END.
    fn staging_settled(&mut self, outcome: ShardOutcome, revision: u64) {
        let txn = self.txn;
        let State::Staging(st) = &mut self.state else {
            return;
        };
        if matches!(st.phase, Phase::Deciding { .. }) {
            return; // a repeated answer
        }
        if let Some(answer) = &self.answer {
            if answer.outcome != outcome {
                self.anomalies.push(format!(
                    "txn {txn}: answered {:?} but the coordinator shard recorded {outcome:?}",
                    answer.outcome
                ));
            }
        }
        let pending: BTreeSet<u64> = st
            .participants
            .iter()
            .copied()
            .filter(|&g| g != st.coordinator)
            .collect();
        for &group in &pending {
            self.actions.push(Action::Propose {
                group,
                op: ShardTxnOp::Decide { txn, outcome },
            });
        }
        st.phase = Phase::Deciding { outcome, pending };
        st.last_sent = self.now;
        // Every run of the request answers with the revision A staged at (as its session does).
        st.staged.get_or_insert(revision);
        let participants = st.participants.clone();
        let coordinator = st.coordinator;
        if self.answer.is_none() {
            match outcome {
                ShardOutcome::Commit => {
                    // Committed by a resolver before this run saw every yes vote: a participant
                    // whose vote it missed shows it past the revision its DECIDE answers, so the
                    // answer waits for those (`staging_maybe_done`).
                    let all_voted = participants
                        .iter()
                        .all(|g| *g == coordinator || st.voted.contains_key(g));
                    if all_voted {
                        self.answer_staged_commit();
                    }
                }
                ShardOutcome::Abort => {
                    let reason = st
                        .reason
                        .take()
                        .unwrap_or_else(|| "resolved as aborted first".into());
                    let report = Report {
                        succeeded: st.plan.succeeded,
                        ..Report::aborted(txn, participants, &reason)
                    };
                    // Closed under the client's session before it is answered (the DECIDEs
                    // just sent, or the resolvers, release the others).
                    self.answer_abort(report, coordinator);
                    return;
                }
            }
        }
        self.staging_maybe_done();
    }

    /// Staged path: answers the commit, with the revisions known of every participant.
    fn answer_staged_commit(&mut self) {
        let State::Staging(st) = &self.state else {
            return;
        };
        let revision = st.staged.unwrap_or(0);
        let report = Report {
            txn: self.txn,
            outcome: ShardOutcome::Commit,
            succeeded: st.plan.succeeded,
            results: st.plan.results.clone(),
            revision,
            shard_revisions: st.shard_revisions(revision),
            participants: st.participants.clone(),
            reason: None,
            unknown: false,
        };
        self.answer_with(report);
    }

    fn staging_maybe_done(&mut self) {
        let State::Staging(st) = &self.state else {
            return;
        };
        let Phase::Deciding { outcome, pending } = &st.phase else {
            return;
        };
        if pending.is_empty() && self.answer.is_none() && *outcome == ShardOutcome::Commit {
            self.answer_staged_commit();
        }
        let State::Staging(st) = &self.state else {
            return;
        };
        let Phase::Deciding { outcome, pending } = &st.phase else {
            return;
        };
        if !pending.is_empty() || self.answer.is_none() {
            return;
        }
        if *outcome == ShardOutcome::Commit {
            self.actions.push(Action::Propose {
                group: st.coordinator,
                op: ShardTxnOp::End { txn: self.txn },
            });
        }
        self.state = State::Done;
    }

    fn on_staging_result(
        &mut self,
        group: u64,
        op: &ShardTxnOp,
        result: Result<ShardTxnResult, ServerError>,
    ) {
        let result = match (op, result) {
            (ShardTxnOp::StageFor { .. }, Err(ServerError::SessionExpired { .. })) => {
                // As for CommitFor: the client acknowledged the request elsewhere.
                self.done(Report::answered_elsewhere(self.txn));
                return;
            }
            (_, Ok(result)) => result,
            (_, Err(_)) => return, // resent on a tick
        };
        let txn = self.txn;
        let State::Staging(st) = &mut self.state else {
            return;
        };
        let voting = matches!(st.phase, Phase::Voting);
        match (op, result) {
            (
                ShardTxnOp::Prepare { .. },
                vote @ (ShardTxnResult::Vote { .. } | ShardTxnResult::Yes { .. }),
            ) => {
                #[allow(unused_mut)]
                let mut yes = yes_revision(&vote);
                #[cfg(any(test, feature = "planted-bugs"))]
                if self.bug == Some(CoordinatorBug::CommitWithoutAllYes) {
                    yes = yes.or(Some(0));
                }
                let no = match vote {
                    ShardTxnResult::Vote { no } => no,
                    _ => None,
                };
                if let Some(revision) = yes {
                    st.voted.entry(group).or_insert(revision);
                } else if voting {
                    if let Some(why) = &no {
                        st.reason.get_or_insert_with(|| describe(group, why));
                    }
                    self.start_settle(ShardOutcome::Abort);
                    return;
                }
            }
            (ShardTxnOp::StageFor { .. }, ShardTxnResult::Staged { txn: t, revision }) => {
                if t != txn {
                    self.staging_superseded(ShardTxnResult::Staged { txn: t, revision });
                    return;
                }
                st.staged.get_or_insert(revision);
            }
            (
                ShardTxnOp::StageFor { .. },
                ShardTxnResult::CommittedFor {
                    txn: t, revision, ..
                },
            ) if t == txn => {
                // Committed here already (a resolver fenced and settled it).
                self.staging_settled(ShardOutcome::Commit, revision);
                return;
            }
            (
                ShardTxnOp::StageFor { .. },
                r @ (ShardTxnResult::CommittedFor { .. } | ShardTxnResult::Decision { .. }),
            ) => {
                self.staging_superseded(r);
                return;
            }
            (
                ShardTxnOp::StageFor { .. },
                ShardTxnResult::Committed {
                    outcome: ShardOutcome::Abort,
                    revision,
                },
            ) => {
                // Its own part did not hold (or a resolver aborted it first): ABORT is recorded.
                st.reason.get_or_insert_with(|| {
                    "the coordinator shard's part could not be prepared (a conflict or a changed key)"
                        .into()
                });
                self.staging_settled(ShardOutcome::Abort, revision);
                return;
            }
            (
                ShardTxnOp::Commit { .. } | ShardTxnOp::Settle { .. },
                ShardTxnResult::Committed { outcome, revision },
            ) => {
                if matches!(st.phase, Phase::Settling { .. }) {
                    self.staging_settled(outcome, revision);
                }
                return;
            }
            (ShardTxnOp::Decide { .. }, ShardTxnResult::Decided { outcome, revision }) => {
                if let Phase::Deciding {
                    outcome: asked,
                    pending,
                } = &mut st.phase
                {
                    if pending.contains(&group) {
                        // Applied there at or before `revision` (a commit the answer may still
                        // wait for; see `staging_settled`).
                        st.voted.entry(group).or_insert(revision);
                    }
                    if *asked == ShardOutcome::Commit && outcome != ShardOutcome::Commit {
                        self.anomalies.push(format!(
                            "group {group} answered {outcome:?} to a commit of txn {txn}"
                        ));
                    }
                    pending.remove(&group);
                }
                self.staging_maybe_done();
                return;
            }
            _ => return,
        }
        // Committed iff A staged it and every other participant holds a yes prepare.
        #[allow(unused_mut)]
        let mut staged = st.staged;
        #[cfg(any(test, feature = "planted-bugs"))]
        if self.bug == Some(CoordinatorBug::AnswerBeforeStaged) {
            staged = staged.or(Some(0));
        }
        let all_voted = st
            .participants
            .iter()
            .all(|g| *g == st.coordinator || st.voted.contains_key(g));
        if let (true, Some(_), true) = (voting, staged, all_voted) {
            self.answer_staged_commit();
            self.start_settle(ShardOutcome::Commit);
        }
    }

    fn tick_staging(&mut self) {
        let now = self.now;
        let State::Staging(st) = &mut self.state else {
            return;
        };
        let resend = now - st.last_sent >= self.config.retry_interval;
        if resend {
            st.last_sent = now;
        }
        match &st.phase {
            Phase::Voting => {
                if now - st.since >= self.config.vote_timeout {
                    st.reason
                        .get_or_insert_with(|| "the votes did not arrive in time".into());
                    self.start_settle(ShardOutcome::Abort);
                } else if resend {
                    self.send_staging(&BTreeSet::new());
                }
            }
            Phase::Settling { outcome, since } => {
                let outcome = *outcome;
                if self.answer.is_none() && now - *since >= self.config.vote_timeout {
                    // The coordinator shard does not answer: the outcome stays unknown here,
                    // the resolvers settle it.
                    let report =
                        Report::aborted(self.txn, st.participants.clone(), "no answer in time")
                            .unknown_outcome();
                    self.done(report);
                } else if resend {
                    self.send_settle(outcome);
                }
            }
            Phase::Deciding { outcome, pending } => {
                if resend {
                    for &group in pending {
                        self.actions.push(Action::Propose {
                            group,
                            op: ShardTxnOp::Decide {
                                txn: self.txn,
                                outcome: *outcome,
                            },
                        });
                    }
                }
            }
        }
    }

    /// Advances time by one tick: reads and decision records are resent, the engine's
    /// timers run (vote timeout aborts, unacknowledged commits are resent).
    pub fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        match &mut self.state {
            State::Reading {
                since, last_sent, ..
            } => {
                if now - *since >= self.config.vote_timeout {
                    let groups = &self.groups;
                    let coordinator = self
                        .request
                        .coordinator(|k| groups.get(k).copied().unwrap_or(0))
                        .unwrap_or(0);
                    let report =
                        Report::aborted(self.txn, Vec::new(), "the reads did not complete in time");
                    self.answer_abort(report, coordinator);
                } else if now - *last_sent >= self.config.retry_interval {
                    *last_sent = now;
                    self.send_reads();
                }
            }
            State::Committing(c) => {
                match c.combined {
                    Some(last_sent) => {
                        if now - last_sent >= self.config.retry_interval {
                            c.combined = Some(now);
                            let group = c.coordinator;
                            self.actions.push(combined_action(
                                self.txn,
                                self.origin,
                                group,
                                &c.plan,
                            ));
                        }
                    }
                    None => c.engine.tick(),
                }
                if let Some((_, last_sent)) = &mut c.decision {
                    if now - *last_sent >= self.config.retry_interval {
                        *last_sent = now;
                        self.actions.push(commit_action(
                            self.txn,
                            self.origin,
                            c.coordinator,
                            &c.plan,
                        ));
                    }
                }
                if !c.releases.is_empty() && now - c.releases_sent >= self.config.retry_interval {
                    c.releases_sent = now;
                    for (&group, &outcome) in &c.releases {
                        self.actions.push(Action::Propose {
                            group,
                            op: ShardTxnOp::Decide {
                                txn: self.txn,
                                outcome,
                            },
                        });
                    }
                }
                self.drain();
            }
            State::Staging(_) => self.tick_staging(),
            State::Fencing {
                group,
                op,
                report,
                since,
                last_sent,
            } => {
                if now - *since >= self.config.vote_timeout {
                    // The coordinator shard does not answer: the outcome stays unknown.
                    let report = report.unknown_outcome();
                    self.done(report);
                } else if now - *last_sent >= self.config.retry_interval {
                    *last_sent = now;
                    if let Some(session) = self.origin {
                        self.actions.push(Action::ProposeAs {
                            group: *group,
                            op: op.clone(),
                            session,
                        });
                    }
                }
            }
            State::Releasing {
                report,
                since,
                last_sent,
                ..
            } => {
                if now - *since >= self.config.vote_timeout {
                    let report = report.unknown_outcome();
                    self.done(report);
                } else if now - *last_sent >= self.config.retry_interval {
                    *last_sent = now;
                    self.send_releases();
                }
            }
            State::Done => {}
        }
    }

    /// Turns the engine's output into actions; answers the client once the outcome is known.
    fn drain(&mut self) {
        let State::Committing(c) = &mut self.state else {
            return;
        };
        let txn = TxnId(self.txn);
        loop {
            let out = c.engine.take_output();
            if out.is_empty() {
                break;
            }
            // The engine's COMMIT to the coordinator shard: its part was decided by the COMMIT
            // entry itself, so it is acknowledged here instead of proposed again.
            let mut applied_here = Vec::new();
            let mut forced_here = Vec::new();
            for write in out.writes {
                match write {
                    // The combined entry recorded the commit already.
                    Write::Force {
                        token,
                        record: CoordinatorRecord::Commit { .. },
                    } if c.decided_here => forced_here.push(token),
                    Write::Force {
                        token,
                        record: CoordinatorRecord::Commit { .. },
                    } => {
                        c.decision = Some((token, self.now));
                        self.actions.push(commit_action(
                            self.txn,
                            self.origin,
                            c.coordinator,
                            &c.plan,
                        ));
                    }
                    Write::Lazy {
                        record: CoordinatorRecord::End { .. },
                    } => {
                        c.end_sent = true;
                        self.actions.push(Action::Propose {
                            group: c.coordinator,
                            op: ShardTxnOp::End { txn: self.txn },
                        })
                    }
                    _ => {}
                }
            }
            for (to, message) in out.messages {
                let op = match message {
                    // The coordinator shard prepares in its combined entry, sent below.
                    Message::Prepare { .. } | Message::OnePhaseCommit { .. }
                        if to == c.coordinator =>
                    {
                        continue;
                    }
                    Message::Prepare { .. } | Message::OnePhaseCommit { .. } => {
                        let part = c.plan.parts.get(&to).cloned().unwrap_or_default();
                        ShardTxnOp::Prepare {
                            txn: self.txn,
                            coordinator: c.coordinator,
                            participants: c.plan.parts.keys().copied().collect(),
                            expected: part.expected,
                            writes: part.writes,
                        }
                    }
                    Message::Commit { .. } if to == c.coordinator && c.decided_here => {
                        applied_here.push(to);
                        continue;
                    }
                    Message::Commit { .. } => ShardTxnOp::Decide {
                        txn: self.txn,
                        outcome: ShardOutcome::Commit,
                    },
                    Message::Abort { .. } => ShardTxnOp::Decide {
                        txn: self.txn,
                        outcome: ShardOutcome::Abort,
                    },
                    _ => continue,
                };
                self.actions.push(Action::Propose { group: to, op });
            }
            for event in out.events {
                match event {
                    CoordinatorEvent::Decided { outcome, .. } => {
                        let outcome = match outcome {
                            Outcome::Commit => ShardOutcome::Commit,
                            Outcome::Abort => ShardOutcome::Abort,
                        };
                        c.decided = Some(outcome);
                        c.releases_sent = self.now;
                        // Read-only participants hold read locks until now; the engine forgot
                        // them. The coordinator shard's were released by the COMMIT entry.
                        for &group in &c.read_only {
                            if group == c.coordinator && c.decided_here {
                                continue;
                            }
                            c.releases.insert(group, outcome);
                            self.actions.push(Action::Propose {
                                group,
                                op: ShardTxnOp::Decide {
                                    txn: self.txn,
                                    outcome,
                                },
                            });
                        }
                    }
                    CoordinatorEvent::Finished { .. } => {
                        c.engine_finished = true;
                        // A commit the combined entry recorded with nothing for the engine to
                        // end (every participant only read): the shard forgets it all the same.
                        if c.decided_here && !c.end_sent {
                            c.end_sent = true;
                            self.actions.push(Action::Propose {
                                group: c.coordinator,
                                op: ShardTxnOp::End { txn: self.txn },
                            });
                        }
                    }
                }
            }
            for group in applied_here {
                let _ = c.engine.step(group, Message::Ack { txn });
            }
            for token in forced_here {
                if let Err(error) = c.engine.forced(token) {
                    self.anomalies.push(format!("forced refused: {error}"));
                }
            }
        }
        // Every other participant voted yes: the coordinator shard's combined entry decides.
        if c.plan.parts.contains_key(&c.coordinator)
            && c.combined.is_none()
            && !c.decided_here
            && c.decided.is_none()
            && c.plan
                .parts
                .keys()
                .all(|g| *g == c.coordinator || c.voted.contains(g))
        {
            c.combined = Some(self.now);
            let group = c.coordinator;
            self.actions
                .push(combined_action(self.txn, self.origin, group, &c.plan));
        }
        // Read locks go before the answer, so the client's next transaction does not meet them.
        let known = c.engine_finished || c.decided == Some(ShardOutcome::Commit);
        let finished = c.engine_finished && c.releases.is_empty();
        if known && c.releases.is_empty() && self.answer.is_none() {
            let outcome = c.decided.unwrap_or(ShardOutcome::Abort);
            let report = Report {
                txn: self.txn,
                outcome,
                succeeded: c.plan.succeeded,
                results: if outcome == ShardOutcome::Commit {
                    std::mem::take(&mut c.plan.results)
                } else {
                    Vec::new()
                },
                revision: c.revisions.get(&c.coordinator).copied().unwrap_or(0),
                shard_revisions: if outcome == ShardOutcome::Commit {
                    c.revisions.iter().map(|(&g, &r)| (g, r)).collect()
                } else {
                    Vec::new()
                },
                participants: c.plan.parts.keys().copied().collect(),
                reason: match outcome {
                    ShardOutcome::Commit => None,
                    ShardOutcome::Abort => Some(
                        c.reason
                            .take()
                            .unwrap_or_else(|| "the votes did not arrive in time".into()),
                    ),
                },
                unknown: false,
            };
            let group = c.coordinator;
            if outcome == ShardOutcome::Abort {
                self.answer_abort(report, group);
                return;
            }
            if !c.recorded {
                // All read-only: no commit record was needed, but the answer goes into the
                // session as one would (a resent request must not be answered differently).
                let op = ShardTxnOp::CommitFor {
                    txn: self.txn,
                    participants: Vec::new(),
                    succeeded: report.succeeded,
                    results: report.results.clone(),
                };
                self.answer_recorded(report, group, op);
                return;
            }
            self.answer_with(report);
        }
        if finished && self.answer.is_some() {
            self.state = State::Done;
        }
    }
}

/// The coordinator shard's PREPARE and COMMIT in one entry, under the client's session.
fn combined_action(txn: ShardTxnId, origin: Option<Session>, group: u64, plan: &Plan) -> Action {
    let part = plan.parts.get(&group).cloned().unwrap_or_default();
    let op = ShardTxnOp::PrepareCommitFor {
        txn,
        coordinator: group,
        participants: plan.parts.keys().copied().collect(),
        expected: part.expected,
        writes: part.writes,
        succeeded: plan.succeeded,
        results: plan.results.clone(),
    };
    match origin {
        Some(session) => Action::ProposeAs { group, op, session },
        None => Action::Propose { group, op },
    }
}

/// The commit record: for a client request, under its session (see [`CrossShardTxn::with_origin`]).
fn commit_action(txn: ShardTxnId, origin: Option<Session>, group: u64, plan: &Plan) -> Action {
    let op = ShardTxnOp::CommitFor {
        txn,
        participants: plan.parts.keys().copied().collect(),
        succeeded: plan.succeeded,
        results: plan.results.clone(),
    };
    match origin {
        Some(session) => Action::ProposeAs { group, op, session },
        None => Action::Propose { group, op },
    }
}

/// The revision a prepare's answer voted yes at (0 for an older build's yes, which names none);
/// `None` for a no vote or another answer.
fn yes_revision(result: &ShardTxnResult) -> Option<u64> {
    match result {
        ShardTxnResult::Yes { revision } => Some(*revision),
        ShardTxnResult::Vote { no: None } => Some(0),
        _ => None,
    }
}

fn describe(group: u64, why: &NoVote) -> String {
    match why {
        NoVote::Locked { key, by } => format!(
            "group {group}: key {:?} is locked by transaction {by}",
            String::from_utf8_lossy(key)
        ),
        NoVote::Changed {
            key,
            expected,
            current,
        } => format!(
            "group {group}: key {:?} changed (mod revision {expected} read, {current} now)",
            String::from_utf8_lossy(key)
        ),
        NoVote::Finished(outcome) => format!("group {group}: already decided ({outcome:?})"),
        NoVote::Invalid(why) => format!("group {group}: {why}"),
    }
}
