//! Behaviour of the node-wide shared log: groups interleaved in one log come back each with its
//! own records, one sync covers every group, crashes leave every group at a prefix of the shared
//! log holding every durable write, one group's compaction keeps the others' records, an idle
//! group is rewritten instead of pinning the log, and foreign or damaged directories are refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use consensus_core::{ConfState, Entry, EntryPayload, HardState, Storage, Write};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storage_wal::{MemFs, WalError};

use super::*;

fn identity(node_id: u64, group_id: u64) -> Identity {
    Identity {
        protocol: "raft".into(),
        cluster_id: "test-cluster".into(),
        node_id,
        group_id,
    }
}

fn shared_options(rewrite_after_records: u64) -> SharedOptions {
    SharedOptions {
        wal: storage_wal::Options {
            segment_size: 8 << 10,
            max_group_commit_delay: std::time::Duration::ZERO,
            ..storage_wal::Options::default()
        },
        background_sync: true,
        rewrite_after_records,
    }
}

fn store_options() -> StoreOptions {
    StoreOptions {
        trailing_entries: 0,
        ..StoreOptions::default()
    }
}

fn open_group(shared: &SharedLog, group: u64) -> RaftStore {
    shared
        .open_group(
            identity(1, group),
            ConfState::with_voters([1, 2, 3]),
            store_options(),
        )
        .expect("open group")
}

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Data(Bytes::from(data.to_string())),
    }
}

/// A Raft write: `entries` replace whatever followed the first of them.
fn write(entries: Vec<Entry>, hard_state: Option<HardState>) -> Write<HardState> {
    Write {
        snapshot: None,
        truncate_from: entries.first().map(|e| e.index),
        entries: entries.into(),
        hard_state,
        sync: true,
    }
}

fn live_entries(store: &impl Storage) -> Vec<Entry> {
    let mut out = Vec::new();
    let (first, last) = (store.first_index(), store.last_index());
    if first <= last {
        store
            .entries(first, last + 1, u64::MAX, &mut out)
            .expect("live entries readable");
    }
    out
}

#[test]
fn interleaved_groups_come_back_each_with_its_own_records() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedLog::open(dir.path(), shared_options(u64::MAX)).unwrap();
    let mut stores: Vec<RaftStore> = (1..=3).map(|g| open_group(&shared, g)).collect();
    let mut last = 0;
    for index in 1..=40u64 {
        for (g, store) in stores.iter_mut().enumerate() {
            let g = g as u64 + 1;
            let hard = HardState {
                term: g,
                vote: g,
                commit: index - 1,
            };
            let data = format!("g{g}-{index}");
            last = store
                .submit(&write(vec![entry(index, g, &data)], Some(hard)))
                .unwrap();
        }
    }
    // A conflicting suffix in group 2 only.
    last = last.max(
        stores[1]
            .submit(&write(vec![entry(30, 9, "g2-new-30")], None))
            .unwrap(),
    );
    stores[0].wait_durable(last).unwrap();
    drop(stores);
    drop(shared);

    let shared = SharedLog::open(dir.path(), shared_options(u64::MAX)).unwrap();
    assert_eq!(shared.groups(), vec![1, 2, 3]);
    for g in 1..=3u64 {
        let store = open_group(&shared, g);
        assert!(!store.recovery().created, "group {g} existed");
        let entries = live_entries(&store);
        let expected: Vec<Entry> = match g {
            2 => (1..30)
                .map(|i| entry(i, 2, &format!("g2-{i}")))
                .chain([entry(30, 9, "g2-new-30")])
                .collect(),
            _ => (1..=40)
                .map(|i| entry(i, g, &format!("g{g}-{i}")))
                .collect(),
        };
        assert_eq!(entries, expected, "group {g}");
        assert_eq!(store.hard_state().term, g, "group {g}");
        assert_eq!(store.hard_state().commit, 39, "group {g}");
    }
}

