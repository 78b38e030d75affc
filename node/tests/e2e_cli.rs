//! End-to-end: the `quorate` command line against real processes, and inputs a node or the
//! CLI must refuse with a clear message (oversized key, unknown node, a data directory of
//! another cluster or protocol, a corrupted WAL segment, no cluster at all), and how soon a
//! fresh CLI process gets a write acknowledged after the leader is killed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_addr, timeline, ProcCluster, WAIT};
use node::config::{MemberConfig, Protocol, ServeConfig};
use node::proto::Consistency;

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[track_caller]
fn expect(result: (i32, String, String), code: i32, stdout_has: &str, stderr_has: &str) -> String {
    let (got, stdout, stderr) = result;
    assert_eq!(
        got, code,
        "exit code; stdout: {stdout:?}; stderr: {stderr:?}"
    );
    assert!(
        stdout.contains(stdout_has),
        "stdout {stdout:?} lacks {stdout_has:?} (stderr {stderr:?})"
    );
    assert!(
        stderr.contains(stderr_has),
        "stderr {stderr:?} lacks {stderr_has:?} (stdout {stdout:?})"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_writes_reads_and_manages_the_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = ProcCluster::start(3, |config| config.limits.max_key_bytes = 64);
    let client = cluster.client();
    cluster.wait_leader(&client, &[1, 2, 3]).await;

    expect(
        cluster.cli(&["kv", "put", "greeting", "hello"]),
        0,
        "OK (revision",
        "",
    );
    let out = expect(cluster.cli(&["kv", "get", "greeting"]), 0, "hello", "");
    assert_eq!(out, "hello\n");
    expect(cluster.cli(&["kv", "get", "missing"]), 1, "", "not found");
    expect(cluster.cli(&["kv", "put", "app/1", "x"]), 0, "OK", "");
    expect(cluster.cli(&["kv", "put", "app/2", "y"]), 0, "OK", "");
    expect(cluster.cli(&["kv", "put", "zzz", "z"]), 0, "OK", "");
    let out = expect(
        cluster.cli(&["kv", "scan", "--prefix", "app/"]),
        0,
        "app/1",
        "",
    );
    assert_eq!(out, "app/1\tx\napp/2\ty\n");
    let out = expect(
        cluster.cli(&["kv", "scan", "--limit", "2"]),
        0,
        "",
        "more keys after",
    );
    assert_eq!(out.lines().count(), 2);
    expect(
        cluster.cli(&["kv", "cas", "greeting", "bye", "--expect", "hello"]),
        0,
        "OK",
        "",
    );
    expect(
        cluster.cli(&["kv", "cas", "greeting", "again", "--expect", "hello"]),
        1,
        "",
        "not swapped: \"greeting\" is \"bye\"",
    );
    expect(
        cluster.cli(&["kv", "cas", "fresh", "1", "--absent"]),
        0,
        "OK",
        "",
    );
    expect(cluster.cli(&["kv", "del", "greeting"]), 0, "deleted", "");
    expect(cluster.cli(&["kv", "del", "greeting"]), 1, "", "not found");
    let out = expect(cluster.cli(&["--json", "kv", "get", "app/1"]), 0, "", "");
    assert!(
        out.contains(r#""found":true"#) && out.contains(r#""value":"x""#),
        "{out}"
    );
    assert!(
        client
            .get("fresh", Consistency::Linearizable)
            .await
            .unwrap()
            .is_some(),
        "the CLI's writes are visible to other clients"
    );

    // A key over the limit: refused by the cluster (exit 4), saying which limit.
    let long_key = "k".repeat(100);
    expect(
        cluster.cli(&["kv", "put", &long_key, "v"]),
        4,
        "",
        "exceeds the limit of 64 bytes",
    );

    // Cluster commands. (On a loaded machine an election may have happened since the start:
    // the status must name a member as leader, whichever it is now.)
    let out = expect(cluster.cli(&["cluster", "status"]), 0, "leader", "");
    assert!(
        out.contains("PROTOCOL") && out.contains("raft") && out.contains("vote="),
        "status shows protocol and detail: {out}"
    );
    let json = expect(cluster.cli(&["--json", "cluster", "status"]), 0, "", "");
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("status --json parses");
    let first = &parsed["nodes"][0];
    assert_eq!(first["protocol"], "raft", "{json}");
    assert!(first["detail"]["vote"].is_string(), "{json}");
    assert!(
        first["role"].is_string() && first["term"].is_u64(),
        "{json}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("127.0.0.1")).count(),
        3,
        "{out}"
    );
    assert!(
        [1, 2, 3]
            .iter()
            .any(|id| out.contains(&format!("leader: node {id}"))),
        "{out}"
    );
    let out = expect(cluster.cli(&["cluster", "members"]), 0, "voter", "");
    assert_eq!(out.lines().count(), 4, "a header and three members: {out}");
    let out = expect(cluster.cli(&["--json", "cluster", "members"]), 0, "", "");
    assert!(
        [1, 2, 3]
            .iter()
            .any(|id| out.contains(&format!(r#""leader":{id}"#))),
        "{out}"
    );
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;

    // Unknown node ids are refused with a pointer to the member list.
    expect(
        cluster.cli(&["cluster", "transfer-leader", "9"]),
        4,
        "",
        "node 9 is not a member",
    );
    expect(
        cluster.cli(&["cluster", "remove", "9"]),
        4,
        "",
        "node 9 is not a member",
    );
    let out = expect(
        cluster.cli(&["--json", "cluster", "remove", "9"]),
        4,
        r#""kind":"refused""#,
        "",
    );
    assert!(out.contains(r#""exit_code":4"#), "{out}");

    let target = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    expect(
        cluster.cli(&["cluster", "transfer-leader", &target.to_string()]),
        0,
        &format!("node {target} is the leader now"),
        "",
    );
    assert_eq!(cluster.wait_leader(&client, &[1, 2, 3]).await, target);
}

/// `kv txn`: compares, then one branch, atomically; the branch that ran is the exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_transaction_runs_the_branch_its_compares_choose_atomically() {
    let _serial = SERIAL.lock().await;
    let cluster = ProcCluster::start(3, |_| {});
    let client = cluster.client();
    cluster.wait_leader(&client, &[1, 2, 3]).await;
    expect(
        cluster.cli(&["kv", "put", "balance/alice", "10"]),
        0,
        "OK",
        "",
    );
    // Move the money only if alice still holds 10 and bob has no account yet.
    let transfer = r#"{"compare": [{"key": "balance/alice", "value": "10"},
                                   {"key": "balance/bob", "version": 0}],
                       "success": [{"put": {"key": "balance/alice", "value": "0"}},
                                   {"put": {"key": "balance/bob", "value": "10"}},
                                   {"get": "balance/bob"}],
                       "failure": [{"get": "balance/alice"}, {"get": "balance/bob"}]}"#;
    let out = expect(cluster.cli(&["kv", "txn", transfer]), 0, "SUCCESS", "");
    assert!(out.contains("get \"balance/bob\": 10"), "{out}");
    // Both keys carry the transaction's one revision.
    let alice = expect(
        cluster.cli(&["--json", "kv", "get", "balance/alice"]),
        0,
        "",
        "",
    );
    let bob = expect(
        cluster.cli(&["--json", "kv", "get", "balance/bob"]),
        0,
        "",
        "",
    );
    let revision = |json: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
        v["kv"]["mod_revision"].as_u64().expect("mod_revision")
    };
    assert_eq!(revision(&alice), revision(&bob), "{alice} {bob}");
    // The same transaction again: the compares fail, the failure branch reads, exit code 1.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("transfer.json");
    std::fs::write(&file, transfer).unwrap();
    let out = expect(
        cluster.cli(&["--json", "kv", "txn", "--file", file.to_str().unwrap()]),
        1,
        "",
        "",
    );
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["succeeded"], false, "{out}");
    assert_eq!(doc["results"][0]["kv"]["value"], "0", "{out}");
    assert_eq!(doc["results"][1]["kv"]["value"], "10", "{out}");
    expect(cluster.cli(&["kv", "get", "balance/alice"]), 0, "0", "");
    // Malformed transactions are usage errors; an empty key is refused by the server.
    expect(
        cluster.cli(&["kv", "txn", "{not json"]),
        2,
        "",
        "not a transaction",
    );
    expect(
        cluster.cli(&[
            "kv",
            "txn",
            r#"{"success": [{"put": {"key": "", "value": "x"}}]}"#,
        ]),
        4,
        "",
        "empty",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_without_a_reachable_cluster_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    net_quic::certs::write_dev_certs(&certs, "quorate", &[], &["admin".to_string()]).unwrap();
    let endpoints = format!("{},{}", free_addr(), free_addr());
    let run = |args: &[&str], extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_quorate"))
            .args(extra)
            .args(args)
            .env_remove("QUORATE_CERTS")
            .env_remove("QUORATE_ENDPOINTS")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let certs_arg = certs.to_str().unwrap();
    // Nobody listens: exit 3, and the message names the endpoints and the next step.
    expect(
        run(
            &["kv", "get", "k"],
            &[
                "--endpoints",
                &endpoints,
                "--certs",
                certs_arg,
                "--timeout",
                "1s",
            ],
        ),
        3,
        "",
        "is the cluster running? try `quorate cluster status`",
    );
    // No certificate folder: a usage error naming the flag and the variable.
    expect(
        run(&["kv", "get", "k"], &["--endpoints", &endpoints]),
        2,
        "",
        "--certs DIR or set QUORATE_CERTS",
    );
    // A folder without this client's certificate: a local error saying how to make one.
    expect(
        run(
            &["kv", "get", "k"],
            &[
                "--endpoints",
                &endpoints,
                "--certs",
                certs_arg,
                "--client-name",
                "bob",
            ],
        ),
        5,
        "",
        "cargo xtask certs",
    );
    // A malformed endpoint.
    expect(
        run(
            &["kv", "get", "k"],
            &["--endpoints", "nowhere", "--certs", certs_arg],
        ),
        2,
        "",
        "bad endpoint \"nowhere\"",
    );
}

fn serve(config_path: &Path, log: &Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["serve", "--config"])
        .arg(config_path)
        .env("QUORATE_LOG", "info,quinn=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a child to exit; kills it and fails if it does not.
fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what}: still running after {WAIT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_cluster_is_refused_with_a_clear_message() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = root.join("data");
    let node = [net_quic::NodeId(1)];
    let config_for = |cluster: &str| -> PathBuf {
        let certs = root.join(format!("certs-{cluster}"));
        net_quic::certs::write_dev_certs(&certs, cluster, &node, &[]).unwrap();
        let addr = free_addr();
        let mut config =
            ServeConfig::new(1, addr, &data, &certs, vec![MemberConfig { id: 1, addr }]);
        config.cluster = cluster.to_string();
        common::fast(&mut config);
        let path = root.join(format!("{cluster}.toml"));
        std::fs::write(&path, config.to_toml_string().unwrap()).unwrap();
        path
    };

    // A one-node cluster "other" creates the directory, then stops.
    let other = config_for("other");
    let mut first = serve(&other, &root.join("other.log"));
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(root.join("other.log"))
        .unwrap_or_default()
        .contains("node started")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "cluster other never started"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "cluster other exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // A node of cluster "quorate" pointed at it refuses to start, and says why.
    let ours = config_for("quorate");
    let mut second = serve(&ours, &root.join("quorate.log"));
    let status = wait_exit(&mut second, "a node on another cluster's data directory");
    assert!(!status.success());
    let log = std::fs::read_to_string(root.join("quorate.log")).unwrap();
    assert!(
        log.contains("belongs to cluster \"other\", not \"quorate\""),
        "the error names both clusters: {log}"
    );
}

/// Flips one byte in the middle of the records of a WAL segment (not in the torn-tail region).
fn corrupt_middle_of_largest_segment(wal_dir: &Path) -> PathBuf {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let used = bytes.iter().rposition(|&b| b != 0).unwrap_or(0) as u64;
            (used, p)
        })
        .collect();
    segments.sort();
    let (used, path) = segments.pop().expect("a WAL segment");
    assert!(used > 4096, "the segment holds records: {used} bytes");
    let mut bytes = std::fs::read(&path).unwrap();
    let mut at = (used / 2) as usize;
    while bytes[at] == 0 {
        at += 1;
    }
    bytes[at] ^= if bytes[at] == 0x55 { 0xAA } else { 0x55 };
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_wal_segment_in_the_middle_is_refused_with_a_clear_message() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(3, |_| {});
    let client = cluster.client();
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;
    for i in 0..60 {
        client
            .put(format!("key-{i:03}"), "v".repeat(100))
            .await
            .expect("put");
    }
    let victim = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    // Make sure the victim has the writes on disk, then stop it cleanly.
    let target = client.status_of(leader).await.unwrap().commit_index;
    common::eventually("the victim applies every write", || async {
        let status = client.status_of(victim).await.ok()?;
        (status.applied_index >= target).then_some(())
    })
    .await;
    cluster.terminate(victim);

    let segment = corrupt_middle_of_largest_segment(&cluster.data_dir(victim).join("wal"));
    let log_before = cluster.log(victim).len();
    cluster.spawn(victim);
    let status = cluster
        .wait_exit(victim, WAIT)
        .expect("a node with a corrupt WAL must not keep running");
    assert!(!status.success());
    let log = cluster.log(victim)[log_before..].to_string();
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        log.contains("corrupt") && log.contains(name),
        "the error says the log is corrupt and names segment {name}: {log}"
    );
    // The rest of the cluster keeps serving.
    client
        .put("after", "ok")
        .await
        .expect("the others still serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_configured_by_flags_and_environment_serves_and_stops_cleanly_on_sigterm() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let certs = root.join("certs");
    net_quic::certs::write_dev_certs(&certs, "quorate", &[net_quic::NodeId(1)], &["admin".into()])
        .unwrap();
    let addr = free_addr();
    let log_path = root.join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // No config file: the id comes from the environment, the rest from flags.
    let mut child = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["serve", "--listen", &addr.to_string(), "--peers"])
        .arg(format!("1={addr}"))
        .arg("--data-dir")
        .arg(root.join("data"))
        .arg("--certs")
        .arg(&certs)
        .env("QUORATE_ID", "1")
        .env("QUORATE_LOG", "info,quinn=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_quorate"))
            .args(["--endpoints", &format!("1={addr}"), "--timeout", "10s"])
            .env("QUORATE_CERTS", &certs)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    expect(cli(&["kv", "put", "solo", "yes"]), 0, "OK", "");
    expect(cli(&["cluster", "status"]), 0, "leader: node 1", "");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_exit(&mut child, "a node asked to stop with SIGTERM");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        status.success(),
        "clean exit after SIGTERM: {status:?}; log:\n{log}"
    );
    assert!(
        log.contains("SIGTERM"),
        "the node says why it stopped: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_protocol_is_refused_with_a_clear_message() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let certs = root.join("certs");
    net_quic::certs::write_dev_certs(&certs, "quorate", &[net_quic::NodeId(1)], &[]).unwrap();
    let addr = free_addr();
    let mut config = ServeConfig::new(
        1,
        addr,
        root.join("data"),
        &certs,
        vec![MemberConfig { id: 1, addr }],
    );
    common::fast(&mut config);
    let path = root.join("node.toml");
    std::fs::write(&path, config.to_toml_string().unwrap()).unwrap();

    // A Raft node creates the directory, then stops.
    let mut first = serve(&path, &root.join("raft.log"));
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(root.join("raft.log"))
        .unwrap_or_default()
        .contains("node started")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the raft node never started"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the raft node exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // Started on it as Multi-Paxos (environment variable), the node refuses and says why.
    let log_path = root.join("paxos.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("QUORATE_PROTOCOL", "multi-paxos")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = wait_exit(&mut second, "a multi-paxos node on a raft data directory");
    assert!(!status.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("created for protocol \"raft\", not \"multi-paxos\""),
        "the error names both protocols: {log}"
    );
}

/// Raft timings of this test: 50 ms ticks, an election timeout of 10 ticks.
fn failover_timing(config: &mut ServeConfig) {
    config.raft.tick_ms = 50;
    config.raft.election_ticks = 10;
    config.raft.heartbeat_ticks = 2;
}

/// The leader is killed (-9); a CLI process started right after must get its write acknowledged
/// about as soon as the others elect a new leader: it must not spend its deadline on the dead
/// member, nor on followers still naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_is_killed_a_fresh_cli_write_is_acknowledged_soon() {
    failover(Protocol::Raft).await;
}

