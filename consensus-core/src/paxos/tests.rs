//! Multi-Paxos behaviour, driven through the one replica loop ([`Replica`]) over a small
//! deterministic in-test network. Tests are named after the rules they check.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::invariants::PaxosChecker;
use super::*;
use crate::entries::Entries;
use crate::protocol::Write;
use crate::replica::{Host, Replica};
use crate::storage::MemStorage;
use crate::types::{MemberChange, Snapshot};

type Engine = MultiPaxos<MemStorage<HardState>>;

/// One node's world: an outbox, a disk that is durable at once or on demand, what it applied.
struct TestHost {
    outbox: Vec<Message>,
    written: u64,
    durable: u64,
    auto_durable: bool,
    /// Writes submitted and not yet durable, with their tickets.
    queued: VecDeque<(u64, Write<HardState>)>,
    /// What survives a crash.
    disk: MemStorage<HardState>,
    /// Writes that became durable since the network last looked (for the checker).
    newly_durable: Vec<Write<HardState>>,
    applied: Vec<Entry>,
    reads: Vec<ReadState>,
    snapshots: Vec<u64>,
}

impl TestHost {
    fn new(disk: MemStorage<HardState>) -> Self {
        TestHost {
            outbox: Vec::new(),
            written: 0,
            durable: 0,
            auto_durable: true,
            queued: VecDeque::new(),
            disk,
            newly_durable: Vec::new(),
            applied: Vec::new(),
            reads: Vec::new(),
            snapshots: Vec::new(),
        }
    }

    fn flush(&mut self) {
        while let Some((ticket, write)) = self.queued.pop_front() {
            self.disk.write(&write).unwrap();
            self.durable = ticket;
            self.newly_durable.push(write);
        }
    }
}

impl Host<Engine> for TestHost {
    type Error = Error;

    fn send(&mut self, message: Message) -> Result<(), Error> {
        self.outbox.push(message);
        Ok(())
    }

    fn submit(
        &mut self,
        storage: &mut MemStorage<HardState>,
        write: &Write<HardState>,
    ) -> Result<u64, Error> {
        storage.write(write)?;
        self.written += 1;
        self.queued.push_back((self.written, write.clone()));
        if self.auto_durable {
            self.flush();
        }
        Ok(self.written)
    }

    fn durable(&self) -> u64 {
        self.durable
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        self.snapshots.push(snapshot.meta.index);
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        self.applied.extend(entries);
        Ok(())
    }

    fn reads(&mut self, reads: Vec<ReadState>) -> Result<(), Error> {
        self.reads.extend(reads);
        Ok(())
    }
}

struct Node {
    replica: Option<Replica<Engine>>,
    host: TestHost,
}

/// A deterministic network of nodes; messages wait in `in_flight` until delivered or dropped.
struct Net {
    nodes: BTreeMap<NodeId, Node>,
    in_flight: VecDeque<Message>,
    /// Messages from or to these nodes are dropped.
    isolated: BTreeSet<NodeId>,
    checker: PaxosChecker,
    voters: BTreeSet<NodeId>,
    violations: Vec<String>,
    config: fn(NodeId) -> Config,
}

fn default_config(id: NodeId) -> Config {
    Config::new(id)
}

fn data(text: &str) -> EntryPayload {
    EntryPayload::Data(Bytes::copy_from_slice(text.as_bytes()))
}

impl Net {
    fn new(n: u64) -> Net {
        Net::with_config(n, default_config)
    }

    fn with_config(n: u64, config: fn(NodeId) -> Config) -> Net {
        let voters: BTreeSet<NodeId> = (1..=n).collect();
        let mut net = Net {
            nodes: BTreeMap::new(),
            in_flight: VecDeque::new(),
            isolated: BTreeSet::new(),
            checker: PaxosChecker::new(),
            voters: voters.clone(),
            violations: Vec::new(),
            config,
        };
        for id in 1..=n {
            let storage = MemStorage::new_with_conf(ConfState::with_voters(voters.clone()));
            net.add_node(id, storage);
        }
        net
    }

    fn add_node(&mut self, id: NodeId, storage: MemStorage<HardState>) {
        let mut config = (self.config)(id);
        config.applied = storage.snapshot_meta().index;
        let engine =
            MultiPaxos::new(config, storage.clone(), crate::seeded_rng(id * 7919)).unwrap();
        self.checker.on_restored(id, storage.snapshot_meta().index);
        self.nodes.insert(
            id,
            Node {
                replica: Some(Replica::new(engine)),
                host: TestHost::new(storage),
            },
        );
    }

    fn engine(&self, id: NodeId) -> &Engine {
        self.nodes[&id].replica.as_ref().unwrap().engine()
    }

    fn engine_mut(&mut self, id: NodeId) -> &mut Engine {
        self.nodes
            .get_mut(&id)
            .unwrap()
            .replica
            .as_mut()
            .unwrap()
            .engine_mut()
    }

    fn host(&self, id: NodeId) -> &TestHost {
        &self.nodes[&id].host
    }

    fn host_mut(&mut self, id: NodeId) -> &mut TestHost {
        &mut self.nodes.get_mut(&id).unwrap().host
    }

    /// Runs `id`'s replica loop and collects what it sent, wrote and applied.
    fn drive(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let before = node.host.applied.len();
        replica.drive(&mut node.host).unwrap();
        let outbox = std::mem::take(&mut node.host.outbox);
        self.in_flight.extend(outbox);
        self.observe(id, before);
    }

    fn observe(&mut self, id: NodeId, applied_before: usize) {
        let node = self.nodes.get_mut(&id).unwrap();
        for write in std::mem::take(&mut node.host.newly_durable) {
            if let Some(snapshot) = &write.snapshot {
                self.checker.on_restored(id, snapshot.meta.index);
            }
            if let Err(v) = self.checker.on_durable_write(id, &write, &self.voters) {
                self.violations.push(v);
            }
        }
        for entry in &node.host.applied[applied_before..] {
            if let Err(v) = self.checker.on_applied(id, entry) {
                self.violations.push(v);
            }
        }
    }

