//! Behaviour of a peer cluster, sentence by sentence of the issue.

mod common;

use common::{context, values, Cluster};
use replication_peer::{
    Config, CrdtKind, CrdtOp, CrdtValue, Limits, Message, Peer, Policy, PolicyTable, Request,
    RequestError, Response, StepError, VersionVector,
};

fn put(key: &str, value: &str, context: VersionVector, w: usize) -> Request {
    Request::Put {
        key: key.into(),
        value: value.into(),
        context,
        w,
    }
}

fn get(key: &str, r: usize) -> Request {
    Request::Get { key: key.into(), r }
}

fn quiet(c: &mut Config) {
    // Keep background work out of the way unless a test advances time.
    c.anti_entropy_interval_ms = 1_000_000;
    c.anti_entropy_on_return = false;
    c.gc_interval_ms = 1_000_000;
    c.policies = PolicyTable::new(Policy::Siblings)
        .with_prefix("l/", Policy::Lww)
        .with_prefix("c/", Policy::Crdt(CrdtKind::Counter))
        .with_prefix("o/", Policy::Crdt(CrdtKind::OrSet));
}

#[test]
fn concurrent_writes_keep_siblings_and_a_write_naming_the_read_context_resolves_them() {
    let mut c = Cluster::new(&[1, 2, 3], quiet);
    c.cut.insert(3);
    c.request(1, put("k", "from-1", VersionVector::new(), 1));
    c.cut.clear();
    c.cut.insert(1);
    c.request(3, put("k", "from-3", VersionVector::new(), 1));
    c.cut.clear();
    let read = c.request(2, get("k", 3));
    let mut v = values(c.reply(read).unwrap());
    v.sort();
    assert_eq!(v, [b"from-1".to_vec(), b"from-3".to_vec()]);
    let ctx = context(c.reply(read).unwrap());
    c.request(2, put("k", "resolved", ctx, 3));
    let after = c.request(1, get("k", 3));
    assert_eq!(values(c.reply(after).unwrap()), [b"resolved".to_vec()]);
}

#[test]
fn lww_keeps_the_latest_of_concurrent_writes_but_a_write_that_saw_another_always_wins() {
    let mut c = Cluster::new(&[1, 2, 3], quiet);
    c.advance(100, 100);
    c.cut.insert(3);
    c.request(1, put("l/k", "early", VersionVector::new(), 1));
    c.cut.clear();
    c.cut.insert(1);
    c.advance(50, 50);
    c.request(3, put("l/k", "late", VersionVector::new(), 1));
    c.cut.clear();
    let read = c.request(2, get("l/k", 3));
    assert_eq!(
        values(c.reply(read).unwrap()),
        [b"late".to_vec()],
        "concurrent: larger HLC wins"
    );
    // Node 1's clock is now far behind the "late" write's, yet a write that read it wins.
    let ctx = context(c.reply(read).unwrap());
    c.request(1, put("l/k", "after-reading", ctx, 3));
    let read = c.request(3, get("l/k", 3));
    assert_eq!(values(c.reply(read).unwrap()), [b"after-reading".to_vec()]);
}

