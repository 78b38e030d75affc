//! Zab (Junqueira, Reed, Serafini, DSN'11; Medeiros, "ZooKeeper's atomic broadcast protocol:
//! Theory and practice"), as a sans-IO state machine behind the [`Consensus`] seam.
//!
//! A member is *looking* (FastLeaderElection, `election`), *following* / *observing*, or
//! *leading*. An elected leader runs the three phases of Zab with a quorum:
//!
//! 1. **discovery** (`discovery`): FOLLOWERINFO(acceptedEpoch) from a quorum → NEWEPOCH(e') above
//!    all of them → ACKEPOCH(currentEpoch, last zxid) once the follower made `accepted_epoch = e'`
//!    durable. The leader checks it holds the most up-to-date history of the quorum (the election
//!    ordering makes it so; if not, it steps aside);
//! 2. **synchronisation** (`sync`): DIFF / TRUNC / SNAP chunks bring each follower to the
//!    leader's history; the last chunk carries NEWLEADER(e'), acknowledged once the follower made
//!    `current_epoch = e'` durable. The leader proposes nothing until a quorum ACKed NEWLEADER,
//!    then commits its initial history (UPTODATE);
//! 3. **broadcast** (`broadcast`): PROPOSAL → ACK once durable → COMMIT on a quorum.
//!
//! The zxid mapping is in `zxid`; observers in `observer`; ReadIndex-style reads in `read`;
//! single-server membership changes in `membership`; SNAP after compaction in `snapshot`; the
//! pure safety checker the simulator uses in [`invariants`].

mod broadcast;
mod config;
mod discovery;
mod election;
pub mod invariants;
mod log;
mod membership;
mod message;
mod observer;
mod read;
mod snapshot;
mod sync;
#[cfg(test)]
mod tests;
mod zxid;

pub use config::Config;
#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use message::{Message, MessageBody, PeerState, SyncKind, Vote};
pub use zxid::Zxid;

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use self::config::PlantedBug as Bug;
use self::election::Election;
use self::log::History;
use self::read::ReadQueue;
use crate::error::{Error, StorageError};
use crate::protocol::{Consensus, Persist, PersistToken, Ready, Write};
use crate::storage::Storage;
use crate::types::{
    ConfChange, ConfState, Entry, EntryPayload, NodeId, Proposed, ReadState, Role, SoftState,
    Status,
};
use crate::write_queue::WriteQueue;

/// Zab's durable state besides the history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest epoch this member acknowledged in NEWEPOCH (durable before ACKEPOCH leaves).
    pub accepted_epoch: u64,
    /// The epoch of the leader whose history this member adopted (durable before the ACK of
    /// NEWLEADER leaves).
    pub current_epoch: u64,
    /// Highest position known committed (a hint: written without sync).
    pub commit: u64,
}

/// Storage Zab can run on.
pub trait ZabStorage: Storage<HardState = HardState> {}

impl<S: Storage<HardState = HardState>> ZabStorage for S {}

/// Where a follower is in its session with its leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FollowerPhase {
    /// FOLLOWERINFO sent, waiting for NEWEPOCH.
    Discovery,
    /// ACKEPOCH sent, taking sync chunks until NEWLEADER.
    Sync,
    /// NEWLEADER acknowledged: taking proposals and commits.
    Broadcast,
}

/// A follower's (or observer's) session.
#[derive(Clone, Debug)]
pub(crate) struct Following {
    pub(crate) leader: NodeId,
    /// The leader's epoch (0 until NEWEPOCH arrives).
    pub(crate) epoch: u64,
    pub(crate) fresh: bool,
    pub(crate) phase: FollowerPhase,
    pub(crate) heard_at: u64,
    pub(crate) info_sent_at: u64,
}

/// Where the leader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeaderPhase {
    Discovery,
    Sync,
    Broadcast,
}

/// Where one follower is, as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerPhase {
    /// FOLLOWERINFO received; NEWEPOCH sent once the epoch is chosen.
    Info,
    /// ACKEPOCH received; sync chunks under way.
    Syncing,
    /// NEWLEADER acknowledged.
    Synced,
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) phase: PeerPhase,
    pub(crate) observer: bool,
    pub(crate) accepted_epoch: u64,
    /// ACKEPOCH: (fresh, current epoch, last zxid).
    pub(crate) ack_epoch: Option<(bool, u64, Zxid)>,
    pub(crate) next: u64,
    pub(crate) matched: u64,
    pub(crate) heard_at: u64,
    pub(crate) sent_at: u64,
    pub(crate) read_round: u64,
}