    /// Makes `id`'s queued writes durable and runs its loop (held messages come out).
    fn flush(&mut self, id: NodeId) {
        self.host_mut(id).flush();
        self.drive(id);
    }

    fn hold_disk(&mut self, id: NodeId) {
        self.host_mut(id).auto_durable = false;
    }

    fn deliver_one(&mut self, message: Message) {
        if self.isolated.contains(&message.from) || self.isolated.contains(&message.to) {
            return;
        }
        let to = message.to;
        let Some(node) = self.nodes.get_mut(&to) else {
            return;
        };
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let _ = replica.engine_mut().step(message);
        self.drive(to);
    }

    /// Delivers messages until none is left (bounded).
    fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            let Some(message) = self.in_flight.pop_front() else {
                return;
            };
            self.deliver_one(message);
        }
        panic!("the network did not quiesce");
    }

    /// Delivers the messages `keep` selects (once), drops the rest of what is in flight now.
    fn deliver_only(&mut self, keep: impl Fn(&Message) -> bool) {
        let now: Vec<Message> = self.in_flight.drain(..).collect();
        for message in now {
            if keep(&message) {
                self.deliver_one(message);
            }
        }
    }

    fn drop_all(&mut self) {
        self.in_flight.clear();
    }

    fn tick(&mut self, id: NodeId) {
        if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
            replica.engine_mut().tick();
            self.drive(id);
        }
    }

    fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.tick(id);
            }
            self.deliver_all();
        }
    }

    fn campaign(&mut self, id: NodeId) {
        self.engine_mut(id).campaign().unwrap();
        self.drive(id);
        self.deliver_all();
    }

    fn propose(&mut self, id: NodeId, text: &str) -> Proposed {
        let proposed = self
            .engine_mut(id)
            .propose(Bytes::copy_from_slice(text.as_bytes()))
            .unwrap();
        self.drive(id);
        proposed
    }

    /// Runs phase 1 delivering only prepares and promises (nobody hears the new leader).
    fn campaign_quietly(&mut self, id: NodeId) {
        self.engine_mut(id).campaign().unwrap();
        self.drive(id);
        for _ in 0..10 {
            self.deliver_only(|m| {
                matches!(
                    m.body,
                    MessageBody::Prepare { .. } | MessageBody::Promise { .. }
                )
            });
        }
        assert_eq!(self.engine(id).role(), Role::Leader);
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.replica = None;
        node.host.queued.clear();
        node.host.outbox.clear();
    }

    fn restart(&mut self, id: NodeId) {
        let disk = self.host(id).disk.clone();
        let mut config = (self.config)(id);
        config.applied = disk.snapshot_meta().index;
        let engine = MultiPaxos::new(config, disk.clone(), crate::seeded_rng(id * 31)).unwrap();
        let node = self.nodes.get_mut(&id).unwrap();
        node.replica = Some(Replica::new(engine));
        node.host.applied.clear();
        node.host.written = 0;
        node.host.durable = 0;
        self.checker.on_restored(id, disk.snapshot_meta().index);
        self.drive(id);
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| {
                n.replica
                    .as_ref()
                    .is_some_and(|r| r.engine().role() == Role::Leader)
            })
            .map(|(&id, _)| id)
            .collect()
    }

    fn applied_payloads(&self, id: NodeId) -> Vec<EntryPayload> {
        self.host(id)
            .applied
            .iter()
            .map(|e| e.payload.clone())
            .collect()
    }

    fn applied_data(&self, id: NodeId) -> Vec<EntryPayload> {
        self.applied_payloads(id)
            .into_iter()
            .filter(|p| matches!(p, EntryPayload::Data(_)))
            .collect()
    }

    /// Ticks only `id`, dropping what it sends, until it forgets its leader.
    fn forget_leader(&mut self, id: NodeId) {
        for _ in 0..100 {
            if self.engine(id).leader().is_none() {
                return;
            }
            self.tick(id);
            self.in_flight.retain(|m| m.from != id);
        }
        panic!("node {id} never forgot its leader");
    }

    fn assert_clean(&self) {
        assert!(
            self.violations.is_empty(),
            "violations: {:?}",
            self.violations
        );
    }
}

fn is_accept(m: &Message) -> bool {
    matches!(m.body, MessageBody::Accept { .. })
}

// ---- election -------------------------------------------------------------------------------

#[test]
fn one_leader_is_elected_by_timeouts_and_the_others_follow_it() {
    for n in [3, 5] {
        let mut net = Net::new(n);
        net.tick_all(60);
        let leaders = net.leaders();
        assert_eq!(
            leaders.len(),
            1,
            "exactly one leader among {n}: {leaders:?}"
        );
        let leader = leaders[0];
        for id in 1..=n {
            assert_eq!(net.engine(id).leader(), Some(leader), "node {id} follows");
            let status = net.engine(id).status();
            assert_eq!(status.protocol, "multi-paxos");
            assert!(status.detail.iter().any(|(k, _)| *k == "promised"));
        }
        assert_eq!(
            net.engine(leader).status().term,
            net.engine(leader).ballot().round
        );
        net.assert_clean();
    }
}

#[test]
fn a_promise_answering_another_prepare_is_not_counted() {
    let mut net = Net::new(3);
    net.engine_mut(1).campaign().unwrap();
    net.drive(1);
    net.drop_all();
    let ballot = net.engine(1).ballot();
    let promise = |from: u64| Message {
        from: 2,
        to: 1,
        ballot,
        body: MessageBody::Promise {
            from,
            accepted: Vec::new(),
            covered: 0,
            last: 0,
            compacted: 0,
        },
    };
    // Found in the simulator (seed 751): a continuation answer from before phase 1 restarted
    // further on was counted as a whole promise, and a chosen slot was overwritten.
    net.deliver_one(promise(5));
    assert_eq!(net.engine(1).role(), Role::Candidate);
    net.deliver_one(promise(1));
    assert_eq!(net.engine(1).role(), Role::Leader);
}

#[test]
fn a_campaign_that_reaches_a_majority_leads() {
    let mut net = Net::new(3);
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.engine(2).promised(), net.engine(1).ballot());
}

