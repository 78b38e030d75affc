//! Options, recovery modes and the recovery report.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Result, WalError};
use crate::format::{record_size, SEGMENT_HEADER_LEN};

/// What to do, at open, with a last segment whose end does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// An incomplete record at the end of the **last** segment (a write the crash interrupted:
    /// sectors that never reached the disk) is cut off, the bytes after it are zeroed, and the
    /// cut is reported in [`RecoveryReport::torn_tail`] — unless the manifest or a later record
    /// shows it was durable, which makes it corruption. A damaged record anywhere else, missing
    /// files and a short last segment are still errors. This is the right mode after a crash.
    #[default]
    TolerateTornTail,
    /// Any incomplete or damaged record is an error, including at the end of the last segment
    /// ([`WalError::TornTail`](crate::WalError::TornTail) when it looks torn). Use it to check a
    /// log that was closed cleanly.
    AbsoluteConsistency,
}

/// How a log is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target size of a segment file; each is preallocated (zero-filled) to this size. A record too
    /// big for an empty segment gets a segment sized to fit it. Minimum 4 KiB. Default 64 MiB.
    pub segment_size: u64,
    /// Largest payload accepted by `append`. At open, a longer length field is corruption, so do
    /// not lower it below what the log was written with. Default 64 MiB.
    pub max_record_size: u32,
    /// What to do with a torn tail at open. Default [`RecoveryMode::TolerateTornTail`].
    pub recovery_mode: RecoveryMode,
    /// Index of the first record of a brand-new log (at least 1). Default 1.
    pub initial_index: u64,
    /// Group commit: how long the writer that leads the next fsync may wait for as many writers
    /// as were active around the previous one (those it released are usually on their way back),
    /// so that one fsync covers them all. Bounded further by the measured fsync time; the wait
    /// ends as soon as they are there. Zero disables it. Default 1 ms.
    pub max_group_commit_delay: Duration,
    /// Async group commit ([`Wal::append_durable_async`](crate::Wal::append_durable_async)): the
    /// future whose arrival completes the group the last fsync released runs the next fsync
    /// itself, inside `poll` — blocking its executor's thread for one fsync, at a moment when the
    /// writers that thread runs wait for that fsync anyway. It saves two thread wake-ups per
    /// fsync (to the log's sync thread and back). Off: the sync thread leads every async group
    /// commit, and `poll` never blocks on the disk. Default off — a future that blocks in `poll`
    /// delays every other task of its executor thread; turn it on for an executor (or a
    /// current-thread runtime) whose tasks are the log's writers.
    pub async_inline_fsync: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: 64 << 20,
            max_record_size: 64 << 20,
            recovery_mode: RecoveryMode::TolerateTornTail,
            initial_index: 1,
            max_group_commit_delay: Duration::from_millis(1),
            async_inline_fsync: false,
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.segment_size < 4096 {
            return Err(WalError::InvalidOptions(format!(
                "segment_size {} is below 4096",
                self.segment_size
            )));
        }
        if self.segment_size > 1 << 32 {
            return Err(WalError::InvalidOptions(format!(
                "segment_size {} is above 4 GiB",
                self.segment_size
            )));
        }
        if self.initial_index == 0 {
            return Err(WalError::InvalidOptions(
                "initial_index must be at least 1".into(),
            ));
        }
        if self.max_record_size == 0 {
            return Err(WalError::InvalidOptions(
                "max_record_size must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The largest segment file this log may write (a full segment, or one sized for a huge record).
    pub(crate) fn max_segment_file(&self) -> u64 {
        self.segment_size
            .max(SEGMENT_HEADER_LEN + record_size(self.max_record_size as usize))
    }
}

/// A torn tail cut off at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTailCut {
    /// The last segment file.
    pub path: PathBuf,
    /// Byte offset where the first incomplete record started; the segment now ends there.
    pub offset: u64,
    /// Non-zero bytes that were found from `offset` on and zeroed.
    pub discarded_bytes: u64,
}

/// What open found and repaired. Read it with [`Wal::recovery_report`](crate::Wal::recovery_report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in use after open.
    pub segments: usize,
    /// Records found.
    pub records: u64,
    /// Bytes of segment files read and checked.
    pub bytes_scanned: u64,
    /// The torn tail that was cut off, if any.
    pub torn_tail: Option<TornTailCut>,
    /// Files removed: temporary files of interrupted operations, and segments made obsolete by an
    /// interrupted compaction past the end of the log.
    pub removed_files: Vec<PathBuf>,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records appended.
    pub appended_records: u64,
    /// Payload bytes appended.
    pub appended_bytes: u64,
    /// `fdatasync` calls made to make records durable (group commits and segment rolls).
    pub syncs: u64,
    /// Microseconds spent in group-commit `fdatasync` calls (the disk's busy time, as far as
    /// the log's own syncs go): with `syncs`, shows how long the disk idles between them.
    pub sync_busy_micros: u64,
    /// Group commits led for async waiters by a future inline (`Options::async_inline_fsync`),
    /// and by the sync driver thread: in a closed loop of tasks nearly all should be inline.
    pub async_inline_syncs: u64,
    /// See [`async_inline_syncs`](Self::async_inline_syncs).
    pub async_driver_syncs: u64,
}
