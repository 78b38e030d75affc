//! A bell that group-commit waiters sleep on: one ring per finished fsync wakes every sleeper
//! with one call, and each then checks for itself whether its record is durable.
//!
//! Why not one wake-up per waiter: with 64 writers on 2 cores, waking each covered writer by its
//! own `unpark` (a futex call each, plus the bookkeeping of who waits for what under the log's
//! lock) cost more than the fdatasync it followed. A ring is one `FUTEX_WAKE` of a generation word:
//! the kernel walks its wait queue once, and no list of waiters is kept at all.
//!
//! On Linux the bell is a futex on an `AtomicU32` generation word; elsewhere a mutex and a
//! condition variable guard the same word. Both keep one contract: [`Bell::wait`] returns once the
//! generation differs from the one the caller saw (or spuriously, or at its deadline if given),
//! and [`Bell::ring`] advances it and wakes everyone waiting. A caller reads [`Bell::generation`] *before* checking the condition it
//! waits for, so a ring between the check and the wait is never missed.

#[cfg(test)]
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A wake-everyone signal with a generation count (see the module docs).
#[derive(Default)]
pub(crate) struct Bell {
    #[cfg(target_os = "linux")]
    inner: futex::FutexBell,
    #[cfg(not(target_os = "linux"))]
    inner: portable::CondvarBell,
}

impl Bell {
    /// The current generation; read it before checking what you wait for.
    pub fn generation(&self) -> u32 {
        self.inner.word().load(Ordering::Acquire)
    }

    /// Blocks until the generation is no longer `seen` (it may also return spuriously: callers
    /// check their condition again in a loop).
    pub fn wait(&self, seen: u32) {
        self.inner.wait_until(seen, None);
    }

    /// Like [`wait`](Self::wait), but returns by `deadline` at the latest.
    pub fn wait_until(&self, seen: u32, deadline: Instant) {
        self.inner.wait_until(seen, Some(deadline));
    }

    /// Advances the generation and wakes every thread waiting on the bell.
    pub fn ring(&self) {
        self.inner.ring();
    }
}

#[cfg(target_os = "linux")]
mod futex {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    #[derive(Default)]
    pub(super) struct FutexBell {
        generation: AtomicU32,
    }

    impl FutexBell {
        pub fn word(&self) -> &AtomicU32 {
            &self.generation
        }

        pub fn wait_until(&self, seen: u32, deadline: Option<Instant>) {
            if self.generation.load(Ordering::Acquire) != seen {
                return;
            }
            // FUTEX_WAIT takes a relative timeout.
            let timeout = match deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    Some(libc::timespec {
                        tv_sec: left.as_secs() as libc::time_t,
                        tv_nsec: left.subsec_nanos() as libc::c_long,
                    })
                }
            };
            // The kernel compares the word with `seen` atomically with queueing this thread, so
            // a ring after the load above makes the call return at once (EAGAIN). EINTR,
            // ETIMEDOUT and spurious returns are fine: the contract allows them.
            futex(
                &self.generation,
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                seen,
                timeout.as_ref(),
            );
        }

        pub fn ring(&self) {
            self.generation.fetch_add(1, Ordering::Release);
            futex(
                &self.generation,
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX as u32,
                None,
            );
        }
    }

    /// `futex(2)` on `word`, with a relative `timeout` for FUTEX_WAIT (none: wait without one).
    /// Its result is ignored: a wait that fails (EAGAIN, EINTR, ETIMEDOUT) is a spurious return
    /// to the caller's loop, and a wake cannot fail on a valid word.
    #[allow(unsafe_code)]
    fn futex(word: &AtomicU32, op: libc::c_int, value: u32, timeout: Option<&libc::timespec>) {
        let timeout = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `word` is a live, aligned 32-bit atomic for the whole call (borrowed from
        // `self`); FUTEX_WAIT and FUTEX_WAKE only read it and queue or wake threads on its
        // address. `timeout` is null or borrowed from the caller for the whole call, and only
        // read (by FUTEX_WAIT; FUTEX_WAKE ignores it); the second address is unused by these two
        // operations. No memory is written through any pointer passed.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                op,
                value,
                timeout,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }
}

#[cfg(any(not(target_os = "linux"), test))]
mod portable {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use parking_lot::{Condvar, Mutex};

    /// The same contract on any target: the word changes only under `lock`, so a waiter that
    /// checked it under the lock cannot miss the notification.
    #[derive(Default)]
    pub(super) struct CondvarBell {
        generation: AtomicU32,
        lock: Mutex<()>,
        rung: Condvar,
    }

    impl CondvarBell {
        pub fn word(&self) -> &AtomicU32 {
            &self.generation
        }

        pub fn wait_until(&self, seen: u32, deadline: Option<Instant>) {
            let mut guard = self.lock.lock();
            while self.generation.load(Ordering::Acquire) == seen {
                match deadline {
                    None => self.rung.wait(&mut guard),
                    Some(deadline) => {
                        if self.rung.wait_until(&mut guard, deadline).timed_out() {
                            return;
                        }
                    }
                }
            }
        }

