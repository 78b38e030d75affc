//! Behaviour of the public API on the real filesystem and on `MemFs`.

mod common;

use std::sync::Arc;

use common::{open, payload, read_all, small_options};
use storage_wal::{MemFs, Options, Wal, WalError};

#[test]
fn appended_records_read_back_in_order_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_size: 4096,
        ..Options::default()
    };
    let wal = Wal::open(dir.path(), options.clone()).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=40).map(|i| payload(i, 1)).collect();
    assert_eq!(wal.append_batch(&payloads).unwrap(), 1..41);
    assert_eq!(wal.sync().unwrap(), 40);
    assert_eq!(read_all(&wal), payloads);
    assert_eq!(wal.read(17).unwrap(), payloads[16]);
    drop(wal);
    let wal = Wal::open(dir.path(), options).unwrap();
    assert!(
        wal.recovery_report().segments > 1,
        "{:?}",
        wal.recovery_report()
    );
    assert_eq!((wal.first_index(), wal.last_index()), (1, 40));
    assert_eq!(read_all(&wal), payloads);
}

#[test]
fn read_range_stops_at_the_byte_limit_but_returns_at_least_one_record() {
    let fs = MemFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    for _ in 0..10 {
        wal.append(&[7u8; 100]).unwrap();
    }
    // Each record is stored in 24 + 100 + 4 = 128 bytes.
    assert_eq!(wal.read_range(1..11, 0).unwrap().len(), 1);
    assert_eq!(wal.read_range(1..11, 128 * 3).unwrap().len(), 3);
    assert_eq!(wal.read_range(1..11, 128 * 3 + 127).unwrap().len(), 3);
    assert_eq!(wal.read_range(1..11, u64::MAX).unwrap().len(), 10);
    assert_eq!(wal.read_range(4..4, 0).unwrap().len(), 0);
}

#[test]
fn reading_outside_the_log_is_a_typed_error() {
    let fs = MemFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    assert!(matches!(
        wal.read(1),
        Err(WalError::OutOfRange {
            index: 1,
            first: 1,
            last: 0
        })
    ));
    wal.append(b"a").unwrap();
    assert!(matches!(wal.read(2), Err(WalError::OutOfRange { .. })));
    assert!(matches!(wal.read(0), Err(WalError::OutOfRange { .. })));
    assert!(matches!(
        wal.wait_durable(5),
        Err(WalError::OutOfRange { .. })
    ));
}

#[test]
fn append_at_the_wrong_index_and_oversized_records_are_refused() {
    let fs = MemFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    wal.append(b"a").unwrap();
    assert!(matches!(
        wal.append_batch_at(5, [b"x"]),
        Err(WalError::IndexMismatch {
            expected: 2,
            given: 5
        })
    ));
    let big = vec![1u8; 4097];
    // All or nothing: the valid first record of the batch is not appended either.
    assert!(matches!(
        wal.append_batch([&b"ok"[..], &big]),
        Err(WalError::TooLarge { len: 4097, .. })
    ));
    assert_eq!(wal.next_index(), 2);
    assert_eq!(wal.append_batch_at(2, [b"b"]).unwrap(), 2..3);
}

#[test]
fn truncate_removes_the_suffix_and_new_records_take_its_place_after_reopen() {
    let fs = MemFs::new();
    let options = small_options();
    let wal = open(&fs, &options).unwrap();
    let old: Vec<Vec<u8>> = (1..=30).map(|i| payload(i, 2)).collect();
    wal.append_batch(&old).unwrap();
    wal.sync().unwrap();
    wal.truncate_from(12).unwrap();
    assert_eq!((wal.last_index(), wal.durable_index()), (11, 11));
    assert!(matches!(wal.read(12), Err(WalError::OutOfRange { .. })));
    let new: Vec<Vec<u8>> = (12..=15).map(|i| payload(i, 3)).collect();
    wal.append_batch_at(12, &new).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = open(&fs, &options).unwrap();
    let mut expected = old[..11].to_vec();
    expected.extend(new);
    assert_eq!(read_all(&wal), expected);
    assert!(matches!(
        wal.truncate_from(0),
        Err(WalError::OutOfRange { .. })
    ));
    wal.truncate_from(1).unwrap();
    assert!(wal.is_empty());
    assert_eq!(wal.append(b"again").unwrap(), 1);
}

