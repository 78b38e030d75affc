//! On-disk format: segment file names, the segment header, and records.
//!
//! ```text
//! segment file  <seq:020>-<first_index:020>.wal, preallocated (zero-filled) to the segment size
//!   header (40 B)  magic "QRMWALSG" | version u32 | flags u32 | seq u64 | first_index u64
//!                  | crc32 of the previous 32 bytes u32 | zero u32
//!   records, each 8-byte aligned, then zeros to the end of the file
//! record
//!   index u64 | payload length u32 | type u8 | durable lag u24
//!   | payload crc u32  = crc(segment seed, the 16 bytes before it, payload)
//!   | header crc u32   = crc(segment seed, the 20 bytes before it)
//!   | payload | zero padding to a multiple of 8
//! ```
//! All integers are little-endian. The segment seed is the crc32 of `seq ‖ first_index`, so a
//! record copied or left over from another segment fails its checksums. A legitimate record header
//! never contains an all-zero 8-byte word (indexes start at 1, the type is non-zero), which is how
//! a header half-written by a torn write is told apart from a damaged one.
//!
//! The durable lag is a claim the writer makes for free: `index - lag` is the durable index when
//! the record was appended (0 = no claim: a lag above 2^24 - 1, or a version-1 segment). Recovery
//! uses it to tell damage to a record that was durable (an error) from a write a crash tore (cut):
//! an intact record claiming that a damaged one was durable proves it was not torn by a crash.
//! Version-1 segments (zero lag bytes) are read as making no claims.

use crate::error::{Result, WalError};
use std::path::Path;

/// Segment format version written by this build.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest segment format version this build reads (version 1 has no durable lag in its records).
pub const MIN_FORMAT_VERSION: u32 = 1;
/// Largest durable lag a record header can carry.
const MAX_LAG: u64 = (1 << 24) - 1;
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"QRMWALSG";
pub(crate) const SEGMENT_HEADER_LEN: u64 = 40;
pub(crate) const RECORD_HEADER_LEN: usize = 24;
/// Sector size whose writes the disk is assumed to perform atomically.
pub(crate) const SECTOR: usize = 512;
/// Record type of an entry (the only type so far; 0 is never valid).
pub(crate) const RECORD_TYPE_ENTRY: u8 = 1;
/// Header flag: this segment starts a fresh log; segments with a lower sequence are leftovers of
/// an interrupted compaction past the end of the log and are deleted at open.
pub(crate) const FLAG_BASE: u32 = 1;

/// Rounds up to a multiple of 8.
pub(crate) fn align8(n: u64) -> u64 {
    (n + 7) & !7
}

/// Bytes a record with `payload_len` bytes occupies in a segment.
pub(crate) fn record_size(payload_len: usize) -> u64 {
    align8(RECORD_HEADER_LEN as u64 + payload_len as u64)
}

/// The file name of a segment.
pub(crate) fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:020}-{first_index:020}.wal")
}

