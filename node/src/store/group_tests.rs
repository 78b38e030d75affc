//! A three-node Raft group in one process (messages by function call, as in consensus-core's
//! `three_nodes` example) running on [`RaftStore`]s with pipelined writes: nodes restart from
//! their data directories and keep every committed entry; a node cut off while the others compact
//! catches up from a snapshot, and keeps it across a restart.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use consensus_core::{
    ConfState, Config, Consensus, Entry, EntryPayload, Host, Message, Raft, ReplicaLoop, Role,
    Snapshot, Storage, StorageError, Write,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use std::sync::Arc;

use storage_wal::{FileSystem, MemFs, StdFs};

use super::{DurableIndex, Identity, RaftStore, SharedLog, SharedOptions, StoreOptions};

const IDS: [u64; 3] = [1, 2, 3];
/// Each node snapshots its state machine every this many applied entries.
const SNAPSHOT_EVERY: u64 = 10;

struct Node {
    dir: PathBuf,
    /// The in-memory filesystem of a node whose crashes are simulated; `None` for real files.
    fs: Option<MemFs>,
    raft: Raft<RaftStore>,
    /// The replica loop's writes in flight.
    writes: ReplicaLoop,
    /// The state machine: every applied command, in order.
    state: Vec<Bytes>,
    applied: u64,
    restarts: u64,
    /// On a node-wide shared log: a second group of the same log, written to on every step so
    /// the Raft group's records interleave with another group's.
    neighbour: Option<Neighbour>,
}

/// The other group of a node's shared log.
struct Neighbour {
    store: RaftStore,
    next: u64,
}

impl Neighbour {
    fn write(&mut self) {
        let write = Write {
            snapshot: None,
            truncate_from: None,
            entries: vec![Entry {
                term: 1,
                index: self.next,
                payload: EntryPayload::Data(Bytes::from("neighbour")),
            }]
            .into(),
            hard_state: None,
            sync: true,
        };
        self.store.submit(&write).expect("neighbour write");
        self.next += 1;
    }
}

fn identity(id: u64, group_id: u64) -> Identity {
    Identity {
        protocol: "raft".into(),
        cluster_id: "group-test".into(),
        node_id: id,
        group_id,
    }
}

fn options(background_sync: bool) -> StoreOptions {
    StoreOptions {
        background_sync,
        wal: storage_wal::Options {
            segment_size: 8 << 10,
            max_group_commit_delay: std::time::Duration::ZERO,
            ..storage_wal::Options::default()
        },
        trailing_entries: 5,
    }
}

fn encode_state(state: &[Bytes]) -> Bytes {
    Bytes::from(
        postcard::to_allocvec(&state.iter().map(|b| b.to_vec()).collect::<Vec<_>>()).unwrap(),
    )
}

fn decode_state(data: &[u8]) -> Vec<Bytes> {
    if data.is_empty() {
        return Vec::new();
    }
    let items: Vec<Vec<u8>> = postcard::from_bytes(data).expect("snapshot data decodes");
    items.into_iter().map(Bytes::from).collect()
}

impl Node {
    fn start(dir: &Path, fs: Option<MemFs>, id: u64, seed: u64, shared: bool) -> Node {
        let fs_arc: Arc<dyn FileSystem> = match &fs {
            Some(fs) => Arc::new(fs.clone()),
            None => Arc::new(StdFs),
        };
        // Simulated disks sync only when the driver waits, so a crash finds writes in flight.
        let options = options(fs.is_none());
        let (store, neighbour) = if shared {
            let log = SharedLog::open_with_fs(
                fs_arc,
                dir,
                SharedOptions {
                    wal: options.wal.clone(),
                    background_sync: options.background_sync,
                    // Small, so the groups are rewritten rather than pinning the log.
                    rewrite_after_records: 64,
                },
            )
            .expect("open shared log");
            let store = log
                .open_group(
                    identity(id, 1),
                    ConfState::with_voters(IDS),
                    options.clone(),
                )
                .expect("open group");
            let neighbour: RaftStore = log
                .open_group(identity(id, 2), ConfState::with_voters([id]), options)
                .expect("open neighbour");
            let next = neighbour.last_index() + 1;
            (
                store,
                Some(Neighbour {
                    store: neighbour,
                    next,
                }),
            )
        } else {
            let store = RaftStore::open_with_fs(
                fs_arc,
                dir,
                identity(id, 0),
                ConfState::with_voters(IDS),
                options,
            )
            .expect("open store");
            (store, None)
        };
        let snapshot = store.snapshot().unwrap();
        let config = Config {
            applied: snapshot.meta.index,
            ..Config::new(id)
        };
        let raft = Raft::new(config, store, ChaCha8Rng::seed_from_u64(seed)).expect("raft");
        Node {
            dir: dir.to_path_buf(),
            fs,
            raft,
            writes: ReplicaLoop::new(),
            state: decode_state(&snapshot.data),
            applied: snapshot.meta.index,
            restarts: 0,
            neighbour,
        }
    }

