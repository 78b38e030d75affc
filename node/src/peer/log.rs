//! The durable side of a peer node: every [`Persist`] of the engine becomes one record of a
//! `storage-wal` log in `<data dir>/peer-wal`, in the order given; a background thread syncs and
//! publishes how far the log is durable, and the driver confirms tokens up to there.
//!
//! Recovery folds the records in order (the last record of a key wins; `None` removes it) into
//! the engine's [`Recovered`]. A crash keeps a prefix of the records, so the state recovered is
//! one the engine went through after some prefix of its writes — what the persistence contract
//! asks. When the log holds many more records than live keys, [`PeerLog::checkpoint`] appends the
//! whole live state, waits until it is durable, and compacts everything before it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use replication_peer::{Key, Object, Persist, PersistToken, Recovered, Write};
use storage_wal::{Options, Wal, WalError};
use tokio::sync::watch;

/// Identity recorded in the log's metadata: a peer log of one node of one cluster.
const MAGIC: &str = "quorate-peer-log/1";
/// A record's bytes beyond its key and values (object shape, dots, clocks, contexts), as a
/// first guess for its buffer.
const RECORD_HEADROOM: usize = 128;
/// Bytes read per replay batch.
const REPLAY_BATCH_BYTES: u64 = 16 << 20;

/// Why the peer log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum PeerLogError {
    /// The write-ahead log failed.
    #[error("peer log {dir}: {source}")]
    Wal {
        /// The log directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: WalError,
    },
    /// The directory belongs to another cluster or node, or to a consensus group.
    #[error("data directory {dir}: {reason}")]
    Identity {
        /// The data directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A record does not decode (the log's checksums passed, so this is a bug or another
    /// program's file).
    #[error("peer log {dir}: record {index} does not decode: {reason}")]
    Record {
        /// The log directory.
        dir: PathBuf,
        /// Its index.
        index: u64,
        /// The decoder's message.
        reason: String,
    },
}

/// How far the log is durable, as the sync thread publishes it.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Every record at or below this index is durable.
    pub index: u64,
    /// A sync failed: the log is poisoned and the node must stop.
    pub error: Option<String>,
}

/// The peer node's log.
pub struct PeerLog {
    dir: PathBuf,
    wal: Arc<Wal>,
    kick: Option<std_mpsc::Sender<()>>,
    sync_thread: Option<std::thread::JoinHandle<()>>,
    durable_rx: watch::Receiver<Durable>,
    /// `(last record index, last token)` of each appended batch not yet confirmed.
    pending: std::collections::VecDeque<(u64, PersistToken)>,
    /// The dot ceiling last written (kept for checkpoints).
    dot_ceiling: u64,
    /// Metadata prefix; the index replay starts at follows it.
    identity: String,
}

impl PeerLog {
    /// Opens `<data_dir>/peer-wal`, checks its identity and replays it.
    pub fn open(
        data_dir: &Path,
        cluster: &str,
        node: u64,
    ) -> Result<(PeerLog, Recovered), PeerLogError> {
        if data_dir.join("wal").exists() {
            return Err(PeerLogError::Identity {
                dir: data_dir.to_path_buf(),
                reason: "it holds a consensus group's log (wal/); a peer node needs its own data directory".into(),
            });
        }
        let dir = data_dir.join("peer-wal");
        let wal_error = |source| PeerLogError::Wal {
            dir: dir.clone(),
            source,
        };
        let wal = Wal::open(&dir, Options::default()).map_err(wal_error)?;
        let identity = format!("{MAGIC}|{cluster}|{node}|");
        let start = match wal.metadata() {
            None => {
                wal.set_metadata(format!("{identity}0").as_bytes())
                    .map_err(wal_error)?;
                0
            }
            Some(found) => {
                let found = String::from_utf8_lossy(&found).into_owned();
                match found.strip_prefix(&identity).map(str::parse::<u64>) {
                    Some(Ok(start)) => start,
                    _ => {
                        return Err(PeerLogError::Identity {
                            dir: data_dir.to_path_buf(),
                            reason: format!("recorded as {found:?}, but this node is {identity:?}"),
                        })
                    }
                }
            }
        };
        let recovered = replay(&dir, &wal, start)?;
        let wal = Arc::new(wal);
        let durable = Durable {
            index: wal.durable_index(),
            error: None,
        };
        let (durable_tx, durable_rx) = watch::channel(durable);
        let (kick, kicked) = std_mpsc::channel();
        let syncing = wal.clone();
        let sync_thread = std::thread::Builder::new()
            .name(format!("peer-sync-{node}"))
            .spawn(move || sync_thread(&syncing, &kicked, &durable_tx))
            .map_err(|e| PeerLogError::Identity {
                dir: dir.clone(),
                reason: format!("cannot start the sync thread: {e}"),
            })?;
        let dot_ceiling = recovered.dot_ceiling;
        Ok((
            PeerLog {
                dir,
                wal,
                kick: Some(kick),
                sync_thread: Some(sync_thread),
                durable_rx,
                pending: Default::default(),
                dot_ceiling,
                identity,
            },
            recovered,
        ))
    }