#[test]
fn one_sync_covers_every_groups_writes_of_a_round() {
    let dir = tempfile::tempdir().unwrap();
    let options = SharedOptions {
        background_sync: false,
        ..shared_options(u64::MAX)
    };
    let shared = SharedLog::open(dir.path(), options).unwrap();
    let mut stores: Vec<RaftStore> = (1..=8).map(|g| open_group(&shared, g)).collect();
    let mut watches: Vec<_> = stores.iter().map(|s| s.subscribe_durable()).collect();
    let before = shared.stats().syncs;
    let mut tokens = Vec::new();
    for store in &mut stores {
        tokens.push(store.submit(&write(vec![entry(1, 1, "x")], None)).unwrap());
    }
    let durable = stores[3].sync().unwrap();
    assert_eq!(
        shared.stats().syncs,
        before + 1,
        "one fdatasync for eight groups"
    );
    for (token, watch) in tokens.iter().zip(&mut watches) {
        assert!(*token <= durable);
        assert!(watch.has_changed().unwrap());
        assert!(watch.borrow_and_update().index >= *token);
    }
}

/// One group's state as the test's model holds it.
#[derive(Clone, Debug, PartialEq, Default)]
struct State {
    entries: Vec<Entry>,
    hard: HardState,
}

impl State {
    fn of(store: &RaftStore) -> State {
        State {
            entries: live_entries(store),
            hard: store.hard_state(),
        }
    }

    /// The same as `store` shows, from the store's first index on.
    fn matches(&self, store: &RaftStore) -> bool {
        let first = store.first_index();
        let ours: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.index >= first)
            .cloned()
            .collect();
        ours == live_entries(store)
            && self.hard == store.hard_state()
            && self
                .entries
                .last()
                .map_or(0, |e| e.index)
                .max(store.snapshot_meta().index)
                == store.last_index()
    }
}

/// Every state a group went through, each with the WAL index of the record that made it.
struct History {
    states: Vec<(u64, State)>,
    /// States `[0, kept)` survive any crash (made durable by a snapshot's sync, or recovered).
    kept: usize,
}

const GROUPS: u64 = 4;
const MEM_DIR: &str = "/data/node";

fn open_all(fs: &MemFs, options: SharedOptions) -> (SharedLog, BTreeMap<u64, RaftStore>) {
    let shared =
        SharedLog::open_with_fs(Arc::new(fs.clone()), MEM_DIR, options).expect("open after crash");
    let stores = (1..=GROUPS).map(|g| (g, open_group(&shared, g))).collect();
    (shared, stores)
}

