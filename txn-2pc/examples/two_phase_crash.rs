//! Two-phase commit over three in-memory resource managers, with a participant crash, a
//! coordinator crash and their recoveries.
//!
//! `cargo run -p txn-2pc --example two_phase_crash`
//!
//! The embedder here is the whole "I/O layer": a log per node (a `Vec` of encoded records —
//! the part that survives a crash), a message queue, and the rule of the durability contract:
//! write the records, confirm forced ones, then send what the engine releases.

use std::collections::{BTreeMap, VecDeque};

use txn_2pc::two_phase::{
    Config, Coordinator, CoordinatorEvent, CoordinatorRecord, Message, Participant,
    ParticipantEvent, ParticipantRecord,
};
use txn_2pc::{record::decode_all, DurableRecord, NodeId, Output, TxnId, Vote, Write};

const COORDINATOR: NodeId = 0;

/// A node's durable log: what survives a crash.
type Log = Vec<Vec<u8>>;

struct Cluster {
    coordinator: Option<Coordinator>,
    coordinator_log: Log,
    participants: BTreeMap<NodeId, Option<Participant>>,
    logs: BTreeMap<NodeId, Log>,
    /// What each resource manager has applied: (transaction, outcome).
    applied: BTreeMap<NodeId, Vec<String>>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
}

/// Writes the records (this log is always durable, so forced writes are confirmed at once).
fn persist<R: DurableRecord + std::fmt::Debug>(
    node: NodeId,
    log: &mut Log,
    writes: &[Write<R>],
) -> Vec<txn_2pc::ForceToken> {
    let mut tokens = Vec::new();
    for write in writes {
        log.push(write.record().encode());
        if let Write::Force { token, record } = write {
            println!("  n{node} forces {record:?}");
            tokens.push(*token);
        }
    }
    tokens
}

impl Cluster {
    fn new(participants: &[NodeId]) -> Self {
        Cluster {
            coordinator: Some(Coordinator::new(COORDINATOR, Config::default())),
            coordinator_log: Log::new(),
            participants: participants
                .iter()
                .map(|&p| (p, Some(Participant::new(p, Config::default()))))
                .collect(),
            logs: participants.iter().map(|&p| (p, Log::new())).collect(),
            applied: BTreeMap::new(),
            queue: VecDeque::new(),
        }
    }

    fn drain_coordinator(&mut self) {
        while let Some(c) = self.coordinator.as_mut() {
            let out: Output<_, CoordinatorRecord, _> = c.take_output();
            if out.is_empty() {
                return;
            }
            for token in persist(COORDINATOR, &mut self.coordinator_log, &out.writes) {
                c.forced(token).expect("a token this engine issued");
            }
            for event in &out.events {
                if let CoordinatorEvent::Decided { txn, outcome } = event {
                    println!("  coordinator decided {outcome} for {txn}");
                }
            }
            self.queue
                .extend(out.messages.into_iter().map(|(to, m)| (COORDINATOR, to, m)));
        }
    }

    fn drain_participant(&mut self, id: NodeId) {
        loop {
            let Some(Some(p)) = self.participants.get_mut(&id) else {
                return;
            };
            let out = p.take_output();
            if out.is_empty() {
                return;
            }
            let log = self.logs.entry(id).or_default();
            for token in persist(id, log, &out.writes) {
                p.forced(token).expect("a token this engine issued");
            }
            for event in out.events {
                match event {
                    // The resource manager prepares its work and votes yes.
                    ParticipantEvent::PrepareRequested { txn } => {
                        p.vote(txn, Vote::Yes).expect("a vote was requested")
                    }
                    ParticipantEvent::Apply { txn, outcome } => {
                        println!("  n{id} applies {outcome} to {txn}");
                        self.applied
                            .entry(id)
                            .or_default()
                            .push(format!("{txn} {outcome}"));
                    }
                    other => println!("  n{id} reports {other:?}"),
                }
            }
            self.queue
                .extend(out.messages.into_iter().map(|(to, m)| (id, to, m)));
        }
    }

