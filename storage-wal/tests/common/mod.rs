//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use storage_wal::{FileSystem, MemFs, Options, Wal};

/// Every file of a log directory with its contents.
pub type Files = Vec<(PathBuf, Vec<u8>)>;

/// The log directory used on a `MemFs`.
pub fn dir() -> PathBuf {
    PathBuf::from("/wal")
}

/// Small segments so that a few records span several of them.
pub fn small_options() -> Options {
    Options {
        segment_size: 4096,
        max_record_size: 4096,
        max_group_commit_delay: Duration::ZERO,
        ..Options::default()
    }
}

pub fn open(fs: &MemFs, options: &Options) -> storage_wal::Result<Wal> {
    Wal::open_with_fs(Arc::new(fs.clone()), dir(), options.clone())
}

/// Segment files of the log, oldest first.
pub fn segment_files(fs: &MemFs) -> Vec<PathBuf> {
    let mut names: Vec<String> = fs
        .list(&dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir().join(n)).collect()
}

/// Every file of the log directory with its contents.
pub fn snapshot(fs: &MemFs) -> Vec<(PathBuf, Vec<u8>)> {
    let mut names = fs.list(&dir()).unwrap();
    names.sort();
    names
        .into_iter()
        .map(|n| dir().join(n))
        .map(|p| (p.clone(), fs.read_file(&p).unwrap()))
        .collect()
}

/// A fresh filesystem holding exactly these files (all durable).
pub fn restore(files: &[(PathBuf, Vec<u8>)]) -> MemFs {
    let fs = MemFs::new();
    fs.create_dir_all(&dir()).unwrap();
    for (path, data) in files {
        fs.write_file(path, data).unwrap();
    }
    fs
}

/// Deterministic payload of record `i` with a length that varies (0..=700 bytes), never all zero.
pub fn payload(i: u64, salt: u64) -> Vec<u8> {
    let len = ((i * 7919 + salt * 31) % 701) as usize;
    (0..len)
        .map(|k| ((k as u64 * 131 + i * 17 + salt) % 251) as u8 + 1)
        .collect()
}

/// Reads all records of the log.
pub fn read_all(wal: &Wal) -> Vec<Vec<u8>> {
    if wal.is_empty() {
        return Vec::new();
    }
    wal.read_range(wal.first_index()..wal.next_index(), u64::MAX)
        .unwrap()
}

pub fn path_is(err: &storage_wal::WalError, path: &Path) -> bool {
    err.path() == Some(path)
}

/// A minimal single-threaded executor for the async API's tests (the crate depends on none):
/// polls each task whose waker was woken, parks the thread while none was, and fails the test
/// if the tasks have not all finished within `hang_guard` (a lost wake-up, or futures woken over
/// and over without resolving, would hang there; it is a generous guard, not a timing check).
pub fn run_tasks<'a>(
    tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>>,
    hang_guard: Duration,
) {
    use std::collections::VecDeque;
    use std::task::{Context, Wake, Waker};

    struct Ready {
        queue: parking_lot::Mutex<VecDeque<usize>>,
        thread: std::thread::Thread,
    }
    struct TaskWaker {
        id: usize,
        ready: Arc<Ready>,
    }
    impl Wake for TaskWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.ready.queue.lock().push_back(self.id);
            self.ready.thread.unpark();
        }
    }

    let ready = Arc::new(Ready {
        queue: parking_lot::Mutex::new((0..tasks.len()).collect()),
        thread: std::thread::current(),
    });
    let wakers: Vec<Waker> = (0..tasks.len())
        .map(|id| {
            Waker::from(Arc::new(TaskWaker {
                id,
                ready: ready.clone(),
            }))
        })
        .collect();
    let mut tasks: Vec<_> = tasks.into_iter().map(Some).collect();
    let mut unfinished = tasks.len();
    let started = std::time::Instant::now();
    while unfinished > 0 {
        assert!(
            started.elapsed() < hang_guard,
            "{unfinished} tasks still unfinished after {hang_guard:?}"
        );
        let next = ready.queue.lock().pop_front();
        let Some(id) = next else {
            std::thread::park_timeout(Duration::from_millis(100));
            continue;
        };
        let Some(task) = tasks[id].as_mut() else {
            continue; // a late wake-up of a finished task
        };
        if task
            .as_mut()
            .poll(&mut Context::from_waker(&wakers[id]))
            .is_ready()
        {
            tasks[id] = None;
            unfinished -= 1;
        }
    }
}

/// Runs one future to completion on [`run_tasks`].
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    let mut out = None;
    run_tasks(
        vec![Box::pin(async {
            out = Some(future.await);
        })],
        Duration::from_secs(60),
    );
    out.expect("the task finished")
}
