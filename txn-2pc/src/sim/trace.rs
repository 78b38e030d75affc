//! The run's trace: the last events (what a failing seed prints) and a hash of all of them (to
//! compare two runs of a seed bit for bit).

use std::collections::VecDeque;
use std::fmt::{self, Write as _};

/// A bounded window of recent events and an FNV-1a hash over every event.
#[derive(Clone, Debug)]
pub struct Trace {
    recent: VecDeque<String>,
    capacity: usize,
    hash: u64,
    keep_all: bool,
    all: Vec<String>,
}

impl Trace {
    /// Keeps the last `capacity` events (all of them with `keep_all`).
    pub fn new(capacity: usize, keep_all: bool) -> Self {
        Trace {
            recent: VecDeque::new(),
            capacity: capacity.max(1),
            hash: 0xcbf2_9ce4_8422_2325,
            keep_all,
            all: Vec::new(),
        }
    }

    /// Records an event at tick `now`.
    pub fn record(&mut self, now: u64, event: fmt::Arguments<'_>) {
        let mut line = String::new();
        let _ = write!(line, "t={now:<5} {event}");
        for byte in line.bytes().chain([0xff]) {
            self.hash ^= u64::from(byte);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        if self.keep_all {
            self.all.push(line.clone());
        }
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// The hash of every event so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The events to print: all of them if kept, else the recent window.
    pub fn lines(&self) -> Vec<String> {
        if self.keep_all {
            self.all.clone()
        } else {
            self.recent.iter().cloned().collect()
        }
    }
}
