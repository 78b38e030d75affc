//! The primary: serial numbers, PREPARE to every replica, leases from the in-sync set, the commit
//! rule of each ack mode, and requests to remove a backup whose lease ran out or add one that
//! caught up.

use std::collections::BTreeMap;

use consensus_core::{Entry, EntryPayload, Error, NodeId, Proposed, Storage};

use super::PrimaryBackup;
use crate::config::Ack;
use crate::configuration::{Change, HardState};
use crate::message::Body;

/// `async` mode: the log runs at most this many windows ahead of the slowest member's durable
/// index before proposals are refused (the commit point itself stays within one window).
const ASYNC_AHEAD: u64 = 16;

/// What the primary knows of one other replica.
#[derive(Clone, Copy, Debug)]
pub(super) struct Progress {
    /// Next index to send.
    next: u64,
    /// Durable and matching through this index.
    pub(super) durable: u64,
    /// Whether it answered a prepare of this epoch that matched its log (until then `durable`
    /// says nothing and the primary probes for where the logs meet).
    matched: bool,
    /// While unmatched: the first index to send, the log end at first and lowered by each
    /// `Mismatch` hint (the replica's own log end) — one round trip finds an up-to-date tail.
    probe: u64,
    /// Send time of the newest prepare it answered (its lease runs `lease_ticks` from there).
    lease_from: Option<u64>,
    /// When the last prepare went to it.
    last_sent: u64,
    /// The index and send time of the snapshot sent to it and not yet confirmed.
    snapshot_sent: Option<(u64, u64)>,
    /// It asked to restart from a snapshot newer than this index ([`Body::Resync`]).
    resync_after: Option<u64>,
}

/// The primary's state.
#[derive(Clone, Debug)]
pub(super) struct Primary {
    /// The log end when this replica took office: it serves only once that is committed (its
    /// reconciliation: everything it prepared is on every member, backups cut what it never had).
    pub(super) epoch_start: u64,
    /// When it took office (a member that never answered counts as expired a lease later).
    since: u64,
    pub(super) progress: BTreeMap<NodeId, Progress>,
}

impl<S: Storage<HardState = HardState>> PrimaryBackup<S> {
    /// Takes office: every replica's progress starts unmatched, probing at the log end. It acts in the epoch (sends
    /// prepares, serves) only once the epoch is durable here ([`Self::epoch_durable`]).
    pub(super) fn become_primary(&mut self) {
        let last = self.last_index();
        let progress = self
            .cfg
            .replicas
            .iter()
            .filter(|&&r| r != self.cfg.id)
            .map(|&r| {
                (
                    r,
                    Progress {
                        next: last + 1,
                        durable: 0,
                        matched: false,
                        probe: last + 1,
                        lease_from: None,
                        last_sent: 0,
                        snapshot_sent: None,
                        resync_after: None,
                    },
                )
            })
            .collect();
        self.primary = Some(super::Primary {
            epoch_start: last,
            since: self.now,
            progress,
        });
        if self.state.synced_epoch != self.epoch() {
            self.state.synced_epoch = self.epoch();
            self.stage_hard_state();
        }
        self.update_soft();
        self.send_prepares(true);
    }

    /// Whether this replica's hard state of the current epoch is durable. A primary sends nothing
    /// and serves nothing before: a crash could otherwise lose the epoch while its prepares live
    /// on at a backup, and the restarted replica, learning the epoch again from the manager, would
    /// take office in it a second time and hand out the same serial numbers with other entries
    /// (a backup holding the old entry of the same epoch would keep it, and the two diverge).
    pub(super) fn epoch_durable(&self) -> bool {
        self.durable_synced_epoch == self.epoch()
    }

    /// The epoch just became durable: the primary starts acting in it.
    pub(super) fn on_epoch_durable(&mut self) {
        let now = self.now;
        if let Some(p) = &mut self.primary {
            p.since = now;
        }
        self.send_prepares(true);
    }

    /// Whether a lease from every required backup is still running.
    pub(super) fn leases_held(&self) -> bool {
        let Some(p) = &self.primary else { return false };
        let lease = self.cfg.lease_ticks;
        self.required().iter().all(|r| {
            p.progress
                .get(r)
                .and_then(|g| g.lease_from)
                .is_some_and(|from| self.now < from + lease)
        })
    }

    /// `async` mode: the lowest durable index among the required backups (the log end if there
    /// are none), which bounds the commit point; `None` in the other modes.
    fn slowest_durable(&self) -> Option<u64> {
        if self.cfg.ack != Ack::Async {
            return None;
        }
        let p = self.primary.as_ref()?;
        let slowest = self
            .required()
            .iter()
            .map(|r| p.progress.get(r).map_or(0, |g| g.durable))
            .min();
        Some(slowest.unwrap_or_else(|| self.last_index()))
    }

