//! Behaviour tests named after what the Raft paper (Ongaro & Ousterhout 2014, "§") and Ongaro's
//! thesis ("thesis §") say. Each drives the public interface only.

mod common;

use bytes::Bytes;
use common::{messages_of, node, Cluster};
use consensus_core::{
    ConfChange, Config, Consensus, Entry, EntryPayload, Error, MemStorage, MemberChange, Message,
    MessageBody, PlantedBug, Raft, ReadMode, Role,
};

fn data(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Data(data("e")),
    }
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

fn no_pre_vote(config: &mut Config) {
    config.pre_vote = false;
    config.check_quorum = false;
}

/// A follower whose log holds `entries` (written durably) at term `term`.
fn follower_with_log(id: u64, term: u64, entries: Vec<Entry>) -> Raft<MemStorage> {
    let mut n = node(id, &[1, 2, 3], no_pre_vote);
    n.step(msg(
        2,
        id,
        term,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries,
            commit: 0,
        },
    ))
    .unwrap();
    messages_of(&mut n);
    n
}

// ---------------------------------------------------------------- elections (§5.2, thesis §3.4)

#[test]
fn a_leader_is_elected_and_commits_a_proposal_on_every_node() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    let leader = cluster.tick_until_leader(100);
    cluster.propose(leader, "x=1");
    cluster.tick(2);
    for id in [1, 2, 3] {
        assert_eq!(
            cluster.applied_data(id),
            vec!["x=1".to_string()],
            "node {id}"
        );
        assert_eq!(cluster.node(id).leader(), Some(leader));
    }
    cluster.assert_consistent();
}

#[test]
fn follower_becomes_candidate_when_it_hears_nothing_for_an_election_timeout() {
    let mut n = node(1, &[1, 2, 3], no_pre_vote);
    for _ in 0..(2 * n.config().election_tick) {
        n.tick();
    }
    assert_eq!(n.role(), Role::Candidate);
    assert_eq!(n.term(), 1);
    let votes: Vec<Message> = messages_of(&mut n);
    assert_eq!(votes.len(), 2, "asks every other voter: {votes:?}");
    assert!(votes
        .iter()
        .all(|m| matches!(m.body, MessageBody::Vote { .. })));
}

#[test]
fn election_timeouts_are_randomized_so_split_votes_are_rare() {
    let timeouts: std::collections::BTreeSet<u32> = (1..=8)
        .map(|id| {
            let mut n = node(id, &[1, 2, 3, 4, 5, 6, 7, 8], no_pre_vote);
            let mut ticks = 0;
            while n.role() == Role::Follower {
                n.tick();
                ticks += 1;
            }
            assert!(
                (10..20).contains(&ticks),
                "timeout {ticks} outside [election_tick, 2*election_tick)"
            );
            ticks
        })
        .collect();
    assert!(
        timeouts.len() > 1,
        "nodes seeded differently draw different timeouts"
    );
}

