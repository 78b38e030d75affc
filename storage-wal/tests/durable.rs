//! Damage from outside to what the log made durable, in the style of FAST'17's CORDS study: write
//! a log over several segments, sync it, damage one file (a flipped bit, a zeroed, junk or
//! misdirected sector, a truncation, a deleted file), reopen in each `RecoveryMode`. The log must
//! fail with an error naming the damaged or missing file, or keep every durable record exactly —
//! never open cleanly without records it once reported durable. Real torn tails (MemFs crashes)
//! must still be cut.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{dir, read_all, restore, segment_files, small_options, snapshot, Files};
use storage_wal::{MemFs, Options, RecoveryMode, Wal};

const MODES: [RecoveryMode; 2] = [
    RecoveryMode::TolerateTornTail,
    RecoveryMode::AbsoluteConsistency,
];

/// Payloads that trip naive torn-write detection: empty records (their length/type word has a
/// single bit set), mostly-zero records (an all-zero sector piece), and ordinary ones.
fn tricky_payload(i: u64) -> Vec<u8> {
    match i % 4 {
        0 => Vec::new(),
        1 => {
            let mut p = vec![0u8; 690];
            p[345] = (i as u8) | 1;
            p
        }
        _ => common::payload(i, 3),
    }
}

fn first_index_of(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    name.trim_end_matches(".wal")
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A log on MemFs over at least three 4 KiB segments, synced in several group commits, whose last
/// segment holds at least five records including one at a power-of-two index (not its first);
/// then closed by dropping it. Returns the files and the payloads (all durable).
fn durable_log() -> (Files, Vec<Vec<u8>>) {
    let fs = MemFs::new();
    let wal = common::open(&fs, &small_options()).unwrap();
    let mut payloads = Vec::new();
    for i in 1..1000u64 {
        payloads.push(tricky_payload(i));
        wal.append(payloads.last().unwrap()).unwrap();
        if i % 3 == 0 {
            wal.sync().unwrap();
        }
        let segments = segment_files(&fs);
        let first_of_last = first_index_of(segments.last().unwrap());
        let has_power = (first_of_last + 1..i).any(u64::is_power_of_two);
        if segments.len() >= 3 && i >= first_of_last + 5 && has_power && i % 3 == 0 {
            break;
        }
    }
    wal.sync().unwrap();
    drop(wal);
    let files = snapshot(&fs)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".tmp"))
        .collect();
    (files, payloads)
}

fn last_segment(files: &Files) -> usize {
    files
        .iter()
        .rposition(|(p, _)| p.to_string_lossy().ends_with(".wal"))
        .unwrap()
}

