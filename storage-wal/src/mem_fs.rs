//! An in-memory [`FileSystem`] that models what a crash may keep, for tests.
//!
//! Every file keeps its *durable* bytes (as of its last `sync_data`) and the list of writes made
//! since. [`MemFs::crash`] returns the filesystem as a machine would find it after power loss:
//! each unsynced write is independently kept, dropped, or torn (a random subset of its 512-byte
//! sectors reaches the disk); directory changes since the last `sync_dir` survive only as a random
//! prefix (journaled filesystems keep them in order). Sync failures can be injected with
//! [`MemFs::fail_syncs_after`].

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::fs::{FileSystem, WalFile};

/// Sector size assumed atomic by the crash model (and by the log's torn-write detection).
pub const SECTOR: usize = 512;

/// A small deterministic generator (xorshift64*), so crashes replay from a seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

#[derive(Debug, Clone)]
enum FileOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<FileOp>,
}

fn apply(data: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { offset, bytes } => {
            let start = *offset as usize;
            let end = start + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(bytes);
        }
        FileOp::SetLen(len) => data.resize(*len as usize, 0),
    }
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(PathBuf, Arc<Mutex<Inode>>),
    Unlink(PathBuf),
}

#[derive(Default)]
struct State {
    names: BTreeMap<PathBuf, Arc<Mutex<Inode>>>,
    durable_names: BTreeMap<PathBuf, Arc<Mutex<Inode>>>,
    unsynced_dir_ops: Vec<(PathBuf, DirOp)>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    syncs_left_before_failure: Option<u64>,
    dir_syncs_left_before_failure: Option<u64>,
}

/// The fault-injecting in-memory filesystem. Cloning shares the same state.
#[derive(Clone, Default)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemFs")
            .field("files", &self.state.lock().names.len())
            .finish()
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl MemFs {
    /// An empty filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    /// After `n` more successful `sync_data`/`sync_dir` calls, every later one fails with an I/O error.
    pub fn fail_syncs_after(&self, n: u64) {
        self.state.lock().syncs_left_before_failure = Some(n);
    }

    /// After `n` more successful `sync_dir` calls, every later directory sync fails with an I/O
    /// error (file syncs are not counted, so background file preparation cannot shift the failure).
    pub fn fail_dir_syncs_after(&self, n: u64) {
        self.state.lock().dir_syncs_left_before_failure = Some(n);
    }

    /// The filesystem after a simulated power loss, as described in the module docs. Handles open on
    /// `self` keep working on the old state, which nothing will read again.
    pub fn crash(&self, seed: u64) -> MemFs {
        let mut rng = Rng::new(seed);
        let st = self.state.lock();
        let mut names = st.durable_names.clone();
        let keep = if st.unsynced_dir_ops.is_empty() {
            0
        } else {
            (rng.next() % (st.unsynced_dir_ops.len() as u64 + 1)) as usize
        };
        for (_, op) in &st.unsynced_dir_ops[..keep] {
            match op {
                DirOp::Link(path, inode) => {
                    names.insert(path.clone(), inode.clone());
                }
                DirOp::Unlink(path) => {
                    names.remove(path);
                }
            }
        }
        // Several names may share an inode (after a rename); crash each inode once.
        let mut crashed: Vec<(*const Mutex<Inode>, Arc<Mutex<Inode>>)> = Vec::new();
        let mut new_names = BTreeMap::new();
        for (path, inode) in names {
            let key = Arc::as_ptr(&inode);
            let copy = match crashed.iter().find(|(k, _)| *k == key) {
                Some((_, copy)) => copy.clone(),
                None => {
                    let copy = Arc::new(Mutex::new(crash_inode(&inode.lock(), &mut rng)));
                    crashed.push((key, copy.clone()));
                    copy
                }
            };
            new_names.insert(path, copy);
        }
        let state = State {
            durable_names: new_names.clone(),
            names: new_names,
            dirs: st.dirs.clone(),
            ..State::default()
        };
        MemFs {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The current contents of a file (for tests that corrupt or inspect files).
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.state.lock();
        let inode = st.names.get(path).ok_or_else(|| not_found(path))?;
        let data = inode.lock().current.clone();
        Ok(data)
    }

    /// Replaces a file's contents, durably (for tests that corrupt files).
    pub fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        let inode = Arc::new(Mutex::new(Inode {
            current: data.to_vec(),
            durable: data.to_vec(),
            unsynced: Vec::new(),
        }));
        st.names.insert(path.to_path_buf(), inode.clone());
        st.durable_names.insert(path.to_path_buf(), inode);
        Ok(())
    }

    fn take_sync(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        take_one(&mut st.syncs_left_before_failure)
    }

    fn take_dir_sync(&self) -> io::Result<()> {
        self.take_sync()?;
        let mut st = self.state.lock();
        take_one(&mut st.dir_syncs_left_before_failure)
    }
}

