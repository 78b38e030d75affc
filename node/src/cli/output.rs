//! Runs `kv` and `cluster` commands and prints their results for people or as JSON.

use bytes::Bytes;

use super::args::{ClusterCommand, ConsistencyArg, KvCommand};
use serde::Serialize;
use serde_json::json;

use super::{CliError, Outcome};
use crate::client::{CasOutcome, Client, ClientError};
use crate::proto::{Consistency, KeyValue, Member, NodeStatus, Role};

/// Prints an error as the JSON document of a failed command.
pub(super) fn print_json_error(error: &CliError) {
    println!(
        "{}",
        json!({ "error": error.to_string(), "kind": error.kind(), "exit_code": error.exit_code() })
    );
}

fn consistency(arg: ConsistencyArg, min_revision: Option<u64>) -> Result<Consistency, CliError> {
    match (arg, min_revision) {
        (ConsistencyArg::Sequential, min_revision) => Ok(Consistency::Sequential {
            min_revision: min_revision.unwrap_or(0),
        }),
        (_, Some(_)) => Err(CliError::Usage(
            "--min-revision applies to sequential reads: add --consistency sequential".into(),
        )),
        (ConsistencyArg::Linearizable, None) => Ok(Consistency::Linearizable),
        (ConsistencyArg::Stale, None) => Ok(Consistency::Stale),
    }
}

/// Text for people: the bytes as UTF-8 if they are, else hex with a `0x` prefix.
pub(super) fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// Bytes in JSON: a string if they are UTF-8, else `{"hex": "..."}`.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum BytesOut {
    Utf8(String),
    Binary { hex: String },
}

impl From<&[u8]> for BytesOut {
    fn from(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => BytesOut::Utf8(s.to_string()),
            Err(_) => BytesOut::Binary {
                hex: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            },
        }
    }
}

