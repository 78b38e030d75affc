//! Typed errors of the store. Every error about stored bytes names the file or directory.

use std::path::PathBuf;
use std::sync::Arc;

use consensus_core::{NodeId, StorageError};
use storage_wal::WalError;

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything that can go wrong opening, writing or reading a [`RaftStore`](super::RaftStore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The write-ahead log failed: I/O, a corrupt segment (named with its byte offset), a lock
    /// held by another process, or a log poisoned by an earlier I/O failure.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// An operating-system call on a store file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"create"`, `"write"`, `"fsync"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The data directory was created for another replication protocol.
    #[error(
        "data directory {dir} was created for protocol {found:?}, not {expected:?}; start the \
         node with protocol = {found:?} or point it at a new data directory"
    )]
    WrongProtocol {
        /// The data directory.
        dir: PathBuf,
        /// The protocol this node was started with.
        expected: String,
        /// The protocol recorded in the directory.
        found: String,
    },
    /// The data directory holds a peer-replication node's log (`replication = "peer"`).
    #[error(
        "data directory {dir} holds a peer node's log (peer-wal/); start the node with \
         replication = \"peer\" or point it at a new data directory"
    )]
    PeerDataDir {
        /// The data directory.
        dir: PathBuf,
    },
    /// The data directory holds the other storage layout: a single group's store (`wal/`) where
    /// a node-wide shared log (`shared-wal/`) was expected, or the reverse, or a group directory
    /// with a log of its own inside a shared-log directory.
    #[error(
        "data directory {dir} holds {found}, not {expected}; start the node with the matching \
         [shards] configuration or point it at a new data directory"
    )]
    WrongLayout {
        /// The data directory.
        dir: PathBuf,
        /// What the node was started for.
        expected: &'static str,
        /// What the directory holds.
        found: &'static str,
    },
    /// A group of a shared log is already open (each group has one store at a time).
    #[error("group {group} of the shared log in {dir} is already open")]
    GroupInUse {
        /// The data directory.
        dir: PathBuf,
        /// The group.
        group: u64,
    },
    /// The data directory was created for another cluster.
    #[error(
        "data directory {dir} belongs to cluster {found:?}, not {expected:?}; \
         point this node at its own data directory or remove that one"
    )]
    WrongCluster {
        /// The data directory.
        dir: PathBuf,
        /// The cluster this node was started for.
        expected: String,
        /// The cluster recorded in the directory.
        found: String,
    },
    /// The data directory was created for another node (or another replication group).
    #[error(
        "data directory {dir} belongs to node {found_node} group {found_group}, not node \
         {expected_node} group {expected_group}; each node needs its own data directory"
    )]
    WrongMember {
        /// The data directory.
        dir: PathBuf,
        /// The node id this process was started as.
        expected_node: NodeId,
        /// The group this store was opened for.
        expected_group: u64,
        /// The node id recorded in the directory.
        found_node: NodeId,
        /// The group recorded in the directory.
        found_group: u64,
    },
    /// A store file (identity record, snapshot file) fails a check.
    #[error("corrupt store file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A record of the write-ahead log passed its checksum but does not decode: written by an
    /// incompatible build, or a bug.
    #[error("undecodable record {wal_index} in log directory {dir}: {reason}")]
    BadRecord {
        /// The log directory.
        dir: PathBuf,
        /// The log record's index.
        wal_index: u64,
        /// What failed.
        reason: String,
    },
    /// A file was written by an unknown format version.
    #[error("{path} has store format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },
    /// The files of the directory contradict each other (for instance the log was compacted past
    /// the recorded checkpoint, or the snapshot file is older than the log says).
    #[error("inconsistent data directory {dir}: {reason}")]
    Inconsistent {
        /// The data directory.
        dir: PathBuf,
        /// What contradicts what.
        reason: String,
    },
    /// A write asked for something the log cannot do (a gap, entries out of order, overwriting
    /// compacted entries). Nothing was written.
    #[error("write refused: {0}")]
    Refused(StorageError),
    /// An earlier background sync failed; the store refuses further work. Reopen it.
    #[error("an earlier sync failed: {0}")]
    SyncFailed(Arc<StoreError>),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl From<StoreError> for StorageError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Refused(inner) => inner,
            other => StorageError::Other(other.to_string()),
        }
    }
}