#[test]
fn compact_deletes_whole_segments_below_the_index_only() {
    let fs = MemFs::new();
    let options = small_options();
    let wal = open(&fs, &options).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=40).map(|i| payload(i, 4)).collect();
    wal.append_batch(&payloads).unwrap();
    wal.sync().unwrap();
    let before = common::segment_files(&fs).len();
    wal.compact(25).unwrap();
    assert_eq!(wal.first_index(), 25);
    assert!(matches!(wal.read(24), Err(WalError::OutOfRange { .. })));
    assert_eq!(wal.read(25).unwrap(), payloads[24]);
    let after = common::segment_files(&fs).len();
    assert!(after < before, "{before} -> {after}");
    drop(wal);
    let wal = open(&fs, &options).unwrap();
    let first = wal.first_index();
    assert!(first <= 25 && first > 1, "first index after reopen {first}");
    assert_eq!(read_all(&wal), payloads[(first - 1) as usize..].to_vec());
}

#[test]
fn compact_past_the_end_resets_the_log_to_start_there() {
    let fs = MemFs::new();
    let options = small_options();
    let wal = open(&fs, &options).unwrap();
    wal.append_batch((1..=20).map(|i| payload(i, 5))).unwrap();
    wal.compact(100).unwrap();
    assert!(wal.is_empty());
    assert_eq!((wal.first_index(), wal.next_index()), (100, 100));
    assert_eq!(wal.append_durable(b"after snapshot").unwrap(), 100);
    drop(wal);
    let wal = open(&fs, &options).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (100, 100));
    assert_eq!(common::segment_files(&fs).len(), 1);
}

#[test]
fn metadata_is_replaced_atomically_and_survives_reopen() {
    let fs = MemFs::new();
    let options = small_options();
    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.metadata(), None);
    wal.set_metadata(b"term=1").unwrap();
    wal.set_metadata(b"term=2 vote=3").unwrap();
    assert!(matches!(
        wal.set_metadata(&vec![0u8; (1 << 20) + 1]),
        Err(WalError::TooLarge { .. })
    ));
    drop(wal);
    // set_metadata is durable on return: even a crash keeps it.
    let fs = fs.crash(7);
    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.metadata().as_deref(), Some(&b"term=2 vote=3"[..]));
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(
        dir.path(),
        Options {
            segment_size: 4096,
            ..Options::default()
        },
    )
    .unwrap();
    let second = Wal::open(dir.path(), Options::default());
    assert!(matches!(second, Err(WalError::Locked { .. })), "{second:?}");
    drop(wal);
    Wal::open(
        dir.path(),
        Options {
            segment_size: 4096,
            ..Options::default()
        },
    )
    .unwrap();
}