/// The same under Multi-Paxos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_multi_paxos_leader_is_killed_a_fresh_cli_write_is_acknowledged_soon() {
    failover(Protocol::MultiPaxos).await;
}

/// The same under Zab (FastLeaderElection, then discovery and synchronisation with a quorum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_zab_leader_is_killed_a_fresh_cli_write_is_acknowledged_soon() {
    failover(Protocol::Zab).await;
}

/// Under Zab, `cluster status` names each member's ZooKeeper state (leading / following /
/// observing / looking), its epoch and its last zxid; an observer is added as a learner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_zab_cluster_status_shows_state_epoch_and_zxid_and_an_observer_observes() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start_with(Protocol::Zab, 3, |_| {});
    let client = cluster.client();
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;
    expect(cluster.cli(&["kv", "put", "a", "1"]), 0, "OK", "");
    expect(cluster.cli(&["kv", "put", "b", "2"]), 0, "OK", "");
    let addr = cluster.spawn_joiner(4);
    expect(
        cluster.cli(&["cluster", "add", "4", &addr.to_string(), "--learner"]),
        0,
        "added node 4",
        "",
    );
    let status = common::eventually("node 4 observes", || async {
        let (code, stdout, _) = cluster.cli(&["cluster", "status"]);
        (code == 0 && stdout.contains("state=observing")).then_some(stdout)
    })
    .await;
    let rows: Vec<&str> = status.lines().collect();
    assert!(
        rows[0].contains("PROTOCOL") && rows[0].contains("DETAIL"),
        "{status}"
    );
    for id in 1..=4u64 {
        let row = rows
            .iter()
            .find(|row| row.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for node {id}: {status}"));
        let state = if id == 4 {
            "state=observing"
        } else if id == leader {
            "state=leading"
        } else {
            "state=following"
        };
        assert!(row.contains("zab"), "{row}");
        assert!(row.contains(state), "{row} lacks {state}");
        assert!(row.contains("phase=broadcast"), "{row}");
        assert!(
            row.contains("current_epoch=") && row.contains("zxid="),
            "{row}"
        );
    }
    // The JSON form carries the same detail, by name.
    let json = expect(cluster.cli(&["--json", "cluster", "status"]), 0, "", "");
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let nodes = value["nodes"].as_array().expect("nodes");
    let leader_node = nodes
        .iter()
        .find(|n| n["id"] == leader)
        .expect("leader row");
    assert_eq!(leader_node["detail"]["state"], "leading", "{json}");
    let zxid = leader_node["detail"]["zxid"].as_str().expect("zxid");
    let epoch = leader_node["term"].as_u64().expect("epoch");
    assert!(
        zxid.starts_with(&format!("{epoch}.")),
        "{zxid} in epoch {epoch}"
    );
    cluster.kill(4);
}

