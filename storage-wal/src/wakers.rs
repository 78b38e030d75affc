//! Async durability waiters: the [`Waker`]s of pending [`DurableAppend`](crate::DurableAppend)
//! futures, and the doorbell of the sync driver that leads fsyncs on their behalf.
//!
//! A thread that waits for a group commit sleeps and is woken by a futex call and a context
//! switch, once per append; a task's waker only queues the task on its executor, which then runs
//! many of them in one go. So a pending future leaves its waker here, and every ring that follows a
//! published change of the durable index (by whichever thread led the fsync) wakes the wakers
//! that change concerns: those whose record it covers, or all of them after a truncation or
//! poisoning (they look again themselves).
//!
//! Gathering is counted: an arrival is a future's first wait, and the group an async fsync may
//! expect is the futures the last one released plus those that arrived during it — or the
//! largest recent such group, decaying by an eighth per group commit, if that is more (tasks on
//! one thread cannot arrive while one of them leads an fsync inline, so a group cut short once
//! would otherwise keep every later group as short). The arrival
//! that completes the group leads the fsync inline, in `poll` (`Options::async_inline_fsync`): its
//! executor's thread blocks for one fsync while that thread's writers all wait for it anyway, and
//! the ring then wakes them on that same thread. Otherwise the sync driver (`sync_driver.rs`)
//! leads: it sleeps on the doorbell while no future waits, then for at most the group-commit
//! delay until the group is complete (that arrival rings it: one wake-up per fsync, not one per
//! append), or at once when a future that was to lead inline found another thread leading.

use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::bell::Bell;

/// What the sync driver is doing, as arrivals need to know whether to ring the doorbell.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Driver {
    /// Working, or about to look at the list: no ring needed.
    Busy,
    /// Asleep until any future waits.
    Idle,
    /// Asleep until `arrivals` reaches `expected` (or its deadline).
    Gathering,
}

/// What a future that just registered should do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Next {
    /// Wait for a ring.
    Wait,
    /// Its arrival completed the group: lead the fsync now, inline (`Options::async_inline_fsync`).
    /// If it cannot (another thread leads), it must [`kick`](Wakers::kick) the driver.
    LeadInline,
}

struct Inner {
    /// (record index, truncation epoch it was appended in, waker): one entry per waiting future
    /// (a record's index and epoch name it; a poll that leaves it pending again replaces its
    /// waker), so the count of those woken is a count of writers.
    waiting: Vec<(u64, u64, Waker)>,
    /// Futures that began waiting since the last async group commit started.
    arrivals: u64,
    /// How many the next async group commit may expect (see the module docs).
    expected: u64,
    /// The largest recent group, decaying by an eighth (at least one) per group commit: what `expected` is
    /// at least.
    peak: u64,
    /// A future's arrival completed the group and it leads the fsync inline: the driver's
    /// gathering ends without leading.
    taken: bool,
    /// A future could not lead inline: the driver leads now, without gathering.
    kicked: bool,
    /// When the last async group commit ended, and a running mean of how long one takes.
    last_done: Instant,
    sync_estimate: Duration,
    /// The last async group commit was led inline by a future: the driver is only the fallback
    /// for a group that stays short, and waits the whole `max_group_commit_delay` before it
    /// leads (rather than waking every fsync's time to find the group taken).
    last_inline: bool,
    driver: Driver,
    shutdown: bool,
}

/// The async waiters' wakers and the sync driver's doorbell (see the module docs).
pub(crate) struct Wakers {
    inner: Mutex<Inner>,
    doorbell: Bell,
}

impl Default for Wakers {
    fn default() -> Self {
        Wakers {
            inner: Mutex::new(Inner {
                waiting: Vec::new(),
                arrivals: 0,
                expected: 0,
                peak: 0,
                taken: false,
                kicked: false,
                last_done: Instant::now(),
                sync_estimate: Duration::ZERO,
                last_inline: false,
                driver: Driver::Busy,
                shutdown: false,
            }),
            doorbell: Bell::default(),
        }
    }
}

impl Wakers {
    /// Leaves `waker` to be woken once record `index` (appended in truncation `epoch`) may be
    /// durable. `first` marks a future's first wait, which counts as an arrival; `inline`
    /// allows it to lead the fsync itself when its arrival completes the group. The caller checks
    /// the published durable index again afterwards, so a ring between its first look and this
    /// registration is not missed.
    pub fn register(
        &self,
        index: u64,
        epoch: u64,
        waker: &Waker,
        first: bool,
        inline: bool,
    ) -> Next {
        let mut inner = self.inner.lock();
        // Newest first: a future polled again soon after its first wait is near the end.
        match inner
            .waiting
            .iter_mut()
            .rev()
            .find(|(i, e, _)| *i == index && *e == epoch)
        {
            Some((_, _, known)) => {
                if !known.will_wake(waker) {
                    known.clone_from(waker);
                }
            }
            None => inner.waiting.push((index, epoch, waker.clone())),
        }
        if first {
            inner.arrivals += 1;
        }
        let complete = inner.expected > 0 && inner.arrivals >= inner.expected;
        if complete && inline && inner.driver != Driver::Busy {
            // This group is this future's to lead; the driver, asleep, learns at its deadline.
            inner.arrivals = 0;
            inner.taken = true;
            return Next::LeadInline;
        }
        let ring = match inner.driver {
            Driver::Busy => false,
            Driver::Idle => true,
            Driver::Gathering => complete,
        };
        if ring {
            inner.driver = Driver::Busy;
        }
        drop(inner);
        if ring {
            self.doorbell.ring();
        }
        Next::Wait
    }

