//! Raft (Ongaro & Ousterhout 2014; Ongaro's thesis), as a sans-IO state machine.
//!
//! Modules by concept: `log` (the in-memory tail over durable storage), `progress` (per-follower
//! replication state), `quorum` (majorities, joint or not), `election` (timeouts, pre-vote, votes,
//! check-quorum, leader transfer), `replication` (appends, commit), `read` (ReadIndex and lease
//! reads), `membership` (joint and single-server changes), `snapshot` (send and install). This file
//! holds the state, the message dispatcher and the `Ready` / `persisted` bookkeeping.

mod config;
mod election;
mod log;
pub(crate) mod membership;
mod message;
mod progress;
mod quorum;
mod read;
mod replication;
mod snapshot;

#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{Config, ReadMode};
pub use message::{Message, MessageBody};

use std::collections::BTreeMap;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;

use serde::{Deserialize, Serialize};

use crate::error::{Error, StorageError};
use crate::protocol::{Consensus, Persist, PersistToken, Ready, Write};
use crate::storage::Storage;
use crate::types::{
    ConfChange, ConfState, Entry, EntryPayload, NodeId, Proposed, ReadState, Role, SoftState,
    Status,
};
use crate::write_queue::WriteQueue;

use self::log::RaftLog;
use self::progress::Progress;
use self::read::ReadQueue;

/// Raft's durable state besides the log: what a node must make durable before it answers votes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Candidate this node voted for in `term` (0: none).
    pub vote: NodeId,
    /// Highest index known committed (may lag; recovered commit is only a hint for re-application).
    pub commit: u64,
}

/// Storage Raft can run on: any [`Storage`] whose durable state is Raft's [`HardState`].
pub trait RaftStorage: Storage<HardState = HardState> {}

impl<S: Storage<HardState = HardState>> RaftStorage for S {}

/// A write handed to the driver and not yet confirmed.
#[derive(Debug)]
struct Task {
    /// The hard state in the write, if any (a candidate counts its own vote once it is durable).
    hard_state: Option<HardState>,
    /// Last entry in the write, if any.
    last_entry: Option<(u64, u64)>,
    /// Index of the snapshot in the write, if any.
    snapshot_index: Option<u64>,
}

/// One Raft member. Drive it through the [`Consensus`] trait.
pub struct Raft<S: RaftStorage> {
    config: Config,
    rng: ChaCha8Rng,
    log: RaftLog<S>,

    // Durable state (mirrored into `HardState`).
    term: u64,
    vote: NodeId,

    // Volatile state.
    role: Role,
    leader: Option<NodeId>,
    conf: ConfState,
    /// Leader only: one entry per member, this node included.
    progress: BTreeMap<NodeId, Progress>,
    /// Candidate / pre-candidate: votes received.
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    lead_transferee: Option<NodeId>,
    /// Index of the latest membership change in the log; another may not be proposed before it is
    /// applied.
    pending_conf_index: u64,
    uncommitted_bytes: u64,
    reads: ReadQueue,
    /// Ticks since this instance started (the leader's clock for read leases).
    clock: u64,
    /// Votes are refused until `clock` reaches this (a lease-mode member that restarted).
    quiet_until: u64,
    /// Set once this leader sent TimeoutNow in its term: a transfer may elect another leader
    /// before any lease runs out, so lease reads stop.
    lease_forfeited: bool,
    /// Appends to broadcast at the next `ready()` (proposals and commit advances are batched).
    broadcast_pending: bool,

    // Output bookkeeping.
    messages: Vec<Message>,
    ready_reads: Vec<ReadState>,
    /// Writes handed out and not yet durable, with the messages each holds back.
    writes: WriteQueue<Task, Message>,
    /// Set after a storage failure: the member stops and `ready()` reports it.
    stopped: Option<StorageError>,
    issued_hard_state: HardState,
    issued_soft_state: SoftState,
}

