//! End-to-end bank test of cross-shard transactions on real `quorate` processes: 3 nodes × 2
//! shards, concurrent transfers between accounts on different shards (each a `Txn` comparing
//! both balances' mod revisions and putting the new balances plus a marker key), read-only
//! audits of every account, kill -9 of a shard leader and of a coordinating node mid-run.
//! Checked: every committed audit sums exactly the total; at the end nothing is left prepared,
//! the total is unchanged, every acknowledged transfer's marker is there (none lost), and the
//! balances are exactly the initial ones plus the transfers whose marker is there (none applied
//! twice or half).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, ProcCluster};
use node::client::{Client, ClientError};
use node::config::{ServeConfig, ShardsConfig};
use node::proto::{
    Compare, CompareOp, CompareTarget, Consistency, ReadOp, Reply, Request, ServerError, TxnOp,
    TxnOpResult,
};

const ACCOUNTS_PER_SHARD: u64 = 4;
const INITIAL: i64 = 100;

/// Shards [.., "n") and ["n", ..): groups 1 and 2.
fn two_shards(config: &mut ServeConfig) {
    config.shards = Some(ShardsConfig {
        split_keys: vec!["n".into()],
        ..ShardsConfig::default()
    });
}

fn accounts() -> Vec<String> {
    (0..ACCOUNTS_PER_SHARD)
        .map(|i| format!("a-{i}"))
        .chain((0..ACCOUNTS_PER_SHARD).map(|i| format!("x-{i}")))
        .collect()
}

fn balance(value: &[u8]) -> i64 {
    std::str::from_utf8(value).unwrap().parse().unwrap()
}

#[derive(Default)]
struct Tally {
    /// Transfer id → (from, to, amount), for every transfer attempted.
    attempted: BTreeMap<u64, (String, String, i64)>,
    /// Transfers acknowledged as committed.
    acked: Vec<u64>,
    audits_ok: u64,
    audits_aborted: u64,
    aborted: u64,
    uncertain: u64,
}

async fn transfer(client: &Client, id: u64, from: &str, to: &str, tally: &Mutex<Tally>) {
    let read = |key: &str| {
        let key = key.to_string();
        async move { client.get(key, Consistency::Linearizable).await }
    };
    let (Ok(Some(a)), Ok(Some(b))) = (read(from).await, read(to).await) else {
        return;
    };
    let amount = (id as i64 % 7 + 1).min(balance(&a.value));
    let compare = |kv: &node::proto::KeyValue| Compare {
        key: kv.key.clone(),
        target: CompareTarget::ModRevision(kv.mod_revision),
        op: CompareOp::Equal,
    };
    let put = |key: &str, value: String| TxnOp::Put {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value),
    };
    let success = vec![
        put(from, (balance(&a.value) - amount).to_string()),
        put(to, (balance(&b.value) + amount).to_string()),
        put(&format!("{from}-t{id}"), format!("{from}>{to}:{amount}")),
    ];
    tally
        .lock()
        .unwrap()
        .attempted
        .insert(id, (from.to_string(), to.to_string(), amount));
    let result = client
        .txn(vec![compare(&a), compare(&b)], success, Vec::new())
        .await;
    let mut tally = tally.lock().unwrap();
    match result {
        Ok(outcome) if outcome.succeeded => tally.acked.push(id),
        Ok(_) | Err(ClientError::Refused(ServerError::TxnAborted(_))) => tally.aborted += 1,
        Err(_) => tally.uncertain += 1,
    }
}

