//! In-process cluster tests: three servers on loopback in one runtime, driven through the client
//! protocol. Every wait is bounded; the whole module runs in well under a minute.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use net_quic::{Client, ClientConfig, Credentials, Limits, NodeId};
use tokio::time::Instant;

use crate::config::{MemberConfig, ServeConfig};
use crate::proto::{
    AdminRequest, Consistency, KeyValue, NodeStatus, Quorate, ReadOp, Reply, Request, Role,
    ServerError, Session, WriteOp, WriteResult,
};
use crate::server::{ServeError, Server, ServerHandle};
use crate::store::StoreError;

const CLUSTER: &str = "quorate";
const DEADLINE: Duration = Duration::from_secs(20);

fn free_addr() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

pub(crate) struct TestCluster {
    dir: tempfile::TempDir,
    root: PathBuf,
    members: Vec<MemberConfig>,
    nodes: HashMap<u64, ServerHandle>,
    pub(crate) client: Client<Quorate>,
    client_id: u64,
    seq: u64,
    /// Held for the cluster's life: clusters of this file run one at a time, so the timing
    /// bounds of one test are not eaten by the fsyncs of seven others on a 2-core machine.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn node_config(root: &Path, members: &[MemberConfig], id: u64) -> ServeConfig {
    let addr = members.iter().find(|m| m.id == id).unwrap().addr;
    let mut config = ServeConfig::new(
        id,
        addr,
        root.join(format!("node-{id}")),
        root.join("certs"),
        members.to_vec(),
    );
    config.raft.tick_ms = 20;
    // 0.5–1 s: fsync stalls on a loaded test machine must not look like a dead leader.
    config.raft.election_ticks = 25;
    config.raft.heartbeat_ticks = 2;
    config.limits.request_timeout_ms = 2_000;
    config.limits.max_key_bytes = 64;
    config
}

impl TestCluster {
    pub(crate) async fn start(n: u64, tune: impl Fn(&mut ServeConfig)) -> Self {
        let serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ids: Vec<NodeId> = (1..=n + 1).map(NodeId).collect();
        net_quic::certs::write_dev_certs(&root.join("certs"), CLUSTER, &ids, &["test".into()])
            .unwrap();
        let members: Vec<MemberConfig> = (1..=n)
            .map(|id| MemberConfig {
                id,
                addr: free_addr(),
            })
            .collect();
        let mut nodes = HashMap::new();
        for id in 1..=n {
            let mut config = node_config(&root, &members, id);
            tune(&mut config);
            nodes.insert(id, Server::start(config).await.unwrap());
        }
        let client = Self::client(&root, &members);
        TestCluster {
            dir,
            root,
            members,
            nodes,
            client,
            client_id: 0x5eed,
            seq: 0,
            _serial: serial,
        }
    }

    fn client(root: &Path, members: &[MemberConfig]) -> Client<Quorate> {
        Client::new(ClientConfig {
            cluster: CLUSTER.into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            credentials: Credentials::load_client(&root.join("certs"), "test").unwrap(),
            nodes: members.iter().map(|m| (NodeId(m.id), m.addr)).collect(),
            limits: Limits::default(),
        })
        .unwrap()
    }

    async fn request(&self, node: u64, request: &Request) -> Result<Reply, ServerError> {
        match self
            .client
            .request(NodeId(node), request, Duration::from_secs(3))
            .await
        {
            Ok(response) => response,
            Err(error) => Err(ServerError::Internal(format!("transport: {error}"))),
        }
    }

