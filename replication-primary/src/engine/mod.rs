//! The replica engine: one [`PrimaryBackup`] per replica, primary or backup as its configuration
//! says, driven through [`consensus_core::Consensus`] by the shared replica loop.
//!
//! This file holds the state, the staging of writes (entries, truncations and hard state
//! accumulate into one [`Write`] per `ready()`), configuration changes and the trait; `primary.rs`
//! the primary's replication, leases and commit rule; `backup.rs` prepares, fencing, the grace
//! period and the quorum-mode tail check.

mod backup;
mod primary;

use std::collections::BTreeSet;

use bytes::Bytes;
use consensus_core::{
    ConfState, Consensus, Entry, EntryPayload, Error, NodeId, Persist, PersistToken, Proposed,
    ReadState, Ready, Role, SoftState, Status, Storage, Write, WriteQueue,
};

use crate::config::Config;
use crate::configuration::{Change, ChangeRequest, Configuration, HardState};
use crate::message::{Body, Message, MANAGER};

use self::backup::Backup;
use self::primary::Primary;

/// What each write leaves durable once confirmed: the log end and the synced epoch.
#[derive(Clone, Copy, Debug)]
struct Record {
    last: u64,
    synced_epoch: u64,
}

/// A change request sent to the manager and not yet answered.
#[derive(Clone, Debug)]
struct PendingRequest {
    request: ChangeRequest,
    /// Members of the configuration the request would install (leases and `all`-mode acks are
    /// required from these too while it is in flight).
    proposed: BTreeSet<NodeId>,
    sent_at: u64,
}

/// One replica of a primary-backup group (PacificA).
#[derive(Debug)]
pub struct PrimaryBackup<S: Storage<HardState = HardState>> {
    cfg: Config,
    storage: S,
    /// The newest hard state (staged or durable).
    state: HardState,
    now: u64,
    commit: u64,
    applied: u64,
    /// The log is durable through this index.
    durable: u64,
    durable_synced_epoch: u64,
    queue: WriteQueue<Record, Message>,
    staged: Write<HardState>,
    out: Vec<Message>,
    committed: Vec<Entry>,
    reads: Vec<ReadState>,
    soft: Option<SoftState>,
    last_soft: (Option<NodeId>, Role),
    primary: Option<Primary>,
    backup: Backup,
    request: Option<PendingRequest>,
}

impl<S: Storage<HardState = HardState>> PrimaryBackup<S> {
    /// Starts a replica on what `storage` holds durably.
    pub fn new(cfg: Config, storage: S) -> Result<Self, Error> {
        cfg.validate()?;
        let mut state = storage.hard_state();
        if state.config.version == 0 {
            state.config = cfg.bootstrap();
        }
        let durable = storage.last_index();
        let applied = cfg.applied.min(durable);
        let mut engine = PrimaryBackup {
            storage,
            durable,
            durable_synced_epoch: state.synced_epoch,
            state,
            now: 0,
            commit: applied,
            applied,
            queue: WriteQueue::new(),
            staged: empty_write(),
            out: Vec::new(),
            committed: Vec::new(),
            reads: Vec::new(),
            soft: None,
            last_soft: (None, Role::Follower),
            primary: None,
            backup: Backup::default(),
            request: None,
            cfg,
        };
        let config = engine.state.config.clone();
        if config.primary == Some(engine.cfg.id) && engine.cfg.ack != crate::config::Ack::Quorum {
            // A primary never resumes an epoch after a restart (it may have lost a tail its
            // backups hold, and would then reuse serial numbers): it asks for a fresh epoch —
            // the bootstrap primary too, since a fresh start and a crash before anything became
            // durable look the same. Its own durable log holds every acknowledged write in `all`
            // and `async` modes; in `quorum` mode it first checks a majority's tails after its
            // grace period, like any candidate.
            engine.send_request(Change::BecomePrimary(engine.cfg.id), config.members);
        }
        engine.update_soft();
        Ok(engine)
    }

    /// Whether this replica is the primary and may serve reads and acknowledge writes now: it
    /// holds a lease from every backup and has committed everything it prepared before.
    pub fn is_serving(&self) -> bool {
        self.epoch_durable()
            && self
                .primary
                .as_ref()
                .is_some_and(|p| self.commit >= p.epoch_start)
            && self.leases_held()
    }

    /// The configuration this replica knows.
    pub fn configuration(&self) -> &Configuration {
        &self.state.config
    }

