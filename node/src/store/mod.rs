//! Durable Raft storage for one replication group, on `storage-wal` (work in progress).
