//! Zab's rules, one test each, through the replica loop ([`Replica`] + [`MemHost`]) on a small
//! deterministic network, or by hand where a test must see what one `ready()` holds.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::*;
use crate::protocol::Envelope;
use crate::replica::{MemHost, Replica};
use crate::storage::MemStorage;
use crate::types::{ConfState, EntryPayload, MemberChange, SnapshotMeta};

type Mem = MemStorage<HardState>;
type Node = (Replica<Zab<Mem>>, MemHost<Message>);

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Data(Bytes::from(format!("e{term}.{index}"))),
    }
}

/// Storage holding `entries` with the given epochs (what a member kept from earlier epochs).
fn storage_with(conf: &ConfState, entries: &[(u64, u64)], current_epoch: u64) -> Mem {
    let mut s = Mem::new_with_conf(conf.clone());
    s.write(&Write {
        snapshot: None,
        truncate_from: None,
        entries: entries.iter().map(|&(t, i)| entry(t, i)).collect(),
        hard_state: Some(HardState {
            accepted_epoch: current_epoch,
            current_epoch,
            commit: 0,
        }),
        sync: true,
    })
    .expect("memory write");
    s
}

fn config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.election_tick = 10;
    c.heartbeat_tick = 1;
    c.resend_tick = 2;
    c
}

struct Net {
    nodes: BTreeMap<NodeId, Node>,
    down: BTreeSet<NodeId>,
    /// Drops messages the filter rejects.
    filter: Box<dyn Fn(&Message) -> bool>,
}

impl Net {
    fn with_storages(storages: Vec<(NodeId, Mem)>) -> Net {
        let nodes = storages
            .into_iter()
            .map(|(id, s)| {
                let zab = Zab::new(config(id), s, crate::seeded_rng(id)).expect("valid config");
                (id, (Replica::new(zab), MemHost::new()))
            })
            .collect();
        Net {
            nodes,
            down: BTreeSet::new(),
            filter: Box::new(|_| true),
        }
    }

    fn new(voters: &[NodeId], learners: &[NodeId]) -> Net {
        let mut conf = ConfState::with_voters(voters.iter().copied());
        conf.learners = learners.iter().copied().collect();
        let all: Vec<NodeId> = voters.iter().chain(learners).copied().collect();
        Net::with_storages(
            all.iter()
                .map(|&id| (id, Mem::new_with_conf(conf.clone())))
                .collect(),
        )
    }

    fn engine(&self, id: NodeId) -> &Zab<Mem> {
        self.nodes[&id].0.engine()
    }

    fn engine_mut(&mut self, id: NodeId) -> &mut Zab<Mem> {
        self.nodes.get_mut(&id).expect("node").0.engine_mut()
    }

    fn applied(&self, id: NodeId) -> &[Entry] {
        &self.nodes[&id].1.applied
    }

    /// Drives every live node and delivers messages until none is left.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut outbox = Vec::new();
            for (id, (replica, host)) in self.nodes.iter_mut() {
                if self.down.contains(id) {
                    host.messages.clear();
                    continue;
                }
                replica.drive(host).expect("drive");
                outbox.append(&mut host.messages);
            }
            if outbox.is_empty() {
                return;
            }
            for m in outbox {
                if self.down.contains(&m.to()) || !(self.filter)(&m) {
                    continue;
                }
                if let Some((replica, _)) = self.nodes.get_mut(&m.to()) {
                    replica.engine_mut().step(m).expect("step");
                }
            }
        }
        panic!("the network never settled");
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for (id, (replica, _)) in self.nodes.iter_mut() {
                if !self.down.contains(id) {
                    replica.engine_mut().tick();
                }
            }
            self.settle();
        }
    }

    /// The established leader (broadcasting), if any.
    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, _)| !self.down.contains(id))
            .find(|(_, (r, _))| r.engine().role() == Role::Leader && !r.engine().is_establishing())
            .map(|(id, _)| *id)
    }

    fn elect(&mut self) -> NodeId {
        for _ in 0..300 {
            self.tick(1);
            if let Some(id) = self.leader() {
                return id;
            }
        }
        panic!("no leader elected");
    }

    fn propose(&mut self, id: NodeId, data: &'static str) -> Proposed {
        let p = self
            .engine_mut(id)
            .propose(Bytes::from_static(data.as_bytes()))
            .expect("the leader takes proposals");
        self.settle();
        p
    }
}

