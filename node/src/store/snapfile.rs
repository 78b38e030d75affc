//! The snapshot file: the latest snapshot's metadata and data, replaced atomically.
//!
//! ```text
//! "QRMSNAPS" | version u32 | meta_len u32 | data_len u64 | crc32(meta ‖ data) u32 | zero u32 |
//! meta (postcard SnapshotMeta) | data
//! ```
//! Replacement writes `snapshot.tmp`, fsyncs it, renames it over `snapshot` and fsyncs the
//! directory: after a crash either the old or the new snapshot is found, whole.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use consensus_core::{Snapshot, SnapshotMeta};
use storage_wal::FileSystem;

use super::error::{Result, StoreError};
use super::record::FORMAT_VERSION;

pub(crate) const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
const MAGIC: [u8; 8] = *b"QRMSNAPS";
const HEADER_LEN: usize = 32;
/// Largest encoded metadata accepted (a configuration of a few thousand members fits easily).
const MAX_META_LEN: u32 = 1 << 20;

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE)
}

fn not_found(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound
}

/// Durably replaces the snapshot file of `dir`.
pub(crate) fn write(fs: &dyn FileSystem, dir: &Path, snapshot: &Snapshot) -> Result<()> {
    let meta = postcard::to_allocvec(&snapshot.meta)
        .map_err(|e| StoreError::corrupt(path(dir), format!("cannot encode metadata: {e}")))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&meta);
    crc.update(&snapshot.data);
    let mut head = Vec::with_capacity(HEADER_LEN + meta.len());
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    head.extend_from_slice(&crc.finalize().to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(head.len(), HEADER_LEN);
    head.extend_from_slice(&meta);

    remove_tmp(fs, dir)?;
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let file = fs
        .create_new(&tmp)
        .map_err(|e| StoreError::io("create", &tmp, e))?;
    file.write_all_at(&head, 0)
        .and_then(|()| file.write_all_at(&snapshot.data, head.len() as u64))
        .map_err(|e| StoreError::io("write", &tmp, e))?;
    file.sync_data()
        .map_err(|e| StoreError::io("fdatasync", &tmp, e))?;
    drop(file);
    let dest = path(dir);
    fs.rename(&tmp, &dest)
        .map_err(|e| StoreError::io("rename", &tmp, e))?;
    fs.sync_dir(dir)
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

/// Whether `dir` has a snapshot file.
pub(crate) fn exists(fs: &dyn FileSystem, dir: &Path) -> Result<bool> {
    let path = path(dir);
    match fs.open(&path) {
        Ok(_) => Ok(true),
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(StoreError::io("open", path, e)),
    }
}

/// Reads the snapshot file of `dir`, if there is one, checking every length against the file
/// before allocating and the checksum before trusting anything.
pub(crate) fn read(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Snapshot>> {
    let path = path(dir);
    let file = match fs.open(&path) {
        Ok(file) => file,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(StoreError::io("open", path, e)),
    };
    let file_len = file.size().map_err(|e| StoreError::io("stat", &path, e))?;
    if file_len < HEADER_LEN as u64 {
        return Err(StoreError::corrupt(
            path,
            format!("file of {file_len} bytes is shorter than the {HEADER_LEN}-byte header"),
        ));
    }
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| StoreError::io("read", &path, e))?;
    if header[..8] != MAGIC {
        return Err(StoreError::corrupt(path, "not a snapshot file (bad magic)"));
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            path,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let meta_len = word(12);
    let data_len = u64::from(word(16)) | (u64::from(word(20)) << 32);
    let crc = word(24);
    let expected_len = (HEADER_LEN as u64)
        .checked_add(u64::from(meta_len))
        .and_then(|n| n.checked_add(data_len));
    if meta_len > MAX_META_LEN || expected_len != Some(file_len) || word(28) != 0 {
        return Err(StoreError::corrupt(
            path,
            format!(
                "header says {meta_len} bytes of metadata and {data_len} of data, \
                 but the file holds {file_len} bytes"
            ),
        ));
    }
    let body_len = usize::try_from(file_len - HEADER_LEN as u64)
        .map_err(|_| StoreError::corrupt(&path, "file too large for this machine"))?;
    let mut body = Vec::new();
    body.try_reserve_exact(body_len)
        .map_err(|e| StoreError::corrupt(&path, format!("cannot allocate the body: {e}")))?;
    body.resize(body_len, 0);
    file.read_exact_at(&mut body, HEADER_LEN as u64)
        .map_err(|e| StoreError::io("read", &path, e))?;
    if crc32fast::hash(&body) != crc {
        return Err(StoreError::corrupt(path, "checksum mismatch"));
    }
    let meta: SnapshotMeta = postcard::from_bytes(&body[..meta_len as usize])
        .map_err(|e| StoreError::corrupt(&path, format!("undecodable metadata: {e}")))?;
    let data = Bytes::from(body).slice(meta_len as usize..);
    Ok(Some(Snapshot { meta, data }))
}

/// Removes a temporary file left by an interrupted write.
pub(crate) fn remove_tmp(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    match fs.remove(&tmp) {
        Ok(()) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(StoreError::io("remove", tmp, e)),
    }
}
