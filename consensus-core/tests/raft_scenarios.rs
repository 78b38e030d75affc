//! Scenario tests: whole interactions of several nodes, told as a story.

mod common;

use common::Cluster;
use consensus_core::{ConfChange, Consensus, MemberChange, MessageBody, Role};

/// A leader cut off with a minority keeps accepting proposals but can commit none of them; the
/// majority elects a new leader and moves on; after healing, the old leader steps down and its
/// uncommitted entries are replaced by the new leader's log.
#[test]
fn partitioned_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3, 4, 5]);
    cluster.elect(1);
    cluster.propose(1, "before the partition");

    cluster.partition(&[1, 2], &[3, 4, 5]);
    let stranded = cluster.node(1).propose("stranded".into()).unwrap();
    cluster.stabilize();
    assert!(
        cluster.node(1).status().commit < stranded.index,
        "a minority cannot commit"
    );

    let election_tick = cluster.node(3).config().election_tick as usize;
    cluster.tick(3 * election_tick);
    let new_leader = cluster.leader().expect("the majority elects a leader");
    assert!([3, 4, 5].contains(&new_leader));
    assert_ne!(
        cluster.node(1).role(),
        Role::Leader,
        "check-quorum made the old leader step down"
    );
    cluster.propose(new_leader, "majority side");

    cluster.heal();
    cluster.tick(3);
    for id in 1..=5 {
        let applied = cluster.applied_data(id);
        assert_eq!(
            applied,
            vec![
                "before the partition".to_string(),
                "majority side".to_string()
            ],
            "node {id}"
        );
    }
    cluster.assert_consistent();
}

/// A follower isolated for a long time would, without pre-vote, come back with a much higher term
/// and depose a healthy leader. With pre-vote its term never moves and nothing is disturbed.
#[test]
fn pre_vote_keeps_a_rejoining_node_from_disrupting() {
    fn run(pre_vote: bool) -> (u64, u64, bool) {
        let mut cluster = Cluster::with_config(&[1, 2, 3], |c| c.pre_vote = pre_vote);
        cluster.elect(1);
        let term = cluster.node(1).term();
        cluster.isolate(3);
        cluster.tick(100);
        let isolated_term = cluster.node(3).term();
        cluster.heal();
        cluster.tick(30);
        let leader_kept = cluster.leader() == Some(1) && cluster.node(1).term() == term;
        (term, isolated_term, leader_kept)
    }
    let (term, isolated_term, leader_kept) = run(true);
    assert_eq!(
        isolated_term, term,
        "pre-candidates do not raise their term"
    );
    assert!(leader_kept, "the leader and its term survive the rejoin");

    let (term, isolated_term, leader_kept) = run(false);
    assert!(
        isolated_term > term,
        "without pre-vote the isolated node inflates its term"
    );
    assert!(!leader_kept, "and deposes the leader when it rejoins");
}

/// Node 3 is down while node 4 joins as a voter and node 3 is then removed; the cluster keeps
/// committing throughout, and node 3 restarting later does not disturb it.
#[test]
fn membership_change_while_a_node_is_down() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.add_blank_node(4);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.crash(3);

    // {1,2,3} → {1,2,3,4}: commits with 1, 2 (majority of the old configuration).
    cluster
        .node(1)
        .propose_conf_change(ConfChange::Single(MemberChange::AddVoter(4)))
        .unwrap();
    cluster.stabilize();
    cluster.tick(2);
    assert_eq!(cluster.node(1).conf_state().voters, [1, 2, 3, 4].into());
    assert_eq!(cluster.node(4).conf_state().voters, [1, 2, 3, 4].into());

    // {1,2,3,4} → {1,2,4}: needs 3 of 4 — 1, 2 and the new node 4.
    cluster
        .node(1)
        .propose_conf_change(ConfChange::Single(MemberChange::Remove(3)))
        .unwrap();
    cluster.stabilize();
    cluster.tick(2);
    assert_eq!(cluster.node(1).conf_state().voters, [1, 2, 4].into());

    cluster.propose(1, "b");
    assert_eq!(
        cluster.applied_data(4),
        vec!["a".to_string(), "b".to_string()]
    );

    // The removed node comes back with its old view of the world; pre-vote and the healthy leader
    // keep it from disturbing anyone.
    cluster.restart(3);
    cluster.tick(60);
    assert_eq!(cluster.leader(), Some(1));
    cluster.propose(1, "c");
    assert_eq!(
        cluster.applied_data(2).last().map(String::as_str),
        Some("c")
    );
    cluster.assert_consistent();
}

/// A follower down while the leader compacted its log past the follower's last entry catches up
/// from a snapshot, then from the log.
#[test]
fn snapshot_to_a_far_behind_follower() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "early");
    cluster.crash(3);
    for i in 0..50 {
        cluster.propose(1, &format!("w{i}"));
    }
    let compacted_at = cluster.compact(1);
    assert!(compacted_at > 50);
    assert!(cluster.node(1).first_index() > 2);

    cluster.restart(3);
    cluster.delivered.clear();
    cluster.tick(5);
    let snapshots = cluster
        .delivered
        .iter()
        .filter(|m| m.to == 3 && matches!(m.body, MessageBody::InstallSnapshot { .. }))
        .count();
    assert_eq!(snapshots, 1, "exactly one snapshot is sent");
    cluster.propose(1, "after the snapshot");
    let status = cluster.node(3).status();
    assert_eq!(status.commit, cluster.node(1).status().commit);
    assert_eq!(cluster.node(3).first_index(), compacted_at + 1);
    assert_eq!(
        cluster.applied_data(3).last().map(String::as_str),
        Some("after the snapshot")
    );
    cluster.assert_consistent();
}

/// Leadership is handed to a follower that missed entries: the leader first brings it up to date,
/// then tells it to campaign at once (TimeoutNow), and it wins with the complete log.
#[test]
fn leader_transfer_to_a_lagging_node() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(3);
    for i in 0..10 {
        cluster.propose(1, &format!("w{i}"));
    }
    cluster.heal();
    assert!(cluster.node(3).status().last_index < cluster.node(1).status().last_index);

    cluster.node(1).transfer_leader(3).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(3));
    assert_eq!(cluster.node(1).role(), Role::Follower);
    cluster.propose(3, "from the new leader");
    let expected: Vec<String> = (0..10)
        .map(|i| format!("w{i}"))
        .chain(["from the new leader".to_string()])
        .collect();
    for id in 1..=3 {
        assert_eq!(cluster.applied_data(id), expected, "node {id}");
    }
}

/// The leader crashes right after a commit; whoever is elected next has every committed entry
/// (leader completeness), and the old leader rejoins as a follower.
#[test]
fn leader_crash_loses_no_committed_entry() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..5 {
        cluster.propose(1, &format!("w{i}"));
    }
    let committed = cluster.node(1).status().commit;
    cluster.crash(1);
    let election_tick = cluster.node(2).config().election_tick as usize;
    cluster.tick(3 * election_tick);
    let leader = cluster.leader().expect("2 and 3 elect a leader");
    assert!(cluster.node(leader).status().last_index >= committed);
    cluster.propose(leader, "next");
    cluster.restart(1);
    cluster.tick(3);
    assert_eq!(cluster.node(1).leader(), Some(leader));
    assert_eq!(
        cluster.applied_data(1).last().map(String::as_str),
        Some("next")
    );
    cluster.assert_consistent();
}