async fn audit(client: &Client, tally: &Mutex<Tally>) -> Option<i64> {
    let gets = accounts()
        .into_iter()
        .map(|key| TxnOp::Get { key: key.into() })
        .collect();
    match client.txn(Vec::new(), gets, Vec::new()).await {
        Ok(outcome) => {
            let sum = outcome
                .results
                .iter()
                .map(|r| match r {
                    TxnOpResult::Get { kv: Some(kv) } => balance(&kv.value),
                    other => panic!("an audit read {other:?}"),
                })
                .sum();
            tally.lock().unwrap().audits_ok += 1;
            Some(sum)
        }
        Err(_) => {
            tally.lock().unwrap().audits_aborted += 1;
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_across_shards_keep_the_total_through_kills_of_a_shard_leader_and_a_coordinator()
{
    let mut cluster = ProcCluster::start(3, two_shards);
    let client = cluster.client();
    for key in accounts() {
        client.put(key, INITIAL.to_string()).await.expect("seed");
    }
    let total = INITIAL * accounts().len() as i64;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    // Transfer workers: two through any member, one only through node 3 (the node killed as a
    // coordinator), and an auditor.
    for worker in 0..3u64 {
        let client = if worker == 2 {
            cluster.client_of(&[3], Duration::from_secs(4), Duration::from_secs(2))
        } else {
            cluster.client_with_timeout(Duration::from_secs(8), Duration::from_secs(2))
        };
        let (tally, stop, next_id) = (tally.clone(), stop.clone(), next_id.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let from = format!("a-{}", (id + worker) % ACCOUNTS_PER_SHARD);
                let to = format!("x-{}", (id * 3 + worker) % ACCOUNTS_PER_SHARD);
                let (from, to) = if id % 2 == 0 { (from, to) } else { (to, from) };
                transfer(&client, id, &from, &to, &tally).await;
            }
        }));
    }
    let bad_audits = Arc::new(Mutex::new(Vec::new()));
    {
        let client = cluster.client_with_timeout(Duration::from_secs(8), Duration::from_secs(2));
        let (tally, stop, bad) = (tally.clone(), stop.clone(), bad_audits.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(sum) = audit(&client, &tally).await {
                    if sum != total {
                        bad.lock().unwrap().push(sum);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    // kill -9 the leader of shard 1 mid-run, then bring it back.
    let map = client.refresh_shard_map().await.expect("map");
    let leader = map.shard(1).and_then(|s| s.leader).unwrap_or(1);
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.spawn(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // kill -9 node 3, which coordinates the third worker's transfers, then bring it back.
    cluster.kill(3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.spawn(3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }

    // In-doubt transactions of the killed coordinator are resolved by the participants.
    for node in 1..=3u64 {
        for group in 1..=2u64 {
            eventually(
                &format!("nothing prepared on node {node} group {group}"),
                || async {
                    let request = Request::Routed {
                        group,
                        epoch: map.shard(group).map_or(0, |s| s.epoch),
                        request: Box::new(Request::Read {
                            consistency: Consistency::Stale,
                            op: ReadOp::Prepared,
                        }),
                    };
                    match client.request_to(node, &request).await {
                        Ok(Reply::Prepared { txns }) if txns.is_empty() => Some(()),
                        _ => None,
                    }
                },
            )
            .await;
        }
    }
    let final_sum = eventually("a final audit commits", || async {
        audit(&client, &tally).await
    })
    .await;
    assert_eq!(final_sum, total, "the final audit");

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        bad_audits.lock().unwrap().is_empty(),
        "audits saw sums {:?}, the total is {total}",
        bad_audits.lock().unwrap()
    );
    // Which transfers committed: their marker keys.
    let page = client
        .scan("", None, 0, Consistency::Linearizable)
        .await
        .expect("scan");
    let mut balances: BTreeMap<String, i64> = BTreeMap::new();
    let mut committed = Vec::new();
    for kv in &page.kvs {
        let key = String::from_utf8(kv.key.to_vec()).unwrap();
        match key.split_once("-t") {
            Some((_, id)) => committed.push(id.parse::<u64>().unwrap()),
            None => {
                balances.insert(key, balance(&kv.value));
            }
        }
    }
    assert_eq!(balances.values().sum::<i64>(), total, "{balances:?}");
    for id in &tally.acked {
        assert!(
            committed.contains(id),
            "transfer {id} was acknowledged but is lost"
        );
    }
    let mut expected: BTreeMap<String, i64> =
        accounts().into_iter().map(|a| (a, INITIAL)).collect();
    for id in &committed {
        let (from, to, amount) = &tally.attempted[id];
        *expected.get_mut(from).unwrap() -= amount;
        *expected.get_mut(to).unwrap() += amount;
    }
    assert_eq!(
        balances, expected,
        "balances are not the initial ones plus exactly the committed transfers"
    );
    eprintln!(
        "bank: {} transfers attempted, {} acknowledged, {} committed in all, {} aborted, {} uncertain; audits {} ok, {} aborted",
        tally.attempted.len(),
        tally.acked.len(),
        committed.len(),
        tally.aborted,
        tally.uncertain,
        tally.audits_ok,
        tally.audits_aborted
    );
    assert!(tally.acked.len() >= 10, "too few transfers committed");
    assert!(tally.audits_ok >= 3, "too few audits committed");
    drop(tally);

    // `quorate kv txn` across the two shards: prints the branch that ran and what it read.
    let a0 = balances["a-0"];
    let txn = format!(
        r#"{{"compare": [{{"key": "a-0", "value": "{a0}"}}],
            "success": [{{"put": {{"key": "a-0", "value": "{}"}}}},
                        {{"put": {{"key": "x-0", "value": "{}"}}}},
                        {{"get": "x-0"}}],
            "failure": [{{"get": "a-0"}}]}}"#,
        a0 - 1,
        balances["x-0"] + 1
    );
    let (code, out, err) = cluster.cli(&["kv", "txn", &txn]);
    if code != 0 {
        let mut seen = Vec::new();
        for node in 1..=3u64 {
            for group in 1..=2u64 {
                let request = Request::Routed {
                    group,
                    epoch: map.shard(group).map_or(0, |s| s.epoch),
                    request: Box::new(Request::Read {
                        consistency: Consistency::Stale,
                        op: ReadOp::Prepared,
                    }),
                };
                seen.push((node, group, client.request_to(node, &request).await));
            }
        }
        panic!("{out}{err}; prepared now: {seen:?}");
    }
    assert!(out.contains("SUCCESS"), "{out}");
    assert!(
        out.contains(&format!("get \"x-0\": {}", balances["x-0"] + 1)),
        "{out}"
    );
    // Run again: the compare no longer holds, the failure branch reads a-0 on the other shard.
    let (code, out, err) = cluster.cli(&["kv", "txn", &txn]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&format!("get \"a-0\": {}", a0 - 1)), "{out}");
    assert_eq!(
        audit(&client, &Mutex::new(Tally::default())).await,
        Some(total)
    );
}