#[test]
fn an_fsync_failure_poisons_the_log_and_nothing_is_retried() {
    let fs = MemFs::new();
    let options = small_options();
    let wal = open(&fs, &options).unwrap();
    wal.append_durable(b"kept").unwrap();
    fs.fail_syncs_after(0);
    let err = wal.append_durable(b"lost").unwrap_err();
    assert!(
        matches!(
            err,
            WalError::Io {
                op: "fdatasync",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        wal.append(b"more"),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
    assert!(matches!(wal.read(1), Err(WalError::Poisoned { .. })));
    assert!(matches!(
        wal.truncate_from(1),
        Err(WalError::Poisoned { .. })
    ));
    drop(wal);
    let fs = fs.crash(1);
    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.read(1).unwrap(), b"kept");
}

#[test]
fn concurrent_writers_share_fsyncs_and_every_acknowledged_record_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_size: 1 << 20,
        ..Options::default()
    };
    let wal = Arc::new(Wal::open(dir.path(), options.clone()).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..50u64)
                    .map(|k| {
                        let data = format!("writer {t} record {k}").into_bytes();
                        let index = wal.append_durable(&data).unwrap();
                        // Returned means durable: the durable index only grows (no truncation
                        // here), so it covers the record now. A waiter woken too early (by
                        // the fsync before the one that covers it) fails this, not the count.
                        let durable = wal.durable_index();
                        assert!(
                            durable >= index,
                            "record {index} returned at durable {durable}"
                        );
                        (index, data)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let stats = wal.stats();
    assert_eq!(stats.appended_records, 400);
    assert!(
        stats.syncs < 400,
        "group commit should share fsyncs: {stats:?}"
    );
    assert_eq!(wal.durable_index(), 400);
    drop(wal);
    let wal = Wal::open(dir.path(), options).unwrap();
    for (index, data) in acked {
        assert_eq!(wal.read(index).unwrap(), data);
    }
}

#[test]
fn the_end_of_the_index_space_is_an_error_not_an_overflow() {
    let fs = MemFs::new();
    let options = small_options();
    let wal = open(&fs, &options).unwrap();
    assert!(matches!(
        wal.read(u64::MAX),
        Err(WalError::OutOfRange {
            index: u64::MAX,
            ..
        })
    ));
    wal.compact(u64::MAX - 2).unwrap();
    assert_eq!(
        wal.append_batch([b"a", b"b"]).unwrap(),
        u64::MAX - 2..u64::MAX
    );
    assert!(matches!(
        wal.append(b"c"),
        Err(WalError::IndexSpaceExhausted {
            next_index: u64::MAX
        })
    ));
    assert_eq!(wal.sync().unwrap(), u64::MAX - 1);
    assert_eq!(wal.read(u64::MAX - 1).unwrap(), b"b");
    assert!(matches!(
        wal.read(u64::MAX),
        Err(WalError::OutOfRange { .. })
    ));
    drop(wal);
    let wal = open(&fs, &options).unwrap();
    assert_eq!(
        (wal.first_index(), wal.next_index()),
        (u64::MAX - 2, u64::MAX)
    );
    assert!(matches!(
        wal.append_batch_at(u64::MAX, [b"d"]),
        Err(WalError::IndexSpaceExhausted { .. })
    ));
}

#[test]
fn durable_appends_racing_truncations_end_acknowledged_or_told_truncated() {
    let fs = MemFs::new();
    let options = storage_wal::Options {
        segment_size: 64 << 10,
        max_record_size: 4096,
        // Leaders wait for followers, so truncations land while writers gather.
        max_group_commit_delay: std::time::Duration::from_millis(1),
        ..storage_wal::Options::default()
    };
    let wal = Arc::new(open(&fs, &options).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..6u64)
        .map(|t| {
            let (wal, stop) = (wal.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut acked, mut truncated) = (0u64, 0u64);
                let mut k = 0u64;
                // At least 50 acknowledged each, however the truncations fall.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || acked < 50 {
                    let data = format!("writer {t} record {k}").into_bytes();
                    match wal.append_durable(&data) {
                        Ok(_) => acked += 1,
                        Err(WalError::Truncated { .. }) => truncated += 1,
                        Err(e) => panic!("writer {t}: {e}"),
                    }
                    k += 1;
                }
                (acked, truncated)
            })
        })
        .collect();
    for _ in 0..200 {
        let next = wal.next_index();
        wal.truncate_from(next.saturating_sub(3).max(wal.first_index()))
            .unwrap();
        std::thread::yield_now();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes: Vec<(u64, u64)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    eprintln!("acknowledged, truncated per writer: {outcomes:?}");
    assert!(outcomes.iter().map(|o| o.0).sum::<u64>() >= 300);
    wal.sync().unwrap();
    assert_eq!(wal.durable_index(), wal.last_index());
    for record in read_all(&wal) {
        assert!(record.starts_with(b"writer "), "{record:?}");
    }
    drop(wal);
    let wal = open(&fs, &options).unwrap();
    assert!(wal.recovery_report().torn_tail.is_none());
}

#[test]
fn reads_racing_truncations_see_one_version_of_the_log() {
    // Each record says its index and the generation (truncations so far) that wrote it; a log
    // only ever holds generations in non-decreasing order, so a read that mixed bytes from
    // before and after a truncation would show it.
    let fs = MemFs::new();
    let wal = Arc::new(open(&fs, &small_options()).unwrap());
    let record = |generation: u64, index: u64| {
        format!(
            "g{generation:08} i{index:08} {}",
            "x".repeat((index % 90) as usize)
        )
        .into_bytes()
    };
    let parse = |r: &[u8]| -> (u64, u64) {
        let text = std::str::from_utf8(r).unwrap();
        (text[1..9].parse().unwrap(), text[11..19].parse().unwrap())
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (wal, stop) = (wal.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (first, next) = (wal.first_index(), wal.next_index());
                    let records = match wal.read_range(first..next, u64::MAX) {
                        Ok(r) => r,
                        Err(WalError::OutOfRange { .. }) => continue, // the log shrank meanwhile
                        Err(e) => panic!("read {first}..{next}: {e}"),
                    };
                    let mut last_generation = 0;
                    for (k, r) in records.iter().enumerate() {
                        let (generation, index) = parse(r);
                        assert_eq!(index, first + k as u64);
                        assert!(
                            generation >= last_generation,
                            "mixed versions in {first}..{next}"
                        );
                        last_generation = generation;
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for generation in 0..3000u64 {
        let next = wal.next_index();
        wal.append_batch((next..next + 5).map(|i| record(generation, i)))
            .unwrap();
        wal.truncate_from(wal.next_index() - 3).unwrap();
        // The next generation rewrites the truncated indexes.
        let next = wal.next_index();
        wal.append_batch((next..next + 3).map(|i| record(generation + 1, i)))
            .unwrap();
        if generation % 500 == 499 {
            wal.compact(wal.next_index() - 20).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
}
