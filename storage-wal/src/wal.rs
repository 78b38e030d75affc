//! The log: appends, group commit, reads, truncation, compaction, metadata, and open/recovery.

use std::any::Any;
use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::durable_append::DurableAppend;
use crate::error::{Result, WalError};
use crate::format::{
    encode_record, parse_segment_name, record_size, scan_record, Scan, SegmentHeader, FLAG_BASE,
    FORMAT_VERSION, SEGMENT_HEADER_LEN,
};
use crate::fs::{join, FileSystem, StdFs, WalFile};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::meta;
use crate::options::{Options, RecoveryReport, Stats, TornTailCut};
use crate::segment::{
    create_segment, install_segment, prepare_file, scan_segment, zero_range, Segment, SPARE_FILE,
};
use crate::sync_driver::{self, Led};
use crate::waiters::{GroupCommit, Published, Woken};
use crate::wakers::Next;

const LOCK_FILE: &str = "LOCK";
/// Pending (appended, not yet written) bytes are written to the file once they exceed this.
const PENDING_FLUSH_BYTES: usize = 1 << 20;
/// How many recent truncations are remembered to tell `append_durable` callers their record went.
const TRUNCATION_MEMORY: usize = 64;

type SpareJob = JoinHandle<Result<Arc<dyn WalFile>>>;

struct State {
    /// Segments by increasing sequence; never empty; the last one is active (appended to).
    segments: Vec<Segment>,
    /// First index readable (raised by `compact`; may be inside the first segment).
    first_index: u64,
    /// Index the next append gets.
    next_index: u64,
    /// Encoded records appended but not yet written to the active segment; they start at
    /// `pending_offset`. Invariant: `pending_offset + pending.len() == active.end`.
    pending: Vec<u8>,
    pending_offset: u64,
    /// Every record up to this index is durable.
    durable_index: u64,
    /// A thread is in `fdatasync` outside the lock.
    syncing: bool,
    poisoned: Option<String>,
    next_seq: u64,
    /// Bumped by every truncation; `truncations` remembers (epoch, first removed index).
    epoch: u64,
    truncations: VecDeque<(u64, u64)>,
    /// Group commit: durability waiters since the last fsync started; how many the next fsync
    /// may expect (those the last one covered plus those that queued during it); whether a
    /// leader is waiting for them before it starts the fsync (the writer that completes the
    /// count clears it and leads in its place).
    arrivals: u64,
    expected_waiters: u64,
    gathering: bool,
    /// Gatherings begun, so a gathering leader can tell its own from a later one.
    gatherings: u64,
    last_sync_done: Instant,
    sync_time_estimate: Duration,
    metadata: Option<Vec<u8>>,
    /// The manifest as last stored.
    manifest: Manifest,
    stats: Stats,
    spare: Option<SpareJob>,
}

impl State {
    fn active(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has a segment")
    }

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(WalError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, err: WalError) -> WalError {
        if self.poisoned.is_none() {
            tracing::error!(error = %err, "write-ahead log poisoned");
            self.poisoned = Some(err.to_string());
        }
        err
    }

    /// Writes the pending buffer to the active segment.
    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let active = self.segments.last().expect("a log always has a segment");
        debug_assert_eq!(self.pending_offset + self.pending.len() as u64, active.end);
        if let Err(e) = active.file.write_all_at(&self.pending, self.pending_offset) {
            let err = WalError::io("write", &active.path, e);
            return Err(self.poison(err));
        }
        self.pending_offset += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    fn segment_of(&self, index: u64) -> usize {
        self.segments.partition_point(|s| s.first_index() <= index) - 1
    }

    /// Durably replaces the manifest with `manifest` (poisoning the log if that fails).
    fn store_manifest(
        &mut self,
        fs: &dyn FileSystem,
        dir: &Path,
        manifest: Manifest,
    ) -> Result<()> {
        if manifest == self.manifest {
            return Ok(());
        }
        if let Err(e) = manifest.store(fs, dir) {
            return Err(self.poison(e));
        }
        self.manifest = manifest;
        Ok(())
    }
}