#[test]
fn after_random_crashes_every_group_is_at_one_prefix_of_the_shared_log_with_its_durable_writes() {
    let (mut crashes, mut lost, mut snapshots, mut rewrites) = (0, 0, 0, 0);
    for seed in 0..40u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let options = shared_options(if seed % 2 == 0 { 60 } else { u64::MAX });
        let mut fs = MemFs::new();
        let (mut shared, mut stores) = open_all(&fs, options.clone());
        let mut histories: BTreeMap<u64, History> = (1..=GROUPS)
            .map(|g| {
                let history = History {
                    states: vec![(0, State::default())],
                    kept: 1,
                };
                (g, history)
            })
            .collect();
        let mut term = 1;
        for step in 0..150u64 {
            let g = rng.gen_range(1..=GROUPS);
            let store = stores.get_mut(&g).unwrap();
            let history = histories.get_mut(&g).unwrap();
            let current = history.states.last().unwrap().1.clone();
            let last = current.entries.last().map_or(0, |e| e.index);
            let snapshot_index = store.snapshot_meta().index;
            match rng.gen_range(0..100) {
                0..=7 => {
                    // Crash: every group must come back at the same cut of the shared log, at
                    // or past every durable write.
                    if rng.gen_bool(0.5) {
                        shared.sync().unwrap();
                    }
                    let durable = shared.durable_index();
                    let crashed = fs.crash(seed * 1000 + step);
                    drop(stores);
                    drop(shared);
                    fs = crashed;
                    (shared, stores) = open_all(&fs, options.clone());
                    crashes += 1;
                    // Each group's states that match what it recovered (equal states may
                    // repeat), then one cut of the log they all agree with.
                    let mut candidates = BTreeMap::new();
                    for (g, history) in &histories {
                        let store = &stores[g];
                        let must = history
                            .states
                            .iter()
                            .rposition(|(wal, _)| *wal <= durable)
                            .unwrap()
                            .max(history.kept - 1);
                        let matching: Vec<usize> = (must..history.states.len())
                            .filter(|&k| history.states[k].1.matches(store))
                            .collect();
                        assert!(
                            !matching.is_empty(),
                            "seed {seed} step {step}: group {g} recovered {:?}, no state from \
                             {must} of {:?} (durable {durable})",
                            State::of(store),
                            history.states
                        );
                        candidates.insert(*g, matching);
                    }
                    let span = |g: &u64, k: usize| {
                        let states = &histories[g].states;
                        (states[k].0, states.get(k + 1).map_or(u64::MAX, |s| s.0))
                    };
                    let state_at = |g: &u64, cut: u64| {
                        candidates[g].iter().copied().find(|&k| {
                            let (lo, hi) = span(g, k);
                            lo <= cut && cut < hi
                        })
                    };
                    let cut = candidates
                        .iter()
                        .flat_map(|(g, ks)| ks.iter().map(|&k| span(g, k).0))
                        .filter(|&cut| histories.keys().all(|g| state_at(g, cut).is_some()))
                        .max()
                        .unwrap_or_else(|| {
                            panic!(
                                "seed {seed} step {step}: the groups recovered different cuts \
                                 of the log: {candidates:?}"
                            )
                        });
                    let chosen: Vec<(u64, usize)> = histories
                        .keys()
                        .map(|g| (*g, state_at(g, cut).unwrap()))
                        .collect();
                    for (g, k) in chosen {
                        let history = histories.get_mut(&g).unwrap();
                        lost += u64::from(k + 1 < history.states.len());
                        history.states.truncate(k + 1);
                        history.kept = history.states.len();
                    }
                }
                8..=15 if last > snapshot_index => {
                    // A snapshot of this group: its file, a checkpoint and compaction.
                    let index = rng.gen_range(snapshot_index + 1..=last);
                    let data = Bytes::from(format!("g{g}@{index}"));
                    store
                        .save_snapshot(index, ConfState::with_voters([1, 2, 3]), data)
                        .unwrap();
                    // The snapshot waited for every earlier record.
                    history.kept = history.states.len();
                    snapshots += 1;
                }
                16..=20 => {
                    rewrites += shared.compact().unwrap();
                }
                21..=35 => {
                    term += 1;
                    let hard = HardState {
                        term,
                        vote: g,
                        commit: current.hard.commit,
                    };
                    let wal = store.submit(&write(Vec::new(), Some(hard))).unwrap();
                    history.states.push((wal, State { hard, ..current }));
                }
                36..=45 if last > snapshot_index + 1 => {
                    // A conflicting entry cuts the suffix: two records, two states.
                    let index = rng.gen_range(snapshot_index + 1..last);
                    let new = entry(index, term, &format!("s{seed}-{step}"));
                    let wal = store.submit(&write(vec![new.clone()], None)).unwrap();
                    let mut cut = current.clone();
                    cut.entries.retain(|e| e.index < index);
                    history.states.push((wal - 1, cut.clone()));
                    cut.entries.push(new);
                    history.states.push((wal, cut));
                }
                _ => {
                    let new = entry(last + 1, term, &format!("s{seed}-{step}"));
                    let wal = store.submit(&write(vec![new.clone()], None)).unwrap();
                    let mut next = current.clone();
                    next.entries.push(new);
                    history.states.push((wal, next));
                }
            }
            for (g, store) in &stores {
                let (_, state) = histories[g].states.last().unwrap();
                assert!(state.matches(store), "seed {seed} step {step}: group {g}");
                let snapshot = store.snapshot().unwrap();
                if snapshot.meta.index > 0 {
                    assert_eq!(
                        snapshot.data,
                        Bytes::from(format!("g{g}@{}", snapshot.meta.index)),
                        "seed {seed} step {step}: group {g}'s snapshot data"
                    );
                }
            }
        }
    }
    assert!(crashes > 200, "only {crashes} crashes");
    assert!(lost > 0, "no crash lost anything");
    assert!(snapshots > 100, "only {snapshots} snapshots");
    assert!(rewrites > 0, "no group was rewritten");
}

