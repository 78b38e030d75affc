//! End-to-end, `replication = "primary-backup"` with logs compacted often (a local snapshot every
//! 20 applied entries, none kept below it): a backup restarted after the primary compacted past
//! what it holds is sent the primary's snapshot and catches up from it, and a failover on
//! compacted logs loses no acknowledged write (`all` mode). Real `quorate serve` processes on
//! loopback.

mod common;

use common::kv::{all_keys, wait_caught_up, wait_primary};
use common::{eventually, ProcCluster};
use node::config::{AckSetting, Protocol, Replication, ServeConfig};

fn pb_all_compacting(config: &mut ServeConfig) {
    config.replication = Replication::PrimaryBackup;
    config.primary_backup.ack = AckSetting::All;
    config.snapshot.entries = 20;
    config.snapshot.trailing_entries = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_behind_the_compacted_log_catches_up_from_the_primarys_snapshot() {
    let mut cluster = ProcCluster::start_with(Protocol::Raft, 3, pb_all_compacting);
    let client = cluster.client();
    let primary = wait_primary(&client, &[1, 2, 3]).await.id;
    for i in 0..20 {
        client.put(format!("a-{i:03}"), "1").await.expect("put");
    }
    let backup = [1, 2, 3].into_iter().find(|&id| id != primary).unwrap();
    let other = 6 - primary - backup;
    wait_caught_up(&client, primary, backup).await;

    // The backup is down while the primary writes and compacts past everything it holds.
    cluster.kill(backup);
    for i in 0..120 {
        client.put(format!("b-{i:03}"), "2").await.expect("put");
    }
    let status = client.status_of(primary).await.expect("primary status");
    assert!(
        status.snapshot_index > 40,
        "the primary compacted past the backup: {status:?}"
    );

    cluster.spawn(backup);
    let caught_up = wait_caught_up(&client, primary, backup).await;
    assert_eq!(caught_up.keys, 140);
    let log = cluster.log(backup);
    assert!(
        log.contains("installed snapshot from the leader"),
        "the backup caught up from a snapshot: {log}"
    );

    // A failover on compacted logs: the primary dies once the backup is back in the in-sync set
    // (so `all` mode needs it), and every acknowledged write is still there.
    eventually("the backup rejoins the in-sync set", || async {
        let status = client.status_of(primary).await.ok()?;
        let in_sync = status.detail("in_sync")?.to_string();
        in_sync
            .split(',')
            .any(|id| id == backup.to_string())
            .then_some(())
    })
    .await;
    for i in 0..10 {
        client.put(format!("c-{i:03}"), "3").await.expect("put");
    }
    cluster.kill(primary);
    let next = wait_primary(&client, &[backup, other]).await.id;
    client
        .put("after", "4")
        .await
        .expect("put on the new primary");
    let keys = all_keys(&client).await;
    assert_eq!(keys.len(), 151, "new primary {next}: {keys:?}");
    for (prefix, count, value) in [("a-", 20, "1"), ("b-", 120, "2"), ("c-", 10, "3")] {
        let held = keys
            .iter()
            .filter(|(k, (v, _))| k.starts_with(prefix) && v == value)
            .count();
        assert_eq!(held, count, "{prefix}* on new primary {next}");
    }
}
