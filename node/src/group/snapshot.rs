//! Local snapshots, taken off the loop: the loop only clones the KV state (keys and values are
//! shared `Bytes`) and asks the store for a job; a blocking thread serialises the clone and writes
//! the file, the loop adopts it, and another blocking task records the checkpoint and deletes old
//! segments. At most one snapshot is in flight.

use consensus_core::Storage;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::server::ServeError;
use crate::store::WrittenSnapshot;

use super::{Driver, Engine};

/// Applied payload bytes after which a snapshot is taken regardless of the entry count.
const SNAPSHOT_BYTES: u64 = 64 << 20;

/// What a background snapshot task finished.
pub(super) enum SnapshotStep {
    /// The snapshot file is written; the store adopts it next.
    Written(WrittenSnapshot),
    /// The checkpoint at this snapshot index is recorded and the log compacted.
    Checkpointed(u64),
}

type StepResult = Result<Result<SnapshotStep, ServeError>, tokio::task::JoinError>;

/// The snapshot in flight, if any, and the index of the latest one.
pub(super) struct SnapshotTask {
    task: Option<JoinHandle<Result<SnapshotStep, ServeError>>>,
    index: u64,
}

impl SnapshotTask {
    pub(super) fn new(index: u64) -> Self {
        SnapshotTask { task: None, index }
    }

    pub(super) fn running(&self) -> bool {
        self.task.is_some()
    }

    /// Waits for the task in flight (pending forever if none: guard with [`running`]).
    pub(super) async fn join(&mut self) -> StepResult {
        let done = match &mut self.task {
            Some(handle) => handle.await,
            None => std::future::pending().await,
        };
        self.task = None;
        done
    }
}

impl<C: Engine> Driver<C> {
    /// Starts a snapshot of the state machine once enough was applied since the last one. Only
    /// entries durable here are covered.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), ServeError> {
        if self.snapshot.running() {
            return Ok(());
        }
        let applied = self.host.kv.applied();
        // A snapshot installed from the leader counts as the latest one.
        let latest = self
            .snapshot
            .index
            .max(self.replica.engine().store().snapshot_meta().index);
        let since = applied.saturating_sub(latest);
        if since == 0
            || (since < self.config.snapshot.entries
                && self.host.kv.applied_bytes() < SNAPSHOT_BYTES)
        {
            return Ok(());
        }
        let status = self.replica.engine().status();
        if applied > status.persisted_index {
            return Ok(());
        }
        let store = self.replica.engine().store();
        let Some(job) = store.begin_snapshot(applied, status.conf_state)? else {
            return Ok(());
        };
        let state = self.host.kv.store().clone();
        debug!(node = self.id, index = applied, "snapshot started");
        self.snapshot.index = applied;
        self.host.kv.reset_applied_bytes();
        self.snapshot.task = Some(tokio::task::spawn_blocking(move || {
            let data = state.snapshot()?;
            drop(state);
            Ok(SnapshotStep::Written(job.write(data)?))
        }));
        Ok(())
    }

    /// Adopts a snapshot written in the background (then records its checkpoint and compacts the
    /// log, again in the background), or notes that the checkpoint is done.
    pub(super) fn on_snapshot_step(&mut self, done: StepResult) -> Result<(), ServeError> {
        let step =
            done.map_err(|e| ServeError::Stopped(format!("snapshot task failed: {e}")))??;
        match step {
            SnapshotStep::Written(written) => {
                let index = written.meta().index;
                let store = self.replica.engine_mut().store_mut();
                if let Some(checkpoint) = store.finish_snapshot(written)? {
                    debug!(
                        node = self.id,
                        index, "snapshot written, recording checkpoint"
                    );
                    self.snapshot.task = Some(tokio::task::spawn_blocking(move || {
                        checkpoint.run()?;
                        Ok(SnapshotStep::Checkpointed(index))
                    }));
                }
            }
            SnapshotStep::Checkpointed(index) => {
                debug!(node = self.id, index, "snapshot taken, log compacted");
            }
        }
        Ok(())
    }
}
