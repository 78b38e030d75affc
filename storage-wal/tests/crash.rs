//! Crashes and corruption, exhaustively on a small log: every bit of every record, random crashes
//! that drop or tear unsynced writes. (Damage to the last segment's durable records, truncations
//! and deleted files are in `durable.rs`.) (Malformed
//! files are in `malformed.rs`.) After reopening, the log holds an exact prefix of what was written (and at
//! least everything acknowledged as durable) or reports corruption naming the damaged segment —
//! never a record with wrong contents, never a panic.

mod common;

use std::sync::Arc;

use common::{dir, open, payload, read_all, restore, segment_files, small_options, snapshot};
use storage_wal::{FileSystem, MemFs, Options, RecoveryMode, Wal, WalError};

/// A synced log of `n` records over several 4 KiB segments; returns its files and payloads.
fn small_log(n: u64) -> (common::Files, Vec<Vec<u8>>) {
    let fs = MemFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=n).map(|i| payload(i, 9)).collect();
    for p in &payloads {
        wal.append(p).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let files = snapshot(&fs)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".tmp"))
        .collect();
    (files, payloads)
}

/// Checks the reopened log holds exactly `payloads[..k]` for some k (at least `min_len` records)
/// and is still usable: a new record appends, syncs and survives another reopen.
fn assert_exact_prefix(fs: &MemFs, wal: Wal, payloads: &[Vec<u8>], min_len: usize) -> usize {
    let got = read_all(&wal);
    assert!(
        got.len() >= min_len,
        "lost durable records: {} < {min_len}",
        got.len()
    );
    assert_eq!(
        got[..],
        payloads[..got.len()],
        "records differ from what was written"
    );
    let index = wal.append_durable(b"after recovery").unwrap();
    drop(wal);
    let wal = open(fs, &small_options()).unwrap();
    assert_eq!(wal.read(index).unwrap(), b"after recovery");
    got.len()
}

#[test]
fn flipping_any_bit_of_any_segment_is_detected_or_cut_as_a_tail() {
    let (files, payloads) = small_log(14);
    let segments: Vec<usize> = (0..files.len())
        .filter(|&k| files[k].0.to_string_lossy().ends_with(".wal"))
        .collect();
    assert!(segments.len() >= 2, "a sealed segment and the last one");
    let last = *segments.last().unwrap();
    let mut detected = 0;
    let mut cut = 0;
    for &k in &segments {
        // Every byte of the records, and of the zero-filled rest of the segment the first 64
        // bytes and the last 8 (stray bytes there are damage in a sealed segment too).
        let data = &files[k].1;
        let used = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let len = data.len();
        let zero_area = (used..(used + 64).min(len)).chain((len - 8).max(used + 64)..len);
        for byte in (0..used).chain(zero_area) {
            for bit in 0..8 {
                let mut damaged = files.clone();
                damaged[k].1[byte] ^= 1 << bit;
                let fs = restore(&damaged);
                match open(&fs, &small_options()) {
                    Ok(wal) => {
                        // Only the last segment may lose a tail; no record may change.
                        assert_eq!(
                            k, last,
                            "flip at {byte}.{bit} of a sealed segment went unnoticed"
                        );
                        assert_exact_prefix(&fs, wal, &payloads, 0);
                        cut += 1;
                    }
                    Err(e) => {
                        assert!(e.is_corruption(), "flip at {byte}.{bit}: {e}");
                        // The error points at the damage or at the record or header holding it,
                        // never past it.
                        if let WalError::Corrupt { offset, .. }
                        | WalError::TornTail { offset, .. } = &e
                        {
                            assert!(*offset <= byte as u64, "flip at {byte}.{bit}: {e}");
                        }
                        assert_eq!(
                            e.path(),
                            Some(files[k].0.as_path()),
                            "flip at {byte}.{bit}: {e}"
                        );
                        detected += 1;
                    }
                }
            }
        }
    }
    // Nearly every flip is reported as corruption; a cut tail is the exception.
    eprintln!("bit flips: {detected} detected, {cut} cut as a torn tail");
    assert!(detected > 20 * cut, "detected {detected}, cut {cut}");
}