#[test]
fn each_server_votes_for_at_most_one_candidate_per_term() {
    let mut n = node(1, &[1, 2, 3], no_pre_vote);
    let vote = |from| {
        msg(
            from,
            1,
            5,
            MessageBody::Vote {
                last_index: 0,
                last_term: 0,
                leader_transfer: false,
            },
        )
    };
    n.step(vote(2)).unwrap();
    n.step(vote(3)).unwrap();
    let replies = messages_of(&mut n);
    let granted: Vec<(u64, bool)> = replies
        .iter()
        .map(|m| match m.body {
            MessageBody::VoteResponse { granted } => (m.to, granted),
            ref other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(granted, vec![(2, true), (3, false)]);
}

#[test]
fn candidate_with_stale_log_cannot_win() {
    // §5.4.1: a voter denies its vote if its own log is more up to date than the candidate's.
    let mut voter = follower_with_log(1, 2, vec![entry(1, 1), entry(2, 2)]);
    voter
        .step(msg(
            3,
            1,
            3,
            MessageBody::Vote {
                last_index: 5,
                last_term: 1,
                leader_transfer: false,
            },
        ))
        .unwrap();
    let reply = messages_of(&mut voter);
    assert!(matches!(
        reply[..],
        [Message {
            body: MessageBody::VoteResponse { granted: false },
            ..
        }]
    ));

    // In a cluster: node 3 misses an entry, then cannot be elected while 1 and 2 are up.
    let mut cluster = Cluster::with_config(&[1, 2, 3], no_pre_vote);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.propose(1, "only on 1 and 2");
    cluster.heal();
    cluster.node(3).campaign().unwrap();
    cluster.stabilize();
    assert_ne!(cluster.leader(), Some(3));
}

#[test]
fn planted_vote_without_log_check_lets_a_stale_candidate_win() {
    // The test-only knob the simulator uses must really break the rule above.
    let mut voter = node(1, &[1, 2, 3], |c| {
        no_pre_vote(c);
        c.planted_bug = Some(PlantedBug::VoteWithoutLogCheck);
    });
    voter
        .step(msg(
            2,
            1,
            2,
            MessageBody::Append {
                prev_index: 0,
                prev_term: 0,
                entries: vec![entry(1, 2)],
                commit: 0,
            },
        ))
        .unwrap();
    messages_of(&mut voter);
    voter
        .step(msg(
            3,
            1,
            3,
            MessageBody::Vote {
                last_index: 0,
                last_term: 0,
                leader_transfer: false,
            },
        ))
        .unwrap();
    let reply = messages_of(&mut voter);
    assert!(matches!(
        reply[..],
        [Message {
            body: MessageBody::VoteResponse { granted: true },
            ..
        }]
    ));
}

#[test]
fn a_vote_is_sent_only_after_it_is_durable() {
    let mut n = node(1, &[1, 2, 3], no_pre_vote);
    n.step(msg(
        2,
        1,
        1,
        MessageBody::Vote {
            last_index: 0,
            last_term: 0,
            leader_transfer: false,
        },
    ))
    .unwrap();
    let ready = n.ready().unwrap();
    assert!(
        ready.messages.is_empty(),
        "the grant waits for the write: {:?}",
        ready.messages
    );
    let persist = ready.persist.expect("term and vote to persist");
    let hard_state = persist.write.hard_state.expect("hard state");
    assert_eq!((hard_state.term, hard_state.vote), (1, 2));
    n.storage_mut().write(&persist.write).unwrap();
    n.persisted(persist.token).unwrap();
    let ready = n.ready().unwrap();
    assert!(matches!(
        ready.messages[..],
        [Message {
            to: 2,
            body: MessageBody::VoteResponse { granted: true },
            ..
        }]
    ));
}

#[test]
fn candidate_requests_votes_at_once_but_counts_its_own_vote_only_once_durable() {
    let mut n = node(1, &[1, 2, 3], no_pre_vote);
    n.campaign().unwrap();
    let ready = n.ready().unwrap();
    // The requests do not wait for the candidate's fsync (it overlaps the voters').
    assert_eq!(ready.messages.len(), 2, "{:?}", ready.messages);
    let persist = ready.persist.expect("term and self-vote to persist");
    assert!(persist.write.sync, "a new term and vote must be synced");
    // One grant alone is not a majority while our own vote is not durable …
    n.step(msg(2, 1, 1, MessageBody::VoteResponse { granted: true }))
        .unwrap();
    assert_ne!(n.role(), Role::Leader);
    // … our durable vote makes it one.
    n.storage_mut().write(&persist.write).unwrap();
    n.persisted(persist.token).unwrap();
    assert_eq!(n.role(), Role::Leader);
}

#[test]
fn a_lone_voter_leads_only_once_its_vote_is_durable() {
    let mut n = node(1, &[1], no_pre_vote);
    n.campaign().unwrap();
    let persist = n.ready().unwrap().persist.expect("term and vote");
    assert_eq!(n.role(), Role::Candidate);
    n.storage_mut().write(&persist.write).unwrap();
    n.persisted(persist.token).unwrap();
    assert_eq!(n.role(), Role::Leader);
}

#[test]
fn a_commit_index_that_moved_alone_is_written_without_sync() {
    let mut f = node(2, &[1, 2, 3], no_pre_vote);
    let entry = Entry {
        term: 1,
        index: 1,
        payload: EntryPayload::Data(Bytes::from_static(b"x")),
    };
    f.step(msg(
        1,
        2,
        1,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![entry],
            commit: 0,
        },
    ))
    .unwrap();
    let persist = f.ready().unwrap().persist.expect("the entry to store");
    assert!(
        persist.write.sync,
        "entries must be synced before they are acknowledged"
    );
    f.storage_mut().write(&persist.write).unwrap();
    f.persisted(persist.token).unwrap();
    let _ack = f.ready().unwrap();
    // The leader's heartbeat moves only our commit index.
    f.step(msg(
        1,
        2,
        1,
        MessageBody::Heartbeat {
            commit: 1,
            read_round: 0,
        },
    ))
    .unwrap();
    let persist = f.ready().unwrap().persist.expect("the new commit index");
    assert!(persist.write.entries.is_empty());
    assert_eq!(persist.write.hard_state.map(|h| h.commit), Some(1));
    assert!(!persist.write.sync, "a commit-only write needs no fsync");
    f.persisted(persist.token).unwrap();
}

#[test]
fn candidate_steps_down_when_it_hears_from_a_leader_of_its_term() {
    let mut n = node(1, &[1, 2, 3], no_pre_vote);
    n.campaign().unwrap();
    messages_of(&mut n);
    n.step(msg(
        2,
        1,
        1,
        MessageBody::Heartbeat {
            commit: 0,
            read_round: 0,
        },
    ))
    .unwrap();
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.leader(), Some(2));
}

#[test]
fn a_server_with_a_stale_term_adopts_the_newer_term_and_becomes_follower() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], no_pre_vote);
    cluster.elect(1);
    cluster
        .node(1)
        .step(msg(
            3,
            1,
            9,
            MessageBody::HeartbeatResponse { read_round: 0 },
        ))
        .unwrap();
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(cluster.node(1).term(), 9);
}

