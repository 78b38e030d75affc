//! Client requests pipelined on one stream: matching replies by id, late replies, dropped
//! responders, connection loss, back-pressure and shutdown.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use net_quic::{
    Client, ClientConfig, ClientRequest, Credentials, Endpoint, Limits, NodeId, ReplyError,
    RequestError,
};
use tokio::sync::mpsc;

fn client_with(dir: &std::path::Path, node: &Endpoint<Test>, limits: Limits) -> Arc<Client<Test>> {
    Arc::new(
        Client::new(ClientConfig {
            cluster: CLUSTER.into(),
            bind: loopback(),
            credentials: Credentials::load_client(dir, "alice").unwrap(),
            nodes: HashMap::from([(node.id(), node.local_addr().unwrap())]),
            limits,
        })
        .unwrap(),
    )
}

/// Starts `n` requests at once; their results come back on the channel as `(request, result)`.
fn spawn_requests(
    client: &Arc<Client<Test>>,
    requests: impl IntoIterator<Item = String>,
    timeout: Duration,
) -> mpsc::UnboundedReceiver<(String, Result<String, RequestError>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for request in requests {
        let client = client.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = client.request(NodeId(1), &request, timeout).await;
            let _ = tx.send((request, result));
        });
    }
    rx
}

async fn take_requests(
    rx: &mut mpsc::Receiver<ClientRequest<Test>>,
    n: usize,
) -> Vec<ClientRequest<Test>> {
    let mut taken = Vec::new();
    for _ in 0..n {
        taken.push(bounded("request", rx.recv()).await.unwrap());
    }
    taken
}

fn answer(request: ClientRequest<Test>) {
    let reply = format!("re: {}", request.request);
    request.responder.reply(&reply).unwrap();
}

#[tokio::test]
async fn concurrent_requests_get_their_own_replies_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["alice"]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    let alice = client_with(dir.path(), &node1, fast_limits());
    const N: usize = 300;
    let mut results = spawn_requests(&alice, (0..N).map(|i| format!("q{i}")), TEST_TIMEOUT);
    // Hold them all, then answer in an order unrelated to arrival: odd ones backwards, then even.
    let held = take_requests(&mut rx1.requests, N).await;
    let (odd, even): (Vec<_>, Vec<_>) = held.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
    for (_, request) in odd.into_iter().rev().chain(even) {
        answer(request);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..N {
        let (request, result) = bounded("reply", results.recv()).await.unwrap();
        assert_eq!(result.unwrap(), format!("re: {request}"));
        assert!(seen.insert(request));
    }
    let (client, node) = (alice.stats(), node1.stats());
    assert_eq!(
        (client.frames_sent, client.frames_received),
        (N as u64, N as u64)
    );
    assert_eq!(
        (node.frames_received, node.frames_sent),
        (N as u64, N as u64)
    );
    assert_eq!(client.bytes_sent, node.bytes_received);
    assert_eq!(node.bytes_sent, client.bytes_received);
    assert_eq!(client.late_replies, 0);
}

#[tokio::test]
async fn a_late_reply_is_discarded_and_does_not_answer_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["alice"]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    let alice = client_with(dir.path(), &node1, fast_limits());
    let slow = {
        let alice = alice.clone();
        tokio::spawn(async move {
            alice
                .request(NodeId(1), &"slow".into(), Duration::from_millis(100))
                .await
        })
    };
    let held = bounded("slow request", rx1.requests.recv()).await.unwrap();
    let err = bounded("slow times out", slow).await.unwrap().unwrap_err();
    assert!(matches!(err, RequestError::Timeout(_)), "{err}");
    // The next request is in flight when the late reply comes.
    let mut next = spawn_requests(&alice, ["next".to_string()], TEST_TIMEOUT);
    let next_request = bounded("next request", rx1.requests.recv()).await.unwrap();
    answer(held);
    bounded("late reply counted", async {
        while alice.stats().late_replies < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    answer(next_request);
    let (_, result) = bounded("next reply", next.recv()).await.unwrap();
    assert_eq!(result.unwrap(), "re: next");
    assert_eq!(alice.stats().late_replies, 1);
}

#[tokio::test]
async fn a_dropped_responder_fails_its_caller_at_once_and_only_it() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["alice"]);
    let limits = Limits {
        max_frame_len: 1024,
        ..fast_limits()
    };
    let (node1, mut rx1) = bind_node_with(dir.path(), 1, limits.clone());
    let alice = client_with(dir.path(), &node1, limits);
    let requests = ["a", "drop", "b", "too big", "c"].map(String::from);
    // A timeout far beyond the test's own bound: a caller that waited for it would fail the test.
    let mut results = spawn_requests(&alice, requests.clone(), Duration::from_secs(3600));
    for request in take_requests(&mut rx1.requests, requests.len()).await {
        match request.request.as_str() {
            "drop" => drop(request.responder),
            "too big" => {
                let err = request.responder.reply(&"x".repeat(2000)).unwrap_err();
                assert!(matches!(err, ReplyError::Frame(_)), "{err}");
            }
            _ => answer(request),
        }
    }
    for _ in 0..requests.len() {
        let (request, result) = bounded("outcome", results.recv()).await.unwrap();
        match request.as_str() {
            "drop" | "too big" => {
                let err = result.unwrap_err();
                assert!(matches!(err, RequestError::NoReply), "{request}: {err}");
            }
            _ => assert_eq!(result.unwrap(), format!("re: {request}")),
        }
    }
    // The application going away answers "no reply" too.
    let mut last = spawn_requests(&alice, ["orphan".to_string()], Duration::from_secs(3600));
    drop(rx1);
    let (_, result) = bounded("orphan", last.recv()).await.unwrap();
    assert!(matches!(result, Err(RequestError::NoReply)), "{result:?}");
}

