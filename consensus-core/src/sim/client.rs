//! Simulated clients: one operation at a time each, with a session (client id, sequence number)
//! so a retried write applies once, retries on another node after a timeout, and a history of
//! what they observed for the linearizability check.
//!
//! A get goes through the log, through `read_index` (linearizable), or is *sequential*: any
//! member serves it once it has applied at least the session's revision — the highest applied
//! index this client saw in an answer (the answering member's, for writes and reads alike). A
//! member behind it holds the read; the client gives up on it after `RETRY_AFTER` and asks
//! another, as the node's client does on its typed error.

use rand::Rng;

use super::cluster::Simulation;
use super::history::{Consistency, KvInput, KvOutput, OpId};
use super::kv::Command;
use super::node::PendingRead;
use super::outcome::Failure;
use super::protocol::SimProtocol;
use crate::error::Error;
use crate::types::NodeId;

/// Ticks before a client gives up on an operation (its outcome is then unknown).
const OP_TIMEOUT: u64 = 40;
/// Ticks before a client resubmits to another node (same sequence number).
const RETRY_AFTER: u64 = 25;

/// What a client is waiting for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Waiting {
    /// Not submitted (or to be resubmitted) at `at`.
    Submit { at: u64 },
    /// Proposed on `node` at `index`.
    Entry { node: NodeId, index: u64 },
    /// A read ordered on `node` with context `ctx`.
    Read { node: NodeId, ctx: u64 },
}

/// How a client's operation reaches the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Path {
    /// Proposed as a log entry (writes, and some gets).
    Log,
    /// A get ordered by `read_index`: linearizable.
    ReadIndex,
    /// A get served by any member that has applied the session's revision.
    Sequential,
}

/// Planted harness bugs (only with the `planted-bugs` feature), to prove the checker bites.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HarnessBug {
    /// A member serves a sequential read at once, without waiting for the session's revision.
    SequentialReadIgnoresSession,
}

pub(super) struct Outstanding {
    op: OpId,
    command: Command,
    deadline: u64,
    waiting: Waiting,
    path: Path,
    /// When to give up on the current attempt and resubmit (same session sequence, so a write
    /// that did commit is answered from the session cache rather than applied twice).
    retry_at: u64,
}

pub(super) struct Client {
    id: u64,
    sequence: u64,
    pub(super) outstanding: Option<Outstanding>,
    next_op_at: u64,
    leader_hint: Option<NodeId>,
    values_written: u64,
    /// The highest applied index seen in an answer: what a sequential read must not go behind.
    session_revision: u64,
}

impl Client {
    pub(super) fn new(index: usize) -> Self {
        Client {
            id: index as u64 + 1,
            sequence: 0,
            outstanding: None,
            next_op_at: 0,
            leader_hint: None,
            values_written: 0,
            session_revision: 0,
        }
    }
}

impl<P: SimProtocol> Simulation<P> {
    /// Answers the clients waiting on commands applied since the last call: a proposal landed if
    /// the entry applied at its index carries its command (compared by content, not by term).
    pub(super) fn answer_applied(&mut self) {
        let applied = std::mem::take(&mut self.world.applied);
        for done in applied {
            for client in 0..self.clients.len() {
                let Some(out) = self.clients[client].outstanding.as_ref() else {
                    continue;
                };
                let Waiting::Entry { node, index } = out.waiting else {
                    continue;
                };
                if node != done.node || index != done.index {
                    continue;
                }
                let ours = done.command.as_ref().filter(|(c, _)| *c == out.command);
                match ours {
                    Some((_, Some(output))) => {
                        let applied = self.nodes[self.slot(done.node)].state.applied;
                        self.finish(client, *output, applied)
                    }
                    // Our command, but answered as a stale duplicate: outcome unknown.
                    Some((_, None)) => self.abandon(client),
                    None => {
                        let at = self.now() + 1;
                        if let Some(out) = self.clients[client].outstanding.as_mut() {
                            out.waiting = Waiting::Submit { at };
                        }
                    }
                }
            }
        }
    }

