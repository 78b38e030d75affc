//! `kv get/put/del` and `cluster status` against a cluster running `replication = "peer"`:
//! reads print every sibling (`--json` adds the context that resolves them), writes take
//! `--context`, status shows each node's hints pending and anti-entropy age per peer.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::args::CrdtOpArg;
use super::{CliError, Outcome};
use crate::client::{Client, ClientError, PeerWritten};
use crate::proto::peer::{decode_context, encode_context};
use crate::proto::{NodeStatus, PeerNodeStatus, ServerError};
use replication_peer::{CrdtOp, CrdtValue};

/// Whether a consensus request failed because the cluster runs peer replication (then the
/// command is sent again as a peer request).
pub(super) fn is_peer_cluster<T>(result: &Result<T, ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Refused(ServerError::PeerReplication(_)))
    )
}

fn context(text: Option<&str>) -> Result<replication_peer::VersionVector, CliError> {
    decode_context(text.unwrap_or("")).map_err(|e| CliError::Usage(e.to_string()))
}

#[derive(Serialize)]
struct SiblingOut {
    node: u64,
    counter: u64,
    value: Option<String>,
    deleted: bool,
}

/// `kv get` on a peer cluster.
pub(super) async fn get(
    client: &Client,
    key: String,
    r: Option<u32>,
    json: bool,
) -> Result<Outcome, CliError> {
    let read = client.peer_get(key.clone(), r).await?;
    if let Some(value) = &read.crdt {
        print_crdt(&key, read.node, value, json);
        return Ok(Outcome::Success);
    }
    let live = read.siblings.iter().filter(|s| s.value.is_some()).count();
    if json {
        let siblings: Vec<SiblingOut> = read
            .siblings
            .iter()
            .map(|s| SiblingOut {
                node: s.node,
                counter: s.counter,
                value: s
                    .value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                deleted: s.value.is_none(),
            })
            .collect();
        println!(
            "{}",
            json!({
                "found": live > 0,
                "key": key,
                "coordinator": read.node,
                "siblings": siblings,
                "context": encode_context(&read.context),
            })
        );
    } else {
        for s in &read.siblings {
            match &s.value {
                Some(v) => println!("{}", String::from_utf8_lossy(v)),
                None => println!("<deleted>"),
            }
        }
        if read.siblings.len() > 1 {
            eprintln!(
                "{} siblings (concurrent writes); resolve them with: quorate kv put {key:?} VALUE --context {}",
                read.siblings.len(),
                encode_context(&read.context)
            );
        } else if live == 0 {
            eprintln!("key {key:?} not found");
        }
    }
    Ok(if live > 0 {
        Outcome::Success
    } else {
        Outcome::ConditionFailed
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A CRDT key's merged value: a counter's number, a set's elements one per line (sorted), a
/// register's value.
fn print_crdt(key: &str, coordinator: u64, value: &CrdtValue, json: bool) {
    if json {
        let value = match value {
            CrdtValue::Counter(n) => json!({ "type": "counter", "value": n }),
            CrdtValue::Set(elements) => json!({
                "type": "or-set",
                "elements": elements.iter().map(|e| text(e)).collect::<Vec<_>>(),
            }),
            CrdtValue::Register(v) => json!({
                "type": "lww-register",
                "value": v.as_deref().map(text),
            }),
        };
        println!(
            "{}",
            json!({ "key": key, "coordinator": coordinator, "crdt": value })
        );
        return;
    }
    match value {
        CrdtValue::Counter(n) => println!("{n}"),
        CrdtValue::Set(elements) => elements.iter().for_each(|e| println!("{}", text(e))),
        CrdtValue::Register(Some(v)) => println!("{}", text(v)),
        CrdtValue::Register(None) => eprintln!("register {key:?} was never assigned"),
    }
}

/// `kv update` on a peer cluster's CRDT key.
pub(super) async fn update(
    client: &Client,
    key: String,
    op: CrdtOpArg,
    arg: String,
    w: Option<u32>,
    json: bool,
) -> Result<Outcome, CliError> {
    let op =
        match op {
            CrdtOpArg::Incr => CrdtOp::Increment(arg.trim().parse().map_err(|_| {
                CliError::Usage(format!("incr takes an integer amount, not {arg:?}"))
            })?),
            CrdtOpArg::Add => CrdtOp::Add(arg.into_bytes()),
            CrdtOpArg::Remove => CrdtOp::Remove(arg.into_bytes()),
            CrdtOpArg::Assign => CrdtOp::Assign(arg.into_bytes()),
        };
    let written = client.peer_update(key.clone(), op, w).await?;
    print_written("update", &key, &written, json);
    Ok(Outcome::Success)
}

fn print_written(what: &str, key: &str, written: &PeerWritten, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "key": key,
                "coordinator": written.node,
                "counter": written.counter,
                "context": encode_context(&written.context),
            })
        );
    } else {
        println!(
            "OK ({what} {}:{} at node {})",
            written.node, written.counter, written.node
        );
    }
}

