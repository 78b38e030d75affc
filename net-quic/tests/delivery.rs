//! Delivery on loopback: ordering, reconnection, bulk beside consensus traffic, requests, shutdown.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use net_quic::{
    Class, Client, ClientConfig, Credentials, Endpoint, Identity, Limits, NodeId, RequestError,
    SendError,
};

#[tokio::test]
async fn three_endpoints_exchange_messages_in_every_direction_in_stream_order() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2, 3], &[]);
    let nodes = mesh(dir.path(), 3);
    const PER_PEER: u64 = 300;
    let (endpoints, receivers): (Vec<_>, Vec<_>) = nodes.into_iter().unzip();
    for from in &endpoints {
        for to in &endpoints {
            if from.id() != to.id() {
                for n in 0..PER_PEER {
                    from.send(to.id(), &Msg::Seq { n }).unwrap();
                }
            }
        }
    }
    for (me, mut rx) in endpoints.iter().zip(receivers) {
        let mut next: HashMap<NodeId, u64> = HashMap::new();
        bounded("all messages arrive", async {
            while next.values().sum::<u64>() < 2 * PER_PEER {
                let m = rx.peer.recv().await.unwrap();
                assert_ne!(m.from, me.id(), "no message from ourselves");
                assert_eq!(m.class, Class::Consensus);
                let expected = next.entry(m.from).or_insert(0);
                assert_eq!(m.msg, Msg::Seq { n: *expected }, "order from {}", m.from);
                *expected += 1;
            }
        })
        .await;
        assert_eq!(next.len(), 2, "node {} heard from both others", me.id());
    }
    let stats = endpoints[0].stats();
    assert_eq!(stats.frames_sent, 2 * PER_PEER);
    assert_eq!(stats.frames_received, 2 * PER_PEER);
    assert_eq!(stats.dropped_queue_full, 0);
    assert_eq!(stats.decode_errors, 0);
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected_and_delivery_resumes() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    let mut nodes = mesh(dir.path(), 2);
    let (node2, mut rx2) = nodes.pop().unwrap();
    let (node1, _rx1) = nodes.pop().unwrap();
    let addr2 = node2.local_addr().unwrap();

    node1.send(NodeId(2), &Msg::Seq { n: 0 }).unwrap();
    let first = bounded("first message", rx2.peer.recv()).await.unwrap();
    assert_eq!(first.msg, Msg::Seq { n: 0 });

    // Node 2 goes away (without a goodbye) and comes back on the same address.
    drop(rx2);
    drop(node2);
    // The old socket is released once its connections have drained.
    let (node2, mut rx2) = bounded("rebind", async {
        loop {
            let creds = Credentials::load_node(dir.path(), NodeId(2)).unwrap();
            match Endpoint::<Test>::bind(node_config(creds, addr2)) {
                Ok(bound) => break bound,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;

    // Node 1 keeps sending; some messages are lost while it notices, then delivery resumes.
    let resumed = bounded("delivery resumes", async {
        let mut n = 1;
        loop {
            let _ = node1.send(NodeId(2), &Msg::Seq { n });
            n += 1;
            if let Some(m) = recv_within(&mut rx2, Duration::from_millis(20)).await {
                break m;
            }
        }
    })
    .await;
    assert_eq!(resumed.from, NodeId(1));
    assert!(node1.stats().reconnects >= 1, "{:?}", node1.stats());
    // In order from here on.
    let Msg::Seq { n: start } = resumed.msg else {
        panic!("unexpected {resumed:?}")
    };
    for n in 0..50 {
        node1
            .send(NodeId(2), &Msg::Seq { n: 1_000_000 + n })
            .unwrap();
    }
    bounded("ordered after reconnect", async {
        let mut last = start;
        loop {
            let m = rx2.peer.recv().await.unwrap();
            let Msg::Seq { n } = m.msg else { panic!() };
            assert!(n > last, "{n} after {last}");
            last = n;
            if n == 1_000_049 {
                break;
            }
        }
    })
    .await;
    drop(node2);
}

/// A peer that crashes (no goodbye: its runtime stops) and comes back at another address is
/// reached as soon as it is given the new address, not when the old connection times out.
#[tokio::test]
async fn a_peer_that_crashed_and_moved_is_reached_at_its_new_address_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    // Far beyond the test's bound: the old connection must not be what ends the wait.
    let limits = Limits {
        idle_timeout: Duration::from_secs(120),
        ..fast_limits()
    };
    let (node1, _rx1) = bind_node_with(dir.path(), 1, limits.clone());
    // Node 2's first life runs on a runtime of its own, so it can stop without closing anything.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (old2, mut old_rx2) = {
        let _in_doomed = doomed.enter();
        bind_node_with(dir.path(), 2, limits.clone())
    };
    node1.set_peer_addr(NodeId(2), old2.local_addr().unwrap());
    node1.send(NodeId(2), &Msg::Seq { n: 0 }).unwrap();
    bounded("first message", old_rx2.peer.recv()).await.unwrap();
    // Being told the address it already uses changes nothing.
    node1.set_peer_addr(NodeId(2), old2.local_addr().unwrap());
    assert!(node1.peer_connected(NodeId(2)));

    // The crash: every task of the old node stops at once; no close reaches node 1.
    doomed.shutdown_background();
    drop(old_rx2);
    let (node2, mut rx2) = bind_node_with(dir.path(), 2, limits);
    node1.set_peer_addr(NodeId(2), node2.local_addr().unwrap());

    let resumed = bounded("delivery to the new address", async {
        let mut n = 1;
        loop {
            let _ = node1.send(NodeId(2), &Msg::Seq { n });
            n += 1;
            if let Some(m) = recv_within(&mut rx2, Duration::from_millis(20)).await {
                break m;
            }
        }
    })
    .await;
    assert_eq!(resumed.from, NodeId(1));
    assert!(node1.stats().reconnects >= 1, "{:?}", node1.stats());
    // Dropped only now: with its tasks gone it closes nothing, and its socket stayed a black hole.
    drop(old2);
}

/// A peer that crashes and restarts at the same address: when it connects in, the connection to
/// its old incarnation is found stale (stateless reset) before anything is sent on it, so the first
/// message after the restart is not lost to find out.
#[tokio::test]
async fn a_restarted_peer_that_connects_in_gets_the_first_message_sent_after() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    // Nothing else on the old connection that could run into the new incarnation: no keep-alive
    // or idle timeout within the test's bound, no MTU probes.
    let limits = Limits {
        keep_alive: Duration::from_secs(100),
        idle_timeout: Duration::from_secs(120),
        max_udp_payload: 1200,
        ..fast_limits()
    };
    let (node1, mut rx1) = bind_node_with(dir.path(), 1, limits.clone());
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (old2, mut old_rx2) = {
        let _in_doomed = doomed.enter();
        bind_node_with(dir.path(), 2, limits.clone())
    };
    let addr2 = old2.local_addr().unwrap();
    node1.set_peer_addr(NodeId(2), addr2);
    node1.send(NodeId(2), &Msg::Seq { n: 0 }).unwrap();
    bounded("first message", old_rx2.peer.recv()).await.unwrap();
    assert!(node1.peer_connected(NodeId(2)));
    // Let the acknowledgements settle, so node 1 has nothing left to resend.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The crash: the old node's tasks stop (and only then is it dropped, so nothing says goodbye).
    drop(old_rx2);
    bounded(
        "old runtime stops",
        tokio::task::spawn_blocking(move || doomed.shutdown_timeout(Duration::from_secs(5))),
    )
    .await
    .unwrap();
    drop(old2);
    let (node2, mut rx2) = bounded("rebind", async {
        loop {
            let creds = Credentials::load_node(dir.path(), NodeId(2)).unwrap();
            let mut config = node_config(creds, addr2);
            config.limits = limits.clone();
            match Endpoint::<Test>::bind(config) {
                Ok(bound) => break bound,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    node2.set_peer_addr(NodeId(1), node1.local_addr().unwrap());

    // The new incarnation speaks first; node 1 finds its own connection stale without using it.
    node2.send(NodeId(1), &Msg::Seq { n: 100 }).unwrap();
    bounded("node 2's message", rx1.peer.recv()).await.unwrap();
    bounded("stale connection noticed", async {
        while node1.peer_connected(NodeId(2)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    node1.send(NodeId(2), &Msg::Seq { n: 1 }).unwrap();
    let first = bounded("first message after the restart", rx2.peer.recv())
        .await
        .unwrap();
    assert_eq!(first.msg, Msg::Seq { n: 1 });
    assert_eq!(node1.stats().reconnects, 1, "{:?}", node1.stats());
}

#[tokio::test]
async fn small_messages_keep_flowing_during_a_large_bulk_transfer() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    let mut nodes = mesh(dir.path(), 2);
    let (_node2, mut rx2) = nodes.pop().unwrap();
    let (node1, _rx1) = nodes.pop().unwrap();
    const CHUNKS: u32 = 48; // 48 MiB in 1 MiB chunks
    let chunk = vec![0xa5u8; 1 << 20];

    // Connect first so the measurement is about streams, not the handshake.
    node1.send(NodeId(2), &Msg::Heartbeat { n: 0 }).unwrap();
    bounded("warm-up", rx2.peer.recv()).await.unwrap();

    let bulk_sender = {
        let node1 = node1.clone();
        tokio::spawn(async move {
            for index in 0..CHUNKS {
                let msg = Msg::Chunk {
                    index,
                    data: chunk.clone(),
                };
                node1.send_bulk(NodeId(2), &msg).await.unwrap();
            }
        })
    };
    // Heartbeats carry their send time (microseconds since `base`, same process).
    let base = Instant::now();
    let heartbeats = {
        let node1 = node1.clone();
        tokio::spawn(async move {
            loop {
                let n = base.elapsed().as_micros() as u64;
                let _ = node1.send(NodeId(2), &Msg::Heartbeat { n });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let mut first_chunk_at = None;
    let mut latencies = Vec::new();
    bounded("bulk transfer completes", async {
        let mut next_chunk = 0;
        while next_chunk < CHUNKS {
            let m = rx2.peer.recv().await.unwrap();
            match m.msg {
                Msg::Chunk { index, data } => {
                    assert_eq!(m.class, Class::Bulk);
                    assert_eq!(index, next_chunk, "bulk order");
                    assert_eq!(data.len(), 1 << 20);
                    first_chunk_at.get_or_insert_with(Instant::now);
                    next_chunk += 1;
                }
                Msg::Heartbeat { n } => {
                    assert_eq!(m.class, Class::Consensus);
                    if first_chunk_at.is_some() {
                        latencies.push(base.elapsed() - Duration::from_micros(n));
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    let transfer = first_chunk_at.unwrap().elapsed();
    heartbeats.abort();
    bounded("bulk sender", bulk_sender).await.unwrap();
    latencies.sort();
    let median = latencies.get(latencies.len() / 2).copied();
    eprintln!(
        "48 MiB bulk in {transfer:?}; {} heartbeats meanwhile, median latency {median:?}, max {:?}",
        latencies.len(),
        latencies.last()
    );
    // Heartbeats kept arriving while the chunks did...
    assert!(
        latencies.len() >= 5,
        "only {} heartbeats arrived during a {transfer:?} transfer",
        latencies.len()
    );
    // ...and did not wait behind the queued bulk data (on one shared stream a heartbeat would wait
    // for the whole bulk queue ahead of it: a sizeable fraction of the transfer time). Relative to
    // the transfer time, so a slow machine slows both sides of the comparison alike.
    let median = median.unwrap();
    assert!(
        median < transfer / 8,
        "median heartbeat latency {median:?} during a {transfer:?} bulk transfer"
    );
}

#[tokio::test]
async fn a_full_consensus_queue_drops_the_newest_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    let creds = Credentials::load_node(dir.path(), NodeId(1)).unwrap();
    let mut config = node_config(creds, loopback());
    config.limits.consensus_queue = 8;
    // Nobody listens there: the queue cannot drain.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    config.peers.insert(NodeId(2), silent.local_addr().unwrap());
    let (node1, _rx) = Endpoint::<Test>::bind(config).unwrap();
    let mut refused = 0;
    let started = Instant::now();
    for n in 0..100 {
        match node1.send(NodeId(2), &Msg::Seq { n }) {
            Ok(()) => {}
            Err(SendError::QueueFull(NodeId(2))) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "send never blocks"
    );
    // At most the queue plus one batch in the writer's hands were accepted.
    assert!(refused >= 100 - 8 - 1, "refused {refused}");
    assert_eq!(node1.stats().dropped_queue_full, refused);
    assert!(matches!(
        node1.send(NodeId(9), &Msg::Seq { n: 0 }),
        Err(SendError::UnknownPeer(NodeId(9)))
    ));
    assert!(matches!(
        node1.send(NodeId(1), &Msg::Seq { n: 0 }),
        Err(SendError::ToSelf(NodeId(1)))
    ));
    // Shutdown reports what never left, within its grace period.
    let report = bounded("shutdown", node1.shutdown(Duration::from_millis(300))).await;
    assert!(report.undelivered_frames >= 8, "{report:?}");
    assert_eq!(report.peers_not_drained, vec![NodeId(2)]);
}

#[tokio::test]
async fn shutdown_drains_queued_messages_before_closing() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    let mut nodes = mesh(dir.path(), 2);
    let (_node2, mut rx2) = nodes.pop().unwrap();
    let (node1, _rx1) = nodes.pop().unwrap();
    for n in 0..2000 {
        node1.send(NodeId(2), &Msg::Seq { n }).unwrap();
    }
    let report = bounded("shutdown", node1.shutdown(Duration::from_secs(10))).await;
    assert_eq!(report.undelivered_frames, 0, "{report:?}");
    assert!(report.peers_not_drained.is_empty(), "{report:?}");
    assert_eq!(report.stats.frames_sent, 2000);
    for n in 0..2000 {
        let m = bounded("drained message", rx2.peer.recv()).await.unwrap();
        assert_eq!(m.msg, Msg::Seq { n });
    }
    assert!(matches!(
        node1.send(NodeId(2), &Msg::Seq { n: 0 }),
        Err(SendError::ShuttingDown)
    ));
}

fn client(dir: &std::path::Path, name: &str, node: &Endpoint<Test>) -> Client<Test> {
    Client::new(ClientConfig {
        cluster: CLUSTER.into(),
        bind: loopback(),
        credentials: Credentials::load_client(dir, name).unwrap(),
        nodes: HashMap::from([(node.id(), node.local_addr().unwrap())]),
        limits: fast_limits(),
    })
    .unwrap()
}

#[tokio::test]
async fn clients_get_replies_and_are_known_by_their_certificate() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["alice"]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    // The application side: reply with who asked; ignore "hold", drop "drop".
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(req) = rx1.requests.recv().await {
            match req.request.as_str() {
                "hold" => held.push(req.responder),
                "drop" => drop(req.responder),
                _ => {
                    let Identity::Client(name) = &req.client else {
                        panic!("{:?}", req.client)
                    };
                    let reply = format!("{} from {name}", req.request);
                    req.responder.reply(&reply).unwrap();
                }
            }
        }
    });
    let alice = client(dir.path(), "alice", &node1);
    assert_eq!(alice.identity(), &Identity::Client("alice".into()));
    for i in 0..20 {
        let reply = alice
            .request(NodeId(1), &format!("get k{i}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reply, format!("get k{i} from alice"));
    }
    let err = alice
        .request(NodeId(1), &"hold".to_string(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout(_)), "{err}");
    let err = alice
        .request(NodeId(1), &"drop".to_string(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::NoReply), "{err}");
    let err = alice
        .request(NodeId(7), &"x".to_string(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::UnknownNode(NodeId(7))), "{err}");
    // The connection survives the failed requests.
    let reply = alice
        .request(NodeId(1), &"again".to_string(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply, "again from alice");
    alice.close().await;
    node1.shutdown(Duration::from_secs(1)).await;
    server.abort();
}

#[tokio::test]
async fn a_full_bulk_queue_makes_the_sender_wait_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    let creds = Credentials::load_node(dir.path(), NodeId(1)).unwrap();
    let mut config = node_config(creds, loopback());
    config.limits.bulk_queue = 2;
    // Nobody listens there: the bulk queue cannot drain.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    config.peers.insert(NodeId(2), silent.local_addr().unwrap());
    let (node1, _rx) = Endpoint::<Test>::bind(config).unwrap();
    let chunk = Msg::Chunk {
        index: 0,
        data: vec![7; 1024],
    };
    let mut accepted = 0;
    let mut blocked = false;
    for _ in 0..6 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            node1.send_bulk(NodeId(2), &chunk),
        )
        .await
        {
            Ok(result) => {
                result.unwrap();
                accepted += 1;
            }
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    // The queue (2) plus the batch the writer took out of it before it began to connect (on this
    // single-threaded runtime, at most one queue-full).
    assert!(blocked, "send_bulk never waited; {accepted} accepted");
    assert!(accepted <= 4, "{accepted} accepted into a queue of 2");
    assert_eq!(node1.stats().dropped_queue_full, 0, "bulk never drops");
    let report = bounded("shutdown", node1.shutdown(Duration::from_millis(200))).await;
    assert!(report.undelivered_frames >= 2, "{report:?}");
}

#[tokio::test]
async fn keep_alives_hold_an_idle_connection_open_past_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    let limits = net_quic::Limits {
        keep_alive: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..fast_limits()
    };
    let (node1, _rx1) = bind_node_with(dir.path(), 1, limits.clone());
    let (node2, mut rx2) = bind_node_with(dir.path(), 2, limits);
    node1.set_peer_addr(NodeId(2), node2.local_addr().unwrap());
    node1.send(NodeId(2), &Msg::Seq { n: 0 }).unwrap();
    bounded("first message", rx2.peer.recv()).await.unwrap();
    // Three idle timeouts without a message.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    node1.send(NodeId(2), &Msg::Seq { n: 1 }).unwrap();
    let m = bounded("message after idling", rx2.peer.recv())
        .await
        .unwrap();
    assert_eq!(m.msg, Msg::Seq { n: 1 });
    let stats = node1.stats();
    assert_eq!(
        stats.reconnects, 0,
        "the idle connection was lost: {stats:?}"
    );
    assert_eq!(stats.connect_failures, 0, "{stats:?}");
}

#[tokio::test]
async fn failed_connection_attempts_back_off() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    write_certs(ours.path(), &[1], &[]);
    write_certs(theirs.path(), &[2], &[]);
    // Node 2 answers, but with a certificate from another CA: every handshake fails at once.
    let (rogue, _rogue_rx) = bind_node(theirs.path(), 2);
    let limits = net_quic::Limits {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..fast_limits()
    };
    let (node1, _rx1) = bind_node_with(ours.path(), 1, limits);
    node1.set_peer_addr(NodeId(2), rogue.local_addr().unwrap());
    let window = Duration::from_millis(1500);
    let started = Instant::now();
    while started.elapsed() < window {
        // Keep work queued so the writer keeps trying (drops once full are fine).
        let _ = node1.send(NodeId(2), &Msg::Seq { n: 0 });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failures = node1.stats().connect_failures;
    // Delays 20, 40, 80, 160, then 200 ms (capped): about 10 attempts in 1.5 s. Without backoff a
    // failing loopback handshake is retried hundreds of times in that window.
    assert!(
        (3..=20).contains(&failures),
        "{failures} failed attempts in {window:?}"
    );
    assert_eq!(node1.stats().frames_sent, 0);
    drop(rogue);
}

#[tokio::test]
async fn certificates_added_later_to_a_folder_share_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &[]);
    let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
    // A second run adds node 3 and keeps the CA on disk.
    write_certs(dir.path(), &[3], &["late"]);
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
    let (node1, _rx1) = bind_node(dir.path(), 1);
    let (node3, mut rx3) = bind_node(dir.path(), 3);
    node1.set_peer_addr(NodeId(3), node3.local_addr().unwrap());
    node1.send(NodeId(3), &Msg::Seq { n: 1 }).unwrap();
    let m = bounded("message to the later node", rx3.peer.recv())
        .await
        .unwrap();
    assert_eq!((m.from, m.msg), (NodeId(1), Msg::Seq { n: 1 }));
    let late = client(dir.path(), "late", &node1);
    assert_eq!(late.identity(), &Identity::Client("late".into()));
}

#[tokio::test]
async fn send_wait_waits_for_room_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    let limits = net_quic::Limits {
        consensus_queue: 4,
        ..fast_limits()
    };
    let (node1, _rx1) = bind_node_with(dir.path(), 1, limits);
    let (node2, mut rx2) = bind_node(dir.path(), 2);
    node1.set_peer_addr(NodeId(2), node2.local_addr().unwrap());
    const COUNT: u64 = 500;
    let sender = {
        let node1 = node1.clone();
        tokio::spawn(async move {
            for n in 0..COUNT {
                node1.send_wait(NodeId(2), &Msg::Seq { n }).await.unwrap();
            }
        })
    };
    for n in 0..COUNT {
        let m = bounded("waited message", rx2.peer.recv()).await.unwrap();
        assert_eq!((m.class, m.msg), (Class::Consensus, Msg::Seq { n }));
    }
    bounded("sender", sender).await.unwrap();
    assert_eq!(node1.stats().dropped_queue_full, 0);
}