    /// Stops the node (dropping its store, as a process exit would) and starts it from disk.
    fn restart(self) -> Node {
        let fs = self.fs.clone();
        self.restart_on(fs)
    }

    /// Power loss: the node restarts on what its (simulated) disk kept.
    fn crash(self, seed: u64) -> Node {
        let crashed = self.fs.as_ref().expect("a crashable node").crash(seed);
        self.restart_on(Some(crashed))
    }

    fn restart_on(self, fs: Option<MemFs>) -> Node {
        let (dir, id, restarts) = (self.dir.clone(), self.raft.id(), self.restarts + 1);
        let shared = self.neighbour.is_some();
        drop(self);
        let mut node = Node::start(&dir, fs, id, 1000 * restarts + id, shared);
        node.restarts = restarts;
        node
    }

    /// Runs the replica loop until the engine has nothing more to do now (writes are submitted,
    /// confirmed once the store reports them durable). Returns whether there was anything.
    fn step_ready(&mut self, network: &mut VecDeque<Message>) -> bool {
        if !self.raft.has_ready() && self.writes.waiting_for().is_none() {
            return false;
        }
        let before = (self.writes.unconfirmed(), network.len(), self.applied);
        if let Some(neighbour) = &mut self.neighbour {
            neighbour.write();
        }
        let mut host = TestHost {
            network,
            durable: self.raft.storage().durable_handle(),
            events: Vec::new(),
        };
        self.writes
            .drive(&mut self.raft, &mut host)
            .expect("the replica loop runs");
        let (events, sent) = (host.events, network.len());
        for event in events {
            match event {
                Event::Snapshot(snapshot) => {
                    // Restore the state machine before applying anything committed after it.
                    self.state = decode_state(&snapshot.data);
                    self.applied = snapshot.meta.index;
                }
                Event::Apply(entries) => {
                    for entry in entries {
                        self.apply(entry);
                    }
                }
            }
        }
        before != (self.writes.unconfirmed(), sent, self.applied)
    }

    fn apply(&mut self, entry: Entry) {
        if entry.index <= self.applied {
            return;
        }
        assert_eq!(entry.index, self.applied + 1, "entries applied in order");
        if let EntryPayload::Data(data) = &entry.payload {
            self.state.push(data.clone());
        }
        self.applied = entry.index;
        let snapshot_index = self.raft.storage().snapshot_meta().index;
        if self.applied >= snapshot_index + SNAPSHOT_EVERY {
            let conf = self.raft.status().conf_state;
            let data = encode_state(&self.state);
            self.raft
                .storage_mut()
                .save_snapshot(self.applied, conf, data)
                .expect("save snapshot");
        }
    }

    /// Waits (if `block`) until the oldest unconfirmed write is durable, then lets the replica
    /// loop confirm what is. Returns whether a write was waiting.
    fn confirm_durable(&mut self, block: bool, network: &mut VecDeque<Message>) -> bool {
        let Some(ticket) = self.writes.waiting_for() else {
            return false;
        };
        if block {
            self.raft.storage().wait_durable(ticket).expect("durable");
        } else if self.raft.storage().durable_index() < ticket {
            return false;
        }
        self.step_ready(network);
        true
    }
}

/// What the replica loop handed over, in order.
enum Event {
    Snapshot(Snapshot),
    Apply(Vec<Entry>),
}

/// The replica loop's host in this test: messages into the shared queue, writes into the
/// node's store, the state machine updated after the loop returns.
struct TestHost<'a> {
    network: &'a mut VecDeque<Message>,
    durable: DurableIndex,
    events: Vec<Event>,
}