/// A stored pair, as `--json` prints it.
#[derive(Serialize)]
pub(super) struct KvOut {
    key: BytesOut,
    value: BytesOut,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

pub(super) fn kv_json(kv: &KeyValue) -> KvOut {
    KvOut {
        key: kv.key.as_ref().into(),
        value: kv.value.as_ref().into(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

fn quoted(key: &[u8]) -> String {
    format!("{:?}", text(key))
}

/// Runs a `kv` command.
pub(super) async fn kv(
    client: &Client,
    command: KvCommand,
    json: bool,
) -> Result<Outcome, CliError> {
    match command {
        KvCommand::Put {
            key,
            value,
            context,
            w,
        } => {
            if context.is_some() || w.is_some() {
                return super::peer_output::put(client, key, value, context.as_deref(), w, json)
                    .await;
            }
            let result = client.put(key.clone(), value.clone()).await;
            if super::peer_output::is_peer_cluster(&result) {
                return super::peer_output::put(client, key, value, None, None, json).await;
            }
            let revision = result?;
            if json {
                println!("{}", json!({ "key": key, "revision": revision }));
            } else {
                println!("OK (revision {revision})");
            }
            Ok(Outcome::Success)
        }
        KvCommand::Get {
            key,
            consistency: c,
            min_revision,
            r,
        } => {
            if r.is_some() {
                return super::peer_output::get(client, key, r, json).await;
            }
            let result = client
                .get_with_revision(key.clone(), consistency(c, min_revision)?)
                .await;
            if super::peer_output::is_peer_cluster(&result) {
                return super::peer_output::get(client, key, None, json).await;
            }
            let (revision, kv) = result?;
            match (kv, json) {
                (Some(kv), true) => {
                    println!(
                        "{}",
                        json!({ "found": true, "revision": revision, "kv": kv_json(&kv) })
                    );
                    Ok(Outcome::Success)
                }
                (Some(kv), false) => {
                    println!("{}", text(&kv.value));
                    Ok(Outcome::Success)
                }
                (None, true) => {
                    println!(
                        "{}",
                        json!({ "found": false, "key": key, "revision": revision })
                    );
                    Ok(Outcome::ConditionFailed)
                }
                (None, false) => {
                    eprintln!("key {key:?} not found (revision {revision})");
                    Ok(Outcome::ConditionFailed)
                }
            }
        }
        KvCommand::Del { key, context, w } => {
            if context.is_some() || w.is_some() {
                return super::peer_output::del(client, key, context.as_deref(), w, json).await;
            }
            let result = client.delete(key.clone()).await;
            if super::peer_output::is_peer_cluster(&result) {
                return super::peer_output::del(client, key, None, None, json).await;
            }
            let (deleted, revision) = result?;
            if json {
                println!(
                    "{}",
                    json!({ "key": key, "deleted": deleted, "revision": revision })
                );
            } else if deleted {
                println!("deleted {key:?} (revision {revision})");
            } else {
                eprintln!("key {key:?} not found; nothing deleted");
            }
            Ok(if deleted {
                Outcome::Success
            } else {
                Outcome::ConditionFailed
            })
        }
        KvCommand::Scan {
            start,
            end,
            prefix,
            limit,
            consistency: c,
            min_revision,
        } => {
            let consistency = consistency(c, min_revision)?;
            let (start, end) = match prefix {
                Some(prefix) => {
                    let start = Bytes::from(prefix.into_bytes());
                    let end = prefix_end(&start);
                    (start, end)
                }
                None => (
                    Bytes::from(start.unwrap_or_default().into_bytes()),
                    end.map(|e| Bytes::from(e.into_bytes())),
                ),
            };
            let page = client.scan(start, end, limit, consistency).await?;
            if json {
                let kvs: Vec<KvOut> = page.kvs.iter().map(kv_json).collect();
                println!(
                    "{}",
                    json!({ "revision": page.revision, "count": kvs.len(), "more": page.more, "kvs": kvs })
                );
            } else {
                for kv in &page.kvs {
                    println!("{}\t{}", text(&kv.key), text(&kv.value));
                }
                if page.more {
                    if let Some(last) = page.kvs.last() {
                        eprintln!(
                            "(more keys after {}: raise --limit or scan again starting after it)",
                            quoted(&last.key)
                        );
                    }
                }
            }
            Ok(Outcome::Success)
        }
        KvCommand::Txn { transaction, file } => {
            super::txn::run(client, transaction, file, json).await
        }
        KvCommand::Update { key, op, arg, w } => {
            super::peer_output::update(client, key, op, arg, w, json).await
        }
        KvCommand::Cas {
            key,
            new,
            expect,
            absent,
        } => {
            let expected = if absent {
                None
            } else {
                expect.map(|e| Bytes::from(e.into_bytes()))
            };
            match client.cas(key.clone(), expected, new).await? {
                CasOutcome::Swapped { revision } => {
                    if json {
                        println!(
                            "{}",
                            json!({ "key": key, "succeeded": true, "revision": revision })
                        );
                    } else {
                        println!("OK (revision {revision})");
                    }
                    Ok(Outcome::Success)
                }
                CasOutcome::Mismatch { revision, current } => {
                    if json {
                        println!(
                            "{}",
                            json!({
                                "key": key,
                                "succeeded": false,
                                "revision": revision,
                                "current": current.as_ref().map(kv_json),
                            })
                        );
                    } else {
                        match current {
                            Some(kv) => eprintln!(
                                "not swapped: {key:?} is {:?} (mod revision {})",
                                text(&kv.value),
                                kv.mod_revision
                            ),
                            None => eprintln!("not swapped: {key:?} does not exist"),
                        }
                    }
                    Ok(Outcome::ConditionFailed)
                }
            }
        }
    }
}

/// The first key after every key that starts with `prefix` (`None`: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(Bytes::from(end));
        }
    }
    None
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
        Role::Learner => "learner",
    }
}

