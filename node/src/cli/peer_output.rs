//! `kv get/put/del` and `cluster status` against a cluster running `replication = "peer"`:
//! reads print every sibling (`--json` adds the context that resolves them), writes take
//! `--context`, status shows each node's hints pending and anti-entropy age per peer.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::{CliError, Outcome};
use crate::client::{Client, ClientError, PeerWritten};
use crate::proto::peer::{decode_context, encode_context};
use crate::proto::{NodeStatus, PeerNodeStatus, ServerError};

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
