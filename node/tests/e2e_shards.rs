//! End-to-end: a sharded cluster of real `quorate` processes (3 nodes × 4 key-range shards, each
//! shard its own Raft group on every node, plus the meta group holding the shard map), driven
//! through `node::client::Client` and the CLI.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, ProcCluster};
use node::client::Client;
use node::config::{ServeConfig, ShardsConfig};
use node::proto::{Consistency, ShardMap, TxnOp};

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Shards [.., "g"), ["g", "n"), ["n", "t"), ["t", ..): groups 1 to 4.
fn four_shards(config: &mut ServeConfig) {
    config.shards = Some(ShardsConfig::split(vec![
        "g".into(),
        "n".into(),
        "t".into(),
    ]));
}

/// 26 letters × `per_letter` keys: every shard gets some.
fn keys(per_letter: usize, tag: &str) -> Vec<String> {
    ('a'..='z')
        .flat_map(|c| (0..per_letter).map(move |i| format!("{c}-{tag}-{i:03}")))
        .collect()
}

fn group_of(key: &str) -> u64 {
    match key.as_bytes()[0] {
        b if b < b'g' => 1,
        b if b < b'n' => 2,
        b if b < b't' => 3,
        _ => 4,
    }
}

/// Waits until member `node` knows a leader for every group and has `expected` keys in each.
async fn wait_groups(client: &Client, node: u64, expected: &BTreeMap<u64, u64>) -> ShardMap {
    eventually(
        &format!("node {node} knows every group's leader and has {expected:?} keys"),
        || async {
            let map = client.shard_map_of(node).await.ok()?;
            let keys: BTreeMap<u64, u64> = map.shards.iter().map(|s| (s.group, s.keys)).collect();
            (map.shards.iter().all(|s| s.leader.is_some()) && &keys == expected).then_some(map)
        },
    )
    .await
}