    pub(super) fn primary_propose(&mut self, payload: EntryPayload) -> Result<Proposed, Error> {
        if !self.is_serving() {
            return Err(Error::NotLeader {
                leader: self.state.config.primary.filter(|&p| p != self.cfg.id),
            });
        }
        let index = self.last_index() + 1;
        if let Some(slowest) = self.slowest_durable() {
            // What a failover can lose is bounded by the commit point (`advance_commit`); this
            // only bounds how far the log runs ahead of a slow backup.
            let limit = self.cfg.async_window * ASYNC_AHEAD;
            if index - slowest.min(index) > limit {
                return Err(Error::UncommittedLimit {
                    uncommitted: index - slowest,
                    limit,
                });
            }
        }
        let term = self.epoch();
        self.stage_entries([Entry {
            term,
            index,
            payload,
        }]);
        self.send_prepares(false);
        Ok(Proposed { index, term })
    }

    pub(super) fn primary_tick(&mut self) {
        self.send_prepares(false);
        self.check_leases();
        self.maybe_add_learner();
        self.advance_commit();
    }

    /// Sends each replica what it lacks; see [`Self::send_to`].
    fn send_prepares(&mut self, force: bool) {
        let Some(p) = &self.primary else { return };
        let replicas: Vec<NodeId> = p.progress.keys().copied().collect();
        for r in replicas {
            self.send_to(r, force);
        }
    }

    /// Sends `r` what it lacks. A matched replica gets batches pipelined up to a window of
    /// `4 × max_batch` entries beyond its durable index (called again on each of its answers, so
    /// catch-up streams at a window per round trip); an unmatched one only the probe. With
    /// nothing new, a beacon every `beacon_ticks`, which also goes back to the last acknowledged
    /// index (or the probe), resending what was lost.
    fn send_to(&mut self, r: NodeId, force: bool) {
        if !self.epoch_durable() {
            return;
        }
        let last = self.last_index();
        let window = (self.cfg.max_batch * 4) as u64;
        let now = self.now;
        let mut beacon = {
            let Some(g) = self.primary.as_mut().and_then(|p| p.progress.get_mut(&r)) else {
                return;
            };
            let due = force || now >= g.last_sent + self.cfg.beacon_ticks;
            if due {
                g.next = if g.matched { g.durable + 1 } else { g.probe };
            }
            due
        };
        loop {
            let g = self.primary.as_ref().expect("primary").progress[&r];
            let more = g.matched
                && g.next <= last
                && g.next - 1 < g.durable + window
                && !self.coalescing(&g, last);
            if !beacon && !more {
                return;
            }
            beacon = false;
            if g.resync_after.is_some() || g.next < self.storage.first_index() {
                // What it lacks is compacted here (or its state must restart): a snapshot.
                self.send_snapshot(r);
                return;
            }
            let prev_index = g.next - 1;
            let Some(prev_term) = self.term_at(prev_index) else {
                if prev_index < self.snapshot_point().0 {
                    // The entry before what it lacks is compacted (the log keeps a few trailing
                    // entries after a snapshot, but not their predecessor's epoch).
                    self.send_snapshot(r);
                }
                return;
            };
            let hi = last.min(prev_index + self.cfg.max_batch as u64);
            let entries: Vec<Entry> = (g.next..=hi).filter_map(|i| self.entry_at(i)).collect();
            let sent = entries.len() as u64;
            let body = Body::Prepare {
                config: self.state.config.clone(),
                sent_at: now,
                prev_index,
                prev_term,
                entries,
                commit: self.commit,
                last,
            };
            self.send(r, body);
            let g = self.progress_mut(r);
            g.next += sent;
            g.last_sent = now;
            if sent == 0 {
                return;
            }
        }
    }

    /// `async` mode: while a prepare to a backup is unanswered, new entries wait for its answer
    /// (which sends them) until a full batch is pending. No write waits on a backup here, so
    /// fewer, larger prepares cost the backups fewer messages and fsyncs per write; in the other
    /// modes every write waits for the backups, so entries go at once.
    fn coalescing(&self, g: &Progress, last: u64) -> bool {
        self.cfg.ack == Ack::Async
            && g.next - 1 > g.durable
            && last - (g.next - 1) < self.cfg.max_batch as u64
    }

    /// The primary's record of replica `r`, which `send_to` and `send_snapshot` only reach for a
    /// replica it tracks.
    fn progress_mut(&mut self, r: NodeId) -> &mut Progress {
        self.primary
            .as_mut()
            .and_then(|p| p.progress.get_mut(&r))
            .expect("a primary tracking this replica")
    }

    /// Sends `r` this replica's latest snapshot, unless one sent recently is still unconfirmed
    /// or (for a resync) none is newer than what `r` holds yet — the host snapshots as it applies,
    /// so a later beacon finds one. Until `r` confirms it, `r` is probed right after it.
    fn send_snapshot(&mut self, r: NodeId) {
        let now = self.now;
        let retry = self.cfg.snapshot_retry_ticks;
        let meta = self.storage.snapshot_meta();
        let g = self.primary.as_ref().expect("primary").progress[&r];
        if g.snapshot_sent.is_some_and(|(_, at)| now < at + retry)
            || g.resync_after.is_some_and(|after| meta.index <= after)
        {
            return;
        }
        let snapshot = match self.storage.snapshot() {
            Ok(snapshot) => snapshot,
            // Compacted again since `snapshot_meta` (a race with the host): the next beacon.
            Err(_) => return,
        };
        let index = snapshot.meta.index;
        let body = Body::Snapshot {
            config: self.state.config.clone(),
            sent_at: now,
            snapshot,
            commit: self.commit,
        };
        self.send(r, body);
        let g = self.progress_mut(r);
        g.snapshot_sent = Some((index, now));
        g.resync_after = None;
        g.last_sent = now;
        g.matched = false;
        g.next = index + 1;
        g.probe = index + 1;
    }

