//! tikv's raft-rs (`raft` 0.7, prost codec) on the same harness.

use std::collections::VecDeque;

use anyhow::bail;
use raft::eraftpb::{ConfState, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

use super::{Harness, COMPACT_EVERY, PAYLOAD};

pub(super) struct RaftRs {
    nodes: Vec<RawNode<MemStorage>>,
    queue: VecDeque<Message>,
}

impl RaftRs {
    pub(super) fn new() -> anyhow::Result<Self> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            // The same tunables as consensus-core's defaults.
            let config = Config {
                id,
                election_tick: 10,
                heartbeat_tick: 1,
                pre_vote: true,
                check_quorum: true,
                max_size_per_msg: 1 << 20,
                max_inflight_msgs: 256,
                max_uncommitted_size: 64 << 20,
                // Its own batching of appends to one follower, as consensus-core batches.
                batch_append: true,
                ..Config::default()
            };
            let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
            nodes.push(RawNode::new(&config, storage, &logger)?);
        }
        let mut harness = RaftRs {
            nodes,
            queue: VecDeque::new(),
        };
        harness.nodes[0].campaign()?;
        for _ in 0..100 {
            harness.pump();
            if harness.nodes[0].raft.state == StateRole::Leader {
                return Ok(harness);
            }
        }
        bail!("raft-rs: member 1 was not elected")
    }
}

fn count_and_compact(node: &mut RawNode<MemStorage>, leader: bool, entries: &[Entry]) -> usize {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return 0;
    };
    let count = if leader {
        entries
            .iter()
            .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
            .count()
    } else {
        0
    };
    // Each time the applied index crosses a multiple of COMPACT_EVERY, as on the other sides
    // (an exact multiple at the end of a batch is rare, so that test left logs growing).
    if last.index / COMPACT_EVERY > (first.index - 1) / COMPACT_EVERY {
        // Keep a margin so a follower a little behind still finds its entries.
        let _ = node.store().wl().compact(last.index - COMPACT_EVERY / 2);
    }
    count
}

impl Harness for RaftRs {
    fn propose(&mut self, n: usize) -> usize {
        let leader = &mut self.nodes[0];
        let mut accepted = 0;
        while accepted < n && leader.propose(Vec::new(), vec![7u8; PAYLOAD]).is_ok() {
            accepted += 1;
        }
        accepted
    }

    fn pump(&mut self) -> usize {
        let mut committed = 0;
        loop {
            let mut moved = false;
            for (i, node) in self.nodes.iter_mut().enumerate() {
                while node.has_ready() {
                    moved = true;
                    let mut ready = node.ready();
                    self.queue.extend(ready.take_messages());
                    let store = node.store().clone();
                    if !ready.snapshot().is_empty() {
                        let _ = store.wl().apply_snapshot(ready.snapshot().clone());
                    }
                    let entries = ready.take_committed_entries();
                    committed += count_and_compact(node, i == 0, &entries);
                    if !ready.entries().is_empty() {
                        let _ = store.wl().append(ready.entries());
                    }
                    if let Some(hs) = ready.hs() {
                        store.wl().set_hardstate(hs.clone());
                    }
                    self.queue.extend(ready.take_persisted_messages());
                    let mut light = node.advance(ready);
                    if let Some(commit) = light.commit_index() {
                        store.wl().mut_hard_state().set_commit(commit);
                    }
                    self.queue.extend(light.take_messages());
                    let entries = light.take_committed_entries();
                    committed += count_and_compact(node, i == 0, &entries);
                    node.advance_apply();
                }
            }
            while let Some(message) = self.queue.pop_front() {
                moved = true;
                let to = message.to as usize - 1;
                let _ = self.nodes[to].step(message);
            }
            if !moved {
                return committed;
            }
        }
    }

    fn check(&mut self) -> anyhow::Result<()> {
        for _ in 0..20 {
            let applied: Vec<u64> = self.nodes.iter().map(|n| n.raft.raft_log.applied).collect();
            if applied.iter().all(|&a| a == applied[0]) {
                return Ok(());
            }
            for node in &mut self.nodes {
                node.tick();
            }
            self.pump();
        }
        let applied: Vec<u64> = self.nodes.iter().map(|n| n.raft.raft_log.applied).collect();
        anyhow::bail!("raft-rs: members applied {applied:?}, not all as far as the leader")
    }
}