// ---------------------------------------------------------------- pre-vote and check-quorum (thesis §9.6, §6.2)

#[test]
fn pre_vote_does_not_raise_the_term_of_a_node_that_cannot_win() {
    let mut n = node(1, &[1, 2, 3], |_| {});
    for _ in 0..200 {
        n.tick();
        messages_of(&mut n); // nobody answers
    }
    assert_eq!(n.term(), 0, "pre-candidates keep their term");
    assert_eq!(n.role(), Role::PreCandidate);
}

#[test]
fn leader_steps_down_when_it_cannot_reach_a_quorum() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(1);
    let election_tick = cluster.node(1).config().election_tick as usize;
    cluster.tick(2 * election_tick);
    assert_ne!(cluster.node(1).role(), Role::Leader);
}

#[test]
fn follower_that_heard_from_a_leader_recently_refuses_to_vote() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let term = cluster.node(1).term();
    // Node 3 wrongly believes the leader failed and asks node 2 for its vote in a later term.
    cluster
        .node(2)
        .step(msg(
            3,
            2,
            term + 5,
            MessageBody::Vote {
                last_index: 10,
                last_term: term + 4,
                leader_transfer: false,
            },
        ))
        .unwrap();
    cluster.stabilize();
    assert_eq!(
        cluster.node(2).term(),
        term,
        "the disruptive request is ignored"
    );
    assert_eq!(cluster.leader(), Some(1));
}

// ---------------------------------------------------------------- replication (§5.3, thesis §3.5, §10.2.1)

#[test]
fn follower_rejects_append_with_mismatched_prev_term() {
    let mut f = follower_with_log(1, 2, vec![entry(1, 1), entry(2, 1)]);
    f.step(msg(
        2,
        1,
        2,
        MessageBody::Append {
            prev_index: 2,
            prev_term: 2,
            entries: vec![entry(3, 2)],
            commit: 0,
        },
    ))
    .unwrap();
    let reply = messages_of(&mut f);
    match reply[..] {
        [Message {
            body:
                MessageBody::AppendResponse {
                    reject: true,
                    index: 2,
                    hint_index,
                    ..
                },
            ..
        }] => assert!(hint_index <= 2),
        _ => panic!("expected a rejection, got {reply:?}"),
    }
    assert_eq!(f.status().last_index, 2, "nothing appended");
}

#[test]
fn follower_deletes_conflicting_entries_and_appends_the_leaders() {
    // §5.3 receiver rule 3: an existing entry conflicting with a new one (same index, different
    // term) is deleted with all that follow it.
    let mut f = follower_with_log(1, 3, vec![entry(1, 1), entry(2, 1), entry(3, 1)]);
    f.step(msg(
        2,
        1,
        3,
        MessageBody::Append {
            prev_index: 1,
            prev_term: 1,
            entries: vec![entry(2, 3)],
            commit: 0,
        },
    ))
    .unwrap();
    let persist = {
        let ready = f.ready().unwrap();
        ready.persist.expect("the replacement must be written")
    };
    assert_eq!(persist.write.truncate_from, Some(2));
    f.storage_mut().write(&persist.write).unwrap();
    f.persisted(persist.token).unwrap();
    assert_eq!(f.log_entries(1, 3).unwrap(), vec![entry(1, 1), entry(2, 3)]);
    assert_eq!(f.status().last_index, 2);
}

#[test]
fn follower_acknowledges_entries_only_after_they_are_durable() {
    let mut f = node(1, &[1, 2, 3], no_pre_vote);
    f.step(msg(
        2,
        1,
        1,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![entry(1, 1)],
            commit: 0,
        },
    ))
    .unwrap();
    let ready = f.ready().unwrap();
    assert!(ready.messages.is_empty());
    let persist = ready.persist.unwrap();
    assert_eq!(persist.write.entries, vec![entry(1, 1)]);
    // The driver may poll again before the write completes: still nothing to send.
    assert!(f.ready().unwrap().messages.is_empty());
    f.storage_mut().write(&persist.write).unwrap();
    f.persisted(persist.token).unwrap();
    let ready = f.ready().unwrap();
    assert!(matches!(
        ready.messages[..],
        [Message {
            body: MessageBody::AppendResponse {
                reject: false,
                index: 1,
                ..
            },
            ..
        }]
    ));
}