async fn failover(protocol: Protocol) {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start_with(protocol, 3, failover_timing);
    let client = cluster.client();
    let leader = cluster.wait_leader(&client, &[1, 2, 3]).await;
    // A CLI run remembers this leader (the worst case for the next run, once it is dead).
    let baseline = std::time::Instant::now();
    expect(cluster.cli(&["kv", "put", "before", "1"]), 0, "OK", "");
    println!(
        "a CLI put with every member up takes {} ms",
        baseline.elapsed().as_millis()
    );
    let config = cluster.config(1, false);
    let election_timeout =
        Duration::from_millis(config.raft.tick_ms * u64::from(config.raft.election_ticks));

    cluster.kill(leader);
    let killed = std::time::Instant::now();
    let killed_at = timeline::unix_seconds(std::time::SystemTime::now());
    // The CLI logs each attempt (to stderr), for the timeline below.
    let put = cluster.cli_with_env(
        &[("QUORATE_LOG", "node::client=debug")],
        &["kv", "put", "after", "2"],
    );
    let acknowledged = killed.elapsed();
    let cli_log = put.2.clone();
    expect(put, 0, "OK", "");
    print_failover_timeline(&cluster, leader, killed_at, &cli_log, acknowledged);
    let ratio = acknowledged.as_secs_f64() / election_timeout.as_secs_f64();
    println!(
        "failover ({protocol}): leader {leader} killed -> first acknowledged write of a fresh CLI process after \
         {} ms = {ratio:.2} x the election timeout ({} ms)",
        acknowledged.as_millis(),
        election_timeout.as_millis()
    );
    // Raft's own part is up to 2x (randomised timeout) plus the vote round; on a loaded machine
    // allow more, but never the old behaviour (whole attempt timeouts on the dead member).
    assert!(
        acknowledged < election_timeout * 4,
        "took {acknowledged:?} ({ratio:.2} x the election timeout)"
    );
    drop(client);
}