/// Fills group 1 with `count` entries of 300 bytes, then snapshots it at its last entry.
fn busy_group_snapshots(store: &mut RaftStore, from: u64, count: u64) {
    let mut last = 0;
    for index in from..from + count {
        last = store
            .submit(&write(vec![entry(index, 1, &"x".repeat(300))], None))
            .unwrap();
    }
    store.wait_durable(last).unwrap();
    let index = from + count - 1;
    store
        .save_snapshot(
            index,
            ConfState::with_voters([1, 2, 3]),
            Bytes::from("busy"),
        )
        .unwrap();
}

fn idle_group_keeps_its_records(rewrite_after_records: u64) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedLog::open(dir.path(), shared_options(rewrite_after_records)).unwrap();
    let mut busy = open_group(&shared, 1);
    let mut idle = open_group(&shared, 2);
    let idle_entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1, &format!("idle-{i}"))).collect();
    let hard = HardState {
        term: 1,
        vote: 2,
        commit: 2,
    };
    let idle_at = idle
        .submit(&write(idle_entries.clone(), Some(hard)))
        .unwrap();
    idle.wait_durable(idle_at).unwrap();
    busy_group_snapshots(&mut busy, 1, 200);
    busy_group_snapshots(&mut busy, 201, 200);
    let first = shared.first_index();
    assert_eq!(
        busy.first_index(),
        401,
        "the busy group compacted its own log"
    );
    drop((busy, idle, shared));

    let shared = SharedLog::open(dir.path(), shared_options(rewrite_after_records)).unwrap();
    let idle = open_group(&shared, 2);
    assert_eq!(live_entries(&idle), idle_entries);
    assert_eq!(idle.hard_state(), hard);
    let busy = open_group(&shared, 1);
    assert_eq!(busy.snapshot_meta().index, 400);
    assert_eq!(busy.snapshot().unwrap().data, Bytes::from("busy"));
    (first, idle_at)
}

#[test]
fn a_groups_snapshot_and_compaction_keep_another_groups_records() {
    // Without rewrites the idle group pins the log at its records.
    let (first, idle_at) = idle_group_keeps_its_records(u64::MAX);
    assert!(
        first <= idle_at,
        "log starts at {first}, past the idle group's record {idle_at}"
    );
}

#[test]
fn an_idle_group_is_rewritten_rather_than_pinning_the_log() {
    let (first, idle_at) = idle_group_keeps_its_records(100);
    assert!(
        first > idle_at,
        "log still starts at {first}, at or before the idle group's record {idle_at}"
    );
}