#[test]
fn a_follower_forgets_a_leader_it_stopped_hearing() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.tick_all(2);
    assert_eq!(net.engine(2).leader(), Some(1));
    net.crash(1);
    let election_tick = net.engine(2).config().election_tick;
    for _ in 0..election_tick {
        net.tick(2);
        net.drop_all();
    }
    assert_ne!(
        net.engine(2).leader(),
        Some(1),
        "no redirect to a dead leader"
    );
    assert!(matches!(
        net.engine_mut(2).propose(Bytes::from_static(b"x")),
        Err(Error::NotLeader { leader }) if leader != Some(1)
    ));
}

#[test]
fn a_candidate_resends_its_prepare_to_an_acceptor_that_still_heard_the_leader() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.tick_all(2);
    net.crash(1);
    net.drop_all();
    // Node 2 times out first; node 3 heard the leader a moment ago and drops the prepare.
    net.forget_leader(2);
    net.engine_mut(2).campaign().unwrap();
    net.drive(2);
    net.deliver_all();
    assert_eq!(net.engine(2).role(), Role::Candidate, "node 3 is sticky");
    assert_eq!(net.engine(3).leader(), Some(1));
    // Node 3 stops hearing the dead leader (its own timeout has not fired yet).
    net.forget_leader(3);
    assert_eq!(net.engine(3).role(), Role::Follower);
    // Node 2's next heartbeat interval re-sends the prepare: it leads well before a new
    // randomized timeout (at least `election_tick` ticks) would have run phase 1 again.
    net.tick(2);
    net.deliver_all();
    assert_eq!(net.leaders(), vec![2]);
    assert_eq!(net.engine(3).leader(), Some(2));
    net.assert_clean();
}

#[test]
fn a_leader_that_loses_its_majority_steps_down() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.isolated.extend([2, 3]);
    let election_tick = net.engine(1).config().election_tick;
    // The first check may still count acknowledgements from before the partition.
    for _ in 0..2 * election_tick {
        net.tick(1);
        net.deliver_all();
    }
    assert_eq!(net.engine(1).role(), Role::Follower);
}

// ---- the acceptor ---------------------------------------------------------------------------

#[test]
fn an_acceptor_never_accepts_below_its_promise() {
    let mut net = Net::new(3);
    net.campaign(3); // node 2 promises (round 1, node 3)
    let promised = net.engine(2).promised();
    let stale = Ballot::new(1, 1);
    assert!(stale < promised);
    let entry = Entry {
        term: stale.encode(),
        index: 1,
        payload: data("stale"),
    };
    net.drop_all();
    net.deliver_one(Message {
        from: 1,
        to: 2,
        ballot: stale,
        body: MessageBody::Accept {
            entries: vec![entry].into(),
            commit: 0,
        },
    });
    assert_ne!(
        net.engine(2).slot(1).map(|e| e.payload),
        Some(data("stale"))
    );
    let nack = net.in_flight.iter().find(|m| m.to == 1).expect("a nack");
    assert_eq!(nack.body, MessageBody::Nack { promised });
    // A prepare below the promise is refused the same way.
    net.drop_all();
    net.deliver_one(Message {
        from: 1,
        to: 2,
        ballot: stale,
        body: MessageBody::Prepare {
            from: 1,
            transfer: false,
        },
    });
    assert!(matches!(net.in_flight[0].body, MessageBody::Nack { .. }));
    assert_eq!(net.engine(2).promised(), promised, "promises never go back");
}

#[test]
fn a_promise_is_held_until_durable_and_synced() {
    let mut net = Net::new(3);
    net.hold_disk(2);
    net.engine_mut(1).campaign().unwrap();
    net.drive(1);
    net.deliver_only(|m| m.to == 2);
    assert!(
        !net.in_flight
            .iter()
            .any(|m| matches!(m.body, MessageBody::Promise { .. })),
        "no promise before the write is durable"
    );
    let (_, write) = net.host(2).queued.back().unwrap().clone();
    assert!(write.sync, "a promise is synced");
    assert_eq!(write.hard_state.unwrap().promised, net.engine(1).ballot());
    net.flush(2);
    assert!(net
        .in_flight
        .iter()
        .any(|m| m.from == 2 && matches!(m.body, MessageBody::Promise { .. })));
}

#[test]
fn accepted_is_held_until_the_slot_is_durable_and_only_that_slot_is_written() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.hold_disk(2);
    net.propose(1, "a");
    net.deliver_only(|m| m.to == 2 && is_accept(m));
    assert!(!net.in_flight.iter().any(|m| m.from == 2));
    let (_, write) = net.host(2).queued.back().unwrap().clone();
    assert!(write.sync);
    assert_eq!(
        write.truncate_from, None,
        "an acceptor never cuts higher slots"
    );
    assert_eq!(write.entries.len(), 1);
    net.flush(2);
    assert!(net
        .in_flight
        .iter()
        .any(|m| m.from == 2 && matches!(m.body, MessageBody::Accepted { .. })));
}

#[test]
fn the_leader_counts_its_own_acceptance_only_once_durable() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.hold_disk(1);
    net.isolated.insert(3);
    let slot = net.propose(1, "a").index;
    net.deliver_all();
    assert!(
        net.engine(1).status().commit < slot,
        "node 2 alone is no majority while the leader's own write is not durable"
    );
    net.flush(1);
    assert!(
        net.engine(1).status().commit >= slot,
        "leader + node 2: chosen"
    );
}

#[test]
fn a_commit_that_moves_alone_is_written_without_sync() {
    let mut net2 = Net::new(3);
    net2.campaign(1);
    net2.propose(1, "a");
    net2.deliver_only(|m| m.to == 2 && is_accept(m));
    net2.hold_disk(2);
    net2.in_flight.clear();
    let commit = net2.engine(1).status().commit + 1;
    let ballot = net2.engine(1).ballot();
    net2.deliver_one(Message {
        from: 1,
        to: 2,
        ballot,
        body: MessageBody::Heartbeat {
            commit,
            read_round: 0,
        },
    });
    let (_, write) = net2.host(2).queued.back().unwrap().clone();
    assert!(write.entries.is_empty() && !write.sync, "{write:?}");
    assert_eq!(write.hard_state.unwrap().commit, commit);
}