/// Offsets of the records stored in a segment file (walking the length fields).
fn record_offsets(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 40usize;
    while pos + 24 <= segment.len() && segment[pos..pos + 24].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(segment[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let size = (24 + len).div_ceil(8) * 8;
        out.push((pos, size));
        pos += size;
    }
    out
}

fn options(mode: RecoveryMode) -> Options {
    Options {
        recovery_mode: mode,
        ..small_options()
    }
}

/// Opens the damaged files in both modes: an error that is about stored bytes and names
/// `expected_path`, or every one of `durable` records exactly. Returns how many opens failed.
fn error_or_durable_prefix(
    damaged: &Files,
    durable: &[Vec<u8>],
    expected_path: &Path,
    what: &str,
) -> usize {
    let mut errors = 0;
    for mode in MODES {
        let fs = restore(damaged);
        match Wal::open_with_fs(Arc::new(fs), dir(), options(mode)) {
            Err(e) => {
                assert!(e.is_corruption(), "{what} ({mode:?}): {e}");
                assert_eq!(e.path(), Some(expected_path), "{what} ({mode:?}): {e}");
                errors += 1;
            }
            Ok(wal) => {
                let got = read_all(&wal);
                assert!(
                    got.len() >= durable.len(),
                    "{what} ({mode:?}): opened without error but kept {} of {} durable records",
                    got.len(),
                    durable.len()
                );
                assert_eq!(got[..], durable[..got.len()], "{what} ({mode:?})");
            }
        }
    }
    errors
}

#[test]
fn every_header_bit_and_sampled_payload_bits_of_the_last_segments_durable_records() {
    let (files, payloads) = durable_log();
    let last = last_segment(&files);
    let path = files[last].0.clone();
    let records = record_offsets(&files[last].1);
    assert!(records.len() >= 5, "{} records", records.len());
    for &(start, size) in &records {
        let header = start..start + 24;
        // Payload and padding: one bit of every third byte, rotating through the bit positions.
        let body = (start + 24..start + size).step_by(3);
        for byte in header.chain(body) {
            let bits: Vec<u8> = if byte < start + 24 {
                (0..8).collect()
            } else {
                vec![(byte % 8) as u8]
            };
            for bit in bits {
                let mut damaged = files.clone();
                damaged[last].1[byte] ^= 1 << bit;
                let what = format!("flip of bit {bit} at byte {byte} (record at {start})");
                error_or_durable_prefix(&damaged, &payloads, &path, &what);
            }
        }
    }
}

#[test]
fn zeroed_junk_or_misdirected_sectors_in_the_last_segments_durable_records() {
    let (files, payloads) = durable_log();
    let last = last_segment(&files);
    let path = files[last].0.clone();
    let (end_start, end_size) = *record_offsets(&files[last].1).last().unwrap();
    let used = end_start + end_size;
    let first_segment = files
        .iter()
        .position(|(p, _)| p.to_string_lossy().ends_with(".wal"))
        .unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for sector in (0..used).step_by(512) {
        let range = sector..sector + 512;
        let mut zeroed = files.clone();
        zeroed[last].1[range.clone()].fill(0);
        let mut junk = files.clone();
        for b in &mut junk[last].1[range.clone()] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // A write that landed at the wrong place: the same sector of another segment.
        let mut misdirected = files.clone();
        let other = files[first_segment].1[range.clone()].to_vec();
        misdirected[last].1[range.clone()].copy_from_slice(&other);
        for (kind, damaged) in [
            ("zeroed", zeroed),
            ("junk", junk),
            ("misdirected", misdirected),
        ] {
            let what = format!("{kind} sector at {sector}");
            error_or_durable_prefix(&damaged, &payloads, &path, &what);
        }
    }
}

#[test]
fn truncating_the_last_segment_at_record_boundaries_and_inside_records() {
    let (files, payloads) = durable_log();
    let last = last_segment(&files);
    let path = files[last].0.clone();
    let records = record_offsets(&files[last].1);
    let (end_start, end_size) = *records.last().unwrap();
    let used = end_start + end_size;
    let len = files[last].1.len();
    // Every offset within the records (boundaries among them), then the zero-filled rest sampled.
    let cuts = (0..=used).chain((used + 1..len).step_by(97));
    let mut boundaries = 0;
    for cut in cuts {
        boundaries += usize::from(records.iter().any(|&(s, _)| s == cut) || cut == used);
        let mut damaged = files.clone();
        damaged[last].1.truncate(cut);
        let what = format!("last segment truncated to {cut} of {len} bytes");
        error_or_durable_prefix(&damaged, &payloads, &path, &what);
    }
    assert_eq!(boundaries, records.len() + 1);
}

/// A durable log as above whose oldest segment was compacted away, on a MemFs.
fn compacted_log() -> (Files, Vec<Vec<u8>>, u64) {
    let fs = MemFs::new();
    let wal = common::open(&fs, &small_options()).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=40).map(tricky_payload).collect();
    wal.append_batch(&payloads).unwrap();
    wal.sync().unwrap();
    let segments = segment_files(&fs);
    assert!(segments.len() >= 4);
    let compact_to = first_index_of(&segments[1]) + 1;
    wal.compact(compact_to).unwrap();
    assert_eq!(segment_files(&fs).len(), segments.len() - 1);
    wal.set_metadata(b"term=3 vote=1").unwrap();
    drop(wal);
    let files = snapshot(&fs)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".tmp"))
        .collect();
    (files, payloads, compact_to)
}

fn without(files: &Files, path: &Path) -> Files {
    let kept: Files = files.iter().filter(|(p, _)| p != path).cloned().collect();
    assert_eq!(kept.len() + 1, files.len(), "{} is a file", path.display());
    kept
}

