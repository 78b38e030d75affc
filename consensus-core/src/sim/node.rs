//! One simulated member: its replica loop, a disk that loses what was not synced, its state machine,
//! and the [`Host`] through which the replica loop reaches the simulated world.
//!
//! The disk follows the persistence contract exactly: a write is applied to the engine's storage
//! view at once (the OS page cache) and queued; it reaches the *durable* copy a few ticks later, in
//! order. A crash keeps only the durable copy, plus, by the seed's choice, a prefix of the writes
//! still queued (a write may reach the disk before its completion is reported, never after a later
//! one). A write that asked for no sync is confirmed as soon as the writes before it are durable,
//! yet is still lost if the node crashes before it reaches the disk.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::history::KvOutput;
use super::invariants::{SharedChecker, Violation};
use super::kv::{Command, KvStore};
use super::network::Network;
use super::outcome::{Failure, SimStats};
use super::protocol::{ProtocolChecker, SimProtocol};
use super::trace::Trace;
use crate::error::Error;
use crate::protocol::{CommittedRange, Write};
use crate::replica::{Host, Replica};
use crate::storage::MemStorage;
use crate::types::{ConfState, Entry, EntryPayload, NodeId, ReadState, Snapshot};

/// Ticks a disk write may take at most.
const WRITE_MAX_DELAY: u64 = 3;

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Protocol(error.to_string())
    }
}

impl From<Violation> for Failure {
    fn from(violation: Violation) -> Self {
        Failure::Invariant(violation)
    }
}

/// A disk write queued behind the node's earlier writes.
struct QueuedWrite<H> {
    ticket: u64,
    write: Write<H>,
    done_at: u64,
}

/// What a node's disk holds, and what is on its way there.
pub(super) struct Disk<H> {
    pub(super) durable: MemStorage<H>,
    queue: VecDeque<QueuedWrite<H>>,
    next_ticket: u64,
    durable_ticket: u64,
}

impl<H: crate::protocol::DurableState> Disk<H> {
    pub(super) fn new(durable: MemStorage<H>) -> Self {
        Disk {
            durable,
            queue: VecDeque::new(),
            next_ticket: 1,
            durable_ticket: 0,
        }
    }

    /// Writes due by `now` reach the durable copy; returns them (for the checkers).
    pub(super) fn complete(&mut self, now: u64) -> Result<Vec<Write<H>>, Failure> {
        let mut done = Vec::new();
        while self.queue.front().is_some_and(|w| w.done_at <= now) {
            let Some(queued) = self.queue.pop_front() else {
                break;
            };
            self.durable
                .write(&queued.write)
                .map_err(|e| Failure::Protocol(format!("durable write: {e}")))?;
            self.durable_ticket = queued.ticket;
            done.push(queued.write);
        }
        Ok(done)
    }

    /// A crash: the first `survive` queued writes reach the disk unreported, the rest are lost.
    pub(super) fn crash(&mut self, survive: usize) -> usize {
        let queued = self.queue.len();
        for queued in self.queue.drain(..).take(survive) {
            let _ = self.durable.write(&queued.write);
        }
        self.durable_ticket = self.next_ticket - 1;
        queued
    }
}

/// One read a node ordered but has not served yet.
#[derive(Clone, Copy)]
pub(super) struct PendingRead {
    pub(super) client: usize,
    /// The applied index it waits for: its read index once known, or the session's revision
    /// for a sequential read.
    pub(super) index: Option<u64>,
}

/// A command some node applied, for the clients waiting on it.
pub(super) struct AppliedCommand {
    pub(super) node: NodeId,
    pub(super) index: u64,
    /// The command and its output, for data entries (`None` output: a stale duplicate).
    pub(super) command: Option<(Command, Option<KvOutput>)>,
}

/// Everything of a node but its replica loop (so the loop can borrow it as its host).
pub(super) struct NodeState<H> {
    pub(super) id: NodeId,
    pub(super) disk: Disk<H>,
    pub(super) kv: KvStore,
    pub(super) applied: u64,
    pub(super) incarnation: u64,
    pub(super) reads: BTreeMap<u64, PendingRead>,
}

/// A node slot: the running member (if up) and what it keeps across a crash.
pub(super) struct Node<P: SimProtocol> {
    pub(super) replica: Option<Replica<P>>,
    pub(super) state: NodeState<P::HardState>,
}

impl<P: SimProtocol> Node<P> {
    pub(super) fn new(id: NodeId, conf: ConfState) -> Self {
        Node {
            replica: None,
            state: NodeState {
                id,
                disk: Disk::new(MemStorage::new_with_conf(conf)),
                kv: KvStore::new(),
                applied: 0,
                incarnation: 0,
                reads: BTreeMap::new(),
            },
        }
    }

    pub(super) fn engine(&self) -> Option<&P> {
        self.replica.as_ref().map(Replica::engine)
    }

    pub(super) fn engine_mut(&mut self) -> Option<&mut P> {
        self.replica.as_mut().map(Replica::engine_mut)
    }
}

/// The parts of the simulation every node's host reaches.
pub(super) struct World<P: SimProtocol> {
    pub(super) now: u64,
    pub(super) rng: ChaCha8Rng,
    pub(super) network: Network<P::Message>,
    pub(super) nodes: usize,
    pub(super) trace: Trace,
    pub(super) stats: SimStats,
    pub(super) shared: SharedChecker,
    pub(super) checker: P::Checker,
    /// (client, sequence) of every command some replica applied with an effect.
    pub(super) took_effect: BTreeSet<(u64, u64)>,
    /// Commands applied since the clients last looked.
    pub(super) applied: Vec<AppliedCommand>,
}

