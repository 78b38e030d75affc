//! The nemesis: crashes, restarts, partitions, one-way cuts, leader transfers, membership changes
//! and compactions, drawn from the seed; and the leader-churn profile.

use rand::seq::SliceRandom;
use rand::Rng;

use super::cluster::Simulation;
use super::outcome::Failure;
use super::protocol::{ProtocolChecker, SimProtocol};
use crate::storage::Storage;
use crate::types::{ConfChange, MemberChange, NodeId, Role};

impl<P: SimProtocol> Simulation<P> {
    pub(super) fn nemesis(&mut self) -> Result<(), Failure> {
        let rng = &mut self.world.rng;
        if !rng.gen_bool(f64::from(self.config.nemesis_ppm) / 1e6) {
            return Ok(());
        }
        let n = self.nodes.len();
        let all: Vec<NodeId> = (1..=n as NodeId).collect();
        let live = self.live_ids();
        let leader = self.leader();
        let rng = &mut self.world.rng;
        match rng.gen_range(0..100) {
            0..=11 => {
                // Crash a node, keeping a majority of slots up.
                if self.crashed.len() < (n - 1) / 2 {
                    if let Some(&id) = live.choose(rng) {
                        self.crash(id);
                    }
                }
            }
            12..=17 => {
                // Crash the leader: what it appended but did not replicate is now a stray tail.
                if let Some(id) = leader {
                    if self.crashed.len() < (n - 1) / 2 {
                        self.crash(id);
                    }
                }
            }
            18..=33 => {
                if let Some(&id) = self.crashed.iter().next() {
                    self.start_node(id)?;
                }
            }
            34..=40 => {
                let mut shuffled = all.clone();
                shuffled.shuffle(rng);
                let cut = rng.gen_range(1..n);
                let groups = vec![shuffled[..cut].to_vec(), shuffled[cut..].to_vec()];
                self.event(format_args!("partition {groups:?}"));
                self.world.network.partition(&all, &groups);
            }
            41..=49 => {
                // Isolate the leader in a minority: it keeps serving its clients until it
                // notices, while the majority elects another leader.
                if let Some(id) = leader {
                    let mut others: Vec<NodeId> =
                        all.iter().copied().filter(|&x| x != id).collect();
                    others.shuffle(rng);
                    let with = rng.gen_range(0..=(n - 1) / 2 - 1);
                    let mut minority = vec![id];
                    minority.extend(others.drain(..with));
                    let groups = vec![minority, others];
                    self.event(format_args!("isolate leader {id}: partition {groups:?}"));
                    self.world.network.partition(&all, &groups);
                }
            }
            50..=53 => {
                let from = rng.gen_range(1..=n as NodeId);
                let to = rng.gen_range(1..=n as NodeId);
                self.event(format_args!("cut link {from}->{to}"));
                self.world.network.cut_one_way(from, to);
            }
            54..=67 => {
                self.event(format_args!("heal network"));
                self.world.network.heal();
            }
            68..=75 => self.transfer_leader(),
            76..=86 => self.change_membership(),
            _ => self.compact()?,
        }
        Ok(())
    }

    /// The leader-churn nemesis (see [`super::SimConfig::leader_churn`]).
    pub(super) fn churn(&mut self) -> Result<(), Failure> {
        if let Some(leader) = self.leader() {
            let term = self.nodes[self.slot(leader)]
                .engine()
                .map_or(0, |e| e.status().term);
            if (term, leader) != self.churn_seen {
                self.churn_seen = (term, leader);
                if self.churn_cut_at.is_none() && self.world.rng.gen_bool(0.7) {
                    let at = self.now() + self.world.rng.gen_range(1..=30);
                    self.churn_cut_at = Some((at, leader));
                }
            }
        }
        if let Some((at, id)) = self.churn_cut_at {
            if self.now() >= at {
                self.churn_cut_at = None;
                let still_leads = self.nodes[self.slot(id)]
                    .engine()
                    .is_some_and(|e| e.status().role == Role::Leader);
                if still_leads {
                    let n = self.nodes.len();
                    if self.world.rng.gen_bool(0.2) && self.crashed.len() < (n - 1) / 2 {
                        self.crash(id);
                    } else {
                        // Rotate: the previous victim rejoins as this leader is cut off, so the
                        // two of them hold competing tails of different terms.
                        let all: Vec<NodeId> = (1..=n as NodeId).collect();
                        let others: Vec<NodeId> =
                            all.iter().copied().filter(|&x| x != id).collect();
                        self.event(format_args!("churn: cut off leader {id}, rejoin the rest"));
                        self.world.network.heal();
                        self.world.network.partition(&all, &[vec![id], others]);
                    }
                    if self.churn_heal_at.is_none() {
                        self.churn_heal_at = Some(self.now() + self.world.rng.gen_range(40..=120));
                    }
                }
            }
        }
        if self.churn_heal_at.is_some_and(|at| self.now() >= at) {
            self.churn_heal_at = None;
            self.event(format_args!("churn: heal, restart a crashed node"));
            self.world.network.heal();
            if let Some(&id) = self.crashed.iter().next() {
                self.start_node(id)?;
            }
        }
        Ok(())
    }

