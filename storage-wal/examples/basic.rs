//! A tour of storage-wal: concurrent durable appends (group commit), a Raft-style suffix
//! truncation and prefix compaction, hard state in the metadata record, and recovery on reopen.
//!
//! Run with `cargo run -p storage-wal --example basic`.

use std::sync::Arc;

use storage_wal::{Options, Wal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let options = Options {
        segment_size: 1 << 20,
        ..Options::default()
    };
    let wal = Arc::new(Wal::open(dir.path(), options.clone())?);

    // Eight threads append 100 records each; each call returns once its record is durable, and
    // concurrent callers share fdatasyncs.
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || -> storage_wal::Result<()> {
                for k in 0..100 {
                    wal.append_durable(format!("writer {t} entry {k}").as_bytes())?;
                }
                Ok(())
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread")?;
    }
    let stats = wal.stats();
    println!(
        "{} durable appends with {} fdatasyncs (group commit); durable index {}",
        stats.appended_records,
        stats.syncs,
        wal.durable_index()
    );

    // A Raft follower learns that entries from 791 on conflict with the leader's log.
    wal.truncate_from(791)?;
    let range = wal.append_batch_at(791, [b"leader entry 791", b"leader entry 792"])?;
    let durable = wal.sync()?;
    println!("replaced the suffix with {range:?}; durable index {durable}");

    // A snapshot covers everything up to 500: drop that prefix (whole segments only).
    wal.compact(501)?;
    wal.set_metadata(b"term=7 vote=2 commit=792")?;
    println!("log now holds {}..={}", wal.first_index(), wal.last_index());
    drop(wal);

    let wal = Wal::open(dir.path(), options)?;
    let report = wal.recovery_report();
    println!(
        "reopened: {} segments, {} records, {} bytes checked, torn tail: {:?}",
        report.segments, report.records, report.bytes_scanned, report.torn_tail
    );
    let last = wal.read(wal.last_index())?;
    println!("last entry: {}", String::from_utf8_lossy(&last));
    println!(
        "hard state: {}",
        String::from_utf8_lossy(&wal.metadata().unwrap_or_default())
    );
    Ok(())
}
