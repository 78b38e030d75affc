//! Malformed files: random bytes, wrong magic, a newer format version, huge length fields, huge
//! files, non-zero padding, records left over from another segment. Each gives a clear error that
//! names the file (never a panic), and no allocation is sized by what the damaged file declares:
//! this test binary counts the largest allocation each thread makes.
// A counting wrapper around the system allocator needs `unsafe impl GlobalAlloc`; it only
// forwards to `System`.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use common::{dir, open, payload, read_all, restore, small_options, snapshot, Files};
use proptest::prelude::*;
use storage_wal::{MemFs, Options, StdFs, Wal, WalError};

struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// The largest single allocation `f` made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// Opening a 4 KiB-segment log needs the 256 KiB scan window and little else.
const ALLOCATION_BOUND: usize = 1 << 20;

fn small_log(n: u64) -> (Files, Vec<Vec<u8>>) {
    let fs = MemFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=n).map(|i| payload(i, 5)).collect();
    for p in &payloads {
        wal.append(p).unwrap();
    }
    wal.sync().unwrap();
    wal.set_metadata(b"term=7 vote=2").unwrap();
    drop(wal);
    let files = snapshot(&fs)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".tmp"))
        .collect();
    (files, payloads)
}

fn segment_indexes(files: &Files) -> Vec<usize> {
    (0..files.len())
        .filter(|&k| files[k].0.to_string_lossy().ends_with(".wal"))
        .collect()
}

fn seed_of(segment: &[u8]) -> u32 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&segment[16..32]);
    crc32fast::hash(&b)
}

fn crc(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(bytes);
    h.finalize()
}

/// Sets the first record's length field and re-seals its header checksum, as a buggy or
/// malicious writer would, so only the length check can stop it.
fn set_first_length(segment: &mut [u8], len: u32) {
    let seed = seed_of(segment);
    let h = &mut segment[40..64];
    h[8..12].copy_from_slice(&len.to_le_bytes());
    let header_crc = crc(seed, &h[0..20]);
    h[20..24].copy_from_slice(&header_crc.to_le_bytes());
}

#[test]
fn a_four_gib_length_field_is_an_error_not_an_allocation() {
    let (files, _) = small_log(3);
    for seg in segment_indexes(&files) {
        let mut damaged = files.clone();
        set_first_length(&mut damaged[seg].1, u32::MAX);
        let fs = restore(&damaged);
        let (result, largest) = largest_allocation(|| open(&fs, &small_options()));
        let err = result.unwrap_err();
        assert!(
            matches!(&err, WalError::Corrupt { path, offset: 40, reason } if *path == damaged[seg].0
                && reason.contains("length 4294967295")),
            "{err}"
        );
        assert!(largest < ALLOCATION_BOUND, "allocated {largest} bytes");
    }
    // The metadata file's length field too.
    let meta = dir().join("meta");
    let mut damaged = files.clone();
    let m = damaged.iter().position(|(p, _)| *p == meta).unwrap();
    damaged[m].1[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let fs = restore(&damaged);
    let (result, largest) = largest_allocation(|| open(&fs, &small_options()));
    let err = result.unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { path, offset: 12, .. } if *path == meta),
        "{err}"
    );
    assert!(largest < ALLOCATION_BOUND, "allocated {largest} bytes");
}

#[test]
fn a_length_just_within_the_maximum_but_past_the_file_end_is_not_allocated_either() {
    // A length the options allow (4 KiB) in a record near the end of a 4 KiB segment: the record
    // cannot fit, which is a torn tail in the last segment and corruption in a sealed one.
    let (files, _) = small_log(3);
    let segments = segment_indexes(&files);
    for &seg in &segments {
        let mut damaged = files.clone();
        set_first_length(&mut damaged[seg].1, 4096);
        let fs = restore(&damaged);
        let (result, largest) = largest_allocation(|| open(&fs, &small_options()));
        assert!(largest < ALLOCATION_BOUND, "allocated {largest} bytes");
        match result {
            Err(err) => {
                assert!(err.is_corruption(), "{err}");
                assert_eq!(err.path(), Some(damaged[seg].0.as_path()), "{err}");
            }
            Ok(wal) => {
                assert_eq!(
                    seg,
                    *segments.last().unwrap(),
                    "a sealed segment was accepted"
                );
                assert!(wal.recovery_report().torn_tail.is_some());
            }
        }
    }
}

#[test]
fn a_huge_segment_file_is_refused_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let options = Options {
        segment_size: 4096,
        ..Options::default()
    };
    let wal = Wal::open(tmp.path(), options.clone()).unwrap();
    wal.append_durable(b"x").unwrap();
    drop(wal);
    let segment = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    // Sparse: costs no disk space, but reading it whole would need 8 GiB.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let (result, largest) =
        largest_allocation(|| Wal::open_with_fs(Arc::new(StdFs), tmp.path(), options));
    let err = result.unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { path, reason, .. } if *path == segment
            && reason.contains("larger than these options allow")),
        "{err}"
    );
    assert!(largest < ALLOCATION_BOUND, "allocated {largest} bytes");
}

