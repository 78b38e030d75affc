//! Failures the log must not hide: fsync errors (of files and of the directory) poison it, with
//! every waiter told; deletions are durable when `truncate_from` and `compact` return; a directory
//! held by another process is refused.

mod common;

use std::sync::Arc;

use common::{open, payload, read_all, segment_files, small_options};
use storage_wal::{MemFs, Options, Wal, WalError};

#[test]
fn a_directory_fsync_failure_while_rolling_a_segment_poisons_the_log() {
    // Fail each sync a roll takes in turn (the background preparation of the spare segment file
    // may take one of them too, so which one fails is timing-dependent), and then, deterministically,
    // the roll's directory fsync alone.
    let mut failed_ops = Vec::new();
    for failing in 0..7u64 {
        let fs = MemFs::new();
        let wal = open(&fs, &small_options()).unwrap();
        wal.append_durable(&payload(1, 1)).unwrap();
        // A 4000-byte record does not fit in what is left of the 4 KiB segment: the append rolls
        // (fdatasync of the old segment, header write + fdatasync + rename + directory fsync of
        // the new one).
        if failing < 6 {
            fs.fail_syncs_after(failing);
        } else {
            fs.fail_dir_syncs_after(0);
        }
        let mut first_error = None;
        for i in 0..20 {
            let result = if i == 0 {
                wal.append(&[7u8; 4000])
            } else {
                wal.append(b"more").and_then(|_| wal.sync())
            };
            if let Err(e) = result {
                first_error = Some(e);
                break;
            }
        }
        let err = first_error.expect("a sync failed");
        if let WalError::Io { op, .. } = &err {
            failed_ops.push(*op);
        }
        assert!(
            matches!(err, WalError::Io { op, .. } if op == "fdatasync" || op == "fsync directory"),
            "failing sync {failing}: {err}"
        );
        for result in [
            wal.append(b"x").map(drop),
            wal.sync().map(drop),
            wal.compact(1),
            wal.set_metadata(b"m"),
        ] {
            assert!(
                matches!(result, Err(WalError::Poisoned { .. })),
                "failing sync {failing}: {result:?}"
            );
        }
        drop(wal);
        let fs = fs.crash(failing);
        let wal = open(&fs, &small_options()).unwrap();
        assert_eq!(
            wal.read(1).unwrap(),
            payload(1, 1),
            "failing sync {failing}"
        );
    }
    assert!(failed_ops.contains(&"fsync directory"), "{failed_ops:?}");
}

#[test]
fn every_waiting_writer_learns_of_an_fsync_failure() {
    let fs = MemFs::new();
    let options = Options {
        segment_size: 1 << 20,
        max_record_size: 4096,
        ..Options::default()
    };
    let wal = Arc::new(open(&fs, &options).unwrap());
    fs.fail_syncs_after(20);
    let writers: Vec<_> = (0..6u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                loop {
                    let data = format!("writer {t} record {}", acked.len()).into_bytes();
                    match wal.append_durable(&data) {
                        Ok(index) => acked.push((index, data)),
                        Err(e) => return (acked, e),
                    }
                }
            })
        })
        .collect();
    // Every writer returns (none hangs), each with the fsync error or the poison it left.
    let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for (_, err) in &results {
        assert!(
            matches!(
                err,
                WalError::Io {
                    op: "fdatasync",
                    ..
                } | WalError::Poisoned { .. }
            ),
            "{err}"
        );
    }
    assert!(results
        .iter()
        .any(|(_, e)| matches!(e, WalError::Io { .. })));
    drop(wal);
    let fs = fs.crash(3);
    let wal = open(&fs, &options).unwrap();
    for (acked, _) in &results {
        for (index, data) in acked {
            assert_eq!(&wal.read(*index).unwrap(), data);
        }
    }
}

/// A log of `n` records over several segments, synced.
fn log_of(fs: &MemFs, n: u64) -> Wal {
    let wal = open(fs, &small_options()).unwrap();
    wal.append_batch((1..=n).map(|i| payload(i, 2))).unwrap();
    wal.sync().unwrap();
    wal
}

#[test]
fn truncated_records_never_come_back_after_a_crash() {
    for seed in 0..20u64 {
        let fs = MemFs::new();
        let wal = log_of(&fs, 40);
        assert!(segment_files(&fs).len() >= 4);
        wal.truncate_from(9).unwrap();
        drop(wal);
        let fs = fs.crash(seed);
        let wal = open(&fs, &small_options()).unwrap();
        assert_eq!(wal.last_index(), 8, "seed {seed}");
        assert_eq!(
            read_all(&wal),
            (1..=8).map(|i| payload(i, 2)).collect::<Vec<_>>()
        );
    }
}

#[test]
fn compacted_segments_stay_deleted_after_a_crash() {
    for seed in 0..20u64 {
        let fs = MemFs::new();
        let wal = log_of(&fs, 40);
        wal.compact(30).unwrap();
        let kept = segment_files(&fs);
        drop(wal);
        let fs = fs.crash(seed);
        assert_eq!(segment_files(&fs), kept, "seed {seed}");
        let wal = open(&fs, &small_options()).unwrap();
        assert!(wal.first_index() > 1 && wal.first_index() <= 30);
        assert_eq!(wal.last_index(), 40);
    }
}

#[test]
fn a_log_reset_past_its_end_stays_reset_after_a_crash() {
    for seed in 0..20u64 {
        let fs = MemFs::new();
        let wal = log_of(&fs, 40);
        wal.compact(1000).unwrap();
        drop(wal);
        let fs = fs.crash(seed);
        let wal = open(&fs, &small_options()).unwrap();
        assert_eq!(
            (wal.first_index(), wal.next_index()),
            (1000, 1000),
            "seed {seed}"
        );
        assert_eq!(segment_files(&fs).len(), 1);
    }
}

/// The directory a child process should try to open, set by the parent test.
const CHILD_DIR: &str = "STORAGE_WAL_TEST_LOCK_DIR";

#[test]
fn another_process_cannot_open_a_held_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let options = Options {
        segment_size: 4096,
        ..Options::default()
    };
    let wal = Wal::open(tmp.path(), options.clone()).unwrap();
    let child = |expect: &str| {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_opens_the_directory",
                "--include-ignored",
                "--quiet",
            ])
            .env(CHILD_DIR, tmp.path())
            .env("STORAGE_WAL_TEST_EXPECT", expect)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "child expecting {expect}: {status}");
    };
    child("locked");
    drop(wal);
    child("open");
}

/// Run only as the child of `another_process_cannot_open_a_held_directory`.
#[test]
#[ignore = "run by another_process_cannot_open_a_held_directory in a child process"]
fn child_opens_the_directory() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let options = Options {
        segment_size: 4096,
        ..Options::default()
    };
    let result = Wal::open(&dir, options);
    match std::env::var("STORAGE_WAL_TEST_EXPECT").unwrap().as_str() {
        "locked" => assert!(matches!(result, Err(WalError::Locked { .. })), "{result:?}"),
        _ => assert_eq!(result.unwrap().last_index(), 0),
    }
}