    /// Appends the engine's writes in order (not yet durable) and asks the sync thread for them.
    pub fn append(&mut self, persists: &[Persist]) -> Result<(), PeerLogError> {
        let Some(last) = persists.last() else {
            return Ok(());
        };
        let mut records = Vec::with_capacity(persists.len());
        for p in persists {
            if let Write::DotCeiling(c) = p.write {
                self.dot_ceiling = self.dot_ceiling.max(c);
            }
            // Sized up front: growing the buffer byte run by byte run cost a realloc or two
            // per record.
            let buffer = Vec::with_capacity(RECORD_HEADROOM + write_payload_bytes(&p.write));
            records.push(postcard::to_extend(&p.write, buffer).map_err(|e| {
                PeerLogError::Record {
                    dir: self.dir.clone(),
                    index: 0,
                    reason: e.to_string(),
                }
            })?);
        }
        let range = self
            .wal
            .append_batch(&records)
            .map_err(|source| PeerLogError::Wal {
                dir: self.dir.clone(),
                source,
            })?;
        self.pending.push_back((range.end - 1, last.token));
        if let Some(kick) = &self.kick {
            let _ = kick.send(());
        }
        Ok(())
    }

    /// The durability reports of the sync thread.
    pub fn durable_rx(&self) -> watch::Receiver<Durable> {
        self.durable_rx.clone()
    }

    /// The last token whose record is durable at `durable` (each confirms all before it).
    pub fn confirmed(&mut self, durable: u64) -> Option<PersistToken> {
        let mut last = None;
        while let Some(&(index, token)) = self.pending.front() {
            if index > durable {
                break;
            }
            last = Some(token);
            self.pending.pop_front();
        }
        last
    }

    /// Records in the log.
    pub fn records(&self) -> u64 {
        self.wal.next_index() - self.wal.first_index()
    }

    /// Whether a checkpoint would pay: many more records than `live_keys`.
    pub fn wants_checkpoint(&self, live_keys: usize) -> bool {
        self.records() > 4 * live_keys as u64 + 100_000
    }

    /// Appends every live object and the dot ceiling, waits until they are durable (which makes
    /// every earlier record durable too) and compacts the records before them. `objects` must be
    /// the fold of every write appended so far (the engine's local objects, with its output
    /// drained). Blocks for one fsync.
    pub fn checkpoint<'a>(
        &mut self,
        objects: impl Iterator<Item = (&'a Key, &'a Object)>,
    ) -> Result<(), PeerLogError> {
        let wal_error = |source| PeerLogError::Wal {
            dir: self.dir.clone(),
            source,
        };
        let mut records =
            vec![postcard::to_allocvec(&Write::DotCeiling(self.dot_ceiling))
                .expect("a ceiling encodes")];
        for (key, object) in objects {
            let write = Write::Object {
                key: key.clone(),
                object: Some(object.clone()),
            };
            records.push(postcard::to_allocvec(&write).expect("an object encodes"));
        }
        let range = self.wal.append_batch(&records).map_err(wal_error)?;
        self.wal.wait_durable(range.end - 1).map_err(wal_error)?;
        // Replay starts at the checkpoint from now on: records before it that compaction keeps
        // (it removes whole segments) would otherwise bring back keys removed since.
        self.wal
            .set_metadata(format!("{}{}", self.identity, range.start).as_bytes())
            .map_err(wal_error)?;
        self.wal.compact(range.start).map_err(wal_error)?;
        Ok(())
    }

    /// Makes everything appended durable (at shutdown).
    pub fn sync(&self) -> Result<u64, PeerLogError> {
        self.wal.sync().map_err(|source| PeerLogError::Wal {
            dir: self.dir.clone(),
            source,
        })
    }
}

impl Drop for PeerLog {
    /// Stops the sync thread, which releases its share of the log (and the directory lock).
    fn drop(&mut self) {
        self.kick.take();
        if let Some(thread) = self.sync_thread.take() {
            let _ = thread.join();
        }
    }
}

