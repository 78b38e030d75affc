//! `cargo xtask bench wal`: the write-ahead log against a raw write + fdatasync loop, measured in
//! the same run on the same filesystem.
//!
//! - Raw baseline: ONE thread, a file preallocated exactly as the WAL preallocates its segments
//!   (zero-filled, synced), and a loop of one `pwrite` of `batch` already-encoded records (the
//!   same bytes the WAL stores: header, payload, padding) followed by one `fdatasync`. No
//!   checksums, no locks, no threads: the cost of the I/O alone.
//! - WAL: `writers` threads each calling `append_durable` in a loop (closed loop), sharing
//!   fdatasyncs by group commit. Its appends/s are divided by the raw loop's appends/s at a batch
//!   size equal to the number of writers.
//! - Recovery: the time `Wal::open` takes to check a log of at least 512 MiB that is in the page
//!   cache (it was just written and opened once).
//!
//! The last line printed is `wal-vs-raw: <ratio>` for 16 writers × 256 B.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use storage_wal::{Options, Wal};

/// Arguments of `cargo xtask bench wal`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory in which to create the temporary benchmark directory (default: the current one,
    /// so the benchmark measures the filesystem you run it on).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A short run: 0.5 s per case and a 128 MiB recovery log (figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Seconds measured per case (default 2.5, or 0.5 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
}

const WRITERS: [usize; 4] = [1, 4, 16, 64];
const SIZES: [usize; 2] = [256, 4096];
const SEGMENT_SIZE: u64 = 64 << 20;
/// Encoded size of a record in the WAL: 24-byte header, payload, zero padding to 8 bytes.
fn stored_size(payload: usize) -> usize {
    (24 + payload).div_ceil(8) * 8
}

struct Row {
    case: String,
    appends_per_sec: f64,
    mb_per_sec: f64,
    fsyncs_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    ratio: Option<f64>,
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let seconds = args.seconds.unwrap_or(if args.quick { 0.5 } else { 2.5 });
    let measure = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_secs_f64((seconds / 5.0).min(0.5));
    let recovery_bytes: u64 = if args.quick { 128 << 20 } else { 512 << 20 };
    let parent = match args.dir {
        Some(d) => d,
        None => std::env::current_dir()?,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".wal-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;

    let cases = WRITERS.len() * SIZES.len();
    let progress = ProgressBar::new((cases * 2 + 1) as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );

    let mut rows = Vec::new();
    let mut headline = None;
    for &size in &SIZES {
        for &writers in &WRITERS {
            progress.set_message(format!(
                "raw loop, {writers} records × {size} B per fdatasync"
            ));
            let raw = raw_loop(
                &tmp.path().join(format!("raw-{writers}-{size}")),
                writers,
                size,
                warmup,
                measure,
            )?;
            progress.inc(1);
            progress.set_message(format!("WAL, {writers} writers × {size} B"));
            let mut wal = wal_case(
                &tmp.path().join(format!("wal-{writers}-{size}")),
                writers,
                size,
                warmup,
                measure,
            )?;
            progress.inc(1);
            let ratio = wal.appends_per_sec / raw.appends_per_sec;
            wal.ratio = Some(ratio);
            if writers == 16 && size == 256 {
                headline = Some(ratio);
            }
            rows.push(raw);
            rows.push(wal);
        }
    }
    progress.set_message(format!("recovery of a {} MiB log", recovery_bytes >> 20));
    let recovery = recovery_case(&tmp.path().join("recovery"), recovery_bytes)?;
    progress.finish_and_clear();

    println!(
        "WAL benchmark in {} ({seconds} s per case after {:.1} s warm-up)",
        tmp.path().display(),
        warmup.as_secs_f64()
    );
    println!("raw = one thread: pwrite of <batch> encoded records into a zero-filled preallocated file, then fdatasync");
    println!("wal = <writers> threads each looping append_durable (group commit); ratio = wal appends/s ÷ raw appends/s at batch = writers");
    println!("latency = one durable append (wal) or one write+fdatasync of the batch (raw)");
    println!();
    println!(
        "{:<24} {:>12} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "case", "appends/s", "MB/s", "fsyncs/s", "p50 µs", "p99 µs", "ratio"
    );
    for r in &rows {
        let ratio = r.ratio.map_or(String::new(), |x| format!("{x:.2}"));
        println!(
            "{:<24} {:>12.0} {:>9.1} {:>10.0} {:>9} {:>9} {:>7}",
            r.case, r.appends_per_sec, r.mb_per_sec, r.fsyncs_per_sec, r.p50_us, r.p99_us, ratio
        );
    }
    println!();
    println!(
        "recovery: opened {:.0} MiB ({} segments, {} records) in {:.3} s = {:.0} MB/s (warm page cache)",
        recovery.bytes as f64 / (1 << 20) as f64,
        recovery.segments,
        recovery.records,
        recovery.elapsed.as_secs_f64(),
        recovery.bytes as f64 / recovery.elapsed.as_secs_f64() / 1e6
    );
    let headline = headline.expect("the 16 × 256 B case always runs");
    println!("wal-vs-raw: {headline:.2}");
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
}

/// The raw baseline: one thread, write + fdatasync of `batch` encoded records per iteration.
fn raw_loop(
    path: &Path,
    batch: usize,
    size: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Row> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    // Preallocate exactly as the WAL does its segments: zero-filled and synced.
    let zeros = vec![0u8; 1 << 20];
    for k in 0..(SEGMENT_SIZE >> 20) {
        file.write_all_at(&zeros, k << 20)?;
    }
    file.sync_data()?;
    let record = stored_size(size);
    let bytes: Vec<u8> = (0..batch * record).map(|k| (k % 251) as u8 + 1).collect();
    let mut offset = 0u64;
    let mut hist = histogram();
    let start = Instant::now();
    let mut measured_from = None;
    let mut loops = 0u64;
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if elapsed >= warmup + measure {
            break;
        }
        if measured_from.is_none() && elapsed >= warmup {
            measured_from = Some(now);
        }
        if offset + bytes.len() as u64 > SEGMENT_SIZE {
            offset = 0; // wrap inside the preallocated file, as a new preallocated segment would
        }
        file.write_all_at(&bytes, offset)?;
        file.sync_data()?;
        offset += bytes.len() as u64;
        if measured_from.is_some() {
            loops += 1;
            hist.saturating_record(now.elapsed().as_micros() as u64);
        }
    }
    let secs = measured_from
        .map_or(0.0, |t| t.elapsed().as_secs_f64())
        .max(1e-9);
    drop(file);
    std::fs::remove_file(path)?;
    let appends = (loops * batch as u64) as f64 / secs;
    Ok(Row {
        case: format!("raw batch {batch:>2} × {size} B"),
        appends_per_sec: appends,
        mb_per_sec: appends * size as f64 / 1e6,
        fsyncs_per_sec: loops as f64 / secs,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        ratio: None,
    })
}