fn conf3() -> ConfState {
    ConfState::with_voters([1, 2, 3])
}

#[test]
fn the_election_picks_the_member_with_the_most_up_to_date_history() {
    // Node 1 holds the longest history; node 3 has the highest id.
    let conf = conf3();
    let mut net = Net::with_storages(vec![
        (1, storage_with(&conf, &[(1, 1), (1, 2), (1, 3)], 1)),
        (2, storage_with(&conf, &[(1, 1)], 1)),
        (3, storage_with(&conf, &[(1, 1), (1, 2)], 1)),
    ]);
    assert_eq!(net.elect(), 1);
    // Its history is everyone's, committed.
    net.tick(5);
    for id in [1, 2, 3] {
        assert_eq!(net.engine(id).status().commit, 3, "node {id}");
        assert_eq!(
            net.engine(id).current_epoch(),
            net.engine(1).current_epoch()
        );
    }
}

#[test]
fn votes_are_ordered_by_current_epoch_before_last_zxid() {
    // Node 3 holds more proposals, of an epoch whose leader never established itself over them:
    // nodes 1 and 2 adopted epoch 2, so they are more up to date.
    let conf = conf3();
    let mut net = Net::with_storages(vec![
        (1, storage_with(&conf, &[(1, 1), (1, 2), (2, 3)], 2)),
        (2, storage_with(&conf, &[(1, 1), (1, 2), (2, 3)], 2)),
        (3, storage_with(&conf, &[(1, 1), (1, 2), (1, 3), (1, 4)], 1)),
    ]);
    let leader = net.elect();
    assert_ne!(leader, 3);
}

#[test]
fn a_member_holding_the_newest_history_leads_even_if_that_history_ends_in_its_demotion() {
    // Voters 1 and 3, learner 2. Leader 3 committed promoting 2 (position 2, not yet applied
    // anywhere) and then proposed demoting itself (position 3, held by it alone). Node 3 holds the
    // most up-to-date history, and its latest view makes it a learner, so it votes blank; node 1
    // needs 3 for a quorum of the membership it applied, and steps aside for 3's better history.
    // Unless 3 takes the votes cast for it (a voter of the membership it applied), nobody ever
    // leads (churn seed 1250). Letting it vote for itself instead cost 3 + 17 liveness failures
    // over seeds 0..4000 + churn 0..3000: after a restart the applied membership lags.
    let mut conf = ConfState::with_voters([1, 3]);
    conf.learners.insert(2);
    let change = |index, change| Entry {
        term: 1,
        index,
        payload: EntryPayload::ConfChange(ConfChange::Single(change)),
    };
    let history = |n: usize| {
        let all = [
            entry(1, 1),
            change(2, MemberChange::AddVoter(2)),
            change(3, MemberChange::AddLearner(3)),
        ];
        let mut s = Mem::new_with_conf(conf.clone());
        s.write(&Write {
            snapshot: None,
            truncate_from: None,
            entries: all[..n].to_vec().into(),
            hard_state: Some(HardState {
                accepted_epoch: 1,
                current_epoch: 1,
                commit: 0,
            }),
            sync: true,
        })
        .expect("memory write");
        s
    };
    let mut net = Net::with_storages(vec![(1, history(2)), (2, history(1)), (3, history(3))]);
    let leader = net.elect();
    let proposed = net.propose(leader, "after");
    net.tick(5);
    for id in [1, 2, 3] {
        let engine = net.engine(id);
        assert!(
            engine.status().commit >= proposed.index,
            "node {id} committed the new proposal"
        );
        assert_eq!(
            engine.log_term(3),
            net.engine(leader).log_term(3),
            "node {id}"
        );
        assert_eq!(engine.conf_state(), net.engine(leader).conf_state());
    }
}