/// Parses a segment file name into (seq, first_index).
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 20 || first.len() != 20 {
        return None;
    }
    Some((seq.parse().ok()?, first.parse().ok()?))
}

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub version: u32,
    pub seq: u64,
    pub first_index: u64,
    pub flags: u32,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_index.to_le_bytes());
        let crc = crc32fast::hash(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header read from `path` (`buf` may be shorter than a header).
    pub fn decode(buf: &[u8], path: &Path) -> Result<SegmentHeader> {
        if buf.len() < 8 || buf[0..8] != SEGMENT_MAGIC {
            return Err(WalError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        if buf.len() < SEGMENT_HEADER_LEN as usize {
            return Err(WalError::corrupt(path, 0, "segment header is cut short"));
        }
        let version = u32_at(buf, 8);
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(WalError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if crc32fast::hash(&buf[0..32]) != u32_at(buf, 32) || u32_at(buf, 36) != 0 {
            return Err(WalError::corrupt(
                path,
                0,
                "segment header checksum mismatch",
            ));
        }
        let flags = u32_at(buf, 12);
        if flags & !FLAG_BASE != 0 {
            return Err(WalError::corrupt(
                path,
                12,
                format!("unknown segment flags {flags:#x}"),
            ));
        }
        Ok(SegmentHeader {
            version,
            seq: u64_at(buf, 16),
            first_index: u64_at(buf, 24),
            flags,
        })
    }

    /// The checksum seed binding records to this segment.
    pub fn seed(&self) -> u32 {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.first_index.to_le_bytes());
        crc32fast::hash(&b)
    }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn crc_with_seed(seed: u32, parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Appends an encoded record (header, payload, zero padding) to `out`; `durable_index` is the
/// log's durable index as the record is appended (below `index`).
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    seed: u32,
    index: u64,
    durable_index: u64,
    payload: &[u8],
) {
    debug_assert!(index > 0, "indexes start at 1");
    debug_assert!(
        durable_index < index,
        "a record is not durable when appended"
    );
    let lag = index - durable_index;
    let lag = if lag > MAX_LAG { 0 } else { lag };
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..8].copy_from_slice(&index.to_le_bytes());
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12] = RECORD_TYPE_ENTRY;
    h[13..16].copy_from_slice(&lag.to_le_bytes()[..3]);
    let payload_crc = crc_with_seed(seed, &[&h[0..16], payload]);
    h[16..20].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc_with_seed(seed, &[&h[0..20]]);
    h[20..24].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let padded = record_size(payload.len()) as usize - RECORD_HEADER_LEN - payload.len();
    out.extend_from_slice(&[0u8; 8][..padded]);
}

/// What is found at a record position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A valid record: its payload is `buf[payload_start..payload_start + len]`; the next record
    /// starts at `next`.
    Record {
        index: u64,
        /// The durable index the writer claims for when it appended this record (0: none).
        durable_claim: u64,
        payload_start: usize,
        len: usize,
        next: usize,
    },
    /// No more records here: an all-zero header or the end of the file.
    End,
    /// The buffer ends (before the end of the file) inside this record: hold at least `need`
    /// bytes from its start and look again. `need` is at most a header, or a record whose header
    /// passed its checksum and length checks, so it is bounded by the maximum record size.
    NeedMore { need: usize },
    /// Looks like a write that did not complete (cut by the end of the file, or with whole
    /// sectors that never got written).
    Torn,
    /// Damaged bytes.
    Corrupt(String),
}

