//! Paxos safety invariants, checked from outside the engines (the simulator, the tests).
//!
//! [`PaxosChecker`] is pure: feed it every write as it becomes durable on a node and every entry
//! a node applies, and it reports the first violation it sees:
//!
//! - **one value per ballot**: a slot never holds two values accepted under one ballot;
//! - **at most one value chosen per slot** (chosen: a majority of the voters durably accepted the
//!   same `(slot, ballot)`);
//! - **a chosen value stays chosen**: every acceptance for that slot under a higher ballot
//!   carries the chosen payload;
//! - **promises never go backwards** on one node (across restarts, since durable state survives);
//! - **apply only what is chosen, in order**: an applied entry is chosen with that payload and
//!   follows the node's previous one without a gap.
//!
//! Which voters decide a slot: the `voters` first passed in are the initial configuration; from
//! then on the checker derives each slot's configuration itself from the membership changes it
//! saw chosen (a change chosen at slot `i` governs the slots after `i`, as the engine does), so a
//! node that lags in applying a change cannot make it miscount. Until a change is seen chosen,
//! the initial voters decide.

use std::collections::{BTreeMap, BTreeSet};

use super::ballot::Ballot;
use super::HardState;
use crate::protocol::Write;
use crate::types::{ConfChange, ConfState, Entry, EntryPayload, MemberChange, NodeId};

/// Acceptances of one `(slot, ballot)`.
#[derive(Debug)]
struct Accepted {
    payload: EntryPayload,
    acceptors: BTreeSet<NodeId>,
}

/// The chosen value of a slot, with the lowest ballot it was seen chosen under.
#[derive(Debug)]
struct Chosen {
    ballot: u64,
    payload: EntryPayload,
}

/// Tracks acceptances, chosen values, promises and applied slots; see the module docs.
#[derive(Debug, Default)]
pub struct PaxosChecker {
    accepted: BTreeMap<(u64, u64), Accepted>,
    chosen: BTreeMap<u64, Chosen>,
    promised: BTreeMap<NodeId, Ballot>,
    applied: BTreeMap<NodeId, u64>,
    /// The voters first given.
    initial: Option<BTreeSet<NodeId>>,
    /// Membership changes seen chosen, by slot.
    chosen_changes: BTreeMap<u64, MemberChange>,
}

impl PaxosChecker {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// `write` became durable on `node`; `voters` is the configuration deciding its slots.
    pub fn on_durable_write(
        &mut self,
        node: NodeId,
        write: &Write<HardState>,
        voters: &BTreeSet<NodeId>,
    ) -> Result<(), String> {
        if let Some(hard_state) = &write.hard_state {
            let previous = self.promised.entry(node).or_default();
            if hard_state.promised < *previous {
                return Err(format!(
                    "node {node}'s durable promise went back from {} to {}",
                    previous, hard_state.promised
                ));
            }
            *previous = hard_state.promised;
        }
        if write.truncate_from.is_some() {
            return Err(format!(
                "node {node} truncated its slots (Paxos never cuts slots)"
            ));
        }
        if self.initial.is_none() {
            self.initial = Some(voters.clone());
        }
        for entry in &write.entries {
            let voters = self.voters_for(entry.index);
            self.on_accept(node, entry, &voters)?;
        }
        Ok(())
    }

    /// The voters deciding `slot`: the initial ones with every change chosen below it applied.
    fn voters_for(&self, slot: u64) -> BTreeSet<NodeId> {
        let mut conf = ConfState {
            voters: self.initial.clone().unwrap_or_default(),
            ..ConfState::default()
        };
        for change in self.chosen_changes.range(..slot).map(|(_, c)| c) {
            {
                match *change {
                    MemberChange::AddVoter(id) => {
                        conf.voters.insert(id);
                    }
                    MemberChange::AddLearner(id) | MemberChange::Remove(id) => {
                        conf.voters.remove(&id);
                    }
                }
            }
        }
        conf.voters
    }