impl<P: SimProtocol> World<P> {
    pub(super) fn event(&mut self, args: std::fmt::Arguments<'_>) {
        self.trace.record(self.now, args);
    }
}

/// The replica loop's view of the simulated world, for one node.
pub(super) struct SimHost<'a, P: SimProtocol> {
    pub(super) node: &'a mut NodeState<P::HardState>,
    pub(super) world: &'a mut World<P>,
}

impl<P: SimProtocol> Host<P> for SimHost<'_, P> {
    type Error = Failure;

    fn send(&mut self, message: P::Message) -> Result<(), Failure> {
        use crate::protocol::Envelope;
        let (id, to) = (self.node.id, message.to());
        if message.from() != id || to == 0 || to > self.world.nodes as NodeId {
            return Err(Failure::Protocol(format!(
                "node {id} emitted a message with bad routing: {}",
                P::summarize(&message)
            )));
        }
        let now = self.world.now;
        self.world.network.send(now, id, to, message);
        Ok(())
    }

    fn submit(
        &mut self,
        storage: &mut MemStorage<P::HardState>,
        write: &Write<P::HardState>,
    ) -> Result<u64, Failure> {
        let id = self.node.id;
        storage
            .write(write)
            .map_err(|e| Failure::Protocol(format!("node {id} storage write: {e}")))?;
        self.world.checker.written(id, write);
        let delay = self.world.rng.gen_range(0..=WRITE_MAX_DELAY);
        let now = self.world.now;
        let disk = &mut self.node.disk;
        let done_at = disk
            .queue
            .back()
            .map_or(now, |w| w.done_at)
            .max(now + delay);
        let ticket = disk.next_ticket;
        disk.next_ticket += 1;
        let line = describe(write);
        disk.queue.push_back(QueuedWrite {
            ticket,
            write: write.clone(),
            done_at,
        });
        self.world
            .event(format_args!("node {id} write {ticket} queued: {line}"));
        Ok(ticket)
    }

    fn durable(&self) -> u64 {
        self.node.disk.durable_ticket
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Failure> {
        let id = self.node.id;
        self.node.kv = KvStore::from_bytes(&snapshot.data)
            .map_err(|e| Failure::Protocol(format!("node {id} snapshot undecodable: {e}")))?;
        self.node.applied = snapshot.meta.index;
        let (index, digest) = (self.node.applied, self.node.kv.digest());
        self.world.stats.snapshots_installed += 1;
        self.world
            .event(format_args!("node {id} installs snapshot at {index}"));
        self.world.shared.restored(id, index, digest)?;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Failure> {
        for entry in entries {
            self.apply_one(&entry)?;
        }
        Ok(())
    }

    fn apply_stored(
        &mut self,
        storage: &MemStorage<P::HardState>,
        range: CommittedRange,
    ) -> Result<(), Failure> {
        storage.for_each_committed(range, |entry| self.apply_one(entry))
    }

    fn reads(&mut self, reads: Vec<ReadState>) -> Result<(), Failure> {
        let id = self.node.id;
        for read in reads {
            if let Some(pending) = self.node.reads.get_mut(&read.ctx) {
                pending.index = Some(read.index);
                self.world.event(format_args!(
                    "node {id} read ctx {} at index {}",
                    read.ctx, read.index
                ));
            }
        }
        Ok(())
    }

    fn soft_state(&mut self, soft: crate::types::SoftState) {
        let id = self.node.id;
        self.world.event(format_args!(
            "node {id} is {:?}, leader {:?}",
            soft.role, soft.leader
        ));
    }
}

impl<P: SimProtocol> SimHost<'_, P> {
    fn apply_one(&mut self, entry: &Entry) -> Result<(), Failure> {
        let id = self.node.id;
        if entry.index <= self.node.applied {
            // Already covered by a snapshot installed in this round.
            return Ok(());
        }
        let previous = self.node.applied;
        let mut command = None;
        if let EntryPayload::Data(data) = &entry.payload {
            let decoded = Command::decode(data).map_err(|e| {
                Failure::Protocol(format!(
                    "node {id} committed an undecodable command at {}: {e}",
                    entry.index
                ))
            })?;
            let output = self.node.kv.apply(&decoded);
            if output.is_some() {
                self.world
                    .took_effect
                    .insert((decoded.client, decoded.sequence));
            }
            command = Some((decoded, output));
        }
        self.node.applied = entry.index;
        let digest = self.node.kv.digest();
        self.world.shared.applied(id, previous, entry, digest)?;
        self.world.checker.applied(id, entry)?;
        self.world.applied.push(AppliedCommand {
            node: id,
            index: entry.index,
            command,
        });
        Ok(())
    }
}

fn describe<H: std::fmt::Debug>(write: &Write<H>) -> String {
    let mut line = format!("{} entries", write.entries.len());
    if let Some(from) = write.truncate_from {
        line.push_str(&format!(", truncate from {from}"));
    }
    if let Some(hard_state) = &write.hard_state {
        line.push_str(&format!(", hard state {hard_state:?}"));
    }
    if let Some(snapshot) = &write.snapshot {
        line.push_str(&format!(", snapshot at {}", snapshot.meta.index));
    }
    if !write.sync {
        line.push_str(", no sync");
    }
    line
}