#[test]
fn trunc_removes_proposals_the_new_leader_never_saw() {
    let conf = conf3();
    let mut net = Net::with_storages(vec![
        (1, storage_with(&conf, &[(1, 1), (1, 2), (2, 3)], 2)),
        (2, storage_with(&conf, &[(1, 1), (1, 2), (2, 3)], 2)),
        (3, storage_with(&conf, &[(1, 1), (1, 2), (1, 3), (1, 4)], 1)),
    ]);
    let leader = net.elect();
    net.tick(5);
    let s3 = net.engine(3).storage();
    assert_eq!(s3.last_index(), 3, "position 4 was truncated");
    assert_eq!(s3.term(3), Ok(2), "position 3 holds the leader's proposal");
    assert_eq!(
        net.engine(3).current_epoch(),
        net.engine(leader).current_epoch()
    );
}

#[test]
fn diff_sends_a_lagging_follower_the_missing_proposals() {
    let conf = conf3();
    let mut net = Net::with_storages(vec![
        (
            1,
            storage_with(&conf, &[(1, 1), (1, 2), (1, 3), (1, 4), (1, 5)], 1),
        ),
        (
            2,
            storage_with(&conf, &[(1, 1), (1, 2), (1, 3), (1, 4), (1, 5)], 1),
        ),
        (3, storage_with(&conf, &[(1, 1), (1, 2)], 1)),
    ]);
    let leader = net.elect();
    assert_ne!(leader, 3);
    net.tick(5);
    let got: Vec<u64> = net
        .engine(3)
        .storage()
        .stored_entries()
        .map(|e| e.index)
        .collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    assert_eq!(net.applied(3).len(), 5);
}

#[test]
fn snap_brings_a_follower_behind_the_leaders_compaction() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    let leader = net.elect();
    let behind = if leader == 3 { 2 } else { 3 };
    net.down.insert(behind);
    for _ in 0..6 {
        net.propose(leader, "x");
    }
    net.tick(3);
    let applied = net.engine(leader).status().applied;
    assert!(applied >= 6);
    let conf = net.engine(leader).status().conf_state;
    net.engine_mut(leader)
        .storage_mut()
        .compact(applied, conf, Bytes::from_static(b"state"))
        .expect("compact");
    let saw_bulk = std::rc::Rc::new(std::cell::Cell::new(false));
    let seen = saw_bulk.clone();
    net.filter = Box::new(move |m| {
        if m.is_bulk() {
            seen.set(true);
        }
        true
    });
    net.down.remove(&behind);
    net.tick(40);
    assert!(saw_bulk.get(), "the snapshot travels as a bulk message");
    let meta: SnapshotMeta = net.engine(behind).storage().snapshot_meta();
    assert!(meta.index >= applied, "snapshot {} < {applied}", meta.index);
    assert_eq!(
        net.engine(behind).status().applied,
        net.engine(leader).status().applied
    );
}

#[test]
fn the_leader_proposes_nothing_until_a_quorum_acked_newleader() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    // Every ACK of NEWLEADER is lost.
    net.filter = Box::new(|m| {
        !matches!(
            m.body,
            MessageBody::Ack {
                new_leader: true,
                ..
            }
        )
    });
    let mut establishing = None;
    for _ in 0..200 {
        net.tick(1);
        if let Some((&id, _)) = net
            .nodes
            .iter()
            .find(|(_, (r, _))| r.engine().role() == Role::Leader)
        {
            establishing = Some(id);
            break;
        }
    }
    let id = establishing.expect("a leader reaches synchronisation");
    assert!(net.engine(id).is_establishing());
    let refused = net.engine_mut(id).propose(Bytes::from_static(b"early"));
    assert!(
        matches!(refused, Err(Error::NotLeader { .. })),
        "{refused:?}"
    );
    assert_eq!(net.engine(id).status().commit, 0);
    net.filter = Box::new(|_| true);
    let leader = net.elect();
    net.propose(leader, "later");
    net.tick(3);
    assert_eq!(net.engine(leader).status().commit, 1);
}