#[test]
fn crdt_counters_merge_increments_made_on_every_replica_while_partitioned() {
    let mut c = Cluster::new(&[1, 2, 3], quiet);
    for (node, by) in [(1, 5), (2, -2), (3, 10)] {
        c.cut = [1, 2, 3].into_iter().filter(|&n| n != node).collect();
        c.request(
            node,
            Request::Update {
                key: "c/n".into(),
                op: CrdtOp::Increment(by),
                w: 1,
            },
        );
    }
    c.cut.clear();
    let read = c.request(1, get("c/n", 3));
    match c.reply(read).unwrap() {
        Ok(Response::Read { crdt, .. }) => assert_eq!(crdt, &Some(CrdtValue::Counter(13))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_requests_are_typed_errors() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        quiet(cfg);
        cfg.limits = Limits {
            max_key_bytes: 8,
            max_value_bytes: 4,
            max_siblings: 2,
        };
    });
    let cases = [
        (put("k", "12345", VersionVector::new(), 1), "value"),
        (put("123456789", "v", VersionVector::new(), 1), "key"),
        (put("k", "v", VersionVector::new(), 4), "quorum"),
        (put("k", "v", VersionVector::new(), 0), "quorum"),
        (put("c/n", "v", VersionVector::new(), 1), "policy"),
        (put("k", "v", [(1, 99)].into_iter().collect(), 1), "future"),
    ];
    for (req, what) in cases {
        let id = c.request(1, req);
        let e = c.reply(id).unwrap().clone().unwrap_err();
        let ok = match what {
            "value" => matches!(e, RequestError::ValueTooLarge { len: 5, max: 4 }),
            "key" => matches!(e, RequestError::KeyTooLarge { .. }),
            "quorum" => matches!(e, RequestError::BadQuorum { replicas: 3, .. }),
            "policy" => matches!(e, RequestError::WrongPolicy { .. }),
            _ => matches!(
                e,
                RequestError::ContextFromFuture {
                    node: 1,
                    counter: 99,
                    ..
                }
            ),
        };
        assert!(ok, "{what}: {e:?}");
    }
    // Three blind writes from three coordinators: the third leaves 3 siblings > 2.
    c.request(1, put("s", "a", VersionVector::new(), 3));
    c.cut.insert(1);
    c.request(2, put("s", "b", VersionVector::new(), 1));
    let third = c.request(2, put("s", "c", VersionVector::new(), 1));
    assert!(matches!(
        c.reply(third),
        Some(Err(RequestError::TooManySiblings { count: 3, max: 2 }))
    ));
}

#[test]
fn a_node_that_does_not_replicate_a_key_names_the_replicas() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], quiet);
    let ring = c.peers[&1].ring().clone();
    let key = (0..100u32)
        .map(|i| format!("k{i}"))
        .find(|k| !ring.replicas(k.as_bytes()).contains(&1))
        .unwrap();
    let id = c.request(1, get(&key, 1));
    match c.reply(id).unwrap() {
        Err(RequestError::NotAReplica { replicas }) => {
            assert_eq!(replicas.as_slice(), ring.replicas(key.as_bytes()))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_write_is_acknowledged_only_once_w_replicas_hold_it_durably() {
    let mut c = Cluster::new(&[1, 2, 3], quiet);
    c.hold_disk.insert(2);
    c.hold_disk.insert(3);
    let id = c.request(1, put("k", "v", VersionVector::new(), 2));
    assert!(c.reply(id).is_none(), "one durable copy is not W=2");
    c.release_disk(3);
    assert!(matches!(c.reply(id), Some(Ok(Response::Written { .. }))));
}

#[test]
fn the_coordinator_pushes_only_what_it_holds_durably() {
    let mut c = Cluster::new(&[1, 2, 3], quiet);
    c.hold_disk.insert(1);
    c.request(1, put("k", "v", VersionVector::new(), 1));
    assert!(
        !c.sent
            .iter()
            .any(|(_, _, m)| matches!(m, Message::Replicate { .. })),
        "pushed before its own write was durable"
    );
    c.release_disk(1);
    assert_eq!(
        c.sent
            .iter()
            .filter(|(_, _, m)| matches!(m, Message::Replicate { .. }))
            .count(),
        2
    );
}

#[test]
fn hints_are_bounded_and_replayed_when_the_replica_returns() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        quiet(cfg);
        cfg.max_hints_per_peer = 3;
        cfg.hint_retry_ms = 10;
    });
    c.cut.insert(3);
    for i in 0..5 {
        c.request(1, put(&format!("k{i}"), "v", VersionVector::new(), 2));
    }
    let s = c.peers[&1].status();
    assert_eq!(s.hints_pending.get(&3), Some(&3));
    assert_eq!(s.hints_dropped, 2);
    c.cut.clear();
    c.advance(20, 10);
    assert!(c.peers[&1].status().hints_pending.is_empty());
    let held = (0..5)
        .filter(|i| {
            c.peers[&3]
                .local_object(format!("k{i}").as_bytes())
                .is_some()
        })
        .count();
    assert_eq!(held, 3, "the three remembered hints were handed off");
}

