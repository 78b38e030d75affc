//! Catch-up after a failover and after a backup's outage, on a lossless three-replica group
//! (every message takes one tick, so a round trip is two): a new primary learns each backup's
//! durable tail from its first answer and streams what a backup lacks, so the time to serve
//! after a failover does not grow with the log; a backup behind what the primary compacted is
//! sent its snapshot once, and one that is not behind never is. Also how many prepares the same
//! writes take in each mode (`async` coalesces while a prepare is unanswered).

use std::collections::BTreeSet;

use bytes::Bytes;
use consensus_core::{Consensus, MemHost, MemStorage, NodeId, Replica, Storage};
use replication_primary::{
    Ack, Body, Config, ConfigManager, HardState, Message, PrimaryBackup, MANAGER,
};

type Engine = PrimaryBackup<MemStorage<HardState>>;

struct Group {
    replicas: Vec<(Replica<Engine>, MemHost<Message>)>,
    manager: ConfigManager,
    /// Sent during the last tick, delivered during the next.
    in_flight: Vec<Message>,
    /// Replicas cut off from everyone (they keep their state and keep ticking).
    cut: BTreeSet<NodeId>,
    now: u64,
    /// Snapshot messages sent, per addressee.
    snapshots_to: Vec<NodeId>,
    /// Prepares carrying entries delivered.
    prepares_with_entries: usize,
}

impl Group {
    fn new(ack: Ack) -> Self {
        let ids = [1, 2, 3];
        let replicas: Vec<_> = ids
            .iter()
            .map(|&id| {
                let engine = PrimaryBackup::new(Config::new(id, ids, ack), MemStorage::default());
                (Replica::new(engine.unwrap()), MemHost::new())
            })
            .collect();
        let initial = replicas[0].0.engine().configuration().clone();
        Group {
            replicas,
            manager: ConfigManager::new(initial, ids),
            in_flight: Vec::new(),
            cut: BTreeSet::new(),
            now: 0,
            snapshots_to: Vec::new(),
            prepares_with_entries: 0,
        }
    }

    fn engine(&self, id: NodeId) -> &Engine {
        self.replicas[id as usize - 1].0.engine()
    }

    fn serving(&self) -> Option<NodeId> {
        (1..=3).find(|&id| !self.cut.contains(&id) && self.engine(id).is_serving())
    }

    fn tick(&mut self) {
        self.now += 1;
        for m in std::mem::take(&mut self.in_flight) {
            if self.cut.contains(&m.from) || self.cut.contains(&m.to) {
                continue;
            }
            if m.to == MANAGER {
                let Body::Request(request) = m.body else {
                    continue;
                };
                if let Ok(config) = self.manager.handle(m.from, request) {
                    for to in 1..=3 {
                        let body = Body::Installed(config.clone());
                        let epoch = config.epoch;
                        self.in_flight.push(Message {
                            from: MANAGER,
                            to,
                            epoch,
                            body,
                        });
                    }
                }
                continue;
            }
            match &m.body {
                Body::Snapshot { .. } => self.snapshots_to.push(m.to),
                Body::Prepare { entries, .. } if !entries.is_empty() => {
                    self.prepares_with_entries += 1
                }
                _ => {}
            }
            let (r, _) = &mut self.replicas[m.to as usize - 1];
            r.engine_mut().step(m).unwrap();
        }
        for (r, host) in &mut self.replicas {
            r.engine_mut().tick();
            r.drive(host).unwrap();
            self.in_flight.append(&mut host.messages);
        }
    }

    /// Ticks until `done` holds; the ticks it took (fails past `limit`).
    fn until(&mut self, limit: u64, done: impl Fn(&Group) -> bool) -> u64 {
        let start = self.now;
        while !done(self) {
            assert!(self.now - start < limit, "not done within {limit} ticks");
            self.tick();
        }
        self.now - start
    }

    /// Writes `n` entries at the serving primary, up to 32 a tick, until all are committed.
    fn write(&mut self, n: u64) {
        let mut left = n;
        let target = self
            .engine(self.serving().expect("a primary"))
            .status()
            .last_index
            + n;
        while left > 0
            || self
                .serving()
                .is_none_or(|p| self.engine(p).status().commit < target)
        {
            if let Some(p) = self.serving() {
                let (r, host) = &mut self.replicas[p as usize - 1];
                for _ in 0..left.min(32) {
                    // `async` flow control refuses writes beyond its window: retry next tick.
                    if r.engine_mut().propose(Bytes::from_static(b"x")).is_err() {
                        break;
                    }
                    left -= 1;
                }
                r.drive(host).unwrap();
                self.in_flight.append(&mut host.messages);
            }
            self.tick();
            assert!(self.now < 100_000, "writes never committed");
        }
    }

    /// Proposes `n` entries at the serving primary, `per_tick` a tick, each sent off on its own
    /// (a drive after every proposal, as a host that proposes as requests arrive), then ticks
    /// until they are committed.
    fn write_one_by_one(&mut self, n: u64, per_tick: u64) {
        let p = self.serving().expect("a primary");
        let target = self.engine(p).status().last_index + n;
        let mut left = n;
        while left > 0 {
            let (r, host) = &mut self.replicas[p as usize - 1];
            for _ in 0..left.min(per_tick) {
                r.engine_mut().propose(Bytes::from_static(b"x")).unwrap();
                r.drive(host).unwrap();
                left -= 1;
            }
            self.in_flight.append(&mut host.messages);
            self.tick();
        }
        self.until(1_000, |g| g.engine(p).status().commit >= target);
    }