#[test]
fn leader_sends_appends_while_its_own_write_is_in_flight_and_commits_on_followers_acks() {
    // Thesis §10.2.1: the leader writes to its disk in parallel with replicating; an entry may
    // commit on the followers' durable copies before the leader's own write finishes.
    let mut cluster = Cluster::with_config(&[1, 2, 3], no_pre_vote);
    cluster.elect(1);
    let proposed = cluster.node(1).propose(data("p")).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    let appends: Vec<Message> = ready.messages;
    assert_eq!(
        appends.len(),
        2,
        "both followers get the entry before the leader's write is confirmed"
    );
    let persist = ready.persist.expect("the leader's own write");
    for m in appends {
        let to = m.to;
        cluster.node(to).step(m).unwrap();
        for reply in messages_of(cluster.node(to)) {
            cluster.node(1).step(reply).unwrap();
        }
    }
    assert_eq!(
        cluster.node(1).status().commit,
        proposed.index,
        "committed by the two followers"
    );
    assert!(cluster.node(1).status().persisted_index < proposed.index);
    cluster.node(1).storage_mut().write(&persist.write).unwrap();
    cluster.node(1).persisted(persist.token).unwrap();
    assert_eq!(cluster.node(1).status().persisted_index, proposed.index);
}

#[test]
fn leader_counts_itself_toward_a_quorum_only_for_durable_entries() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], no_pre_vote);
    cluster.elect(1);
    let proposed = cluster.node(1).propose(data("p")).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    let persist = ready.persist.unwrap();
    // Only node 2 acknowledges; the leader's write is still in flight: 1 of 3 is not a quorum.
    let to_two = ready.messages.into_iter().find(|m| m.to == 2).unwrap();
    cluster.node(2).step(to_two).unwrap();
    for reply in messages_of(cluster.node(2)) {
        cluster.node(1).step(reply).unwrap();
    }
    assert!(cluster.node(1).status().commit < proposed.index);
    cluster.node(1).storage_mut().write(&persist.write).unwrap();
    cluster.node(1).persisted(persist.token).unwrap();
    assert_eq!(
        cluster.node(1).status().commit,
        proposed.index,
        "leader + node 2 make a quorum"
    );
}

/// Builds Figure 8's hazard: leader 1 of term 3 holds an entry of term 1 at index 2 that only
/// it and node 2 store, plus its own no-op at index 3. Node 2 then acknowledges index 2 only.
fn figure_8_leader(bug: Option<PlantedBug>) -> Raft<MemStorage> {
    let mut leader = node(1, &[1, 2, 3], |c| {
        no_pre_vote(c);
        c.planted_bug = bug;
    });
    leader
        .step(msg(
            2,
            1,
            1,
            MessageBody::Append {
                prev_index: 0,
                prev_term: 0,
                entries: vec![entry(1, 1), entry(2, 1)],
                commit: 1,
            },
        ))
        .unwrap();
    messages_of(&mut leader);
    // Term 2 passes elsewhere; node 1 wins term 3 with node 3's vote.
    leader
        .step(msg(
            3,
            1,
            2,
            MessageBody::Heartbeat {
                commit: 1,
                read_round: 0,
            },
        ))
        .unwrap();
    messages_of(&mut leader);
    leader.campaign().unwrap();
    messages_of(&mut leader);
    leader
        .step(msg(3, 1, 3, MessageBody::VoteResponse { granted: true }))
        .unwrap();
    assert_eq!(leader.role(), Role::Leader);
    messages_of(&mut leader);
    let expected_last = if bug.is_none() { 3 } else { 2 }; // the planted bug also skips the no-op
    assert_eq!(leader.status().last_index, expected_last);
    leader
        .step(msg(
            2,
            1,
            3,
            MessageBody::AppendResponse {
                index: 2,
                reject: false,
                hint_index: 0,
                hint_term: 0,
            },
        ))
        .unwrap();
    messages_of(&mut leader);
    leader
}

#[test]
fn leader_only_commits_entries_from_its_current_term() {
    // §5.4.2: index 2 (term 1) is on a majority (1 and 2) but must not be committed by counting.
    let leader = figure_8_leader(None);
    assert_eq!(leader.status().commit, 1);
}

#[test]
fn planted_commit_previous_term_by_counting_commits_the_figure_8_entry() {
    let leader = figure_8_leader(Some(PlantedBug::CommitPreviousTermByCounting));
    assert_eq!(leader.status().commit, 2, "the knob really plants the bug");
}

/// Figure 8 played out on three nodes with the planted bug: an entry committed by counting
/// replicas of an earlier term is later contradicted by a leader elected without it.
#[test]
fn planted_commit_previous_term_by_counting_breaks_leader_completeness() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |c| {
        no_pre_vote(c);
        c.planted_bug = Some(PlantedBug::CommitPreviousTermByCounting);
    });
    cluster.elect(1); // term 1
    cluster.propose(1, "a"); // index 1, everywhere
    cluster.isolate(1);
    cluster.propose(1, "old"); // index 2, term 1, only on node 1
    cluster.crash(1);
    cluster.heal();
    cluster.elect(3); // term 2
    cluster.isolate(3);
    cluster.propose(3, "new"); // index 2, term 2, only on node 3
    cluster.crash(3);
    cluster.heal();
    cluster.restart(1);
    cluster.elect_eventually(1); // term 3, with node 2's vote; replicates "old" to node 2 and counts it committed
    cluster.tick(1);
    assert_eq!(
        cluster.applied_data(1),
        vec!["a".to_string(), "old".to_string()]
    );
    cluster.crash(1);
    cluster.restart(3);
    cluster.elect_eventually(3); // term 4: node 2 votes for the log ending in term 2 — "old" is not in it
    let entry_2 = cluster.node(3).log_entries(2, 3).unwrap();
    assert_eq!(
        entry_2[0].payload,
        EntryPayload::Data(data("new")),
        "leader completeness is broken"
    );
    cluster.tick(2);
    // State machine safety is gone too: nodes applied different commands at index 2.
    assert_eq!(
        cluster.applied_data(2),
        vec!["a".to_string(), "old".to_string()]
    );
    assert_eq!(
        cluster.applied_data(3),
        vec!["a".to_string(), "new".to_string()]
    );
}