impl<S: RaftStorage> Raft<S> {
    /// Builds a member from its configuration, its durable state (a fresh [`crate::MemStorage`] for a
    /// new group, or what survived a restart) and a seeded RNG for election jitter.
    pub fn new(config: Config, storage: S, rng: ChaCha8Rng) -> Result<Self, Error> {
        config.validate()?;
        let hard_state = storage.hard_state();
        let snapshot_meta = storage.snapshot_meta();
        let mut log = RaftLog::new(storage);
        let last = log.last_index();
        let applied = config.applied.max(snapshot_meta.index);
        let commit = hard_state.commit.max(snapshot_meta.index).min(last);
        if applied > commit {
            return Err(Error::InvalidConfig(
                "config.applied is beyond the durable commit index",
            ));
        }
        // Membership as of `applied`: the snapshot's, then every change applied since.
        let mut conf = snapshot_meta.conf_state;
        if applied > snapshot_meta.index {
            for entry in log.entries(snapshot_meta.index + 1, applied + 1, u64::MAX)? {
                if let EntryPayload::ConfChange(change) = &entry.payload {
                    if let Ok(next) = membership::apply_change(&conf, change) {
                        conf = next;
                    }
                }
            }
        }
        log.committed = commit;
        log.applied = applied;
        let mut raft = Raft {
            rng,
            log,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            conf,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_tick,
            lead_transferee: None,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            reads: ReadQueue::default(),
            clock: 0,
            quiet_until: if config.read_mode == ReadMode::LeaseBased && hard_state.term > 0 {
                u64::from(config.election_tick)
            } else {
                0
            },
            lease_forfeited: false,
            broadcast_pending: false,
            messages: Vec::new(),
            ready_reads: Vec::new(),
            writes: WriteQueue::new(),
            stopped: None,
            issued_hard_state: hard_state,
            issued_soft_state: SoftState {
                leader: None,
                role: Role::Follower,
            },
            config,
        };
        raft.become_follower(hard_state.term, None);
        Ok(raft)
    }

    /// Starts an election now (as if the election timeout fired), if this node may vote.
    pub fn campaign(&mut self) -> Result<(), Error> {
        if !self.promotable() {
            return Err(Error::UnknownNode(self.config.id));
        }
        self.hup(false);
        Ok(())
    }