/// One member's status, as `cluster status --json` prints it.
#[derive(Serialize)]
struct StatusOut {
    id: u64,
    addr: Option<String>,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    status: Option<StatusFields>,
}

/// The fields a member reports about itself.
#[derive(Serialize)]
struct StatusFields {
    cluster: String,
    protocol: String,
    role: &'static str,
    term: u64,
    /// Protocol detail (Raft's vote, a Paxos ballot), by name.
    detail: serde_json::Map<String, serde_json::Value>,
    leader: Option<u64>,
    commit_index: u64,
    applied_index: u64,
    last_index: u64,
    persisted_index: u64,
    snapshot_index: u64,
    revision: u64,
    keys: u64,
}

impl From<&NodeStatus> for StatusFields {
    fn from(status: &NodeStatus) -> Self {
        StatusFields {
            cluster: status.cluster.clone(),
            protocol: status.protocol.clone(),
            role: role_name(status.role),
            term: status.term,
            detail: status
                .detail
                .iter()
                .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
                .collect(),
            leader: status.leader,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            last_index: status.last_index,
            persisted_index: status.persisted_index,
            snapshot_index: status.snapshot_index,
            revision: status.revision,
            keys: status.keys,
        }
    }
}

/// A member, as `cluster members --json` prints it.
#[derive(Serialize)]
struct MemberOut {
    id: u64,
    addr: Option<String>,
    voter: bool,
    leader: bool,
}

impl From<&Member> for MemberOut {
    fn from(member: &Member) -> Self {
        MemberOut {
            id: member.id,
            addr: member.addr.map(|a| a.to_string()),
            voter: member.voter,
            leader: member.leader,
        }
    }
}