#[test]
fn a_lone_voter_commits_after_its_own_write() {
    let mut n = node(1, &[1], |_| {});
    n.campaign().unwrap();
    messages_of(&mut n);
    assert_eq!(n.role(), Role::Leader);
    let proposed = n.propose(data("solo")).unwrap();
    let mut applied = Vec::new();
    common::drain(&mut n, &mut applied, &mut Vec::new());
    assert_eq!(applied.last().map(|e| e.index), Some(proposed.index));
}

#[test]
fn append_messages_respect_the_maximum_message_size() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |c| {
        no_pre_vote(c);
        c.max_msg_bytes = 100;
    });
    cluster.elect(1);
    cluster.isolate(2);
    for _ in 0..10 {
        cluster.node(1).propose(Bytes::from(vec![7u8; 40])).unwrap();
    }
    cluster.stabilize();
    cluster.heal();
    cluster.delivered.clear();
    cluster.tick(3);
    let largest = cluster
        .delivered
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append { entries, .. } => {
                Some(entries.iter().map(|e| e.payload_size()).sum::<u64>())
            }
            _ => None,
        })
        .max()
        .unwrap();
    assert!(largest <= 100, "an append carried {largest} bytes");
    assert_eq!(
        cluster.applied_data(2).len(),
        10,
        "node 2 caught up through several appends"
    );
}

#[test]
fn replicate_state_keeps_at_most_max_inflight_appends_outstanding() {
    let mut cluster = Cluster::with_config(&[1, 2], |c| {
        no_pre_vote(c);
        c.max_inflight = 3;
    });
    cluster.elect(1);
    cluster.propose(1, "warm up"); // node 2 now in replicate state
    let mut sent = 0;
    for i in 0..10 {
        cluster.node(1).propose(data(&format!("p{i}"))).unwrap();
        let ready = cluster.node(1).ready().unwrap();
        sent += ready
            .messages
            .iter()
            .filter(|m| matches!(m.body, MessageBody::Append { .. }))
            .count();
        if let Some(persist) = ready.persist {
            cluster.node(1).storage_mut().write(&persist.write).unwrap();
            cluster.node(1).persisted(persist.token).unwrap();
        }
    }
    assert_eq!(
        sent, 3,
        "appends stop at the inflight window until acknowledgements arrive"
    );
}

#[test]
fn proposals_beyond_the_uncommitted_byte_limit_are_refused() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |c| {
        no_pre_vote(c);
        c.max_uncommitted_bytes = 100;
    });
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node(1).propose(Bytes::from(vec![0u8; 60])).unwrap();
    let error = cluster
        .node(1)
        .propose(Bytes::from(vec![0u8; 60]))
        .unwrap_err();
    assert!(
        matches!(error, Error::UncommittedLimit { limit: 100, .. }),
        "{error}"
    );
}

// ---------------------------------------------------------------- misuse gets typed errors

#[test]
fn proposal_to_a_follower_is_refused_with_the_leader_hint() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let error = cluster.node(2).propose(data("x")).unwrap_err();
    assert_eq!(error, Error::NotLeader { leader: Some(1) });
}

#[test]
fn read_on_a_node_without_a_leader_is_refused() {
    let mut n = node(1, &[1, 2, 3], |_| {});
    assert_eq!(n.read_index(7).unwrap_err(), Error::NoLeader);
}

#[test]
fn a_second_membership_change_while_one_is_pending_is_refused() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(1); // keep the first change from committing
    cluster
        .node(1)
        .propose_conf_change(ConfChange::Single(MemberChange::AddLearner(4)))
        .unwrap();
    let error = cluster
        .node(1)
        .propose_conf_change(ConfChange::Single(MemberChange::AddLearner(5)))
        .unwrap_err();
    assert!(matches!(error, Error::ConfChangePending { .. }), "{error}");
}

#[test]
fn a_single_server_change_during_joint_consensus_is_refused() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.partition(&[1], &[2, 3]);
    cluster
        .node(1)
        .propose_conf_change(ConfChange::EnterJoint(vec![MemberChange::AddVoter(4)]))
        .unwrap();
    // Applying the change locally needs a commit; check the validation path directly instead.
    let error = cluster
        .node(1)
        .propose_conf_change(ConfChange::LeaveJoint)
        .unwrap_err();
    assert!(matches!(
        error,
        Error::ConfChangePending { .. } | Error::InvalidConfChange { .. }
    ));
}