    /// The configuration this member runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The membership in force on this node (as of the last entry handed out for application).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Current leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Term of the entry at `index`, if this node still has it (in memory or in storage).
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.log.term(index).ok()
    }

    /// Entries `lo..hi` of this node's log (durable or not), for tests and invariant checks.
    pub fn log_entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>, Error> {
        Ok(self.log.entries(lo, hi, u64::MAX)?)
    }

    /// Index of the first entry still in the log (after the latest snapshot).
    pub fn first_index(&self) -> u64 {
        self.log.first_index()
    }

    /// Gives the storage back (to model a crash: restart with [`Raft::new`] on what was durable).
    pub fn into_storage(self) -> S {
        self.log.storage
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    /// Whether this node may campaign: it votes in the configuration in force.
    fn promotable(&self) -> bool {
        self.conf.is_voter(self.config.id)
    }

    /// Queues a message from this node at the current term.
    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: u64, body: MessageBody) {
        // Only answers that promise durable state wait for it (see `crate::protocol`): a vote
        // grant and an acknowledgement of entries. Vote requests leave at once; the candidate's
        // own vote counts once its write is confirmed (`persisted`).
        let durable_promise = matches!(
            body,
            MessageBody::VoteResponse { .. } | MessageBody::AppendResponse { .. }
        );
        let message = Message {
            from: self.config.id,
            to,
            term,
            body,
        };
        if durable_promise {
            self.writes.hold(message);
        } else {
            self.messages.push(message);
        }
    }

    fn step_inner(&mut self, m: Message) -> Result<(), Error> {
        if m.term > self.term {
            let is_vote_request = matches!(
                m.body,
                MessageBody::Vote { .. } | MessageBody::PreVote { .. }
            );
            if is_vote_request {
                let forced = matches!(
                    m.body,
                    MessageBody::Vote {
                        leader_transfer: true,
                        ..
                    }
                );
                // Leader stickiness (thesis §4.2.3): ignore disruptive candidates while a leader
                // was heard from within the minimum election timeout.
                // A restarted member of a lease-reading group also waits an election timeout
                // before voting: it may have acked a lease it no longer remembers (thesis §6.4.1).
                let in_lease = self.config.check_quorum
                    && ((self.leader.is_some()
                        && self.election_elapsed < self.config.election_tick)
                        || self.clock < self.quiet_until);
                if in_lease && !forced {
                    return Ok(());
                }
            }
            match m.body {
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.config.check_quorum || self.config.pre_vote =>
                {
                    // A stale leader cut off by a partition: tell it the current term so it steps
                    // down (its own term cannot advance while pre-vote keeps it from campaigning).
                    self.send(
                        m.from,
                        MessageBody::AppendResponse {
                            index: 0,
                            reject: true,
                            hint_index: 0,
                            hint_term: 0,
                        },
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return Ok(());
        }

        match m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => {
                self.handle_vote_request(m.from, m.term, last_index, last_term, true);
            }
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(m.from, m.term, last_index, last_term, false),
            MessageBody::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate {
                    self.handle_vote_response(m.from, granted);
                }
            }
            MessageBody::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.handle_vote_response(m.from, granted);
                }
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                if self.role == Role::Leader {
                    return Ok(()); // impossible: one leader per term
                }
                if self.role != Role::Follower {
                    self.become_follower(m.term, Some(m.from));
                }
                self.handle_append(m.from, prev_index, prev_term, entries, commit)?;
            }
            MessageBody::Heartbeat { commit, read_round } => {
                if self.role == Role::Leader {
                    return Ok(());
                }
                if self.role != Role::Follower {
                    self.become_follower(m.term, Some(m.from));
                }
                self.handle_heartbeat(m.from, commit, read_round);
            }
            MessageBody::InstallSnapshot { snapshot } => {
                if self.role == Role::Leader {
                    return Ok(());
                }
                if self.role != Role::Follower {
                    self.become_follower(m.term, Some(m.from));
                }
                self.handle_snapshot(m.from, snapshot);
            }
            MessageBody::AppendResponse {
                index,
                reject,
                hint_index,
                hint_term,
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(m.from, index, reject, hint_index, hint_term);
                }
            }
            MessageBody::HeartbeatResponse { read_round } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(m.from, read_round);
                }
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(),
            MessageBody::ReadIndex { ctx } => {
                if self.role == Role::Leader {
                    self.register_read(ctx, m.from);
                }
            }
            MessageBody::ReadIndexResponse { ctx, index } => {
                self.ready_reads.push(ReadState { ctx, index });
            }
        }
        Ok(())
    }

    /// Hands committed entries out and applies membership changes among them.
    fn take_committed(&mut self) -> Result<Vec<Entry>, Error> {
        if !self.log.has_next_committed() {
            return Ok(Vec::new());
        }
        let entries = self
            .log
            .next_committed(self.config.max_committed_bytes_per_ready)?;
        if let Some(last) = entries.last() {
            debug_assert!(last.index > self.log.applied, "applied index only grows");
            self.log.applied = last.index;
        }
        for entry in &entries {
            if self.role == Role::Leader && entry.term == self.term {
                self.uncommitted_bytes =
                    self.uncommitted_bytes.saturating_sub(entry.payload_size());
            }
            if let EntryPayload::ConfChange(change) = &entry.payload {
                self.apply_conf_change(change);
            }
        }
        Ok(entries)
    }
}

impl<S: RaftStorage> Consensus for Raft<S> {
    type Message = Message;
    type HardState = HardState;
    type Storage = S;

    const NAME: &'static str = "raft";

    fn id(&self) -> NodeId {
        self.config.id
    }

