//! A three-node Quorate cluster in one process on loopback, used through `node::client::Client`.
//!
//! Run with `cargo run -p node --example client`. It generates dev certificates and data under a
//! temporary folder, starts three servers, then writes, reads, compares-and-sets and scans through
//! the client, moves leadership, and shuts everything down. Against a cluster started with
//! `cargo xtask cluster`, build the client the same way from its certificate folder and
//! addresses (`ClientConfig::from_cert_dir` + `parse_endpoints`).

use std::net::UdpSocket;

use node::client::{CasOutcome, Client, ClientConfig};
use node::config::{MemberConfig, ServeConfig};
use node::proto::Consistency;
use node::server::Server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let ids: Vec<net_quic::NodeId> = (1..=3).map(net_quic::NodeId).collect();
    net_quic::certs::write_dev_certs(&certs, "quorate", &ids, &["example".to_string()])?;

    // Three members on free loopback ports.
    let mut members = Vec::new();
    for id in 1..=3 {
        let addr = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        members.push(MemberConfig { id, addr });
    }
    let mut servers = Vec::new();
    for member in &members {
        let data = dir.path().join(format!("node-{}", member.id));
        let mut config = ServeConfig::new(member.id, member.addr, data, &certs, members.clone());
        config.raft.tick_ms = 20;
        servers.push(Server::start(config).await?);
    }

    let endpoints = members.iter().map(|m| (m.id, m.addr)).collect();
    let client = Client::connect(ClientConfig::from_cert_dir(
        "quorate", &certs, "example", endpoints,
    )?)?;

    let revision = client.put("greeting", "hello").await?;
    println!("put greeting=hello at revision {revision}");
    let kv = client.get("greeting", Consistency::Linearizable).await?;
    println!(
        "get greeting -> {:?}",
        kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    );

    match client
        .cas("greeting", Some("hello".into()), "bonjour")
        .await?
    {
        CasOutcome::Swapped { revision } => println!("cas hello->bonjour at revision {revision}"),
        CasOutcome::Mismatch { current, .. } => println!("cas refused, current: {current:?}"),
    }
    for i in 0..3 {
        client
            .put(format!("fruit/{i}"), format!("{i} apples"))
            .await?;
    }
    let page = client
        .scan(
            "fruit/",
            Some("fruit0".into()),
            10,
            Consistency::Linearizable,
        )
        .await?;
    for kv in &page.kvs {
        println!(
            "scan {} = {}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        );
    }
    // Session-consistent: any member, no leader round trip, never older than this session's
    // last write (revision_seen).
    let kv = client.get("fruit/2", Consistency::SEQUENTIAL).await?;
    println!(
        "sequential get fruit/2 -> {:?} (session at revision {})",
        kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        client.revision_seen()
    );

    let status = client.status().await?;
    let leader = status.leader.unwrap_or(1);
    let next = if leader == 3 { 1 } else { leader + 1 };
    client.transfer_leader(next).await?;
    println!("leadership moved from node {leader} to node {next}");
    client.put("after-transfer", "still writable").await?;

    client.close().await;
    for server in servers {
        server.shutdown().await?;
    }
    println!("cluster stopped");
    Ok(())
}