#[test]
fn persist_tokens_must_be_confirmed_in_the_order_issued() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], no_pre_vote);
    cluster.elect(1);
    cluster.node(1).propose(data("a")).unwrap();
    let first = cluster.node(1).ready().unwrap().persist.unwrap();
    cluster.node(1).propose(data("b")).unwrap();
    let second = cluster.node(1).ready().unwrap().persist.unwrap();
    let error = cluster.node(1).persisted(second.token).unwrap_err();
    assert!(matches!(error, Error::PersistOutOfOrder { .. }), "{error}");
    cluster.node(1).persisted(first.token).unwrap();
}

#[test]
fn a_message_for_another_node_is_refused() {
    let mut n = node(1, &[1, 2, 3], |_| {});
    let error = n.step(msg(2, 3, 1, MessageBody::TimeoutNow)).unwrap_err();
    assert_eq!(error, Error::MisroutedMessage { to: 3, me: 1 });
}

#[test]
fn lease_reads_require_check_quorum() {
    let mut config = Config::new(1);
    config.read_mode = ReadMode::LeaseBased;
    config.check_quorum = false;
    assert!(matches!(config.validate(), Err(Error::InvalidConfig(_))));
}

// ---------------------------------------------------------------- reads (thesis §6.4)

#[test]
fn read_index_is_served_only_after_a_quorum_confirms_leadership() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "v");
    let commit = cluster.node(1).status().commit;
    cluster.node(1).read_index(42).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    assert!(ready.reads.is_empty(), "not before the heartbeat round");
    let heartbeats = ready
        .messages
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Heartbeat { .. }))
        .count();
    assert_eq!(heartbeats, 2);
    cluster.queue.extend(ready.messages);
    cluster.stabilize();
    assert_eq!(
        cluster.reads[&1],
        vec![consensus_core::ReadState {
            ctx: 42,
            index: commit
        }]
    );
}

#[test]
fn a_partitioned_leader_cannot_serve_a_read_index_read() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node(1).read_index(1).unwrap();
    cluster.stabilize();
    assert!(cluster.reads[&1].is_empty());
}

#[test]
fn planted_read_without_leadership_check_serves_a_partitioned_leader() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |c| {
        c.planted_bug = Some(PlantedBug::ReadWithoutLeadershipCheck)
    });
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node(1).read_index(1).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.reads[&1].len(), 1, "the knob really plants the bug");
}

#[test]
fn a_new_leader_serves_reads_only_after_committing_an_entry_of_its_term() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.node(1).campaign().unwrap();
    // Let the election finish but hold back the no-op's acknowledgements.
    for _ in 0..20 {
        let out = messages_of(cluster.node(1));
        let mut replies = Vec::new();
        for m in out {
            if matches!(m.body, MessageBody::Append { .. }) {
                continue;
            }
            let to = m.to;
            cluster.node(to).step(m).unwrap();
            replies.extend(messages_of(cluster.node(to)));
        }
        for r in replies {
            cluster.node(1).step(r).unwrap();
        }
    }
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).status().commit, 0);
    cluster.node(1).read_index(9).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    assert!(ready.reads.is_empty());
    cluster.queue.extend(ready.messages);
    if let Some(p) = ready.persist {
        cluster.node(1).storage_mut().write(&p.write).unwrap();
        cluster.node(1).persisted(p.token).unwrap();
    }
    cluster.stabilize();
    assert!(
        cluster.reads[&1].is_empty(),
        "the no-op has not committed yet"
    );
    cluster.tick(2); // heartbeats restart the held-back replication
    let reads = &cluster.reads[&1];
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].index, cluster.nodes[&1].status().commit);
    assert!(
        reads[0].index >= 1,
        "read index covers the new term's no-op"
    );
}

#[test]
fn follower_read_index_asks_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "v");
    cluster.node(3).read_index(5).unwrap();
    cluster.stabilize();
    let commit = cluster.node(1).status().commit;
    assert_eq!(
        cluster.reads[&3],
        vec![consensus_core::ReadState {
            ctx: 5,
            index: commit
        }]
    );
}

#[test]
fn lease_read_is_served_without_a_round_trip() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |c| c.read_mode = ReadMode::LeaseBased);
    cluster.elect(1);
    cluster.propose(1, "v");
    cluster.node(1).read_index(3).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    assert_eq!(ready.reads.len(), 1);
    assert!(ready.messages.is_empty());
}

#[test]
fn a_lease_lapses_once_the_quorums_acknowledged_heartbeats_are_an_election_timeout_old() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |c| c.read_mode = ReadMode::LeaseBased);
    cluster.elect(1);
    cluster.propose(1, "v");
    cluster.isolate(1);
    // Followers that heard the leader refuse votes for an election timeout from then; the
    // leader, counting from when it sent, stops trusting its lease before that.
    let election_tick = cluster.node(1).config().election_tick as usize;
    for _ in 0..election_tick - 2 {
        cluster.node(1).tick();
    }
    let _ = cluster.node(1).ready().unwrap();
    cluster.node(1).read_index(9).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    assert!(
        ready.reads.is_empty(),
        "an expired lease must not serve reads"
    );
    assert!(ready
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { .. })));
}

