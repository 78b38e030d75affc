//! Authentication and hostile input on loopback: foreign CAs, impostors, the wrong ALPN, garbage.

mod common;

use std::time::Duration;

use common::*;
use net_quic::frame::{encode, PROTOCOL_VERSION};
use net_quic::{codes, BindError, Credentials, Endpoint, NodeId, CLIENT_ALPN, PEER_ALPN};

#[tokio::test]
async fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    write_certs(ours.path(), &[1, 2], &[]);
    write_certs(theirs.path(), &[2], &[]); // same cluster name and node id, other CA
    let (node1, mut rx1) = bind_node(ours.path(), 1);
    let (rogue, mut rogue_rx) = bind_node(theirs.path(), 2);
    rogue.set_peer_addr(NodeId(1), node1.local_addr().unwrap());
    node1.set_peer_addr(NodeId(2), rogue.local_addr().unwrap());

    bounded("rogue keeps trying", async {
        while rogue.stats().connect_failures < 2 || node1.stats().connect_failures < 2 {
            let _ = rogue.send(NodeId(1), &Msg::Seq { n: 0 });
            let _ = node1.send(NodeId(2), &Msg::Seq { n: 0 });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(recv_within(&mut rx1, Duration::from_millis(200))
        .await
        .is_none());
    assert!(recv_within(&mut rogue_rx, Duration::from_millis(10))
        .await
        .is_none());
    assert!(
        node1.stats().rejected_connections >= 1,
        "{:?}",
        node1.stats()
    );
    assert_eq!(node1.stats().frames_received, 0);
}

#[tokio::test]
async fn a_peer_cannot_claim_another_nodes_id() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2, 3], &[]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    // Node 2's certificate, listening where node 1 believes node 3 is.
    let (impostor, mut impostor_rx) = bind_node(dir.path(), 2);
    node1.set_peer_addr(NodeId(3), impostor.local_addr().unwrap());
    impostor.set_peer_addr(NodeId(1), node1.local_addr().unwrap());

    // Dialling "node 3" reaches a server whose certificate says node 2: refused.
    bounded("dialling the impostor fails", async {
        while node1.stats().connect_failures < 2 {
            let _ = node1.send(NodeId(3), &Msg::Seq { n: 0 });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(recv_within(&mut impostor_rx, Duration::from_millis(100))
        .await
        .is_none());

    // What the impostor sends arrives labelled with the id in its certificate, whatever it claims.
    impostor.send(NodeId(1), &Msg::Seq { n: 3 }).unwrap();
    let m = bounded("impostor's message", rx1.peer.recv())
        .await
        .unwrap();
    assert_eq!(m.from, NodeId(2));

    // A raw connection dialling with node 3's name, holding node 2's certificate, is still node 2.
    let creds2 = Credentials::load_node(dir.path(), NodeId(2)).unwrap();
    let conn = raw_connect(
        &creds2,
        PEER_ALPN,
        node1.local_addr().unwrap(),
        "node-1.quorate",
    )
    .await
    .unwrap();
    write_consensus_stream(&conn, &encode(&Msg::Seq { n: 33 }, 1024).unwrap()).await;
    let m = bounded("raw message", rx1.peer.recv()).await.unwrap();
    assert_eq!((m.from, m.msg), (NodeId(2), Msg::Seq { n: 33 }));
}

#[tokio::test]
async fn a_client_certificate_cannot_act_as_a_node() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["mallory"]);
    let creds = Credentials::load_client(dir.path(), "mallory").unwrap();
    let err = Endpoint::<Test>::bind(node_config(creds.clone(), loopback()))
        .err()
        .unwrap();
    assert!(matches!(err, BindError::NotANode(_)), "{err}");

    // Nor on the wire: the peer ALPN with a client certificate is closed as not authorized.
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    let conn = raw_connect(
        &creds,
        PEER_ALPN,
        node1.local_addr().unwrap(),
        "node-1.quorate",
    )
    .await
    .unwrap();
    if let Ok(mut send) = bounded("open stream", conn.open_uni()).await {
        let _ = bounded("write", send.write_all(&[1])).await;
        let _ = send
            .write_all(&encode(&Msg::Seq { n: 1 }, 1024).unwrap())
            .await;
    }
    let code = bounded("closed", close_code(&conn)).await;
    assert_eq!(code, Some(u64::from(codes::NOT_AUTHORIZED)));
    assert!(recv_within(&mut rx1, Duration::from_millis(100))
        .await
        .is_none());
    assert_eq!(node1.stats().rejected_connections, 1);
}

#[tokio::test]
async fn the_client_alpn_cannot_send_peer_messages() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &["alice"]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    // Even a node certificate on the client ALPN cannot open peer streams.
    for creds in [
        Credentials::load_client(dir.path(), "alice").unwrap(),
        Credentials::load_node(dir.path(), NodeId(2)).unwrap(),
    ] {
        let conn = raw_connect(
            &creds,
            CLIENT_ALPN,
            node1.local_addr().unwrap(),
            "node-1.quorate",
        )
        .await
        .unwrap();
        write_consensus_stream(&conn, &encode(&Msg::Seq { n: 1 }, 1024).unwrap()).await;
        let code = bounded("closed", close_code(&conn)).await;
        assert_eq!(code, Some(u64::from(codes::PROTOCOL_VIOLATION)));
    }
    assert!(recv_within(&mut rx1, Duration::from_millis(100))
        .await
        .is_none());
    assert_eq!(node1.stats().protocol_violations, 2);
}