/// `kv put` on a peer cluster.
pub(super) async fn put(
    client: &Client,
    key: String,
    value: String,
    context_text: Option<&str>,
    w: Option<u32>,
    json: bool,
) -> Result<Outcome, CliError> {
    let written = client
        .peer_put(key.clone(), value, context(context_text)?, w)
        .await?;
    print_written("write", &key, &written, json);
    Ok(Outcome::Success)
}

/// `kv del` on a peer cluster.
pub(super) async fn del(
    client: &Client,
    key: String,
    context_text: Option<&str>,
    w: Option<u32>,
    json: bool,
) -> Result<Outcome, CliError> {
    let written = client
        .peer_delete(key.clone(), context(context_text)?, w)
        .await?;
    print_written("delete", &key, &written, json);
    Ok(Outcome::Success)
}

#[derive(Serialize)]
struct PeerStatusOut {
    id: u64,
    addr: Option<String>,
    reachable: bool,
    error: Option<String>,
    status: Option<PeerNodeStatus>,
}

fn per_peer(map: &BTreeMap<u64, u64>, show: impl Fn(u64) -> String) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(peer, v)| format!("{peer}:{}", show(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cluster status` on a peer cluster: each node's own view of its peers.
pub(super) async fn cluster_status(
    client: &Client,
    statuses: &[(u64, Result<NodeStatus, ClientError>)],
    json: bool,
) -> Result<Outcome, CliError> {
    let addrs = client.known_members();
    let mut nodes = Vec::new();
    for (id, status) in statuses {
        let peer = match status {
            Ok(_) => client.peer_status_of(*id).await,
            Err(error) => Err(ClientError::Refused(ServerError::Internal(
                error.to_string(),
            ))),
        };
        nodes.push((*id, peer));
    }
    let reachable = nodes.iter().filter(|(_, s)| s.is_ok()).count();
    let all = nodes.len();
    if json {
        let out: Vec<PeerStatusOut> = nodes
            .into_iter()
            .map(|(id, s)| PeerStatusOut {
                id,
                addr: addrs.get(&id).map(|a| a.to_string()),
                reachable: s.is_ok(),
                error: s.as_ref().err().map(|e| e.to_string()),
                status: s.ok(),
            })
            .collect();
        println!(
            "{}",
            json!({ "replication": "peer", "reachable": reachable, "nodes": out })
        );
    } else {
        println!(
            "{:<4} {:<22} {:>7} {:>6} {:>5}  {:<24} LAST ANTI-ENTROPY (per peer, ago)",
            "ID", "ADDRESS", "KEYS", "TOMBS", "N/R/W", "HINTS PENDING (per peer)"
        );
        for (id, status) in &nodes {
            let addr = addrs.get(id).map(|a| a.to_string()).unwrap_or_default();
            match status {
                Ok(s) => println!(
                    "{:<4} {:<22} {:>7} {:>6} {:>5}  {:<24} {}",
                    id,
                    addr,
                    s.keys,
                    s.tombstones,
                    format!("{}/{}/{}", s.n, s.r, s.w),
                    per_peer(&s.hints_pending, |n| n.to_string()),
                    per_peer(&s.anti_entropy_age_ms, |ms| crate::client::human_duration(
                        Duration::from_millis(ms)
                    )),
                ),
                Err(error) => println!("{id:<4} {addr:<22} unreachable: {error}"),
            }
        }
    }
    Ok(if reachable == all {
        Outcome::Success
    } else {
        Outcome::ConditionFailed
    })
}