    fn tick(&mut self) {
        self.clock += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn step(&mut self, message: Message) -> Result<(), Error> {
        if message.to != self.config.id {
            return Err(Error::MisroutedMessage {
                to: message.to,
                me: self.config.id,
            });
        }
        self.step_inner(message)
    }

    fn propose(&mut self, data: Bytes) -> Result<Proposed, Error> {
        self.check_can_propose(data.len() as u64)?;
        Ok(self.append_entry(EntryPayload::Data(data)))
    }

    fn propose_conf_change(&mut self, change: ConfChange) -> Result<Proposed, Error> {
        self.propose_membership(change)
    }

    fn read_index(&mut self, ctx: u64) -> Result<(), Error> {
        self.request_read(ctx)
    }

    fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error> {
        self.start_transfer(to)
    }

    fn has_ready(&self) -> bool {
        if self.stopped.is_some() {
            return true; // `ready()` reports the failure
        }
        !self.messages.is_empty()
            || self.writes.has_held()
            || !self.ready_reads.is_empty()
            || (self.broadcast_pending && self.role == Role::Leader)
            || self.reads.heartbeat_pending()
            || self.log.has_unissued()
            || self.log.has_next_committed()
            || self.hard_state() != self.issued_hard_state
            || self.soft_state() != self.issued_soft_state
    }

    fn ready(&mut self) -> Result<Ready<Message, HardState>, Error> {
        if let Some(error) = &self.stopped {
            return Err(Error::Stopped(error.clone()));
        }
        // 1. Committed entries first: applying a membership change may append (leave joint) or
        //    step down, and that must be part of this round's writes and messages.
        let committed = match self.take_committed() {
            Ok(entries) => entries,
            Err(error) => {
                let cause = match error {
                    Error::Storage(e) => e,
                    other => StorageError::Other(other.to_string()),
                };
                tracing::error!(error = %cause, "cannot read committed entries; stopping");
                self.stopped = Some(cause.clone());
                return Err(Error::Stopped(cause));
            }
        };
        // 2. Batched broadcasts.
        if self.role == Role::Leader {
            if self.broadcast_pending {
                self.broadcast_append();
            }
            if self.reads.heartbeat_pending() {
                self.broadcast_heartbeat();
            }
        }
        self.broadcast_pending = false;
        // 3. The write, if anything changed.
        let hard_state = self.hard_state();
        let hard_state_changed = hard_state != self.issued_hard_state;
        let persist = if hard_state_changed || self.log.has_unissued() {
            let (snapshot, entries) = self.log.take_unissued();
            // A commit index that moved alone need not be synced (etcd's MustSync): after a crash
            // the commit index is relearnt from the leader.
            let vote_changed = hard_state.term != self.issued_hard_state.term
                || hard_state.vote != self.issued_hard_state.vote;
            let sync = vote_changed || snapshot.is_some() || !entries.is_empty();
            // Raft's log rule: whatever follows the first new entry (or an installed snapshot,
            // whose log disagreed with ours) is replaced.
            let truncate_from = match &snapshot {
                Some(snapshot) => Some(snapshot.meta.index + 1),
                None => entries.first().map(|e| e.index),
            };
            let token = self.writes.issue(Task {
                hard_state: hard_state_changed.then_some(hard_state),
                last_entry: entries.last().map(|e| (e.index, e.term)),
                snapshot_index: snapshot.as_ref().map(|s| s.meta.index),
            });
            self.issued_hard_state = hard_state;
            Some(Persist {
                token,
                write: Write {
                    snapshot,
                    truncate_from,
                    entries: entries.into(),
                    hard_state: hard_state_changed.then_some(hard_state),
                    sync,
                },
            })
        } else {
            None
        };
        // 4. Messages promising durability wait for the newest write issued so far.
        self.writes.attach_held(&mut self.messages);
        let soft_state = self.soft_state();
        let soft_changed = soft_state != self.issued_soft_state;
        self.issued_soft_state = soft_state;
        Ok(Ready {
            messages: std::mem::take(&mut self.messages),
            persist,
            committed,
            committed_in_storage: None,
            reads: std::mem::take(&mut self.ready_reads),
            soft_state: soft_changed.then_some(soft_state),
        })
    }

    fn persisted(&mut self, token: PersistToken) -> Result<(), Error> {
        let (task, mut released) = self.writes.confirm(token)?;
        if let Some(index) = task.snapshot_index {
            self.log.stable_snapshot_to(index);
        }
        if let Some((index, term)) = task.last_entry {
            self.log.stable_to(index, term);
        }
        self.messages.append(&mut released);
        if let Some(durable) = task.hard_state {
            self.own_vote_durable(durable);
        }
        if self.role == Role::Leader {
            self.leader_persisted();
        }
        Ok(())
    }

    fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit: self.log.committed,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            persisted_index: self.log.persisted,
            conf_state: self.conf.clone(),
            protocol: Self::NAME,
            detail: vec![("vote", self.vote.to_string())],
        }
    }

    fn storage(&self) -> &S {
        &self.log.storage
    }

    fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }
}
