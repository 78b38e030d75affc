//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use storage_wal::{FileSystem, MemFs, Options, Wal};

/// Every file of a log directory with its contents.
pub type Files = Vec<(PathBuf, Vec<u8>)>;

/// The log directory used on a `MemFs`.
pub fn dir() -> PathBuf {
    PathBuf::from("/wal")
}

/// Small segments so that a few records span several of them.
pub fn small_options() -> Options {
    Options {
        segment_size: 4096,
        max_record_size: 4096,
        max_group_commit_delay: Duration::ZERO,
        ..Options::default()
    }
}

pub fn open(fs: &MemFs, options: &Options) -> storage_wal::Result<Wal> {
    Wal::open_with_fs(Arc::new(fs.clone()), dir(), options.clone())
}

/// Segment files of the log, oldest first.
pub fn segment_files(fs: &MemFs) -> Vec<PathBuf> {
    let mut names: Vec<String> = fs
        .list(&dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir().join(n)).collect()
}

/// Every file of the log directory with its contents.
pub fn snapshot(fs: &MemFs) -> Vec<(PathBuf, Vec<u8>)> {
    let mut names = fs.list(&dir()).unwrap();
    names.sort();
    names
        .into_iter()
        .map(|n| dir().join(n))
        .map(|p| (p.clone(), fs.read_file(&p).unwrap()))
        .collect()
}

/// A fresh filesystem holding exactly these files (all durable).
pub fn restore(files: &[(PathBuf, Vec<u8>)]) -> MemFs {
    let fs = MemFs::new();
    fs.create_dir_all(&dir()).unwrap();
    for (path, data) in files {
        fs.write_file(path, data).unwrap();
    }
    fs
}

/// Deterministic payload of record `i` with a length that varies (0..=700 bytes), never all zero.
pub fn payload(i: u64, salt: u64) -> Vec<u8> {
    let len = ((i * 7919 + salt * 31) % 701) as usize;
    (0..len)
        .map(|k| ((k as u64 * 131 + i * 17 + salt) % 251) as u8 + 1)
        .collect()
}

/// Reads all records of the log.
pub fn read_all(wal: &Wal) -> Vec<Vec<u8>> {
    if wal.is_empty() {
        return Vec::new();
    }
    wal.read_range(wal.first_index()..wal.next_index(), u64::MAX)
        .unwrap()
}

pub fn path_is(err: &storage_wal::WalError, path: &Path) -> bool {
    err.path() == Some(path)
}