fn replay(dir: &Path, wal: &Wal, start: u64) -> Result<Recovered, PeerLogError> {
    let mut objects: BTreeMap<Key, Object> = BTreeMap::new();
    let mut dot_ceiling = 0;
    let mut next = wal.first_index().max(start);
    let end = wal.next_index();
    while next < end {
        let batch = wal
            .read_range(next..end, REPLAY_BATCH_BYTES)
            .map_err(|source| PeerLogError::Wal {
                dir: dir.to_path_buf(),
                source,
            })?;
        if batch.is_empty() {
            break;
        }
        for bytes in &batch {
            let write: Write = postcard::from_bytes(bytes).map_err(|e| PeerLogError::Record {
                dir: dir.to_path_buf(),
                index: next,
                reason: e.to_string(),
            })?;
            match write {
                Write::DotCeiling(c) => dot_ceiling = dot_ceiling.max(c),
                Write::Object {
                    key,
                    object: Some(object),
                } => {
                    objects.insert(key, object);
                }
                Write::Object { key, object: None } => {
                    objects.remove(&key);
                }
            }
            next += 1;
        }
    }
    Ok(Recovered {
        dot_ceiling,
        objects: objects.into_iter().collect(),
    })
}

/// The key and value bytes of a write (what its record's size mostly is).
fn write_payload_bytes(write: &Write) -> usize {
    match write {
        Write::Object { key, object } => {
            key.len() + object.as_ref().map_or(0, Object::payload_bytes)
        }
        Write::DotCeiling(_) => 0,
    }
}

/// Syncs whenever asked (coalescing requests that arrive meanwhile) and publishes the durable
/// index; stops when the log's owner is gone or a sync fails.
fn sync_thread(wal: &Wal, kicked: &std_mpsc::Receiver<()>, durable: &watch::Sender<Durable>) {
    while kicked.recv().is_ok() {
        while kicked.try_recv().is_ok() {}
        match wal.sync() {
            Ok(index) => {
                let _ = durable.send(Durable { index, error: None });
            }
            Err(error) => {
                let _ = durable.send(Durable {
                    index: wal.durable_index(),
                    error: Some(error.to_string()),
                });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication_peer::{Config, Peer, Request, RequestId, VersionVector};

    /// Runs a one-node engine's writes through the log, as the driver does, syncing at once.
    fn put(peer: &mut Peer, log: &mut PeerLog, id: u64, key: &str, value: &str) {
        peer.client_request(
            RequestId(id),
            Request::Put {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                context: VersionVector::new(),
                w: 1,
            },
        );
        loop {
            let out = peer.take_output();
            if out.is_empty() {
                break;
            }
            log.append(&out.persists).unwrap();
            let durable = log.sync().unwrap();
            if let Some(token) = log.confirmed(durable) {
                peer.persisted(token).unwrap();
            }
        }
    }

    fn one_node() -> Config {
        Config {
            replication: 1,
            ..Config::new(1, vec![1])
        }
    }

    #[test]
    fn writes_survive_a_restart_and_a_checkpoint_keeps_exactly_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, recovered) = PeerLog::open(dir.path(), "c", 1).unwrap();
        assert!(recovered.objects.is_empty());
        let mut peer = Peer::recover(one_node(), recovered).unwrap();
        put(&mut peer, &mut log, 1, "a", "1");
        put(&mut peer, &mut log, 2, "a", "2");
        put(&mut peer, &mut log, 3, "b", "3");
        // Recovery lists keys in order; the engine's index does not.
        let mut before: Vec<_> = peer
            .local_objects()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        before.sort_by(|a, b| a.0.cmp(&b.0));
        drop(log);

        let (mut log, recovered) = PeerLog::open(dir.path(), "c", 1).unwrap();
        assert_eq!(recovered.objects, before);
        assert!(recovered.dot_ceiling > 0, "the dot ceiling is durable too");
        let records = log.records();
        log.checkpoint(before.iter().map(|(k, o)| (k, o))).unwrap();
        assert!(log.records() < records + before.len() as u64 + 1);
        drop(log);
        let (mut log, again) = PeerLog::open(dir.path(), "c", 1).unwrap();
        assert_eq!(again.objects, before);
        assert_eq!(again.dot_ceiling, recovered.dot_ceiling);

        // A key removed (a collected tombstone), then a checkpoint of what is left: the
        // records before the checkpoint stay on disk (compaction drops whole segments only)
        // but must not bring the key back.
        log.append(&[Persist {
            token: PersistToken(1),
            write: Write::Object {
                key: b"a".to_vec(),
                object: None,
            },
        }])
        .unwrap();
        let live: Vec<_> = before.iter().filter(|(k, _)| k != b"a").cloned().collect();
        log.checkpoint(live.iter().map(|(k, o)| (k, o))).unwrap();
        drop(log);
        let (_, last) = PeerLog::open(dir.path(), "c", 1).unwrap();
        assert_eq!(last.objects, live);
    }

    #[test]
    fn another_nodes_directory_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        drop(PeerLog::open(dir.path(), "c", 1).unwrap());
        let error = PeerLog::open(dir.path(), "c", 2).err().unwrap();
        assert!(error.to_string().contains("|c|1"), "{error}");
        std::fs::create_dir(dir.path().join("wal")).unwrap();
        let error = PeerLog::open(dir.path(), "c", 1).err().unwrap();
        assert!(error.to_string().contains("consensus"), "{error}");
    }
}
