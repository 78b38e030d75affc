//! Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", 2014).
//!
//! A timestamp is `(wall, logical, node)`: `wall` follows the largest physical time seen (ours or
//! a peer's), `logical` orders events within one wall value, and `node` breaks the remaining ties,
//! so timestamps are totally ordered and unique per node. Physical time is passed in as a value:
//! the clock never reads a system clock.

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// One hybrid-logical-clock reading. Ordered by `(wall, logical, node)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Largest physical time (ms) known when the event happened.
    pub wall: u64,
    /// Counter within `wall`.
    pub logical: u32,
    /// The node that issued it (tie-breaker).
    pub node: NodeId,
}

/// A node's hybrid logical clock.
#[derive(Clone, Debug)]
pub struct Hlc {
    node: NodeId,
    last: Timestamp,
}

impl Hlc {
    /// A clock for `node` that has seen nothing.
    pub fn new(node: NodeId) -> Self {
        Hlc {
            node,
            last: Timestamp {
                wall: 0,
                logical: 0,
                node,
            },
        }
    }

    /// A timestamp for a local event at physical time `physical_ms`, larger than every
    /// timestamp this clock issued or observed.
    pub fn now(&mut self, physical_ms: u64) -> Timestamp {
        if physical_ms > self.last.wall {
            self.last = Timestamp {
                wall: physical_ms,
                logical: 0,
                node: self.node,
            };
        } else {
            self.bump();
        }
        self.last
    }

    /// Takes a timestamp seen on a message or object into account, so the next local event
    /// orders after it (this is what makes a write that saw another win LWW against it).
    pub fn observe(&mut self, seen: Timestamp) {
        if (seen.wall, seen.logical) > (self.last.wall, self.last.logical) {
            self.last = Timestamp {
                wall: seen.wall,
                logical: seen.logical,
                node: self.node,
            };
        }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    fn bump(&mut self) {
        match self.last.logical.checked_add(1) {
            Some(l) => self.last.logical = l,
            // 4 billion events in one millisecond: move the wall forward rather than wrap.
            None => {
                self.last.wall = self.last.wall.saturating_add(1);
                self.last.logical = 0;
            }
        }
        self.last.node = self.node;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_grow_even_when_physical_time_goes_back() {
        let mut c = Hlc::new(1);
        let a = c.now(100);
        let b = c.now(90);
        let d = c.now(100);
        assert!(a < b && b < d);
        assert_eq!(d.wall, 100);
    }

    #[test]
    fn an_event_after_observing_a_remote_timestamp_orders_after_it() {
        let mut slow = Hlc::new(2);
        let remote = Timestamp {
            wall: 5_000,
            logical: 7,
            node: 1,
        };
        slow.observe(remote);
        let next = slow.now(10);
        assert!(next > remote);
    }
}