fn take_one(left: &mut Option<u64>) -> io::Result<()> {
    match left {
        Some(0) => Err(io::Error::other("injected fsync failure")),
        Some(n) => {
            *n -= 1;
            Ok(())
        }
        None => Ok(()),
    }
}

fn crash_inode(inode: &Inode, rng: &mut Rng) -> Inode {
    let mut data = inode.durable.clone();
    for op in &inode.unsynced {
        if rng.chance(2) {
            continue; // this write never reached the disk
        }
        match op {
            FileOp::Write { offset, bytes } if rng.chance(3) => {
                // Torn: only some of its sectors reached the disk.
                let mut pos = *offset as usize;
                let end = pos + bytes.len();
                while pos < end {
                    let sector_end = ((pos / SECTOR) + 1) * SECTOR;
                    let piece_end = sector_end.min(end);
                    if rng.chance(2) {
                        let rel = pos - *offset as usize;
                        let piece = bytes[rel..rel + (piece_end - pos)].to_vec();
                        apply(
                            &mut data,
                            &FileOp::Write {
                                offset: pos as u64,
                                bytes: piece,
                            },
                        );
                    }
                    pos = piece_end;
                }
            }
            op => apply(&mut data, op),
        }
    }
    Inode {
        current: data.clone(),
        durable: data,
        unsynced: Vec::new(),
    }
}

struct MemFile {
    fs: MemFs,
    inode: Arc<Mutex<Inode>>,
}

impl WalFile for MemFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inode = self.inode.lock();
        let start = offset as usize;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::InvalidInput)?;
        if end > inode.current.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&inode.current[start..end]);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut inode = self.inode.lock();
        let op = FileOp::Write {
            offset,
            bytes: buf.to_vec(),
        };
        apply(&mut inode.current, &op);
        inode.unsynced.push(op);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.take_sync()?;
        let mut inode = self.inode.lock();
        inode.durable = inode.current.clone();
        inode.unsynced.clear();
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.inode.lock().current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut inode = self.inode.lock();
        let op = FileOp::SetLen(len);
        apply(&mut inode.current, &op);
        inode.unsynced.push(op);
        Ok(())
    }
}

struct MemLock {
    fs: MemFs,
    path: PathBuf,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        self.fs.state.lock().locks.remove(&self.path);
    }
}

impl FileSystem for MemFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.state.lock().dirs.insert(dir.to_path_buf());
        Ok(())
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let mut st = self.state.lock();
        if !st.dirs.contains(&parent(path)) {
            return Err(not_found(&parent(path)));
        }
        if st.names.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        let inode = Arc::new(Mutex::new(Inode::default()));
        st.names.insert(path.to_path_buf(), inode.clone());
        st.unsynced_dir_ops
            .push((parent(path), DirOp::Link(path.to_path_buf(), inode.clone())));
        Ok(Arc::new(MemFile {
            fs: self.clone(),
            inode,
        }))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let st = self.state.lock();
        let inode = st.names.get(path).ok_or_else(|| not_found(path))?.clone();
        Ok(Arc::new(MemFile {
            fs: self.clone(),
            inode,
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let inode = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), inode.clone());
        st.unsynced_dir_ops
            .push((parent(to), DirOp::Link(to.to_path_buf(), inode)));
        st.unsynced_dir_ops
            .push((parent(from), DirOp::Unlink(from.to_path_buf())));
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        st.unsynced_dir_ops
            .push((parent(path), DirOp::Unlink(path.to_path_buf())));
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.take_dir_sync()?;
        let mut st = self.state.lock();
        let ops = std::mem::take(&mut st.unsynced_dir_ops);
        let (now, later): (Vec<_>, Vec<_>) = ops.into_iter().partition(|(d, _)| d == dir);
        st.unsynced_dir_ops = later;
        for (_, op) in now {
            match op {
                DirOp::Link(path, inode) => {
                    st.durable_names.insert(path, inode);
                }
                DirOp::Unlink(path) => {
                    st.durable_names.remove(&path);
                }
            }
        }
        Ok(())
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut st = self.state.lock();
        if !st.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(MemLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }
}