#[test]
fn a_replica_that_restarts_behind_is_repaired_by_anti_entropy_as_soon_as_it_is_heard_from() {
    // No hints, no periodic exchange in the test's time: only the return can repair node 3.
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        quiet(cfg);
        cfg.anti_entropy_on_return = true;
        cfg.max_hints_per_peer = 1;
    });
    c.request(1, put("warm", "v", VersionVector::new(), 3));
    c.cut.insert(3);
    for i in 0..20 {
        c.request(1, put(&format!("k{i}"), "v", VersionVector::new(), 2));
    }
    c.cut.clear();
    c.restart(1); // forget the one hint
    c.restart(3);
    // Node 3 speaks (a read of its own), so its peers hear from it after its restart.
    c.request(3, get("warm", 3));
    c.run();
    for i in 0..20 {
        let k = format!("k{i}");
        assert!(
            c.peers[&3].local_object(k.as_bytes()).is_some(),
            "{k} repaired on node 3"
        );
    }
}

#[test]
fn a_read_repairs_the_replicas_that_answered_with_less() {
    let mut c = Cluster::new(&[1, 2, 3], quiet);
    c.cut.insert(3);
    c.request(1, put("k", "v", VersionVector::new(), 2));
    c.cut.clear();
    assert!(c.peers[&3].local_object(b"k").is_none());
    c.request(2, get("k", 1));
    assert_eq!(
        c.peers[&3].local_object(b"k"),
        c.peers[&1].local_object(b"k")
    );
}

#[test]
fn anti_entropy_finds_the_few_differing_keys_and_only_descends_differing_subtrees() {
    let mut c = Cluster::new(&[1, 2], |cfg| {
        quiet(cfg);
        cfg.replication = 2;
        cfg.vnodes = 2;
        cfg.max_hints_per_peer = 1;
    });
    for i in 0..2_000 {
        c.request(1, put(&format!("k{i}"), "v", VersionVector::new(), 2));
    }
    c.cut.insert(2);
    for i in [3, 700, 1999] {
        c.request(1, put(&format!("k{i}"), "changed", VersionVector::new(), 1));
    }
    c.cut.clear();
    // Hints would repair it too: forget them by restarting node 1 (hints are not durable).
    c.restart(1);
    c.sent.clear();
    c.peers.get_mut(&1).unwrap().start_anti_entropy_with(2);
    c.run();
    for i in [3, 700, 1999] {
        let k = format!("k{i}");
        assert_eq!(
            c.peers[&1].local_object(k.as_bytes()),
            c.peers[&2].local_object(k.as_bytes())
        );
    }
    let objects: usize = c
        .sent
        .iter()
        .map(|(_, _, m)| match m {
            Message::AeObjects { objects, .. } => objects.len(),
            _ => 0,
        })
        .sum();
    // Each side sends its copy of each differing key (neither knows which copy dominates).
    assert_eq!(objects, 6, "only the differing objects travel");
    let bytes: usize = c
        .sent
        .iter()
        .map(|(_, _, m)| postcard::to_allocvec(m).unwrap().len())
        .sum();
    let data: usize = (0..2_000).map(|i| format!("k{i}").len() + 80).sum();
    assert!(
        bytes * 10 < data,
        "{bytes} bytes exchanged for {data} of data"
    );
    // Equal trees: one root hash each way, nothing else.
    c.sent.clear();
    c.peers.get_mut(&1).unwrap().start_anti_entropy_with(2);
    c.run();
    assert!(c
        .sent
        .iter()
        .all(|(_, _, m)| matches!(m, Message::AeHashes { level: 0, .. })));
}

#[test]
fn a_tombstone_is_collected_only_once_every_replica_holds_it_and_the_grace_has_passed() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        quiet(cfg);
        cfg.gc_interval_ms = 10;
        cfg.tombstone_grace_ms = 100;
        cfg.hint_retry_ms = 1_000_000;
    });
    let owner = c.peers[&1].ring().replicas(b"k")[0];
    let other = c.peers[&1].ring().replicas(b"k")[2];
    c.request(owner, put("k", "v", VersionVector::new(), 3));
    let read = c.request(owner, get("k", 3));
    let ctx = context(c.reply(read).unwrap());
    c.cut.insert(other);
    c.request(
        owner,
        Request::Delete {
            key: "k".into(),
            context: ctx,
            w: 2,
        },
    );
    c.advance(300, 10);
    assert!(
        c.peers[&owner].local_object(b"k").is_some(),
        "collected while a replica lacks it"
    );
    assert_eq!(
        c.peers[&other].local_object(b"k").map(|o| o.is_tombstone()),
        Some(false)
    );
    c.cut.clear();
    // The replica that missed the delete gets it (read repair), then collection can go on.
    c.request(owner, get("k", 3));
    c.advance(50, 10);
    assert!(
        c.peers[&owner].local_object(b"k").is_some(),
        "collected before the grace period"
    );
    c.advance(200, 10);
    for n in [1, 2, 3] {
        assert!(
            c.peers[&n].local_object(b"k").is_none(),
            "node {n} still holds it"
        );
    }
    let read = c.request(other, get("k", 3));
    assert!(
        values(c.reply(read).unwrap()).is_empty(),
        "the deleted value came back"
    );
}