/// The leader's state.
#[derive(Debug)]
pub(crate) struct Leading {
    pub(crate) phase: LeaderPhase,
    /// e' (0 until a quorum sent FOLLOWERINFO).
    pub(crate) epoch: u64,
    pub(crate) epoch_durable: bool,
    pub(crate) new_leader_durable: bool,
    /// Last position of the initial history.
    pub(crate) initial_last: u64,
    pub(crate) peers: BTreeMap<NodeId, Peer>,
    pub(crate) since: u64,
    pub(crate) heartbeat_at: u64,
    pub(crate) quorum_checked_at: u64,
    pub(crate) reads: ReadQueue,
    pub(crate) broadcast_pending: bool,
}

/// What the member is doing.
#[derive(Debug)]
pub(crate) enum State {
    Looking,
    Following(Following),
    Leading(Box<Leading>),
}

/// A write handed to the driver and not yet confirmed.
#[derive(Debug)]
struct Task {
    hard_state: Option<HardState>,
    /// Last position in the write (clamped if a later truncation cut it).
    last_entry: Option<u64>,
    snapshot_index: Option<u64>,
}

/// One Zab member. Drive it through the [`Consensus`] trait.
pub struct Zab<S: ZabStorage> {
    pub(crate) config: Config,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) log: History<S>,
    pub(crate) accepted_epoch: u64,
    pub(crate) current_epoch: u64,
    pub(crate) commit: u64,
    pub(crate) applied: u64,
    /// Highest position known durable here.
    pub(crate) persisted: u64,
    pub(crate) conf: ConfState,
    pub(crate) state: State,
    pub(crate) election: Election,
    pub(crate) now: u64,
    pub(crate) election_timeout: u32,
    pub(crate) pending_conf_index: u64,
    /// Position where the last entry's epoch starts (for the zxid counter in status).
    pub(crate) epoch_start: u64,

    messages: Vec<Message>,
    pub(crate) ready_reads: Vec<ReadState>,
    /// Writes handed out and not yet durable, with the messages each holds back.
    writes: WriteQueue<Task, Message>,
    stopped: Option<StorageError>,
    issued_hard_state: HardState,
    issued_soft_state: SoftState,
}

impl<S: ZabStorage> Zab<S> {
    /// Builds a member from its configuration, its durable state (fresh storage for a new group,
    /// or what survived a restart) and a seeded RNG for election jitter. It starts looking.
    pub fn new(config: Config, storage: S, rng: ChaCha8Rng) -> Result<Self, Error> {
        config.validate()?;
        let hard_state = storage.hard_state();
        let meta = storage.snapshot_meta();
        let log = History::new(storage);
        let last = log.last_index();
        let applied = config.applied.max(meta.index);
        let commit = hard_state.commit.max(meta.index).min(last);
        if applied > commit {
            return Err(Error::InvalidConfig(
                "config.applied is beyond the durable commit index",
            ));
        }
        let mut conf = meta.conf_state.clone();
        if applied > meta.index {
            for entry in log.entries(meta.index + 1, applied + 1, u64::MAX)? {
                if let EntryPayload::ConfChange(change) = &entry.payload {
                    if let Ok(next) = membership::apply_change(&conf, change) {
                        conf = next;
                    }
                }
            }
        }
        let mut zab = Zab {
            rng,
            log,
            accepted_epoch: hard_state.accepted_epoch,
            current_epoch: hard_state.current_epoch,
            commit,
            applied,
            persisted: last,
            conf,
            state: State::Looking,
            election: Election::default(),
            now: 0,
            election_timeout: config.election_tick,
            pending_conf_index: 0,
            epoch_start: 0,
            messages: Vec::new(),
            ready_reads: Vec::new(),
            writes: WriteQueue::new(),
            stopped: None,
            issued_hard_state: hard_state,
            issued_soft_state: SoftState {
                leader: None,
                role: Role::Candidate,
            },
            config,
        };
        zab.recompute_epoch_start();
        zab.become_looking();
        Ok(zab)
    }

    /// The configuration this member runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The membership in force on this node (as of the last entry handed out for application).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// The role as the seam reports it (leading in sync or broadcast: Leader; following or
    /// observing: Follower; looking, or a prospective leader in discovery: Candidate).
    pub fn role(&self) -> Role {
        match &self.state {
            State::Leading(l) if l.phase != LeaderPhase::Discovery => Role::Leader,
            State::Following(_) => Role::Follower,
            _ => Role::Candidate,
        }
    }