#[test]
fn absolute_consistency_refuses_a_torn_tail_that_the_default_mode_cuts() {
    // Six durable records, then three written but not synced whose last sector never reached
    // the disk: the files a power loss can leave.
    let fs = MemFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=9).map(|i| payload(i, 9)).collect();
    wal.append_batch(&payloads[..6]).unwrap();
    wal.sync().unwrap();
    wal.append_batch(&payloads[6..]).unwrap();
    wal.read(9).unwrap(); // hands the unsynced records to the file
    let mut damaged = snapshot(&fs);
    drop(wal);
    let last = damaged
        .iter()
        .rposition(|(p, _)| p.to_string_lossy().ends_with(".wal"))
        .unwrap();
    let used = damaged[last].1.iter().rposition(|&b| b != 0).unwrap() + 1;
    let start = (used - 1) / 512 * 512;
    damaged[last].1[start..used].fill(0);
    let strict = Options {
        recovery_mode: RecoveryMode::AbsoluteConsistency,
        ..small_options()
    };
    let fs = restore(&damaged);
    let err = Wal::open_with_fs(Arc::new(fs.clone()), dir(), strict).unwrap_err();
    assert!(matches!(err, WalError::TornTail { .. }), "{err}");
    let wal = open(&fs, &small_options()).unwrap();
    let cut = wal
        .recovery_report()
        .torn_tail
        .clone()
        .expect("the cut is reported");
    assert_eq!(cut.path, damaged[last].0);
    let kept = assert_exact_prefix(&fs, wal, &payloads, 6);
    assert!(kept < payloads.len());
}

#[test]
fn random_crashes_keep_every_acknowledged_record_and_nothing_else() {
    for seed in 0..60u64 {
        let fs = MemFs::new();
        let options = small_options();
        let wal = open(&fs, &options).unwrap();
        let mut written: Vec<Vec<u8>> = Vec::new();
        let mut durable = 0usize;
        let steps = 5 + seed % 20;
        for step in 0..steps {
            let batch: Vec<Vec<u8>> = (0..1 + (seed + step) % 4)
                .map(|k| payload(step * 10 + k, seed))
                .collect();
            written.extend(batch.iter().cloned());
            wal.append_batch(&batch).unwrap();
            if (seed + step) % 3 == 0 {
                durable = wal.sync().unwrap() as usize;
            }
        }
        // Leave some writes unsynced in the OS, then lose power.
        drop(wal);
        let crashed = fs.crash(seed);
        let wal = open(&crashed, &options).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_exact_prefix(&crashed, wal, &written, durable);
    }
}

#[test]
fn concurrent_durable_appends_survive_a_crash_at_any_moment() {
    for seed in 0..8u64 {
        let fs = MemFs::new();
        let options = small_options();
        let wal = Arc::new(open(&fs, &options).unwrap());
        let acked = Arc::new(parking_lot::Mutex::new(Vec::<(u64, Vec<u8>)>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let (wal, acked, stop) = (wal.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut k = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && k < 300 {
                        let data = format!("writer {t} record {k}").into_bytes();
                        let index = wal.append_durable(&data).unwrap();
                        acked.lock().push((index, data));
                        k += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(2 + seed));
        let acknowledged = acked.lock().clone();
        let crashed = fs.crash(seed);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        drop(wal);
        let wal = open(&crashed, &options).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (index, data) in &acknowledged {
            assert_eq!(
                &wal.read(*index).unwrap(),
                data,
                "seed {seed}: acknowledged record {index}"
            );
        }
        // Whatever else survived is a record some writer appended, each at most once.
        let all = read_all(&wal);
        let mut seen = std::collections::HashSet::new();
        for record in &all {
            let text = String::from_utf8(record.clone()).unwrap();
            assert!(
                text.starts_with("writer "),
                "seed {seed}: unexpected record {text:?}"
            );
            assert!(seen.insert(text), "seed {seed}: duplicate record");
        }
    }
}

#[test]
fn a_segment_that_goes_missing_in_the_middle_is_reported_not_skipped() {
    let (files, _) = small_log(30);
    let fs = restore(&files);
    let segments = segment_files(&fs);
    assert!(segments.len() >= 3);
    fs.remove(&segments[1]).unwrap();
    let err = open(&fs, &small_options()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { path, .. } if *path == segments[2]),
        "{err}"
    );
}

#[test]
fn a_torn_looking_record_in_a_sealed_segment_is_corruption_not_a_cut() {
    // Damage that would be a torn write at the end of the last segment — a sector of zeros inside
    // a record, or stray bytes after the records — is an error anywhere else.
    let (files, _) = small_log(30);
    let segments: Vec<usize> = (0..files.len())
        .filter(|&k| files[k].0.to_string_lossy().ends_with(".wal"))
        .collect();
    for &k in &segments[..segments.len() - 1] {
        let used = files[k].1.iter().rposition(|&b| b != 0).unwrap() + 1;
        let mut zeroed = files.clone();
        let sector = used / 2 / 512 * 512;
        zeroed[k].1[sector.max(512)..(sector + 512).max(1024)].fill(0);
        let mut stray = files.clone();
        let len = stray[k].1.len();
        stray[k].1[len - 1] = 0x55;
        for damaged in [zeroed, stray] {
            let err = open(&restore(&damaged), &small_options()).unwrap_err();
            assert!(
                matches!(&err, WalError::Corrupt { path, .. } if *path == files[k].0),
                "{err}"
            );
        }
    }
}