#[test]
fn dots_are_never_reused_after_a_crash_that_lost_writes() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        quiet(cfg);
        cfg.dot_block = 4;
    });
    c.request(1, put("a", "1", VersionVector::new(), 1));
    c.hold_disk.insert(1);
    c.request(1, put("b", "lost", VersionVector::new(), 1));
    let lost_dot = c.peers[&1].local_object(b"b").unwrap().sibling_dots()[0];
    c.hold_disk.clear();
    c.restart(1);
    assert!(c.peers[&1].local_object(b"b").is_none());
    let id = c.request(1, put("b", "new", VersionVector::new(), 1));
    match c.reply(id).unwrap() {
        Ok(Response::Written { dot, .. }) => assert!(dot.counter > lost_dot.counter),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_peer_messages_are_typed_errors_and_change_nothing() {
    let mut cfg = Config::new(1, vec![1, 2, 3]);
    quiet(&mut cfg);
    let mut p = Peer::new(cfg).unwrap();
    assert_eq!(
        p.step(
            9,
            Message::GcAck {
                key: "k".into(),
                digest: 0
            }
        ),
        Err(StepError::UnknownSender(9))
    );
    let counter = replication_peer::Object::Crdt(replication_peer::Crdt::empty(CrdtKind::Counter));
    assert!(matches!(
        p.step(
            2,
            Message::Repair {
                key: "k".into(),
                object: counter
            }
        ),
        Err(StepError::BadObject { .. })
    ));
    assert!(matches!(
        p.step(
            2,
            Message::AeHashes {
                partition: 0,
                level: 9,
                nodes: vec![(0, 1)]
            }
        ),
        Err(StepError::BadExchange { .. })
    ));
    assert!(matches!(
        p.step(
            2,
            Message::AeHashes {
                partition: 0,
                level: 1,
                nodes: vec![(999, 1)]
            }
        ),
        Err(StepError::BadExchange { .. })
    ));
    assert!(p.local_objects().next().is_none());
    assert_eq!(p.status().refused_messages, 4);
}

#[test]
fn r_plus_w_over_n_reads_the_write_and_r_plus_w_at_most_n_may_not() {
    let mut c = Cluster::new(&[1, 2, 3], quiet);
    c.cut.insert(3);
    let w = c.request(1, put("k", "v", VersionVector::new(), 2));
    assert!(matches!(c.reply(w), Some(Ok(Response::Written { .. }))));
    c.cut.clear();
    // Node 3 missed the push. R = 1 there answers from node 3 alone: stale (R + W = N).
    let stale = c.request(3, get("k", 1));
    assert!(values(c.reply(stale).unwrap()).is_empty());
    // R = 2 (R + W > N) must include a replica that holds the write.
    let mut fresh_cluster = Cluster::new(&[1, 2, 3], quiet);
    fresh_cluster.cut.insert(3);
    fresh_cluster.request(1, put("k", "v", VersionVector::new(), 2));
    fresh_cluster.cut.clear();
    let fresh = fresh_cluster.request(3, get("k", 2));
    assert_eq!(values(fresh_cluster.reply(fresh).unwrap()), [b"v".to_vec()]);
}

#[test]
fn a_write_waiting_for_its_dot_times_out_when_the_disk_stalls() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        quiet(cfg);
        cfg.dot_block = 2;
        cfg.request_timeout_ms = 10;
    });
    c.hold_disk.insert(1);
    let ids: Vec<_> = (0..3)
        .map(|i| c.request(1, put(&format!("k{i}"), "v", VersionVector::new(), 1)))
        .collect();
    c.advance(20, 10);
    for id in ids {
        assert!(
            matches!(c.reply(id), Some(Err(RequestError::Timeout { .. }))),
            "{id:?}"
        );
    }
}
