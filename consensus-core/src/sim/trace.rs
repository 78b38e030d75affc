//! The run's trace: a bounded window of the most recent events, and a hash of all of them.
//!
//! Every event the simulator records goes through [`Trace::record`]: it is folded into a running
//! FNV-1a hash (so two runs of a seed can be compared bit for bit without keeping the whole trace)
//! and kept in a ring of the last `capacity` events (what a failing seed prints).

use std::collections::VecDeque;
use std::fmt::{self, Write as _};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A bounded trace of the most recent events plus a hash over every event.
#[derive(Clone, Debug)]
pub struct Trace {
    recent: VecDeque<String>,
    capacity: usize,
    hash: u64,
    events: u64,
    /// Whether every event is also kept (for `--verbose`).
    keep_all: bool,
    all: Vec<String>,
}

impl Trace {
    /// A trace that keeps the last `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Trace {
            recent: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            hash: FNV_OFFSET,
            events: 0,
            keep_all: false,
            all: Vec::new(),
        }
    }

    /// Also keeps every event, not only the last ones.
    pub fn keep_everything(&mut self) {
        self.keep_all = true;
    }

    /// Records one event that happened at tick `now`.
    pub fn record(&mut self, now: u64, event: fmt::Arguments<'_>) {
        let mut line = String::with_capacity(64);
        let _ = write!(line, "t={now:<6} {event}");
        for byte in line.as_bytes() {
            self.hash ^= u64::from(*byte);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
        // Separate events so ("ab","c") and ("a","bc") hash differently.
        self.hash ^= 0xff;
        self.hash = self.hash.wrapping_mul(FNV_PRIME);
        self.events += 1;
        if self.keep_all {
            self.all.push(line.clone());
        }
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// The hash of every event recorded so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// How many events were recorded.
    pub fn len(&self) -> u64 {
        self.events
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(String::as_str)
    }

    /// Every event, if [`Trace::keep_everything`] was called; otherwise the recent ones.
    pub fn everything(&self) -> Vec<&str> {
        if self.keep_all {
            self.all.iter().map(String::as_str).collect()
        } else {
            self.recent().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_keeps_the_last_events_and_hashes_all_of_them() {
        let mut a = Trace::new(2);
        let mut b = Trace::new(5);
        for i in 0..4 {
            a.record(i, format_args!("event {i}"));
            b.record(i, format_args!("event {i}"));
        }
        assert_eq!(a.recent().count(), 2);
        assert!(a.recent().last().unwrap().ends_with("event 3"));
        assert_eq!(a.hash(), b.hash(), "the hash does not depend on the window");
        b.record(4, format_args!("event 4"));
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn event_boundaries_change_the_hash() {
        let mut a = Trace::new(4);
        let mut b = Trace::new(4);
        a.record(0, format_args!("ab"));
        a.record(0, format_args!("c"));
        b.record(0, format_args!("a"));
        b.record(0, format_args!("bc"));
        assert_ne!(a.hash(), b.hash());
    }
}