    /// Sends a write until some member accepts it, following redirects; the same session
    /// sequence number on every attempt.
    async fn write_with(&mut self, session: Session, op: WriteOp) -> WriteResult {
        let start = Instant::now();
        let mut target = *self.nodes.keys().min().unwrap();
        loop {
            assert!(start.elapsed() < DEADLINE, "write not accepted in time");
            let request = Request::Write {
                session,
                op: op.clone(),
            };
            match self.request(target, &request).await {
                Ok(Reply::Write(result)) => return result,
                Ok(other) => panic!("unexpected reply {other:?}"),
                Err(ServerError::NotLeader {
                    leader: Some(leader),
                    ..
                }) if self.nodes.contains_key(&leader) => target = leader,
                Err(_) => {
                    target = self.next_node(target);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Sends an admin change to the leader, following redirects, until it is done.
    async fn admin(&self, request: AdminRequest) {
        let start = Instant::now();
        let mut target = *self.nodes.keys().min().unwrap();
        loop {
            assert!(start.elapsed() < DEADLINE, "{request:?} not done in time");
            match self.request(target, &Request::Admin(request.clone())).await {
                Ok(Reply::Done) => return,
                Ok(other) => panic!("unexpected reply {other:?}"),
                Err(ServerError::NotLeader {
                    leader: Some(leader),
                    ..
                }) if self.nodes.contains_key(&leader) => target = leader,
                Err(error) => {
                    tracing::debug!(%error, "admin retry");
                    target = self.next_node(target);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn next_node(&self, after: u64) -> u64 {
        let mut ids: Vec<u64> = self.nodes.keys().copied().collect();
        ids.sort();
        *ids.iter().find(|&&id| id > after).unwrap_or(&ids[0])
    }

    async fn put(&mut self, key: &str, value: &str) -> WriteResult {
        self.seq += 1;
        let session = Session {
            client_id: self.client_id,
            seq: self.seq,
            first_unacked: self.seq,
        };
        self.write_with(session, put(key, value)).await
    }

    async fn get(&self, node: u64, key: &str, consistency: Consistency) -> Option<KeyValue> {
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < DEADLINE, "read not served in time");
            let request = Request::Read {
                consistency,
                op: ReadOp::Get {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                },
            };
            match self.request(node, &request).await {
                Ok(Reply::Get { kv, .. }) => return kv,
                Ok(other) => panic!("unexpected reply {other:?}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn status(&self, node: u64) -> NodeStatus {
        match self
            .request(node, &Request::Admin(AdminRequest::Status))
            .await
        {
            Ok(Reply::Status(status)) => status,
            other => panic!("status of node {node}: {other:?}"),
        }
    }

    pub(crate) async fn leader(&self) -> u64 {
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < DEADLINE, "no leader elected in time");
            for &id in self.nodes.keys() {
                if let Ok(Reply::Status(status)) = self
                    .request(id, &Request::Admin(AdminRequest::Status))
                    .await
                {
                    if status.role == Role::Leader {
                        return id;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&mut self, id: u64) {
        let handle = self.nodes.remove(&id).unwrap();
        handle.shutdown().await.unwrap();
    }

    async fn crash(&mut self, id: u64) {
        self.nodes.remove(&id).unwrap().abort().await;
    }

    async fn restart(&mut self, id: u64, tune: impl Fn(&mut ServeConfig)) {
        let mut config = node_config(&self.root, &self.members, id);
        tune(&mut config);
        let start = Instant::now();
        // An aborted node's UDP socket is released by quinn's driver task shortly after.
        let handle = loop {
            match Server::start(config.clone()).await {
                Ok(handle) => break handle,
                Err(ServeError::Bind { .. }) if start.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(error) => panic!("restart of node {id}: {error}"),
            }
        };
        self.nodes.insert(id, handle);
    }

    /// Stops every node; returns the folder so a test may reuse the data directories.
    async fn shutdown(mut self) -> tempfile::TempDir {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop(id).await;
        }
        self.client.close().await;
        self.dir
    }
}

fn put(key: &str, value: &str) -> WriteOp {
    WriteOp::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn value(kv: Option<KeyValue>) -> Option<String> {
    kv.map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_the_leader_stopping() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    for i in 0..30 {
        cluster.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    for id in 1..=3 {
        assert_eq!(
            value(cluster.get(id, "k29", Consistency::Linearizable).await),
            Some("v29".into()),
            "linearizable read on node {id}"
        );
    }
    let old_leader = cluster.leader().await;
    cluster.crash(old_leader).await;
    for i in 30..40 {
        cluster.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    for &id in cluster.nodes.keys() {
        for i in 0..40 {
            assert_eq!(
                value(
                    cluster
                        .get(id, &format!("k{i}"), Consistency::Linearizable)
                        .await
                ),
                Some(format!("v{i}")),
                "key k{i} on node {id}"
            );
        }
    }
    // The stopped node restarts from its WAL and catches up.
    cluster.restart(old_leader, |_| {}).await;
    assert_eq!(
        value(
            cluster
                .get(old_leader, "k39", Consistency::Linearizable)
                .await
        ),
        Some("v39".into())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    let session = Session {
        client_id: 42,
        seq: 1,
        first_unacked: 1,
    };
    let first = cluster.write_with(session, put("k", "first")).await;
    // Another client overwrites the key; then the first write's retry arrives (lost reply).
    let other = Session {
        client_id: 43,
        seq: 1,
        first_unacked: 1,
    };
    cluster.write_with(other, put("k", "second")).await;
    let retry = cluster.write_with(session, put("k", "first")).await;
    assert_eq!(retry, first, "the retry gets the original result");
    let leader = cluster.leader().await;
    assert_eq!(
        value(cluster.get(leader, "k", Consistency::Linearizable).await),
        Some("second".into()),
        "the retry did not apply again"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_linearizable_read_is_never_stale() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    let leader = cluster.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    for round in 0..20 {
        cluster.put("x", &round.to_string()).await;
        let follower = followers[round % 2];
        assert_eq!(
            value(cluster.get(follower, "x", Consistency::Linearizable).await),
            Some(round.to_string()),
            "follower {follower} returned an older value than an acknowledged write"
        );
    }
    // A stale read is served locally and sees at most what was written.
    let stale = value(cluster.get(followers[0], "x", Consistency::Stale).await);
    assert!(stale.is_some());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_redirect_writes_and_limits_give_typed_errors() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    cluster.put("a", "1").await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let session = Session {
        client_id: 9,
        seq: 1,
        first_unacked: 1,
    };
    let write = |op| Request::Write { session, op };
    match cluster.request(follower, &write(put("b", "1"))).await {
        Err(ServerError::NotLeader {
            leader: Some(hint),
            leader_addr: Some(addr),
        }) => {
            // The hint names a leader (normally `leader`, unless an election just happened)
            // and the address clients reach it on.
            assert_ne!(hint, follower);
            assert_eq!(
                Some(addr),
                cluster
                    .members
                    .iter()
                    .find(|m| m.id == hint)
                    .map(|m| m.addr)
            );
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    let long_key = "k".repeat(65);
    assert_eq!(
        cluster.request(leader, &write(put(&long_key, "v"))).await,
        Err(ServerError::KeyTooLarge {
            size: 65,
            limit: 64
        })
    );
    assert_eq!(
        cluster.request(leader, &write(put("", "v"))).await,
        Err(ServerError::EmptyKey)
    );
    assert_eq!(
        cluster
            .request(
                leader,
                &Request::Admin(AdminRequest::RemoveMember { id: 77 })
            )
            .await,
        Err(ServerError::UnknownNode(77))
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_compacted_log_catches_up_from_a_snapshot() {
    let small_snapshots = |config: &mut ServeConfig| {
        config.snapshot.entries = 10;
        config.snapshot.trailing_entries = 5;
    };
    let mut cluster = TestCluster::start(3, small_snapshots).await;
    cluster.put("before", "1").await;
    let leader = cluster.leader().await;
    let lagging = (1..=3).find(|&id| id != leader).unwrap();
    let lagging_last = cluster.status(lagging).await.last_index;
    cluster.stop(lagging).await;
    // Sequential writes: one entry each, more than the snapshot interval plus the trailing
    // entries, so the entries the lagging node needs are compacted away on the leader.
    for i in 0..100 {
        cluster.put(&format!("k{i}"), "v").await;
    }
    let leader_status = cluster.status(leader).await;
    assert!(
        leader_status.snapshot_index > lagging_last + 5,
        "the leader compacted past the lagging node's log: {leader_status:?}"
    );
    cluster.restart(lagging, small_snapshots).await;
    assert_eq!(
        value(cluster.get(lagging, "k99", Consistency::Linearizable).await),
        Some("v".into())
    );
    assert_eq!(
        value(cluster.get(lagging, "before", Consistency::Stale).await),
        Some("1".into())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_from_another_cluster_is_refused() {
    let cluster = TestCluster::start(1, |_| {}).await;
    let root = cluster.root.clone();
    let members = cluster.members.clone();
    let _dir = cluster.shutdown().await;
    let mut config = node_config(&root, &members, 1);
    config.cluster = "other".into();
    net_quic::certs::write_dev_certs(&root.join("other-certs"), "other", &[NodeId(1)], &[])
        .unwrap();
    config.certs.dir = Some(root.join("other-certs"));
    match Server::start(config).await {
        Err(ServeError::Store(error)) => {
            assert!(matches!(*error, StoreError::WrongCluster { .. }), "{error}")
        }
        other => panic!("expected a wrong-cluster error, got {other:?}"),
    }
}

/// Writes `w<i>` keys until told to stop, following redirects; returns the acknowledged keys.
async fn keep_writing(
    client: Client<Quorate>,
    nodes: Vec<u64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let mut acknowledged = Vec::new();
    let mut target = nodes[0];
    let mut seq = 0;
    while !*stop.borrow() {
        seq += 1;
        let key = format!("w{seq}");
        let session = Session {
            client_id: 0xabc,
            seq,
            first_unacked: seq,
        };
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < DEADLINE, "background write {seq} stuck");
            let request = Request::Write {
                session,
                op: put(&key, "x"),
            };
            let reply = client
                .request(NodeId(target), &request, Duration::from_secs(2))
                .await;
            match reply {
                Ok(Ok(Reply::Write(_))) => {
                    acknowledged.push(key.clone());
                    break;
                }
                Ok(Err(ServerError::NotLeader {
                    leader: Some(leader),
                    ..
                })) if nodes.contains(&leader) => target = leader,
                _ => {
                    let i = nodes.iter().position(|&n| n == target).unwrap_or(0);
                    target = nodes[(i + 1) % nodes.len()];
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    client.close().await;
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_removed_and_leadership_moves_while_a_client_writes() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    cluster.put("start", "1").await;
    let new_addr = free_addr();
    let mut members = cluster.members.clone();
    members.push(MemberConfig {
        id: 4,
        addr: new_addr,
    });
    let writer_client = TestCluster::client(&cluster.root, &members);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(keep_writing(writer_client, vec![1, 2, 3, 4], stop_rx));

    // A fourth node starts empty, waiting to be added.
    let mut config = node_config(&cluster.root, &members, 4);
    config.join = true;
    cluster
        .nodes
        .insert(4, Server::start(config).await.unwrap());
    cluster.members = members.clone();
    cluster.client = TestCluster::client(&cluster.root, &members);
    cluster
        .admin(AdminRequest::AddMember {
            id: 4,
            addr: new_addr,
            learner: false,
        })
        .await;
    assert_eq!(
        value(cluster.get(4, "start", Consistency::Linearizable).await),
        Some("1".into())
    );

    // Remove a follower (not the leader) and stop it.
    let leader = cluster.leader().await;
    let removed = (1..=3).find(|&id| id != leader).unwrap();
    cluster
        .admin(AdminRequest::RemoveMember { id: removed })
        .await;
    cluster.stop(removed).await;

    // Hand leadership to the new member.
    cluster.admin(AdminRequest::TransferLeader { to: 4 }).await;
    assert_eq!(cluster.leader().await, 4);

    cluster.put("end", "1").await;
    stop_tx.send(true).unwrap();
    let acknowledged = writer.await.unwrap();
    assert!(!acknowledged.is_empty());
    match cluster
        .request(4, &Request::Admin(AdminRequest::Members))
        .await
    {
        Ok(Reply::Members { members, leader }) => {
            assert_eq!(leader, Some(4));
            let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
            assert_eq!(ids.len(), 3, "{members:?}");
            assert!(!ids.contains(&removed));
        }
        other => panic!("unexpected {other:?}"),
    }
    for key in &acknowledged {
        assert_eq!(
            value(cluster.get(4, key, Consistency::Linearizable).await),
            Some("x".into()),
            "acknowledged {key} lost"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_off_leadership_first() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    cluster.put("a", "1").await;
    let old_leader = cluster.leader().await;
    cluster.stop(old_leader).await;
    // No election timeout had to pass: the successor was told to campaign (TimeoutNow) and the
    // old leader stopped only once it heard from the new one, so some survivor already leads.
    let mut leaders = Vec::new();
    for id in (1..=3).filter(|&id| id != old_leader) {
        if let Ok(Reply::Status(status)) = cluster
            .request(id, &Request::Admin(AdminRequest::Status))
            .await
        {
            if status.role == Role::Leader {
                leaders.push(id);
            }
        }
    }
    assert_eq!(leaders.len(), 1, "exactly one survivor leads right away");
    cluster.put("b", "2").await;
    cluster.shutdown().await;
}
