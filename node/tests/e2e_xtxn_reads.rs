//! A cross-shard transaction is answered once its decision is durable on the coordinator shard,
//! before the other shard has applied it. Checked on real `quorate` processes (3 nodes × 2
//! shards): a read started after the answer — on the shard that is *not* the coordinator, by
//! another client, at once — sees the transaction's write, every time; so does a plain write's
//! compare right after it.

mod common;

use bytes::Bytes;
use common::ProcCluster;
use node::config::{ServeConfig, ShardsConfig};
use node::proto::{Compare, CompareOp, CompareTarget, Consistency, TxnOp};

/// Shards [.., "n") and ["n", ..): groups 1 and 2.
fn two_shards(config: &mut ServeConfig) {
    config.shards = Some(ShardsConfig {
        split_keys: vec!["n".into()],
        ..ShardsConfig::default()
    });
}

const ROUNDS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_the_other_shard_right_after_a_transactions_answer_sees_its_write() {
    let cluster = ProcCluster::start(3, two_shards);
    let writer = cluster.client();
    let reader = cluster.client();
    let put = |key: &str, value: String| TxnOp::Put {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value),
    };
    for round in 0..ROUNDS {
        let value = format!("v{round}");
        // "a" first: shard 1 coordinates, shard 2 ("x") is the participant applied last.
        let outcome = writer
            .txn(
                Vec::new(),
                vec![put("a", value.clone()), put("x", value.clone())],
                Vec::new(),
            )
            .await
            .expect("a transaction without compares commits");
        assert!(outcome.succeeded);
        let other = if round % 2 == 0 {
            reader.get("x", Consistency::Linearizable).await
        } else {
            // A scan over shard 2 must not show the old value either.
            reader
                .scan("n", None, 10, Consistency::Linearizable)
                .await
                .map(|page| page.kvs.into_iter().find(|kv| kv.key.as_ref() == b"x"))
        };
        let kv = other.expect("read").expect("x exists");
        assert_eq!(
            kv.value,
            Bytes::from(value.clone()),
            "round {round}: a read after the answer saw the value before the transaction"
        );
        // A compare-and-set that expects the new value goes through (the lock is waited out).
        let swapped = reader
            .txn(
                vec![Compare {
                    key: Bytes::from_static(b"x"),
                    target: CompareTarget::Value(Bytes::from(value.clone())),
                    op: CompareOp::Equal,
                }],
                vec![put("x", format!("{value}-after"))],
                Vec::new(),
            )
            .await
            .expect("a one-shard transaction");
        assert!(
            swapped.succeeded,
            "round {round}: a compare after the answer saw the value before the transaction"
        );
    }
}
