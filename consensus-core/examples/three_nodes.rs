//! Three Raft nodes in one process: elect a leader, propose a few commands, watch them commit.
//!
//! Run with `cargo run -p consensus-core --example three_nodes`. Messages travel by function call;
//! each node runs the one replica loop ([`Replica`]) over a [`MemHost`], whose writes are durable
//! at once.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use consensus_core::{
    ConfState, Config, Consensus, EntryPayload, Envelope, MemHost, MemStorage, Message, Raft,
    Replica, Role,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn main() -> Result<(), consensus_core::Error> {
    let ids = [1u64, 2, 3];
    let mut nodes: BTreeMap<u64, Replica<Raft<MemStorage>>> = BTreeMap::new();
    for id in ids {
        let storage = MemStorage::new_with_conf(ConfState::with_voters(ids));
        let raft = Raft::new(Config::new(id), storage, ChaCha8Rng::seed_from_u64(id))?;
        nodes.insert(id, Replica::new(raft));
    }
    let mut network: VecDeque<Message> = VecDeque::new();

    // The driver loop: tick, deliver messages, and let each node's replica loop send, persist,
    // confirm and apply.
    let mut proposed = 0;
    for tick in 0..200 {
        for node in nodes.values_mut() {
            node.engine_mut().tick();
        }
        loop {
            for (id, node) in nodes.iter_mut() {
                let before = node.engine().status();
                let mut host = MemHost::new();
                node.drive(&mut host)?;
                let after = node.engine().status();
                if (before.role, before.leader) != (after.role, after.leader) {
                    println!(
                        "tick {tick:3}: node {id} is now {:?} (leader {:?})",
                        after.role, after.leader
                    );
                }
                for entry in host.applied {
                    if let EntryPayload::Data(data) = &entry.payload {
                        println!(
                            "tick {tick:3}: node {id} applies #{} {:?}",
                            entry.index,
                            String::from_utf8_lossy(data)
                        );
                    }
                }
                network.extend(host.messages);
            }
            if network.is_empty() {
                break;
            }
            while let Some(message) = network.pop_front() {
                if let Some(node) = nodes.get_mut(&message.to()) {
                    node.engine_mut().step(message)?;
                }
            }
        }
        if let Some(leader) = nodes
            .values_mut()
            .find(|n| n.engine().status().role == Role::Leader)
        {
            if proposed < 3 {
                proposed += 1;
                let at = leader
                    .engine_mut()
                    .propose(Bytes::from(format!("set x = {proposed}")))?;
                println!(
                    "tick {tick:3}: node {} proposes at index {}",
                    leader.engine().id(),
                    at.index
                );
            }
        }
    }
    for node in nodes.values() {
        let status = node.engine().status();
        println!(
            "node {}: {:?}, term {}, commit {}, applied {}",
            status.id, status.role, status.term, status.commit, status.applied
        );
        assert_eq!(status.applied, status.commit);
    }
    Ok(())
}
