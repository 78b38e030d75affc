//! Tombstone collection. A delete leaves a tombstone (its context stays, so older copies
//! arriving later are recognised as superseded). The key's owner (first of its preference list)
//! removes it only when every replica has confirmed holding exactly that tombstone durably, and
//! then only after `tombstone_grace_ms`, longer than any older copy can stay in flight (a push, a
//! read repair, an anti-entropy answer); it then tells the others to purge the same tombstone.
//! A replica whose copy changed meanwhile (a newer write) keeps it. Hint replays send the
//! current object, never an old one, so a collected key cannot come back from a hint.

use std::collections::{BTreeMap, BTreeSet};

use super::Peer;
use crate::error::StepError;
use crate::message::Message;
use crate::types::{Key, NodeId};

#[derive(Debug)]
struct Round {
    digest: u64,
    confirmed: BTreeSet<NodeId>,
    ready_at: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Gc {
    next_at: u64,
    rounds: BTreeMap<Key, Round>,
    pub(crate) collected: u64,
}

impl Peer {
    pub(super) fn run_gc(&mut self) {
        // Rounds whose tombstone changed (or went) are void.
        let objects = &self.objects;
        self.gc.rounds.retain(|k, r| {
            objects
                .get(k)
                .is_some_and(|o| o.is_tombstone() && o.digest() == r.digest)
        });
        let ready: Vec<Key> = self
            .gc
            .rounds
            .iter()
            .filter(|(k, r)| {
                r.ready_at.is_some_and(|t| t <= self.now) && !self.in_flight.is_dirty(k)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in ready {
            self.purge(&k);
        }
        if self.now < self.gc.next_at {
            return;
        }
        self.gc.next_at = self.now + self.config.gc_interval_ms;
        let me = self.id();
        let owned: Vec<Key> = self
            .tombstones
            .iter()
            .filter(|k| self.ring.replicas(k).first() == Some(&me) && !self.in_flight.is_dirty(k))
            .cloned()
            .collect();
        for k in owned {
            let digest = self.objects[&k].digest();
            let others = self.other_replicas(&k);
            let round = self.gc.rounds.entry(k.clone()).or_insert(Round {
                digest,
                confirmed: BTreeSet::new(),
                ready_at: None,
            });
            if round.ready_at.is_some() {
                continue;
            }
            if others.is_empty() {
                round.ready_at = Some(self.now + self.config.tombstone_grace_ms);
                continue;
            }
            let ask: Vec<NodeId> = others
                .into_iter()
                .filter(|n| !round.confirmed.contains(n))
                .collect();
            for to in ask {
                self.send(
                    to,
                    Message::GcQuery {
                        key: k.clone(),
                        digest,
                    },
                );
            }
        }
    }

    pub(super) fn on_gc_query(
        &mut self,
        from: NodeId,
        key: Key,
        digest: u64,
    ) -> Result<(), StepError> {
        self.check_replica(&key)?;
        let holds = self
            .objects
            .get(&key)
            .is_some_and(|o| o.is_tombstone() && o.digest() == digest);
        // Only a durable tombstone counts: one a crash could lose would let the key come back.
        if holds && !self.in_flight.is_dirty(&key) {
            self.send(from, Message::GcAck { key, digest });
        }
        Ok(())
    }

    pub(super) fn on_gc_ack(&mut self, from: NodeId, key: &[u8], digest: u64) {
        let others = self.other_replicas(key);
        let now = self.now;
        let grace = self.config.tombstone_grace_ms;
        #[cfg(feature = "planted-bugs")]
        let early = self.has_bug(super::PlantedBug::EarlyTombstoneCollection);
        let Some(round) = self.gc.rounds.get_mut(key) else {
            return;
        };
        if round.digest != digest || !others.contains(&from) {
            return;
        }
        round.confirmed.insert(from);
        #[cfg(feature = "planted-bugs")]
        if early {
            round.ready_at = Some(now);
            return;
        }
        if round.ready_at.is_none() && others.iter().all(|n| round.confirmed.contains(n)) {
            round.ready_at = Some(now + grace);
        }
    }

    fn purge(&mut self, key: &[u8]) {
        let Some(round) = self.gc.rounds.remove(key) else {
            return;
        };
        for to in self.other_replicas(key) {
            self.hints.forget(to, key);
            self.send(
                to,
                Message::Purge {
                    key: key.to_vec(),
                    digest: round.digest,
                },
            );
        }
        self.remove(key);
        self.gc.collected += 1;
    }

    pub(super) fn on_purge(&mut self, key: &[u8], digest: u64) -> Result<(), StepError> {
        self.check_replica(key)?;
        if self
            .objects
            .get(key)
            .is_some_and(|o| o.is_tombstone() && o.digest() == digest)
        {
            for to in self.other_replicas(key) {
                self.hints.forget(to, key);
            }
            self.remove(key);
            self.gc.collected += 1;
        }
        Ok(())
    }
}
