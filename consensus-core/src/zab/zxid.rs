//! Zab's transaction ids and how they map onto the seam's log positions.
//!
//! A zxid is `(epoch, counter)`; the counter restarts with every epoch. On the seam, an
//! [`crate::Entry`] carries `term` = the epoch of the leader that proposed it and `index` = its
//! position in the contiguous history. Within one epoch the counter is `index - epoch_start`, where
//! `epoch_start` is the position of the last entry of the new leader's initial history (every
//! member that holds entries of that epoch holds the same initial history), so comparing
//! `(epoch, index)` orders histories exactly as comparing `(epoch, counter)` does. The engine
//! therefore orders by `(epoch, index)` and shows the counter only for people (status detail).

use serde::{Deserialize, Serialize};

/// A position in the history named the Zab way: the epoch of the entry and its log position.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Zxid {
    /// Epoch of the leader that proposed the entry (the entry's `term`).
    pub epoch: u64,
    /// Log position of the entry (its `index`); the zxid counter is `index - epoch_start`.
    pub index: u64,
}

impl Zxid {
    /// The zxid of the entry at `index` proposed in `epoch`.
    pub fn new(epoch: u64, index: u64) -> Self {
        Zxid { epoch, index }
    }

    /// The zxid counter, given the position where this epoch's proposals start.
    pub fn counter(&self, epoch_start: u64) -> u64 {
        self.index.saturating_sub(epoch_start)
    }
}

impl std::fmt::Display for Zxid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.epoch, self.index)
    }
}