    /// The leader this member follows (or itself when leading), if any.
    pub fn leader(&self) -> Option<NodeId> {
        match &self.state {
            State::Leading(l) if l.phase != LeaderPhase::Discovery => Some(self.config.id),
            State::Following(f) if f.phase == FollowerPhase::Broadcast => Some(f.leader),
            _ => None,
        }
    }

    /// The latest epoch acknowledged in NEWEPOCH.
    pub fn accepted_epoch(&self) -> u64 {
        self.accepted_epoch
    }

    /// The epoch of the history this member adopted.
    pub fn current_epoch(&self) -> u64 {
        self.current_epoch
    }

    /// The last zxid of this member's history (durable or not).
    pub fn last_zxid(&self) -> Zxid {
        self.log.last_zxid()
    }

    /// Whether this member is a leader that has not yet committed its initial history (it
    /// proposes nothing until a quorum ACKed NEWLEADER).
    pub fn is_establishing(&self) -> bool {
        matches!(&self.state, State::Leading(l) if l.phase != LeaderPhase::Broadcast)
    }

    /// Epoch of the entry at `index`, if this node holds it.
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }

    /// Entries `lo..hi` of this node's history, for tests and invariant checks.
    pub fn log_entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>, Error> {
        Ok(self.log.entries(lo, hi, u64::MAX)?)
    }

    /// Gives the storage back (to model a crash: restart with [`Zab::new`] on what was durable).
    pub fn into_storage(self) -> S {
        self.log.storage
    }

    /// ZooKeeper's name for what this member is doing (`looking`, `following`, `observing`,
    /// `leading`) and, unless looking, the Zab phase it is in with its leader (`discovery`,
    /// `synchronisation`, `broadcast`). A prospective leader is `leading` from its election on,
    /// as in ZooKeeper, though the seam's role stays `Candidate` until discovery is over.
    pub fn server_state(&self) -> (&'static str, Option<&'static str>) {
        let observing = self.is_observer();
        match &self.state {
            State::Looking if observing => ("observing", None),
            State::Looking => ("looking", None),
            State::Following(f) => {
                let phase = match f.phase {
                    FollowerPhase::Discovery => "discovery",
                    FollowerPhase::Sync => "synchronisation",
                    FollowerPhase::Broadcast => "broadcast",
                };
                (
                    if observing { "observing" } else { "following" },
                    Some(phase),
                )
            }
            State::Leading(l) => {
                let phase = match l.phase {
                    LeaderPhase::Discovery => "discovery",
                    LeaderPhase::Sync => "synchronisation",
                    LeaderPhase::Broadcast => "broadcast",
                };
                ("leading", Some(phase))
            }
        }
    }

    pub(crate) fn has_bug(&self, bug: Bug) -> bool {
        self.config.has_bug(bug)
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            accepted_epoch: self.accepted_epoch,
            current_epoch: self.current_epoch,
            commit: self.commit,
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader(),
            role: self.role(),
        }
    }

    pub(crate) fn quorum(&self) -> usize {
        self.conf.voters.len() / 2 + 1
    }

    pub(crate) fn randomize_timeout(&mut self) {
        let base = self.config.election_tick;
        self.election_timeout = base + self.rng.gen_range(0..base);
    }

    /// Queues a message that promises nothing durable: it leaves at once.
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        if to == self.config.id || to == 0 {
            return;
        }
        self.messages.push(Message {
            from: self.config.id,
            to,
            body,
        });
    }

    /// Queues a message whose content promises durable state (ACKEPOCH, ACK): it leaves once
    /// every write issued so far is confirmed.
    pub(crate) fn send_held(&mut self, to: NodeId, body: MessageBody) {
        if to == self.config.id || to == 0 {
            return;
        }
        self.writes.hold(Message {
            from: self.config.id,
            to,
            body,
        });
    }

    /// Moves the persisted mark back below a truncation (earlier writes no longer cover it).
    pub(crate) fn truncate_log(&mut self, from: u64) {
        self.log.truncate(from);
        let keep = from.saturating_sub(1);
        self.persisted = self.persisted.min(keep);
        for task in self.writes.records_mut() {
            if let Some(last) = task.last_entry.as_mut() {
                *last = (*last).min(keep);
            }
        }
        self.recompute_epoch_start();
    }

    pub(crate) fn append_entry(&mut self, entry: Entry) {
        if self.log.term(self.log.last_index()) != Some(entry.term) {
            self.epoch_start = entry.index - 1;
        }
        self.log.append(entry);
    }

    pub(crate) fn recompute_epoch_start(&mut self) {
        let last = self.log.last_index();
        let Some(term) = self.log.term(last) else {
            self.epoch_start = last;
            return;
        };
        let floor = self.log.snapshot_point().0;
        let mut i = last;
        while i > floor && self.log.term(i - 1) == Some(term) {
            i -= 1;
        }
        self.epoch_start = i.saturating_sub(1);
    }

    fn step_inner(&mut self, m: Message) -> Result<(), Error> {
        let from = m.from;
        match m.body {
            MessageBody::Notification { round, vote, state } => {
                self.handle_notification(from, round, vote, state);
            }
            MessageBody::FollowerInfo {
                accepted_epoch,
                observer,
            } => self.handle_follower_info(from, accepted_epoch, observer),
            MessageBody::NewEpoch { epoch } => self.handle_new_epoch(from, epoch),
            MessageBody::AckEpoch {
                epoch,
                fresh,
                current_epoch,
                last,
            } => self.handle_ack_epoch(from, epoch, fresh, current_epoch, last),
            MessageBody::Sync {
                epoch,
                kind,
                snapshot,
                prev_index,
                prev_epoch,
                entries,
                new_leader,
            } => self.handle_sync(
                from, epoch, kind, snapshot, prev_index, prev_epoch, entries, new_leader,
            )?,
            MessageBody::Ack {
                epoch,
                index,
                new_leader,
            } => self.handle_ack(from, epoch, index, new_leader),
            MessageBody::Nack { epoch, hint } => self.handle_nack(from, epoch, hint),
            MessageBody::Proposal {
                epoch,
                prev_index,
                entries,
                commit,
            } => self.handle_proposal(from, epoch, prev_index, entries, commit),
            MessageBody::Commit { epoch, commit } => self.handle_commit(from, epoch, commit),
            MessageBody::Ping {
                epoch,
                commit,
                read_round,
            } => self.handle_ping(from, epoch, commit, read_round),
            MessageBody::Pong { epoch, read_round } => self.handle_pong(from, epoch, read_round),
            MessageBody::ReadRequest { epoch, ctx } => self.handle_read_request(from, epoch, ctx),
            MessageBody::ReadIndex { epoch, ctx, index } => {
                self.handle_read_index(from, epoch, ctx, index)
            }
        }
        Ok(())
    }

    /// Hands committed entries out and applies membership changes among them.
    fn take_committed(&mut self) -> Result<Vec<Entry>, Error> {
        let hi = self.commit.min(self.log.last_index());
        if hi <= self.applied {
            return Ok(Vec::new());
        }
        let entries = self.log.entries(
            self.applied + 1,
            hi + 1,
            self.config.max_committed_bytes_per_ready,
        )?;
        if let Some(last) = entries.last() {
            debug_assert!(last.index > self.applied, "applied only grows");
            self.applied = last.index;
        }
        for entry in &entries {
            if let EntryPayload::ConfChange(change) = &entry.payload {
                self.apply_conf_change(change);
            }
        }
        Ok(entries)
    }

    fn stop(&mut self, error: Error) -> Error {
        let cause = match error {
            Error::Storage(e) => e,
            other => StorageError::Other(other.to_string()),
        };
        tracing::error!(error = %cause, "zab: storage failed; stopping");
        self.stopped = Some(cause.clone());
        Error::Stopped(cause)
    }
}