        pub fn ring(&self) {
            let guard = self.lock.lock();
            self.generation.fetch_add(1, Ordering::Release);
            drop(guard);
            self.rung.notify_all();
        }
    }
}

/// Both implementations behind one face, for the tests (the futex one only on Linux).
#[cfg(test)]
trait AnyBell: Send + Sync + Default + 'static {
    fn word(&self) -> &AtomicU32;
    fn wait(&self, seen: u32) {
        self.wait_until(seen, None);
    }
    fn wait_until(&self, seen: u32, deadline: Option<Instant>);
    fn ring(&self);
}

#[cfg(test)]
impl AnyBell for portable::CondvarBell {
    fn word(&self) -> &AtomicU32 {
        portable::CondvarBell::word(self)
    }
    fn wait_until(&self, seen: u32, deadline: Option<Instant>) {
        portable::CondvarBell::wait_until(self, seen, deadline)
    }
    fn ring(&self) {
        portable::CondvarBell::ring(self)
    }
}

#[cfg(all(test, target_os = "linux"))]
impl AnyBell for futex::FutexBell {
    fn word(&self) -> &AtomicU32 {
        futex::FutexBell::word(self)
    }
    fn wait_until(&self, seen: u32, deadline: Option<Instant>) {
        futex::FutexBell::wait_until(self, seen, deadline)
    }
    fn ring(&self) {
        futex::FutexBell::ring(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn wait_after_a_ring_returns_at_once<B: AnyBell>() {
        let bell = B::default();
        let seen = bell.word().load(Ordering::Acquire);
        bell.ring();
        assert_ne!(bell.word().load(Ordering::Acquire), seen);
        // Must not block: the generation moved past `seen` before the wait began.
        bell.wait(seen);
    }

    /// Sleepers wait in a loop on a flag, as the log's waiters do on the durable index; one ring
    /// after setting it must release all of them. A bell that advanced the word without waking
    /// the queued threads, or woke only one, leaves sleepers asleep: the test fails after a
    /// generous hang guard (not a timing assertion: a working bell returns at once).
    fn one_ring_releases_every_sleeper<B: AnyBell>() {
        const SLEEPERS: usize = 8;
        let bell = Arc::new(B::default());
        let done = Arc::new(AtomicBool::new(false));
        let (released, back) = std::sync::mpsc::channel();
        for _ in 0..SLEEPERS {
            let (bell, done, released) = (bell.clone(), done.clone(), released.clone());
            std::thread::spawn(move || loop {
                let seen = bell.word().load(Ordering::Acquire);
                if done.load(Ordering::Acquire) {
                    let _ = released.send(());
                    return;
                }
                bell.wait(seen);
            });
        }
        // Give the sleepers a chance to block first (correctness does not depend on it).
        std::thread::sleep(std::time::Duration::from_millis(20));
        done.store(true, Ordering::Release);
        bell.ring();
        for k in 0..SLEEPERS {
            back.recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("only {k} of {SLEEPERS} sleepers woke from one ring"));
        }
    }

    /// A wait with a deadline and no ring must come back (a bell that ignored the deadline
    /// hangs here: the hang guard fails the test), and one whose deadline passed already must
    /// not block at all.
    fn wait_until_returns_by_its_deadline<B: AnyBell>() {
        let bell = Arc::new(B::default());
        let seen = bell.word().load(Ordering::Acquire);
        bell.wait_until(seen, Some(Instant::now()));
        let (back, returned) = std::sync::mpsc::channel();
        let sleeper = bell.clone();
        std::thread::spawn(move || {
            sleeper.wait_until(
                seen,
                Some(Instant::now() + std::time::Duration::from_millis(5)),
            );
            let _ = back.send(());
        });
        returned
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a wait with a deadline came back without a ring");
        assert_eq!(
            bell.word().load(Ordering::Acquire),
            seen,
            "the deadline passing is not a ring"
        );
    }

    #[test]
    fn condvar_bell_wait_until_returns_by_its_deadline() {
        wait_until_returns_by_its_deadline::<portable::CondvarBell>();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn futex_bell_wait_until_returns_by_its_deadline() {
        wait_until_returns_by_its_deadline::<futex::FutexBell>();
    }

    #[test]
    fn condvar_bell_wait_after_a_ring_returns_at_once() {
        wait_after_a_ring_returns_at_once::<portable::CondvarBell>();
    }

    #[test]
    fn condvar_bell_one_ring_releases_every_sleeper() {
        one_ring_releases_every_sleeper::<portable::CondvarBell>();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn futex_bell_wait_after_a_ring_returns_at_once() {
        wait_after_a_ring_returns_at_once::<futex::FutexBell>();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn futex_bell_one_ring_releases_every_sleeper() {
        one_ring_releases_every_sleeper::<futex::FutexBell>();
    }
}