    fn transfer_leader(&mut self) {
        let Some(leader) = self.leader() else { return };
        let slot = self.slot(leader);
        let Some(engine) = self.nodes[slot].engine() else {
            return;
        };
        let voters: Vec<NodeId> = engine
            .status()
            .conf_state
            .voters
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        let Some(&to) = voters.choose(&mut self.world.rng) else {
            return;
        };
        let result = self.nodes[slot].engine_mut().map(|e| e.transfer_leader(to));
        self.world.stats.transfers += 1;
        self.event(format_args!(
            "transfer leadership {leader} -> {to}: {result:?}"
        ));
    }

    fn change_membership(&mut self) {
        let Some(leader) = self.leader() else { return };
        let slot = self.slot(leader);
        let Some(engine) = self.nodes[slot].engine() else {
            return;
        };
        let conf = engine.status().conf_state;
        if conf.is_joint() {
            return;
        }
        let n = self.nodes.len() as NodeId;
        let min_voters = if n == 3 { 2 } else { 3 };
        let mut candidates = Vec::new();
        for id in 1..=n {
            if conf.voters.contains(&id) {
                if conf.voters.len() > min_voters {
                    candidates.push(MemberChange::Remove(id));
                    candidates.push(MemberChange::AddLearner(id));
                }
            } else {
                candidates.push(MemberChange::AddVoter(id));
                if !conf.learners.contains(&id) {
                    candidates.push(MemberChange::AddLearner(id));
                }
            }
        }
        let rng = &mut self.world.rng;
        let Some(&change) = candidates.choose(rng) else {
            return;
        };
        let joint = rng.gen_bool(0.5);
        let Some(engine) = self.nodes[slot].engine_mut() else {
            return;
        };
        // Half the changes go through the protocol's own safe form, half ask for joint consensus
        // (a protocol without it refuses, which is fine).
        let (line, result) = if joint {
            let proposal = ConfChange::EnterJoint(vec![change]);
            (
                format!("{proposal:?}"),
                engine.propose_conf_change(proposal),
            )
        } else {
            (format!("{change:?}"), engine.change_membership(change))
        };
        if result.is_ok() {
            self.world.stats.conf_changes += 1;
        }
        self.event(format_args!(
            "membership change on {leader}: {line}: {result:?}"
        ));
    }

    fn compact(&mut self) -> Result<(), Failure> {
        let live = self.live_ids();
        let Some(&id) = live.choose(&mut self.world.rng) else {
            return Ok(());
        };
        let slot = self.slot(id);
        let node = &mut self.nodes[slot];
        let index = node.state.applied;
        let data = node.state.kv.to_bytes();
        let Some(engine) = node.engine_mut() else {
            return Ok(());
        };
        if index <= engine.storage().snapshot_meta().index {
            return Ok(());
        }
        let conf = engine.status().conf_state;
        engine
            .storage_mut()
            .compact(index, conf, data)
            .map_err(|e| Failure::Protocol(format!("node {id} compact at {index}: {e}")))?;
        // The snapshot file is written and synced before the log prefix is dropped: the durable
        // copy takes the same snapshot (its own log may still hold an older, overwritten tail).
        let snapshot = engine
            .storage()
            .snapshot()
            .map_err(|e| Failure::Protocol(format!("node {id} snapshot after compact: {e}")))?;
        node.state.disk.durable.apply_snapshot(snapshot);
        self.world.stats.compactions += 1;
        self.event(format_args!("node {id} compacts through {index}"));
        self.world.checker.compacted(id, index);
        self.process(slot)
    }
}