impl Host<Raft<RaftStore>> for TestHost<'_> {
    type Error = consensus_core::Error;

    fn send(&mut self, message: Message) -> Result<(), Self::Error> {
        self.network.push_back(message);
        Ok(())
    }

    fn submit(
        &mut self,
        storage: &mut RaftStore,
        write: &Write<consensus_core::HardState>,
    ) -> Result<u64, Self::Error> {
        storage
            .submit(write)
            .map_err(|e| StorageError::Other(e.to_string()).into())
    }

    fn durable(&self) -> u64 {
        self.durable.get()
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Self::Error> {
        self.events.push(Event::Snapshot(snapshot.clone()));
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Self::Error> {
        self.events.push(Event::Apply(entries));
        Ok(())
    }
}

struct Group {
    nodes: BTreeMap<u64, Node>,
    network: VecDeque<Message>,
    cut_off: BTreeSet<u64>,
    proposed: u64,
    _dir: tempfile::TempDir,
}

impl Group {
    fn new(shared: bool) -> Group {
        Self::with_fs(false, shared)
    }

    /// A group whose nodes run on simulated disks that crashes can tear; with `shared`, each
    /// node's store is a group of a node-wide shared log that holds another group too.
    fn with_fs(simulated: bool, shared: bool) -> Group {
        let dir = tempfile::tempdir().unwrap();
        let nodes = IDS
            .iter()
            .map(|&id| {
                (
                    id,
                    Node::start(
                        &dir.path().join(format!("node-{id}")),
                        simulated.then(MemFs::new),
                        id,
                        id,
                        shared,
                    ),
                )
            })
            .collect();
        Group {
            nodes,
            network: VecDeque::new(),
            cut_off: BTreeSet::new(),
            proposed: 0,
            _dir: dir,
        }
    }

    /// Runs until nothing moves: drain readies, confirm durable writes, deliver messages.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for node in self.nodes.values_mut() {
                while node.step_ready(&mut self.network) {
                    progress = true;
                }
                progress |= node.confirm_durable(true, &mut self.network);
            }
            while let Some(message) = self.network.pop_front() {
                progress = true;
                if self.cut_off.contains(&message.from) || self.cut_off.contains(&message.to) {
                    continue;
                }
                if let Some(node) = self.nodes.get_mut(&message.to) {
                    node.raft.step(message).expect("step");
                }
            }
            if !progress {
                return;
            }
        }
        panic!("the group never settles");
    }

    /// One pass without waiting for any disk: drain readies (writes are submitted, not awaited),
    /// confirm what is already durable, deliver the messages.
    fn step_without_waiting(&mut self) {
        for node in self.nodes.values_mut() {
            while node.step_ready(&mut self.network) {}
            node.confirm_durable(false, &mut self.network);
        }
        while let Some(message) = self.network.pop_front() {
            if let Some(node) = self.nodes.get_mut(&message.to) {
                node.raft.step(message).expect("step");
            }
        }
    }

    fn tick(&mut self) {
        for node in self.nodes.values_mut() {
            node.raft.tick();
        }
        self.settle();
    }

    fn leader(&mut self) -> u64 {
        for _ in 0..500 {
            let leaders: Vec<u64> = self
                .nodes
                .iter()
                .filter(|(id, n)| n.raft.role() == Role::Leader && !self.cut_off.contains(id))
                .map(|(&id, _)| id)
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            self.tick();
        }
        panic!("no leader elected");
    }

    /// Proposes `count` commands through the leader and lets them commit.
    fn propose(&mut self, count: u64) {
        for _ in 0..count {
            let leader = self.leader();
            self.proposed += 1;
            let command = Bytes::from(format!("command {}", self.proposed));
            let node = self.nodes.get_mut(&leader).expect("leader exists");
            node.raft.propose(command).expect("leader accepts");
            self.settle();
        }
        // Heartbeats carry the commit index to followers.
        for _ in 0..5 {
            self.tick();
        }
    }

    fn restart(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node exists");
        self.nodes.insert(id, node.restart());
    }

    fn expected_state(&self) -> Vec<Bytes> {
        (1..=self.proposed)
            .map(|i| Bytes::from(format!("command {i}")))
            .collect()
    }

    fn assert_all_applied(&self, ids: &[u64]) {
        let expected = self.expected_state();
        for id in ids {
            let node = &self.nodes[id];
            assert_eq!(node.state, expected, "node {id} state machine");
        }
    }
}

#[test]
fn a_group_on_raft_stores_keeps_committed_entries_across_restarts() {
    keeps_committed_entries_across_restarts(false);
}

#[test]
fn a_group_on_shared_logs_keeps_committed_entries_across_restarts() {
    keeps_committed_entries_across_restarts(true);
}

