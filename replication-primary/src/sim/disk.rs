//! A replica's simulated disk: a write is in the engine's view at once and durable a few ticks
//! later, in order; a crash keeps what was durable plus a random prefix of the rest.

use std::collections::VecDeque;

use consensus_core::{MemStorage, Write};

use crate::configuration::HardState;

#[derive(Debug, Default)]
pub(super) struct Disk {
    pub(super) durable: MemStorage<HardState>,
    queue: VecDeque<(u64, Write<HardState>, u64)>,
    issued: u64,
    pub(super) done: u64,
    last_due: u64,
}

impl Disk {
    pub(super) fn submit(&mut self, write: &Write<HardState>, due: u64) -> u64 {
        self.issued += 1;
        self.last_due = self.last_due.max(due);
        self.queue
            .push_back((self.issued, write.clone(), self.last_due));
        self.issued
    }

    /// Whether every write submitted is durable.
    pub(super) fn idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Finishes the writes due by `now`.
    pub(super) fn complete(&mut self, now: u64) -> bool {
        let mut any = false;
        while self.queue.front().is_some_and(|(_, _, due)| *due <= now) {
            let (ticket, write, _) = self.queue.pop_front().expect("front");
            self.durable.write(&write).expect("memory storage");
            self.done = ticket;
            any = true;
        }
        any
    }

    /// A crash: the first `keep` unfinished writes made it, the rest are gone.
    pub(super) fn crash(&mut self, keep: usize) {
        for (ticket, write, _) in self.queue.drain(..).take(keep) {
            self.durable.write(&write).expect("memory storage");
            self.done = ticket;
        }
        self.issued = self.done;
    }
}
