//! Multi-Paxos (Lamport, *Paxos Made Simple* §3 and *Paxos Made Live*) as a sans-IO state machine.
//!
//! One distinguished leader runs phase 1 once for every slot from its first unchosen one
//! (`Prepare { from, .. }`), re-proposes the highest-ballot value each promise reported
//! (filling holes with [`EntryPayload::Noop`]), then runs phase 2 per slot, pipelined within a
//! bounded window and batched into size-limited `Accept` messages. Ballots are `(round, node)`
//! pairs carried in [`Entry::term`] (see [`ballot`]).
//!
//! Modules by concept: `ballot` (ordering and encoding), `log` (the slot log with holes over
//! durable storage), `acceptor` (promises and acceptances), `election` (timeouts, phase 1,
//! stepping down, leader transfer), `leader` (proposals, the pipeline window, counting
//! acceptances, heartbeats), `learner` (learning the chosen prefix, fetching chosen values),
//! `snapshot` (sending and installing snapshots for compacted slots), `read`
//! (ballot-confirmation and lease reads), `membership` (configuration changes), [`invariants`]
//! (the checker the simulator runs). This file holds the state, the message dispatcher and the
//! `Ready` / `persisted` bookkeeping.
//!
//! # The persistence contract, Paxos edition
//!
//! An acceptor's promise is written with `sync: true` before its `Promise` leaves, and its
//! accepted slots are written (each on its own, never cutting higher slots) before `Accepted`
//! leaves: both are held and released by [`Consensus::persisted`]. The commit index is a hint:
//! a write that moves only it uses `sync: false`. A leader counts its own acceptance (and a
//! candidate its own promise) only once the write that records it is confirmed.

mod acceptor;
pub mod ballot;
mod config;
mod election;
pub mod invariants;
mod leader;
mod learner;
mod log;
mod membership;
mod message;
mod read;
mod snapshot;
#[cfg(test)]
mod tests;

pub use ballot::Ballot;
#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{Config, ReadMode};
pub use message::{Message, MessageBody};

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, StorageError};
use crate::protocol::{CommittedRange, Consensus, Persist, PersistToken, Ready, Write};
use crate::storage::Storage;
use crate::types::{
    ConfChange, ConfState, Entry, EntryPayload, NodeId, Proposed, ReadState, Role, SoftState,
    Status,
};
use crate::write_queue::WriteQueue;

use self::election::Phase1;
use self::leader::LeaderState;
use self::learner::FetchState;
use self::log::SlotLog;
use self::read::ReadQueue;

/// A Paxos acceptor's durable state besides its slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The highest ballot this acceptor promised; it accepts nothing below it.
    pub promised: Ballot,
    /// Slots through this are chosen and stored here (a hint: it may lag after a crash).
    pub commit: u64,
}

/// Storage Multi-Paxos can run on.
pub trait PaxosStorage: Storage<HardState = HardState> {}

impl<S: Storage<HardState = HardState>> PaxosStorage for S {}

/// A write handed to the driver and not yet confirmed.
#[derive(Debug)]
struct Task {
    /// The hard state in the write, if any.
    hard_state: Option<HardState>,
    /// The slots written, as runs of consecutive slots under one ballot.
    slots: SlotRuns,
}

/// Consecutive slots `first ..= last` written under one ballot (`term`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotRun {
    first: u64,
    last: u64,
    term: u64,
}

/// The slots of one write as runs (a write is almost always one run: a batch, or a leader's
/// window step), kept without an allocation for the common single run.
#[derive(Debug, Default)]
pub(crate) struct SlotRuns {
    head: Option<SlotRun>,
    more: Vec<SlotRun>,
}

impl SlotRuns {
    /// The runs of `entries`, in the order written.
    fn of(entries: &[Entry]) -> Self {
        let mut runs = SlotRuns::default();
        let mut current: Option<SlotRun> = None;
        for entry in entries {
            match &mut current {
                Some(run) if entry.index == run.last + 1 && entry.term == run.term => {
                    run.last = entry.index;
                }
                _ => {
                    if let Some(done) = current.take() {
                        runs.push(done);
                    }
                    current = Some(SlotRun {
                        first: entry.index,
                        last: entry.index,
                        term: entry.term,
                    });
                }
            }
        }
        if let Some(done) = current {
            runs.push(done);
        }
        runs
    }