// ---- proposals ------------------------------------------------------------------------------

#[test]
fn proposals_are_chosen_and_applied_in_slot_order_on_every_member() {
    let mut net = Net::new(3);
    net.campaign(1);
    let mut slots = Vec::new();
    for text in ["a", "b", "c", "d", "e"] {
        slots.push(net.propose(1, text).index);
    }
    assert!(slots.windows(2).all(|w| w[1] == w[0] + 1));
    net.deliver_all();
    net.tick_all(2);
    let expected: Vec<EntryPayload> = ["a", "b", "c", "d", "e"].iter().map(|t| data(t)).collect();
    for id in 1..=3 {
        assert_eq!(net.applied_data(id), expected, "node {id}");
        let slots: Vec<u64> = net.host(id).applied.iter().map(|e| e.index).collect();
        assert_eq!(slots, (1..=slots.len() as u64).collect::<Vec<_>>());
    }
    net.assert_clean();
}

#[test]
fn accepts_are_batched_and_bounded_by_the_window_and_message_size() {
    fn config(id: NodeId) -> Config {
        Config {
            max_inflight_slots: 4,
            max_msg_bytes: 10,
            ..Config::new(id)
        }
    }
    let mut net = Net::with_config(3, config);
    net.campaign(1);
    net.drop_all();
    for i in 0..10 {
        net.engine_mut(1)
            .propose(Bytes::from(vec![b'x'; 4 + i % 2]))
            .unwrap();
    }
    net.drive(1);
    let accepts: Vec<&Message> = net
        .in_flight
        .iter()
        .filter(|m| is_accept(m) && m.to == 2)
        .collect();
    let slots: usize = accepts
        .iter()
        .map(|m| match &m.body {
            MessageBody::Accept { entries, .. } => {
                let bytes: u64 = entries.iter().map(Entry::payload_size).sum();
                assert!(entries.len() == 1 || bytes <= 10, "size bound");
                entries.len()
            }
            _ => 0,
        })
        .sum();
    assert_eq!(slots, 4, "window of four slots");
    assert!(accepts.len() >= 2, "batches split by size");
    net.deliver_all();
    net.tick_all(3);
    assert_eq!(net.applied_data(3).len(), 10);
    net.assert_clean();
}

#[test]
fn a_proposal_on_a_follower_is_refused_with_a_leader_hint() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.tick_all(1);
    assert_eq!(
        net.engine_mut(2).propose(Bytes::from_static(b"x")),
        Err(Error::NotLeader { leader: Some(1) })
    );
}

// ---- phase 1 recovery -----------------------------------------------------------------------

#[test]
fn a_new_leader_re_proposes_a_value_accepted_but_not_chosen() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.tick_all(1);
    let slot = net.propose(1, "v").index;
    // Only node 2 accepts, and nobody hears back: v is accepted, not chosen.
    net.deliver_only(|m| m.to == 2 && is_accept(m));
    net.drop_all();
    net.crash(1);
    net.forget_leader(2);
    net.forget_leader(3);
    net.campaign(3);
    assert_eq!(net.leaders(), vec![3]);
    net.tick_all(2);
    let at_slot = net.engine(3).slot(slot).unwrap();
    assert_eq!(
        at_slot.payload,
        data("v"),
        "the accepted value is re-proposed"
    );
    assert_eq!(Ballot::decode(at_slot.term), net.engine(3).ballot());
    assert_eq!(net.applied_data(2), vec![data("v")]);
    assert_eq!(net.applied_data(3), vec![data("v")]);
    net.assert_clean();
}

#[test]
fn a_new_leader_fills_holes_with_noops() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.tick_all(1);
    let a = net.propose(1, "a").index;
    net.deliver_all();
    let b = net.propose(1, "b").index;
    net.drop_all(); // b stays on node 1 alone
    let c = net.propose(1, "c").index;
    net.deliver_only(|m| m.to == 2 && is_accept(m));
    net.drop_all();
    net.crash(1);
    net.forget_leader(2);
    net.forget_leader(3);
    net.campaign(3);
    net.tick_all(2);
    assert_eq!((a + 1, b + 1), (b, c));
    let payloads: Vec<EntryPayload> = net
        .applied_payloads(3)
        .into_iter()
        .skip(a as usize - 1)
        .collect();
    assert_eq!(payloads, vec![data("a"), EntryPayload::Noop, data("c")]);
    assert_eq!(net.applied_payloads(2), net.applied_payloads(3));
    net.assert_clean();
}

#[test]
fn a_promise_cut_by_the_size_limit_is_continued_before_phase_one_completes() {
    fn config(id: NodeId) -> Config {
        Config {
            max_msg_bytes: 8,
            ..Config::new(id)
        }
    }
    let mut net = Net::with_config(3, config);
    net.campaign(1);
    net.tick_all(1);
    let texts = ["one", "two", "three", "four", "five", "six"];
    for text in texts {
        net.propose(1, text);
    }
    // Only node 2 accepts; nothing is chosen.
    net.deliver_only(|m| m.to == 2 && is_accept(m));
    net.drop_all();
    net.crash(1);
    net.forget_leader(2);
    net.forget_leader(3);
    net.engine_mut(3).campaign().unwrap();
    net.drive(3);
    let mut continued = false;
    for _ in 0..20 {
        continued |= net
            .in_flight
            .iter()
            .any(|m| matches!(m.body, MessageBody::Prepare { from, .. } if from > 1));
        net.deliver_only(|m| m.to != 1);
    }
    assert!(continued, "the size limit cut the promise");
    net.tick_all(3);
    let expected: Vec<EntryPayload> = texts.iter().map(|t| data(t)).collect();
    assert_eq!(
        net.applied_data(3),
        expected,
        "every accepted value recovered"
    );
    net.assert_clean();
}

