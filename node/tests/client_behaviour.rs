//! The client's retry rules against scripted fake nodes (real QUIC endpoints on loopback that answer
//! as a test says): a lost reply is retried under the same session sequence number, a redirect is
//! followed, a refusal is not retried, a cluster that never answers gives a bounded, explained
//! failure, a `WrongShard` whose refetched map is no newer is retried a bounded number of
//! times (and succeeds once the map moves on), and a cross-shard transaction's answer sets the
//! session's revision of every participant group.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use net_quic::{ClientRequest, Credentials, Endpoint, EndpointConfig, Limits, NodeId};
use node::client::{Client, ClientConfig, ClientError};
use node::proto::{
    AdminRequest, Consistency, Quorate, ReadOp, Reply, Request, ServerError, Session, ShardMap,
    TxnOp, TxnOpResult, WriteResult,
};

const CLUSTER: &str = "quorate";

/// What a fake node does with each request it receives: reply, or drop it unanswered (`None`).
type Script = Box<dyn FnMut(&Request) -> Option<Result<Reply, ServerError>> + Send>;

/// Starts fake node `id` on loopback; returns its address and the requests it saw.
fn fake_node(certs: &Path, id: u64, mut script: Script) -> (SocketAddr, Arc<Mutex<Vec<Request>>>) {
    let config = EndpointConfig {
        cluster: CLUSTER.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        credentials: Credentials::load_node(certs, NodeId(id)).unwrap(),
        peers: HashMap::new(),
        limits: Limits::default(),
    };
    let (endpoint, mut receivers) = Endpoint::<Quorate>::bind(config).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let _endpoint = endpoint; // kept alive as long as the task
        while let Some(ClientRequest {
            request, responder, ..
        }) = receivers.requests.recv().await
        {
            let answer = script(&request);
            log.lock().unwrap().push(request);
            if let Some(answer) = answer {
                let _ = responder.reply(&answer);
            }
        }
    });
    (addr, seen)
}

fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    net_quic::certs::write_dev_certs(dir.path(), CLUSTER, &nodes, &["test".to_string()]).unwrap();
    dir
}

fn client(certs: &Path, endpoints: Vec<(u64, SocketAddr)>, timeout: Duration) -> Client {
    let mut config = ClientConfig::from_cert_dir(CLUSTER, certs, "test", endpoints).unwrap();
    config.timeout = timeout;
    config.attempt_timeout = Duration::from_millis(500);
    config.backoff_initial = Duration::from_millis(10);
    Client::connect(config).unwrap()
}

fn session_of(request: &Request) -> Session {
    match request {
        Request::Write { session, .. } => *session,
        other => panic!("expected a write, got {other:?}"),
    }
}

#[tokio::test]
async fn a_write_whose_reply_is_lost_is_retried_under_the_same_sequence_number() {
    let dir = certs();
    let mut calls = 0;
    let (addr, seen) = fake_node(
        dir.path(),
        1,
        Box::new(move |_| {
            calls += 1;
            // The first reply is lost (the stream is reset without an answer).
            (calls > 1).then_some(Ok(Reply::Write(WriteResult::Put { revision: 7 })))
        }),
    );
    let client = client(dir.path(), vec![(1, addr)], Duration::from_secs(10));
    assert_eq!(client.put("k", "v").await.unwrap(), 7);
    assert_eq!(client.put("k", "w").await.unwrap(), 7);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "one retry, then one plain write: {seen:?}");
    let (first, retry, next) = (
        session_of(&seen[0]),
        session_of(&seen[1]),
        session_of(&seen[2]),
    );
    assert_eq!(
        first, retry,
        "the retry repeats client id and sequence number"
    );
    assert_ne!(first.client_id, 0);
    assert_eq!(next.client_id, first.client_id);
    assert_eq!(
        next.seq,
        first.seq + 1,
        "the next write takes the next number"
    );
    assert_eq!(
        next.first_unacked, next.seq,
        "the answered write is acknowledged to the server"
    );
}

