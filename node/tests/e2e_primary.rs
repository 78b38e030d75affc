//! End-to-end, `replication = "primary-backup"`: real `quorate serve` processes on loopback,
//! the configuration manager a Raft group of the same three nodes.
//!
//! - the primary is killed (-9) under four writers, in `all` and in `quorum` mode: a backup takes
//!   over after its grace period (in a new epoch) and no acknowledged write is lost, none
//!   applied twice;
//! - a backup killed and restarted after more writes catches up from the primary's log and
//!   rejoins the in-sync set;
//! - reads: linearizable at the primary (a client asking a backup is sent there), stale at a
//!   backup; `cluster status` names primary, epoch, in-sync set and each backup's lag;
//! - a data directory records its mode: a Raft node refuses a primary-backup one;
//! - a primary cut off from both backups (UDP relays, [`common::relay`]) stops serving once its
//!   leases run out, before the others' grace period lets one of them take over; it acknowledges
//!   nothing meanwhile, and after the heal it follows the new epoch.
//!
//! Tests here run one at a time (2 cores shared).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kv::{all_keys, wait_caught_up, wait_primary};
use common::relay::RelayMesh;
use common::writers::Writers;
use common::{eventually, ProcCluster};
use node::client::Client;
use node::config::{AckSetting, Protocol, Replication, ServeConfig};
use node::proto::{Consistency, Role};

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pb(config: &mut ServeConfig) {
    config.replication = Replication::PrimaryBackup;
}

fn pb_all(config: &mut ServeConfig) {
    pb(config);
    config.primary_backup.ack = AckSetting::All;
}

fn pb_quorum(config: &mut ServeConfig) {
    pb(config);
    config.primary_backup.ack = AckSetting::Quorum;
}