#[test]
fn a_candidate_behind_a_compaction_installs_the_snapshot_before_leading() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.isolated.insert(3);
    for text in ["a", "b", "c"] {
        net.propose(1, text);
    }
    net.deliver_all();
    net.tick_all(1);
    let applied = net.engine(2).status().applied;
    let conf = net.engine(2).status().conf_state;
    net.engine_mut(2)
        .storage_mut()
        .compact(applied, conf, Bytes::from_static(b"state"))
        .unwrap();
    net.crash(1);
    net.isolated.clear();
    net.forget_leader(2);
    net.campaign(3);
    assert_eq!(
        net.host(3).snapshots,
        vec![applied],
        "learnt from the snapshot"
    );
    assert_eq!(net.leaders(), vec![3]);
    net.propose(3, "d");
    net.deliver_all();
    net.tick_all(1);
    assert_eq!(
        net.applied_data(2),
        vec![data("a"), data("b"), data("c"), data("d")]
    );
    assert_eq!(net.applied_data(3), vec![data("d")]);
    net.assert_clean();
}

#[test]
fn a_restarted_node_keeps_its_promise_and_chosen_slots() {
    let mut net = Net::new(3);
    net.campaign(1);
    for text in ["a", "b"] {
        net.propose(1, text);
    }
    net.deliver_all();
    net.tick_all(1);
    let promised = net.engine(2).promised();
    let commit = net.engine(2).status().commit;
    net.crash(2);
    net.restart(2);
    assert_eq!(net.engine(2).promised(), promised);
    assert_eq!(net.engine(2).status().commit, commit);
    assert_eq!(
        net.applied_data(2),
        vec![data("a"), data("b")],
        "re-applied in order"
    );
    net.propose(1, "c");
    net.deliver_all();
    net.tick_all(2);
    assert_eq!(net.applied_data(2), vec![data("a"), data("b"), data("c")]);
    // Its durable promise still refuses a stale ballot.
    net.drop_all();
    net.deliver_one(Message {
        from: 3,
        to: 2,
        ballot: Ballot::ZERO,
        body: MessageBody::Prepare {
            from: 1,
            transfer: false,
        },
    });
    assert!(matches!(net.in_flight[0].body, MessageBody::Nack { .. }));
    net.assert_clean();
}

// ---- learners -------------------------------------------------------------------------------

#[test]
fn a_lagging_follower_catches_up_by_fetching_chosen_values() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.isolated.insert(3);
    for text in ["a", "b", "c"] {
        net.propose(1, text);
    }
    net.deliver_all();
    net.tick_all(1);
    net.isolated.clear();
    net.tick_all(1);
    let fetched = net.host(3).applied.len();
    assert_eq!(net.applied_data(3), vec![data("a"), data("b"), data("c")]);
    assert!(fetched >= 3);
    net.assert_clean();
}

#[test]
fn a_follower_behind_a_compaction_installs_a_snapshot() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.isolated.insert(3);
    for text in ["a", "b", "c"] {
        net.propose(1, text);
    }
    net.deliver_all();
    net.tick_all(1);
    for id in [1, 2] {
        let applied = net.engine(id).status().applied;
        let conf = net.engine(id).status().conf_state;
        net.engine_mut(id)
            .storage_mut()
            .compact(applied, conf, Bytes::from_static(b"state"))
            .unwrap();
    }
    net.isolated.clear();
    net.tick_all(2);
    let snapshot = net.engine(1).status().applied;
    assert_eq!(net.host(3).snapshots, vec![snapshot]);
    assert_eq!(net.engine(3).status().applied, snapshot);
    assert_eq!(net.engine(3).storage().snapshot_meta().index, snapshot);
    net.propose(1, "d");
    net.deliver_all();
    net.tick_all(1);
    assert_eq!(net.applied_data(3), vec![data("d")]);
    net.assert_clean();
}

// ---- reads ----------------------------------------------------------------------------------

#[test]
fn read_index_returns_after_a_ballot_confirmation_round() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.propose(1, "a");
    net.deliver_all();
    let commit = net.engine(1).status().commit;
    net.engine_mut(1).read_index(7).unwrap();
    net.drive(1);
    assert!(
        net.host(1).reads.is_empty(),
        "not before a majority confirms"
    );
    assert!(net
        .in_flight
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { read_round, .. } if read_round > 0)));
    net.deliver_all();
    assert_eq!(
        net.host(1).reads,
        vec![ReadState {
            ctx: 7,
            index: commit
        }]
    );
}

#[test]
fn read_index_is_not_confirmed_by_acceptors_that_promised_higher() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.tick_all(1);
    net.engine_mut(1).read_index(9).unwrap();
    net.drive(1);
    // Both followers promised a higher ballot in between: they refuse the round.
    for id in [2, 3] {
        net.nodes
            .get_mut(&id)
            .unwrap()
            .replica
            .as_mut()
            .unwrap()
            .engine_mut()
            .promised = Ballot::new(50, 2);
    }
    net.deliver_all();
    assert!(net.host(1).reads.is_empty());
    assert_eq!(net.engine(1).role(), Role::Follower, "nacked: steps down");
}

#[test]
fn read_index_on_a_follower_without_a_leader_is_refused() {
    let mut net = Net::new(3);
    assert_eq!(
        net.engine_mut(2).read_index(1),
        Err(Error::NotLeader { leader: None })
    );
    net.campaign(1);
    net.tick_all(1);
    net.engine_mut(2).read_index(5).unwrap();
    net.drive(2);
    net.deliver_all();
    assert_eq!(
        net.host(2).reads.len(),
        1,
        "a follower's read goes through the leader"
    );
}

#[test]
fn lease_reads_skip_the_round_while_a_majority_acked_recently() {
    let mut net = Net::with_config(3, lease_config);
    net.tick_all(60); // every member starts quiet for an election timeout, then one leads
    let leader = net.leaders()[0];
    net.engine_mut(leader).read_index(3).unwrap();
    net.drive(leader);
    assert_eq!(net.host(leader).reads.len(), 1, "served from the lease");
    // Without acks for an election timeout the lease runs out (and the leader steps down).
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    net.isolated.extend(others);
    net.tick_all(25);
    assert_ne!(net.engine(leader).role(), Role::Leader);
}