    /// The runs of `entries` known to be one run (consecutive slots under one ballot): read
    /// from its ends, not entry by entry.
    fn one(entries: &[Entry]) -> Self {
        debug_assert_eq!(
            SlotRuns::of(entries).iter().count(),
            usize::from(!entries.is_empty()),
            "one run"
        );
        let mut runs = SlotRuns::default();
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            runs.push(SlotRun {
                first: first.index,
                last: last.index,
                term: first.term,
            });
        }
        runs
    }

    fn push(&mut self, run: SlotRun) {
        if self.head.is_none() {
            self.head = Some(run);
        } else {
            self.more.push(run);
        }
    }

    /// The runs, in the order written.
    fn iter(&self) -> impl Iterator<Item = &SlotRun> {
        self.head.iter().chain(&self.more)
    }

    /// The highest slot written.
    fn max_slot(&self) -> Option<u64> {
        self.iter().map(|run| run.last).max()
    }
}

/// One Multi-Paxos member (proposer, acceptor and learner). Drive it through [`Consensus`].
pub struct MultiPaxos<S: PaxosStorage> {
    config: Config,
    rng: ChaCha8Rng,
    log: SlotLog<S>,

    /// Highest ballot promised (mirrored into `HardState`).
    promised: Ballot,
    /// Slots through this are chosen and their values are in `log`.
    commit: u64,
    /// Slots through this were handed out in `Ready::committed`.
    applied: u64,
    /// Highest slot written by a confirmed write.
    persisted_slot: u64,
    /// Membership for the slot after `commit` (every change chosen so far applied).
    conf: ConfState,
    /// Membership as of `applied` (what a snapshot at `applied` records).
    applied_conf: ConfState,

    role: Role,
    leader: Option<NodeId>,
    /// The ballot this node campaigns or leads under.
    ballot: Ballot,
    /// Highest round seen in any message (a new campaign goes above it).
    max_round_seen: u64,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    /// Ticks since this instance started.
    clock: u64,
    /// Promises are refused until `clock` reaches this (a lease-mode member that restarted).
    quiet_until: u64,

    phase1: Phase1,
    lead: LeaderState,
    reads: ReadQueue,
    fetch: FetchState,

    messages: Vec<Message>,
    ready_reads: Vec<ReadState>,
    /// Writes handed out and not yet durable, with the messages each holds back.
    writes: WriteQueue<Task, Message>,
    /// Set after a storage failure: the member stops and `ready()` reports it.
    stopped: Option<StorageError>,
    issued_hard_state: HardState,
    issued_soft_state: SoftState,
}

impl<S: PaxosStorage> MultiPaxos<S> {
    /// Builds a member from its configuration, its durable state (a fresh [`crate::MemStorage`]
    /// for a new group, or what survived a restart) and a seeded RNG for election jitter.
    pub fn new(config: Config, storage: S, rng: ChaCha8Rng) -> Result<Self, Error> {
        config.validate()?;
        let hard_state = storage.hard_state();
        let snapshot_meta = storage.snapshot_meta();
        let log = SlotLog::new(storage)?;
        let snap = snapshot_meta.index;
        let applied = config.applied.max(snap);
        // The commit hint is durable only after the slots it covers (writes are a prefix), but
        // stop at the first hole in case a storage lost a tail.
        let mut commit = snap;
        let mut conf = snapshot_meta.conf_state.clone();
        let mut applied_conf = conf.clone();
        while commit < hard_state.commit {
            let Some(entry) = log.get(commit + 1)? else {
                break;
            };
            commit += 1;
            if let EntryPayload::ConfChange(change) = &entry.payload {
                if let Ok(next) = membership::apply_change(&conf, change) {
                    conf = next;
                }
            }
            if commit == applied {
                applied_conf = conf.clone();
            }
        }
        if applied > commit {
            return Err(Error::InvalidConfig(
                "config.applied is beyond the durable commit index",
            ));
        }
        if applied == commit {
            applied_conf = conf.clone();
        }
        let persisted_slot = log.last_slot();
        // In a lease group every start waits an election timeout before promising: this node
        // may have acknowledged a leader's lease (a heartbeat, which writes nothing) before it
        // went down, and no longer remembers it.
        let quiet_until = if config.read_mode == ReadMode::LeaseBased {
            u64::from(config.election_tick)
        } else {
            0
        };
        let mut paxos = MultiPaxos {
            rng,
            log,
            promised: hard_state.promised,
            commit,
            applied,
            persisted_slot,
            conf,
            applied_conf,
            role: Role::Follower,
            leader: None,
            ballot: Ballot::ZERO,
            max_round_seen: hard_state.promised.round,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_tick,
            clock: 0,
            quiet_until,
            phase1: Phase1::default(),
            lead: LeaderState::default(),
            reads: ReadQueue::default(),
            fetch: FetchState::default(),
            messages: Vec::new(),
            ready_reads: Vec::new(),
            writes: WriteQueue::new(),
            stopped: None,
            // What storage holds is already written: only changes are issued.
            issued_hard_state: HardState {
                promised: hard_state.promised,
                commit,
            },
            issued_soft_state: SoftState {
                leader: None,
                role: Role::Follower,
            },
            config,
        };
        paxos.become_follower(None);
        Ok(paxos)
    }

