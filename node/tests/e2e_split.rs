//! End-to-end: an online range split (`quorate cluster split KEY`) on a sharded cluster of real
//! `quorate` processes (3 nodes × 4 shards), while a writer runs and one member lags (down during
//! the split), then across a kill -9 and restart.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::writers::Writers;
use common::{eventually, ProcCluster};
use node::client::Client;
use node::config::{Protocol, ServeConfig, ShardsConfig};
use node::proto::Consistency;

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Shards [.., "g"), ["g", "n"), ["n", "t"), ["t", ..): groups 1 to 4. The writers' keys
/// (`w0-…` to `w3-…`) are all in group 4 until the split at `w2`.
fn four_shards(config: &mut ServeConfig) {
    config.shards = Some(ShardsConfig::split(vec![
        "g".into(),
        "n".into(),
        "t".into(),
    ]));
}

const SPLIT_KEY: &str = "w2";

/// The group holding `key` once group 4 split at `w2` (into 4 and 5).
fn group_after_split(key: &str) -> u64 {
    match key {
        k if k < "g" => 1,
        k if k < "n" => 2,
        k if k < "t" => 3,
        k if k < SPLIT_KEY => 4,
        _ => 5,
    }
}

fn counts(keys: &BTreeMap<String, String>) -> BTreeMap<u64, u64> {
    let mut counts: BTreeMap<u64, u64> = (1..=5).map(|g| (g, 0)).collect();
    for key in keys.keys() {
        *counts.entry(group_after_split(key)).or_default() += 1;
    }
    counts
}

/// Waits until member `node` runs every group of the split map with a leader known and
/// `expected` keys in each.
async fn wait_groups(client: &Client, node: u64, expected: &BTreeMap<u64, u64>) {
    eventually(
        &format!("node {node} runs groups 1-5 with leaders and {expected:?} keys"),
        || async {
            let map = client.shard_map_of(node).await.ok()?;
            let keys: BTreeMap<u64, u64> = map.shards.iter().map(|s| (s.group, s.keys)).collect();
            (map.shards.iter().all(|s| s.leader.is_some()) && &keys == expected).then_some(())
        },
    )
    .await
}