#[test]
fn a_proposal_commits_everywhere_without_waiting_for_a_tick() {
    // PROPOSAL -> ACK once durable -> COMMIT on a quorum, each step as soon as the one before:
    // no tick (a heartbeat, a resend) is on the write path.
    let mut net = Net::new(&[1, 2, 3], &[]);
    let leader = net.elect();
    net.settle();
    for round in 0..3 {
        let first = net.propose(leader, "a");
        let second = net.propose(leader, "b");
        assert_eq!(second.index, first.index + 1);
        for id in [1, 2, 3] {
            let status = net.engine(id).status();
            assert!(
                status.commit >= second.index,
                "round {round}, node {id}: {status:?}"
            );
            assert!(
                net.applied(id).iter().any(|e| e.index == second.index),
                "node {id}"
            );
        }
    }
}

#[test]
fn a_follower_acks_a_proposal_only_once_its_write_is_persisted() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    let leader = net.elect();
    let follower = if leader == 1 { 2 } else { 1 };
    net.engine_mut(leader)
        .propose(Bytes::from_static(b"p"))
        .expect("propose");
    // Drive the leader alone and pick out its PROPOSAL to the follower.
    let (replica, host) = net.nodes.get_mut(&leader).expect("leader");
    replica.drive(host).expect("drive");
    let proposal = host
        .messages
        .drain(..)
        .find(|m| m.to == follower && matches!(m.body, MessageBody::Proposal { .. }))
        .expect("a proposal to the follower");
    let engine = net.engine_mut(follower);
    engine.step(proposal).expect("step");
    let ready = engine.ready().expect("ready");
    assert!(
        !ready
            .messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::Ack { .. })),
        "no ACK before the write is durable"
    );
    let persist = ready.persist.expect("the proposal is written");
    assert!(persist.write.sync);
    engine.storage_mut().write(&persist.write).expect("write");
    engine.persisted(persist.token).expect("persisted");
    let ready = engine.ready().expect("ready");
    assert!(ready
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::Ack { index: 1, .. })));
}

fn detail(status: &crate::types::Status, name: &str) -> Option<String> {
    status
        .detail
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.clone())
}

#[test]
fn status_names_the_server_state_epoch_and_zxid_as_zookeeper_does() {
    let mut net = Net::new(&[1, 2, 3], &[4]);
    for id in [1, 2, 3] {
        let status = net.engine(id).status();
        assert_eq!(detail(&status, "state").as_deref(), Some("looking"));
        assert_eq!(detail(&status, "phase"), None);
    }
    let leader = net.elect();
    net.tick(5);
    net.propose(leader, "a");
    net.propose(leader, "b");
    net.tick(5);
    let status = net.engine(leader).status();
    assert_eq!(detail(&status, "state").as_deref(), Some("leading"));
    assert_eq!(detail(&status, "phase").as_deref(), Some("broadcast"));
    let epoch = status.term;
    assert!(epoch >= 1);
    assert_eq!(detail(&status, "current_epoch"), Some(epoch.to_string()));
    // The zxid counter restarts each epoch: the new leader's initial history and two proposals.
    let zxid = detail(&status, "zxid").expect("zxid");
    let (zxid_epoch, counter) = zxid.split_once('.').expect("epoch.counter");
    assert_eq!(zxid_epoch, epoch.to_string());
    assert!(counter.parse::<u64>().expect("counter") >= 2, "{zxid}");
    for id in [1, 2, 3].into_iter().filter(|&id| id != leader) {
        let status = net.engine(id).status();
        assert_eq!(detail(&status, "state").as_deref(), Some("following"));
        assert_eq!(detail(&status, "zxid").as_deref(), Some(zxid.as_str()));
    }
    let observer = net.engine(4).status();
    assert_eq!(detail(&observer, "state").as_deref(), Some("observing"));
}

