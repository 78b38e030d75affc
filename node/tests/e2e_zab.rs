//! End-to-end, Zab only: real `quorate serve --protocol zab` processes on loopback.
//!
//! - the leader is killed (-9) while several clients write: no acknowledged write is lost, and
//!   a write the client retried across the failover is applied once;
//! - a member that comes back holding proposals no quorum ever saw (it led alone for a moment)
//!   is truncated (TRUNC) by the leader the others elected meanwhile.
//!
//! The per-protocol scenarios (KV features, restart, catch-up, SNAP after compaction,
//! membership) run under Zab too, in `e2e_cluster.rs`. Tests here run one at a time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::kv::{all_keys, wait_caught_up};
use common::writers::Writers;
use common::{eventually, ProcCluster};
use node::config::Protocol;
use node::proto::Consistency;

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_the_leader_is_killed_under_writes_and_retries_apply_once(
) {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start_with(Protocol::Zab, 3, |_| {});
    let client = Arc::new(cluster.client());
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;

    // Four writers, each putting its own keys once; a put whose reply the failover cut off is
    // retried by the client in the same session with the same sequence number.
    let writers = Writers::start(&client, 4, 60, Duration::ZERO);
    eventually("a third of the writes are acknowledged", || async {
        (writers.acked_so_far() >= writers.total / 3).then_some(())
    })
    .await;
    cluster.kill(leader);
    let at_kill = writers.acked_so_far();

    let acked = writers.finish().await;
    assert!(
        at_kill < acked.len(),
        "writes were still in flight when the leader died ({at_kill} acknowledged before)"
    );
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let new_leader = cluster.wait_leader(&client, &survivors).await;
    assert_ne!(new_leader, leader);

    let keys = all_keys(&client).await;
    for key in &acked {
        let (w, i) = key[1..].split_once('-').unwrap();
        let (value, version) = keys
            .get(key)
            .unwrap_or_else(|| panic!("{key} was acknowledged but is lost"));
        assert_eq!(value, &format!("{w}.{}", i.parse::<usize>().unwrap()));
        assert_eq!(
            *version, 1,
            "{key} was put once but applied {version} times (a retry applied again)"
        );
    }
    assert_eq!(keys.len(), acked.len(), "nothing but the writes: {keys:?}");

    // The killed leader comes back as a follower of the new epoch and catches up.
    cluster.spawn(leader);
    let status = wait_caught_up(&client, new_leader, leader).await;
    assert_eq!(status.keys as usize, acked.len());
    assert_eq!(status.detail("state"), Some("following"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_returning_with_proposals_no_quorum_saw_is_truncated_by_the_new_leader() {
    let _serial = SERIAL.lock().await;
    // A 0.5 s election timeout: room for the lone leader to take writes before it notices it
    // lost its quorum.
    let mut cluster = ProcCluster::start_with(Protocol::Zab, 3, |config| {
        config.raft.election_ticks = 25;
    });
    let client = cluster.client();
    let old_leader = cluster.wait_leader(&client, &[1, 2, 3]).await;
    for i in 0..5 {
        client
            .put(format!("committed-{i}"), "yes")
            .await
            .expect("put");
    }
    let followers: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|&id| id != old_leader)
        .collect();
    for &id in &followers {
        wait_caught_up(&client, old_leader, id).await;
    }

    // Both followers die; the leader takes writes it can write to its own disk but never commit
    // (sent by a client that knows only the leader and is already connected to it).
    let doomed = Arc::new(cluster.client_of(
        &[old_leader],
        Duration::from_secs(3),
        Duration::from_secs(3),
    ));
    doomed.status_of(old_leader).await.expect("connect");
    for &id in &followers {
        cluster.kill(id);
    }
    let mut lost = Vec::new();
    for i in 0..3 {
        let doomed = doomed.clone();
        lost.push(tokio::spawn(async move {
            doomed.put(format!("uncommitted-{i}"), "no").await
        }));
    }
    let before = eventually(
        "the lone leader holds durable uncommitted proposals",
        || async {
            match client.status_of(old_leader).await {
                Ok(s) if s.persisted_index > s.commit_index => Some(s),
                _ => None,
            }
        },
    )
    .await;
    cluster.kill(old_leader);
    for task in lost {
        task.abort();
    }
    drop(doomed);

    // The followers come back, elect one of them in a new epoch and commit new writes over the
    // positions the old leader filled alone.
    for &id in &followers {
        cluster.spawn(id);
    }
    let new_leader = cluster.wait_leader(&client, &followers).await;
    for i in 0..5 {
        client
            .put(format!("after-{i}"), "yes")
            .await
            .expect("put in the new epoch");
    }
    let new_status = client.status_of(new_leader).await.expect("status");
    assert!(
        new_status.term > before.term,
        "a new epoch: {new_status:?} after {before:?}"
    );

    // The old leader returns: its extra proposals are cut and it takes the new history.
    cluster.spawn(old_leader);
    let status = wait_caught_up(&client, new_leader, old_leader).await;
    let log = cluster.log(old_leader);
    assert!(
        log.contains("zab: TRUNC: dropping proposals the new leader never saw"),
        "the returning member was truncated (it held up to {} with commit {}); its log:\n{log}",
        before.last_index,
        before.commit_index
    );
    for i in 0..3 {
        for id in [1, 2, 3] {
            assert!(
                client
                    .get_from(id, format!("uncommitted-{i}"), Consistency::Stale)
                    .await
                    .expect("read")
                    .is_none(),
                "uncommitted-{i} never reached a quorum but node {id} has it"
            );
        }
    }
    for i in 0..5 {
        for key in [format!("committed-{i}"), format!("after-{i}")] {
            assert!(
                client
                    .get_from(old_leader, key.clone(), Consistency::Stale)
                    .await
                    .expect("read")
                    .is_some(),
                "{key} on the returning member"
            );
        }
    }
    assert_eq!(status.keys, 10, "{status:?}");
}