async fn check_readable(client: &Client, written: &BTreeMap<String, String>) {
    for (key, value) in written {
        let kv = client
            .get(key.clone(), Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"))
            .unwrap_or_else(|| panic!("acknowledged write {key} is lost"));
        assert_eq!(kv.value, value.as_bytes(), "{key}");
    }
    let page = client
        .scan("", None, 0, Consistency::Linearizable)
        .await
        .expect("scan across the shards");
    let scanned: Vec<String> = page
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect();
    assert_eq!(scanned, written.keys().cloned().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_splits_online_under_writes_and_the_new_group_survives_a_lagging_member_and_a_restart(
) {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(3, four_shards);
    let client = Arc::new(cluster.client());

    // Keys on both sides of the split key, and in other shards.
    let mut written = BTreeMap::new();
    for key in ["a-1", "h-1", "p-1", "u-1", "w1-x", "w2", "w3-x", "zz"] {
        client.put(key, format!("v-{key}")).await.expect("put");
        written.insert(key.to_string(), format!("v-{key}"));
    }

    // Node 3 is down through the split: it lags, and learns of it from group 4's log later.
    cluster.kill(3);
    let writers = Writers::start(&client, 4, 40, Duration::from_millis(15));
    eventually("the writers are under way", || async {
        (writers.acked_so_far() >= 20).then_some(())
    })
    .await;

    let (code, out, err) = cluster.cli(&["cluster", "split", SPLIT_KEY, "--json"]);
    assert_eq!(code, 0, "cluster split failed: {out} {err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(plan["source"], 4, "{out}");
    assert_eq!(plan["group"], 5, "{out}");
    assert_eq!(plan["epoch"], 2, "{out}");
    assert_eq!(plan["map_epoch"], 2, "{out}");
    // Asked again: the same split, nothing more.
    let (code, again, err) = cluster.cli(&["cluster", "split", SPLIT_KEY, "--json"]);
    assert_eq!(code, 0, "a repeated split failed: {again} {err}");
    let again: serde_json::Value = serde_json::from_str(&again).expect("JSON");
    assert_eq!(again, plan);
    // A split at a range's first key is refused, typed.
    let (code, _, err) = cluster.cli(&["cluster", "split", "n"]);
    assert_ne!(code, 0);
    assert!(err.contains("boundary"), "{err}");

    for key in writers.finish().await {
        let (writer, i) = key[1..].split_once('-').unwrap();
        let value = format!("{writer}.{}", i.parse::<u32>().unwrap());
        written.insert(key, value);
    }
    check_readable(&client, &written).await;

    // `cluster shards` lists the new range, served by group 5.
    let (code, out, err) = cluster.cli(&["cluster", "shards", "--json"]);
    assert_eq!(code, 0, "cluster shards failed: {err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(shown["epoch"], 2, "{out}");
    let shards = shown["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 5, "{out}");
    assert_eq!(
        (&shards[3]["group"], &shards[3]["start"], &shards[3]["end"]),
        (&4.into(), &"t".into(), &SPLIT_KEY.into()),
        "{out}"
    );
    assert_eq!(
        (&shards[4]["group"], &shards[4]["start"], &shards[4]["end"]),
        (&5.into(), &SPLIT_KEY.into(), &serde_json::Value::Null),
        "{out}"
    );
    let expected = counts(&written);
    assert!(expected[&4] > 0 && expected[&5] > 0, "{expected:?}");
    for node in [1, 2] {
        wait_groups(&client, node, &expected).await;
    }

    // The lagging member comes back: it applies the split from group 4's log, builds group 5
    // from the same state and catches up on the writes group 5 took since.
    cluster.spawn(3);
    wait_groups(&client, 3, &expected).await;
    let kv = client
        .get_from(3, "w3-039", Consistency::Stale)
        .await
        .expect("read from the lagging member")
        .expect("the lagging member has the new group's writes");
    assert_eq!(kv.value, "3.39".as_bytes());

    // kill -9 a member and restart it: it opens group 5 again from its data directory.
    cluster.kill(1);
    client
        .put("w9-after", "1")
        .await
        .expect("put with node 1 down");
    written.insert("w9-after".into(), "1".into());
    cluster.spawn(1);
    let expected = counts(&written);
    for node in 1..=3 {
        wait_groups(&client, node, &expected).await;
    }
    let recorded = std::fs::read_to_string(cluster.data_dir(1).join("shards.json")).unwrap();
    assert!(recorded.contains("\"version\": 2"), "{recorded}");
    check_readable(&client, &written).await;
}

/// Four shards, and group logs compacted often (a snapshot every 20 entries, none kept below).
fn four_shards_compacting(config: &mut ServeConfig) {
    four_shards(config);
    config.snapshot.entries = 20;
    config.snapshot.trailing_entries = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_gets_the_source_as_a_snapshot_past_the_split_joins_the_new_group() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(3, four_shards_compacting);
    let client = cluster.client();
    let mut written = BTreeMap::new();
    for key in ["a-1", "u-1", "w1-x", "w3-x"] {
        client.put(key, format!("v-{key}")).await.expect("put");
        written.insert(key.to_string(), format!("v-{key}"));
    }
    // Node 3 is down through the split and long after: group 4's log is compacted past the
    // split entry, so node 3 gets group 4's state as a snapshot, never the entry itself.
    cluster.kill(3);
    let plan = client.split(SPLIT_KEY).await.expect("split");
    assert_eq!((plan.source, plan.new_group), (4, 5));
    for i in 0..60 {
        for key in [format!("u-{i:02}"), format!("w5-{i:02}")] {
            client
                .put(key.clone(), "after")
                .await
                .expect("put after the split");
            written.insert(key, "after".to_string());
        }
    }
    let expected = counts(&written);
    for node in [1, 2] {
        wait_groups(&client, node, &expected).await;
    }
    cluster.spawn(3);
    wait_groups(&client, 3, &expected).await;
    let kv = client
        .get_from(3, "w5-59", Consistency::Stale)
        .await
        .expect("read from the member that missed the split")
        .expect("it has the new group's writes");
    assert_eq!(kv.value, "after".as_bytes());
    assert!(
        cluster
            .log(3)
            .contains("splits of this range never applied here"),
        "node 3 should have caught up group 4 from a snapshot past the split"
    );
    check_readable(&client, &written).await;
}

/// The new group starts from a snapshot at index 1 (term 0) under every protocol.
async fn split_under(protocol: Protocol) {
    let _serial = SERIAL.lock().await;
    let cluster = ProcCluster::start_with(protocol, 3, four_shards);
    let client = cluster.client();
    let mut written = BTreeMap::new();
    for key in ["a-1", "u-1", "w1-x", "w2", "w3-x"] {
        client.put(key, format!("v-{key}")).await.expect("put");
        written.insert(key.to_string(), format!("v-{key}"));
    }
    let plan = client.split(SPLIT_KEY).await.expect("split");
    assert_eq!((plan.source, plan.new_group), (4, 5));
    for key in ["w2-after", "w9", "v-after"] {
        client.put(key, "after").await.expect("put after the split");
        written.insert(key.to_string(), "after".to_string());
    }
    check_readable(&client, &written).await;
    let expected = counts(&written);
    for node in 1..=3 {
        wait_groups(&client, node, &expected).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_group_starts_under_multi_paxos() {
    split_under(Protocol::MultiPaxos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_group_starts_under_zab() {
    split_under(Protocol::Zab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_recorded_in_the_meta_group_completes_without_the_client_that_asked() {
    let _serial = SERIAL.lock().await;
    let cluster = ProcCluster::start(3, four_shards);
    let client = cluster.client();
    client.put("w3-before", "1").await.expect("put");
    // Only the first step, as from a client that died before the second: the meta group
    // records the split, nobody asks the source group to divide.
    let request = node::proto::Request::Write {
        session: client.new_session(),
        op: node::proto::WriteOp::SplitMap {
            key: SPLIT_KEY.into(),
        },
    };
    // Asked of one member at a time, a follower answers NotLeader until the client's deadline:
    // a short one, so every member is asked in turn within the wait.
    let probe = cluster.client_with_timeout(Duration::from_secs(2), Duration::from_millis(500));
    let plan = eventually("the meta group's leader records the split", || async {
        for node in 1..=3 {
            if let Ok(node::proto::Reply::Write(node::proto::WriteResult::Split(plan))) =
                probe.request_to(node, &request).await
            {
                return Some(plan);
            }
        }
        None
    })
    .await;
    assert_eq!(plan.new_group, 5);
    // The meta group's leader finishes it: group 5 runs everywhere with the upper half.
    let written: BTreeMap<String, String> = [("w3-before".to_string(), "1".to_string())].into();
    let expected = counts(&written);
    for node in 1..=3 {
        wait_groups(&client, node, &expected).await;
    }
    check_readable(&client, &written).await;
}