fn keeps_committed_entries_across_restarts(shared: bool) {
    let mut group = Group::new(shared);
    group.propose(25);
    group.assert_all_applied(&IDS);

    // A follower restarts from its directory: every committed entry is still there.
    let leader = group.leader();
    let follower = *IDS.iter().find(|&&id| id != leader).expect("a follower");
    let commit_before = group.nodes[&follower].raft.status().commit;
    group.restart(follower);
    let store = group.nodes[&follower].raft.storage();
    assert!(store.hard_state().commit >= commit_before);
    assert!(store.snapshot_meta().index > 0, "it had compacted its log");
    assert!(store.last_index() >= commit_before);
    group.propose(5);
    group.assert_all_applied(&IDS);

    // A node cut off while the others write and compact catches up from a snapshot.
    let lagging = follower;
    group.cut_off.insert(lagging);
    group.propose(30);
    let leader = group.leader();
    let leader_first = group.nodes[&leader].raft.storage().first_index();
    assert!(
        leader_first > group.nodes[&lagging].applied + 1,
        "the leader compacted past what the lagging node has"
    );
    group.cut_off.clear();
    for _ in 0..20 {
        group.tick();
    }
    group.assert_all_applied(&IDS);
    let installed = group.nodes[&lagging].raft.storage().snapshot_meta().index;
    assert!(
        installed >= leader_first - 1,
        "caught up by installing a snapshot"
    );

    // It keeps the installed snapshot and later entries across a restart.
    group.restart(lagging);
    assert!(group.nodes[&lagging].raft.storage().snapshot_meta().index >= installed);
    group.settle();
    group.assert_all_applied(&IDS);

    // The leader restarts; another is elected; nothing committed is lost.
    group.restart(leader);
    group.propose(10);
    for _ in 0..20 {
        group.tick();
    }
    group.assert_all_applied(&IDS);
    assert_eq!(group.nodes[&leader].restarts, 1);
}

#[test]
fn nodes_losing_power_keep_every_committed_entry() {
    lose_power_and_keep_every_committed_entry(false);
}

#[test]
fn nodes_on_shared_logs_losing_power_keep_every_committed_entry() {
    lose_power_and_keep_every_committed_entry(true);
}

fn lose_power_and_keep_every_committed_entry(shared: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut lossy = 0;
    for round in 0..3u64 {
        let mut group = Group::with_fs(true, shared);
        // The longest state machine any node has applied: committed, so it must survive.
        let mut committed: Vec<Bytes> = Vec::new();
        for step in 0..40u64 {
            // A proposal may be lost with a leader that crashes before it commits.
            let leader = group.leader();
            for _ in 0..rng.gen_range(1..4) {
                group.proposed += 1;
                let command = Bytes::from(format!("command {}", group.proposed));
                let node = group.nodes.get_mut(&leader).expect("leader exists");
                let _ = node.raft.propose(command);
            }
            if rng.gen_bool(0.3) {
                // Power fails while writes are in flight.
                for _ in 0..rng.gen_range(0..6) {
                    group.step_without_waiting();
                }
                // Whatever a node applied was committed, crash or not.
                for node in group.nodes.values() {
                    if node.state.len() > committed.len() {
                        committed = node.state.clone();
                    }
                }
                // One node, or several at once (a power cut of the whole rack).
                let victims: Vec<u64> = if rng.gen_bool(0.5) {
                    vec![IDS[rng.gen_range(0..IDS.len())]]
                } else {
                    IDS.to_vec()
                };
                for id in victims {
                    let node = group.nodes.remove(&id).expect("node exists");
                    let storage = node.raft.storage();
                    lossy += u64::from(storage.durable_index() < storage.submitted_index());
                    group
                        .nodes
                        .insert(id, node.crash(round * 1000 + step * 10 + id));
                }
            }
            group.settle();
            group.tick();
            for node in group.nodes.values() {
                let prefix = node.state.len().min(committed.len());
                assert_eq!(
                    node.state[..prefix],
                    committed[..prefix],
                    "round {round} step {step}: node {} applied a different history",
                    node.raft.id()
                );
                if node.state.len() > committed.len() {
                    committed = node.state.clone();
                }
            }
        }
        for _ in 0..30 {
            group.tick();
        }
        for (id, node) in &group.nodes {
            assert!(
                node.state.starts_with(&committed),
                "round {round}: node {id} lost committed commands ({} of {} left)",
                node.state.len(),
                committed.len()
            );
        }
        let crashes: u64 = group.nodes.values().map(|n| n.restarts).sum();
        assert!(crashes > 0, "round {round}: no crash happened");
    }
    assert!(lossy > 0, "no crash found writes in flight");
}
