//! A simulated disk: records become durable only when synced; a crash loses the rest.
//!
//! Writes are buffered in order. A forced write schedules a sync a few ticks later; the sync makes
//! the whole buffer durable (a log is durable as a prefix) and returns the last token to
//! confirm. A crash keeps a random prefix of the buffer — some of the unsynced tail may have
//! reached the platter, the rest is gone — which is every state a real log can be left in.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::output::{ForceToken, Write};
use crate::record::DurableRecord;

/// One node's disk.
#[derive(Debug, Default)]
pub struct Disk {
    durable: Vec<Vec<u8>>,
    buffer: Vec<(Vec<u8>, Option<ForceToken>)>,
    sync_at: Option<u64>,
    /// Forced writes requested.
    pub forced_writes: u64,
    /// Lazy writes requested.
    pub lazy_writes: u64,
}

impl Disk {
    /// Buffers one write at tick `now`; a forced one is synced `delay` ticks later.
    pub fn write<R: DurableRecord>(&mut self, write: &Write<R>, now: u64, delay: u64) {
        match write {
            Write::Force { token, record } => {
                self.forced_writes += 1;
                self.buffer.push((record.encode(), Some(*token)));
                let at = now + delay;
                self.sync_at = Some(self.sync_at.map_or(at, |t| t.min(at)));
            }
            Write::Lazy { record } => {
                self.lazy_writes += 1;
                self.buffer.push((record.encode(), None));
            }
        }
    }

    /// Syncs if one is due at `now`: returns the last forced token now durable.
    pub fn sync_due(&mut self, now: u64) -> Option<ForceToken> {
        if self.sync_at.is_none_or(|t| t > now) {
            return None;
        }
        self.sync_at = None;
        let mut last = None;
        for (bytes, token) in self.buffer.drain(..) {
            self.durable.push(bytes);
            last = token.or(last);
        }
        last
    }

    /// Whether a sync is scheduled.
    pub fn sync_pending(&self) -> bool {
        self.sync_at.is_some()
    }

    /// The node crashed: a random prefix of the buffer survives, the rest is lost.
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) {
        let keep = rng.gen_range(0..=self.buffer.len());
        for (bytes, _) in self.buffer.drain(..).take(keep) {
            self.durable.push(bytes);
        }
        self.sync_at = None;
    }

    /// The durable records' bytes, in write order.
    pub fn durable(&self) -> &[Vec<u8>] {
        &self.durable
    }

    /// Stores raw bytes as a durable record (tests of corrupted records).
    pub fn store_raw(&mut self, bytes: Vec<u8>) {
        self.durable.push(bytes);
    }
}