/// Whether every byte is zero. Comparing with a block of zeros runs `memcmp`, which is fast even
/// in the lightly optimised dev profile that `cargo xtask` runs in.
pub(crate) fn all_zero(b: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    b.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Whether any sector-aligned piece of `buf[start..end]` (positions relative to the file, given
/// `base` = file offset of `buf[0]`) is entirely zero: the mark of a sector that was never written.
fn has_zero_sector_piece(buf: &[u8], base: u64, start: usize, end: usize) -> bool {
    let mut pos = start;
    while pos < end {
        let file_pos = base as usize + pos;
        let sector_end = (file_pos / SECTOR + 1) * SECTOR - base as usize;
        let piece_end = sector_end.min(end);
        if all_zero(&buf[pos..piece_end]) {
            return true;
        }
        pos = piece_end;
    }
    false
}

/// Examines the record at `buf[pos..]`, where `buf` holds the file from byte offset `base`, up to
/// the end of the file if `at_eof`. `max_len` bounds a believable payload length; nothing is
/// allocated from the length field. `expected_index` is the index the record must have; `None`
/// accepts any (to look for intact records past damage).
pub(crate) fn scan_record(
    buf: &[u8],
    base: u64,
    pos: usize,
    seed: u32,
    expected_index: Option<u64>,
    max_len: u64,
    at_eof: bool,
) -> Scan {
    let rest = &buf[pos..];
    if rest.len() < RECORD_HEADER_LEN {
        if !at_eof {
            return Scan::NeedMore {
                need: RECORD_HEADER_LEN,
            };
        }
        return if all_zero(rest) {
            Scan::End
        } else {
            Scan::Torn
        };
    }
    let h = &rest[..RECORD_HEADER_LEN];
    if all_zero(h) {
        return Scan::End;
    }
    if crc_with_seed(seed, &[&h[0..20]]) != u32_at(h, 20) {
        let has_zero_word = h.chunks_exact(8).any(|w| w == [0u8; 8]);
        return if has_zero_word {
            Scan::Torn
        } else {
            Scan::Corrupt("record header checksum mismatch".into())
        };
    }
    let index = u64_at(h, 0);
    let len = u64::from(u32_at(h, 8));
    if h[12] != RECORD_TYPE_ENTRY {
        return Scan::Corrupt(format!("unknown record type {}", h[12]));
    }
    if index == u64::MAX || index == 0 {
        return Scan::Corrupt(format!(
            "record has index {index}, which no record may have"
        ));
    }
    if let Some(expected) = expected_index.filter(|&e| e != index) {
        return Scan::Corrupt(format!("record has index {index}, expected {expected}"));
    }
    let lag = u64::from(h[13]) | u64::from(h[14]) << 8 | u64::from(h[15]) << 16;
    if lag > index {
        return Scan::Corrupt(format!("record {index} has durable lag {lag}"));
    }
    let durable_claim = if lag == 0 { 0 } else { index - lag };
    if len > max_len {
        return Scan::Corrupt(format!("record length {len} exceeds the maximum {max_len}"));
    }
    let payload_start = pos + RECORD_HEADER_LEN;
    let payload_end = payload_start + len as usize;
    let next = pos + record_size(len as usize) as usize;
    if next > buf.len() {
        if !at_eof {
            return Scan::NeedMore { need: next - pos };
        }
        return Scan::Torn; // a valid header whose record the end of the file cuts off
    }
    let payload = &buf[payload_start..payload_end];
    if crc_with_seed(seed, &[&h[0..16], payload]) != u32_at(h, 16) {
        return if has_zero_sector_piece(buf, base, payload_start, payload_end) {
            Scan::Torn
        } else {
            Scan::Corrupt("record payload checksum mismatch".into())
        };
    }
    if !all_zero(&buf[payload_end..next]) {
        return Scan::Corrupt("record padding is not zero".into());
    }
    Scan::Record {
        index,
        durable_claim,
        payload_start,
        len: len as usize,
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_is_bound_to_its_segment() {
        let seg = SegmentHeader {
            version: FORMAT_VERSION,
            seq: 3,
            first_index: 10,
            flags: 0,
        };
        let mut buf = Vec::new();
        encode_record(&mut buf, seg.seed(), 10, 7, b"hello");
        assert_eq!(buf.len() as u64, record_size(5));
        assert_eq!(buf.len() % 8, 0);
        match scan_record(&buf, 40, 0, seg.seed(), Some(10), 1 << 20, true) {
            Scan::Record {
                index,
                durable_claim,
                payload_start,
                len,
                next,
            } => {
                assert_eq!(
                    (
                        index,
                        durable_claim,
                        &buf[payload_start..payload_start + len],
                        next
                    ),
                    (10, 7, &b"hello"[..], buf.len())
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let other = SegmentHeader {
            version: FORMAT_VERSION,
            seq: 4,
            first_index: 10,
            flags: 0,
        };
        assert!(matches!(
            scan_record(&buf, 40, 0, other.seed(), Some(10), 1 << 20, true),
            Scan::Corrupt(_)
        ));
    }

    #[test]
    fn segment_names_round_trip() {
        let name = segment_name(7, 12345);
        assert_eq!(parse_segment_name(&name), Some((7, 12345)));
        assert_eq!(parse_segment_name("meta"), None);
        assert_eq!(parse_segment_name("1-2.wal"), None);
    }

    #[test]
    fn header_decode_rejects_bad_magic_version_and_checksum() {
        let p = Path::new("x.wal");
        let h = SegmentHeader {
            version: FORMAT_VERSION,
            seq: 1,
            first_index: 1,
            flags: FLAG_BASE,
        };
        let good = h.encode();
        assert_eq!(SegmentHeader::decode(&good, p).unwrap(), h);
        let mut bad = good;
        bad[0] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&bad, p),
            Err(WalError::BadMagic { .. })
        ));
        let mut newer = good;
        newer[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            SegmentHeader::decode(&newer, p),
            Err(WalError::UnsupportedVersion { found: 3, .. })
        ));
        let mut flipped = good;
        flipped[20] ^= 4;
        assert!(matches!(
            SegmentHeader::decode(&flipped, p),
            Err(WalError::Corrupt { .. })
        ));
    }
}