#[test]
fn observers_receive_proposals_but_never_count_towards_a_quorum() {
    let mut net = Net::new(&[1, 2, 3], &[4]);
    let leader = net.elect();
    net.tick(5);
    let observer = net.engine(4).status();
    assert_eq!(observer.role, Role::Follower);
    assert!(observer
        .detail
        .contains(&("state", "observing".to_string())));
    // With the other two voters gone, the observer's ACKs do not make a quorum.
    for id in [1, 2, 3] {
        if id != leader {
            net.down.insert(id);
        }
    }
    let p = net.propose(leader, "o");
    net.tick(3);
    assert_eq!(
        net.engine(4).storage().last_index(),
        p.index,
        "the observer holds it"
    );
    assert!(
        net.engine(leader).status().commit < p.index,
        "yet it is not committed"
    );
}

#[test]
fn a_member_restarts_from_its_durable_storage() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    let leader = net.elect();
    net.propose(leader, "a");
    net.propose(leader, "b");
    net.tick(3);
    let follower = if leader == 1 { 2 } else { 1 };
    let before = net.engine(follower).hard_state();
    let (replica, _) = net.nodes.remove(&follower).expect("follower");
    let storage = replica.into_engine().into_storage();
    let mut c = config(follower);
    c.applied = 0;
    let restarted = Zab::new(c, storage, crate::seeded_rng(99)).expect("restart");
    assert_eq!(restarted.accepted_epoch(), before.accepted_epoch);
    assert_eq!(restarted.current_epoch(), before.current_epoch);
    assert_eq!(restarted.last_zxid().index, 2);
    net.nodes
        .insert(follower, (Replica::new(restarted), MemHost::new()));
    net.tick(30);
    net.propose(net.leader().expect("a leader"), "c");
    net.tick(5);
    assert_eq!(net.applied(follower).len(), 3);
}

#[test]
fn a_single_server_change_takes_effect_once_committed() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    let leader = net.elect();
    let change = ConfChange::Single(MemberChange::AddLearner(if leader == 3 { 2 } else { 3 }));
    net.engine_mut(leader)
        .propose_conf_change(change)
        .expect("a change");
    net.settle();
    net.tick(3);
    assert_eq!(net.engine(leader).conf_state().voters.len(), 2);
    let refused = net
        .engine_mut(leader)
        .propose_conf_change(ConfChange::EnterJoint(vec![MemberChange::Remove(1)]));
    assert!(matches!(refused, Err(Error::InvalidConfChange { .. })));
}

#[test]
fn a_read_is_ordered_after_a_quorum_confirms_the_leaders_epoch() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    let leader = net.elect();
    net.propose(leader, "w");
    net.tick(2);
    net.engine_mut(leader).read_index(7).expect("read");
    net.settle();
    net.tick(2);
    let reads = &net.nodes[&leader].1.reads;
    assert_eq!(reads, &vec![ReadState { ctx: 7, index: 1 }]);
    let follower = if leader == 1 { 2 } else { 1 };
    // A follower forwards its read (ZooKeeper's SYNC) and gets the leader's confirmed commit.
    net.engine_mut(follower)
        .read_index(8)
        .expect("follower read");
    net.settle();
    net.tick(2);
    let reads = &net.nodes[&follower].1.reads;
    assert_eq!(reads, &vec![ReadState { ctx: 8, index: 1 }]);
    // With the leader gone, a forwarded read is never answered (the embedder times it out).
    net.down.insert(leader);
    net.engine_mut(follower).read_index(9).expect("forwarded");
    net.tick(3);
    assert!(!net.nodes[&follower].1.reads.iter().any(|r| r.ctx == 9));
    net.down.remove(&leader);
    assert!(matches!(
        net.engine_mut(leader).transfer_leader(follower),
        Err(Error::Unsupported { .. })
    ));
}

/// Storage whose reads of entries fail once `broken` is set.
struct Failing {
    inner: Mem,
    broken: bool,
}

