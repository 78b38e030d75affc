//! The `omnipaxos` crate (0.2, batching on, its in-memory storage) on the same harness.
//!
//! Held to what consensus-core does on it: every server reads every entry decided there
//! (`read_decided_suffix`, as an application applying the log would; consensus-core hands each
//! member its committed entries), the leader's decided entries are the count, and
//! [`Harness::check`] fails the run unless every follower decided and read as far as the leader.

use omnipaxos::macros::Entry;
use omnipaxos::messages::Message;
use omnipaxos::util::LogEntry;
use omnipaxos::{ClusterConfig, OmniPaxos, ServerConfig};
use omnipaxos_storage::memory_storage::MemoryStorage;

use consensus_core::Bytes;

use super::{Harness, COMPACT_EVERY, PAYLOAD};

/// The proposal payload: the same shared 16-byte [`Bytes`] buffer consensus-core proposes, so
/// both sides replicate, store and read back the same refcounted payload (an inline
/// `[u8; 16]` here made every omnipaxos copy a 16-byte memcpy where consensus-core pays a
/// refcount increment and decrement).
#[derive(Clone, Debug, Entry)]
pub(super) struct Payload(#[allow(dead_code)] Bytes);

type Node = OmniPaxos<Payload, MemoryStorage<Payload>>;

pub(super) struct OmniPaxosPeer {
    nodes: Vec<Node>,
    queue: Vec<Message<Payload>>,
    payload: Bytes,
    buffer: Vec<Message<Payload>>,
    decided: usize,
    /// Per server: the log index up to which its decided entries were read (applied).
    read: Vec<usize>,
}

impl OmniPaxosPeer {
    /// Three servers, server 1 with the highest priority; `batch` is the batch size.
    pub(super) fn new(batch: usize) -> anyhow::Result<Self> {
        let cluster = ClusterConfig {
            configuration_id: 1,
            nodes: vec![1, 2, 3],
            flexible_quorum: None,
        };
        let mut nodes = Vec::new();
        for pid in 1..=3u64 {
            // omnipaxos' `logging` feature adds fields (the update then fills them).
            #[allow(clippy::needless_update)]
            let server = ServerConfig {
                pid,
                election_tick_timeout: 5,
                resend_message_tick_timeout: 50,
                buffer_size: 1 << 20,
                batch_size: batch.max(1),
                flush_batch_tick_timeout: 1,
                leader_priority: if pid == 1 { 10 } else { 0 },
                ..ServerConfig::default()
            };
            nodes.push(
                cluster
                    .clone()
                    .build_for_server(server, MemoryStorage::default())
                    .map_err(|e| anyhow::anyhow!("omnipaxos config: {e:?}"))?,
            );
        }
        let mut peer = OmniPaxosPeer {
            nodes,
            queue: Vec::new(),
            payload: Bytes::from(vec![7u8; PAYLOAD]),
            buffer: Vec::new(),
            decided: 0,
            read: vec![0; 3],
        };
        for _ in 0..1000 {
            for node in &mut peer.nodes {
                node.tick();
            }
            peer.deliver();
            if peer.nodes[0].get_current_leader() == Some((1, true)) {
                peer.decided = peer.nodes[0].get_decided_idx();
                peer.read = peer.nodes.iter().map(|n| n.get_decided_idx()).collect();
                return Ok(peer);
            }
        }
        anyhow::bail!("omnipaxos: server 1 was not elected")
    }

    /// Moves every outgoing message until nothing moves; returns whether anything did.
    fn deliver(&mut self) -> bool {
        let mut moved = false;
        loop {
            for node in &mut self.nodes {
                node.take_outgoing_messages(&mut self.buffer);
                self.queue.append(&mut self.buffer);
            }
            if self.queue.is_empty() {
                return moved;
            }
            moved = true;
            for message in std::mem::take(&mut self.queue) {
                let to = message.get_receiver() as usize - 1;
                self.nodes[to].handle_incoming(message);
            }
        }
    }
}

impl Harness for OmniPaxosPeer {
    fn propose(&mut self, n: usize) -> usize {
        let leader = &mut self.nodes[0];
        let mut accepted = 0;
        while accepted < n && leader.append(Payload(self.payload.clone())).is_ok() {
            accepted += 1;
        }
        accepted
    }

    fn pump(&mut self) -> usize {
        loop {
            let moved = self.deliver();
            if !moved {
                if self.nodes[0].get_batched_len() > 0 {
                    // A partly filled batch is flushed by a tick (its flush timeout is 1 tick).
                    self.nodes[0].tick();
                    continue;
                }
                break;
            }
        }
        // Every server applies what it decided; the leader's decided entries are the count.
        let mut committed = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(entries) = node.read_decided_suffix(self.read[i]) {
                let data = entries
                    .iter()
                    .filter(|e| matches!(e, LogEntry::Decided(_)))
                    .count();
                if i == 0 {
                    committed = data;
                }
                self.read[i] += entries.len();
            }
        }
        let decided = self.nodes[0].get_decided_idx();
        debug_assert_eq!(
            committed,
            decided - self.decided,
            "leader read what it decided"
        );
        if decided / COMPACT_EVERY as usize > self.decided / COMPACT_EVERY as usize {
            let upto = decided - COMPACT_EVERY as usize / 2;
            for node in &mut self.nodes {
                let _ = node.trim(Some(upto));
            }
        }
        self.decided = decided;
        committed
    }

    fn check(&mut self) -> anyhow::Result<()> {
        let leader = self.read[0];
        for (i, node) in self.nodes.iter().enumerate() {
            let (decided, read) = (node.get_decided_idx(), self.read[i]);
            if decided != leader || read != leader {
                anyhow::bail!(
                    "omnipaxos server {}: decided {decided}, read {read}, leader read {leader}",
                    i + 1
                );
            }
        }
        Ok(())
    }
}
