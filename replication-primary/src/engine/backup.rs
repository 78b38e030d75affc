//! The backup: fencing, prepares (append, cut what a new primary never prepared, acknowledge once
//! durable), the grace period before asking to take over, and the quorum-mode tail check.

use std::collections::BTreeMap;

use consensus_core::{Entry, Error, NodeId, Snapshot, Storage, StorageError};

use super::PrimaryBackup;
use crate::config::Ack;
use crate::configuration::{Change, Configuration, HardState};
use crate::message::{Body, MAX_TAIL_ENTRIES};

/// A quorum-mode candidate's round of tail queries.
#[derive(Clone, Debug)]
struct TailRound {
    round: u64,
    started: u64,
    /// Each replier's durable `(synced_epoch, last)` and last term.
    replies: BTreeMap<NodeId, ((u64, u64), u64)>,
    /// The best tail pulled in this round.
    adopted: Option<(u64, u64)>,
}

/// What a [`Body::TailReply`] says.
#[derive(Clone, Debug)]
pub(super) struct Tail {
    pub(super) key: (u64, u64),
    pub(super) last_term: u64,
    pub(super) prev_index: u64,
    pub(super) prev_term: u64,
    pub(super) entries: Vec<Entry>,
}

/// The backup's state.
#[derive(Clone, Debug, Default)]
pub(super) struct Backup {
    /// When this replica last accepted a message of its primary (or entered its epoch, or
    /// started: a restarted replica waits a whole grace period).
    last_heard: u64,
    /// The commit point the primary last reported.
    pub(super) primary_commit: u64,
    tail: Option<TailRound>,
    rounds: u64,
    /// It asked its primary for a snapshot newer than this index ([`Body::Resync`]).
    resync_after: Option<u64>,
}

impl Backup {
    pub(super) fn entered_epoch(&mut self, now: u64) {
        self.last_heard = now;
        self.tail = None;
        self.resync_after = None;
    }
}