    /// The epoch this replica is in.
    pub fn epoch(&self) -> u64 {
        self.state.config.epoch
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// A backup's lag: entries the primary reported committed that this replica has not applied.
    pub fn lag(&self) -> u64 {
        self.backup.primary_commit.saturating_sub(self.applied)
    }

    /// Replicas whose leases (and, in `all` mode, acknowledgements) the primary needs: the
    /// in-sync set, plus those a pending request would add.
    fn required(&self) -> BTreeSet<NodeId> {
        let mut set = self.state.config.members.clone();
        if let Some(r) = &self.request {
            set.extend(r.proposed.iter().copied());
        }
        set.remove(&self.cfg.id);
        set
    }

    // ---- the staged write -------------------------------------------------------------------

    /// The log end, counting staged changes.
    fn last_index(&self) -> u64 {
        self.last_index_after(&self.staged)
    }

    /// The index and term of the latest snapshot, counting a staged one (everything through it
    /// is applied here and no longer in the log).
    fn snapshot_point(&self) -> (u64, u64) {
        match &self.staged.snapshot {
            Some(s) => (s.meta.index, s.meta.term),
            None => {
                let meta = self.storage.snapshot_meta();
                (meta.index, meta.term)
            }
        }
    }

    /// The entry at `index`, counting staged changes.
    fn entry_at(&self, index: u64) -> Option<Entry> {
        if let Some(first) = self.staged.entries.first() {
            if index >= first.index {
                return self
                    .staged
                    .entries
                    .get((index - first.index) as usize)
                    .cloned();
            }
        }
        if self.staged.truncate_from.is_some_and(|t| index >= t) {
            return None;
        }
        if self.staged.snapshot.is_some() {
            return None; // a staged snapshot replaces the whole stored log (see `on_snapshot`)
        }
        if index > self.storage.last_index() || index < self.storage.first_index() {
            return None;
        }
        let mut out = Vec::new();
        self.storage
            .entries(index, index + 1, u64::MAX, &mut out)
            .ok()?;
        out.pop().filter(|e| e.index == index)
    }

    /// The term of the entry at `index` (0 for index 0).
    fn term_at(&self, index: u64) -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        let (snapshot, term) = self.snapshot_point();
        if index == snapshot {
            return Some(term);
        }
        self.entry_at(index).map(|e| e.term)
    }

    /// Cuts the log from `from` on.
    fn stage_truncate(&mut self, from: u64) {
        self.staged.entries.make_mut().retain(|e| e.index < from);
        self.staged.truncate_from = Some(self.staged.truncate_from.map_or(from, |t| t.min(from)));
        self.durable = self.durable.min(from - 1);
        for r in self.queue.records_mut() {
            r.last = r.last.min(from - 1);
        }
    }

    fn stage_entries(&mut self, entries: impl IntoIterator<Item = Entry>) {
        self.staged.entries.make_mut().extend(entries);
    }

    fn stage_hard_state(&mut self) {
        self.staged.hard_state = Some(self.state.clone());
    }

    /// Sends now.
    fn send(&mut self, to: NodeId, body: Body) {
        self.out.push(Message {
            from: self.cfg.id,
            to,
            epoch: self.epoch(),
            body,
        });
    }

    /// Sends once every write staged or issued so far is durable.
    fn send_held(&mut self, to: NodeId, body: Body) {
        let m = Message {
            from: self.cfg.id,
            to,
            epoch: self.epoch(),
            body,
        };
        self.queue.hold(m);
    }

    /// Hands out committed entries up to `commit`.
    fn emit_committed(&mut self) {
        let upto = self.commit.min(self.last_index());
        while self.applied < upto {
            let Some(e) = self.entry_at(self.applied + 1) else {
                break;
            };
            self.applied += 1;
            self.committed.push(e);
        }
    }

    // ---- configuration --------------------------------------------------------------------

    /// Asks the manager for `change`; `proposed` is the in-sync set it would install.
    fn send_request(&mut self, change: Change, proposed: BTreeSet<NodeId>) {
        let request = ChangeRequest {
            based_on: self.state.config.version,
            change,
        };
        self.request = Some(PendingRequest {
            request,
            proposed,
            sent_at: self.now,
        });
        self.send(MANAGER, Body::Request(request));
    }

