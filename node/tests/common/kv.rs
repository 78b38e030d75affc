//! Reading a cluster's state back in end-to-end tests: every key with its value and version,
//! waiting until a member has applied what the leader (or primary) had committed, and waiting for
//! a serving primary (primary-backup).

use std::collections::BTreeMap;

use node::client::Client;
use std::time::Duration;

use node::proto::{Consistency, NodeStatus, Role};

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

/// Waits until one of `among` is a serving primary (primary-backup); returns its status.
pub async fn wait_primary(client: &Client, among: &[u64]) -> NodeStatus {
    eventually(&format!("a serving primary among {among:?}"), || async {
        for &id in among {
            if let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(1), client.status_of(id)).await
            {
                if status.role == Role::Leader && status.detail("serving") == Some("true") {
                    return Some(status);
                }
            }
        }
        None
    })
    .await
}
