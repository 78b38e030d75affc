//! Threads waiting for a group commit: what they may read without the log's lock, the claim to
//! lead the next fsync, and the sleep on the [`Bell`].
//!
//! A finished fsync publishes the durable index and rings the bell once; every sleeper wakes,
//! reads the published index and returns if its record is covered — without taking the log's
//! lock, and with no list of who waits for what. A sleeper that is not covered tries to claim the
//! leadership of the next fsync (a compare-and-swap); the one that wins takes the lock and leads,
//! the others sleep again. (Before, each covered waiter was woken by its own `unpark` from a
//! waiter list kept under the lock: with 64 writers on 2 cores those wake-ups, not the disk, set
//! the pace.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::bell::Bell;
use crate::wakers::Wakers;

/// What a woken waiter found.
pub(crate) enum Woken {
    /// Its record is durable; the durable index then.
    Durable(u64),
    /// It holds the leadership of the next fsync now: take the lock and lead.
    Lead,
    /// The log was truncated or poisoned: look again under the lock.
    Recheck,
}

/// The part of the log's state that waiters read without its lock. Written only under the lock
/// (by [`GroupCommit::publish`]); each change that can end a wait is followed by a ring.
#[derive(Default)]
pub(crate) struct GroupCommit {
    durable_index: AtomicU64,
    epoch: AtomicU64,
    poisoned: AtomicBool,
    /// Held by the thread leading the next fsync, from gathering writers to publishing its
    /// result.
    leader: AtomicBool,
    bell: Bell,
    /// Async waiters (`DurableAppend` futures), woken by the same rings.
    wakers: Wakers,
}

/// What a look at the published state, without the lock, tells a waiter.
pub(crate) enum Published {
    /// Its record is durable.
    Durable,
    /// Not yet.
    Pending,
    /// The log was truncated or poisoned since: look under the lock.
    Recheck,
}

impl GroupCommit {
    /// Mirrors the log's durable index, truncation epoch and poisoning (called under the lock).
    /// The epoch is stored before the index: a waiter that reads an index published after a
    /// truncation then sees that truncation's epoch too.
    pub fn publish(&self, durable_index: u64, epoch: u64, poisoned: bool) {
        self.poisoned.store(poisoned, Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
        self.durable_index.store(durable_index, Ordering::Release);
    }

    /// Claims the leadership of the next fsync; false if another thread holds it.
    pub fn try_lead(&self) -> bool {
        self.leader
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Gives the leadership up (under the lock, after publishing). The caller then rings, or
    /// sleepers waiting for a leader would never learn that none is left.
    pub fn resign(&self) {
        debug_assert!(self.leader.load(Ordering::Relaxed));
        self.leader.store(false, Ordering::Release);
    }

    /// Wakes every sleeper to look at what was published, and the async waiters it concerns.
    /// Returns how many async waiters were woken.
    pub fn ring(&self) -> u64 {
        self.ring_as(None)
    }

    /// [`ring`](Self::ring), by the leader of an async group commit that took `took` (inline:
    /// led by a future in `poll`), which also sets what the next one may expect (see
    /// `Wakers::wake`).
    pub fn ring_as(&self, led: Option<(std::time::Duration, bool)>) -> u64 {
        self.bell.ring();
        // The index before the epoch (see `publish`).
        let durable = self.durable_index.load(Ordering::Acquire);
        let epoch = self.epoch.load(Ordering::Acquire);
        let poisoned = self.poisoned.load(Ordering::Acquire);
        self.wakers.wake(durable, epoch, poisoned, led)
    }

    /// Wakes every async waiter, to look for itself.
    pub fn wake_all_async(&self) {
        self.wakers.wake(0, 0, true, None);
    }

    /// The async waiters and the sync driver's doorbell.
    pub fn wakers(&self) -> &Wakers {
        &self.wakers
    }

    /// Whether record `index`, appended in truncation `epoch`, is durable by what was published.
    pub fn look(&self, index: u64, epoch: u64) -> Published {
        // The index before the epoch (see `publish`).
        let durable = self.durable_index.load(Ordering::Acquire);
        if self.poisoned.load(Ordering::Acquire) || self.epoch.load(Ordering::Acquire) != epoch {
            Published::Recheck
        } else if durable >= index {
            Published::Durable
        } else {
            Published::Pending
        }
    }

    /// The bell's generation: read it under the lock before unlocking to [`sleep`](Self::sleep).
    pub fn generation(&self) -> u32 {
        self.bell.generation()
    }

    /// Blocks until `seen` is rung out of date, until the bell rang since then if `seen` is
    /// stale already. Used by operations that wait for an fsync in flight to end.
    pub fn wait_for_ring(&self, seen: u32) {
        self.bell.wait(seen);
    }

    /// Sleeps, as a leader gathering writers, until the bell rings or `deadline` passes; `seen`
    /// is the generation read under the lock. The writer whose arrival completes the gathering
    /// takes the leadership over instead of waking this thread (see `Wal::wait_inner`).
    pub fn sleep_gathering(&self, seen: u32, deadline: std::time::Instant) {
        self.bell.wait_until(seen, deadline);
    }

    /// Sleeps until record `index` (appended in truncation epoch `epoch`, if given) is durable,
    /// this thread takes the leadership, or something needs a look under the lock. `seen` is the
    /// generation read under the lock when this thread found another leading.
    pub fn sleep(&self, index: u64, epoch: Option<u64>, mut seen: u32) -> Woken {
        loop {
            self.bell.wait(seen);
            seen = self.bell.generation();
            // The index before the epoch (see `publish`).
            let durable = self.durable_index.load(Ordering::Acquire);
            if self.poisoned.load(Ordering::Acquire)
                || epoch.is_some_and(|e| self.epoch.load(Ordering::Acquire) != e)
            {
                return Woken::Recheck;
            }
            if durable >= index {
                return Woken::Durable(durable);
            }
            if self.try_lead() {
                return Woken::Lead;
            }
        }
    }
}