/// Opens a peer stream as node 2 and writes `bytes` after the class tag, then finishes.
async fn send_raw_peer_stream(
    creds: &Credentials,
    node1: &Endpoint<Test>,
    bytes: &[u8],
) -> Option<u64> {
    let conn = raw_connect(
        creds,
        PEER_ALPN,
        node1.local_addr().unwrap(),
        "node-1.quorate",
    )
    .await
    .unwrap();
    write_consensus_stream(&conn, bytes).await;
    bounded("closed", close_code(&conn)).await
}

/// Opens a uni stream on `conn`, tags it as the consensus class and writes `bytes`, then finishes.
/// Writes may fail once the server closes the connection: that is what some tests wait for.
async fn write_consensus_stream(conn: &quinn::Connection, bytes: &[u8]) {
    let mut send = bounded("open stream", conn.open_uni()).await.unwrap();
    let _ = bounded("write", send.write_all(&[1])).await;
    let _ = bounded("write", send.write_all(bytes)).await;
    let _ = send.finish();
}

#[tokio::test]
async fn garbage_on_a_peer_stream_closes_the_connection_with_a_counted_error() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2], &[]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    let creds2 = Credentials::load_node(dir.path(), NodeId(2)).unwrap();
    let valid = encode(&Msg::Seq { n: 5 }, 1024).unwrap();

    let mut oversize = vec![PROTOCOL_VERSION];
    oversize.extend_from_slice(&u32::MAX.to_le_bytes());
    oversize.extend_from_slice(&[0; 64]);
    let mut wrong_version = valid.to_vec();
    wrong_version[0] = PROTOCOL_VERSION + 1;
    let garbage_payload = [PROTOCOL_VERSION, 3, 0, 0, 0, 0xff, 0xff, 0xff];
    let truncated = &valid[..valid.len() - 1];
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let cases: [(&str, &[u8]); 5] = [
        ("oversize length prefix", &oversize),
        ("wrong version", &wrong_version),
        ("undecodable payload", &garbage_payload),
        ("truncated frame", truncated),
        ("random bytes", &random),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let code = send_raw_peer_stream(&creds2, &node1, bytes).await;
        assert_eq!(code, Some(u64::from(codes::BAD_FRAME)), "{what}");
        assert_eq!(node1.stats().decode_errors, i as u64 + 1, "{what}");
    }
    assert!(recv_within(&mut rx1, Duration::from_millis(100))
        .await
        .is_none());

    // An unknown stream class is a protocol violation, and the endpoint still works afterwards.
    let conn = raw_connect(
        &creds2,
        PEER_ALPN,
        node1.local_addr().unwrap(),
        "node-1.quorate",
    )
    .await
    .unwrap();
    let mut send = bounded("open stream", conn.open_uni()).await.unwrap();
    bounded("write", send.write_all(&[77])).await.unwrap();
    send.finish().unwrap();
    assert_eq!(
        bounded("closed", close_code(&conn)).await,
        Some(u64::from(codes::PROTOCOL_VIOLATION))
    );
    let code_ok = {
        let conn = raw_connect(
            &creds2,
            PEER_ALPN,
            node1.local_addr().unwrap(),
            "node-1.quorate",
        )
        .await
        .unwrap();
        let mut send = bounded("open stream", conn.open_uni()).await.unwrap();
        bounded("write", send.write_all(&[1])).await.unwrap();
        bounded("write", send.write_all(&valid)).await.unwrap();
        send.finish().unwrap();
        bounded("valid frame", rx1.peer.recv()).await.unwrap()
    };
    assert_eq!(code_ok.msg, Msg::Seq { n: 5 });
}

