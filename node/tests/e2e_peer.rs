//! `replication = "peer"` end to end, with real `quorate serve` processes on loopback: any node
//! takes writes; a partition lets both sides write the same keys; after the heal every replica
//! converges to both siblings (policy `siblings`), and a write naming the read's context resolves
//! them to one. A write with W = 2 while a replica is down succeeds and leaves a hint, replayed
//! when the replica returns. Prefixes with other policies converge to their own answers: CRDT
//! counters add up the increments of both sides, an or-set keeps an add made concurrently with a
//! remove, and an `lww` key keeps one value.
//!
//! Partitions go through [`common::relay::Relay`]s: each node reaches each other node through
//! its own UDP relay, which the test can make drop everything (no firewall rules, nothing left
//! on the machine). Every wait is bounded ([`common::WAIT`]).

mod common;

use std::time::Duration;

use common::relay::RelayMesh;
use common::{eventually, ProcCluster};
use node::client::Client;
use node::config::{PeerPolicy, Protocol, Replication, ServeConfig};
use replication_peer::{CrdtOp, CrdtValue, VersionVector};

fn peer_tune(config: &mut ServeConfig) {
    config.replication = Replication::Peer;
    config.peer.anti_entropy_interval_ms = 200;
    config.peer.hint_retry_ms = 200;
}

/// Three peer nodes, each reaching the others through relays.
struct PeerCluster {
    relays: RelayMesh,
    procs: ProcCluster,
}

impl PeerCluster {
    fn start() -> PeerCluster {
        PeerCluster::start_with(peer_tune)
    }

    fn start_with(tune: fn(&mut ServeConfig)) -> PeerCluster {
        let mut procs = ProcCluster::prepare(Protocol::Raft, 3, tune);
        let relays = RelayMesh::spawn(&mut procs, 3);
        PeerCluster { relays, procs }
    }

    /// Cuts (or heals) the link between `a` and `b`, both directions.
    fn cut(&self, a: u64, b: u64, cut: bool) {
        self.relays.cut(a, b, cut);
    }

    /// A client that talks to node `id` only.
    fn client_at(&self, id: u64) -> Client {
        self.procs
            .client_of(&[id], Duration::from_secs(5), Duration::from_secs(2))
    }
}

/// The values node `id` holds for `key` (R = 1: its own copy), sorted.
async fn local_values(client: &Client, key: &str) -> Option<Vec<String>> {
    let read = client.peer_get(key.to_string(), Some(1)).await.ok()?;
    let mut values: Vec<String> = read
        .siblings
        .iter()
        .map(|s| {
            s.value.as_ref().map_or("<deleted>".into(), |v| {
                String::from_utf8_lossy(v).into_owned()
            })
        })
        .collect();
    values.sort();
    Some(values)
}