impl<S: ZabStorage> Consensus for Zab<S> {
    type Message = Message;
    type HardState = HardState;
    type Storage = S;

    const NAME: &'static str = "zab";

    fn id(&self) -> NodeId {
        self.config.id
    }

    fn tick(&mut self) {
        self.now += 1;
        match &self.state {
            State::Looking => self.tick_looking(),
            State::Following(_) => self.tick_following(),
            State::Leading(_) => self.tick_leading(),
        }
    }

    fn step(&mut self, message: Message) -> Result<(), Error> {
        if message.to != self.config.id {
            return Err(Error::MisroutedMessage {
                to: message.to,
                me: self.config.id,
            });
        }
        if self.stopped.is_some() {
            return Ok(());
        }
        self.step_inner(message)
    }

    fn propose(&mut self, data: Bytes) -> Result<Proposed, Error> {
        if data.len() as u64 > self.config.max_msg_bytes {
            return Err(Error::ProposalTooLarge {
                size: data.len() as u64,
                limit: self.config.max_msg_bytes,
            });
        }
        self.propose_entry(EntryPayload::Data(data))
    }

    fn propose_conf_change(&mut self, change: ConfChange) -> Result<Proposed, Error> {
        self.propose_membership(change)
    }

    fn read_index(&mut self, ctx: u64) -> Result<(), Error> {
        self.request_read(ctx)
    }

    fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error> {
        let _ = to;
        Err(Error::Unsupported {
            protocol: Self::NAME,
            capability: "leader transfer",
        })
    }

    fn has_ready(&self) -> bool {
        if self.stopped.is_some() {
            return true;
        }
        !self.messages.is_empty()
            || self.writes.has_held()
            || !self.ready_reads.is_empty()
            || matches!(&self.state, State::Leading(l) if l.broadcast_pending || l.reads.ping_pending())
            || self.log.has_unissued()
            || self.commit.min(self.log.last_index()) > self.applied
            || self.hard_state() != self.issued_hard_state
            || self.soft_state() != self.issued_soft_state
    }

    fn ready(&mut self) -> Result<Ready<Message, HardState>, Error> {
        if let Some(error) = &self.stopped {
            return Err(Error::Stopped(error.clone()));
        }
        let mut committed = match self.take_committed() {
            Ok(entries) => entries,
            Err(error) => return Err(self.stop(error)),
        };
        if let Err(error) = self.flush_broadcast() {
            return Err(self.stop(error));
        }
        let hard_state = self.hard_state();
        let hard_changed = hard_state != self.issued_hard_state;
        let persist = if hard_changed || self.log.has_unissued() {
            let (snapshot, truncate_from, entries) = self.log.take_unissued();
            let epochs_changed = hard_state.accepted_epoch != self.issued_hard_state.accepted_epoch
                || hard_state.current_epoch != self.issued_hard_state.current_epoch;
            let sync = epochs_changed
                || snapshot.is_some()
                || truncate_from.is_some()
                || !entries.is_empty();
            let token = self.writes.issue(Task {
                hard_state: hard_changed.then_some(hard_state),
                last_entry: entries
                    .last()
                    .map(|e| e.index)
                    .or(snapshot.as_ref().map(|s| s.meta.index)),
                snapshot_index: snapshot.as_ref().map(|s| s.meta.index),
            });
            if let Some(s) = &snapshot {
                // The replica loop installs the snapshot in the state machine with this write.
                self.applied = self.applied.max(s.meta.index);
                self.commit = self.commit.max(s.meta.index);
                committed.retain(|e| e.index > s.meta.index);
                // The state machine and the membership restart from the snapshot.
                self.conf = s.meta.conf_state.clone();
            }
            self.issued_hard_state = hard_state;
            Some(Persist {
                token,
                write: Write {
                    snapshot,
                    truncate_from,
                    entries: entries.into(),
                    hard_state: hard_changed.then_some(hard_state),
                    sync,
                },
            })
        } else {
            None
        };
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
            self.persisted = self.persisted.max(index);
        }
        if let Some(last) = task.last_entry {
            self.persisted = self.persisted.max(last).min(self.log.last_index());
        }
        self.messages.append(&mut released);
        if let Some(durable) = task.hard_state {
            self.own_epochs_durable(durable);
        }
        if matches!(self.state, State::Leading(_)) {
            self.leader_progress();
        }
        Ok(())
    }

    fn status(&self) -> Status {
        let zxid = self.log.last_zxid();
        let (state, phase) = self.server_state();
        let mut detail = vec![("state", state.to_string())];
        if let Some(phase) = phase {
            detail.push(("phase", phase.to_string()));
        }
        detail.extend([
            ("current_epoch", self.current_epoch.to_string()),
            ("accepted_epoch", self.accepted_epoch.to_string()),
            (
                "zxid",
                format!("{}.{}", zxid.epoch, zxid.counter(self.epoch_start)),
            ),
        ]);
        Status {
            id: self.config.id,
            role: self.role(),
            term: self.current_epoch,
            leader: self.leader(),
            commit: self.commit,
            applied: self.applied,
            last_index: self.log.last_index(),
            persisted_index: self.persisted,
            conf_state: self.conf.clone(),
            protocol: Self::NAME,
            detail,
        }
    }

    fn storage(&self) -> &S {
        &self.log.storage
    }

    fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }
}

impl<S: ZabStorage> std::fmt::Debug for Zab<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zab")
            .field("id", &self.config.id)
            .field("state", &self.state)
            .field("accepted_epoch", &self.accepted_epoch)
            .field("current_epoch", &self.current_epoch)
            .field("commit", &self.commit)
            .finish_non_exhaustive()
    }
}