    /// Compacts `id`'s log through what it applied, as a host snapshotting its state does.
    fn compact(&mut self, id: NodeId) -> u64 {
        let (r, host) = &mut self.replicas[id as usize - 1];
        let index = host.applied.last().map_or(0, |e| e.index);
        let conf = r.engine().status().conf_state;
        let data = Bytes::from(format!("state through {index}"));
        r.engine_mut()
            .storage_mut()
            .compact(index, conf, data)
            .unwrap();
        index
    }
}

/// Ticks from cutting off the primary to the new primary serving, after `n` writes.
fn failover_ticks(ack: Ack, n: u64) -> u64 {
    let mut g = Group::new(ack);
    g.until(200, |g| g.serving().is_some());
    g.write(n);
    let old = g.serving().unwrap();
    g.cut.insert(old);
    g.until(1_000, |g| g.serving().is_some_and(|p| p != old))
}

#[test]
fn failover_time_does_not_grow_with_the_log() {
    for ack in [Ack::All, Ack::Quorum, Ack::Async] {
        let short = failover_ticks(ack, 64);
        let long = failover_ticks(ack, 4_000);
        eprintln!(
            "{ack:?}: failover after 64 writes {short} ticks, after 4000 writes {long} ticks"
        );
        // Re-sending the log from index 1, a batch of 32 per tick, would take 125 ticks more.
        assert!(
            long <= short + 4,
            "{ack:?}: {long} ticks after 4000 writes vs {short} after 64"
        );
    }
}

#[test]
fn a_backup_back_from_an_outage_is_streamed_what_it_missed() {
    let mut g = Group::new(Ack::All);
    g.until(200, |g| g.serving().is_some());
    let primary = g.serving().unwrap();
    let lagging = if primary == 3 { 2 } else { 3 };
    g.cut.insert(lagging);
    g.write(4_000);
    let last = g.engine(primary).status().last_index;
    g.cut.remove(&lagging);
    let ticks = g.until(1_000, |g| {
        g.engine(lagging).status().persisted_index >= last
    });
    eprintln!("a backup 4000 entries behind caught up in {ticks} ticks");
    // A window of 4 batches of 32 per round trip of 2 ticks: 4000 / 64 ≈ 63 ticks, plus the
    // probe; one batch per tick would take 125.
    assert!(ticks <= 80, "{ticks} ticks");
}

#[test]
fn a_backup_behind_the_compacted_log_installs_the_primarys_snapshot_and_one_in_sync_never_does() {
    for ack in [Ack::All, Ack::Quorum, Ack::Async] {
        let mut g = Group::new(ack);
        g.until(200, |g| g.serving().is_some());
        let primary = g.serving().unwrap();
        let lagging = if primary == 3 { 2 } else { 3 };
        let in_sync = 6 - primary - lagging;
        g.write(100);
        g.cut.insert(lagging);
        g.write(1_000);
        let compacted = g.compact(primary);
        g.compact(in_sync);
        g.write(10);
        assert!(g.snapshots_to.is_empty(), "{ack:?}: {:?}", g.snapshots_to);
        g.cut.remove(&lagging);
        let last = g.engine(primary).status().last_index;
        let ticks = g.until(1_000, |g| {
            g.engine(lagging).status().persisted_index >= last
        });
        g.write(10);
        assert_eq!(
            g.snapshots_to,
            vec![lagging],
            "{ack:?}: one snapshot, to the lagging backup"
        );
        let (r, host) = &g.replicas[lagging as usize - 1];
        let snapshot = r.engine().storage().snapshot().unwrap();
        assert_eq!(snapshot.meta.index, compacted, "{ack:?}");
        assert_eq!(
            snapshot.data,
            format!("state through {compacted}"),
            "{ack:?}"
        );
        // The state machine restarted from the snapshot, then applied the rest of the log.
        let first_applied = host.applied.iter().find(|e| e.index > 100).map(|e| e.index);
        assert_eq!(first_applied, Some(compacted + 1), "{ack:?}");
        let applied = host.applied.last().map_or(0, |e| e.index);
        assert!(
            applied >= last,
            "{ack:?}: applied through {applied} of {last}"
        );
        // (A snapshot the primary sent while the backup was cut off is sent again after
        // `snapshot_retry_ticks`.)
        eprintln!("{ack:?}: caught up from a snapshot at {compacted} in {ticks} ticks");
    }
}

#[test]
fn an_async_primary_coalesces_entries_while_a_prepare_is_unanswered_and_the_others_do_not() {
    let prepares = |ack: Ack| {
        let mut g = Group::new(ack);
        g.until(100, |g| g.serving().is_some());
        let before = g.prepares_with_entries;
        // 4 a tick for 50 ticks; a round trip takes 2 ticks.
        g.write_one_by_one(200, 4);
        g.prepares_with_entries - before
    };
    let all = prepares(Ack::All);
    let quorum = prepares(Ack::Quorum);
    let asynchronous = prepares(Ack::Async);
    // Every proposal goes to both backups at once where writes wait for them.
    assert!(all >= 400 && quorum >= 400, "all {all}, quorum {quorum}");
    // One prepare in flight per backup: at most about one per round trip each.
    assert!(
        asynchronous * 4 <= all,
        "async {asynchronous} prepares against all {all}"
    );
}