/// Opening must fail in both modes with an error naming the missing file.
fn assert_missing_is_an_error(files: &Files, missing: &Path) {
    for mode in MODES {
        let fs = restore(&without(files, missing));
        match Wal::open_with_fs(Arc::new(fs), dir(), options(mode)) {
            Err(e) => {
                assert!(
                    e.is_corruption(),
                    "{} gone ({mode:?}): {e}",
                    missing.display()
                );
                assert_eq!(e.path(), Some(missing), "({mode:?}): {e}");
            }
            Ok(wal) => panic!(
                "{} deleted ({mode:?}): opened cleanly with records {}..={} and metadata {:?}",
                missing.display(),
                wal.first_index(),
                wal.last_index(),
                wal.metadata().map(String::from_utf8)
            ),
        }
    }
}

#[test]
fn a_deleted_first_segment_is_an_error() {
    let (files, _, compact_to) = compacted_log();
    let first = files
        .iter()
        .find(|(p, _)| p.to_string_lossy().ends_with(".wal"))
        .unwrap()
        .0
        .clone();
    assert!(first_index_of(&first) <= compact_to);
    assert_missing_is_an_error(&files, &first);
}

#[test]
fn a_deleted_last_segment_is_an_error() {
    let (files, _, _) = compacted_log();
    let last: PathBuf = files[last_segment(&files)].0.clone();
    assert_missing_is_an_error(&files, &last);
}

#[test]
fn a_deleted_metadata_file_is_an_error() {
    let (files, _, _) = compacted_log();
    assert_missing_is_an_error(&files, &dir().join("meta"));
}

#[test]
fn crashes_still_cut_real_torn_tails() {
    // Unsynced batches at the end of the log, then power loss: the recovered log is an exact
    // prefix holding at least the synced records, and some crashes leave a torn tail to cut.
    let mut cut = 0;
    for seed in 0..80u64 {
        let fs = MemFs::new();
        let wal = common::open(&fs, &small_options()).unwrap();
        let mut written = Vec::new();
        let mut durable = 0;
        for step in 0..6 + seed % 8 {
            let batch: Vec<Vec<u8>> = (0..1 + (seed + step) % 5)
                .map(|k| tricky_payload(step * 7 + k + seed))
                .collect();
            written.extend(batch.iter().cloned());
            wal.append_batch(&batch).unwrap();
            if step % 3 == 0 {
                durable = wal.sync().unwrap() as usize;
            } else {
                // Hand the batch to the OS as its own write, not yet synced.
                wal.read(wal.last_index()).unwrap();
            }
        }
        let crashed = fs.crash(seed);
        drop(wal);
        let wal =
            common::open(&crashed, &small_options()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        cut += usize::from(wal.recovery_report().torn_tail.is_some());
        let got = read_all(&wal);
        assert!(
            got.len() >= durable,
            "seed {seed}: {} < {durable}",
            got.len()
        );
        assert_eq!(got[..], written[..got.len()], "seed {seed}");
    }
    assert!(cut > 0, "no crash left a torn tail to cut");
}

#[test]
fn damage_to_an_earlier_group_commit_is_an_error_after_a_crash_too() {
    // No clean close, so the manifest knows nothing of these records: the records of a later
    // group commit claim the earlier ones durable.
    let fs = MemFs::new();
    let wal = common::open(&fs, &small_options()).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=6).map(tricky_payload).collect();
    wal.append_batch(&payloads[..3]).unwrap();
    wal.sync().unwrap();
    wal.append_batch(&payloads[3..]).unwrap();
    wal.sync().unwrap();
    let crashed = fs.crash(7);
    drop(wal);
    let files: Files = snapshot(&crashed)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".tmp"))
        .collect();
    let last = last_segment(&files);
    let path = files[last].0.clone();
    let records = record_offsets(&files[last].1);
    assert_eq!(records.len(), 6);
    for (k, &(start, _)) in records[..3].iter().enumerate() {
        // The index word zeroed, as a write that never reached the disk would leave it.
        let mut damaged = files.clone();
        damaged[last].1[start..start + 8].fill(0);
        let what = format!("record {} of the first group commit", k + 1);
        let errors = error_or_durable_prefix(&damaged, &payloads, &path, &what);
        assert_eq!(errors, 2, "{what}");
    }
}
