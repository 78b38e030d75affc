//! Three Raft nodes in one process: elect a leader, propose a few commands, watch them commit.
//!
//! Run with `cargo run -p consensus-core --example three_nodes`. Messages travel by function call;
//! each node's storage is a `MemStorage`, written before the write is confirmed to the node.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use consensus_core::{ConfState, Config, Consensus, EntryPayload, MemStorage, Message, Raft, Role};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn main() -> Result<(), consensus_core::Error> {
    let ids = [1u64, 2, 3];
    let mut nodes: BTreeMap<u64, Raft<MemStorage>> = BTreeMap::new();
    for id in ids {
        let storage = MemStorage::new_with_conf(ConfState::with_voters(ids));
        nodes.insert(
            id,
            Raft::new(Config::new(id), storage, ChaCha8Rng::seed_from_u64(id))?,
        );
    }
    let mut network: VecDeque<Message> = VecDeque::new();

    // The driver loop: tick, deliver messages, and for each node: send, persist, confirm, apply.
    let mut proposed = 0;
    for tick in 0..200 {
        for node in nodes.values_mut() {
            node.tick();
        }
        loop {
            let mut progress = false;
            for (id, node) in nodes.iter_mut() {
                while node.has_ready() {
                    progress = true;
                    let ready = node.ready();
                    if let Some(soft) = ready.soft_state {
                        println!(
                            "tick {tick:3}: node {id} is now {:?} (leader {:?})",
                            soft.role, soft.leader
                        );
                    }
                    network.extend(ready.messages); // 1. send (never waits on the write below)
                    if let Some(persist) = ready.persist {
                        node.storage_mut().write(&persist)?; // 2. persist …
                        node.persisted(persist.token)?; //      … then confirm
                    }
                    for entry in ready.committed {
                        // 3. apply
                        if let EntryPayload::Data(data) = &entry.payload {
                            println!(
                                "tick {tick:3}: node {id} applies #{} {:?}",
                                entry.index,
                                String::from_utf8_lossy(data)
                            );
                        }
                    }
                }
            }
            while let Some(message) = network.pop_front() {
                progress = true;
                if let Some(node) = nodes.get_mut(&message.to) {
                    node.step(message)?;
                }
            }
            if !progress {
                break;
            }
        }
        if let Some(leader) = nodes.values_mut().find(|n| n.role() == Role::Leader) {
            if proposed < 3 {
                proposed += 1;
                let at = leader.propose(Bytes::from(format!("set x = {proposed}")))?;
                println!(
                    "tick {tick:3}: node {} proposes at index {}",
                    leader.id(),
                    at.index
                );
            }
        }
    }
    for node in nodes.values() {
        let status = node.status();
        println!(
            "node {}: {:?}, term {}, commit {}, applied {}",
            status.id, status.role, status.term, status.commit, status.applied
        );
        assert_eq!(status.applied, status.commit);
    }
    Ok(())
}