    pub(super) fn serve_reads(&mut self, slot: usize) {
        let node = &self.nodes[slot].state;
        let ready: Vec<(u64, usize)> = node
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= node.applied))
            .map(|(&ctx, r)| (ctx, r.client))
            .collect();
        for (ctx, client) in ready {
            self.nodes[slot].state.reads.remove(&ctx);
            let Some(out) = self.clients[client].outstanding.as_ref() else {
                continue;
            };
            if !matches!(out.waiting, Waiting::Read { ctx: c, .. } if c == ctx) {
                continue;
            }
            let KvInput::Get { key } = out.command.input else {
                continue;
            };
            let state = &self.nodes[slot].state;
            let (value, applied) = (state.kv.get(key), state.applied);
            if out.path == Path::Sequential {
                self.world.stats.sequential_reads += 1;
            }
            self.finish(client, KvOutput::Get(value), applied);
        }
    }

    /// Completes the client's operation, answered by a member that had applied through `applied`.
    fn finish(&mut self, client: usize, output: KvOutput, applied: u64) {
        let session = &mut self.clients[client].session_revision;
        *session = (*session).max(applied);
        if let Some(out) = self.clients[client].outstanding.take() {
            self.history.complete(out.op, output);
            self.world.stats.completed += 1;
            let c = self.clients[client].id;
            self.event(format_args!(
                "client {c} {} -> {output} (applied {applied})",
                out.command.input
            ));
            let think = self.world.rng.gen_range(0..self.config.client_think.max(1));
            self.clients[client].next_op_at = self.now() + think;
        }
    }

    fn abandon(&mut self, client: usize) {
        if let Some(out) = self.clients[client].outstanding.take() {
            self.history.abandon(out.op);
            let c = self.clients[client].id;
            self.abandoned.push((out.op, c, out.command.sequence));
            self.event(format_args!("client {c} {} timed out", out.command.input));
            self.clients[client].next_op_at = self.now() + 1;
            self.clients[client].leader_hint = None;
        }
    }

    /// Clients waiting on a crashed node learn nothing; they retry elsewhere.
    pub(super) fn clients_forget_node(&mut self, id: NodeId) {
        let at = self.now() + 2;
        for client in &mut self.clients {
            if let Some(out) = client.outstanding.as_mut() {
                let on_node = match out.waiting {
                    Waiting::Entry { node, .. } | Waiting::Read { node, .. } => node == id,
                    Waiting::Submit { .. } => false,
                };
                if on_node {
                    out.waiting = Waiting::Submit { at };
                    client.leader_hint = None;
                }
            }
        }
    }

    fn random_input(&mut self, client: usize) -> KvInput {
        let rng = &mut self.world.rng;
        let key = rng.gen_range(0..self.config.keys);
        let kind = rng.gen_range(0..100);
        let c = &mut self.clients[client];
        match kind {
            0..=44 => KvInput::Get { key },
            45..=69 => {
                c.values_written += 1;
                KvInput::Put {
                    key,
                    value: c.id * 1_000_000 + c.values_written,
                }
            }
            70..=91 => {
                c.values_written += 1;
                let new = c.id * 1_000_000 + c.values_written;
                // Expect a value some node holds now (often the current one), or absence.
                let slot = rng.gen_range(0..self.nodes.len());
                let expected = if rng.gen_bool(0.2) {
                    None
                } else {
                    self.nodes[slot].state.kv.get(key)
                };
                KvInput::CompareAndSet { key, expected, new }
            }
            _ => KvInput::Delete { key },
        }
    }

    pub(super) fn client_step(&mut self, client: usize) -> Result<(), Failure> {
        let now = self.now();
        if self.clients[client].outstanding.is_none() {
            if !self.faults_on || now < self.clients[client].next_op_at {
                return Ok(());
            }
            if self.config.client_bursts && (now / 50) % 2 == 1 {
                return Ok(());
            }
            let input = self.random_input(client);
            let path = match input {
                KvInput::Get { .. } => match self.world.rng.gen_range(0..10) {
                    0..=4 => Path::ReadIndex,
                    5..=7 => Path::Sequential,
                    _ => Path::Log,
                },
                _ => Path::Log,
            };
            self.call(client, input, path, now + OP_TIMEOUT);
        }
        let Some(out) = self.clients[client].outstanding.as_ref() else {
            return Ok(());
        };
        if now >= out.deadline {
            self.abandon(client);
            return Ok(());
        }
        if now >= out.retry_at && !matches!(out.waiting, Waiting::Submit { .. }) {
            // The node it went to may have been removed, or lost its leadership: ask again.
            let (c, seq) = (self.clients[client].id, out.command.sequence);
            self.event(format_args!("client {c} resubmits seq {seq}"));
            self.retry_later(client, None);
            return Ok(());
        }
        let Waiting::Submit { at } = out.waiting else {
            return Ok(());
        };
        if now < at {
            return Ok(());
        }
        self.submit(client)
    }

    /// Starts an operation of `client` (recorded in the history at once).
    fn call(&mut self, client: usize, input: KvInput, path: Path, deadline: u64) {
        let now = self.now();
        let c = &mut self.clients[client];
        c.sequence += 1;
        let command = Command {
            client: c.id,
            sequence: c.sequence,
            input,
        };
        let consistency = match path {
            Path::Sequential => Consistency::Sequential,
            Path::Log | Path::ReadIndex => Consistency::Linearizable,
        };
        let op = self.history.invoke_with(c.id, input, consistency);
        self.world.stats.operations += 1;
        self.event(format_args!(
            "client {} calls {input} (seq {})",
            command.client, command.sequence
        ));
        self.clients[client].outstanding = Some(Outstanding {
            op,
            command,
            deadline,
            waiting: Waiting::Submit { at: now },
            path,
            retry_at: u64::MAX,
        });
    }

    /// The write the liveness phase waits for.
    pub(super) fn call_final_write(&mut self, client: usize) {
        let value = self.clients[client].id * 1_000_000 + 999_999;
        self.call(client, KvInput::Put { key: 0, value }, Path::Log, u64::MAX);
    }

    fn pick_node(&mut self, client: usize) -> NodeId {
        let path = self.clients[client].outstanding.as_ref().map(|o| o.path);
        let rng = &mut self.world.rng;
        if path == Some(Path::Sequential) && rng.gen_bool(0.7) {
            // Any member may serve it: most often not the leader.
            return rng.gen_range(1..=self.nodes.len() as NodeId);
        }
        if path == Some(Path::ReadIndex) && rng.gen_bool(0.5) {
            // Reads often go to the client's home node (any node can order a read: a follower
            // forwards it to the leader it knows).
            return (client % self.nodes.len()) as NodeId + 1;
        }
        match self.clients[client].leader_hint {
            Some(id) if rng.gen_bool(0.9) => id,
            _ => rng.gen_range(1..=self.nodes.len() as NodeId),
        }
    }

    fn submit(&mut self, client: usize) -> Result<(), Failure> {
        let target = self.pick_node(client);
        let slot = self.slot(target);
        let Some(out) = self.clients[client].outstanding.as_ref() else {
            return Ok(());
        };
        let (command, path) = (out.command, out.path);
        let c = self.clients[client].id;
        let ctx = self.next_read_ctx;
        let session = self.sequential_floor(client);
        let Some(engine) = self.nodes[slot].engine_mut() else {
            self.retry_later(client, None);
            return Ok(());
        };
        let result = match path {
            Path::ReadIndex => engine
                .read_index(ctx)
                .map(|()| Waiting::Read { node: target, ctx }),
            // Served locally once the member has applied the session's revision.
            Path::Sequential => Ok(Waiting::Read { node: target, ctx }),
            Path::Log => engine.propose(command.encode()).map(|p| Waiting::Entry {
                node: target,
                index: p.index,
            }),
        };
        match result {
            Ok(waiting) => {
                if let Waiting::Read { ctx, .. } = waiting {
                    self.next_read_ctx += 1;
                    let index = (path == Path::Sequential).then_some(session);
                    if index.is_some_and(|floor| floor > self.nodes[slot].state.applied) {
                        self.world.stats.sequential_held += 1;
                    }
                    self.nodes[slot]
                        .state
                        .reads
                        .insert(ctx, PendingRead { client, index });
                }
                self.event(format_args!(
                    "client {c} seq {} submitted to {target}: {waiting:?} ({path:?}, session {session})",
                    command.sequence
                ));
                let retry_at = self.now() + RETRY_AFTER;
                if let Some(out) = self.clients[client].outstanding.as_mut() {
                    out.waiting = waiting;
                    out.retry_at = retry_at;
                }
                if path != Path::Sequential {
                    self.clients[client].leader_hint = Some(target);
                }
                self.process(slot)
            }
            Err(Error::NotLeader { leader }) => {
                self.retry_later(client, leader);
                Ok(())
            }
            Err(_) => {
                self.retry_later(client, None);
                Ok(())
            }
        }
    }

    /// The applied index a member must reach before it serves this client a sequential read.
    fn sequential_floor(&self, client: usize) -> u64 {
        #[cfg(feature = "planted-bugs")]
        if self.config.harness_bug == Some(HarnessBug::SequentialReadIgnoresSession) {
            return 0;
        }
        self.clients[client].session_revision
    }

    fn retry_later(&mut self, client: usize, hint: Option<NodeId>) {
        let at = self.now() + self.world.rng.gen_range(1..=3);
        let c = &mut self.clients[client];
        c.leader_hint = hint;
        if let Some(out) = c.outstanding.as_mut() {
            out.waiting = Waiting::Submit { at };
        }
    }
}
