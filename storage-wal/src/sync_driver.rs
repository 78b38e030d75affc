//! The sync driver: a background thread that leads group commits for async waiters.
//!
//! [`DurableAppend`](crate::DurableAppend) futures cannot lead an fsync themselves (that would
//! block their executor), so the first one a log creates starts this thread. It takes the same
//! leader claim as a waiting thread — so threads and tasks share fsyncs, and whichever leads,
//! its ring wakes both — and stops when the log is dropped. See `wakers.rs` for how it gathers.

use std::thread::JoinHandle;
use std::time::Duration;

use crate::waiters::GroupCommit;

/// What one attempt to lead an fsync for the async waiters did.
pub(crate) enum Led {
    /// This thread led an fsync (successful or not: a failure poisons and rings); its ring set
    /// what the next async group commit may expect.
    Synced,
    /// Another thread was leading; its ring came (or this thread was rung for another reason),
    /// or, asked not to wait, this thread returned at once.
    Waited,
    /// Nothing was left to make durable (or the log is poisoned): every async waiter was woken to
    /// look for itself.
    Nothing,
}

/// Starts the driver thread. `lead` tries to lead one fsync (see [`Led`]); `max_delay` bounds the
/// gathering as `Options::max_group_commit_delay` does for threads.
pub(crate) fn spawn<G, L>(group: G, max_delay: Duration, lead: L) -> std::io::Result<JoinHandle<()>>
where
    G: AsRef<GroupCommit> + Send + 'static,
    L: FnMut() -> Led + Send + 'static,
{
    std::thread::Builder::new()
        .name("wal-sync".into())
        .spawn(move || run(group.as_ref(), max_delay, lead))
}

fn run(group: &GroupCommit, max_delay: Duration, mut lead: impl FnMut() -> Led) {
    let wakers = group.wakers();
    loop {
        if !wakers.wait_for_work() {
            return;
        }
        if !wakers.gather(max_delay) {
            continue;
        }
        match lead() {
            Led::Synced => {}
            Led::Waited => {}
            Led::Nothing => group.wake_all_async(),
        }
    }
}