    /// Delivers messages until none are left (messages to a crashed node are lost).
    fn run(&mut self) {
        self.drain_coordinator();
        for id in self.participants.keys().copied().collect::<Vec<_>>() {
            self.drain_participant(id);
        }
        while let Some((from, to, message)) = self.queue.pop_front() {
            if to == COORDINATOR {
                if let Some(c) = self.coordinator.as_mut() {
                    let _ = c.step(from, message);
                    self.drain_coordinator();
                }
            } else if let Some(Some(p)) = self.participants.get_mut(&to) {
                let _ = p.step(from, message);
                self.drain_participant(to);
            }
        }
    }

    fn ticks(&mut self, n: u64) {
        for _ in 0..n {
            if let Some(c) = self.coordinator.as_mut() {
                c.tick();
            }
            for p in self.participants.values_mut().flatten() {
                p.tick();
            }
            self.run();
        }
    }
}

fn main() {
    let mut cluster = Cluster::new(&[1, 2, 3]);

    println!("T1: a participant crashes right after voting yes");
    let t1 = TxnId(1);
    cluster
        .coordinator
        .as_mut()
        .expect("up")
        .begin(t1, &[1, 2, 3])
        .expect("a new transaction");
    // Deliver the PREPAREs and let every participant vote, then crash n2 before it hears.
    cluster.drain_coordinator();
    for _ in 0..3 {
        if let Some((from, to, message)) = cluster.queue.pop_front() {
            if let Some(Some(p)) = cluster.participants.get_mut(&to) {
                p.step(from, message).expect("a valid PREPARE");
            }
            cluster.drain_participant(to);
        }
    }
    println!(
        "  n2 CRASHES (its log survives: {} records)",
        cluster.logs[&2].len()
    );
    cluster.participants.insert(2, None);
    cluster.run();

    let records = decode_all::<ParticipantRecord, _>(cluster.logs[&2].iter()).expect("parsable");
    let (recovered, in_doubt) =
        Participant::recover(2, Config::default(), records).expect("consistent records");
    println!(
        "  n2 recovers; in doubt: {:?}",
        in_doubt.iter().map(|d| d.txn).collect::<Vec<_>>()
    );
    cluster.participants.insert(2, Some(recovered));
    // The coordinator keeps resending COMMIT until n2 acknowledges; n2 also asks on its own.
    cluster.ticks(40);

    println!("\nT2: the coordinator crashes after forcing its decision, before any COMMIT leaves");
    let t2 = TxnId(2);
    let c = cluster.coordinator.as_mut().expect("up");
    c.begin(t2, &[1, 3]).expect("a new transaction");
    cluster.drain_coordinator();
    while let Some((from, to, message)) = cluster.queue.pop_front() {
        if to == COORDINATOR {
            let c = cluster.coordinator.as_mut().expect("up");
            c.step(from, message).expect("a valid vote");
            // Write the decision, but crash before sending anything.
            let out = c.take_output();
            persist(COORDINATOR, &mut cluster.coordinator_log, &out.writes);
            if !out.writes.is_empty() {
                break;
            }
        } else if let Some(Some(p)) = cluster.participants.get_mut(&to) {
            p.step(from, message).expect("a valid PREPARE");
            cluster.drain_participant(to);
        }
    }
    println!("  coordinator CRASHES");
    cluster.coordinator = None;
    cluster.queue.clear();
    cluster.ticks(5);
    let records =
        decode_all::<CoordinatorRecord, _>(cluster.coordinator_log.iter()).expect("parsable");
    let (recovered, resumed) =
        Coordinator::recover(COORDINATOR, Config::default(), records).expect("consistent");
    println!("  coordinator recovers; resuming {resumed:?}");
    cluster.coordinator = Some(recovered);
    cluster.ticks(40);

    println!("\nwhat each resource manager applied:");
    for (node, applied) in &cluster.applied {
        println!("  n{node}: {applied:?}");
    }
    assert_eq!(cluster.applied[&2], vec!["T1 commit"]);
    assert_eq!(cluster.applied[&1], vec!["T1 commit", "T2 commit"]);
    assert_eq!(cluster.applied[&3], vec!["T1 commit", "T2 commit"]);
}