    fn on_accept(
        &mut self,
        node: NodeId,
        entry: &Entry,
        voters: &BTreeSet<NodeId>,
    ) -> Result<(), String> {
        let (slot, ballot) = (entry.index, entry.term);
        if let Some(chosen) = self.chosen.get(&slot) {
            if ballot > chosen.ballot && entry.payload != chosen.payload {
                return Err(format!(
                    "slot {slot}: node {node} accepted {:?} under ballot {} above the ballot {} \
                     that chose {:?}",
                    entry.payload,
                    Ballot::decode(ballot),
                    Ballot::decode(chosen.ballot),
                    chosen.payload
                ));
            }
        }
        let accepted = self
            .accepted
            .entry((slot, ballot))
            .or_insert_with(|| Accepted {
                payload: entry.payload.clone(),
                acceptors: BTreeSet::new(),
            });
        if accepted.payload != entry.payload {
            return Err(format!(
                "slot {slot}: two values accepted under ballot {}: {:?} and {:?}",
                Ballot::decode(ballot),
                accepted.payload,
                entry.payload
            ));
        }
        accepted.acceptors.insert(node);
        let count = voters
            .iter()
            .filter(|id| accepted.acceptors.contains(id))
            .count();
        if count * 2 <= voters.len() {
            return Ok(());
        }
        let payload = accepted.payload.clone();
        match self.chosen.get_mut(&slot) {
            Some(chosen) if chosen.payload != payload => {
                return Err(format!(
                    "slot {slot}: two values chosen: {:?} (ballot {}) and {:?} (ballot {})",
                    chosen.payload,
                    Ballot::decode(chosen.ballot),
                    payload,
                    Ballot::decode(ballot)
                ));
            }
            Some(chosen) => chosen.ballot = chosen.ballot.min(ballot),
            None => {
                // Acceptances already made above this ballot must carry the same value.
                for ((_, higher), other) in
                    self.accepted.range((slot, ballot + 1)..=(slot, u64::MAX))
                {
                    if other.payload != payload {
                        return Err(format!(
                            "slot {slot}: {:?} chosen under ballot {} but {:?} accepted under \
                             higher ballot {}",
                            payload,
                            Ballot::decode(ballot),
                            other.payload,
                            Ballot::decode(*higher)
                        ));
                    }
                }
                if let EntryPayload::ConfChange(ConfChange::Single(change)) = &payload {
                    self.chosen_changes.insert(slot, *change);
                }
                self.chosen.insert(slot, Chosen { ballot, payload });
            }
        }
        Ok(())
    }

    /// `node` applied `entry` (handed out in `Ready::committed`).
    pub fn on_applied(&mut self, node: NodeId, entry: &Entry) -> Result<(), String> {
        let slot = entry.index;
        let previous = self.applied.get(&node).copied().unwrap_or(0);
        if slot != previous + 1 {
            return Err(format!(
                "node {node} applied slot {slot} after slot {previous} (a gap or a repeat)"
            ));
        }
        match self.chosen.get(&slot) {
            None => {
                return Err(format!(
                    "node {node} applied slot {slot}, which is not chosen"
                ))
            }
            Some(chosen) if chosen.payload != entry.payload => {
                return Err(format!(
                    "node {node} applied {:?} at slot {slot}, but {:?} is chosen there",
                    entry.payload, chosen.payload
                ))
            }
            Some(_) => {}
        }
        self.applied.insert(node, slot);
        Ok(())
    }

    /// `node` restored its state machine to slot `index` (a snapshot installed, or a restart
    /// that re-applies from its configured `applied`).
    pub fn on_restored(&mut self, node: NodeId, index: u64) {
        self.applied.insert(node, index);
    }

    /// The value chosen at `slot`, if the checker saw it chosen.
    pub fn chosen(&self, slot: u64) -> Option<&EntryPayload> {
        self.chosen.get(&slot).map(|c| &c.payload)
    }

    /// How many slots the checker saw chosen.
    pub fn chosen_count(&self) -> usize {
        self.chosen.len()
    }
}