/// Runs a `cluster` command.
pub(super) async fn cluster(
    client: &Client,
    command: ClusterCommand,
    json: bool,
) -> Result<Outcome, CliError> {
    match command {
        ClusterCommand::Status => {
            let statuses = client.status_all().await;
            if statuses
                .iter()
                .any(|(_, s)| s.as_ref().is_ok_and(|s| s.protocol == "peer"))
            {
                return super::peer_output::cluster_status(client, &statuses, json).await;
            }
            let addrs = client.known_members();
            let reachable = statuses.iter().filter(|(_, s)| s.is_ok()).count();
            let leaders: Vec<u64> = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref().ok())
                .filter(|s| s.role == Role::Leader)
                .map(|s| s.id)
                .collect();
            if json {
                let nodes: Vec<StatusOut> = statuses
                    .iter()
                    .map(|(id, s)| StatusOut {
                        id: *id,
                        addr: addrs.get(id).map(|a| a.to_string()),
                        reachable: s.is_ok(),
                        error: s.as_ref().err().map(|e| e.to_string()),
                        status: s.as_ref().ok().map(StatusFields::from),
                    })
                    .collect();
                let pb = super::pb_output::summary(&statuses);
                println!(
                    "{}",
                    json!({ "leader": leaders.first().copied(), "reachable": reachable, "nodes": nodes, "primary_backup": pb })
                );
            } else {
                println!(
                    "{:<4} {:<22} {:<13} {:<11} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8} {:>6}  DETAIL",
                    "ID",
                    "ADDRESS",
                    "ROLE",
                    "PROTOCOL",
                    "TERM",
                    "LEADER",
                    "COMMIT",
                    "APPLIED",
                    "SNAPSHOT",
                    "REVISION",
                    "KEYS"
                );
                for (id, status) in &statuses {
                    let addr = addrs.get(id).map(|a| a.to_string()).unwrap_or_default();
                    match status {
                        Ok(s) => println!(
                            "{:<4} {:<22} {:<13} {:<11} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8} {:>6}  {}",
                            id,
                            addr,
                            role_name(s.role),
                            s.protocol,
                            s.term,
                            s.leader
                                .map(|l| l.to_string())
                                .unwrap_or_else(|| "-".into()),
                            s.commit_index,
                            s.applied_index,
                            s.snapshot_index,
                            s.revision,
                            s.keys,
                            s.detail
                                .iter()
                                .map(|(name, value)| format!("{name}={value}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                        Err(error) => {
                            println!("{id:<4} {addr:<22} unreachable: {}", short_error(error))
                        }
                    }
                }
                if let Some(summary) = super::pb_output::summary(&statuses) {
                    for line in super::pb_output::lines(&summary) {
                        println!("{line}");
                    }
                }
                match leaders.as_slice() {
                    [leader] => println!("leader: node {leader}; {reachable} of {} members answered", statuses.len()),
                    [] => println!(
                        "no leader among the members that answered ({reachable} of {}): an election may be running, \
                         or too few members are up to form a majority",
                        statuses.len()
                    ),
                    many => println!("members report several leaders {many:?} (different terms); ask again in a moment"),
                }
            }
            if reachable == 0 {
                return Err(CliError::Unavailable(format!(
                    "no member answered at {}: is the cluster running? (check --endpoints and --certs)",
                    addrs
                        .iter()
                        .map(|(id, a)| format!("{id}={a}"))
                        .collect::<Vec<_>>()
                        .join(",")
                )));
            }
            Ok(Outcome::Success)
        }
        ClusterCommand::Members => {
            let (members, leader) = client.members().await?;
            if json {
                let list: Vec<MemberOut> = members.iter().map(MemberOut::from).collect();
                println!("{}", json!({ "leader": leader, "members": list }));
            } else {
                println!("{:<4} {:<22} {:<8} LEADER", "ID", "ADDRESS", "KIND");
                for m in &members {
                    println!(
                        "{:<4} {:<22} {:<8} {}",
                        m.id,
                        m.addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
                        if m.voter { "voter" } else { "learner" },
                        if m.leader { "*" } else { "" }
                    );
                }
            }
            Ok(Outcome::Success)
        }
        ClusterCommand::Add { id, addr, learner } => {
            let addr = resolve(&addr)?;
            client.add_member(id, addr, learner).await?;
            let kind = if learner { "learner" } else { "voter" };
            if json {
                println!(
                    "{}",
                    json!({ "added": id, "addr": addr.to_string(), "kind": kind })
                );
            } else {
                println!(
                    "added node {id} at {addr} as a {kind}; start it with `quorate serve --join --id {id} --listen {addr} ...` if it is not running"
                );
            }
            Ok(Outcome::Success)
        }
        ClusterCommand::Remove { id } => {
            client.remove_member(id).await?;
            if json {
                println!("{}", json!({ "removed": id }));
            } else {
                println!("removed node {id}; its process can be stopped now");
            }
            Ok(Outcome::Success)
        }
        ClusterCommand::TransferLeader { id } => {
            client.transfer_leader(id).await?;
            if json {
                println!("{}", json!({ "leader": id }));
            } else {
                println!("node {id} is the leader now");
            }
            Ok(Outcome::Success)
        }
        ClusterCommand::Shards => super::shards_output::shards(client, json).await,
        ClusterCommand::Split { key } => super::shards_output::split(client, key, json).await,
    }
}

fn short_error(error: &ClientError) -> String {
    match error {
        ClientError::Unavailable { last, .. } => last.clone(),
        other => other.to_string(),
    }
}

fn resolve(addr: &str) -> Result<std::net::SocketAddr, CliError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CliError::Usage(format!("{addr:?} is not a HOST:PORT address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(Bytes::from_static(b"ac")));
        assert_eq!(prefix_end(b"a\xff"), Some(Bytes::from_static(b"b")));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn bytes_show_as_text_or_hex() {
        assert_eq!(text(b"hello"), "hello");
        assert_eq!(text(b"\xff\x00"), "0xff00");
    }
}