    /// Resends an unanswered request every `retry_ticks`.
    fn retry_request(&mut self) {
        let Some(r) = &self.request else { return };
        if self.now >= r.sent_at + self.cfg.retry_ticks {
            let request = r.request;
            if let Some(r) = &mut self.request {
                r.sent_at = self.now;
            }
            self.send(MANAGER, Body::Request(request));
        }
    }

    /// Learns `config` if it is newer than what this replica knows.
    fn learn(&mut self, config: Configuration) {
        if config.version <= self.state.config.version {
            return;
        }
        if self
            .request
            .as_ref()
            .is_some_and(|r| r.request.based_on < config.version)
        {
            self.request = None;
        }
        let new_epoch = config.epoch != self.state.config.epoch;
        self.state.config = config;
        self.stage_hard_state();
        let me = self.cfg.id;
        if self.state.config.primary == Some(me) {
            // A new epoch makes it primary. A later version of the same epoch keeps a primary in
            // office, but never re-installs one that restarted: it waits for a fresh epoch
            // (resuming would reuse serial numbers its backups may hold with other content).
            if new_epoch {
                self.become_primary();
            }
        } else {
            self.primary = None;
        }
        if new_epoch {
            self.backup.entered_epoch(self.now);
        }
        self.update_soft();
    }

    fn update_soft(&mut self) {
        let role = if self.primary.is_some() {
            Role::Leader
        } else {
            Role::Follower
        };
        let now = (self.state.config.primary, role);
        if now != self.last_soft {
            self.last_soft = now;
            self.soft = Some(SoftState {
                leader: now.0,
                role,
            });
        }
    }

    fn handle(&mut self, m: Message) -> Result<(), Error> {
        match m.body {
            Body::Installed(config) if m.from == MANAGER => {
                self.learn(config);
                Ok(())
            }
            Body::Installed(_) | Body::Request(_) => Ok(()),
            Body::Fenced { config } => {
                self.learn(config);
                Ok(())
            }
            Body::PrepareAck { sent_at, durable } => {
                self.on_ack(m.from, m.epoch, sent_at, Some(durable), None);
                Ok(())
            }
            Body::Mismatch { sent_at, hint } => {
                self.on_ack(m.from, m.epoch, sent_at, None, Some(hint));
                Ok(())
            }
            Body::Prepare {
                config,
                sent_at,
                prev_index,
                prev_term,
                entries,
                commit,
                last,
            } => self.on_prepare(
                m.from, m.epoch, config, sent_at, prev_index, prev_term, entries, commit, last,
            ),
            Body::Snapshot {
                config,
                sent_at,
                snapshot,
                commit,
            } => self.on_snapshot(m.from, m.epoch, config, sent_at, snapshot, commit),
            Body::Resync { after } => {
                self.on_resync(m.from, m.epoch, after);
                Ok(())
            }
            Body::TailQuery { round, commit } => {
                self.on_tail_query(m.from, m.epoch, round, commit);
                Ok(())
            }
            Body::TailReply {
                round,
                synced_epoch,
                last_index,
                last_term,
                prev_index,
                prev_term,
                entries,
            } => {
                let tail = backup::Tail {
                    key: (synced_epoch, last_index),
                    last_term,
                    prev_index,
                    prev_term,
                    entries,
                };
                self.on_tail_reply(m.from, m.epoch, round, tail);
                Ok(())
            }
        }
    }
}

fn empty_write() -> Write<HardState> {
    Write {
        snapshot: None,
        truncate_from: None,
        entries: consensus_core::Entries::new(),
        hard_state: None,
        sync: true,
    }
}

impl<S: Storage<HardState = HardState>> Consensus for PrimaryBackup<S> {
    type Message = Message;
    type HardState = HardState;
    type Storage = S;

    const NAME: &'static str = "primary-backup";

    fn id(&self) -> NodeId {
        self.cfg.id
    }

    fn tick(&mut self) {
        self.now += 1;
        self.retry_request();
        if self.primary.is_some() {
            self.primary_tick();
        } else {
            self.backup_tick();
        }
    }

    fn step(&mut self, message: Message) -> Result<(), Error> {
        if message.to != self.cfg.id {
            return Err(Error::MisroutedMessage {
                to: message.to,
                me: self.cfg.id,
            });
        }
        self.handle(message)?;
        self.emit_committed();
        Ok(())
    }

    fn propose(&mut self, data: Bytes) -> Result<Proposed, Error> {
        self.primary_propose(EntryPayload::Data(data))
    }

