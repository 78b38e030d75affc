//! A cross-shard transaction whose reply was lost is sent again under the same session — to
//! another member, which coordinates it anew. Checked on real `quorate` processes (3 nodes × 2
//! shards): sent to every member, one after the other or all at once, the request is applied
//! once (each key's version grows by one) and every member answers with the same outcome.

mod common;

use bytes::Bytes;
use common::ProcCluster;
use node::client::ClientError;
use node::config::{ServeConfig, ShardsConfig};
use node::proto::{Consistency, Reply, Request, ServerError, TxnOp, WriteOp, WriteResult};

/// Shards [.., "n") and ["n", ..): groups 1 and 2.
fn two_shards(config: &mut ServeConfig) {
    config.shards = Some(ShardsConfig {
        split_keys: vec!["n".into()],
        ..ShardsConfig::default()
    });
}

fn transfer(value: &str) -> WriteOp {
    let put = |key: &str| TxnOp::Put {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
    };
    WriteOp::Txn {
        compares: Vec::new(),
        success: vec![put("a"), put("x")],
        failure: Vec::new(),
    }
}

/// An answer, comparable across members: the reply (with its revision), or the refusal (an
/// abort's reason names the run that saw it, so only the kind is kept). A commit's per-group
/// revisions are left out: they are what each run learnt of the participants (lower bounds for
/// the client's session, later ones for a run answered with an earlier run's commit), not the
/// outcome.
fn outcome(answer: Result<node::proto::Reply, ClientError>) -> String {
    match answer {
        Ok(Reply::Write(WriteResult::CrossShardTxn {
            succeeded,
            revision,
            results,
            shard_revisions,
        })) => {
            let groups: Vec<u64> = shard_revisions.iter().map(|(g, _)| *g).collect();
            assert_eq!(
                groups,
                vec![1, 2],
                "a revision of each shard: {shard_revisions:?}"
            );
            assert!(
                shard_revisions
                    .iter()
                    .any(|&(g, r)| g == 1 && r >= revision),
                "the coordinator shard's revision is among {shard_revisions:?}"
            );
            format!("commit: succeeded {succeeded}, revision {revision}, {results:?}")
        }
        Ok(reply) => format!("{reply:?}"),
        Err(ClientError::Refused(ServerError::TxnAborted(_))) => "refused: aborted".into(),
        Err(ClientError::Refused(error)) => format!("refused: {error}"),
        Err(other) => panic!("no answer: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_shard_request_resent_to_every_member_is_applied_once_with_one_answer() {
    let cluster = ProcCluster::start(3, two_shards);
    let client = cluster.client();
    // The map first, so that the reads below go to the right shards.
    client.put("warm", "up").await.expect("a first write");
    let mut applied = 0;
    for round in 0..8u64 {
        let session = client.new_session();
        let request = Request::Write {
            session,
            op: transfer(&format!("v{round}")),
        };
        let answers: Vec<String> = if round % 2 == 0 {
            // One after the other: the second and third runs meet the first's commit.
            let mut answers = Vec::new();
            for node in 1..=3 {
                answers.push(outcome(client.request_to(node, &request).await));
            }
            answers
        } else {
            // All at once: the runs race; one outcome wins, the others are told it.
            let (one, two, three) = tokio::join!(
                client.request_to(1, &request),
                client.request_to(2, &request),
                client.request_to(3, &request)
            );
            vec![outcome(one), outcome(two), outcome(three)]
        };
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "round {round}: the members answered differently: {answers:#?}"
        );
        if !answers[0].starts_with("refused") {
            applied += 1;
        }
        for key in ["a", "x"] {
            let kv = client
                .get(key, Consistency::Linearizable)
                .await
                .expect("read");
            let version = kv.map_or(0, |kv| kv.version);
            assert_eq!(
                version, applied,
                "round {round}: {key:?} was written {version} times by {applied} applied requests ({answers:?})"
            );
        }
    }
    assert!(applied >= 4, "only {applied} of 8 requests committed");
}
