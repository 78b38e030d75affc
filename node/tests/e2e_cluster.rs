//! End-to-end: real `quorate` processes on loopback, driven through `node::client::Client`.
//!
//! Every scenario runs under each protocol (`raft::*`, `multi_paxos::*`, `zab::*`, see
//! `per_protocol!`); the Zab-specific ones (TRUNC, kill -9 under concurrent writes) are in
//! `e2e_zab.rs`.
//! Each test starts its own cluster (ports, certificates and data in a temporary folder). Tests
//! in this file run one at a time (they share two cores with everything else).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::kv::{all_keys, wait_caught_up};
use common::{eventually, ProcCluster};
use node::client::{CasOutcome, Client};
use node::config::Protocol;
use node::proto::{Consistency, WriteOp, WriteResult};

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every key and its value.
async fn all_pairs(client: &Client) -> BTreeMap<String, String> {
    all_keys(client)
        .await
        .into_iter()
        .map(|(key, (value, _))| (key, value))
        .collect()
}

async fn acknowledged_writes_survive_a_killed_leader_and_the_restarted_node_catches_up_from_the_log(
    protocol: Protocol,
) {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start_with(protocol, 3, |_| {});
    let client = cluster.client();
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;

    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let (key, value) = (format!("k{i:03}"), format!("v{i}"));
        client.put(key.clone(), value.clone()).await.expect("put");
        acked.insert(key, value);
    }
    for (key, value) in &acked {
        let kv = client
            .get(key.clone(), Consistency::Linearizable)
            .await
            .expect("get")
            .expect("an acknowledged write is readable");
        assert_eq!(kv.value, value.as_bytes());
    }

    cluster.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let new_leader = cluster.wait_leader(&client, &survivors).await;
    assert_ne!(new_leader, leader);
    assert_eq!(
        all_pairs(&client).await,
        acked,
        "every acknowledged write survives"
    );

    // Writes go on without the old leader, then it comes back and catches up from the log.
    for i in 30..45 {
        let (key, value) = (format!("k{i:03}"), format!("v{i}"));
        client.put(key.clone(), value.clone()).await.expect("put");
        acked.insert(key, value);
    }
    cluster.spawn(leader);
    wait_caught_up(&client, new_leader, leader).await;
    for (key, value) in acked.iter().rev().take(5) {
        let kv = client
            .get_from(leader, key.clone(), Consistency::Stale)
            .await
            .expect("read from the restarted node")
            .expect("the restarted node has the write");
        assert_eq!(kv.value, value.as_bytes());
    }
    assert_eq!(all_pairs(&client).await, acked);
}

async fn a_node_restarted_after_the_log_was_compacted_catches_up_from_a_snapshot(
    protocol: Protocol,
) {
    let _serial = SERIAL.lock().await;
    const TRAILING: u64 = 10;
    let mut cluster = ProcCluster::start_with(protocol, 3, |config| {
        config.snapshot.entries = 20;
        config.snapshot.trailing_entries = TRAILING;
    });
    let client = Arc::new(cluster.client());
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    client.put("before", "down").await.expect("put");
    let follower_last = wait_caught_up(&client, leader, follower).await.last_index;
    cluster.kill(follower);

    // Write until the leader has compacted its log past what the follower has: the follower
    // can then only catch up by installing the leader's snapshot.
    let mut written = 1u64;
    let mut round = 0u32;
    let status = eventually("the leader compacts past the follower's log", || {
        let client = client.clone();
        round += 1;
        let round = round;
        written += 4 * 10;
        async move {
            let mut tasks = Vec::new();
            for w in 0..4 {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..10 {
                        client
                            .put(format!("r{round:03}-w{w}-{i}"), format!("{i}"))
                            .await
                            .expect("put while a follower is down");
                    }
                }));
            }
            for task in tasks {
                task.await.expect("writer task");
            }
            let status = client.status_of(leader).await.expect("leader status");
            (status.snapshot_index > follower_last + TRAILING + 1).then_some(status)
        }
    })
    .await;

    cluster.spawn(follower);
    let caught_up = wait_caught_up(&client, leader, follower).await;
    assert_eq!(caught_up.keys, written, "the follower has every key");
    let log = cluster.log(follower);
    assert!(
        log.contains("installed snapshot from the leader"),
        "the follower caught up through a snapshot (leader before restart: {status:?}; \
         follower now: {caught_up:?}); its log:\n{log}"
    );
    for key in ["before", "r001-w0-0", "r001-w3-9"] {
        assert!(
            client
                .get_from(follower, key, Consistency::Stale)
                .await
                .expect("read")
                .is_some(),
            "{key} on the restarted follower"
        );
    }
}

async fn a_fourth_member_is_added_and_one_removed_while_a_client_keeps_writing(protocol: Protocol) {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start_with(protocol, 3, |_| {});
    let client = Arc::new(cluster.client());
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;

    // A writer that never stops until told, recording what was acknowledged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("m{i:05}");
                client
                    .put(key.clone(), "x")
                    .await
                    .expect("write during membership change");
                acked.push(key);
                i += 1;
            }
            acked
        })
    };

    let addr = cluster.spawn_joiner(4);
    client.add_member(4, addr, false).await.expect("add node 4");
    let (members, _) = client.members().await.expect("members");
    assert!(members.iter().any(|m| m.id == 4 && m.voter), "{members:?}");
    wait_caught_up(&client, leader, 4).await;

    let removed = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    client
        .remove_member(removed)
        .await
        .expect("remove a follower");
    let (members, _) = client.members().await.expect("members");
    assert!(!members.iter().any(|m| m.id == removed), "{members:?}");
    cluster.kill(removed);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.expect("writer task");
    assert!(acked.len() > 5, "the writer made progress: {}", acked.len());
    let pairs = all_pairs(&client).await;
    for key in &acked {
        assert!(
            pairs.contains_key(key),
            "{key} was acknowledged but is missing"
        );
    }
    // The new member serves the latest data.
    let last = acked.last().unwrap().clone();
    wait_caught_up(&client, leader, 4).await;
    assert!(client
        .get_from(4, last, Consistency::Stale)
        .await
        .expect("read from node 4")
        .is_some());
}