#[tokio::test]
async fn a_bad_client_request_frame_closes_the_client_connection_with_a_counted_error() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["eve"]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    let creds = Credentials::load_client(dir.path(), "eve").unwrap();
    let mut oversize = vec![PROTOCOL_VERSION];
    oversize.extend_from_slice(&u32::MAX.to_le_bytes());
    let undecodable = [PROTOCOL_VERSION, 2, 0, 0, 0, 0xff, 0xff];
    for (i, bytes) in [&oversize[..], &undecodable[..]].into_iter().enumerate() {
        let conn = raw_connect(
            &creds,
            CLIENT_ALPN,
            node1.local_addr().unwrap(),
            "node-1.quorate",
        )
        .await
        .unwrap();
        let (mut send, _recv) = bounded("open stream", conn.open_bi()).await.unwrap();
        let _ = bounded("write", send.write_all(bytes)).await;
        let _ = send.finish();
        let code = bounded("closed", close_code(&conn)).await;
        assert_eq!(code, Some(u64::from(codes::BAD_FRAME)));
        assert_eq!(node1.stats().decode_errors, i as u64 + 1);
    }
    let nothing = tokio::time::timeout(Duration::from_millis(100), rx1.requests.recv()).await;
    assert!(nothing.is_err(), "a bad request reached the application");
}

/// A frame of the client stream protocol: header, `u64` request id, kind byte, postcard body
/// (postcard writes a byte array as its bytes and a `u8` as one byte).
fn client_frame(id: u64, kind: u8, body: &str) -> Vec<u8> {
    encode(&(id.to_le_bytes(), kind, body), 1024)
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn the_client_stream_speaks_the_documented_envelope_and_refuses_other_kinds() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["eve"]);
    let (node1, mut rx1) = bind_node(dir.path(), 1);
    let creds = Credentials::load_client(dir.path(), "eve").unwrap();
    let conn = raw_connect(
        &creds,
        CLIENT_ALPN,
        node1.local_addr().unwrap(),
        "node-1.quorate",
    )
    .await
    .unwrap();
    let (mut send, mut recv) = bounded("open stream", conn.open_bi()).await.unwrap();
    // Two requests in one write; the replies come back by id, here in reverse order.
    let mut both = client_frame(7, 0, "seven");
    both.extend(client_frame(3, 0, "three"));
    bounded("write", send.write_all(&both)).await.unwrap();
    let first = bounded("request", rx1.requests.recv()).await.unwrap();
    let second = bounded("request", rx1.requests.recv()).await.unwrap();
    assert_eq!(
        (first.request.as_str(), second.request.as_str()),
        ("seven", "three")
    );
    second.responder.reply(&"for three".to_string()).unwrap();
    first.responder.reply(&"for seven".to_string()).unwrap();
    let mut expected = client_frame(3, 1, "for three");
    expected.extend(client_frame(7, 1, "for seven"));
    let mut got = vec![0; expected.len()];
    bounded("replies", recv.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, expected);

    // A client may not send a reply.
    let _ = bounded(
        "write",
        send.write_all(&client_frame(8, 1, "not a request")),
    )
    .await;
    let code = bounded("closed", close_code(&conn)).await;
    assert_eq!(code, Some(u64::from(codes::BAD_FRAME)));
    assert_eq!(node1.stats().decode_errors, 1);
    let nothing = tokio::time::timeout(Duration::from_millis(100), rx1.requests.recv()).await;
    assert!(nothing.is_err(), "a bad request reached the application");
}

#[tokio::test]
async fn a_client_of_the_old_protocol_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1], &["eve"]);
    let (node1, _rx1) = bind_node(dir.path(), 1);
    let creds = Credentials::load_client(dir.path(), "eve").unwrap();
    let result = raw_connect(
        &creds,
        b"quorate-client/1",
        node1.local_addr().unwrap(),
        "node-1.quorate",
    )
    .await;
    assert!(
        result.is_err(),
        "the one-stream-per-request protocol is not spoken"
    );
}