/// Prints where the failover's time went, in ms after the kill: each surviving node's role
/// changes (a timeout fired: candidate; elected: leader; learnt the new leader), the CLI's first
/// log line (process and runtime started) and its attempts, and the acknowledgement; then one
/// `failover phases` line with the first of each.
fn print_failover_timeline(
    cluster: &ProcCluster,
    killed: u64,
    killed_at: f64,
    cli_log: &str,
    acknowledged: Duration,
) {
    let mut events = Vec::new();
    for id in cluster.addrs.keys().copied().filter(|&id| id != killed) {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        events.extend(timeline::events(
            &log,
            &format!("node {id}"),
            killed_at,
            // (`consensus_core` lines appear with QUORATE_TEST_NODE_LOG=...,consensus_core=debug.)
            &["role change", "consensus_core"],
        ));
    }
    events.extend(timeline::events(cli_log, "cli", killed_at, &["client"]));
    events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    for event in &events {
        println!(
            "  +{:7.1} ms  {:8} {}",
            event.at_ms, event.source, event.text
        );
    }
    let first = |pred: &dyn Fn(&timeline::Event) -> bool| {
        events
            .iter()
            .find(|e| pred(e))
            .map_or("-".to_string(), |e| format!("{:.0}", e.at_ms))
    };
    let role_change = |e: &timeline::Event, role: &str| {
        e.source.starts_with("node") && e.text.contains("role change") && e.text.contains(role)
    };
    println!(
        "failover phases (ms after the kill): candidate {} | leader {} | cli first log {} | cli attempts failed {} | acknowledged {}",
        first(&|e| role_change(e, "Candidate")),
        first(&|e| role_change(e, "role=Leader")),
        timeline::first_line_ms(cli_log, killed_at).map_or("-".into(), |ms| format!("{ms:.0}")),
        events.iter().filter(|e| e.source == "cli" && e.text.contains("failed")).count(),
        acknowledged.as_millis(),
    );
}
