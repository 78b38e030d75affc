//! What the leader knows about each follower's log (thesis §3.5, etcd-raft's progress states).
//!
//! - **Probe**: the follower's match point is unknown; send one append at a time and back off on
//!   rejection.
//! - **Replicate**: appends stream optimistically, `next` runs ahead of `matched`, at most
//!   `max_inflight` appends in flight.
//! - **Snapshot**: the follower needs entries we compacted; nothing is sent until it acknowledges the
//!   snapshot (or the attempt times out and we probe again).
//!
//! Invariant: `matched < next`.

use std::collections::VecDeque;

/// Replication state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    Probe,
    Replicate,
    Snapshot { pending: u64 },
}

/// The leader's view of one member.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to match the leader's log (durably, on the follower).
    pub(crate) matched: u64,
    /// Next index to send.
    pub(crate) next: u64,
    pub(crate) state: ProgressState,
    /// Probe state: an append is outstanding, wait for an answer or the next heartbeat.
    pub(crate) probe_sent: bool,
    /// Replicate state: last index of each append in flight, oldest first.
    pub(crate) inflights: VecDeque<u64>,
    /// Heard from within the current check-quorum window.
    pub(crate) recent_active: bool,
    /// Snapshot state: ticks since the snapshot was sent.
    pub(crate) snapshot_ticks: u32,
}

impl Progress {
    pub(crate) fn new(next: u64) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: VecDeque::new(),
            recent_active: false,
            snapshot_ticks: 0,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.next = match self.state {
            ProgressState::Snapshot { pending } => (pending + 1).max(self.matched + 1),
            _ => self.matched + 1,
        };
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub(crate) fn become_snapshot(&mut self, pending: u64) {
        self.state = ProgressState::Snapshot { pending };
        self.probe_sent = false;
        self.snapshot_ticks = 0;
        self.inflights.clear();
    }

    /// The follower stores our log through `index`. Returns whether `matched` grew.
    pub(crate) fn maybe_update(&mut self, index: u64) -> bool {
        let grew = index > self.matched;
        if grew {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        debug_assert!(self.matched < self.next);
        grew
    }

    /// The follower rejected an append at `rejected`; retry from at most `hint + 1`.
    /// Returns false if the rejection is stale.
    pub(crate) fn maybe_decrease_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next.saturating_sub(1) != rejected {
            return false;
        }
        self.next = rejected.min(hint + 1).max(self.matched + 1).max(1);
        self.probe_sent = false;
        true
    }

    pub(crate) fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.len() >= max_inflight,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// An append ending at `last` (None: no entries) was sent.
    pub(crate) fn sent(&mut self, last: Option<u64>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflights.push_back(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// Appends through `index` were acknowledged.
    pub(crate) fn free_to(&mut self, index: u64) {
        while self.inflights.front().is_some_and(|&last| last <= index) {
            self.inflights.pop_front();
        }
    }
}
