//! Group commit: many threads each appending durably in a loop share every fdatasync.
//!
//! Run with `cargo run -p storage-wal --example group_commit -- [writers] [seconds] [dir]`
//! (defaults: 16 writers, 1 second, a temporary directory under the current one). It prints the
//! appends per second, the fdatasyncs per second and how many appends each one covered; run it
//! under `perf record -g` or `time` to see what the coordination of the writers costs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage_wal::{Options, Wal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let seconds: f64 = args.next().map_or(Ok(1.0), |a| a.parse())?;
    let parent = args.next().unwrap_or_else(|| ".".into());
    let dir = tempfile::Builder::new()
        .prefix(".group-commit-")
        .tempdir_in(parent)?;
    let wal = Arc::new(Wal::open(dir.path(), Options::default())?);

    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (wal, stop, appended) = (wal.clone(), stop.clone(), appended.clone());
            std::thread::spawn(move || -> storage_wal::Result<()> {
                let payload = vec![t as u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    // Returns once this record is durable; concurrent callers share the fsync.
                    wal.append_durable(&payload)?;
                    appended.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();

    let started = Instant::now();
    let before = wal.stats();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (appends, after) = (appended.load(Ordering::Relaxed), wal.stats());
    let syncs = after.syncs - before.syncs;
    let busy_us = (after.sync_busy_micros - before.sync_busy_micros) as f64;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer thread")?;
    }
    println!(
        "{writers} writers × 256 B: {:.0} durable appends/s, {:.0} fdatasyncs/s, {:.1} appends per fdatasync, \
         fdatasync {:.0} µs on average, disk idle {:.0} µs between them",
        appends as f64 / elapsed,
        syncs as f64 / elapsed,
        appends as f64 / syncs.max(1) as f64,
        busy_us / syncs.max(1) as f64,
        (elapsed * 1e6 - busy_us) / syncs.max(1) as f64,
    );
    Ok(())
}
