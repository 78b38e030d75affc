//! Reading a cluster's state back in end-to-end tests: every key with its value and version, and
//! waiting until a member has applied what the leader (or primary) had committed.

use std::collections::BTreeMap;

use node::client::Client;
use node::proto::{Consistency, NodeStatus};

use super::eventually;

/// Every key and its value and version, read linearizably (at the leader or primary).
pub async fn all_keys(client: &Client) -> BTreeMap<String, (String, u64)> {
    let page = client
        .scan("", None, 0, Consistency::Linearizable)
        .await
        .expect("scan");
    assert!(!page.more, "test data fits in one scan page");
    page.kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key.to_vec()).unwrap(),
                (String::from_utf8(kv.value.to_vec()).unwrap(), kv.version),
            )
        })
        .collect()
}

/// Waits until member `id` has applied everything member `leader` had committed when asked.
pub async fn wait_caught_up(client: &Client, leader: u64, id: u64) -> NodeStatus {
    let target = client
        .status_of(leader)
        .await
        .expect("leader status")
        .commit_index;
    eventually(&format!("node {id} applies through {target}"), || async {
        match client.status_of(id).await {
            Ok(status) if status.applied_index >= target => Some(status),
            _ => None,
        }
    })
    .await
}
