//! Two nodes and a client on loopback: dev certificates, a ping each way, one client request.
//!
//! Run with `cargo run -p net-quic --example ping`.

use std::collections::HashMap;
use std::time::Duration;

use net_quic::{
    certs, Client, ClientConfig, Credentials, Endpoint, EndpointConfig, Limits, NodeId, Protocol,
};
use serde::{Deserialize, Serialize};

/// What the nodes say to each other.
#[derive(Debug, Serialize, Deserialize)]
enum PeerMsg {
    Ping { n: u32 },
    Pong { n: u32 },
}

/// The message types of this little deployment.
struct Demo;
impl Protocol for Demo {
    type Peer = PeerMsg;
    type Request = String;
    type Response = String;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const CLUSTER: &str = "demo";
    const WAIT: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir()?;
    let written = certs::write_dev_certs(
        dir.path(),
        CLUSTER,
        &[NodeId(1), NodeId(2)],
        &["alice".to_string()],
    )?;
    println!("wrote {} certificate files", written.len());

    let bind = |id: u64| {
        Endpoint::<Demo>::bind(EndpointConfig {
            cluster: CLUSTER.into(),
            listen: "127.0.0.1:0".parse().expect("address"),
            credentials: Credentials::load_node(dir.path(), NodeId(id))?,
            peers: HashMap::new(),
            limits: Limits::default(),
        })
    };
    let (node1, inbound1) = bind(1)?;
    let (node2, mut inbound2) = bind(2)?;
    node1.set_peer_addr(NodeId(2), node2.local_addr()?);
    node2.set_peer_addr(NodeId(1), node1.local_addr()?);

    // Node 2 answers pings; node 1 answers client requests.
    let answering = node2.clone();
    tokio::spawn(async move {
        while let Some(m) = inbound2.peer.recv().await {
            if let PeerMsg::Ping { n } = m.msg {
                let _ = answering.send(m.from, &PeerMsg::Pong { n });
            }
        }
    });
    let mut pongs = inbound1.peer;
    let mut requests = inbound1.requests;
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let reply = format!("{} asked {:?}", req.client, req.request);
            let _ = req.responder.reply(&reply);
        }
    });

    for n in 0..3 {
        node1.send(NodeId(2), &PeerMsg::Ping { n })?;
    }
    for _ in 0..3 {
        let m = tokio::time::timeout(WAIT, pongs.recv())
            .await?
            .ok_or("node 1's inbound queue closed")?;
        println!("node 1 got {:?} from node {}", m.msg, m.from);
    }

    let client = Client::<Demo>::new(ClientConfig {
        cluster: CLUSTER.into(),
        bind: "127.0.0.1:0".parse()?,
        credentials: Credentials::load_client(dir.path(), "alice")?,
        nodes: HashMap::from([(NodeId(1), node1.local_addr()?)]),
        limits: Limits::default(),
    })?;
    let reply = client
        .request(NodeId(1), &"get x".to_string(), WAIT)
        .await?;
    println!("client got: {reply}");
    client.close().await;

    let report = node1.shutdown(Duration::from_secs(1)).await;
    println!("node 1 counters: {:?}", report.stats);
    node2.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