fn lease_config(id: NodeId) -> Config {
    Config {
        read_mode: ReadMode::LeaseBased,
        ..Config::new(id)
    }
}

#[test]
fn in_a_lease_group_a_restarted_acceptor_waits_an_election_timeout_before_promising() {
    let mut net = Net::with_config(3, lease_config);
    net.tick_all(60);
    let leader = net.leaders()[0];
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    net.crash(follower);
    net.restart(follower);
    let prepare = |net: &mut Net| {
        let ballot = Ballot::new(net.engine(leader).ballot().round + 5, leader);
        net.drop_all();
        net.deliver_one(Message {
            from: leader,
            to: follower,
            ballot,
            body: MessageBody::Prepare {
                from: 1,
                transfer: false,
            },
        });
        net.in_flight
            .iter()
            .any(|m| matches!(m.body, MessageBody::Promise { .. }))
    };
    assert!(
        !prepare(&mut net),
        "quiet after a restart: it may have acked a lease"
    );
    let election_tick = net.engine(follower).config().election_tick;
    for _ in 0..election_tick {
        net.tick(follower);
        net.drop_all();
    }
    assert!(
        prepare(&mut net),
        "promises again once the quiet period is over"
    );
}

// ---- membership -----------------------------------------------------------------------------

#[test]
fn a_voter_is_added_and_another_removed_one_change_at_a_time() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.propose(1, "a");
    net.deliver_all();
    net.add_node(4, MemStorage::new_with_conf(ConfState::default()));
    let change = net
        .engine_mut(1)
        .propose_conf_change(ConfChange::Single(MemberChange::AddVoter(4)))
        .unwrap();
    assert!(matches!(
        net.engine_mut(1).propose_conf_change(ConfChange::Single(MemberChange::Remove(3))),
        Err(Error::ConfChangePending { pending_index }) if pending_index == change.index
    ));
    net.drive(1);
    net.deliver_all();
    net.tick_all(3);
    assert!(net.engine(1).conf_state().voters.contains(&4));
    assert_eq!(
        net.applied_data(4),
        vec![data("a")],
        "the new member caught up"
    );
    net.voters.insert(4);
    net.engine_mut(1)
        .propose_conf_change(ConfChange::Single(MemberChange::Remove(3)))
        .unwrap();
    net.drive(1);
    net.deliver_all();
    net.tick_all(2);
    assert_eq!(
        net.engine(1).status().conf_state.voters,
        [1, 2, 4].into_iter().collect()
    );
    net.voters.remove(&3);
    net.isolated.insert(3);
    net.propose(1, "b");
    net.deliver_all();
    net.tick_all(2);
    assert_eq!(net.applied_data(4), vec![data("a"), data("b")]);
    net.assert_clean();
}

#[test]
fn joint_consensus_is_refused() {
    let mut net = Net::new(3);
    net.campaign(1);
    assert!(matches!(
        net.engine_mut(1)
            .propose_conf_change(ConfChange::EnterJoint(vec![MemberChange::AddVoter(4)])),
        Err(Error::InvalidConfChange { .. })
    ));
}

#[test]
fn a_leader_transfer_hands_leadership_over_despite_stickiness() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.propose(1, "a");
    net.deliver_all();
    net.tick_all(1);
    assert_eq!(
        net.engine_mut(1).transfer_leader(9),
        Err(Error::UnknownNode(9))
    );
    net.engine_mut(1).transfer_leader(2).unwrap();
    assert_eq!(
        net.engine_mut(1).propose(Bytes::from_static(b"x")),
        Err(Error::TransferInProgress { to: 2 })
    );
    net.drive(1);
    net.deliver_all();
    assert_eq!(
        net.leaders(),
        vec![2],
        "node 3 still heard node 1, yet promised node 2"
    );
    net.tick_all(1);
    assert_eq!(net.engine(1).leader(), Some(2));
    net.propose(2, "b");
    net.deliver_all();
    net.tick_all(1);
    assert_eq!(net.applied_data(1), vec![data("a"), data("b")]);
    net.assert_clean();
}

#[test]
fn has_ready_is_exact() {
    let storage = MemStorage::<HardState>::new_with_conf(ConfState::with_voters([1]));
    let mut paxos = MultiPaxos::new(Config::new(1), storage, crate::seeded_rng(3)).unwrap();
    assert!(!paxos.has_ready());
    paxos.campaign().unwrap();
    let mut rounds = 0;
    for step in 0..40 {
        if step % 10 == 3 {
            paxos.propose(Bytes::from_static(b"p")).unwrap();
        }
        if step % 7 == 5 {
            paxos.read_index(step).unwrap();
        }
        paxos.tick();
        while paxos.has_ready() {
            let ready = paxos.ready().unwrap();
            assert!(
                !ready.is_empty(),
                "has_ready promised something at step {step}"
            );
            if let Some(persist) = ready.persist {
                paxos.storage_mut().write(&persist.write).unwrap();
                paxos.persisted(persist.token).unwrap();
            }
            rounds += 1;
        }
    }
    assert!(rounds > 4);
    assert_eq!(paxos.status().applied, 4);
}

// ---- configuration and storage failures -----------------------------------------------------

#[test]
fn node_ids_that_do_not_fit_a_ballot_are_refused() {
    let storage = MemStorage::<HardState>::new_with_conf(ConfState::with_voters([1]));
    let result = MultiPaxos::new(Config::new(70_000), storage, crate::seeded_rng(1));
    assert!(matches!(result, Err(Error::InvalidConfig(_))));
}

/// Storage whose reads fail once `broken` is set.
struct FailingStorage {
    inner: MemStorage<HardState>,
    broken: bool,
}

impl Storage for FailingStorage {
    type HardState = HardState;
    fn hard_state(&self) -> HardState {
        self.inner.hard_state()
    }
    fn snapshot_meta(&self) -> crate::types::SnapshotMeta {
        self.inner.snapshot_meta()
    }
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
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
            return Err(StorageError::Other("disk on fire".into()));
        }
        self.inner.entries(lo, hi, max_bytes, out)
    }
}