    fn read_index(&mut self, ctx: u64) -> Result<(), Error> {
        let unleased = planted!(self.cfg, ReadWithoutLease) && self.primary.is_some();
        if !self.is_serving() && !unleased {
            return Err(Error::NotLeader {
                leader: self.state.config.primary,
            });
        }
        self.reads.push(ReadState {
            ctx,
            index: self.commit,
        });
        Ok(())
    }

    fn has_ready(&self) -> bool {
        !self.out.is_empty()
            || !self.staged.is_empty()
            || self.queue.has_held()
            || !self.committed.is_empty()
            || !self.reads.is_empty()
            || self.soft.is_some()
    }

    fn ready(&mut self) -> Result<Ready<Message, HardState>, Error> {
        let mut persist = None;
        if !self.staged.is_empty() {
            let write = std::mem::replace(&mut self.staged, empty_write());
            let record = Record {
                last: self.last_index_after(&write),
                synced_epoch: self.state.synced_epoch,
            };
            let token = self.queue.issue(record);
            persist = Some(Persist { token, write });
        }
        let mut messages = std::mem::take(&mut self.out);
        let before = messages.len();
        self.queue.attach_held(&mut messages);
        // Held messages released at once were written for the current epoch only.
        let epoch = self.epoch();
        let mut i = before;
        while i < messages.len() {
            if messages[i].epoch != epoch {
                messages.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(Ready {
            messages,
            persist,
            committed: std::mem::take(&mut self.committed),
            committed_in_storage: None,
            reads: std::mem::take(&mut self.reads),
            soft_state: self.soft.take(),
        })
    }

    fn persisted(&mut self, token: PersistToken) -> Result<(), Error> {
        let (record, held) = self.queue.confirm(token)?;
        let was_durable = self.epoch_durable();
        self.durable = record.last;
        self.durable_synced_epoch = record.synced_epoch;
        if self.primary.is_some() && !was_durable && self.epoch_durable() {
            self.on_epoch_durable();
        }
        let epoch = self.epoch();
        // An answer promised in an epoch this replica has left is void: drop it.
        self.out
            .extend(held.into_iter().filter(|m| m.epoch == epoch));
        if self.primary.is_some() {
            self.advance_commit();
        }
        self.emit_committed();
        Ok(())
    }

    fn status(&self) -> Status {
        let config = &self.state.config;
        Status {
            id: self.cfg.id,
            role: self.last_soft.1,
            term: config.epoch,
            leader: config.primary,
            commit: self.commit,
            applied: self.applied,
            last_index: self.last_index(),
            persisted_index: self.durable,
            conf_state: ConfState::with_voters(config.members.iter().copied()),
            protocol: Self::NAME,
            detail: vec![
                ("version", config.version.to_string()),
                ("serving", self.is_serving().to_string()),
                ("synced_epoch", self.state.synced_epoch.to_string()),
                ("lag", self.lag().to_string()),
                ("in_sync", join_ids(config.members.iter().copied())),
                ("backup_lag", self.backup_lags()),
            ],
        }
    }

    fn storage(&self) -> &S {
        &self.storage
    }

    fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }
}

/// `1,2,3`.
fn join_ids(ids: impl Iterator<Item = NodeId>) -> String {
    ids.map(|id| id.to_string()).collect::<Vec<_>>().join(",")
}

impl<S: Storage<HardState = HardState>> PrimaryBackup<S> {
    /// At the primary, each other replica's lag: entries of the primary's log not yet durable
    /// there as far as the primary knows (`2=0,3=5`); `-` elsewhere.
    fn backup_lags(&self) -> String {
        let Some(p) = &self.primary else {
            return "-".into();
        };
        let last = self.last_index();
        p.progress
            .iter()
            .map(|(id, g)| format!("{id}={}", last.saturating_sub(g.durable)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The log end once `write` (staged, or just taken from the stage) is applied to storage.
    fn last_index_after(&self, write: &Write<HardState>) -> u64 {
        if let Some(e) = write.entries.last() {
            return e.index;
        }
        let stored = match &write.snapshot {
            // Staged with a cut right after it: nothing stored survives.
            Some(s) => s.meta.index,
            None => self.storage.last_index(),
        };
        match write.truncate_from {
            Some(t) => stored.min(t - 1),
            None => stored,
        }
    }
}
