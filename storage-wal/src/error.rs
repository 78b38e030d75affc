//! Typed errors. Every error about file contents names the file and the byte offset.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Everything that can go wrong with a write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"open"`, `"write"`, `"fdatasync"`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored bytes fail a check: a checksum, an index sequence, zero padding, a gap between segments.
    #[error("corrupt log file {path} at byte offset {offset}: {reason}")]
    Corrupt {
        /// The segment (or metadata) file.
        path: PathBuf,
        /// Byte offset in that file of the record or header that failed.
        offset: u64,
        /// What failed.
        reason: String,
    },
    /// The last segment ends in an incomplete record and the recovery mode is
    /// [`RecoveryMode::AbsoluteConsistency`](crate::RecoveryMode::AbsoluteConsistency).
    #[error("torn tail in {path} at byte offset {offset} (recovery mode is AbsoluteConsistency)")]
    TornTail {
        /// The last segment file.
        path: PathBuf,
        /// Offset of the first incomplete record.
        offset: u64,
    },
    /// A file that the log made durable is gone: a segment the manifest names, the metadata file
    /// it says was stored, or the manifest itself of a log that holds records.
    #[error("log file {path} is missing: {reason}")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// Why the log knows it should be there.
        reason: String,
    },
    /// A file named like a segment (or metadata file) does not start with the expected magic bytes.
    #[error("{path} is not a storage-wal file (bad magic)")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// A file was written by a newer (or unknown) format version.
    #[error("{path} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },
    /// Another `Wal` (in this or another process) holds the directory.
    #[error("log directory {dir} is locked by another process or another open log")]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// An earlier write or fsync failed; the log refuses all further work because the state of the
    /// file on disk is unknown. Reopen the log to recover from what is durable.
    #[error("log is poisoned by an earlier I/O failure: {cause}")]
    Poisoned {
        /// Description of the original failure.
        cause: String,
    },
    /// The index is not in the log.
    #[error("index {index} is outside the log (first {first}, last {last})")]
    OutOfRange {
        /// Requested index.
        index: u64,
        /// First index held (after compaction).
        first: u64,
        /// Last index held (`first - 1` when empty).
        last: u64,
    },
    /// `append_at` was given an index that is not the next one.
    #[error("append at index {given}, but the next index is {expected}")]
    IndexMismatch {
        /// The next index of the log.
        expected: u64,
        /// The index the caller gave.
        given: u64,
    },
    /// The records would need an index past `u64::MAX - 1`, the largest a record can have.
    #[error("no index left for another record after {next_index}")]
    IndexSpaceExhausted {
        /// The index the next record would get.
        next_index: u64,
    },
    /// A record whose durability was awaited was removed by a concurrent `truncate_from`.
    #[error("record {index} was truncated before it became durable")]
    Truncated {
        /// The truncated record's index.
        index: u64,
    },
    /// A record (or metadata blob) exceeds the configured maximum size.
    #[error("{what} of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// `"record"` or `"metadata"`.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The options are unusable.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WalError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        WalError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for errors that mean stored bytes are damaged (as opposed to I/O or usage errors).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            WalError::Corrupt { .. }
                | WalError::MissingFile { .. }
                | WalError::TornTail { .. }
                | WalError::BadMagic { .. }
                | WalError::UnsupportedVersion { .. }
        )
    }

    /// The file an error is about, when it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            WalError::Io { path, .. }
            | WalError::Corrupt { path, .. }
            | WalError::MissingFile { path, .. }
            | WalError::TornTail { path, .. }
            | WalError::BadMagic { path }
            | WalError::UnsupportedVersion { path, .. } => Some(path),
            WalError::Locked { dir } => Some(dir),
            _ => None,
        }
    }
}