async fn wait_values(cluster: &PeerCluster, key: &str, want: &[&str]) {
    for id in 1..=3 {
        let client = cluster.client_at(id);
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        eventually(&format!("node {id} to hold {want:?} for {key}"), || {
            let (client, want) = (&client, &want);
            async move { (local_values(client, key).await.as_ref() == Some(want)).then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_of_a_partition_write_the_same_keys_and_converge_to_siblings_then_one_value() {
    let cluster = PeerCluster::start();
    let (one, two) = (cluster.client_at(1), cluster.client_at(2));
    // Every node is up and takes writes.
    eventually("the cluster to take a write", || async {
        one.peer_put("warmup", "x", VersionVector::new(), Some(3))
            .await
            .ok()
    })
    .await;

    // {1, 3} | {2}.
    cluster.cut(1, 2, true);
    cluster.cut(2, 3, true);
    let keys: Vec<String> = (0..5).map(|i| format!("cart-{i}")).collect();
    for key in &keys {
        one.peer_put(
            key.clone(),
            format!("{key}-a"),
            VersionVector::new(),
            Some(2),
        )
        .await
        .expect("side {1, 3} takes the write with W = 2");
        two.peer_put(
            key.clone(),
            format!("{key}-b"),
            VersionVector::new(),
            Some(1),
        )
        .await
        .expect("side {2} takes the write with W = 1");
    }
    // The cut holds: node 2 alone has seen only its own writes, and a W = 2 write there fails.
    assert_eq!(
        local_values(&two, &keys[0]).await,
        Some(vec![format!("{}-b", keys[0])])
    );
    assert!(two
        .peer_put("lonely", "v", VersionVector::new(), Some(2))
        .await
        .is_err());

    cluster.cut(1, 2, false);
    cluster.cut(2, 3, false);
    for key in &keys {
        let a = format!("{key}-a");
        let b = format!("{key}-b");
        wait_values(&cluster, key, &[&a, &b]).await;
    }

    // Links cut for longer than QUIC's idle timeout reconnect after the heal; until they are back
    // an R = 3 read or a W = 3 write times out (a typed, retryable answer). Wait for them.
    for client in [&one, &two] {
        eventually("every link back after the heal", || async {
            client.peer_get(keys[0].clone(), Some(3)).await.ok()
        })
        .await;
    }

    // The CLI shows both siblings, with the context in --json; a put with it resolves them.
    let (code, out, err) = cluster.procs.cli(&["--json", "kv", "get", &keys[0]]);
    assert_eq!(code, 0, "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["siblings"].as_array().map(Vec::len), Some(2), "{out}");
    let context = doc["context"].as_str().expect("a context").to_string();
    let (code, out, err) = cluster.procs.cli(&["kv", "get", &keys[0]]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("2 siblings"), "{err}");
    let (code, out, err) = cluster.procs.cli(&[
        "kv",
        "put",
        &keys[0],
        "merged",
        "--context",
        &context,
        "--w",
        "3",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    wait_values(&cluster, &keys[0], &["merged"]).await;

    // The same through the client, for the other keys: read the context, write with it.
    for key in &keys[1..] {
        // A link may still flap once after the heal; the client retries a timed-out read.
        let read = eventually("an R = 3 read", || async {
            two.peer_get(key.clone(), Some(3)).await.ok()
        })
        .await;
        assert_eq!(read.siblings.len(), 2);
        two.peer_put(key.clone(), format!("{key}-merged"), read.context, Some(2))
            .await
            .expect("resolving write");
        wait_values(&cluster, key, &[&format!("{key}-merged")]).await;
    }

    // A bad context is a usage error, not a crash.
    let (code, _, err) = cluster
        .procs
        .cli(&["kv", "put", &keys[0], "v", "--context", "not-hex"]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_w2_write_with_a_replica_down_succeeds_and_its_hint_is_replayed_on_return() {
    let mut cluster = PeerCluster::start();
    let one = cluster.client_at(1);
    eventually("the cluster to take a write", || async {
        one.peer_put("warmup", "x", VersionVector::new(), Some(3))
            .await
            .ok()
    })
    .await;

    cluster.procs.kill(3);
    one.peer_put("k", "while-3-was-down", VersionVector::new(), Some(2))
        .await
        .expect("W = 2 with two of three replicas up");
    let status = one.peer_status_of(1).await.expect("status");
    assert!(
        status.hints_pending.get(&3).copied().unwrap_or(0) >= 1,
        "a hint for node 3: {status:?}"
    );
    let (code, out, err) = cluster.procs.cli(&["cluster", "status"]);
    assert!(out.contains("HINTS PENDING"), "{code} {out}{err}");
    assert!(out.contains("3:"), "node 1's hints for node 3 shown: {out}");

    cluster.procs.spawn(3);
    eventually("node 1's hints for node 3 to be replayed", || async {
        let status = one.peer_status_of(1).await.ok()?;
        (status.hints_pending.get(&3).copied().unwrap_or(0) == 0).then_some(())
    })
    .await;
    let three = cluster.client_at(3);
    assert_eq!(
        local_values(&three, "k").await,
        Some(vec!["while-3-was-down".to_string()])
    );
    let (code, out, err) = cluster.procs.cli(&["--json", "cluster", "status"]);
    assert_eq!(code, 0, "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["replication"], "peer");
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(3), "{out}");
}

fn crdt_tune(config: &mut ServeConfig) {
    peer_tune(config);
    let prefixes = &mut config.peer.prefixes;
    prefixes.insert("views/".into(), PeerPolicy::Counter);
    prefixes.insert("tags/".into(), PeerPolicy::OrSet);
    prefixes.insert("cache/".into(), PeerPolicy::Lww);
}

/// Node `id`'s own copy (R = 1) of a CRDT key.
async fn local_crdt(client: &Client, key: &str) -> Option<CrdtValue> {
    client.peer_get(key.to_string(), Some(1)).await.ok()?.crdt
}

async fn wait_crdt(cluster: &PeerCluster, key: &str, want: &CrdtValue) {
    for id in 1..=3 {
        let client = cluster.client_at(id);
        eventually(&format!("node {id} to hold {want:?} for {key}"), || {
            let client = &client;
            async move { (local_crdt(client, key).await.as_ref() == Some(want)).then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_partition_counters_add_up_an_or_set_keeps_concurrent_adds_and_lww_keeps_one() {
    let cluster = PeerCluster::start_with(crdt_tune);
    let (one, two) = (cluster.client_at(1), cluster.client_at(2));
    eventually("the cluster to take an update", || async {
        one.peer_update("views/warmup", CrdtOp::Increment(1), Some(3))
            .await
            .ok()
    })
    .await;
    one.peer_update("tags/t", CrdtOp::Add(b"green".to_vec()), Some(3))
        .await
        .expect("add green everywhere");

    // {1, 3} | {2}: both sides update the same keys.
    cluster.cut(1, 2, true);
    cluster.cut(2, 3, true);
    one.peer_update("views/home", CrdtOp::Increment(3), Some(2))
        .await
        .expect("side {1, 3} increments");
    two.peer_update("views/home", CrdtOp::Increment(4), Some(1))
        .await
        .expect("side {2} increments");
    one.peer_update("tags/t", CrdtOp::Add(b"red".to_vec()), Some(2))
        .await
        .expect("side {1, 3} adds red");
    // Side {1, 3} removes green while side {2} adds it again: the add it did not see survives.
    one.peer_update("tags/t", CrdtOp::Remove(b"green".to_vec()), Some(2))
        .await
        .expect("side {1, 3} removes green");
    two.peer_update("tags/t", CrdtOp::Add(b"green".to_vec()), Some(1))
        .await
        .expect("side {2} re-adds green");
    two.peer_update("tags/t", CrdtOp::Add(b"blue".to_vec()), Some(1))
        .await
        .expect("side {2} adds blue");
    one.peer_put("cache/k", "a", VersionVector::new(), Some(2))
        .await
        .expect("side {1, 3} writes cache/k");
    two.peer_put("cache/k", "b", VersionVector::new(), Some(1))
        .await
        .expect("side {2} writes cache/k");
    // The cut holds: each side sees only its own increments.
    assert_eq!(
        local_crdt(&two, "views/home").await,
        Some(CrdtValue::Counter(4))
    );
    assert_eq!(
        local_crdt(&one, "views/home").await,
        Some(CrdtValue::Counter(3))
    );

    cluster.cut(1, 2, false);
    cluster.cut(2, 3, false);
    wait_crdt(&cluster, "views/home", &CrdtValue::Counter(7)).await;
    let set =
        |items: &[&str]| CrdtValue::Set(items.iter().map(|i| i.as_bytes().to_vec()).collect());
    wait_crdt(&cluster, "tags/t", &set(&["blue", "green", "red"])).await;
    // LWW: every replica ends with one and the same value (the other write is dropped, as the
    // policy documents), whichever side wrote it.
    // Each replica always holds one value, so wait until all three hold the same one.
    let clients: Vec<Client> = (1..=3).map(|id| cluster.client_at(id)).collect();
    let winner = eventually("every node to hold the same one value of cache/k", || {
        let clients = &clients;
        async move {
            let mut winners = Vec::new();
            for client in clients {
                let values = local_values(client, "cache/k").await?;
                (values.len() == 1).then_some(())?;
                winners.push(values[0].clone());
            }
            winners
                .iter()
                .all(|w| *w == winners[0])
                .then(|| winners[0].clone())
        }
    })
    .await;
    assert!(["a", "b"].contains(&winner.as_str()), "{winner:?}");

    // The CLI: `kv get` prints a CRDT's merged value; `kv update` changes it; a plain put on a
    // CRDT key and an update of a siblings key are refused with a typed error, no crash.
    let (code, out, err) = cluster.procs.cli(&["kv", "get", "views/home"]);
    assert_eq!((code, out.trim()), (0, "7"), "{err}");
    let (code, out, err) =
        cluster
            .procs
            .cli(&["kv", "update", "views/home", "incr", "-2", "--w", "3"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cluster.procs.cli(&["--json", "kv", "get", "views/home"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["crdt"]["value"], 5, "{out}");
    let (code, out, _) = cluster.procs.cli(&["kv", "get", "tags/t"]);
    assert_eq!(
        (code, out.lines().collect::<Vec<_>>()),
        (0, vec!["blue", "green", "red"])
    );
    let (code, _, err) = cluster.procs.cli(&["kv", "put", "views/home", "x"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("policy"), "{err}");
    let (code, _, err) = cluster.procs.cli(&["kv", "update", "plain", "incr", "1"]);
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = cluster
        .procs
        .cli(&["kv", "update", "views/home", "incr", "x"]);
    assert_eq!(code, 2, "{err}");
}