#[test]
fn a_storage_failure_stops_the_engine() {
    let storage = FailingStorage {
        inner: MemStorage::new_with_conf(ConfState::with_voters([1])),
        broken: false,
    };
    let mut paxos = MultiPaxos::new(Config::new(1), storage, crate::seeded_rng(1)).unwrap();
    paxos.campaign().unwrap();
    let ready = paxos.ready().unwrap();
    let persist = ready.persist.unwrap();
    paxos.storage_mut().inner.write(&persist.write).unwrap();
    paxos.persisted(persist.token).unwrap();
    assert_eq!(paxos.role(), Role::Leader);
    paxos.propose(Bytes::from_static(b"a")).unwrap();
    let ready = paxos.ready().unwrap();
    let persist = ready.persist.unwrap();
    paxos.storage_mut().inner.write(&persist.write).unwrap();
    paxos.storage_mut().broken = true;
    paxos.persisted(persist.token).unwrap();
    // The slot is chosen and named as a range to apply from storage: applying it (what the
    // replica loop's default `Host::apply_stored` does) reads storage and fails with its error.
    assert!(paxos.has_ready());
    let range = paxos
        .ready()
        .unwrap()
        .committed_in_storage
        .expect("the chosen slot is handed out");
    let applied = range.read(paxos.storage(), |_| Ok::<(), Error>(()));
    assert!(
        matches!(applied, Err(Error::Storage(StorageError::Other(_)))),
        "{applied:?}"
    );
    // A read the engine makes itself (answering a fetch) stops it.
    let fetch = Message {
        from: 2,
        to: 1,
        ballot: Ballot::ZERO,
        body: MessageBody::Fetch { from: 1 },
    };
    assert!(matches!(paxos.step(fetch), Err(Error::Stopped(_))));
    assert!(paxos.has_ready());
    assert!(matches!(paxos.ready(), Err(Error::Stopped(_))));
    assert!(
        matches!(paxos.ready(), Err(Error::Stopped(_))),
        "and stays stopped"
    );
}

#[test]
fn a_misrouted_message_is_a_typed_error() {
    let mut net = Net::new(3);
    let result = net.engine_mut(2).step(Message {
        from: 1,
        to: 3,
        ballot: Ballot::ZERO,
        body: MessageBody::Fetch { from: 1 },
    });
    assert_eq!(result, Err(Error::MisroutedMessage { to: 3, me: 2 }));
}

#[test]
fn ballots_encode_in_order() {
    let a = Ballot::new(3, 2);
    let b = Ballot::new(3, 5);
    let c = Ballot::new(4, 1);
    assert!(a < b && b < c);
    assert!(a.encode() < b.encode() && b.encode() < c.encode());
    for ballot in [a, b, c] {
        assert_eq!(Ballot::decode(ballot.encode()), ballot);
    }
}

// ---- the checker on hand-made violations ----------------------------------------------------

fn accept_write(slot: u64, ballot: Ballot, text: &str) -> Write<HardState> {
    Write {
        snapshot: None,
        truncate_from: None,
        entries: vec![Entry {
            term: ballot.encode(),
            index: slot,
            payload: data(text),
        }]
        .into(),
        hard_state: None,
        sync: true,
    }
}

fn promise_write(ballot: Ballot) -> Write<HardState> {
    Write {
        snapshot: None,
        truncate_from: None,
        entries: Entries::new(),
        hard_state: Some(HardState {
            promised: ballot,
            commit: 0,
        }),
        sync: true,
    }
}

#[test]
fn the_checker_catches_two_values_chosen_in_one_slot() {
    let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
    let mut checker = PaxosChecker::new();
    let (b1, b2) = (Ballot::new(1, 1), Ballot::new(2, 2));
    checker
        .on_durable_write(1, &accept_write(1, b2, "x"), &voters)
        .unwrap();
    checker
        .on_durable_write(2, &accept_write(1, b2, "x"), &voters)
        .unwrap();
    assert_eq!(checker.chosen(1), Some(&data("x")));
    checker
        .on_durable_write(3, &accept_write(1, b1, "y"), &voters)
        .unwrap();
    assert!(checker
        .on_durable_write(1, &accept_write(1, b1, "y"), &voters)
        .is_err());
}

#[test]
fn the_checker_catches_a_different_value_accepted_above_the_chosen_ballot() {
    let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
    let mut checker = PaxosChecker::new();
    let (b1, b2) = (Ballot::new(1, 1), Ballot::new(2, 2));
    checker
        .on_durable_write(1, &accept_write(1, b1, "x"), &voters)
        .unwrap();
    checker
        .on_durable_write(2, &accept_write(1, b1, "x"), &voters)
        .unwrap();
    checker
        .on_durable_write(3, &accept_write(1, b2, "x"), &voters)
        .unwrap();
    assert!(checker
        .on_durable_write(3, &accept_write(2, b2, "z"), &voters)
        .is_ok());
    assert!(checker
        .on_durable_write(2, &accept_write(1, b2, "y"), &voters)
        .is_err());
    // Also when the higher acceptance came first and the choice is seen later.
    let mut checker = PaxosChecker::new();
    checker
        .on_durable_write(3, &accept_write(1, b2, "y"), &voters)
        .unwrap();
    checker
        .on_durable_write(1, &accept_write(1, b1, "x"), &voters)
        .unwrap();
    assert!(checker
        .on_durable_write(2, &accept_write(1, b1, "x"), &voters)
        .is_err());
}

#[test]
fn the_checker_catches_a_promise_going_back() {
    let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
    let mut checker = PaxosChecker::new();
    checker
        .on_durable_write(1, &promise_write(Ballot::new(3, 1)), &voters)
        .unwrap();
    checker
        .on_durable_write(1, &promise_write(Ballot::new(3, 1)), &voters)
        .unwrap();
    assert!(checker
        .on_durable_write(1, &promise_write(Ballot::new(2, 3)), &voters)
        .is_err());
}