    /// `from` asks to restart its state from a snapshot newer than `after` (`async` mode: a
    /// failover took back entries it had applied).
    pub(super) fn on_resync(&mut self, from: NodeId, epoch: u64, after: u64) {
        if epoch != self.epoch() {
            return;
        }
        let Some(g) = self
            .primary
            .as_mut()
            .and_then(|p| p.progress.get_mut(&from))
        else {
            return;
        };
        if g.snapshot_sent.is_none_or(|(index, _)| index <= after) {
            g.resync_after = Some(after);
            g.snapshot_sent = None;
            g.matched = false;
        }
        self.send_to(from, true);
    }

    /// An answer from `from`: its lease and durable progress.
    pub(super) fn on_ack(
        &mut self,
        from: NodeId,
        epoch: u64,
        sent_at: u64,
        durable: Option<u64>,
        hint: Option<u64>,
    ) {
        if epoch != self.epoch() {
            return;
        }
        let now = self.now;
        let Some(p) = &mut self.primary else { return };
        let Some(g) = p.progress.get_mut(&from) else {
            return;
        };
        if sent_at <= now {
            g.lease_from = Some(g.lease_from.map_or(sent_at, |l| l.max(sent_at)));
        }
        let mut probe_again = false;
        if let Some(d) = durable {
            if g.snapshot_sent.is_some_and(|(index, _)| d >= index) {
                g.snapshot_sent = None;
            }
            g.matched = true;
            g.durable = g.durable.max(d);
            g.next = g.next.max(d + 1);
        }
        if let Some(h) = hint {
            if g.matched {
                g.next = g.next.min(h + 1).max(g.durable + 1);
            } else if h + 1 < g.probe {
                // Probe where its log ends (or below the mismatch) at once.
                g.probe = h + 1;
                probe_again = true;
            }
        }
        self.advance_commit();
        self.emit_committed();
        self.send_to(from, probe_again);
    }

    /// Moves the commit point as the ack mode says; only while every lease is held.
    pub(super) fn advance_commit(&mut self) {
        if !self.epoch_durable() || !self.leases_held() {
            return;
        }
        let Some(p) = &self.primary else { return };
        let own = self.durable.min(self.last_index());
        let mut ack = self.cfg.ack;
        if planted!(self.cfg, AllAckBeforeBackups) && ack == Ack::All {
            ack = Ack::Async;
        }
        let point = match ack {
            // Acknowledged writes stay within the window of every member's durable index: a
            // failover to any of them loses at most `async_window`.
            // (`None` under the planted bug, which commits an `all` group as if `async`.)
            Ack::Async => self
                .slowest_durable()
                .map_or(own, |slowest| own.min(slowest + self.cfg.async_window)),
            Ack::All => self
                .required()
                .iter()
                .map(|r| p.progress.get(r).map_or(0, |g| g.durable))
                .fold(own, u64::min),
            Ack::Quorum => {
                let mut all: Vec<u64> = p.progress.values().map(|g| g.durable).collect();
                all.push(own);
                all.sort_unstable_by(|a, b| b.cmp(a));
                all[self.cfg.replicas.len() / 2]
            }
        };
        if point > self.commit {
            self.commit = point;
        }
    }

    /// A backup whose lease ran out is removed through the manager (the primary serves again
    /// once the manager confirms).
    fn check_leases(&mut self) {
        if self.request.is_some() {
            return;
        }
        let Some(p) = &self.primary else { return };
        let lease = self.cfg.lease_ticks;
        let since = p.since;
        let expired = self.state.config.members.iter().copied().find(|r| {
            *r != self.cfg.id
                && p.progress.get(r).is_some_and(|g| {
                    g.lease_from
                        .map_or(self.now >= since + lease, |from| self.now >= from + lease)
                })
        });
        if let Some(r) = expired {
            let mut proposed = self.state.config.members.clone();
            proposed.remove(&r);
            self.send_request(Change::Remove(r), proposed);
        }
    }

    /// A replica outside the in-sync set that holds everything committed rejoins it.
    fn maybe_add_learner(&mut self) {
        if self.request.is_some() || !self.is_serving() {
            return;
        }
        let Some(p) = &self.primary else { return };
        let now = self.now;
        let lease = self.cfg.lease_ticks;
        let commit = self.commit;
        let learner = p.progress.iter().find(|(r, g)| {
            !self.state.config.is_member(**r)
                && g.durable >= commit
                && g.lease_from.is_some_and(|f| now < f + lease)
        });
        if let Some((&r, _)) = learner {
            let mut proposed = self.state.config.members.clone();
            proposed.insert(r);
            self.send_request(Change::Add(r), proposed);
        }
    }
}
