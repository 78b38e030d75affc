//! Not a behaviour check: counts the `fdatasync` calls a real 3-node cluster makes for 50
//! sequential puts of one client, with `strace -f -c` attached to every node after the leader is
//! elected. Run with `cargo test -p node --test measure_fdatasync -- --ignored --nocapture`;
//! `QUORATE_MEASURE_BIN=<path to another quorate>` measures another build (the configuration
//! written omits `protocol`, so an older binary reads it too); `QUORATE_MEASURE_PROTOCOL=multi-paxos`
//! measures the other protocol.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{free_addr, CLIENT_NAME, CLUSTER};
use node::client::{Client, ClientConfig};
use node::config::{MemberConfig, ServeConfig};

const PUTS: usize = 50;

fn spawn(bin: &str, config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("QUORATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn fdatasync_calls(summary: &str) -> u64 {
    summary
        .lines()
        .find(|line| line.trim_end().ends_with("fdatasync"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: needs strace, prints figures"]
async fn measure_fdatasyncs_of_50_puts_on_three_nodes() {
    let bin = std::env::var("QUORATE_MEASURE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_quorate").to_string());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let certs = root.join("certs");
    let ids: Vec<net_quic::NodeId> = (1..=3).map(net_quic::NodeId).collect();
    net_quic::certs::write_dev_certs(&certs, CLUSTER, &ids, &[CLIENT_NAME.to_string()]).unwrap();
    let members: Vec<MemberConfig> = (1..=3)
        .map(|id| MemberConfig {
            id,
            addr: free_addr(),
        })
        .collect();
    let mut nodes = Vec::new();
    for member in &members {
        let mut config = ServeConfig::new(
            member.id,
            member.addr,
            root.join(format!("data-{}", member.id)),
            &certs,
            members.clone(),
        );
        config.cluster = CLUSTER.to_string();
        let protocol = std::env::var("QUORATE_MEASURE_PROTOCOL").ok();
        if let Some(protocol) = &protocol {
            config.protocol = protocol.parse().expect("a protocol name");
        }
        let text: String = config
            .to_toml_string()
            .unwrap()
            .lines()
            .filter(|line| protocol.is_some() || !line.starts_with("protocol ="))
            .map(|line| format!("{line}\n"))
            .collect();
        let path = root.join(format!("node-{}.toml", member.id));
        std::fs::write(&path, text).unwrap();
        nodes.push(spawn(
            &bin,
            &path,
            &root.join(format!("node-{}.log", member.id)),
        ));
    }
    let endpoints = members.iter().map(|m| (m.id, m.addr)).collect();
    let mut config = ClientConfig::from_cert_dir(CLUSTER, &certs, CLIENT_NAME, endpoints).unwrap();
    config.timeout = Duration::from_secs(20);
    let client = Client::connect(config).unwrap();
    // Warm up: a leader is elected and the connection made.
    for i in 0..5 {
        client
            .put(format!("warm-{i}"), "x")
            .await
            .expect("warm-up put");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tracers: Vec<(Child, std::path::PathBuf)> = Vec::new();
    for (node, member) in nodes.iter().zip(&members) {
        let out = root.join(format!("strace-{}.txt", member.id));
        let tracer = Command::new("strace")
            .args(["-f", "-c", "-e", "trace=fdatasync", "-o"])
            .arg(&out)
            .arg("-p")
            .arg(node.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace");
        tracers.push((tracer, out));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    for i in 0..PUTS {
        client
            .put(format!("key-{i}"), Bytes::from(vec![b'v'; 100]))
            .await
            .expect("put");
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut total = 0;
    for ((mut tracer, out), member) in tracers.into_iter().zip(&members) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(tracer.id().to_string())
            .status();
        let _ = tracer.wait();
        let summary = std::fs::read_to_string(&out).unwrap_or_default();
        let calls = fdatasync_calls(&summary);
        total += calls;
        println!("node {}: {calls} fdatasync", member.id);
    }
    println!(
        "{bin}: {PUTS} sequential puts in {} ms, {total} fdatasync on 3 nodes = {:.2} per put per node",
        took.as_millis(),
        total as f64 / PUTS as f64 / 3.0
    );
    for mut node in nodes {
        let _ = node.kill();
        let _ = node.wait();
    }
}
