//! Recovery of segments larger than the scan window (256 KiB): records that straddle a window
//! boundary, records larger than the window, and torn tails cut near a boundary.

mod common;

use common::{open, read_all, restore, snapshot};
use storage_wal::{MemFs, Options};

fn options() -> Options {
    Options {
        segment_size: 1 << 20,
        max_record_size: 600 << 10,
        max_group_commit_delay: std::time::Duration::ZERO,
        ..Options::default()
    }
}

/// Payloads whose sizes walk across window boundaries at many alignments, with some records
/// larger than the window itself.
fn payloads() -> Vec<Vec<u8>> {
    let sizes = [
        1usize, 4093, 70_001, 300_000, 13, 255_977, 8, 500_000, 31_337, 1000, 2,
    ];
    (0..24)
        .map(|i| {
            let len = sizes[i % sizes.len()] + i;
            (0..len).map(|k| (k * 7 + i * 13) as u8 | 1).collect()
        })
        .collect()
}

#[test]
fn records_straddling_and_exceeding_the_scan_window_recover_intact() {
    let fs = MemFs::new();
    let wal = open(&fs, &options()).unwrap();
    let payloads = payloads();
    for p in &payloads {
        wal.append(p).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let wal = open(&fs, &options()).unwrap();
    assert!(
        wal.recovery_report().segments >= 3,
        "{:?}",
        wal.recovery_report()
    );
    assert!(wal.recovery_report().torn_tail.is_none());
    assert_eq!(read_all(&wal), payloads);
}

#[test]
fn a_torn_tail_near_a_window_boundary_leaves_an_exact_prefix() {
    let fs = MemFs::new();
    let wal = open(&fs, &options()).unwrap();
    let payloads = payloads();
    for p in &payloads {
        wal.append(p).unwrap();
    }
    // Written but not synced: the files as a crash could leave them, before any drop.
    wal.read(wal.last_index()).unwrap();
    let files: Vec<_> = snapshot(&fs)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".tmp"))
        .collect();
    drop(wal);
    let last = files
        .iter()
        .rposition(|(p, _)| p.to_string_lossy().ends_with(".wal"))
        .unwrap();
    let used = files[last].1.iter().rposition(|&b| b != 0).unwrap() + 1;
    let window = 256usize << 10;
    let mut cuts: Vec<usize> = Vec::new();
    for boundary in [window, 2 * window, 3 * window] {
        for delta in [-25i64, -24, -8, -1, 0, 1, 8, 23, 24, 40, 512] {
            let cut = (boundary as i64 + delta) as usize;
            if cut > 40 && cut < used {
                cuts.push(cut);
            }
        }
    }
    cuts.push(used - 1);
    assert!(
        cuts.len() > 10,
        "the last segment should span several windows"
    );
    let mut kept = Vec::new();
    for cut in cuts {
        // The sectors from the one holding `cut` on never reached the disk.
        let mut damaged = files.clone();
        damaged[last].1[cut / 512 * 512..].fill(0);
        let fs = restore(&damaged);
        let wal = open(&fs, &options()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let got = read_all(&wal);
        assert_eq!(got[..], payloads[..got.len()], "cut at {cut}");
        assert!(got.len() < payloads.len(), "cut at {cut}");
        kept.push(got.len());
    }
    assert!(kept.windows(2).all(|w| w[0] <= w[1]), "{kept:?}");
    assert!(kept.last().unwrap() < &payloads.len());
}

#[test]
fn a_bit_flip_behind_a_window_boundary_in_a_sealed_segment_is_reported() {
    let fs = MemFs::new();
    let wal = open(&fs, &options()).unwrap();
    for p in payloads() {
        wal.append(&p).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let files: Vec<_> = snapshot(&fs)
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().ends_with(".wal"))
        .collect();
    let used = files[0].1.iter().rposition(|&b| b != 0).unwrap() + 1;
    for at in [(256 << 10) + 3, (512 << 10) + 100, used - 1] {
        let mut damaged = files.clone();
        damaged[0].1[at] ^= 0x10;
        let err = open(&restore(&damaged), &options()).unwrap_err();
        assert!(err.is_corruption(), "flip at {at}: {err}");
        assert_eq!(
            err.path(),
            Some(files[0].0.as_path()),
            "flip at {at}: {err}"
        );
    }
}
