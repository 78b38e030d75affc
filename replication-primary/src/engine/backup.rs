//! The backup: fencing, prepares (append, cut what a new primary never prepared, acknowledge once
//! durable), the grace period before asking to take over, and the quorum-mode tail check.

use std::collections::BTreeMap;

use consensus_core::{Entry, Error, NodeId, Storage, StorageError};

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
}

impl Backup {
    pub(super) fn entered_epoch(&mut self, now: u64) {
        self.last_heard = now;
        self.tail = None;
    }
}

impl<S: Storage<HardState = HardState>> PrimaryBackup<S> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_prepare(
        &mut self,
        from: NodeId,
        epoch: u64,
        config: Configuration,
        sent_at: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
        last: u64,
    ) -> Result<(), Error> {
        let lower = epoch < self.epoch();
        if lower && !planted!(self.cfg, AcceptLowerEpoch) {
            let config = self.state.config.clone();
            self.send(from, Body::Fenced { config });
            return Ok(());
        }
        if !lower {
            self.learn(config.clone());
            if self.epoch() != epoch || self.state.config.primary != Some(from) {
                return Ok(());
            }
            if self.primary.is_some() {
                return Ok(());
            }
            if self
                .request
                .as_ref()
                .is_some_and(|r| matches!(r.request.change, Change::BecomePrimary(_)))
            {
                // It asked to take over: it grants its primary no further lease (the manager may
                // install it any moment, and it would serve while that lease ran).
                return Ok(());
            }
            self.backup.last_heard = self.now;
            self.backup.primary_commit = self.backup.primary_commit.max(commit);
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
                // Only an `async` failover can take back what this replica applied: its state
                // machine is ahead of the log it must keep. Stop; the host restarts it.
                return Err(Error::Stopped(StorageError::Inconsistent(format!(
                    "epoch {epoch} cuts index {c}, below applied {}",
                    self.applied
                ))));
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

    pub(super) fn on_tail_query(&mut self, from: NodeId, epoch: u64, round: u64, commit: u64) {
        if epoch < self.epoch() {
            let config = self.state.config.clone();
            self.send(from, Body::Fenced { config });
            return;
        }
        let last = self.durable.min(self.last_index());
        let (prev_index, hi) = (commit.min(last), last.min(commit + MAX_TAIL_ENTRIES));
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