#[tokio::test]
async fn connection_loss_fails_every_waiting_request_and_the_next_request_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["alice"]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    let addr = node1.local_addr().unwrap();
    let alice = client_with(dir.path(), &node1, fast_limits());
    const N: usize = 50;
    let mut results = spawn_requests(
        &alice,
        (0..N).map(|i| format!("q{i}")),
        Duration::from_secs(3600),
    );
    let held = take_requests(&mut rx1.requests, N).await;
    let report = bounded("shutdown", node1.shutdown(Duration::from_millis(100))).await;
    assert_eq!(report.requests_unanswered, N, "{report:?}");
    for _ in 0..N {
        let (request, result) = bounded("failure", results.recv()).await.unwrap();
        let err = result.unwrap_err();
        assert!(
            matches!(err, RequestError::Connection(_)),
            "{request}: {err}"
        );
    }
    // A reply after the connection is gone cannot be delivered.
    let late = held.into_iter().next().unwrap();
    assert!(matches!(
        late.responder.reply(&"late".into()),
        Err(ReplyError::ClientGone)
    ));

    // The node comes back at the same address: the next request connects again.
    drop(node1);
    // The old socket is released once its connections have drained.
    let (node1b, mut rx1b) = bounded("rebind", async {
        loop {
            let creds = Credentials::load_node(dir.path(), NodeId(1)).unwrap();
            match Endpoint::<Test>::bind(node_config(creds, addr)) {
                Ok(bound) => break bound,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    let server = tokio::spawn(async move {
        while let Some(request) = rx1b.requests.recv().await {
            answer(request);
        }
    });
    let reply = bounded(
        "after reconnect",
        alice.request(NodeId(1), &"again".into(), Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(reply, "re: again");
    node1b.shutdown(Duration::from_millis(100)).await;
    server.abort();
}

#[tokio::test]
async fn requests_in_flight_are_bounded_per_connection_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["alice"]);
    // The node accepts 4 unanswered requests per connection; this client would send 1024.
    let node_limits = Limits {
        client_requests_in_flight: 4,
        ..fast_limits()
    };
    let (node1, mut rx1) = bind_node_with(dir.path(), 1, node_limits);
    let alice = client_with(dir.path(), &node1, fast_limits());
    // And this client sends at most 3 at once.
    let bob = client_with(
        dir.path(),
        &node1,
        Limits {
            client_requests_in_flight: 3,
            ..fast_limits()
        },
    );
    for (client, bound) in [(&alice, 4), (&bob, 3)] {
        let mut results = spawn_requests(client, (0..10).map(|i| format!("q{i}")), TEST_TIMEOUT);
        let mut held = take_requests(&mut rx1.requests, bound).await;
        let more = tokio::time::timeout(Duration::from_millis(200), rx1.requests.recv()).await;
        assert!(more.is_err(), "more than {bound} requests in flight");
        // Each reply makes room for one more request.
        let mut answered = 0;
        while answered < 10 {
            answer(held.pop().unwrap());
            answered += 1;
            if answered + held.len() < 10 {
                held.push(bounded("next request", rx1.requests.recv()).await.unwrap());
            }
            assert!(held.len() <= bound);
        }
        for _ in 0..10 {
            let (request, result) = bounded("reply", results.recv()).await.unwrap();
            assert_eq!(result.unwrap(), format!("re: {request}"));
        }
    }
}

#[tokio::test]
async fn shutdown_waits_for_replies_already_given_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["alice"]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    let alice = client_with(dir.path(), &node1, fast_limits());
    let mut results = spawn_requests(&alice, (0..5).map(|i| format!("q{i}")), TEST_TIMEOUT);
    let mut held = take_requests(&mut rx1.requests, 5).await;
    // Two are answered, three never are.
    answer(held.pop().unwrap());
    answer(held.pop().unwrap());
    let report = bounded("shutdown", node1.shutdown(Duration::from_millis(300))).await;
    assert_eq!(report.requests_unanswered, 3, "{report:?}");
    let mut ok = 0;
    for _ in 0..5 {
        let (_, result) = bounded("outcome", results.recv()).await.unwrap();
        match result {
            Ok(_) => ok += 1,
            Err(err) => assert!(matches!(err, RequestError::Connection(_)), "{err}"),
        }
    }
    assert_eq!(ok, 2);
    drop(held);
}