/// The WAL: `writers` threads each looping `append_durable`.
fn wal_case(
    dir: &Path,
    writers: usize,
    size: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Row> {
    let options = Options {
        segment_size: SEGMENT_SIZE,
        ..Options::default()
    };
    let wal = Arc::new(Wal::open(dir, options)?);
    // Let the background preallocation of the next segment finish before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(writers + 1));
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (wal, measuring, stop, count, barrier) = (
                wal.clone(),
                measuring.clone(),
                stop.clone(),
                count.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                let payload: Vec<u8> = (0..size).map(|k| (k + t) as u8 | 1).collect();
                let mut hist = histogram();
                let mut local = 0u64;
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    wal.append_durable(&payload)?;
                    if measuring.load(Ordering::Relaxed) {
                        local += 1;
                        hist.saturating_record(started.elapsed().as_micros() as u64);
                    }
                }
                count.fetch_add(local, Ordering::Relaxed);
                Ok(hist)
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(warmup);
    let syncs_before = wal.stats().syncs;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(measure);
    measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let syncs = wal.stats().syncs - syncs_before;
    stop.store(true, Ordering::Relaxed);
    let mut hist = histogram();
    for t in threads {
        let h = t
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        hist.add(&h).expect("same bounds");
    }
    drop(wal);
    std::fs::remove_dir_all(dir)?;
    let appends = count.load(Ordering::Relaxed) as f64 / secs;
    Ok(Row {
        case: format!("wal {writers:>2} writers × {size} B"),
        appends_per_sec: appends,
        mb_per_sec: appends * size as f64 / 1e6,
        fsyncs_per_sec: syncs as f64 / secs,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        ratio: None,
    })
}

struct Recovery {
    bytes: u64,
    segments: usize,
    records: u64,
    elapsed: Duration,
}

/// Writes a log of at least `target` bytes, opens it once to warm the page cache, then times a
/// second open.
fn recovery_case(dir: &Path, target: u64) -> anyhow::Result<Recovery> {
    let options = Options {
        segment_size: SEGMENT_SIZE,
        ..Options::default()
    };
    {
        let wal = Wal::open(dir, options.clone())?;
        let payload = vec![0x5au8; 4096];
        let batch: Vec<&[u8]> = vec![&payload; 256];
        let mut written = 0u64;
        while written < target {
            wal.append_batch(&batch)?;
            written += (batch.len() * stored_size(payload.len())) as u64;
        }
        wal.close()?;
    }
    drop(Wal::open(dir, options.clone())?);
    let started = Instant::now();
    let wal = Wal::open(dir, options)?;
    let elapsed = started.elapsed();
    let report = wal.recovery_report().clone();
    drop(wal);
    std::fs::remove_dir_all(dir)?;
    Ok(Recovery {
        bytes: report.bytes_scanned,
        segments: report.segments,
        records: report.records,
        elapsed,
    })
}