#[test]
fn a_shared_log_of_another_protocol_cluster_or_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedLog::open(dir.path(), shared_options(u64::MAX)).unwrap();
    drop(open_group(&shared, 1));
    let refused = |identity: Identity| {
        shared
            .open_group::<HardState>(identity, ConfState::default(), store_options())
            .expect_err("a foreign identity")
    };
    let error = refused(Identity {
        cluster_id: "another-cluster".into(),
        ..identity(1, 1)
    });
    assert!(
        matches!(&error, StoreError::WrongCluster { found, .. } if found == "test-cluster"),
        "{error:?}"
    );
    let error = refused(Identity {
        protocol: "multi-paxos".into(),
        ..identity(1, 2)
    });
    assert!(
        matches!(&error, StoreError::WrongProtocol { found, .. } if found == "raft"),
        "{error:?}"
    );
    let error = refused(identity(2, 1));
    assert!(
        matches!(
            error,
            StoreError::WrongMember {
                found_node: 1,
                expected_node: 2,
                ..
            }
        ),
        "{error:?}"
    );
    // The same after a reopen, from the recorded identity.
    drop(shared);
    let shared = SharedLog::open(dir.path(), shared_options(u64::MAX)).unwrap();
    let error = shared
        .open_group::<HardState>(identity(3, 1), ConfState::default(), store_options())
        .expect_err("another node's log");
    assert!(
        matches!(error, StoreError::WrongMember { found_node: 1, .. }),
        "{error:?}"
    );
    // A group is open once at a time.
    let _one = open_group(&shared, 1);
    let error = shared
        .open_group::<HardState>(identity(1, 1), ConfState::default(), store_options())
        .expect_err("group 1 is open");
    assert!(
        matches!(error, StoreError::GroupInUse { group: 1, .. }),
        "{error:?}"
    );
}

#[test]
fn a_single_group_directory_and_a_shared_one_refuse_each_other() {
    let single = tempfile::tempdir().unwrap();
    RaftStore::open(
        single.path(),
        identity(1, 0),
        ConfState::default(),
        store_options(),
    )
    .unwrap()
    .close()
    .unwrap();
    let error = SharedLog::open(single.path(), shared_options(u64::MAX)).expect_err("single");
    assert!(matches!(error, StoreError::WrongLayout { .. }), "{error:?}");
    assert!(error.to_string().contains("wal/"), "{error}");

    let node = tempfile::tempdir().unwrap();
    let shared = SharedLog::open(node.path(), shared_options(u64::MAX)).unwrap();
    drop(open_group(&shared, 1));
    drop(shared);
    let error = RaftStore::open(
        node.path(),
        identity(1, 0),
        ConfState::default(),
        store_options(),
    )
    .expect_err("shared");
    assert!(matches!(error, StoreError::WrongLayout { .. }), "{error:?}");
    assert!(error.to_string().contains("shared-wal/"), "{error}");
    // A group directory with a log of its own (one store per group) is refused too.
    let per_group = tempfile::tempdir().unwrap();
    let group_dir = per_group.path().join(GROUPS_DIR).join("1");
    RaftStore::open(
        &group_dir,
        identity(1, 1),
        ConfState::default(),
        store_options(),
    )
    .unwrap()
    .close()
    .unwrap();
    let shared = SharedLog::open(per_group.path(), shared_options(u64::MAX)).unwrap();
    let error = shared
        .open_group::<HardState>(identity(1, 1), ConfState::default(), store_options())
        .expect_err("a group store with its own log");
    assert!(matches!(error, StoreError::WrongLayout { .. }), "{error:?}");
}

fn shared_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(SHARED_WAL_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_corrupted_shared_segment_is_an_error_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedLog::open(dir.path(), shared_options(u64::MAX)).unwrap();
    let mut stores: Vec<RaftStore> = (1..=2).map(|g| open_group(&shared, g)).collect();
    for index in 1..=60 {
        for store in &mut stores {
            store
                .submit(&write(vec![entry(index, 1, &"y".repeat(300))], None))
                .unwrap();
        }
    }
    shared.sync().unwrap();
    drop((stores, shared));
    let files = shared_segments(dir.path());
    assert!(files.len() >= 3, "expected several segments, got {files:?}");
    let victim = &files[files.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[40 + 30] ^= 0x5a; // inside the first record after the 40-byte segment header
    std::fs::write(victim, bytes).unwrap();
    let error = SharedLog::open(dir.path(), shared_options(u64::MAX))
        .expect_err("a damaged middle segment must not open");
    match &error {
        StoreError::Wal(WalError::Corrupt { path, .. }) => assert_eq!(path, victim),
        other => panic!("expected a corrupt-segment error, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&victim.display().to_string()), "{message}");
    assert!(message.contains("offset"), "{message}");
}