impl Storage for Failing {
    type HardState = HardState;
    fn hard_state(&self) -> HardState {
        self.inner.hard_state()
    }
    fn snapshot_meta(&self) -> SnapshotMeta {
        self.inner.snapshot_meta()
    }
    fn snapshot(&self) -> Result<crate::types::Snapshot, StorageError> {
        self.inner.snapshot()
    }
    fn first_index(&self) -> u64 {
        self.inner.first_index()
    }
    fn last_index(&self) -> u64 {
        self.inner.last_index()
    }
    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.inner.term(index)
    }
    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        if self.broken {
            return Err(StorageError::Other("disk gone".into()));
        }
        self.inner.entries(lo, hi, max_bytes, out)
    }
}

fn run_by_hand(zab: &mut Zab<Failing>) -> Result<(), Error> {
    while zab.has_ready() {
        let ready = zab.ready()?;
        if let Some(persist) = ready.persist {
            zab.storage_mut().inner.write(&persist.write)?;
            zab.persisted(persist.token)?;
        }
    }
    Ok(())
}

#[test]
fn a_storage_failure_stops_the_engine() {
    let storage = Failing {
        inner: Mem::new_with_conf(ConfState::with_voters([1])),
        broken: false,
    };
    let mut zab = Zab::new(config(1), storage, crate::seeded_rng(1)).expect("new");
    for _ in 0..20 {
        zab.tick();
        run_by_hand(&mut zab).expect("healthy");
    }
    assert_eq!(zab.role(), Role::Leader, "a group of one elects itself");
    zab.propose(Bytes::from_static(b"x")).expect("propose");
    zab.storage_mut().broken = true;
    let first = run_by_hand(&mut zab);
    assert!(matches!(first, Err(Error::Stopped(_))), "{first:?}");
    assert!(
        matches!(zab.ready(), Err(Error::Stopped(_))),
        "it stays stopped"
    );
}

#[test]
fn a_misrouted_or_stale_message_is_refused_or_ignored() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    let leader = net.elect();
    let engine = net.engine_mut(leader);
    let misrouted = Message {
        from: 2,
        to: 9,
        body: MessageBody::NewEpoch { epoch: 1 },
    };
    assert!(matches!(
        engine.step(misrouted),
        Err(Error::MisroutedMessage { .. })
    ));
    // A proposal of an old epoch from a non-leader changes nothing.
    let before = engine.status();
    let stale = Message {
        from: if leader == 1 { 2 } else { 1 },
        to: leader,
        body: MessageBody::Proposal {
            epoch: 0,
            prev_index: 0,
            entries: vec![entry(0, 1)],
            commit: 1,
        },
    };
    engine.step(stale).expect("ignored");
    assert_eq!(engine.status().last_index, before.last_index);
    assert_eq!(engine.status().commit, before.commit);
}

#[test]
fn a_follower_that_missed_its_leader_joins_a_voters_election_at_once() {
    // Five voters, so the four survivors' randomized timeouts cannot all fall on one tick.
    let mut net = Net::new(&[1, 2, 3, 4, 5], &[]);
    let old = net.elect();
    net.down.insert(old);
    let survivors: Vec<NodeId> = (1..=5).filter(|&id| id != old).collect();
    // Tick until the first survivor's own timeout sends it looking.
    let mut ticks = 0;
    while survivors
        .iter()
        .all(|&id| net.engine(id).role() == Role::Follower)
    {
        net.tick(1);
        ticks += 1;
        assert!(ticks < 40, "no survivor ever started looking");
    }
    // Its notification reached the other survivor, which had not heard the leader for at least
    // half an election timeout either: it joined at once instead of waiting for its own draw.
    for &id in &survivors {
        assert_ne!(
            net.engine(id).leader(),
            Some(old),
            "node {id} still follows the dead leader"
        );
    }
    // Finalize wait, discovery and synchronisation: a few ticks, not another timeout.
    for _ in 0..8 {
        if net.leader().is_some() {
            break;
        }
        net.tick(1);
    }
    let new = net
        .leader()
        .expect("a new leader within 8 ticks of the first looking member");
    assert_ne!(new, old);
}