async fn primary_killed_under_writes(tune: fn(&mut ServeConfig), mode: &str) {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start_with(Protocol::Raft, 3, tune);
    let client = Arc::new(cluster.client());
    let first = wait_primary(&client, &[1, 2, 3]).await;
    let primary = first.id;

    let writers = Writers::start(&client, 4, 80, Duration::from_millis(4));
    eventually("a third of the writes are acknowledged", || async {
        (writers.acked_so_far() >= writers.total / 3).then_some(())
    })
    .await;
    cluster.kill(primary);
    let killed_at = Instant::now();
    let at_kill = writers.acked_so_far();

    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != primary).collect();
    let next = wait_primary(&client, &survivors).await;
    let took_over = killed_at.elapsed();
    assert!(
        next.term > first.term,
        "the new primary serves in a new epoch: {} then {}",
        first.term,
        next.term
    );
    let acked = writers.finish().await;
    assert!(
        at_kill < acked.len(),
        "writes were still in flight when the primary died ({at_kill} acknowledged before)"
    );
    let keys = all_keys(&client).await;
    for key in &acked {
        let (w, i) = key[1..].split_once('-').unwrap();
        let (value, version) = keys
            .get(key)
            .unwrap_or_else(|| panic!("{mode}: {key} was acknowledged but is lost"));
        assert_eq!(value, &format!("{w}.{}", i.parse::<usize>().unwrap()));
        assert_eq!(*version, 1, "{mode}: {key} applied {version} times");
    }
    assert_eq!(keys.len(), acked.len(), "nothing but the writes");
    let grace = Duration::from_millis(20 * 12);
    assert!(
        took_over >= grace,
        "{mode}: a backup took over after {took_over:?}, before its grace period {grace:?}"
    );
    eprintln!(
        "{mode}: primary {primary} killed -> node {} serving in epoch {} after {took_over:?} \
         (lease 200 ms, grace 240 ms)",
        next.id, next.term
    );

    // The killed primary comes back as a backup of the new epoch and catches up.
    cluster.spawn(primary);
    let status = wait_caught_up(&client, next.id, primary).await;
    assert_eq!(status.keys as usize, acked.len());
    assert_eq!(status.role, Role::Follower);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_mode_loses_no_acknowledged_write_when_the_primary_is_killed_under_writes() {
    primary_killed_under_writes(pb_all, "all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_mode_loses_no_acknowledged_write_when_the_primary_is_killed_under_writes() {
    primary_killed_under_writes(pb_quorum, "quorum").await;
}

/// The in-sync set the primary `id` reports.
async fn in_sync(client: &Client, id: u64) -> Vec<u64> {
    let status = client.status_of(id).await.expect("status");
    status
        .detail("in_sync")
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_backup_catches_up_rejoins_the_in_sync_set_and_status_shows_each_step() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start_with(Protocol::Raft, 3, pb_all);
    let client = cluster.client();
    let primary = wait_primary(&client, &[1, 2, 3]).await.id;
    for i in 0..20 {
        client.put(format!("a-{i:02}"), "1").await.expect("put");
    }
    let backup = [1, 2, 3].into_iter().find(|&id| id != primary).unwrap();
    wait_caught_up(&client, primary, backup).await;

    // The backup dies: the primary's lease from it runs out, the manager removes it from the
    // in-sync set, and writes are acknowledged again without it.
    cluster.kill(backup);
    for i in 0..50 {
        client.put(format!("b-{i:02}"), "2").await.expect("put");
    }
    assert!(!in_sync(&client, primary).await.contains(&backup));
    let (code, out, err) = cluster.cli(&["cluster", "status"]);
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("{out}");
    assert!(
        out.contains(&format!("primary: node {primary}, epoch ")) && out.contains("serving"),
        "status names the primary and its epoch: {out}"
    );
    assert!(
        !out.contains(&format!("node {backup} 0")),
        "the dead backup shows a lag: {out}"
    );

    // It comes back, catches up from the primary's log and is added back.
    cluster.spawn(backup);
    let status = wait_caught_up(&client, primary, backup).await;
    assert_eq!(status.keys, 70);
    eventually("the backup rejoins the in-sync set", || async {
        in_sync(&client, primary)
            .await
            .contains(&backup)
            .then_some(())
    })
    .await;
    let (code, out, _) = cluster.cli(&["--json", "cluster", "status"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("status --json");
    let pb = &json["primary_backup"];
    assert_eq!(pb["primary"], primary, "{out}");
    assert_eq!(pb["in_sync"].as_array().map(Vec::len), Some(3), "{out}");
    assert!(
        pb["backup_lag"]
            .as_array()
            .is_some_and(|lags| lags.iter().any(|l| l[0] == backup)),
        "{out}"
    );

    // Reads: stale at the backup from its own state; linearizable through a client that knows
    // only the backup is sent to the primary and sees the latest write.
    client.put("last", "3").await.expect("put");
    let only_backup = cluster.client_of(&[backup], Duration::from_secs(10), Duration::from_secs(2));
    let latest = only_backup
        .get("last", Consistency::Linearizable)
        .await
        .expect("linearizable get through a backup");
    assert_eq!(latest.map(|kv| kv.value.to_vec()), Some(b"3".to_vec()));
    let stale = eventually("the backup applies the last write", || async {
        let kv = only_backup.get("b-49", Consistency::Stale).await.ok()??;
        Some(kv)
    })
    .await;
    assert_eq!(stale.value.to_vec(), b"2".to_vec());

    // Its data directory records the mode: started as a Raft node it refuses to open.
    cluster.kill(backup);
    let mut config = cluster.config(backup, false);
    config.replication = Replication::Consensus;
    std::fs::write(
        cluster.config_path(backup),
        config.to_toml_string().unwrap(),
    )
    .unwrap();
    cluster.spawn(backup);
    let exit = cluster
        .wait_exit(backup, common::WAIT)
        .expect("a raft node on a primary-backup data directory exits");
    assert!(!exit.success());
    let log = cluster.log(backup);
    assert!(
        log.contains("created for protocol \"primary-backup\", not \"raft\""),
        "the error names both modes: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_primary_stops_serving_when_its_leases_run_out_and_follows_after_the_heal() {
    let _serial = SERIAL.lock().await;
    // Every node reaches every other through its own relay; clients reach nodes directly.
    let mut procs = ProcCluster::prepare(Protocol::Raft, 3, pb_all);
    let relays = RelayMesh::spawn(&mut procs, 3);
    let client = procs.client();
    let old = wait_primary(&client, &[1, 2, 3]).await;
    for i in 0..10 {
        client.put(format!("before-{i}"), "1").await.expect("put");
    }
    let at_old = procs.client_of(&[old.id], Duration::from_secs(2), Duration::from_secs(1));
    at_old
        .get("before-9", Consistency::Linearizable)
        .await
        .expect("the primary serves linearizable reads");

    for other in [1, 2, 3].into_iter().filter(|&id| id != old.id) {
        relays.cut(old.id, other, true);
    }
    let cut_at = Instant::now();
    // Until a backup serves in a new epoch: each round asks the others first, then the old
    // primary. A backup serving at the first answer and the old primary serving at the later one
    // would be two primaries serving at once.
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old.id).collect();
    let stopped = std::sync::Mutex::new(None);
    let (next, took_over) = eventually("a backup serves in a new epoch", || async {
        let mut serving_new = None;
        for &id in &others {
            if let Ok(status) = client.status_of(id).await {
                if status.role == Role::Leader && status.detail("serving") == Some("true") {
                    serving_new = Some(status);
                }
            }
        }
        let took = cut_at.elapsed();
        if let Ok(status) = at_old.status_of(old.id).await {
            let serving = status.detail("serving") == Some("true");
            if let Some(new) = &serving_new {
                assert!(
                    !serving,
                    "node {} serves in epoch {} while the old primary {} still serves",
                    new.id, new.term, old.id
                );
            }
            let mut stopped = stopped.lock().unwrap();
            if !serving && stopped.is_none() {
                *stopped = Some(cut_at.elapsed());
            }
        }
        serving_new.map(|s| (s, took))
    })
    .await;
    assert!(
        next.term > old.term,
        "a new epoch: {} then {}",
        old.term,
        next.term
    );
    let stopped = stopped.into_inner().unwrap();
    eprintln!(
        "partition: old primary {} seen not serving {stopped:?} after the cut; node {} serving in epoch {} after {took_over:?}",
        old.id, next.id, next.term
    );
    // Cut off, the old primary acknowledges nothing and serves no linearizable read.
    assert!(at_old.put("during", "lost").await.is_err());
    assert!(at_old
        .get("before-9", Consistency::Linearizable)
        .await
        .is_err());
    client
        .put("after", "2")
        .await
        .expect("put at the new primary");

    for other in others {
        relays.cut(old.id, other, false);
    }
    let status = wait_caught_up(&client, next.id, old.id).await;
    assert_eq!(status.role, Role::Follower);
    assert!(status.term >= next.term);
    let keys = all_keys(&client).await;
    assert!(!keys.contains_key("during"), "{keys:?}");
    assert!(keys.contains_key("after") && keys.contains_key("before-9"));
    drop(relays);
}
