//! # storage-wal
//!
//! A segmented, checksummed write-ahead log of opaque records with monotonically increasing `u64`
//! indexes, with group commit and crash recovery. Usable alone by anyone who needs a durable log.
//!
//! It knows nothing of consensus and depends on no other Quorate crate.