#[test]
fn a_restarted_member_of_a_lease_group_waits_an_election_timeout_before_voting() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |c| c.read_mode = ReadMode::LeaseBased);
    cluster.elect(1);
    cluster.propose(1, "v");
    cluster.crash(2);
    cluster.restart(2);
    // It may have acknowledged the leader's lease just before crashing: no vote for a while.
    let term = cluster.node(2).term();
    let vote = Message {
        from: 3,
        to: 2,
        term: term + 1,
        body: MessageBody::Vote {
            last_index: 100,
            last_term: term,
            leader_transfer: false,
        },
    };
    cluster.node(2).step(vote.clone()).unwrap();
    assert_eq!(cluster.node(2).term(), term, "the request is ignored");
    let election_tick = cluster.node(2).config().election_tick;
    for _ in 0..election_tick {
        cluster.node(2).tick();
    }
    cluster.node(2).step(vote).unwrap();
    assert_eq!(
        cluster.node(2).term(),
        term + 1,
        "after the quiet period it votes"
    );
}

#[test]
fn a_leader_that_sent_timeout_now_no_longer_serves_lease_reads() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |c| c.read_mode = ReadMode::LeaseBased);
    cluster.elect(1);
    cluster.propose(1, "v");
    cluster.isolate(2);
    cluster.node(1).transfer_leader(3).unwrap(); // 3 is up to date: TimeoutNow goes out at once
    let ready = cluster.node(1).ready().unwrap();
    assert!(ready
        .messages
        .iter()
        .any(|m| m.body == MessageBody::TimeoutNow));
    cluster.node(1).read_index(4).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    assert!(
        ready.reads.is_empty(),
        "a transfer may elect 3 before the lease ends"
    );
}

// ---------------------------------------------------------------- leader transfer, learners, membership

#[test]
fn leader_transfer_hands_leadership_to_an_up_to_date_follower() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.node(1).transfer_leader(2).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(2));
    assert_eq!(cluster.node(1).role(), Role::Follower);
}

#[test]
fn proposals_are_refused_during_a_leader_transfer() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.propose(1, "a");
    cluster.node(1).transfer_leader(3).unwrap();
    assert_eq!(
        cluster.node(1).propose(data("b")).unwrap_err(),
        Error::TransferInProgress { to: 3 }
    );
}

#[test]
fn a_transfer_that_does_not_finish_within_an_election_timeout_is_abandoned() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.node(1).transfer_leader(3).unwrap();
    let election_tick = cluster.node(1).config().election_tick as usize;
    cluster.tick(election_tick);
    assert_eq!(cluster.leader(), Some(1));
    cluster.node(1).propose(data("after")).unwrap();
}

#[test]
fn a_learner_receives_the_log_but_never_votes_or_campaigns() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.add_blank_node(4);
    cluster.elect(1);
    cluster
        .node(1)
        .propose_conf_change(ConfChange::Single(MemberChange::AddLearner(4)))
        .unwrap();
    cluster.stabilize();
    cluster.propose(1, "to the learner too");
    cluster.tick(3);
    assert_eq!(
        cluster.applied_data(4),
        vec!["to the learner too".to_string()]
    );
    assert!(cluster.node(4).conf_state().learners.contains(&4));
    // It never campaigns, however long it waits alone.
    cluster.isolate(4);
    cluster.tick(100);
    assert_eq!(cluster.node(4).role(), Role::Follower);
    // Its acknowledgements do not count towards commitment: with 2 and 3 down, nothing commits.
    cluster.heal();
    cluster.partition(&[1, 4], &[2, 3]);
    let proposed = cluster
        .node(1)
        .propose(data("needs a voter quorum"))
        .unwrap();
    cluster.stabilize();
    assert!(cluster.node(1).status().commit < proposed.index);
}

#[test]
fn a_removed_leader_steps_down() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster
        .node(1)
        .propose_conf_change(ConfChange::Single(MemberChange::Remove(1)))
        .unwrap();
    cluster.stabilize();
    assert_ne!(cluster.node(1).role(), Role::Leader);
    let election_tick = cluster.node(2).config().election_tick as usize;
    cluster.tick(3 * election_tick);
    let leader = cluster
        .leader()
        .expect("the remaining voters elect a leader");
    assert_ne!(leader, 1);
    cluster.propose(leader, "after removal");
    assert_eq!(
        cluster.applied_data(2).last().map(String::as_str),
        Some("after removal")
    );
}

