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
//! generation differs from the one the caller saw (or spuriously), and [`Bell::ring`] advances it and
//! wakes everyone waiting. A caller reads [`Bell::generation`] *before* checking the condition it
//! waits for, so a ring between the check and the wait is never missed.

#[cfg(test)]
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

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
        self.inner.wait(seen);
    }

    /// Advances the generation and wakes every thread waiting on the bell.
    pub fn ring(&self) {
        self.inner.ring();
    }
}

#[cfg(target_os = "linux")]
mod futex {
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    pub(super) struct FutexBell {
        generation: AtomicU32,
    }

    impl FutexBell {
        pub fn word(&self) -> &AtomicU32 {
            &self.generation
        }

        pub fn wait(&self, seen: u32) {
            if self.generation.load(Ordering::Acquire) != seen {
                return;
            }
            // The kernel compares the word with `seen` atomically with queueing this thread, so
            // a ring after the load above makes the call return at once (EAGAIN). EINTR and
            // spurious returns are fine: the contract allows them.
            futex(
                &self.generation,
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                seen,
            );
        }

        pub fn ring(&self) {
            self.generation.fetch_add(1, Ordering::Release);
            futex(
                &self.generation,
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX as u32,
            );
        }
    }

    /// `futex(2)` on `word` with no timeout. Its result is ignored: a wait that fails (EAGAIN,
    /// EINTR) is a spurious return to the caller's loop, and a wake cannot fail on a valid word.
    #[allow(unsafe_code)]
    fn futex(word: &AtomicU32, op: libc::c_int, value: u32) {
        // SAFETY: `word` is a live, aligned 32-bit atomic for the whole call (borrowed from
        // `self`); FUTEX_WAIT and FUTEX_WAKE only read it and queue or wake threads on its
        // address; the timeout (null: wait without one) and the second address are unused by
        // these two operations. No memory is written through any pointer passed.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                op,
                value,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }
}

#[cfg(any(not(target_os = "linux"), test))]
mod portable {
    use std::sync::atomic::{AtomicU32, Ordering};

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

        pub fn wait(&self, seen: u32) {
            let mut guard = self.lock.lock();
            while self.generation.load(Ordering::Acquire) == seen {
                self.rung.wait(&mut guard);
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
    fn wait(&self, seen: u32);
    fn ring(&self);
}

#[cfg(test)]
impl AnyBell for portable::CondvarBell {
    fn word(&self) -> &AtomicU32 {
        portable::CondvarBell::word(self)
    }
    fn wait(&self, seen: u32) {
        portable::CondvarBell::wait(self, seen)
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
    fn wait(&self, seen: u32) {
        futex::FutexBell::wait(self, seen)
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