fn counts(keys: &BTreeSet<String>) -> BTreeMap<u64, u64> {
    let mut counts: BTreeMap<u64, u64> = (1..=4).map(|g| (g, 0)).collect();
    for key in keys {
        *counts.entry(group_of(key)).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_in_their_shards_scans_cross_them_in_order_and_a_killed_group_leader_rejoins_every_group(
) {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(3, four_shards);
    let client = cluster.client();

    let mut written = BTreeSet::new();
    for key in keys(4, "a") {
        client
            .put(key.clone(), format!("v-{key}"))
            .await
            .expect("put");
        written.insert(key);
    }
    for key in &written {
        let kv = client
            .get(key.clone(), Consistency::Linearizable)
            .await
            .expect("get")
            .expect("a written key is readable");
        assert_eq!(kv.value, format!("v-{key}").as_bytes());
    }

    // `cluster shards` shows the four ranges, a leader each, and the keys spread over them.
    let expected = counts(&written);
    assert!(expected.values().all(|&n| n > 0), "{expected:?}");
    wait_groups(&client, 1, &expected).await;
    let (code, out, err) = cluster.cli(&["cluster", "shards", "--json"]);
    assert_eq!(code, 0, "cluster shards failed: {err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let shards = shown["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 4, "{out}");
    assert_eq!(shards[1]["start"], "g");
    assert_eq!(shards[1]["end"], "n");
    let total: u64 = shards.iter().map(|s| s["keys"].as_u64().unwrap()).sum();
    assert_eq!(total, written.len() as u64, "{out}");
    assert!(
        shards.iter().all(|s| s["keys"].as_u64().unwrap() > 0),
        "{out}"
    );

    // A scan crosses the shards in key order, the limit counted over all of them.
    let page = client
        .scan("", None, 0, Consistency::Linearizable)
        .await
        .expect("scan");
    let scanned: Vec<String> = page
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect();
    assert_eq!(scanned, written.iter().cloned().collect::<Vec<_>>());
    assert!(!page.more);
    let page = client
        .scan(
            "e",
            Some(Bytes::from_static(b"p")),
            30,
            Consistency::Linearizable,
        )
        .await
        .expect("limited scan");
    let expected_part: Vec<String> = written
        .iter()
        .filter(|k| k.as_str() >= "e" && k.as_str() < "p")
        .take(30)
        .cloned()
        .collect();
    let scanned: Vec<String> = page
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect();
    assert_eq!(scanned, expected_part);
    assert!(page.more, "the limit cut the range short");

    // A transaction within one shard runs in one entry; across shards, through 2PC.
    let txn = client
        .txn(
            vec![],
            vec![
                TxnOp::Put {
                    key: Bytes::from_static(b"h-txn-1"),
                    value: Bytes::from_static(b"1"),
                },
                TxnOp::Put {
                    key: Bytes::from_static(b"i-txn-2"),
                    value: Bytes::from_static(b"2"),
                },
            ],
            vec![],
        )
        .await
        .expect("a single-shard transaction");
    assert!(txn.succeeded);
    written.insert("h-txn-1".into());
    written.insert("i-txn-2".into());
    let cross = client
        .txn(
            vec![],
            vec![
                TxnOp::Put {
                    key: Bytes::from_static(b"a-x"),
                    value: Bytes::new(),
                },
                TxnOp::Put {
                    key: Bytes::from_static(b"z-x"),
                    value: Bytes::new(),
                },
            ],
            vec![],
        )
        .await
        .expect("a cross-shard transaction commits through two-phase commit");
    assert!(cross.succeeded);
    written.insert("a-x".into());
    written.insert("z-x".into());

    // Idle, every group goes quiet on every node (no ticks, no heartbeats) ...
    for node in 1..=3 {
        eventually(&format!("every group quiet on node {node}"), || async {
            let map = client.shard_map_of(node).await.ok()?;
            map.shards.iter().all(|s| s.quiet).then_some(())
        })
        .await;
    }
    // ... and stays quiet: sampled every 100 ms for 1.5 s (three rounds of each node's
    // resolver, which looks for prepared transactions without waking a group).
    for _ in 0..15 {
        for node in 1..=3 {
            let map = client.shard_map_of(node).await.expect("the shard map");
            let awake: Vec<u64> = map
                .shards
                .iter()
                .filter(|s| !s.quiet)
                .map(|s| s.group)
                .collect();
            assert!(
                awake.is_empty(),
                "idle groups {awake:?} woke on node {node}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and a request wakes its group.
    client
        .put("b-wake", "1")
        .await
        .expect("a write to a quiet group");
    written.insert("b-wake".into());

    // Kill -9 a node leading at least one data group (its groups quiet again first: their
    // followers must wake on the requests that follow); writes go on to every shard.
    eventually("every group quiet on node 1 again", || async {
        let map = client.shard_map_of(1).await.ok()?;
        map.shards.iter().all(|s| s.quiet).then_some(())
    })
    .await;
    let map = client.refresh_shard_map().await.expect("map");
    let victim = map
        .shards
        .iter()
        .find_map(|s| s.leader)
        .expect("some group has a leader");
    let led: Vec<u64> = map
        .shards
        .iter()
        .filter(|s| s.leader == Some(victim))
        .map(|s| s.group)
        .collect();
    cluster.kill(victim);
    for key in keys(2, "b") {
        client
            .put(key.clone(), format!("v-{key}"))
            .await
            .unwrap_or_else(|e| {
                panic!("put {key} with node {victim} (leading groups {led:?}) down: {e}")
            });
        written.insert(key);
    }
    let survivor = (1..=3).find(|&id| id != victim).unwrap();
    let map = client.shard_map_of(survivor).await.expect("map");
    for shard in &map.shards {
        assert_ne!(
            shard.leader,
            Some(victim),
            "group {} has a new leader",
            shard.group
        );
    }

    // The restarted node rejoins every group and catches up on each.
    cluster.spawn(victim);
    let expected = counts(&written);
    wait_groups(&client, victim, &expected).await;
    for key in ["a-b-000", "h-b-001", "o-b-000", "z-b-001"] {
        let kv = client
            .get_from(victim, key, Consistency::Stale)
            .await
            .expect("read from the restarted node")
            .expect("the restarted node has the write");
        assert_eq!(kv.value, format!("v-{key}").as_bytes());
    }
    let page = client
        .scan("", None, 0, Consistency::Linearizable)
        .await
        .expect("scan");
    assert_eq!(page.kvs.len(), written.len());

    // A node leading quiet groups still stops cleanly and promptly on SIGTERM.
    let map = eventually(
        "every group quiet on node 1 before stopping a leader",
        || async {
            let map = client.shard_map_of(1).await.ok()?;
            map.shards.iter().all(|s| s.quiet).then_some(map)
        },
    )
    .await;
    let leader = map.shards[0].leader.expect("group 1 has a leader");
    let asked = std::time::Instant::now();
    let status = cluster.terminate(leader);
    assert!(
        status.is_some_and(|s| s.success()),
        "node {leader} stops cleanly: {status:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_shard_layout_is_refused_and_the_recorded_one_starts() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(1, four_shards);
    let client = cluster.client();
    client.put("k", "v").await.expect("put");
    cluster.kill(1);
    // Every group's records are in the node's one shared log; a group directory holds only its
    // snapshot.
    let dir = cluster.data_dir(1);
    assert!(
        dir.join("shared-wal").is_dir(),
        "no shared log in {}",
        dir.display()
    );
    for group in 0..=4 {
        let own_wal = dir.join("groups").join(group.to_string()).join("wal");
        assert!(!own_wal.exists(), "group {group} has a log of its own");
    }

    let mut other = cluster.config(1, false);
    other.shards = Some(ShardsConfig::count(2));
    std::fs::write(cluster.config_path(1), other.to_toml_string().unwrap()).unwrap();
    cluster.spawn(1);
    let status = cluster.wait_exit(1, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a node started with another layout must refuse to run"
    );
    assert!(
        cluster.log(1).contains("shards are fixed at bootstrap"),
        "{}",
        cluster.log(1)
    );

    let mut unsharded = cluster.config(1, false);
    unsharded.shards = None;
    std::fs::write(cluster.config_path(1), unsharded.to_toml_string().unwrap()).unwrap();
    cluster.spawn(1);
    assert!(cluster
        .wait_exit(1, Duration::from_secs(10))
        .is_some_and(|s| !s.success()));
    assert!(cluster.log(1).contains("holds a sharded node"));

    cluster.write_config(1, false);
    cluster.spawn(1);
    let kv = client
        .get("k", Consistency::Linearizable)
        .await
        .expect("get after the restart")
        .expect("the key survived");
    assert_eq!(kv.value, "v".as_bytes());
}