    /// Makes the driver lead an fsync now (a future that was to lead inline could not).
    pub fn kick(&self) {
        let mut inner = self.inner.lock();
        inner.kicked = true;
        let asleep = inner.driver != Driver::Busy;
        inner.driver = Driver::Busy;
        drop(inner);
        if asleep {
            self.doorbell.ring();
        }
    }
    /// Wakes the waiters whose record `durable_index` covers, and every waiter whose epoch is not
    /// `epoch` (or all of them, if `all`). Returns how many were woken. The wakers are called
    /// with no lock of this list held.
    ///
    /// `led` is given by whoever led an async group commit (the driver or a future inline):
    /// how long it took and whether inline. Then the next group commit may expect those woken
    /// back, with those that began waiting during this one — counted here, before any woken
    /// future can run and arrive again (counted after the wake-ups, a quick executor's
    /// re-arrivals would count twice, and every later group would look short).
    pub fn wake(
        &self,
        durable_index: u64,
        epoch: u64,
        all: bool,
        led: Option<(Duration, bool)>,
    ) -> u64 {
        let mut inner = self.inner.lock();
        if inner.waiting.is_empty() && led.is_none() {
            return 0;
        }
        let mut woken = Vec::new();
        let mut k = 0;
        while k < inner.waiting.len() {
            let (index, e) = (inner.waiting[k].0, inner.waiting[k].1);
            if all || index <= durable_index || e != epoch {
                woken.push(inner.waiting.swap_remove(k).2);
            } else {
                k += 1;
            }
        }
        let count = woken.len() as u64;
        if let Some((took, inline)) = led {
            // Expect the largest recent group, not only the last: tasks on one thread cannot
            // arrive while a task of theirs leads an fsync inline, so a group cut short once (a
            // fsync the driver led at its deadline, covering few) would otherwise make every
            // later group as short — each arrival leading its own fsync — for good. A smaller
            // set of writers costs at most the driver's deadline per group while it decays.
            let group = count + inner.arrivals;
            inner.peak = group.max(inner.peak.saturating_sub((inner.peak / 8).max(1)));
            inner.expected = inner.peak;
            inner.last_inline = inline;
            inner.last_done = Instant::now();
            inner.sync_estimate = (inner.sync_estimate * 7 + took) / 8;
        }
        drop(inner);
        for waker in woken {
            waker.wake();
        }
        count
    }

    /// Run by the driver: blocks until some future waits, then returns true; false once shut
    /// down.
    pub fn wait_for_work(&self) -> bool {
        let mut inner = self.inner.lock();
        loop {
            if inner.shutdown {
                return false;
            }
            if !inner.waiting.is_empty() {
                inner.driver = Driver::Busy;
                return true;
            }
            inner.driver = Driver::Idle;
            let seen = self.doorbell.generation();
            drop(inner);
            self.doorbell.wait(seen);
            inner = self.inner.lock();
        }
    }

    /// Run by the driver before an fsync: waits until the expected futures arrived, or at most
    /// `max_delay` (bounded by the fsync time, unless futures lead inline) after the later of the
    /// last async group commit and now. Returns whether the driver should lead — not if a future
    /// took the group over, or at shutdown.
    pub fn gather(&self, max_delay: Duration) -> bool {
        let mut inner = self.inner.lock();
        let delay = if inner.last_inline {
            max_delay
        } else {
            max_delay.min(inner.sync_estimate)
        };
        let deadline = inner.last_done.max(Instant::now()) + delay;
        loop {
            if inner.shutdown {
                return false;
            }
            if std::mem::take(&mut inner.kicked) {
                inner.taken = false;
                break;
            }
            if std::mem::take(&mut inner.taken) {
                inner.driver = Driver::Busy;
                return false;
            }
            if inner.arrivals >= inner.expected || Instant::now() >= deadline {
                break;
            }
            inner.driver = Driver::Gathering;
            let seen = self.doorbell.generation();
            drop(inner);
            self.doorbell.wait_until(seen, deadline);
            inner = self.inner.lock();
        }
        inner.driver = Driver::Busy;
        inner.arrivals = 0;
        true
    }

    /// Stops the driver (at its next look at the list).
    pub fn shutdown(&self) {
        self.inner.lock().shutdown = true;
        self.doorbell.ring();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` futures for records `first..first + n` begin waiting; then the driver leads an fsync
    /// through the last one, which wakes them.
    fn group(w: &Wakers, first: u64, n: u64) {
        for index in first..first + n {
            w.register(index, 0, Waker::noop(), true, false);
        }
        assert!(w.gather(Duration::ZERO), "the driver leads");
        let woken = w.wake(
            first + n - 1,
            0,
            false,
            Some((Duration::from_micros(100), true)),
        );
        assert_eq!(woken, n);
    }

    #[test]
    fn a_group_cut_short_once_does_not_shrink_what_later_groups_expect_for_good() {
        let w = Wakers::default();
        group(&w, 1, 8);
        assert_eq!(w.inner.lock().expected, 8);
        // An fsync covering only two (the driver led at its deadline while the rest were still
        // to run): the next group still expects most of the eight, so the next arrivals gather
        // rather than each leading an fsync of its own.
        group(&w, 9, 2);
        assert_eq!(w.inner.lock().expected, 7);
        // Fewer writers for good: the expectation decays to them, an eighth per group commit.
        for k in 0..32 {
            group(&w, 11 + 2 * k, 2);
        }
        assert_eq!(w.inner.lock().expected, 2);
    }
}