impl<S: Storage<HardState = HardState>> PrimaryBackup<S> {
    /// What every message of a primary passes first: fencing (a lower epoch is answered
    /// [`Body::Fenced`]), learning its configuration, and — when it is this replica's primary —
    /// the grace clock and the commit point it reports. `None`: drop the message; `Some(lower)`
    /// otherwise (`lower` only with the planted bug that accepts a lower epoch).
    fn accept_primary(
        &mut self,
        from: NodeId,
        epoch: u64,
        config: Configuration,
        commit: u64,
    ) -> Option<bool> {
        let lower = epoch < self.epoch();
        if lower && !planted!(self.cfg, AcceptLowerEpoch) {
            let config = self.state.config.clone();
            self.send(from, Body::Fenced { config });
            return None;
        }
        if !lower {
            self.learn(config);
            if self.epoch() != epoch || self.state.config.primary != Some(from) {
                return None;
            }
            if self.primary.is_some() {
                return None;
            }
            if self
                .request
                .as_ref()
                .is_some_and(|r| matches!(r.request.change, Change::BecomePrimary(_)))
            {
                // It asked to take over: it grants its primary no further lease (the manager may
                // install it any moment, and it would serve while that lease ran).
                return None;
            }
            self.backup.last_heard = self.now;
            self.backup.primary_commit = self.backup.primary_commit.max(commit);
        }
        Some(lower)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_prepare(
        &mut self,
        from: NodeId,
        epoch: u64,
        config: Configuration,
        sent_at: u64,
        mut prev_index: u64,
        mut prev_term: u64,
        mut entries: Vec<Entry>,
        commit: u64,
        last: u64,
    ) -> Result<(), Error> {
        let Some(lower) = self.accept_primary(from, epoch, config, commit) else {
            return Ok(());
        };
        let (snapshot, snapshot_term) = self.snapshot_point();
        if prev_index < snapshot {
            // Entries through this replica's snapshot are applied here and no longer in its log:
            // match from the snapshot on. One at the snapshot's index with another epoch means the
            // primary's history differs from what this replica applied.
            let end = prev_index + entries.len() as u64;
            if last < snapshot && self.state.synced_epoch < epoch && !lower {
                // A new epoch's primary whose log ends below what this replica applied (within
                // an epoch a smaller `last` is only a reordered older prepare).
                return self.taken_back(from, epoch, last + 1);
            }
            if end < snapshot {
                let body = Body::Mismatch {
                    sent_at,
                    hint: self.last_index(),
                };
                self.send(from, body);
                return Ok(());
            }
            let at = (snapshot - prev_index) as usize; // entries[at - 1] is at `snapshot`
            if entries[at - 1].term != snapshot_term {
                return self.taken_back(from, epoch, snapshot);
            }
            entries.drain(..at);
            (prev_index, prev_term) = (snapshot, snapshot_term);
        }
        let end = prev_index + entries.len() as u64;
        let matches =
            prev_index <= self.last_index() && self.term_at(prev_index) == Some(prev_term);
        if !matches {
            // Where the primary should look next: the log end, or below the mismatch; skipping
            // entries of epochs above `prev_term`, which the primary's log cannot hold there.
            let mut hint = self.last_index().min(prev_index.saturating_sub(1));
            while hint > 0 && self.term_at(hint).is_some_and(|t| t > prev_term) {
                hint -= 1;
            }
            self.send(from, Body::Mismatch { sent_at, hint });
            return Ok(());
        }
        // What to cut: the first entry that conflicts; and, on the first prepares of an epoch,
        // a tail of older epochs beyond the primary's log end (`last`). Every entry the primary
        // holds past `last`'s predecessors is of its own epoch (it took office at or below
        // `last`), so an older-epoch entry there was never prepared by it; reordered prepares
        // of this epoch can therefore never cut what this epoch's primary sent.
        let mut k = 0;
        while k < entries.len() && self.term_at(entries[k].index) == Some(entries[k].term) {
            k += 1;
        }
        let mut cut = None;
        if k < entries.len() && entries[k].index <= self.last_index() {
            cut = Some(entries[k].index);
        } else if k == entries.len()
            && self.state.synced_epoch < epoch
            && self.last_index() > last
            && self.term_at(last + 1).is_some_and(|t| t < epoch)
        {
            cut = Some(last + 1);
        }
        if let Some(c) = cut {
            if c <= self.applied {
                return self.taken_back(from, epoch, c);
            }
            self.stage_truncate(c);
        }
        let wrote = cut.is_some() || k < entries.len();
        self.stage_entries(entries.into_iter().skip(k));
        let mut synced = false;
        if self.last_index() == end && self.state.synced_epoch < epoch && !lower {
            self.state.synced_epoch = epoch;
            self.stage_hard_state();
            synced = true;
        }
        self.commit = self.commit.max(commit.min(end));
        let body = Body::PrepareAck {
            sent_at,
            durable: end,
        };
        if wrote || synced || self.durable < end {
            self.send_held(from, body);
        } else {
            self.send(from, body);
        }
        Ok(())
    }

    /// Epoch `epoch` cuts index `cut`, which this replica applied — only an `async` failover can
    /// take back what a replica applied: its state machine is ahead of the log it must keep.
    /// When its own latest snapshot precedes the cut, it stops (the host restarts it from that
    /// snapshot and replays the log, which the primary then cuts); when the snapshot holds taken-back
    /// entries, it asks the primary for a newer one to restart its state from ([`Body::Resync`]).
    fn taken_back(&mut self, from: NodeId, epoch: u64, cut: u64) -> Result<(), Error> {
        let (snapshot, _) = self.snapshot_point();
        if cut > snapshot || self.cfg.ack != Ack::Async {
            return Err(Error::Stopped(StorageError::Inconsistent(format!(
                "epoch {epoch} cuts index {cut}, below applied {}",
                self.applied
            ))));
        }
        self.backup.resync_after = Some(snapshot);
        self.send(from, Body::Resync { after: snapshot });
        Ok(())
    }

    /// A snapshot from the primary: unless this replica already applied through it (and needs no
    /// restart), its state machine and log restart from it — the snapshot replaces the log,
    /// nothing stored survives it — and it answers once that is durable.
    pub(super) fn on_snapshot(
        &mut self,
        from: NodeId,
        epoch: u64,
        config: Configuration,
        sent_at: u64,
        snapshot: Snapshot,
        commit: u64,
    ) -> Result<(), Error> {
        match self.accept_primary(from, epoch, config, commit) {
            Some(false) => {}
            Some(true) | None => return Ok(()),
        }
        let index = snapshot.meta.index;
        let resync = self.backup.resync_after;
        let wanted = match resync {
            Some(after) => index > after,
            // A log that holds the snapshot's last entry holds everything before it (log
            // matching), and entries after it may be acknowledged: keep it and catch up by log.
            // One that lacks it or holds another epoch there has nothing after it that the
            // primary's log holds, so the snapshot may replace it all.
            None => index > self.applied && self.term_at(index) != Some(snapshot.meta.term),
        };
        if !wanted {
            // Nothing to restart from it: let the primary probe where the logs meet.
            let body = Body::Mismatch {
                sent_at,
                hint: self.last_index(),
            };
            self.send(from, body);
            return Ok(());
        }
        self.backup.resync_after = None;
        self.stage_truncate(index + 1);
        self.staged.entries = consensus_core::Entries::new();
        self.staged.snapshot = Some(snapshot);
        self.committed.clear();
        self.applied = index;
        self.commit = if resync.is_some() {
            index
        } else {
            self.commit.max(index)
        };
        // The log is now a prefix of the primary's (nothing after the snapshot).
        if self.state.synced_epoch < epoch {
            self.state.synced_epoch = epoch;
            self.stage_hard_state();
        }
        self.send_held(
            from,
            Body::PrepareAck {
                sent_at,
                durable: index,
            },
        );
        Ok(())
    }

    pub(super) fn on_tail_query(&mut self, from: NodeId, epoch: u64, round: u64, commit: u64) {
        if epoch < self.epoch() {
            let config = self.state.config.clone();
            self.send(from, Body::Fenced { config });
            return;
        }
        let last = self.durable.min(self.last_index());
        // Entries through this replica's snapshot are no longer in its log.
        let prev_index = commit.min(last).max(self.snapshot_point().0);
        let hi = last.min(prev_index + MAX_TAIL_ENTRIES);
        let entries: Vec<Entry> = (prev_index + 1..=hi)
            .filter_map(|i| self.entry_at(i))
            .collect();
        let body = Body::TailReply {
            round,
            synced_epoch: self.durable_synced_epoch,
            last_index: last,
            last_term: self.term_at(last).unwrap_or(0),
            prev_index,
            prev_term: self.term_at(prev_index).unwrap_or(0),
            entries,
        };
        self.send(from, body);
    }

    pub(super) fn on_tail_reply(&mut self, from: NodeId, epoch: u64, round: u64, tail: Tail) {
        if epoch > self.epoch() || self.primary.is_some() {
            return;
        }
        let mine = (
            self.durable_synced_epoch,
            self.durable.min(self.last_index()),
        );
        let Some(t) = &mut self.backup.tail else {
            return;
        };
        if t.round != round {
            return;
        }
        t.replies.insert(from, (tail.key, tail.last_term));
        // Pull a better tail: entries after the commit point, cut where they conflict.
        let better = tail.key > mine && t.adopted.is_none_or(|a| tail.key > a);
        if !better || self.term_at(tail.prev_index) != Some(tail.prev_term) {
            return;
        }
        let mut k = 0;
        while k < tail.entries.len()
            && self.term_at(tail.entries[k].index) == Some(tail.entries[k].term)
        {
            k += 1;
        }
        if let Some(e) = tail.entries.get(k) {
            if e.index <= self.applied {
                return;
            }
            if e.index <= self.last_index() {
                self.stage_truncate(e.index);
            }
        }
        self.stage_entries(tail.entries.into_iter().skip(k));
        if let Some(t) = &mut self.backup.tail {
            t.adopted = Some(tail.key);
        }
    }

    pub(super) fn backup_tick(&mut self) {
        let me = self.cfg.id;
        let config = &self.state.config;
        if !config.is_member(me) || self.request.is_some() {
            return;
        }
        let grace = if planted!(self.cfg, ServeBeforeGrace) {
            2 * self.cfg.beacon_ticks
        } else {
            self.cfg.grace_ticks
        };
        if self.now < self.backup.last_heard + grace {
            return;
        }
        let mut proposed = config.members.clone();
        if let Some(old) = config.primary.filter(|&p| p != me) {
            proposed.remove(&old);
        }
        proposed.insert(me);
        if self.cfg.ack != Ack::Quorum {
            self.send_request(Change::BecomePrimary(me), proposed);
            return;
        }
        // Quorum: every acknowledged write is durable on a majority of the replicas, so the best
        // durable tail of any majority holds them all. Take over only when this replica has it.
        let stale = self
            .backup
            .tail
            .as_ref()
            .is_none_or(|t| self.now >= t.started + 2 * self.cfg.retry_ticks);
        if stale {
            self.backup.rounds += 1;
            let round = self.backup.rounds;
            self.backup.tail = Some(TailRound {
                round,
                started: self.now,
                replies: BTreeMap::new(),
                adopted: None,
            });
            let others: Vec<NodeId> = self
                .cfg
                .replicas
                .iter()
                .copied()
                .filter(|&r| r != me)
                .collect();
            for r in others {
                let commit = self.commit;
                self.send(r, Body::TailQuery { round, commit });
            }
            return;
        }
        let t = self.backup.tail.as_ref().expect("round");
        if (t.replies.len() + 1) * 2 <= self.cfg.replicas.len() {
            return;
        }
        let mine = (
            self.durable_synced_epoch,
            self.durable.min(self.last_index()),
        );
        // Best: no replier's durable tail is better, or this log holds it (pulled when the
        // reply came; by log matching, holding its last entry means holding all of it).
        let best = t.replies.values().all(|&(theirs, last_term)| {
            theirs <= mine || self.term_at(theirs.1) == Some(last_term)
        });
        let pulled = t.adopted.is_some();
        self.backup.tail = None;
        if best {
            self.send_request(Change::BecomePrimary(me), proposed);
        } else if !pulled {
            // Nothing could be pulled (the better tail does not extend this log's commit
            // point): wait another grace period.
            self.backup.last_heard = self.now;
        }
    }
}
