//! The snapshot file: the latest snapshot's metadata and data, replaced atomically.
//!
//! ```text
//! "QRMSNAPS" | version u32 | meta_len u32 | data_len u64 | crc32(meta ‖ data) u32 | zero u32 |
//! meta (postcard SnapshotMeta) | data
//! ```
//! Replacement writes `snapshot.tmp`, fsyncs it, renames it over `snapshot` and fsyncs the
//! directory: after a crash either the old or the new snapshot is found, whole.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use consensus_core::{Snapshot, SnapshotMeta};

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

/// Durably replaces the snapshot file of `dir`.
pub(crate) fn write(dir: &Path, snapshot: &Snapshot) -> Result<()> {
    let meta = postcard::to_allocvec(&snapshot.meta)
        .map_err(|e| StoreError::corrupt(path(dir), format!("cannot encode metadata: {e}")))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&meta);
    crc.update(&snapshot.data);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    header.extend_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    header.extend_from_slice(&crc.finalize().to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_LEN);

    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StoreError::io("create", &tmp, e))?;
    file.write_all(&header)
        .and_then(|()| file.write_all(&meta))
        .and_then(|()| file.write_all(&snapshot.data))
        .map_err(|e| StoreError::io("write", &tmp, e))?;
    file.sync_all()
        .map_err(|e| StoreError::io("fsync", &tmp, e))?;
    drop(file);
    let dest = path(dir);
    std::fs::rename(&tmp, &dest).map_err(|e| StoreError::io("rename", &tmp, e))?;
    sync_dir(dir)
}

/// Reads the snapshot file of `dir`, if there is one, checking every length against the file
/// before allocating and the checksum before trusting anything.
pub(crate) fn read(dir: &Path) -> Result<Option<Snapshot>> {
    let path = path(dir);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("open", path, e)),
    };
    let file_len = file
        .metadata()
        .map_err(|e| StoreError::io("stat", &path, e))?
        .len();
    if file_len < HEADER_LEN as u64 {
        return Err(StoreError::corrupt(
            path,
            format!("file of {file_len} bytes is shorter than the {HEADER_LEN}-byte header"),
        ));
    }
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header)
        .map_err(|e| StoreError::io("read", &path, e))?;
    if header[..8] != MAGIC {
        return Err(StoreError::corrupt(path, "not a snapshot file (bad magic)"));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            path,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let meta_len = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    let data_len = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(header[24..28].try_into().expect("4 bytes"));
    let expected_len = (HEADER_LEN as u64)
        .checked_add(u64::from(meta_len))
        .and_then(|n| n.checked_add(data_len));
    if meta_len > MAX_META_LEN || expected_len != Some(file_len) || header[28..32] != [0; 4] {
        return Err(StoreError::corrupt(
            path,
            format!(
                "header says {meta_len} bytes of metadata and {data_len} of data, \
                 but the file holds {file_len} bytes"
            ),
        ));
    }
    let mut body = Vec::new();
    body.try_reserve_exact((file_len - HEADER_LEN as u64) as usize)
        .map_err(|e| StoreError::corrupt(&path, format!("cannot allocate the body: {e}")))?;
    file.read_to_end(&mut body)
        .map_err(|e| StoreError::io("read", &path, e))?;
    if body.len() as u64 != file_len - HEADER_LEN as u64 {
        return Err(StoreError::corrupt(path, "file changed while being read"));
    }
    if crc32fast::hash(&body) != crc {
        return Err(StoreError::corrupt(path, "checksum mismatch"));
    }
    let meta: SnapshotMeta = postcard::from_bytes(&body[..meta_len as usize])
        .map_err(|e| StoreError::corrupt(&path, format!("undecodable metadata: {e}")))?;
    let data = Bytes::from(body).slice(meta_len as usize..);
    Ok(Some(Snapshot { meta, data }))
}

/// Removes a temporary file left by an interrupted write.
pub(crate) fn remove_tmp(dir: &Path) -> Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    match std::fs::remove_file(&tmp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", tmp, e)),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}