#[test]
fn the_checker_catches_applying_the_unchosen_or_past_a_gap() {
    let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
    let mut checker = PaxosChecker::new();
    let b = Ballot::new(1, 1);
    let entry = |slot: u64, text: &str| Entry {
        term: b.encode(),
        index: slot,
        payload: data(text),
    };
    checker
        .on_durable_write(1, &accept_write(1, b, "a"), &voters)
        .unwrap();
    assert!(
        checker.on_applied(1, &entry(1, "a")).is_err(),
        "one acceptor: not chosen"
    );
    checker
        .on_durable_write(2, &accept_write(1, b, "a"), &voters)
        .unwrap();
    checker.on_applied(1, &entry(1, "a")).unwrap();
    for id in [1, 2] {
        checker
            .on_durable_write(id, &accept_write(3, b, "c"), &voters)
            .unwrap();
    }
    assert!(
        checker.on_applied(1, &entry(3, "c")).is_err(),
        "slot 2 skipped"
    );
    assert!(
        checker.on_applied(2, &entry(1, "other")).is_err(),
        "not the chosen value"
    );
}

// ---- planted bugs make hand-written scenarios break the checker -----------------------------

#[cfg(feature = "planted-bugs")]
fn with_bug(bug: Option<PlantedBug>) -> fn(NodeId) -> Config {
    match bug {
        None => default_config,
        Some(PlantedBug::AcceptBelowPromise) => |id| Config {
            planted_bug: Some(PlantedBug::AcceptBelowPromise),
            ..Config::new(id)
        },
        Some(PlantedBug::SkipPhaseOneForAcceptedSlot) => |id| Config {
            planted_bug: Some(PlantedBug::SkipPhaseOneForAcceptedSlot),
            ..Config::new(id)
        },
        Some(PlantedBug::ApplyBeforeChosen) => |id| Config {
            planted_bug: Some(PlantedBug::ApplyBeforeChosen),
            ..Config::new(id)
        },
    }
}

/// A stale leader's Accept reaches an acceptor that promised a newer leader, whose own value
/// for the slot is already chosen.
#[cfg(feature = "planted-bugs")]
fn stale_accept_scenario(bug: Option<PlantedBug>) -> Vec<String> {
    let mut net = Net::with_config(3, with_bug(bug));
    net.campaign_quietly(1);
    net.propose(1, "old");
    let stale: Vec<Message> = net.in_flight.drain(..).filter(|m| m.to == 3).collect();
    net.drop_all();
    net.engine_mut(2).campaign().unwrap();
    net.drive(2);
    net.deliver_only(|m| m.to == 3);
    net.deliver_only(|m| m.to == 2);
    assert_eq!(net.leaders(), vec![1, 2]);
    net.propose(2, "new");
    net.deliver_only(|m| m.to == 3 && is_accept(m));
    net.deliver_only(|m| m.to == 2);
    for message in stale {
        net.deliver_one(message);
    }
    net.violations
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_accept_below_promise_breaks_one_value_per_slot() {
    assert!(stale_accept_scenario(None).is_empty());
    assert!(!stale_accept_scenario(Some(PlantedBug::AcceptBelowPromise)).is_empty());
}

/// A value chosen by the old leader and one follower; a new leader recovers it in phase 1.
#[cfg(feature = "planted-bugs")]
fn recovery_scenario(bug: Option<PlantedBug>) -> Vec<String> {
    let mut net = Net::with_config(3, with_bug(bug));
    net.campaign(1);
    net.tick_all(1);
    net.propose(1, "v");
    net.deliver_only(|m| m.to == 2 && is_accept(m));
    net.deliver_only(|m| m.to == 1); // chosen on 1 + 2; the commit never leaves node 1
    net.drop_all();
    net.crash(1);
    net.forget_leader(2);
    net.forget_leader(3);
    net.campaign(3);
    net.tick_all(2);
    net.violations
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_skip_phase_one_breaks_a_chosen_value() {
    assert!(recovery_scenario(None).is_empty());
    assert!(!recovery_scenario(Some(PlantedBug::SkipPhaseOneForAcceptedSlot)).is_empty());
}

#[cfg(feature = "planted-bugs")]
fn isolated_leader_scenario(bug: Option<PlantedBug>) -> Vec<String> {
    let mut net = Net::with_config(3, with_bug(bug));
    net.campaign(1);
    net.isolated.extend([2, 3]);
    net.propose(1, "lonely");
    net.deliver_all();
    net.violations
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_apply_before_chosen_applies_an_unchosen_slot() {
    assert!(isolated_leader_scenario(None).is_empty());
    assert!(!isolated_leader_scenario(Some(PlantedBug::ApplyBeforeChosen)).is_empty());
}

// ---- range acknowledgements ------------------------------------------------------------------

#[test]
fn a_slot_is_chosen_only_once_a_majority_accepted_every_slot_up_to_it() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.isolated.insert(3);
    let first = net.propose(1, "a").index;
    net.drop_all(); // node 2 never hears of `first`
    let second = net.propose(1, "b").index;
    net.deliver_all();
    assert!(
        net.engine(1).status().commit < first,
        "node 2 accepted only {second}: {first} has the leader alone, and nothing after it is chosen"
    );
    // The heartbeat re-sends `first` to node 2; its answer joins the range it acknowledged.
    net.tick_all(5);
    assert!(net.engine(1).status().commit >= second);
    assert_eq!(net.applied_data(1), vec![data("a"), data("b")]);
}

#[test]
fn an_acceptor_acknowledges_each_run_of_consecutive_slots_on_its_own() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.drop_all();
    let ballot = net.engine(1).ballot();
    let commit = net.engine(1).status().commit;
    let entry = |index: u64| Entry {
        term: ballot.encode(),
        index,
        payload: data("x"),
    };
    let (lo, hi) = (commit + 1, commit + 3);
    net.deliver_one(Message {
        from: 1,
        to: 2,
        ballot,
        body: MessageBody::Accept {
            entries: vec![entry(lo), entry(hi)].into(),
            commit,
        },
    });
    let ranges: Vec<(u64, u64)> = net
        .in_flight
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::Accepted { first, last } if m.from == 2 => Some((first, last)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ranges,
        vec![(lo, lo), (hi, hi)],
        "the hole between is not claimed"
    );
}