#[test]
fn joint_consensus_replaces_a_voter_and_leaves_the_joint_configuration_by_itself() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.add_blank_node(4);
    cluster.elect(1);
    cluster
        .node(1)
        .propose_conf_change(ConfChange::EnterJoint(vec![
            MemberChange::AddVoter(4),
            MemberChange::Remove(3),
        ]))
        .unwrap();
    cluster.stabilize();
    cluster.tick(2);
    let conf = cluster.node(1).conf_state().clone();
    assert!(
        !conf.is_joint(),
        "left joint consensus automatically: {conf:?}"
    );
    assert_eq!(conf.voters, [1, 2, 4].into());
    assert_eq!(cluster.node(4).conf_state(), &conf);
    cluster.propose(1, "new config");
    assert_eq!(
        cluster.applied_data(4).last().map(String::as_str),
        Some("new config")
    );
}

// ---------------------------------------------------------------- restart, wire format

#[test]
fn a_restarted_node_recovers_term_vote_and_log_from_storage() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "durable");
    cluster.tick(2);
    let before = cluster.node(2).status();
    cluster.crash(2);
    cluster.restart(2);
    let after = cluster.node(2).status();
    assert_eq!(
        (after.term, after.last_index),
        (before.term, before.last_index)
    );
    assert_eq!(after.commit, before.commit);
    cluster.tick(2);
    assert_eq!(
        cluster.applied_data(2),
        vec!["durable".to_string()],
        "re-applied from the log"
    );
}

#[test]
fn what_was_not_confirmed_durable_is_lost_in_a_crash_and_nothing_else() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], no_pre_vote);
    cluster.elect(1);
    cluster.propose(1, "kept");
    cluster.node(1).propose(data("lost")).unwrap();
    let _unwritten = cluster.node(1).ready().unwrap(); // never persisted
    cluster.crash(1);
    cluster.restart(1);
    let status = cluster.node(1).status();
    let entries = cluster
        .node(1)
        .log_entries(1, status.last_index + 1)
        .unwrap();
    assert!(entries
        .iter()
        .all(|e| e.payload != EntryPayload::Data(data("lost"))));
    assert!(entries
        .iter()
        .any(|e| e.payload == EntryPayload::Data(data("kept"))));
}

#[test]
fn messages_and_entries_round_trip_through_postcard() {
    let message = msg(
        1,
        2,
        3,
        MessageBody::Append {
            prev_index: 4,
            prev_term: 2,
            entries: vec![
                entry(5, 3),
                Entry {
                    term: 3,
                    index: 6,
                    payload: EntryPayload::ConfChange(ConfChange::EnterJoint(vec![
                        MemberChange::AddVoter(9),
                    ])),
                },
            ],
            commit: 4,
        },
    );
    let bytes = postcard::to_allocvec(&message).unwrap();
    let back: Message = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, message);
}

/// Storage that fails every read of entries (a disk that went away).
struct FailingReads(MemStorage);

impl consensus_core::Storage for FailingReads {
    type HardState = consensus_core::HardState;
    fn hard_state(&self) -> consensus_core::HardState {
        consensus_core::Storage::hard_state(&self.0)
    }
    fn snapshot_meta(&self) -> consensus_core::SnapshotMeta {
        consensus_core::Storage::snapshot_meta(&self.0)
    }
    fn snapshot(&self) -> Result<consensus_core::Snapshot, consensus_core::StorageError> {
        consensus_core::Storage::snapshot(&self.0)
    }
    fn first_index(&self) -> u64 {
        consensus_core::Storage::first_index(&self.0)
    }
    fn last_index(&self) -> u64 {
        consensus_core::Storage::last_index(&self.0)
    }
    fn term(&self, index: u64) -> Result<u64, consensus_core::StorageError> {
        consensus_core::Storage::term(&self.0, index)
    }
    fn entries(
        &self,
        _: u64,
        _: u64,
        _: u64,
        _: &mut Vec<Entry>,
    ) -> Result<(), consensus_core::StorageError> {
        Err(consensus_core::StorageError::Other("disk gone".into()))
    }
}

#[test]
fn a_storage_failure_stops_the_engine_with_an_error_instead_of_spinning() {
    // A restarted node whose committed entries must be read back from storage.
    let mut storage = MemStorage::new_with_conf(consensus_core::ConfState::with_voters([1]));
    storage
        .write(&consensus_core::Write {
            snapshot: None,
            truncate_from: Some(1),
            entries: vec![Entry {
                term: 1,
                index: 1,
                payload: EntryPayload::Data(data("x")),
            }]
            .into(),
            hard_state: Some(consensus_core::HardState {
                term: 1,
                vote: 1,
                commit: 1,
            }),
            sync: true,
        })
        .unwrap();
    let mut raft = Raft::new(
        Config::new(1),
        FailingReads(storage),
        consensus_core::seeded_rng(1),
    )
    .unwrap();
    let mut errors = 0;
    for _ in 0..10 {
        if !raft.has_ready() {
            break;
        }
        match raft.ready() {
            Ok(_) => {}
            Err(Error::Stopped(_)) => {
                errors += 1;
                break; // what a driver does: stop this member
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(errors, 1, "the failure is reported by ready()");
    // Asking again keeps reporting it; it never hands out a silent empty Ready.
    assert!(matches!(raft.ready(), Err(Error::Stopped(_))));
}