#[tokio::test]
async fn a_follower_redirect_is_followed_to_the_leader() {
    let dir = certs();
    let (leader_addr, leader_seen) = fake_node(
        dir.path(),
        2,
        Box::new(|_| Some(Ok(Reply::Write(WriteResult::Put { revision: 1 })))),
    );
    let (follower_addr, follower_seen) = fake_node(
        dir.path(),
        1,
        Box::new(move |_| {
            Some(Err(ServerError::NotLeader {
                leader: Some(2),
                leader_addr: Some(leader_addr),
            }))
        }),
    );
    // The client knows only the follower; it learns the leader's address from the redirect.
    let client = client(
        dir.path(),
        vec![(1, follower_addr)],
        Duration::from_secs(10),
    );
    assert_eq!(client.put("k", "v").await.unwrap(), 1);
    assert_eq!(client.leader_hint(), Some(2));
    assert_eq!(client.known_members().get(&2), Some(&leader_addr));
    client.put("k", "w").await.unwrap();
    assert_eq!(follower_seen.lock().unwrap().len(), 1, "asked once");
    let leader_seen = leader_seen.lock().unwrap();
    assert_eq!(
        leader_seen.len(),
        2,
        "the second write goes straight to the leader"
    );
    assert_eq!(
        session_of(&leader_seen[0]),
        session_of(&follower_seen.lock().unwrap()[0]),
        "the redirected write keeps its session"
    );
}