#[test]
fn random_bytes_wrong_magic_and_newer_versions_are_named_errors() {
    let (files, _) = small_log(3);
    let seg = segment_indexes(&files)[0];
    let path = files[seg].0.clone();
    let meta = dir().join("meta");
    let m = files.iter().position(|(p, _)| *p == meta).unwrap();

    let mut x = 0x1234_5678_9abc_def0u64;
    let mut random_bytes = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let cases: Vec<(&str, usize, Vec<u8>)> = vec![
        ("random segment", seg, random_bytes(files[seg].1.len())),
        ("random metadata", m, random_bytes(64)),
        ("empty segment", seg, Vec::new()),
        ("empty metadata", m, Vec::new()),
        ("segment magic", seg, {
            let mut b = files[seg].1.clone();
            b[0..8].copy_from_slice(b"NOTAWAL!");
            b
        }),
        ("metadata magic", m, {
            let mut b = files[m].1.clone();
            b[0..8].copy_from_slice(b"NOTAWAL!");
            b
        }),
    ];
    for (what, k, bytes) in cases {
        let mut damaged = files.clone();
        damaged[k].1 = bytes;
        let err = open(&restore(&damaged), &small_options()).unwrap_err();
        assert!(
            matches!(&err, WalError::BadMagic { path } if *path == damaged[k].0),
            "{what}: {err}"
        );
    }

    // Segments are at version 2 (1 is still read); the metadata file at version 1.
    for (k, expected, newer_version, supported) in [(seg, &path, 3u32, 2u32), (m, &meta, 2, 1)] {
        let mut newer = files.clone();
        newer[k].1[8..12].copy_from_slice(&newer_version.to_le_bytes());
        let err = open(&restore(&newer), &small_options()).unwrap_err();
        assert!(
            matches!(&err, WalError::UnsupportedVersion { path, found, supported: s }
                if path == expected && *found == newer_version && *s == supported),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("version {newer_version}")),
            "{err}"
        );
    }
}

#[test]
fn non_zero_padding_is_corruption_at_the_record() {
    let (files, payloads) = small_log(6);
    let seg = segment_indexes(&files)[0];
    // Find a record with padding: the first payload whose 24 + len is not a multiple of 8.
    let mut offset = 40usize;
    for p in &payloads {
        let stored = (24 + p.len()).div_ceil(8) * 8;
        if stored != 24 + p.len() {
            break;
        }
        offset += stored;
    }
    let len =
        u32::from_le_bytes(files[seg].1[offset + 8..offset + 12].try_into().unwrap()) as usize;
    assert_ne!((24 + len) % 8, 0, "this record has padding");
    let mut damaged = files.clone();
    damaged[seg].1[offset + 24 + len] = 1;
    let err = open(&restore(&damaged), &small_options()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { path, offset: o, reason }
            if *path == files[seg].0 && *o == offset as u64 && reason.contains("padding")),
        "{err}"
    );
}

#[test]
fn records_left_in_a_reused_or_misplaced_file_fail_their_checksums() {
    let (files, _) = small_log(30);
    let segments = segment_indexes(&files);
    assert!(segments.len() >= 3);
    // The first segment as sequence 0 and the last as sequence 1000 keep their place in the log.
    for (k, seq) in [(segments[0], 0u64), (*segments.last().unwrap(), 1000)] {
        // The same bytes under another segment sequence (a file reused, or copied in from another
        // log at the same first index): its header is valid, its records are not. (Without the
        // manifest, which would first report the segment under its old name as missing.)
        let mut damaged: Files = files
            .iter()
            .filter(|(p, _)| !p.ends_with("manifest"))
            .cloned()
            .collect();
        let (path, data) = &mut damaged[k];
        let first = u64::from_le_bytes(data[24..32].try_into().unwrap());
        data[16..24].copy_from_slice(&seq.to_le_bytes());
        let header_crc = crc32fast::hash(&data[0..32]);
        data[32..36].copy_from_slice(&header_crc.to_le_bytes());
        *path = dir().join(format!("{seq:020}-{first:020}.wal"));
        let renamed = path.clone();
        let err = open(&restore(&damaged), &small_options()).unwrap_err();
        assert!(
            matches!(&err, WalError::Corrupt { path, offset: 40, .. } if *path == renamed),
            "{err}"
        );
    }
}

fn body_strategy() -> impl Strategy<Value = (usize, Vec<u8>, usize)> {
    (
        0usize..3,
        prop::collection::vec(any::<u8>(), 1..4096),
        40usize..4096,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random bytes over part of a segment's records: an error naming that segment, or (in the
    /// last segment only) a torn tail cut off leaving an exact prefix. Never a panic, never a
    /// record with other contents, never an allocation sized by the damage.
    #[test]
    fn random_bytes_inside_a_segment_never_yield_wrong_records((which, noise, at) in body_strategy()) {
        let (files, payloads) = small_log(20);
        let segments = segment_indexes(&files);
        let seg = segments[which.min(segments.len() - 1)];
        let mut damaged = files.clone();
        let data = &mut damaged[seg].1;
        let end = (at + noise.len()).min(data.len());
        if at < end {
            data[at..end].copy_from_slice(&noise[..end - at]);
        }
        let fs = restore(&damaged);
        let (result, largest) = largest_allocation(|| open(&fs, &small_options()));
        prop_assert!(largest < ALLOCATION_BOUND, "allocated {} bytes", largest);
        match result {
            Err(err) => {
                prop_assert!(err.is_corruption(), "{}", err);
                prop_assert_eq!(err.path(), Some(damaged[seg].0.as_path()));
            }
            Ok(wal) => {
                let got = read_all(&wal);
                prop_assert_eq!(&got[..], &payloads[..got.len()]);
                if got.len() < payloads.len() {
                    prop_assert_eq!(seg, *segments.last().unwrap());
                }
            }
        }
    }
}