    /// Runs phase 1 now (as if the election timeout fired), if this node votes.
    pub fn campaign(&mut self) -> Result<(), Error> {
        if !self.conf.is_voter(self.config.id) {
            return Err(Error::UnknownNode(self.config.id));
        }
        self.start_phase1();
        Ok(())
    }

    /// The configuration this member runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest ballot this acceptor promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// The ballot this node campaigns or leads under (zero if it never campaigned).
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// The membership for the next unchosen slot.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// The entry this node holds at `slot` (accepted or chosen; durable or not).
    pub fn slot(&self, slot: u64) -> Option<Entry> {
        self.log.get(slot).ok().flatten()
    }

    /// Gives the storage back (to model a crash: restart with [`MultiPaxos::new`] on it).
    pub fn into_storage(self) -> S {
        self.log.storage
    }

    fn hard_state(&self) -> HardState {
        HardState {
            promised: self.promised,
            commit: self.commit,
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    /// Queues a message from this node under `ballot`.
    fn send_with(&mut self, to: NodeId, ballot: Ballot, body: MessageBody) {
        // Only answers that promise durable state wait for it (see `crate::protocol`).
        let durable_promise = matches!(
            body,
            MessageBody::Promise { .. } | MessageBody::Accepted { .. }
        );
        let message = Message {
            from: self.config.id,
            to,
            ballot,
            body,
        };
        if durable_promise {
            self.writes.hold(message);
        } else {
            self.messages.push(message);
        }
    }

    /// Queues a message under this node's own ballot.
    fn send(&mut self, to: NodeId, body: MessageBody) {
        let ballot = self.ballot;
        self.send_with(to, ballot, body);
    }

    /// Records a storage failure: the member stops and `ready()` reports it.
    fn fail(&mut self, error: StorageError) {
        if self.stopped.is_none() {
            tracing::error!(id = self.config.id, %error, "storage failed; stopping");
            self.stopped = Some(error);
        }
    }

    fn step_inner(&mut self, m: Message) -> Result<(), StorageError> {
        self.max_round_seen = self.max_round_seen.max(m.ballot.round);
        match m.body {
            MessageBody::Prepare { from, transfer } => {
                self.handle_prepare(m.from, m.ballot, from, transfer)?
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(m.from, m.ballot),
            MessageBody::Promise {
                from,
                accepted,
                covered,
                last,
                compacted,
            } => self.handle_promise(m.from, m.ballot, from, accepted, covered, last, compacted),
            MessageBody::Accept { entries, commit } => {
                self.handle_accept(m.from, m.ballot, entries, commit)?
            }
            MessageBody::Accepted { first, last } => {
                self.handle_accepted(m.from, m.ballot, first, last)
            }
            MessageBody::Nack { promised } => self.handle_nack(m.ballot, promised),
            MessageBody::Heartbeat { commit, read_round } => {
                self.handle_heartbeat(m.from, m.ballot, commit, read_round)?
            }
            MessageBody::HeartbeatAck { read_round } => {
                self.handle_heartbeat_ack(m.from, m.ballot, read_round)
            }
            MessageBody::Fetch { from } => self.handle_fetch(m.from, from)?,
            MessageBody::Chosen { entries, commit } => {
                self.handle_chosen(m.from, entries, commit)?
            }
            MessageBody::Snapshot { snapshot } => self.handle_snapshot(m.from, snapshot),
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

    /// Names the chosen slots not yet handed out (in slot order, no gap) and keeps the applied
    /// membership. They are applied from storage ([`Ready::committed_in_storage`]): every one is
    /// stored there or staged in the write this same `ready()` issues, so no copy of each value
    /// is made for the hand-over.
    fn take_committed(&mut self) -> Result<Option<CommittedRange>, StorageError> {
        let mut upto = self.commit;
        if self.config.has_bug(config::PlantedBug::ApplyBeforeChosen) {
            // The fault: anything accepted contiguously counts as chosen.
            while self.log.get(upto + 1).ok().flatten().is_some() {
                upto += 1;
            }
        }
        if upto <= self.applied {
            return Ok(None);
        }
        let first = self.applied + 1;
        // Only a membership change's value is read here (to keep the applied configuration).
        for slot in self.log.conf_changes_in(first, upto) {
            let Some(entry) = self.log.get(slot)? else {
                return Err(StorageError::Inconsistent(format!(
                    "chosen slot {slot} is missing from storage"
                )));
            };
            if let EntryPayload::ConfChange(change) = &entry.payload {
                if let Ok(next) = membership::apply_change(&self.applied_conf, change) {
                    self.applied_conf = next;
                }
            }
        }
        debug_assert!(upto > self.applied, "applied only grows");
        self.applied = upto;
        Ok(Some(CommittedRange {
            first,
            last: upto,
            max_bytes_per_read: self.config.max_committed_bytes_per_ready,
        }))
    }
}

impl<S: PaxosStorage> Consensus for MultiPaxos<S> {
    type Message = Message;
    type HardState = HardState;
    type Storage = S;

    const NAME: &'static str = "multi-paxos";

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
        self.tick_fetch();
    }

    fn step(&mut self, message: Message) -> Result<(), Error> {
        if message.to != self.config.id {
            return Err(Error::MisroutedMessage {
                to: message.to,
                me: self.config.id,
            });
        }
        if let Some(error) = &self.stopped {
            return Err(Error::Stopped(error.clone()));
        }
        if let Err(error) = self.step_inner(message) {
            self.fail(error.clone());
            return Err(Error::Stopped(error));
        }
        Ok(())
    }

    fn propose(&mut self, data: Bytes) -> Result<Proposed, Error> {
        self.propose_payload(EntryPayload::Data(data))
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
            || self.log.has_unissued()
            || self.commit > self.applied
            || (self.config.has_bug(config::PlantedBug::ApplyBeforeChosen)
                && self.log.get(self.applied + 1).ok().flatten().is_some())
            || (self.role == Role::Leader && self.leader_has_work())
            || self.hard_state() != self.issued_hard_state
            || self.soft_state() != self.issued_soft_state
    }

    fn ready(&mut self) -> Result<Ready<Message, HardState>, Error> {
        if let Some(error) = &self.stopped {
            return Err(Error::Stopped(error.clone()));
        }
        // 1. Chosen entries first (a membership change among them may change who we send to).
        let committed_in_storage = match self.take_committed() {
            Ok(range) => range,
            Err(error) => {
                self.fail(error.clone());
                return Err(Error::Stopped(error));
            }
        };
        // 2. The leader moves proposals into the window and broadcasts them, batched.
        if self.role == Role::Leader {
            self.flush_leader();
        }
        // 3. The write, if anything changed.
        let hard_state = self.hard_state();
        let hard_state_changed = hard_state != self.issued_hard_state;
        let persist = if hard_state_changed || self.log.has_unissued() {
            let (snapshot, entries, one_run) = self.log.take_unissued();
            // Only a promise, accepted slots or a snapshot must be synced; a commit hint that
            // moved alone may be lost in a crash (it is relearnt).
            let sync = hard_state.promised != self.issued_hard_state.promised
                || snapshot.is_some()
                || !entries.is_empty();
            let token = self.writes.issue(Task {
                hard_state: hard_state_changed.then_some(hard_state),
                slots: if one_run {
                    SlotRuns::one(&entries)
                } else {
                    SlotRuns::of(&entries)
                },
            });
            self.issued_hard_state = hard_state;
            Some(Persist {
                token,
                write: Write {
                    snapshot,
                    truncate_from: None,
                    entries,
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
            committed: Vec::new(),
            committed_in_storage,
            reads: std::mem::take(&mut self.ready_reads),
            soft_state: soft_changed.then_some(soft_state),
        })
    }

    fn persisted(&mut self, token: PersistToken) -> Result<(), Error> {
        let (task, mut released) = self.writes.confirm(token)?;
        if let Some(last) = task.slots.max_slot() {
            self.persisted_slot = self.persisted_slot.max(last);
        }
        self.messages.append(&mut released);
        if let Some(durable) = task.hard_state {
            self.own_promise_durable(durable.promised);
        }
        self.own_accepts_durable(&task.slots);
        Ok(())
    }

    fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role,
            term: self.promised.round.max(self.ballot.round),
            leader: self.leader,
            commit: self.commit,
            applied: self.applied,
            last_index: self.log.last_slot(),
            persisted_index: self.persisted_slot,
            conf_state: self.applied_conf.clone(),
            protocol: Self::NAME,
            detail: vec![
                ("ballot", self.ballot.to_string()),
                ("promised", self.promised.to_string()),
            ],
        }
    }

    fn storage(&self) -> &S {
        &self.log.storage
    }

    fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }
}
