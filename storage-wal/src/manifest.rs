//! The manifest: what the log has made durable, so recovery can tell that something is missing.
//!
//! ```text
//! file "manifest" (72 bytes): magic "QRMWALMF" | version u32 | flags u32 (bit 0: metadata stored)
//!   | first seq u64 | first segment's first index u64
//!   | last seq u64  | last segment's first index u64 | last segment's file length u64
//!   | durable index u64 (every record up to it, in the last segment and before, was durable)
//!   | crc32 of the previous 64 bytes u32 | zero u32
//! ```
//! Replaced atomically (tmp, fdatasync, rename, directory fsync) only off the append path: at
//! open, when a segment is added (roll, reset), before segments are removed (`compact`,
//! `truncate_from`), on the first `set_metadata`, and at close/drop (raising the durable index).
//! Every field is a lower bound on what exists: the first and last segments named must exist, the
//! last one must have its full length and hold records up to the durable index, and the metadata
//! file must exist if the flag says so. Between these writes, records carry their own claim of
//! the durable index (see [`format`](crate::format)), which covers all but the last group commit.

use std::path::Path;

use crate::error::{Result, WalError};
use crate::format::{segment_name, u32_at, u64_at};
use crate::fs::{join, replace_file, FileSystem};

pub(crate) const MANIFEST_FILE: &str = "manifest";
const MANIFEST_TMP_FILE: &str = "manifest.tmp";
const MAGIC: [u8; 8] = *b"QRMWALMF";
const VERSION: u32 = 1;
const LEN: usize = 72;
const FLAG_METADATA: u32 = 1;

/// A segment as the manifest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentId {
    pub seq: u64,
    pub first_index: u64,
}

impl SegmentId {
    pub fn file_name(&self) -> String {
        segment_name(self.seq, self.first_index)
    }
}

/// The decoded manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub first: SegmentId,
    pub last: SegmentId,
    /// The last segment's file length when it was created.
    pub last_capacity: u64,
    /// Every record up to this index was durable (0: none claimed).
    pub durable_index: u64,
    pub has_metadata: bool,
}

impl Manifest {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.has_metadata { FLAG_METADATA } else { 0 };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        let words = [
            self.first.seq,
            self.first.first_index,
            self.last.seq,
            self.last.first_index,
            self.last_capacity,
            self.durable_index,
        ];
        for (k, w) in words.iter().enumerate() {
            b[16 + 8 * k..24 + 8 * k].copy_from_slice(&w.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..64]);
        b[64..68].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Durably replaces the manifest in `dir`.
    pub fn store(&self, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        replace_file(fs, dir, MANIFEST_FILE, MANIFEST_TMP_FILE, &self.encode())
    }

    /// Reads the manifest, if the file exists.
    pub fn load(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Manifest>> {
        let path = join(dir, MANIFEST_FILE);
        let file = match fs.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io("open", path, e)),
        };
        let len = file.size().map_err(|e| WalError::io("stat", &path, e))?;
        let mut b = [0u8; LEN];
        let head = &mut b[..len.min(LEN as u64) as usize];
        file.read_exact_at(head, 0)
            .map_err(|e| WalError::io("read", &path, e))?;
        if head.len() < 8 || head[..8] != MAGIC {
            return Err(WalError::BadMagic { path });
        }
        if len != LEN as u64 {
            return Err(WalError::corrupt(
                path,
                0,
                format!("manifest is {len} bytes, not {LEN}"),
            ));
        }
        let version = u32_at(&b, 8);
        if version != VERSION {
            return Err(WalError::UnsupportedVersion {
                path,
                found: version,
                supported: VERSION,
            });
        }
        let flags = u32_at(&b, 12);
        if crc32fast::hash(&b[..64]) != u32_at(&b, 64)
            || u32_at(&b, 68) != 0
            || flags & !FLAG_METADATA != 0
        {
            return Err(WalError::corrupt(path, 0, "manifest checksum mismatch"));
        }
        let word = |k: usize| u64_at(&b, 16 + 8 * k);
        let manifest = Manifest {
            first: SegmentId {
                seq: word(0),
                first_index: word(1),
            },
            last: SegmentId {
                seq: word(2),
                first_index: word(3),
            },
            last_capacity: word(4),
            durable_index: word(5),
            has_metadata: flags & FLAG_METADATA != 0,
        };
        if manifest.first.seq > manifest.last.seq || manifest.first.first_index == 0 {
            return Err(WalError::corrupt(
                path,
                16,
                "manifest names an impossible segment range",
            ));
        }
        Ok(Some(manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemFs;

    #[test]
    fn a_manifest_round_trips_and_any_flip_is_detected() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let m = Manifest {
            first: SegmentId {
                seq: 2,
                first_index: 10,
            },
            last: SegmentId {
                seq: 5,
                first_index: 90,
            },
            last_capacity: 4096,
            durable_index: 97,
            has_metadata: true,
        };
        m.store(&fs, dir).unwrap();
        assert_eq!(Manifest::load(&fs, dir).unwrap(), Some(m));
        let good = fs.read_file(&join(dir, MANIFEST_FILE)).unwrap();
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            fs.write_file(&join(dir, MANIFEST_FILE), &bad).unwrap();
            let err = Manifest::load(&fs, dir).unwrap_err();
            assert!(err.is_corruption(), "bit {bit}: {err}");
        }
    }
}