#[tokio::test]
async fn a_refusal_is_returned_at_once_and_not_retried() {
    let dir = certs();
    let (addr, seen) = fake_node(
        dir.path(),
        1,
        Box::new(|_| {
            Some(Err(ServerError::KeyTooLarge {
                size: 100,
                limit: 64,
            }))
        }),
    );
    let client = client(dir.path(), vec![(1, addr)], Duration::from_secs(10));
    let error = client.put("k".repeat(100), "v").await.unwrap_err();
    assert!(
        matches!(
            error.server_error(),
            Some(ServerError::KeyTooLarge { limit: 64, .. })
        ),
        "{error}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_cluster_that_never_answers_fails_within_the_deadline_with_advice() {
    let dir = certs();
    // Addresses where nothing listens.
    let dead: Vec<(u64, SocketAddr)> = (1..=2)
        .map(|id| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            (id, socket.local_addr().unwrap())
        })
        .collect();
    let client = client(dir.path(), dead, Duration::from_millis(1500));
    // The client gives up on its own (the outer bound only keeps a broken client from hanging
    // the test run).
    let error = tokio::time::timeout(Duration::from_secs(20), client.put("k", "v"))
        .await
        .expect("the client gives up by its deadline")
        .unwrap_err();
    assert!(matches!(error, ClientError::Unavailable { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("is the cluster running? try `quorate cluster status`"),
        "{text}"
    );
    assert!(text.contains("1=127.0.0.1:"), "names the endpoints: {text}");
}

#[tokio::test]
async fn a_sequential_read_carries_the_sessions_revision_and_moves_on_from_a_member_behind_it() {
    let dir = certs();
    let wanted = |request: &Request| match request {
        Request::Read {
            consistency: Consistency::Sequential { min_revision },
            ..
        } => Some(*min_revision),
        _ => None,
    };
    // Node 1 leads and has applied only revision 7 when asked to read; node 2 is behind too at
    // first, then has applied 9: whichever the client asks first, it must move on.
    let (addr1, seen1) = fake_node(
        dir.path(),
        1,
        Box::new(move |request| match request {
            Request::Write { .. } => Some(Ok(Reply::Write(WriteResult::Put { revision: 8 }))),
            _ => Some(Err(ServerError::Behind {
                applied: 7,
                wanted: wanted(request).unwrap_or(0),
            })),
        }),
    );
    let mut caught_up = false;
    let (addr2, seen2) = fake_node(
        dir.path(),
        2,
        Box::new(move |request| match request {
            Request::Write { .. } => Some(Err(ServerError::NotLeader {
                leader: Some(1),
                leader_addr: None,
            })),
            _ if !caught_up => {
                caught_up = true;
                Some(Err(ServerError::Behind {
                    applied: 5,
                    wanted: wanted(request).unwrap_or(0),
                }))
            }
            _ => Some(Ok(Reply::Get {
                revision: 9,
                kv: None,
            })),
        }),
    );
    let client = client(
        dir.path(),
        vec![(1, addr1), (2, addr2)],
        Duration::from_secs(5),
    );
    assert_eq!(client.put("k", "v").await.unwrap(), 8);
    assert_eq!(client.revision_seen(), 8);
    let (revision, kv) = client
        .get_with_revision("k", Consistency::SEQUENTIAL)
        .await
        .expect("node 2 serves it");
    assert_eq!((revision, kv), (9, None));
    assert_eq!(
        client.revision_seen(),
        9,
        "a read's revision joins the session"
    );
    let reads: Vec<Option<u64>> = seen1
        .lock()
        .unwrap()
        .iter()
        .chain(seen2.lock().unwrap().iter())
        .filter(|r| matches!(r, Request::Read { .. }))
        .map(wanted)
        .collect();
    assert!(
        reads.len() >= 3,
        "asked both members, node 2 twice: {reads:?}"
    );
    assert!(reads.iter().all(|&w| w == Some(8)), "{reads:?}");
}

/// Shards [.., "g") and ["g", ..) (groups 1 and 2, epoch 1), node 1 leading both.
fn two_shards() -> ShardMap {
    let mut map = ShardMap::from_split_keys(&[bytes::Bytes::from_static(b"g")]).unwrap();
    for shard in &mut map.shards {
        shard.leader = Some(1);
    }
    map
}

/// Group 1 split at "c" (into 1 and 3, epoch 2): the map after it.
fn after_split(map: &ShardMap) -> ShardMap {
    let mut next = map.clone();
    let plan = next.plan_split(b"c").unwrap();
    next.apply_split(&plan).unwrap();
    for shard in &mut next.shards {
        shard.leader = Some(1);
    }
    next
}

/// What a sharded fake node saw: key writes (plain or routed, with the epoch they were routed
/// at) and map fetches.
fn writes_and_fetches(seen: &[Request]) -> (Vec<Option<u64>>, usize) {
    let writes = seen
        .iter()
        .filter_map(|request| match request {
            Request::Write { .. } => Some(None),
            Request::Routed { epoch, .. } => Some(Some(*epoch)),
            _ => None,
        })
        .collect();
    let fetches = seen
        .iter()
        .filter(|r| matches!(r, Request::Admin(AdminRequest::Shards)))
        .count();
    (writes, fetches)
}

#[tokio::test]
async fn a_wrong_shard_whose_refetched_map_is_never_newer_is_retried_after_each_of_eight_backoffs_then_returned(
) {
    let dir = certs();
    let map = two_shards();
    let answered = map.clone();
    // Group 1 moved past the map's epoch (a split the meta group's map does not show yet), and
    // never catches up.
    let (addr, seen) = fake_node(
        dir.path(),
        1,
        Box::new(move |request| match request {
            Request::Admin(AdminRequest::Shards) => Some(Ok(Reply::Shards(answered.clone()))),
            _ => Some(Err(ServerError::WrongShard { group: 1, epoch: 2 })),
        }),
    );
    let client = client(dir.path(), vec![(1, addr)], Duration::from_secs(20));
    let error = client.put("a", "v").await.unwrap_err();
    assert!(
        matches!(
            error.server_error(),
            Some(ServerError::WrongShard { group: 1, epoch: 2 })
        ),
        "{error}"
    );
    let (writes, fetches) = writes_and_fetches(&seen.lock().unwrap());
    // Plain first (the client knows no map), then routed with the fetched map (newer than
    // none), then once after each of the 8 back-offs; each back-off refetches before and after.
    let mut expected = vec![None];
    expected.extend(std::iter::repeat_n(Some(1), 9));
    assert_eq!(writes, expected);
    assert_eq!(fetches, 1 + 8 * 2 + 1);
}

#[tokio::test]
async fn a_wrong_shard_is_retried_until_the_refetched_map_moves_on_and_then_routed_by_it() {
    let dir = certs();
    let map = two_shards();
    let split = after_split(&map);
    let mut fetches = 0;
    // The meta group's map shows the split only from the 4th fetch on.
    let (addr, seen) = fake_node(
        dir.path(),
        1,
        Box::new(move |request| match request {
            Request::Admin(AdminRequest::Shards) => {
                fetches += 1;
                let answer = if fetches >= 4 { &split } else { &map };
                Some(Ok(Reply::Shards(answer.clone())))
            }
            Request::Routed { epoch: 2, .. } => {
                Some(Ok(Reply::Write(WriteResult::Put { revision: 5 })))
            }
            _ => Some(Err(ServerError::WrongShard { group: 1, epoch: 2 })),
        }),
    );
    let client = client(dir.path(), vec![(1, addr)], Duration::from_secs(20));
    assert_eq!(client.put("a", "v").await.unwrap(), 5);
    let (writes, fetches) = writes_and_fetches(&seen.lock().unwrap());
    // Plain, at epoch 1 (first map), at epoch 1 after a back-off (fetches 2 and 3 not newer),
    // then at epoch 2 with the map of fetch 4.
    assert_eq!(writes, vec![None, Some(1), Some(1), Some(2)]);
    assert_eq!(fetches, 4);
}

#[tokio::test]
async fn a_cross_shard_transactions_answer_sets_the_sessions_revision_of_every_participant() {
    let dir = certs();
    let map = two_shards();
    // The coordinating member answers with the coordinator shard's revision (group 1: 7) and
    // every participant's (group 2: its lock revision 9). Reads answer at a revision of 1 so
    // they raise nothing themselves.
    let (addr, seen) = fake_node(
        dir.path(),
        1,
        Box::new(move |request| match request {
            Request::Admin(AdminRequest::Shards) => Some(Ok(Reply::Shards(map.clone()))),
            Request::Write { .. } => Some(Ok(Reply::Write(WriteResult::CrossShardTxn {
                succeeded: true,
                revision: 7,
                results: vec![TxnOpResult::Put, TxnOpResult::Put],
                shard_revisions: vec![(1, 7), (2, 9)],
            }))),
            Request::Routed { .. } => Some(Ok(Reply::Get {
                revision: 1,
                kv: None,
            })),
            _ => None,
        }),
    );
    let client = client(dir.path(), vec![(1, addr)], Duration::from_secs(5));
    let put = |key: &'static str| TxnOp::Put {
        key: bytes::Bytes::from_static(key.as_bytes()),
        value: bytes::Bytes::from_static(b"1"),
    };
    let outcome = client
        .txn(Vec::new(), vec![put("a"), put("x")], Vec::new())
        .await
        .unwrap();
    assert_eq!((outcome.succeeded, outcome.revision), (true, 7));
    for key in ["b", "y", "c"] {
        client
            .get_with_revision(key, Consistency::SEQUENTIAL)
            .await
            .unwrap();
    }
    let asked: Vec<(u64, u64)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|request| match request {
            Request::Routed { group, request, .. } => match &**request {
                Request::Read {
                    consistency: Consistency::Sequential { min_revision },
                    op: ReadOp::Get { .. },
                    ..
                } => Some((*group, *min_revision)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    // Each group's read asks for that group's revision of the answer.
    assert_eq!(asked, vec![(1, 7), (2, 9), (1, 7)]);
}