/// A segmented, checksummed write-ahead log. Share it between threads with `Arc<Wal>`; every
/// method takes `&self` and blocks. See the [crate docs](crate) for an overview.
pub struct Wal {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    options: Options,
    /// Shared with the sync driver thread (`sync_driver.rs`), once async appends started it.
    state: Arc<Mutex<State>>,
    /// Serialises metadata replacements, whose file I/O runs outside `state` so appends and
    /// group commits are not held up by it.
    meta_writer: Mutex<()>,
    /// What group-commit waiters read without the lock, the claim to lead the next fsync, and
    /// the bell they sleep on.
    group: Arc<GroupCommit>,
    /// The sync driver, started by the first [`append_durable_async`](Wal::append_durable_async).
    driver: Mutex<Option<JoinHandle<()>>>,
    report: RecoveryReport,
    _lock: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("first_index", &st.first_index)
            .field("next_index", &st.next_index)
            .field("durable_index", &st.durable_index)
            .field("segments", &st.segments.len())
            .finish()
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |e| WalError::io(op, path, e)
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` on the real filesystem, recovering it.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Wal> {
        Self::open_with_fs(Arc::new(StdFs), dir, options)
    }

    /// Opens the log in `dir` through the given filesystem (for instance a [`MemFs`](crate::MemFs)).
    pub fn open_with_fs(
        fs: Arc<dyn FileSystem>,
        dir: impl AsRef<Path>,
        options: Options,
    ) -> Result<Wal> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs.create_dir_all(&dir)
            .map_err(io_err("create directory", &dir))?;
        let lock_path = join(&dir, LOCK_FILE);
        let lock = fs.lock(&lock_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                WalError::Locked { dir: dir.clone() }
            } else {
                WalError::io("lock", &lock_path, e)
            }
        })?;
        let (segments, report, metadata, manifest) = recover(fs.as_ref(), &dir, &options)?;
        let first_index = segments[0].first_index();
        let active = segments
            .last()
            .expect("recover returns at least one segment");
        let next_index = active.next_index();
        let pending_offset = active.end;
        let next_seq = active.header.seq + 1;
        let state = State {
            segments,
            first_index,
            next_index,
            pending: Vec::new(),
            pending_offset,
            durable_index: next_index - 1,
            syncing: false,
            poisoned: None,
            next_seq,
            epoch: 0,
            truncations: VecDeque::new(),
            arrivals: 0,
            expected_waiters: 0,
            gathering: false,
            gatherings: 0,
            last_sync_done: Instant::now(),
            sync_time_estimate: Duration::ZERO,
            metadata,
            manifest,
            stats: Stats::default(),
            spare: None,
        };
        let wal = Wal {
            fs,
            dir,
            options,
            state: Arc::new(Mutex::new(state)),
            meta_writer: Mutex::new(()),
            group: Arc::default(),
            driver: Mutex::new(None),
            report,
            _lock: lock,
        };
        {
            let mut st = wal.state.lock();
            wal.publish(&st);
            wal.start_spare(&mut st);
        }
        tracing::debug!(dir = %wal.dir.display(), first_index, next_index, "write-ahead log opened");
        Ok(wal)
    }

    /// What open found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// First index held (`next_index()` when the log is empty). After a reopen it may be lower than
    /// the last `compact` point, never higher: compaction deletes whole segments only.
    pub fn first_index(&self) -> u64 {
        self.state.lock().first_index
    }

    /// Last index held; `first_index() - 1` when the log is empty (Raft's convention).
    pub fn last_index(&self) -> u64 {
        self.state.lock().next_index - 1
    }

    /// The index the next append gets.
    pub fn next_index(&self) -> u64 {
        self.state.lock().next_index
    }

    /// Whether the log holds no records.
    pub fn is_empty(&self) -> bool {
        let st = self.state.lock();
        st.first_index == st.next_index
    }

    /// Every record up to this index is durable.
    pub fn durable_index(&self) -> u64 {
        self.state.lock().durable_index
    }

    /// Counters since open.
    pub fn stats(&self) -> Stats {
        self.state.lock().stats
    }

    /// Appends one record and returns its index. It is **not durable** until [`sync`](Self::sync)
    /// or [`wait_durable`](Self::wait_durable) covers it; it can be read back at once.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        let mut st = self.state.lock();
        Ok(self.append_locked(&mut st, &[payload])?.start)
    }

    /// Appends records in order, all or none, and returns their index range (not yet durable).
    pub fn append_batch<P: AsRef<[u8]>>(
        &self,
        payloads: impl IntoIterator<Item = P>,
    ) -> Result<Range<u64>> {
        let payloads: Vec<P> = payloads.into_iter().collect();
        let mut st = self.state.lock();
        self.append_locked(&mut st, &payloads)
    }

    /// Like [`append_batch`](Self::append_batch), but fails with [`WalError::IndexMismatch`]
    /// unless the first record would get `first_index` — for callers, like a Raft log, that
    /// know which index each record must have.
    pub fn append_batch_at<P: AsRef<[u8]>>(
        &self,
        first_index: u64,
        payloads: impl IntoIterator<Item = P>,
    ) -> Result<Range<u64>> {
        let payloads: Vec<P> = payloads.into_iter().collect();
        let mut st = self.state.lock();
        if st.next_index != first_index {
            return Err(WalError::IndexMismatch {
                expected: st.next_index,
                given: first_index,
            });
        }
        self.append_locked(&mut st, &payloads)
    }

    /// Appends one record and returns once it is durable, sharing the fsync with concurrent
    /// writers (group commit). Fails with [`WalError::Truncated`] if a concurrent `truncate_from`
    /// removed the record first.
    pub fn append_durable(&self, payload: &[u8]) -> Result<u64> {
        let mut st = self.state.lock();
        let index = self.append_locked(&mut st, &[payload])?.start;
        let epoch = st.epoch;
        self.wait_inner(st, index, Some(epoch), true)?;
        Ok(index)
    }

    /// Appends one record now and returns a future that resolves to its index once it is
    /// durable — the async counterpart of [`append_durable`](Self::append_durable), for tasks on
    /// any executor (the crate depends on none). Records get their indexes in the order of these
    /// calls, whenever the futures are polled.
    ///
    /// No thread waits per append: the future leaves its [`Waker`](std::task::Waker) with the
    /// group commit, and the ring after each fsync wakes the tasks it covers. The fsyncs are led
    /// by whichever thread waits in [`sync`](Self::sync) or [`append_durable`](Self::append_durable),
    /// or else by the log's sync driver, a background thread the first call starts (it gathers
    /// the tasks it released, as a gathering leader does, and stops when the log is dropped).
    ///
    /// The future fails as `append_durable` does: with the append's own error, with the fsync's
    /// error once the log is poisoned ([`WalError::Poisoned`] naming it), or with
    /// [`WalError::Truncated`] if a concurrent `truncate_from` removed the record first. Dropping
    /// it does not undo the append. Like any future, it must not be polled after it completed.
    pub fn append_durable_async(&self, payload: &[u8]) -> DurableAppend<'_> {
        let appended = self.start_driver().and_then(|()| {
            let mut st = self.state.lock();
            let index = self.append_locked(&mut st, &[payload])?.start;
            Ok((index, st.epoch))
        });
        DurableAppend::new(self, appended)
    }

    /// Starts the sync driver unless it runs.
    fn start_driver(&self) -> Result<()> {
        let mut driver = self.driver.lock();
        if driver.is_none() {
            let state = self.state.clone();
            let group = self.group.clone();
            let lead_group = self.group.clone();
            let handle =
                sync_driver::spawn(group, self.options.max_group_commit_delay, move || {
                    lead_for_async(&state, &lead_group, true, false)
                })
                .map_err(io_err("start the sync thread for", &self.dir))?;
            *driver = Some(handle);
        }
        Ok(())
    }

    /// For [`DurableAppend`]: the outcome, if the wait for record `index` (appended in truncation
    /// `epoch`) is over. A truncation that left the record in place moves `epoch` to the current
    /// one, so later rings do not wake the future for it again.
    pub(crate) fn durable_outcome(&self, index: u64, epoch: &mut u64) -> Option<Result<u64>> {
        match self.group.look(index, *epoch) {
            Published::Durable => Some(Ok(index)),
            Published::Pending => None,
            Published::Recheck => {
                let st = self.state.lock();
                let outcome = Self::wait_outcome(&st, index, Some(*epoch));
                if outcome.is_none() {
                    *epoch = st.epoch;
                }
                outcome.map(|r| r.map(|_| index))
            }
        }
    }

    /// For [`DurableAppend`]: leaves `waker` to be woken when record `index` may be durable; if
    /// this arrival completes the group (and `Options::async_inline_fsync` allows), leads the
    /// fsync here and now, or has the sync driver lead it if another thread leads one already.
    pub(crate) fn register_waker(
        &self,
        index: u64,
        epoch: u64,
        waker: &std::task::Waker,
        first: bool,
    ) {
        let wakers = self.group.wakers();
        let next = wakers.register(index, epoch, waker, first, self.options.async_inline_fsync);
        if next == Next::LeadInline {
            match lead_for_async(&self.state, &self.group, false, true) {
                Led::Synced => {}
                Led::Nothing => self.group.wake_all_async(),
                // Another thread's fsync may have begun before this record was written: make
                // sure one follows.
                Led::Waited => wakers.kick(),
            }
        }
    }

    /// Makes every record appended so far durable with one `fdatasync` (or by joining one in
    /// progress) and returns the durable index.
    pub fn sync(&self) -> Result<u64> {
        let st = self.state.lock();
        let target = st.next_index - 1;
        self.wait_inner(st, target, None, false)
    }

    /// Blocks until record `index` is durable, joining other writers' group commit, and returns
    /// the durable index. If a concurrent [`truncate_from`](Self::truncate_from) removes `index`
    /// meanwhile, it returns once the rest of the log is durable, with a durable index below
    /// `index`.
    pub fn wait_durable(&self, index: u64) -> Result<u64> {
        let st = self.state.lock();
        if index >= st.next_index {
            return Err(WalError::OutOfRange {
                index,
                first: st.first_index,
                last: st.next_index - 1,
            });
        }
        self.wait_inner(st, index, None, true)
    }

    /// Whether a wait for `index` (appended in truncation `epoch`, if given) is over, and how.
    fn wait_outcome(st: &State, index: u64, epoch: Option<u64>) -> Option<Result<u64>> {
        if let Err(e) = st.check_poisoned() {
            return Some(Err(e));
        }
        if let Some(epoch) = epoch {
            if truncated_since(st, epoch, index) {
                return Some(Err(WalError::Truncated { index }));
            }
        }
        // A record a truncation removed (possible only without `epoch`) waits for the rest.
        if st.durable_index >= index.min(st.next_index - 1) {
            return Some(Ok(st.durable_index));
        }
        None
    }

    /// Waits until `index` is durable: leading the next fsync if no other thread leads one, else
    /// sleeping on the bell (see `waiters.rs`). `writer` marks a closed-loop writer: it counts
    /// as an arrival for group-commit gathering, and may gather others when it leads.
    fn wait_inner<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        index: u64,
        epoch: Option<u64>,
        writer: bool,
    ) -> Result<u64> {
        let arrived = Instant::now();
        let mut may_gather = writer;
        let mut leading = false;
        if writer {
            st.arrivals += 1;
            if st.gathering && st.arrivals >= st.expected_waiters {
                // This arrival completes the group a leader is gathering: lead in its place,
                // now, rather than wake it to start the fsync (the claim stays held; the
                // gathering thread finds `gathering` cleared and waits as any writer).
                st.gathering = false;
                leading = true;
                may_gather = false;
            }
        }
        // An fsync this thread ran whose sleepers are not rung yet (rung once the lock is free).
        let mut ring = false;
        loop {
            if let Some(outcome) = Self::wait_outcome(&st, index, epoch) {
                if leading {
                    self.group.resign();
                    ring = true;
                }
                drop(st);
                if ring {
                    self.group.ring();
                }
                return outcome;
            }
            if ring {
                MutexGuard::unlocked(&mut st, || self.group.ring());
                ring = false;
                continue;
            }
            if !leading && !self.group.try_lead() {
                let seen = self.group.generation();
                drop(st);
                match self.group.sleep(index, epoch, seen) {
                    Woken::Durable(durable) => return Ok(durable),
                    Woken::Lead => leading = true,
                    Woken::Recheck => {}
                }
                st = self.state.lock();
                continue;
            }
            leading = true;
            // This thread leads the next fsync. Closed-loop writers released by the previous
            // fsync are on their way back: without waiting, the writers split into two groups
            // whose fsyncs alternate, each covering half of them. So wait until as many writers
            // wait as were active around the last fsync, bounded by the options and by what an
            // fsync costs (a writer that stopped costs at most that much once).
            if may_gather && st.arrivals < st.expected_waiters {
                may_gather = false;
                let delay = self
                    .options
                    .max_group_commit_delay
                    .min(st.sync_time_estimate);
                let deadline = arrived.max(st.last_sync_done) + delay;
                if Instant::now() < deadline {
                    // Sleep on the bell, not on a condition variable: the writer that completes
                    // the group leads the fsync itself, so no wake-up stands between the last
                    // arrival and the disk. A ring (the log changed) or the deadline brings this
                    // thread back; if no one took over, it leads.
                    st.gathering = true;
                    st.gatherings += 1;
                    let mine = st.gatherings;
                    loop {
                        let seen = self.group.generation();
                        MutexGuard::unlocked(&mut st, || {
                            self.group.sleep_gathering(seen, deadline)
                        });
                        // Rung for something else (or woken spuriously) with the group still
                        // short: gather on.
                        let gathering_on = st.gathering
                            && st.gatherings == mine
                            && st.arrivals < st.expected_waiters
                            && st.poisoned.is_none()
                            && st.durable_index < index
                            && Instant::now() < deadline;
                        if !gathering_on {
                            break;
                        }
                    }
                    if st.gathering && st.gatherings == mine {
                        st.gathering = false;
                    } else {
                        // A writer took over (and perhaps finished and another leader began
                        // gathering since): this thread waits as any other.
                        leading = false;
                    }
                    continue;
                }
            }
            // Resigns the leadership whatever happens; the sleepers are rung next time round.
            let result = sync_locked(&self.group, &mut st);
            leading = false;
            ring = true;
            if let Err(e) = result {
                drop(st);
                self.group.ring();
                return Err(e);
            }
        }
    }

    /// Publishes what waiters may read without the lock (after every change of the durable
    /// index, the truncation epoch or poisoning, before the ring that announces it).
    fn publish(&self, st: &State) {
        publish(&self.group, st);
    }

    /// Wakes every thread waiting for durability or gathering a group commit, to look again.
    fn wake_all(&self, st: &mut State) {
        self.publish(st);
        self.group.ring();
    }

    /// Waits (with the lock released) until no fsync runs outside the lock.
    fn wait_no_fsync(&self, st: &mut MutexGuard<'_, State>) {
        while st.syncing {
            let seen = self.group.generation();
            MutexGuard::unlocked(st, || self.group.wait_for_ring(seen));
        }
    }

    fn append_locked<P: AsRef<[u8]>>(&self, st: &mut State, payloads: &[P]) -> Result<Range<u64>> {
        st.check_poisoned()?;
        let max = self.options.max_record_size;
        if let Some(p) = payloads.iter().find(|p| p.as_ref().len() > max as usize) {
            return Err(WalError::TooLarge {
                what: "record",
                len: p.as_ref().len() as u64,
                max: u64::from(max),
            });
        }
        let start = st.next_index;
        if start.checked_add(payloads.len() as u64).is_none() {
            return Err(WalError::IndexSpaceExhausted { next_index: start });
        }
        for payload in payloads {
            let payload = payload.as_ref();
            let size = record_size(payload.len());
            let active = st.active();
            if active.end + size > active.capacity {
                self.roll(st, size)?;
            }
            let index = st.next_index;
            let State {
                segments,
                pending,
                durable_index,
                ..
            } = &mut *st;
            let active = segments.last_mut().expect("a log always has a segment");
            encode_record(pending, active.seed, index, *durable_index, payload);
            active.offsets.push(active.end);
            active.end += size;
            st.next_index += 1;
            st.stats.appended_records += 1;
            st.stats.appended_bytes += payload.len() as u64;
            if st.pending.len() >= PENDING_FLUSH_BYTES {
                st.flush_pending()?;
            }
        }
        Ok(start..st.next_index)
    }

    /// Seals the active segment (writes and syncs it) and starts a new one with room for a record
    /// of `size` bytes.
    fn roll(&self, st: &mut State, size: u64) -> Result<()> {
        st.flush_pending()?;
        let active = st.segments.last().expect("a log always has a segment");
        if let Err(e) = active.file.sync_data() {
            let err = WalError::io("fdatasync", &active.path, e);
            return Err(st.poison(err));
        }
        st.stats.syncs += 1;
        // Every record so far is in sealed, synced segments now.
        st.durable_index = st.next_index - 1;
        self.wake_all(st);
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            seq: st.next_seq,
            first_index: st.next_index,
            flags: 0,
        };
        let capacity = self.options.segment_size.max(SEGMENT_HEADER_LEN + size);
        let segment = match self.new_segment(st, header, capacity) {
            Ok(s) => s,
            Err(e) => return Err(st.poison(e)),
        };
        st.next_seq += 1;
        st.pending_offset = segment.end;
        let manifest = Manifest {
            last: segment.id(),
            last_capacity: segment.capacity,
            durable_index: st.durable_index,
            ..st.manifest
        };
        st.segments.push(segment);
        // Before any record of the new segment can be reported durable, the manifest says it exists.
        st.store_manifest(self.fs.as_ref(), &self.dir, manifest)?;
        self.start_spare(st);
        Ok(())
    }

    /// A new segment: from the spare file prepared in the background when it fits, else created now.
    fn new_segment(&self, st: &mut State, header: SegmentHeader, capacity: u64) -> Result<Segment> {
        if capacity == self.options.segment_size {
            if let Some(job) = st.spare.take() {
                let spare = join(&self.dir, SPARE_FILE);
                let prepared = job.join().unwrap_or_else(|_| {
                    Err(WalError::io(
                        "prepare",
                        &spare,
                        std::io::Error::other("preparing thread panicked"),
                    ))
                });
                // A failed preparation is not fatal: fall back to creating the segment here.
                if let Ok(file) = prepared {
                    return install_segment(
                        self.fs.as_ref(),
                        &self.dir,
                        &spare,
                        file,
                        capacity,
                        header,
                    );
                }
            }
        }
        create_segment(self.fs.as_ref(), &self.dir, capacity, header)
    }

    /// Starts preparing (zero-filling) the next segment's file on a background thread.
    fn start_spare(&self, st: &mut State) {
        if st.spare.is_some() {
            return;
        }
        let fs = self.fs.clone();
        let path = join(&self.dir, SPARE_FILE);
        let capacity = self.options.segment_size;
        let job = std::thread::Builder::new()
            .name("wal-prealloc".into())
            .spawn(move || prepare_file(fs.as_ref(), &path, capacity));
        st.spare = job.ok();
    }

    /// Reads record `index` (durable or not), verifying its checksums.
    pub fn read(&self, index: u64) -> Result<Vec<u8>> {
        // No record has index u64::MAX (see `WalError::IndexSpaceExhausted`).
        let Some(end) = index.checked_add(1) else {
            let st = self.state.lock();
            return Err(WalError::OutOfRange {
                index,
                first: st.first_index,
                last: st.next_index - 1,
            });
        };
        let mut records = self.read_range(index..end, 0)?;
        Ok(records
            .pop()
            .expect("read_range returns at least one record for a non-empty range"))
    }

    /// Reads records `range` in order, stopping early once their stored size (payload plus 24-31
    /// bytes of framing each) would exceed `max_bytes`; at least one record is returned for a
    /// non-empty range. Fails with [`WalError::OutOfRange`] unless the range lies within the log.
    ///
    /// The file reads happen without the log's lock, so readers do not hold up appends and group
    /// commits. A read that a `truncate_from` overlapped is done again (the truncated bytes may
    /// have been rewritten meanwhile), the last time under the lock.
    pub fn read_range(&self, range: Range<u64>, max_bytes: u64) -> Result<Vec<Vec<u8>>> {
        const UNLOCKED_ATTEMPTS: usize = 3;
        for _ in 0..UNLOCKED_ATTEMPTS {
            let (plan, epoch) = {
                let mut st = self.state.lock();
                (self.plan_read(&mut st, &range, max_bytes)?, st.epoch)
            };
            let result = read_planned(&plan);
            if self.state.lock().epoch == epoch {
                return result;
            }
        }
        let mut st = self.state.lock();
        let plan = self.plan_read(&mut st, &range, max_bytes)?;
        read_planned(&plan)
    }

    /// Checks `range`, writes pending records, and chooses the stored spans to read.
    fn plan_read(
        &self,
        st: &mut State,
        range: &Range<u64>,
        max_bytes: u64,
    ) -> Result<Vec<PlannedRead>> {
        st.check_poisoned()?;
        if range.start < st.first_index || range.end > st.next_index || range.start > range.end {
            let index = if range.start < st.first_index {
                range.start
            } else {
                range.end.saturating_sub(1)
            };
            return Err(WalError::OutOfRange {
                index,
                first: st.first_index,
                last: st.next_index - 1,
            });
        }
        st.flush_pending()?;
        let mut plan = Vec::new();
        let mut budget_used = 0u64;
        let mut index = range.start;
        while index < range.end {
            let segment = &st.segments[st.segment_of(index)];
            let seg_end = range.end.min(segment.next_index());
            let (span_start, _) = segment.span(index);
            let mut last = index;
            let mut span_end = span_start;
            while last < seg_end {
                let (_, end) = segment.span(last);
                if (!plan.is_empty() || last > index)
                    && budget_used + (end - span_start) > max_bytes
                {
                    break;
                }
                span_end = end;
                last += 1;
            }
            plan.push(PlannedRead {
                file: segment.file.clone(),
                path: segment.path.clone(),
                seed: segment.seed,
                indexes: index..last,
                span: span_start..span_end,
            });
            budget_used += span_end - span_start;
            index = last;
            if last < seg_end {
                break; // byte limit reached
            }
        }
        Ok(plan)
    }

    /// Removes every record from `index` on (a conflicting suffix of a consensus log), durably,
    /// before returning; the next append gets `index`. No-op if `index` is past the end; fails with
    /// [`WalError::OutOfRange`] below `first_index()`.
    pub fn truncate_from(&self, index: u64) -> Result<()> {
        let mut st = self.state.lock();
        st.check_poisoned()?;
        if index < st.first_index {
            return Err(WalError::OutOfRange {
                index,
                first: st.first_index,
                last: st.next_index - 1,
            });
        }
        if index >= st.next_index {
            return Ok(());
        }
        self.wait_no_fsync(&mut st);
        let result = self.truncate_locked(&mut st, index);
        st.epoch += 1;
        let epoch = st.epoch;
        st.truncations.push_back((epoch, index));
        if st.truncations.len() > TRUNCATION_MEMORY {
            st.truncations.pop_front();
        }
        self.wake_all(&mut st);
        result.map_err(|e| st.poison(e))
    }

    fn truncate_locked(&self, st: &mut State, index: u64) -> Result<()> {
        st.flush_pending()?;
        // First the manifest stops promising what goes: the segments removed and the records cut.
        let keep = st
            .segments
            .iter()
            .rposition(|s| s.first_index() < index)
            .unwrap_or(0);
        let kept = &st.segments[keep];
        let manifest = Manifest {
            last: kept.id(),
            last_capacity: kept.capacity,
            durable_index: st.manifest.durable_index.min(index - 1),
            ..st.manifest
        };
        st.store_manifest(self.fs.as_ref(), &self.dir, manifest)?;
        // Whole segments past the cut go first, newest first: a crash part-way leaves a prefix.
        let mut removed = false;
        while st.segments.len() > 1 && st.active().first_index() >= index {
            let segment = st.segments.pop().expect("checked len");
            self.fs
                .remove(&segment.path)
                .map_err(io_err("remove", &segment.path))?;
            removed = true;
        }
        if removed {
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_err("fsync directory", &self.dir))?;
        }
        let active = st.active();
        if index < active.next_index() {
            let (cut, _) = active.span(index);
            zero_range(active.file.as_ref(), cut, active.end)
                .map_err(io_err("write", &active.path))?;
            active
                .offsets
                .truncate((index - active.first_index()) as usize);
            active.end = cut;
        }
        active
            .file
            .sync_data()
            .map_err(io_err("fdatasync", &active.path))?;
        let end = active.end;
        st.stats.syncs += 1;
        st.pending_offset = end;
        st.next_index = index;
        st.durable_index = index - 1;
        Ok(())
    }

    /// Drops every record below `index` (after a snapshot covers them): whole segments whose
    /// records all lie below it are deleted. If `index` is past the end of the log, the log is
    /// reset to start, empty, at `index`.
    pub fn compact(&self, index: u64) -> Result<()> {
        let mut st = self.state.lock();
        st.check_poisoned()?;
        if index <= st.first_index {
            return Ok(());
        }
        if index > st.next_index {
            self.wait_no_fsync(&mut st);
            let result = self.reset_locked(&mut st, index);
            self.wake_all(&mut st);
            return result.map_err(|e| st.poison(e));
        }
        st.first_index = index;
        let first_kept = st.segment_of(index);
        if first_kept > 0 {
            // The manifest first, so a crash part-way leaves segments it calls obsolete.
            let manifest = Manifest {
                first: st.segments[first_kept].id(),
                ..st.manifest
            };
            st.store_manifest(self.fs.as_ref(), &self.dir, manifest)?;
        }
        let mut removed = false;
        while st.segments.len() > 1 && st.segments[1].first_index() <= index {
            let segment = st.segments.remove(0);
            // Oldest first: a crash part-way leaves a contiguous log.
            self.fs
                .remove(&segment.path)
                .map_err(io_err("remove", &segment.path))
                .map_err(|e| st.poison(e))?;
            removed = true;
        }
        if removed {
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_err("fsync directory", &self.dir))
                .map_err(|e| st.poison(e))?;
        }
        Ok(())
    }

    fn reset_locked(&self, st: &mut State, index: u64) -> Result<()> {
        st.flush_pending()?;
        // The new segment is marked BASE: if a crash interrupts the deletions below, open deletes
        // the older segments it finds.
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            seq: st.next_seq,
            first_index: index,
            flags: FLAG_BASE,
        };
        let segment = self.new_segment(st, header, self.options.segment_size)?;
        st.next_seq += 1;
        let manifest = Manifest {
            first: segment.id(),
            last: segment.id(),
            last_capacity: segment.capacity,
            durable_index: index - 1,
            ..st.manifest
        };
        st.store_manifest(self.fs.as_ref(), &self.dir, manifest)?;
        st.pending.clear();
        st.pending_offset = segment.end;
        let old = std::mem::replace(&mut st.segments, vec![segment]);
        for segment in &old {
            self.fs
                .remove(&segment.path)
                .map_err(io_err("remove", &segment.path))?;
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err("fsync directory", &self.dir))?;
        st.first_index = index;
        st.next_index = index;
        st.durable_index = index - 1;
        self.start_spare(st);
        Ok(())
    }

    /// The metadata record (Raft hard state or any caller bytes), if one was ever stored.
    pub fn metadata(&self) -> Option<Vec<u8>> {
        self.state.lock().metadata.clone()
    }

    /// Durably and atomically replaces the metadata record (at most 1 MiB): after a crash, either
    /// the old or the new bytes are found, never a mixture.
    ///
    /// Appends and syncs from other threads proceed while the metadata file is written.
    pub fn set_metadata(&self, bytes: &[u8]) -> Result<()> {
        let _writer = self.meta_writer.lock();
        self.state.lock().check_poisoned()?;
        let stored = meta::store(self.fs.as_ref(), &self.dir, bytes);
        let mut st = self.state.lock();
        match stored {
            Ok(()) => {
                st.check_poisoned()?;
                st.metadata = Some(bytes.to_vec());
                // Once: from now on a missing metadata file is an error at open.
                let manifest = Manifest {
                    has_metadata: true,
                    ..st.manifest
                };
                st.store_manifest(self.fs.as_ref(), &self.dir, manifest)
            }
            Err(e @ WalError::TooLarge { .. }) => Err(e),
            Err(e) => Err(st.poison(e)),
        }
    }

    /// Syncs everything and closes the log, reporting any error (dropping it does not sync).
    pub fn close(self) -> Result<()> {
        self.sync()?;
        Ok(())
    }
}

/// One attempt by the sync driver to lead an fsync for the async waiters (see `sync_driver.rs`).
/// With `wait`, if another thread leads, waits for its ring; `inline` tells who leads (a future
/// in `poll`, or the driver), for the stats.
fn lead_for_async(state: &Mutex<State>, group: &GroupCommit, wait: bool, inline: bool) -> Led {
    let mut st = state.lock();
    if st.poisoned.is_some() || st.durable_index >= st.next_index - 1 {
        return Led::Nothing;
    }
    if !group.try_lead() {
        // Another thread leads: its ring wakes the async waiters it covers.
        if wait {
            let seen = group.generation();
            drop(st);
            group.wait_for_ring(seen);
        }
        return Led::Waited;
    }
    let started = Instant::now();
    if inline {
        st.stats.async_inline_syncs += 1;
    } else {
        st.stats.async_driver_syncs += 1;
    }
    // A failure poisons the log; the ring below then wakes every async waiter to learn it.
    let _ = sync_locked(group, &mut st);
    let took = started.elapsed();
    drop(st);
    group.ring_as(Some((took, inline)));
    Led::Synced
}

/// Publishes what waiters may read without the lock (after every change of the durable index,
/// the truncation epoch or poisoning, before the ring that announces it).
fn publish(group: &GroupCommit, st: &State) {
    group.publish(st.durable_index, st.epoch, st.poisoned.is_some());
}

/// Run by the leader: writes pending records, then fsyncs the active segment with the lock
/// released, publishes the new durable index and resigns the leadership. The caller rings
/// the bell, once it has released the lock.
fn sync_locked(group: &GroupCommit, st: &mut MutexGuard<'_, State>) -> Result<()> {
    debug_assert!(!st.syncing);
    let result = fsync_pending(st);
    publish(group, st);
    group.resign();
    result
}

fn fsync_pending(st: &mut MutexGuard<'_, State>) -> Result<()> {
    st.flush_pending()?;
    let target = st.next_index - 1;
    let covered_waiters = st.arrivals;
    st.arrivals = 0;
    if target <= st.durable_index {
        return Ok(());
    }
    let active = st.segments.last().expect("a log always has a segment");
    let (file, path) = (active.file.clone(), active.path.clone());
    st.syncing = true;
    let started = Instant::now();
    // Everything up to `target` is in this file: older segments were synced when rolled.
    let result = MutexGuard::unlocked(st, || file.sync_data());
    let now = Instant::now();
    st.syncing = false;
    st.stats.syncs += 1;
    st.last_sync_done = now;
    st.sync_time_estimate = (st.sync_time_estimate * 7 + (now - started)) / 8;
    st.stats.sync_busy_micros += (now - started).as_micros() as u64;
    // The writers this fsync releases plus those that queued meanwhile: how many the next
    // leader may expect.
    st.expected_waiters = covered_waiters + st.arrivals;
    match result {
        Ok(()) => {
            st.durable_index = st.durable_index.max(target);
            Ok(())
        }
        Err(e) => Err(st.poison(WalError::io("fdatasync", &path, e))),
    }
}

/// Records to read from one segment: their indexes and the stored span they occupy.
struct PlannedRead {
    file: Arc<dyn WalFile>,
    path: PathBuf,
    seed: u32,
    indexes: Range<u64>,
    span: Range<u64>,
}

/// Reads and checks planned records.
fn read_planned(plan: &[PlannedRead]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for part in plan {
        let mut buf = vec![0u8; (part.span.end - part.span.start) as usize];
        part.file
            .read_exact_at(&mut buf, part.span.start)
            .map_err(io_err("read", &part.path))?;
        let mut pos = 0usize;
        for i in part.indexes.clone() {
            let at = part.span.start + pos as u64;
            match scan_record(
                &buf,
                part.span.start,
                pos,
                part.seed,
                Some(i),
                u64::from(u32::MAX),
                true,
            ) {
                Scan::Record {
                    payload_start,
                    len,
                    next,
                    ..
                } => {
                    out.push(buf[payload_start..payload_start + len].to_vec());
                    pos = next;
                }
                Scan::Corrupt(reason) => return Err(WalError::corrupt(&part.path, at, reason)),
                Scan::End | Scan::Torn | Scan::NeedMore { .. } => {
                    return Err(WalError::corrupt(
                        &part.path,
                        at,
                        "record missing or incomplete on read",
                    ));
                }
            }
        }
    }
    Ok(out)
}

fn truncated_since(st: &State, epoch: u64, index: u64) -> bool {
    if st.epoch == epoch {
        return false;
    }
    match st.truncations.front() {
        // Older truncations were forgotten: assume the worst.
        Some(&(oldest, _)) if oldest > epoch + 1 => true,
        _ => st
            .truncations
            .iter()
            .any(|&(e, from)| e > epoch && index >= from),
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // No future borrows the log any more; the driver finishes the fsync it may be leading.
        self.group.wakers().shutdown();
        if let Some(driver) = self.driver.get_mut().take() {
            let _ = driver.join();
        }
        let mut st = self.state.lock();
        if st.poisoned.is_none() {
            // Hand appended records to the OS (not durable), and record how far the log is
            // durable so that recovery can tell if any of it goes missing; errors have no one
            // to go to.
            let _ = st.flush_pending();
            let manifest = Manifest {
                durable_index: st.durable_index,
                ..st.manifest
            };
            let _ = st.store_manifest(self.fs.as_ref(), &self.dir, manifest);
        }
        if let Some(job) = st.spare.take() {
            let _ = job.join();
        }
    }
}

/// What open recovered: segments, the report, the metadata record, the manifest now stored.
type Recovered = (Vec<Segment>, RecoveryReport, Option<Vec<u8>>, Manifest);

/// Opens and checks every segment against the manifest, repairs a torn tail, loads the metadata
/// record, and stores the manifest of what is now durable.
fn recover(fs: &dyn FileSystem, dir: &Path, options: &Options) -> Result<Recovered> {
    let mut report = RecoveryReport::default();
    let manifest = Manifest::load(fs, dir)?;
    let mut names = fs.list(dir).map_err(io_err("list", dir))?;
    names.sort();
    // Temporary files belong to operations a crash interrupted; nothing refers to them.
    for name in names.iter().filter(|n| n.ends_with(".tmp")) {
        let path = join(dir, name);
        fs.remove(&path).map_err(io_err("remove", &path))?;
        report.removed_files.push(path);
    }
    let mut found: Vec<(u64, u64, PathBuf)> = names
        .iter()
        .filter_map(|n| parse_segment_name(n).map(|(seq, first)| (seq, first, join(dir, n))))
        .collect();
    found.sort();
    let mut segments = Vec::with_capacity(found.len());
    for (seq, first, path) in found {
        segments.push(open_segment(fs, seq, first, path, options)?);
    }
    // The oldest segment still needed: after the newest BASE segment (a compaction past the end)
    // and the manifest's first (a compaction that recorded its new first segment, then crashed).
    let base = segments
        .iter()
        .rev()
        .find(|s| s.header.flags & FLAG_BASE != 0)
        .map(|s| s.header.seq);
    let mut oldest_needed = base.unwrap_or(0);
    if let Some(m) = &manifest {
        if m.first.seq >= oldest_needed {
            oldest_needed = m.first.seq;
            if !segments.iter().any(|s| s.id() == m.first) {
                return Err(WalError::MissingFile {
                    path: join(dir, &m.first.file_name()),
                    reason: "the manifest says the log's first segment is this one".into(),
                });
            }
        }
        let newest = segments.last().map_or(0, |s| s.header.seq);
        if m.last.seq >= oldest_needed && !segments.iter().any(|s| s.id() == m.last) {
            return Err(WalError::MissingFile {
                path: join(dir, &m.last.file_name()),
                reason: format!(
                    "the manifest says the log has segments up to this one{}",
                    if newest > m.last.seq {
                        ""
                    } else {
                        " (its last)"
                    }
                ),
            });
        }
        if m.has_metadata && !meta::exists(fs, dir)? {
            return Err(WalError::MissingFile {
                path: join(dir, meta::META_FILE),
                reason: "the manifest says metadata was stored".into(),
            });
        }
    }
    let obsolete = segments.partition_point(|s| s.header.seq < oldest_needed);
    for old in segments.drain(..obsolete) {
        fs.remove(&old.path).map_err(io_err("remove", &old.path))?;
        report.removed_files.push(old.path);
    }
    if !report.removed_files.is_empty() {
        fs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    if segments.is_empty() {
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            seq: 1,
            first_index: options.initial_index,
            flags: FLAG_BASE,
        };
        segments.push(create_segment(fs, dir, options.segment_size, header)?);
    }
    let mut buf = Vec::new();
    let count = segments.len();
    for k in 0..count {
        let (done, rest) = segments.split_at_mut(k);
        let segment = &mut rest[0];
        if let Some(prev) = done.last() {
            if segment.first_index() != prev.next_index() {
                return Err(WalError::corrupt(
                    &segment.path,
                    24,
                    format!(
                        "segment starts at index {} but the previous segment {} ends before index {}",
                        segment.first_index(),
                        prev.path.display(),
                        prev.next_index()
                    ),
                ));
            }
        }
        let is_last = k + 1 == count;
        // What the manifest promises of the last segment it knows (a newer one was added by a
        // roll that crashed before recording it, and holds nothing reported durable).
        let promised = manifest.filter(|m| is_last && m.last == segment.id());
        if let Some(m) = promised {
            if segment.capacity != m.last_capacity {
                return Err(WalError::corrupt(
                    &segment.path,
                    segment.capacity.min(m.last_capacity),
                    format!(
                        "segment file is {} bytes but was created with {}; records up to {} were \
                         made durable",
                        segment.capacity, m.last_capacity, m.durable_index
                    ),
                ));
            }
        }
        report.bytes_scanned += segment.capacity;
        let end = scan_segment(
            segment,
            &mut buf,
            is_last,
            promised.map_or(0, |m| m.durable_index),
            options.recovery_mode,
            options.max_record_size,
        )?;
        report.records += segment.offsets.len() as u64;
        if let Some((offset, nonzero_end)) = end.torn {
            zero_range(segment.file.as_ref(), offset, nonzero_end)
                .map_err(io_err("write", &segment.path))?;
            tracing::warn!(path = %segment.path.display(), offset, "cut a torn tail off the log");
            report.torn_tail = Some(TornTailCut {
                path: segment.path.clone(),
                offset,
                discarded_bytes: nonzero_end - offset,
            });
        }
        if is_last {
            if promised.is_none() && segment.capacity < options.segment_size {
                // Cut short by a crash while an older build created it: preallocate again.
                segment
                    .file
                    .set_len(options.segment_size)
                    .map_err(io_err("extend", &segment.path))?;
                segment.capacity = options.segment_size;
            }
            // What a crashed process wrote may still be only in the page cache: make it durable
            // before anyone treats it as such.
            segment
                .file
                .sync_data()
                .map_err(io_err("fdatasync", &segment.path))?;
        }
    }
    report.segments = segments.len();
    let legacy = segments.iter().all(|s| s.header.version < FORMAT_VERSION);
    if manifest.is_none() && report.records > 0 && !legacy {
        // A log of this format always has a manifest once it holds a record.
        return Err(WalError::MissingFile {
            path: join(dir, MANIFEST_FILE),
            reason: format!("the log holds {} records", report.records),
        });
    }
    let metadata = meta::load(fs, dir)?;
    let first = &segments[0];
    let last = segments.last().expect("at least one segment");
    let now = Manifest {
        first: first.id(),
        last: last.id(),
        last_capacity: last.capacity,
        durable_index: last.next_index() - 1,
        has_metadata: metadata.is_some(),
    };
    now.store(fs, dir)?;
    Ok((segments, report, metadata, now))
}

/// Opens a segment file and checks its header against its name and size against the options.
fn open_segment(
    fs: &dyn FileSystem,
    seq: u64,
    first: u64,
    path: PathBuf,
    options: &Options,
) -> Result<Segment> {
    let file = fs.open(&path).map_err(io_err("open", &path))?;
    let len = file.size().map_err(io_err("stat", &path))?;
    let mut head = vec![0u8; len.min(SEGMENT_HEADER_LEN) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(io_err("read", &path))?;
    let header = SegmentHeader::decode(&head, &path)?;
    if header.seq != seq || header.first_index != first {
        return Err(WalError::corrupt(
            &path,
            0,
            format!(
                "header says sequence {} first index {}, the file name says {seq} and {first}",
                header.seq, header.first_index
            ),
        ));
    }
    if header.first_index == 0 {
        return Err(WalError::corrupt(&path, 24, "first index 0"));
    }
    // Checked before the file is read into memory: nothing is allocated from untrusted sizes.
    if len > options.max_segment_file() {
        return Err(WalError::corrupt(
            &path,
            0,
            format!(
                "segment file of {len} bytes is larger than these options allow ({} bytes)",
                options.max_segment_file()
            ),
        ));
    }
    Ok(Segment {
        header,
        seed: header.seed(),
        path,
        file,
        offsets: Vec::new(),
        end: SEGMENT_HEADER_LEN,
        capacity: len,
    })
}
