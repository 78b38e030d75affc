//! The background thread that makes submitted writes durable and says so.
//!
//! While some submitted WAL index is not yet durable it calls `Wal::sync`, which writes and
//! `fdatasync`s everything appended so far: writes submitted while one sync runs are all covered
//! by the next (group commit). Each completed sync is published on a `watch` channel.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use storage_wal::Wal;
use tokio::sync::watch;

use super::error::{Result, StoreError};
use super::Durability;

#[derive(Default)]
struct Wanted {
    /// Highest WAL index submitted for durability.
    index: u64,
    stop: bool,
}

struct Shared {
    wanted: Mutex<Wanted>,
    wake: Condvar,
    durable: watch::Sender<Durability>,
}

pub(crate) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread, or with `background == false` only the channel (durability then
    /// advances through `publish`, from explicit syncs).
    pub(crate) fn start(wal: Arc<Wal>, background: bool) -> Syncer {
        let durable_index = wal.durable_index();
        let (durable, _) = watch::channel(Durability {
            index: durable_index,
            error: None,
        });
        let shared = Arc::new(Shared {
            wanted: Mutex::new(Wanted {
                index: durable_index,
                stop: false,
            }),
            wake: Condvar::new(),
            durable,
        });
        if !background {
            return Syncer {
                shared,
                thread: None,
            };
        }
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("raft-store-sync".into())
            .spawn(move || run(&wal, &thread_shared, durable_index))
            .ok();
        if thread.is_none() {
            shared.durable.send_replace(Durability {
                index: durable_index,
                error: Some(Arc::new(StoreError::io(
                    "spawn",
                    "raft-store-sync",
                    std::io::Error::other("cannot start the sync thread"),
                ))),
            });
        }
        Syncer { shared, thread }
    }

    /// Asks for everything through `index` to become durable.
    pub(crate) fn request(&self, index: u64) {
        let mut wanted = self
            .shared
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if index > wanted.index {
            wanted.index = index;
            self.shared.wake.notify_one();
        }
    }

    /// Publishes a durable index reached by an explicit sync.
    pub(crate) fn publish(&self, index: u64) {
        self.shared.durable.send_if_modified(|durable| {
            let advanced = durable.error.is_none() && index > durable.index;
            if advanced {
                durable.index = index;
            }
            advanced
        });
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Durability> {
        self.shared.durable.subscribe()
    }

    /// Fails if a background sync failed.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.shared.durable.borrow().error {
            Some(error) => Err(StoreError::SyncFailed(error.clone())),
            None => Ok(()),
        }
    }
}

/// A sync taking at least this long is logged: it delays every commit waiting on this member.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(50);

fn run(wal: &Wal, shared: &Shared, mut durable: u64) {
    loop {
        {
            let mut wanted = shared.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            while wanted.index <= durable && !wanted.stop {
                wanted = shared
                    .wake
                    .wait(wanted)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if wanted.stop {
                return;
            }
        }
        let started = std::time::Instant::now();
        match wal.sync() {
            Ok(index) => {
                let took = started.elapsed();
                if took >= SLOW_SYNC {
                    tracing::warn!(
                        took_ms = took.as_millis() as u64,
                        records = index.saturating_sub(durable),
                        "raft store: slow WAL sync (the disk is slow or shared; commits wait for it)"
                    );
                }
                durable = index;
                shared
                    .durable
                    .send_replace(Durability { index, error: None });
            }
            Err(error) => {
                tracing::error!(%error, "raft store: sync failed; no further write will become durable");
                shared.durable.send_replace(Durability {
                    index: durable,
                    error: Some(Arc::new(error.into())),
                });
                return;
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
