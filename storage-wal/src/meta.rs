//! The metadata record: a small blob of caller bytes (Raft's hard state: term, vote, commit),
//! replaced atomically.
//!
//! ```text
//! file "meta": magic "QRMWALMD" | version u32 | length u32 | crc32(bytes) u32 | zero u32 | bytes
//! ```
//! Replacement writes `meta.tmp`, fsyncs it, renames it over `meta` and fsyncs the directory, so a
//! crash leaves either the old or the new record, never a mixture.

use std::path::Path;

use crate::error::{Result, WalError};
use crate::format::u32_at;
use crate::fs::{join, replace_file, FileSystem};

pub(crate) const META_FILE: &str = "meta";
pub(crate) const META_TMP_FILE: &str = "meta.tmp";
const META_MAGIC: [u8; 8] = *b"QRMWALMD";
/// Version of the metadata file's layout (unchanged since the first format).
const META_VERSION: u32 = 1;
const META_HEADER_LEN: usize = 24;
/// Largest metadata blob accepted.
pub const MAX_METADATA_LEN: usize = 1 << 20;

fn encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(META_HEADER_LEN + bytes.len());
    out.extend_from_slice(&META_MAGIC);
    out.extend_from_slice(&META_VERSION.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Whether the metadata file exists.
pub(crate) fn exists(fs: &dyn FileSystem, dir: &Path) -> Result<bool> {
    let names = fs.list(dir).map_err(|e| WalError::io("list", dir, e))?;
    Ok(names.iter().any(|n| n == META_FILE))
}

/// Reads the metadata record, if the file exists.
pub(crate) fn load(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Vec<u8>>> {
    let path = join(dir, META_FILE);
    let file = match fs.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io("open", path, e)),
    };
    let file_len = file.size().map_err(|e| WalError::io("stat", &path, e))?;
    let mut header = [0u8; META_HEADER_LEN];
    if file_len < META_HEADER_LEN as u64 {
        let mut head = vec![0u8; file_len as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| WalError::io("read", &path, e))?;
        if head.len() < 8 || head[..8] != META_MAGIC {
            return Err(WalError::BadMagic { path });
        }
        return Err(WalError::corrupt(path, 0, "metadata header is cut short"));
    }
    file.read_exact_at(&mut header, 0)
        .map_err(|e| WalError::io("read", &path, e))?;
    if header[0..8] != META_MAGIC {
        return Err(WalError::BadMagic { path });
    }
    let version = u32_at(&header, 8);
    if version != META_VERSION {
        return Err(WalError::UnsupportedVersion {
            path,
            found: version,
            supported: META_VERSION,
        });
    }
    let len = u32_at(&header, 12) as usize;
    // Check the declared length against the limit and the file before allocating anything.
    if len > MAX_METADATA_LEN
        || file_len != (META_HEADER_LEN + len) as u64
        || u32_at(&header, 20) != 0
    {
        return Err(WalError::corrupt(
            path,
            12,
            format!("metadata length {len} does not match the file length {file_len}"),
        ));
    }
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, META_HEADER_LEN as u64)
        .map_err(|e| WalError::io("read", &path, e))?;
    if crc32fast::hash(&bytes) != u32_at(&header, 16) {
        return Err(WalError::corrupt(
            path,
            META_HEADER_LEN as u64,
            "metadata checksum mismatch",
        ));
    }
    Ok(Some(bytes))
}

/// Durably replaces the metadata record.
pub(crate) fn store(fs: &dyn FileSystem, dir: &Path, bytes: &[u8]) -> Result<()> {
    if bytes.len() > MAX_METADATA_LEN {
        return Err(WalError::TooLarge {
            what: "metadata",
            len: bytes.len() as u64,
            max: MAX_METADATA_LEN as u64,
        });
    }
    replace_file(fs, dir, META_FILE, META_TMP_FILE, &encode(bytes))
}