/// Zab (as ZooKeeper) has no leader transfer: there the request is refused, naming why, and the
/// leader stays.
async fn leadership_moves_to_the_requested_member(protocol: Protocol) {
    let _serial = SERIAL.lock().await;
    let cluster = ProcCluster::start_with(protocol, 3, |_| {});
    let client = cluster.client();
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;
    client.put("k", "1").await.expect("put");
    let target = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    if protocol == Protocol::Zab {
        let error = client
            .transfer_leader(target)
            .await
            .expect_err("zab has no leader transfer");
        assert!(
            error
                .to_string()
                .contains("zab does not support leader transfer"),
            "{error}"
        );
        assert_eq!(cluster.wait_leader(&client, &[1, 2, 3]).await, leader);
        client.put("k", "2").await.expect("put after the refusal");
        return;
    }
    client.transfer_leader(target).await.expect("transfer");
    assert_eq!(cluster.wait_leader(&client, &[1, 2, 3]).await, target);
    // Writes go to the new leader.
    client.put("k", "2").await.expect("put after transfer");
    assert_eq!(client.leader_hint(), Some(target));
    let kv = client
        .get("k", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.value, "2".as_bytes());
}

async fn a_write_retried_after_a_lost_reply_is_applied_once(protocol: Protocol) {
    let _serial = SERIAL.lock().await;
    let cluster = ProcCluster::start_with(protocol, 3, |_| {});
    let client = cluster.client();
    cluster.wait_leader(&client, &[1, 2, 3]).await;

    // The same session and sequence number sent twice, as a client does when the first reply is
    // lost: one revision, the original answer both times.
    let session = client.new_session();
    let op = WriteOp::Put {
        key: Bytes::from_static(b"once"),
        value: Bytes::from_static(b"v"),
    };
    let first = client
        .write_in_session(session, op.clone())
        .await
        .expect("first");
    let again = client.write_in_session(session, op).await.expect("retry");
    assert_eq!(first, again, "a retry is answered with the original result");
    let kv = client
        .get("once", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.version, 1, "applied once: {kv:?}");
    let WriteResult::Put { revision } = first else {
        panic!("{first:?}")
    };
    assert_eq!(kv.mod_revision, revision);

    // A compare-and-set replayed after it succeeded does not fail against its own write.
    let session = client.new_session();
    let cas = WriteOp::Cas {
        key: Bytes::from_static(b"lock"),
        expected: None,
        new: Bytes::from_static(b"me"),
    };
    let first = client.write_in_session(session, cas.clone()).await.unwrap();
    let again = client.write_in_session(session, cas).await.unwrap();
    assert!(
        matches!(
            first,
            WriteResult::Cas {
                succeeded: true,
                ..
            }
        ),
        "{first:?}"
    );
    assert_eq!(first, again);
    // A new request (new sequence number) does see the key taken.
    assert!(matches!(
        client.cas("lock", None, "you").await.unwrap(),
        CasOutcome::Mismatch { .. }
    ));
}

async fn a_follower_never_serves_a_linearizable_read_older_than_an_acknowledged_write(
    protocol: Protocol,
) {
    let _serial = SERIAL.lock().await;
    let cluster = ProcCluster::start_with(protocol, 3, |_| {});
    let client = cluster.client();
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    for i in 0..40u32 {
        let value = i.to_string();
        client.put("counter", value.clone()).await.expect("put");
        // Right after the acknowledgement, each follower must already return this value (or
        // newer; there is no newer here).
        for &follower in &followers {
            let kv = client
                .get_from(follower, "counter", Consistency::Linearizable)
                .await
                .expect("linearizable read on a follower")
                .expect("the key exists");
            assert_eq!(
                kv.value,
                value.as_bytes(),
                "follower {follower} served an old value after write {i} was acknowledged"
            );
        }
    }
}

/// Every scenario runs once per protocol: `raft::<name>`, `multi_paxos::<name>`, `zab::<name>`.
macro_rules! per_protocol {
    ($($name:ident),* $(,)?) => {
        mod raft {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(node::config::Protocol::Raft).await
                }
            )*
        }
        mod multi_paxos {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(node::config::Protocol::MultiPaxos).await
                }
            )*
        }
        mod zab {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(node::config::Protocol::Zab).await
                }
            )*
        }
    };
}

per_protocol!(
    acknowledged_writes_survive_a_killed_leader_and_the_restarted_node_catches_up_from_the_log,
    a_node_restarted_after_the_log_was_compacted_catches_up_from_a_snapshot,
    a_fourth_member_is_added_and_one_removed_while_a_client_keeps_writing,
    leadership_moves_to_the_requested_member,
    a_write_retried_after_a_lost_reply_is_applied_once,
    a_follower_never_serves_a_linearizable_read_older_than_an_acknowledged_write,
);
