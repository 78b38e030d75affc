//! # storage-wal
//!
//! A segmented, checksummed write-ahead log of opaque records with monotonically increasing `u64`
//! indexes, with group commit and crash recovery. Usable alone by anyone who needs a durable log;
//! Quorate's `node` uses it as the Raft log (entries, suffix truncation on conflicts, prefix
//! compaction after snapshots, hard state in the metadata record).
//!
//! It knows nothing of consensus and depends on no other Quorate crate.
//!
//! ```
//! use storage_wal::{Options, Wal};
//!
//! # fn main() -> Result<(), storage_wal::WalError> {
//! let dir = tempfile::tempdir().unwrap();
//! let options = Options { segment_size: 64 << 10, ..Options::default() };
//! let wal = Wal::open(dir.path(), options.clone())?;
//!
//! // Append a batch without waiting, then make it durable with one fdatasync.
//! let range = wal.append_batch([&b"put a 1"[..], b"put b 2", b"put c 3"])?;
//! assert_eq!(range, 1..4);
//! assert_eq!(wal.sync()?, 3);
//!
//! // Or append and wait, sharing the fsync with other threads (group commit)...
//! let index = wal.append_durable(b"put d 4")?;
//! // ...or with other tasks, on any executor: `wal.append_durable_async(b"..").await?`.
//! assert_eq!(wal.read(index)?, b"put d 4");
//!
//! // A consensus log replaces a conflicting suffix, and drops a prefix after a snapshot.
//! wal.truncate_from(3)?;
//! wal.append_batch_at(3, [b"put c 33"])?;
//! wal.compact(2)?;
//! assert_eq!(wal.read_range(2..4, u64::MAX)?, vec![b"put b 2".to_vec(), b"put c 33".to_vec()]);
//!
//! // Small caller state (Raft's term, vote and commit) is replaced atomically.
//! wal.set_metadata(b"term=3 vote=2 commit=3")?;
//! drop(wal);
//!
//! let wal = Wal::open(dir.path(), options)?;
//! assert_eq!(wal.last_index(), 3);
//! assert_eq!(wal.metadata().as_deref(), Some(&b"term=3 vote=2 commit=3"[..]));
//! assert!(wal.recovery_report().torn_tail.is_none());
//! # Ok(()) }
//! ```
//!
//! ## Guarantees
//! - A record is durable once [`Wal::sync`], [`Wal::wait_durable`] or [`Wal::append_durable`]
//!   covers it, or the future [`Wal::append_durable_async`] returns resolves to its index;
//!   [`Wal::durable_index`] tells how far that is. One `fdatasync` covers every record
//!   appended before it started, whichever thread appended it.
//! - An I/O error while writing or syncing poisons the log: every later call fails with
//!   [`WalError::Poisoned`]; nothing is retried. Reopen to continue from what is durable.
//! - At open, an incomplete record at the end of the last segment (a write a crash interrupted) is
//!   cut off and reported in [`Wal::recovery_report`]; damage anywhere else is an error naming the
//!   file and byte offset ([`RecoveryMode`] chooses how strict). Records are never skipped.
//! - A record reported durable is not cut as torn when anything shows it was durable: the
//!   manifest (written at open, roll, compaction, truncation and close) or the durable index that
//!   every later record carries. Damage to it is [`WalError::Corrupt`]; a missing first or last
//!   segment, metadata file or manifest is [`WalError::MissingFile`]; a short last segment is
//!   `Corrupt`. Only the records of the last group commit before a crash rely on the torn-write
//!   heuristics alone (see the `storage-wal` section of ARCHITECTURE.md).
//! - One `Wal` per directory: a second open, in this or another process, fails with
//!   [`WalError::Locked`].
//! - Nothing read from a file sizes an allocation before it is checked: a record length is trusted
//!   only after its header checksum and against [`Options::max_record_size`]; recovery reads
//!   through a 256 KiB window, never a whole segment.
//! - Reads read files without holding the log's lock, so they do not stall appends or group
//!   commits; a read that a concurrent [`Wal::truncate_from`] overlapped is redone.
//!
//! ## Modules
//! [`mod@format`] is the on-disk layout; [`fs`] the filesystem seam with the real [`StdFs`] and the
//! crash-simulating [`MemFs`] used by the tests.

mod bell;
mod durable_append;
mod error;
pub mod format;
pub mod fs;
mod manifest;
pub mod mem_fs;
mod meta;
mod options;
mod segment;
mod sync_driver;
mod waiters;
mod wakers;
mod wal;

pub use durable_append::DurableAppend;
pub use error::{Result, WalError};
pub use fs::{FileSystem, StdFs, WalFile};
pub use mem_fs::MemFs;
pub use meta::MAX_METADATA_LEN;
pub use options::{Options, RecoveryMode, RecoveryReport, Stats, TornTailCut};
pub use wal::Wal;
