//! `replication = "peer"` with more nodes than replicas: four in-process nodes, N = 2. A client
//! that knows one node only still writes and reads every key — that node forwards requests for
//! keys it does not replicate to a replica and relays the answer (the coordinator the answer
//! names is then another node).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use node::client::{Client, ClientConfig};
use node::config::{MemberConfig, Replication, ServeConfig};
use node::proto::{PeerReply, PeerRequest, Reply, Request};
use node::server::Server;
use replication_peer::VersionVector;

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_replicate_a_key_forwards_the_request_to_one_that_does() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ids: Vec<net_quic::NodeId> = (1..=4).map(net_quic::NodeId).collect();
    net_quic::certs::write_dev_certs(&certs, "quorate", &ids, &["test".into()]).unwrap();
    let members: Vec<MemberConfig> = (1..=4)
        .map(|id| MemberConfig {
            id,
            addr: free_addr(),
        })
        .collect();
    let mut servers = Vec::new();
    for m in &members {
        let mut config = ServeConfig::new(
            m.id,
            m.addr,
            dir.path().join(format!("node-{}", m.id)),
            &certs,
            members.clone(),
        );
        config.replication = Replication::Peer;
        config.peer.n = 2;
        config.peer.r = 2;
        config.peer.w = 2;
        config.raft.tick_ms = 20;
        servers.push(Server::start(config).await.unwrap());
    }
    let mut config =
        ClientConfig::from_cert_dir("quorate", &certs, "test", vec![(1, members[0].addr)]).unwrap();
    config.timeout = Duration::from_secs(10);
    let client = Client::connect(config).unwrap();

    let mut elsewhere = 0;
    for i in 0..16 {
        let key = format!("key-{i}");
        let written = client
            .peer_put(key.clone(), format!("v{i}"), VersionVector::new(), None)
            .await
            .expect("the write reaches a replica");
        elsewhere += usize::from(written.node != 1);
        let read = client.peer_get(key.clone(), None).await.expect("read");
        let values: Vec<_> = read.siblings.iter().map(|s| s.value.clone()).collect();
        assert_eq!(values, vec![Some(format!("v{i}").into())], "{key}");
    }
    // With N = 2 of 4, node 1 replicates about half the keys: the others went elsewhere.
    assert!(
        elsewhere > 0,
        "some keys must be coordinated by another node"
    );

    // Node 1 itself answers (no client redirect: one request, to node 1 only), with the
    // coordinator's write for keys it does not replicate.
    let raw = net_quic::Client::<node::proto::Quorate>::new(net_quic::ClientConfig {
        cluster: "quorate".into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        credentials: net_quic::Credentials::load_client(&certs, "test").unwrap(),
        nodes: [(net_quic::NodeId(1), members[0].addr)]
            .into_iter()
            .collect(),
        limits: net_quic::Limits::default(),
    })
    .unwrap();
    let mut forwarded = 0;
    for i in 0..16 {
        let request = Request::Peer(PeerRequest::Put {
            key: format!("raw-{i}").into(),
            value: "v".into(),
            context: VersionVector::new(),
            w: Some(2),
        });
        let reply = raw
            .request(net_quic::NodeId(1), &request, Duration::from_secs(5))
            .await
            .expect("node 1 answers");
        match reply {
            Ok(Reply::Peer(PeerReply::Written { node, .. })) => forwarded += usize::from(node != 1),
            other => panic!("raw-{i}: {other:?}"),
        }
    }
    assert!(forwarded > 0, "node 1 forwarded some writes");
    client.close().await;
    for s in servers {
        s.shutdown().await.unwrap();
    }
}
