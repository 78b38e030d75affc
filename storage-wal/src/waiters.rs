//! Threads waiting for a group commit. Each parks on its own, so a finished fsync wakes exactly
//! the writers it covered — in parallel, and none of them needs the log's lock to return — plus at
//! most one other to lead the next fsync. (Waiting on one condition variable instead, every
//! waiter woke to take the lock in turn: with 64 writers on 2 cores that serial hand-over, not
//! the disk, set the pace.)
//!
//! The thread that ran the fsync wakes the next leader first and hands it half of the covered
//! writers to wake: that leader has nothing else to do until they are back, and so waking them
//! goes on in parallel on two CPUs. (The fsync thread waking all of them itself spent a fifth of
//! the run in `futex_wake` on one CPU while the next batch waited for those writers; a tree in
//! which every woken writer wakes two more was slower: each level adds a wake-up latency.)

use std::cell::OnceCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::Thread;

use parking_lot::Mutex;

const WAITING: u8 = 0;
const COVERED: u8 = 1;
const RECHECK: u8 = 2;

/// Covered writers a next leader wakes: a batch and which of its writers.
pub(crate) type Help = (Arc<[Arc<Waiter>]>, Range<usize>);

/// One waiting thread; reused by that thread for every wait.
pub(crate) struct Waiter {
    thread: Thread,
    state: AtomicU8,
    durable: AtomicU64,
    /// Set with `RECHECK` for a next leader: covered writers it wakes first. Taken when it
    /// wakes.
    help: Mutex<Option<Help>>,
}

/// Why a parked waiter woke.
pub(crate) enum Woken {
    /// Its record is durable; the durable index then.
    Covered(u64),
    /// Something else changed (it may lead the next fsync, or the log was truncated or
    /// poisoned): look again under the lock.
    Recheck,
}

thread_local! {
    static CURRENT: OnceCell<Arc<Waiter>> = const { OnceCell::new() };
}

impl Waiter {
    /// Blocks until a waker sets this waiter's state (spurious unparks are ignored).
    pub fn park(&self) -> Woken {
        loop {
            match self.state.load(Ordering::Acquire) {
                COVERED => return Woken::Covered(self.durable.load(Ordering::Relaxed)),
                RECHECK => {
                    if let Some((batch, range)) = self.help.lock().take() {
                        batch[range].iter().for_each(|w| w.wake());
                    }
                    return Woken::Recheck;
                }
                _ => std::thread::park(),
            }
        }
    }

    /// Unparks the thread (its state is set already, under the log's lock).
    pub fn wake(&self) {
        self.thread.unpark();
    }
}

/// The waiting threads, under the log's lock. Invariant: every entry is `WAITING`.
#[derive(Default)]
pub(crate) struct Waiters {
    list: Vec<(u64, Arc<Waiter>)>,
    /// A waiter was woken to lead the next fsync and has not taken the lock yet.
    pub leader_pending: bool,
}

impl Waiters {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Registers the calling thread as waiting for `index`; park on the result after unlocking.
    pub fn enqueue(&mut self, index: u64) -> Arc<Waiter> {
        let waiter = CURRENT.with(|c| {
            c.get_or_init(|| {
                Arc::new(Waiter {
                    thread: std::thread::current(),
                    state: AtomicU8::new(WAITING),
                    durable: AtomicU64::new(0),
                    help: Mutex::new(None),
                })
            })
            .clone()
        });
        waiter.state.store(WAITING, Ordering::Relaxed);
        self.list.push((index, waiter.clone()));
        waiter
    }

    /// Removes the waiters whose index is durable now, marked covered, to be woken.
    pub fn release_covered(&mut self, durable: u64) -> Arc<[Arc<Waiter>]> {
        let mut covered = Vec::new();
        self.list.retain(|(index, waiter)| {
            if *index > durable {
                return true;
            }
            waiter.durable.store(durable, Ordering::Relaxed);
            waiter.state.store(COVERED, Ordering::Release);
            covered.push(waiter.clone());
            false
        });
        covered.into()
    }

    /// Removes the waiter with the lowest index, marked to look again (and lead), if any; once
    /// woken it first wakes `help` (writers already marked covered).
    pub fn take_leader(&mut self, help: Option<Help>) -> Option<Arc<Waiter>> {
        let k = (0..self.list.len()).min_by_key(|&k| self.list[k].0)?;
        let (_, waiter) = self.list.swap_remove(k);
        *waiter.help.lock() = help;
        // After `help`: a waiter that sees RECHECK finds it.
        waiter.state.store(RECHECK, Ordering::Release);
        self.leader_pending = true;
        Some(waiter)
    }

    /// Removes every waiter, marked to look again.
    pub fn take_all(&mut self) -> Vec<Arc<Waiter>> {
        self.list
            .drain(..)
            .map(|(_, waiter)| {
                waiter.state.store(RECHECK, Ordering::Release);
                waiter
            })
            .collect()
    }
}
