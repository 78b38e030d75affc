//! One segment file: creation (preallocated, header written, made durable before use), the
//! in-memory index of its record offsets, and the recovery scan.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, WalError};
use crate::format::{all_zero, scan_record, segment_name, Scan, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::fs::{join, FileSystem, WalFile};
use crate::options::RecoveryMode;

const ZERO_CHUNK: usize = 1 << 20;

/// A segment in use. Invariant: `offsets` are increasing, `offsets[0] == SEGMENT_HEADER_LEN` when
/// non-empty, and every byte from `end` to `capacity` is zero in the file (or about to be written
/// from the log's pending buffer).
pub(crate) struct Segment {
    pub header: SegmentHeader,
    pub path: PathBuf,
    pub file: Arc<dyn WalFile>,
    pub seed: u32,
    /// File offset of record `header.first_index + k`.
    pub offsets: Vec<u64>,
    /// Offset just past the last record.
    pub end: u64,
    /// File length (preallocated).
    pub capacity: u64,
}

impl Segment {
    pub fn first_index(&self) -> u64 {
        self.header.first_index
    }

    /// Index after the last record of this segment.
    pub fn next_index(&self) -> u64 {
        self.header.first_index + self.offsets.len() as u64
    }

    /// Stored span `[start, end)` of record `index`.
    pub fn span(&self, index: u64) -> (u64, u64) {
        let k = (index - self.header.first_index) as usize;
        let start = self.offsets[k];
        let end = self.offsets.get(k + 1).copied().unwrap_or(self.end);
        (start, end)
    }
}

/// Writes zeros over `[from, to)`.
pub(crate) fn zero_range(file: &dyn WalFile, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK.min((to.saturating_sub(from)) as usize)];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Name of the spare file prepared in the background for the next segment.
pub(crate) const SPARE_FILE: &str = "next-segment.tmp";

/// Creates, zero-fills and syncs a file to be turned into a segment later.
pub(crate) fn prepare_file(
    fs: &dyn FileSystem,
    path: &Path,
    capacity: u64,
) -> Result<Arc<dyn WalFile>> {
    match fs.remove(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(WalError::io("remove", path, e)),
    }
    let file = fs
        .create_new(path)
        .map_err(|e| WalError::io("create", path, e))?;
    zero_range(file.as_ref(), 0, capacity).map_err(|e| WalError::io("preallocate", path, e))?;
    file.sync_data()
        .map_err(|e| WalError::io("fdatasync", path, e))?;
    Ok(file)
}

/// Turns a prepared (zero-filled, durable) file at `tmp` into segment `header`: writes the header,
/// syncs, renames to the segment's name and syncs the directory, so a segment under its final name
/// always has a valid header.
pub(crate) fn install_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    tmp: &Path,
    file: Arc<dyn WalFile>,
    capacity: u64,
    header: SegmentHeader,
) -> Result<Segment> {
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| WalError::io("write", tmp, e))?;
    file.sync_data()
        .map_err(|e| WalError::io("fdatasync", tmp, e))?;
    let path = join(dir, &segment_name(header.seq, header.first_index));
    fs.rename(tmp, &path)
        .map_err(|e| WalError::io("rename", tmp, e))?;
    fs.sync_dir(dir)
        .map_err(|e| WalError::io("fsync directory", dir, e))?;
    Ok(Segment {
        header,
        path,
        file,
        seed: header.seed(),
        offsets: Vec::new(),
        end: SEGMENT_HEADER_LEN,
        capacity,
    })
}

/// Creates a segment synchronously.
pub(crate) fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    capacity: u64,
    header: SegmentHeader,
) -> Result<Segment> {
    let tmp = join(
        dir,
        &format!("{}.tmp", segment_name(header.seq, header.first_index)),
    );
    let file = prepare_file(fs, &tmp, capacity)?;
    install_segment(fs, dir, &tmp, file, capacity, header)
}

/// What the scan of one segment found at its end.
pub(crate) struct ScanEnd {
    /// Where a torn tail starts, and the offset just past the last non-zero byte after it.
    pub torn: Option<(u64, u64)>,
}

/// Scans a segment whose whole file is in `buf`, filling `segment.offsets` and `segment.end`.
/// A torn tail is an error unless this is the last segment and the mode tolerates it.
pub(crate) fn scan_segment(
    segment: &mut Segment,
    buf: &[u8],
    is_last: bool,
    mode: RecoveryMode,
    max_record_size: u32,
) -> Result<ScanEnd> {
    let path = &segment.path;
    let mut pos = SEGMENT_HEADER_LEN as usize;
    let mut expected = segment.header.first_index;
    segment.offsets.clear();
    let torn_at = loop {
        match scan_record(
            buf,
            0,
            pos,
            segment.seed,
            expected,
            u64::from(max_record_size),
        ) {
            Scan::Record { next, .. } => {
                segment.offsets.push(pos as u64);
                expected += 1;
                pos = next;
            }
            Scan::End => {
                if all_zero(&buf[pos..]) {
                    break None;
                }
                // Bytes after the end of the records: left by an interrupted batch in the last
                // segment; damage anywhere else.
                break Some(pos);
            }
            Scan::Torn => break Some(pos),
            Scan::Corrupt(reason) => return Err(WalError::corrupt(path, pos as u64, reason)),
        }
    };
    segment.end = pos as u64;
    let Some(torn_at) = torn_at else {
        return Ok(ScanEnd { torn: None });
    };
    if !is_last {
        return Err(WalError::corrupt(
            path,
            torn_at as u64,
            "incomplete or unexpected bytes after the last record of a sealed segment",
        ));
    }
    if mode == RecoveryMode::AbsoluteConsistency {
        return Err(WalError::TornTail {
            path: path.clone(),
            offset: torn_at as u64,
        });
    }
    let last_nonzero = buf.iter().rposition(|&b| b != 0).map_or(torn_at, |p| p + 1);
    Ok(ScanEnd {
        torn: Some((torn_at as u64, last_nonzero.max(torn_at) as u64)),
    })
}
