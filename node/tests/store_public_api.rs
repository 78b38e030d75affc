//! The store as the server uses it, from outside the crate: the error a person sees when a node
//! is pointed at another cluster's data directory, and a restart that keeps the bootstrap members.

use consensus_core::{ConfState, Storage};
use node::store::{Identity, RaftStore, StoreError, StoreOptions};

fn identity(cluster: &str, node_id: u64) -> Identity {
    Identity {
        protocol: "raft".into(),
        cluster_id: cluster.into(),
        node_id,
        group_id: 0,
    }
}

#[test]
fn opening_another_clusters_data_directory_says_whose_it_is_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = RaftStore::open(
        dir.path(),
        identity("blue", 1),
        ConfState::with_voters([1, 2, 3]),
        StoreOptions::default(),
    )
    .unwrap();
    store.close().unwrap();

    let error = RaftStore::open(
        dir.path(),
        identity("green", 1),
        ConfState::with_voters([1, 2, 3]),
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(error, StoreError::WrongCluster { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    for needle in [
        "\"blue\"",
        "\"green\"",
        &dir.path().display().to_string(),
        "own data directory",
    ] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
}

#[test]
fn a_restarted_node_keeps_its_bootstrap_members_whatever_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let voters = ConfState::with_voters([1, 2, 3]);
    let store = RaftStore::open(
        dir.path(),
        identity("blue", 2),
        voters.clone(),
        StoreOptions::default(),
    )
    .unwrap();
    assert!(store.recovery().created);
    drop(store);
    let store = RaftStore::open(
        dir.path(),
        identity("blue", 2),
        ConfState::with_voters([7]),
        StoreOptions::default(),
    )
    .unwrap();
    assert!(!store.recovery().created);
    assert_eq!(store.snapshot_meta().conf_state, voters);
    assert_eq!((store.first_index(), store.last_index()), (1, 0));
}
