//! End-to-end: sequential (session-consistent) reads on real `quorate` processes.
//!
//! A member serves a sequential read from its own state once it has applied the revision the
//! client's session has seen; a member behind it holds the read, then answers `Behind`, and never
//! serves the older state. Each scenario runs under each protocol (`raft::*`, `multi_paxos::*`, `zab::*`).
//! Tests in this file run one at a time.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, ProcCluster, CLIENT_NAME};
use node::client::{Client, ClientConfig, ClientError};
use node::config::Protocol;
use node::proto::Consistency;

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client of member `id` alone that gives up after `timeout`.
fn client_of(cluster: &ProcCluster, id: u64, timeout: Duration) -> Client {
    let endpoints = vec![(id, cluster.addrs[&id])];
    let mut config =
        ClientConfig::from_cert_dir(common::CLUSTER, &cluster.certs, CLIENT_NAME, endpoints)
            .expect("client credentials");
    config.timeout = timeout;
    config.attempt_timeout = timeout;
    Client::connect(config).expect("client")
}

/// `quorate --endpoints ID=ADDR kv get KEY --consistency sequential --min-revision N` against
/// member `id` only; returns (exit code, stdout, stderr).
fn cli_sequential_get(
    cluster: &ProcCluster,
    id: u64,
    key: &str,
    min: u64,
) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .arg("--endpoints")
        .arg(format!("{id}={}", cluster.addrs[&id]))
        .arg("--certs")
        .arg(&cluster.certs)
        .arg("--client-name")
        .arg(CLIENT_NAME)
        .arg("--timeout")
        .arg("3s")
        .args([
            "kv",
            "get",
            key,
            "--consistency",
            "sequential",
            "--min-revision",
        ])
        .arg(min.to_string())
        .env("XDG_CACHE_HOME", cluster.root().join("cache"))
        .stdin(Stdio::null())
        .output()
        .expect("run quorate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn a_restarted_follower_serves_the_sessions_write_only_once_it_has_it(protocol: Protocol) {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start_with(protocol, 3, |_| {});
    let client = cluster.client();
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let other = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader && id != follower)
        .unwrap();
    client.put("k", "old").await.expect("put");
    eventually("the follower has the first write", || async {
        let kv = client
            .get_from(follower, "k", Consistency::Stale)
            .await
            .ok()??;
        (kv.value == "old").then_some(())
    })
    .await;

    // The follower misses the session's latest write: down while it commits, then restarted
    // while the two members that have it are frozen, so it cannot catch up.
    cluster.kill(follower);
    let mut last = 0;
    for i in 0..20 {
        last = client.put("k", format!("new-{i}")).await.expect("put");
    }
    assert_eq!(client.revision_seen(), last);
    cluster.signal(leader, "STOP");
    cluster.signal(other, "STOP");
    cluster.spawn(follower);
    // (It may not even know the first write committed yet: commit indexes are not synced.)
    let stale = eventually("the restarted follower answers", || async {
        client
            .get_from(follower, "k", Consistency::Stale)
            .await
            .ok()
    })
    .await;
    let behind = stale.as_ref().map(|kv| kv.value.clone());
    assert!(
        behind.is_none() || behind.as_deref() == Some(b"old".as_slice()),
        "the follower is behind the session: {behind:?}"
    );

    // Behind the session, it holds the read and then refuses it; it never serves "old".
    let lone = client_of(&cluster, follower, Duration::from_secs(2));
    lone.observe_revision(client.revision_seen());
    let refused = lone.get("k", Consistency::SEQUENTIAL).await;
    match refused {
        Err(ClientError::Unavailable { last, .. }) => {
            assert!(last.contains("applied revision"), "{last}")
        }
        other => panic!("a member behind the session served a sequential read: {other:?}"),
    }
    let (code, stdout, stderr) = cli_sequential_get(&cluster, follower, "k", last);
    assert_eq!((code, stdout.as_str()), (3, ""), "{stderr}");
    assert!(stderr.contains("applied revision"), "{stderr}");
    // Without a session revision, a new session may read what the member has.
    let fresh = client_of(&cluster, follower, Duration::from_secs(2));
    let kv = fresh.get("k", Consistency::SEQUENTIAL).await.expect("read");
    assert_eq!(kv.map(|kv| kv.value), behind);

    // Once the others run again it catches up and serves the session's write, no older.
    cluster.signal(leader, "CONT");
    cluster.signal(other, "CONT");
    let kv = client
        .get_from(follower, "k", Consistency::SEQUENTIAL)
        .await
        .expect("the follower catches up within the client's deadline")
        .expect("present");
    assert_eq!(kv.value, "new-19");
    assert_eq!(kv.mod_revision, last);
    let (code, stdout, stderr) = cli_sequential_get(&cluster, follower, "k", last);
    assert_eq!((code, stdout.trim()), (0, "new-19"), "{stderr}");
    // A revision bound means nothing to the other levels: a usage error.
    let (code, _, stderr) = cluster.cli(&["kv", "get", "k", "--min-revision", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--consistency sequential"), "{stderr}");
}

async fn sequential_reads_of_one_session_never_go_back_across_members(protocol: Protocol) {
    let _serial = SERIAL.lock().await;
    let cluster = ProcCluster::start_with(protocol, 3, |_| {});
    let writer = cluster.client();
    let reader = cluster.client();
    cluster.wait_leader(&writer, &[1, 2, 3]).await;
    let mut seen = 0u64;
    for i in 0..60u64 {
        // Another session writes; this one reads its own writes and the others' in turn, at
        // every member, and must never see the store go back.
        writer.put("shared", i.to_string()).await.expect("put");
        if i % 5 == 0 {
            let revision = reader.put("mine", i.to_string()).await.expect("own put");
            seen = seen.max(revision);
        }
        let member = 1 + i % 3;
        let (revision, kv) = match i % 2 {
            0 => reader
                .get_with_revision("shared", Consistency::SEQUENTIAL)
                .await
                .expect("sequential read"),
            _ => {
                let kv = reader
                    .get_from(member, "shared", Consistency::SEQUENTIAL)
                    .await
                    .expect("sequential read at one member");
                (reader.revision_seen(), kv)
            }
        };
        assert!(
            revision >= seen,
            "read {i} went back: revision {revision} after {seen}"
        );
        let kv = kv.expect("present");
        assert!(kv.mod_revision <= revision);
        seen = revision;
        let mine = reader
            .get_from(member, "mine", Consistency::SEQUENTIAL)
            .await
            .expect("own key")
            .expect("present");
        assert_eq!(
            mine.value,
            (i / 5 * 5).to_string(),
            "member {member} missed this session's write"
        );
    }
}

/// Every scenario runs once per protocol.
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
    a_restarted_follower_serves_the_sessions_write_only_once_it_has_it,
    sequential_reads_of_one_session_never_go_back_across_members,
);
