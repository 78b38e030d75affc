//! The peer engine: one member of a multi-master cluster, as a sans-IO state machine.
//!
//! Inputs: [`Peer::client_request`], [`Peer::step`] (a peer's message), [`Peer::tick`] (time, in
//! the embedder's milliseconds) and [`Peer::persisted`] (a write is durable). Output, drained
//! with [`Peer::take_output`]: messages, durable writes, replies (see [`crate::output`] for the
//! contract). Modules by concept: `coordinator` (client requests, R/W, read repair), `replica`
//! (answering pushes and reads), `hints`, `anti_entropy`, `gc` (tombstones), `durability`.

mod anti_entropy;
mod coordinator;
mod durability;
mod gc;
mod hints;
mod replica;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{ConfigError, StepError};
use crate::hlc::Hlc;
use crate::merkle::MerkleTree;
use crate::message::Message;
use crate::object::Object;
use crate::output::{Output, Persist, PersistToken, Write};
use crate::policy::Policy;
use crate::ring::{PartitionId, Ring};
use crate::types::{key_map, Key, KeyMap, NodeId};

use self::anti_entropy::AntiEntropy;
use self::coordinator::Requests;
use self::durability::{Deferred, DotAllocator, InFlight};
use self::gc::Gc;
use self::hints::Hints;

/// A bug the simulator must catch; exists only with the `planted-bugs` feature.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// A merge that brings two or more siblings together drops the first one.
    MergeDropsSibling,
    /// Anti-entropy never descends into the first child of a differing node.
    AntiEntropySkipsSubtree,
    /// The owner removes a tombstone as soon as one other replica holds it (not all), with no
    /// grace period.
    EarlyTombstoneCollection,
}

/// What a node finds on its disk at start: the allocator's ceiling and every key's object.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The last durable [`Write::DotCeiling`] (0 if none).
    pub dot_ceiling: u64,
    /// Every durable object.
    pub objects: Vec<(Key, Object)>,
}

/// What a person or `quorate cluster status` wants to know about a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// This node.
    pub id: NodeId,
    /// Keys held (tombstones included).
    pub keys: usize,
    /// Of which tombstones.
    pub tombstones: usize,
    /// Client requests in progress (blocked ones included).
    pub pending_requests: usize,
    /// Keys with a write in flight to disk.
    pub dirty_keys: usize,
    /// Hints pending per peer.
    pub hints_pending: BTreeMap<NodeId, usize>,
    /// Pushes not remembered because hints were full.
    pub hints_dropped: u64,
    /// When each peer last took part in an anti-entropy exchange with this node.
    pub last_anti_entropy: BTreeMap<NodeId, u64>,
    /// Tombstones this node removed.
    pub tombstones_collected: u64,
    /// Peer messages refused.
    pub refused_messages: u64,
    /// The dot allocator's durable ceiling.
    pub dot_ceiling: u64,
}

/// One peer of the cluster.
#[derive(Debug)]
pub struct Peer {
    config: Config,
    ring: Ring,
    now: u64,
    hlc: Hlc,
    /// Hashed, not ordered: nothing reads keys in order, and a lookup hashes once instead of
    /// comparing heap keys down a tree (each write looks its key up several times).
    objects: KeyMap<Object>,
    tombstones: BTreeSet<Key>,
    trees: BTreeMap<PartitionId, MerkleTree>,
    in_flight: InFlight,
    dots: DotAllocator,
    requests: Requests,
    hints: Hints,
    anti_entropy: AntiEntropy,
    gc: Gc,
    out: Output,
    refused: u64,
    #[cfg(feature = "planted-bugs")]
    bug: Option<PlantedBug>,
}

impl Peer {
    /// A peer with an empty disk.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::recover(config, Recovered::default())
    }

    /// A peer restarting from what its disk holds.
    pub fn recover(config: Config, disk: Recovered) -> Result<Self, ConfigError> {
        config.validate()?;
        let ring = Ring::new(&config.members, config.vnodes, config.replication)?;
        let id = config.id;
        let trees = ring
            .partitions_of(id)
            .into_iter()
            .map(|p| {
                (
                    p,
                    MerkleTree::new(config.merkle_fanout, config.merkle_depth),
                )
            })
            .collect();
        let mut hlc = Hlc::new(id);
        let mut floor = 0;
        for (_, o) in &disk.objects {
            if let Some(ts) = o.max_timestamp() {
                hlc.observe(ts);
            }
            floor = floor.max(o.max_counter_of(id));
        }
        let mut peer = Peer {
            anti_entropy: AntiEntropy::new(&ring, id),
            dots: DotAllocator::recover(disk.dot_ceiling, floor, config.dot_block),
            hints: Hints::new(config.max_hints_per_peer),
            requests: Requests::default(),
            gc: Gc::default(),
            ring,
            now: 0,
            hlc,
            objects: key_map(config.index_seed),
            tombstones: BTreeSet::new(),
            trees,
            in_flight: InFlight::new(config.index_seed),
            out: Output::default(),
            refused: 0,
            config,
            #[cfg(feature = "planted-bugs")]
            bug: None,
        };
        for (k, o) in disk.objects {
            if peer.ring.replicas(&k).contains(&id) {
                peer.index(&k, Some(&o));
                peer.objects.insert(k, o);
            }
        }
        peer.reserve_dots();
        Ok(peer)
    }

    /// Plants a bug (tests and `cargo xtask sim --bug` only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bug(&mut self, bug: PlantedBug) {
        self.bug = Some(bug);
    }

    #[cfg(feature = "planted-bugs")]
    fn has_bug(&self, bug: PlantedBug) -> bool {
        self.bug == Some(bug)
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The placement every member computes alike.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key's local object (tests, status, debugging; not a read — use `Request::Get`).
    pub fn local_object(&self, key: &[u8]) -> Option<&Object> {
        self.objects.get(key)
    }

    /// Every local object, in no particular order (the same for the same seed and history);
    /// `len()` counts them without walking them.
    pub fn local_objects(&self) -> impl ExactSizeIterator<Item = (&Key, &Object)> + '_ {
        self.objects.iter()
    }

    /// Time passes: timeouts, hint replays, anti-entropy and tombstone collection run.
    pub fn tick(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
        self.expire_requests();
        self.replay_hints();
        self.run_anti_entropy();
        self.run_gc();
    }

    /// Writes up to `token` are durable.
    pub fn persisted(&mut self, token: PersistToken) -> Result<(), StepError> {
        if token.0 > self.in_flight.issued() {
            return Err(StepError::UnknownToken(token.0));
        }
        if self.dots.confirm(token.0) {
            self.reserve_dots();
            self.retry_blocked();
        }
        for (key, d) in self.in_flight.confirm(token.0) {
            self.run_deferred(&key, d);
        }
        Ok(())
    }

    /// A message from peer `from`. A refused message changes nothing.
    pub fn step(&mut self, from: NodeId, message: Message) -> Result<(), StepError> {
        let r = self.dispatch(from, message);
        if r.is_err() {
            self.refused += 1;
        }
        r
    }

    fn dispatch(&mut self, from: NodeId, message: Message) -> Result<(), StepError> {
        if from == self.id() || !self.ring.members().contains(&from) {
            return Err(StepError::UnknownSender(from));
        }
        self.heard_from(from);
        match message {
            Message::Replicate {
                tag,
                seq,
                key,
                object,
            } => self.on_replicate(from, tag, seq, key, object),
            Message::ReplicateAck { tag, seq, key } => {
                self.on_replicate_ack(from, tag, seq, &key);
                Ok(())
            }
            Message::Read { tag, key } => self.on_read(from, tag, key),
            Message::ReadReply { tag, key, object } => self.on_read_reply(from, tag, key, object),
            Message::Repair { key, object } => {
                self.check_replica(&key)?;
                self.merge_incoming(&key, object)
            }
            Message::AeHashes {
                partition,
                level,
                nodes,
            } => self.on_ae_hashes(from, partition, level, nodes),
            Message::AeKeys {
                partition,
                leaves,
                entries,
            } => self.on_ae_keys(from, partition, leaves, entries),
            Message::AeObjects {
                partition,
                objects,
                want,
            } => self.on_ae_objects(from, partition, objects, want),
            Message::GcQuery { key, digest } => self.on_gc_query(from, key, digest),
            Message::GcAck { key, digest } => {
                self.on_gc_ack(from, &key, digest);
                Ok(())
            }
            Message::Purge { key, digest } => self.on_purge(&key, digest),
        }
    }

    /// Everything produced since the last call.
    pub fn take_output(&mut self) -> Output {
        std::mem::take(&mut self.out)
    }

    /// Status for people and `cluster status`.
    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            id: self.id(),
            keys: self.objects.len(),
            tombstones: self.tombstones.len(),
            pending_requests: self.requests.len(),
            dirty_keys: self.in_flight.dirty_keys(),
            hints_pending: self.hints.pending(),
            hints_dropped: self.hints.dropped(),
            last_anti_entropy: self.anti_entropy.last_exchange.clone(),
            tombstones_collected: self.gc.collected,
            refused_messages: self.refused,
            dot_ceiling: self.dots.ceiling(),
        }
    }

    // ---- local state: every change goes through `store`, so tree, index and disk agree ----

    fn policy(&self, key: &[u8]) -> Policy {
        self.config.policies.policy(key)
    }

    fn check_replica(&self, key: &[u8]) -> Result<(), StepError> {
        if self.ring.replicas(key).contains(&self.id()) {
            Ok(())
        } else {
            Err(StepError::NotAReplica(key.to_vec()))
        }
    }

    fn other_replicas(&self, key: &[u8]) -> Vec<NodeId> {
        let me = self.id();
        self.ring
            .replicas(key)
            .iter()
            .copied()
            .filter(|&n| n != me)
            .collect()
    }

    fn index(&mut self, key: &[u8], object: Option<&Object>) {
        let p = self.ring.partition_of(key);
        if let Some(t) = self.trees.get_mut(&p) {
            t.set(key, object.map(Object::digest));
        }
        if object.is_some_and(Object::is_tombstone) {
            self.tombstones.insert(key.to_vec());
        } else {
            self.tombstones.remove(key);
        }
    }

    fn store(&mut self, key: &[u8], object: Object) {
        self.index(key, Some(&object));
        let token = self.in_flight.issue(Some(key));
        self.out.persists.push(Persist {
            token: PersistToken(token),
            write: Write::Object {
                key: key.to_vec(),
                object: Some(object.clone()),
            },
        });
        self.objects.insert(key.to_vec(), object);
    }

    fn remove(&mut self, key: &[u8]) {
        self.index(key, None);
        self.objects.remove(key);
        let token = self.in_flight.issue(Some(key));
        self.out.persists.push(Persist {
            token: PersistToken(token),
            write: Write::Object {
                key: key.to_vec(),
                object: None,
            },
        });
    }

    /// The one merge path: pushes, repairs, anti-entropy.
    fn merge_incoming(&mut self, key: &[u8], incoming: Object) -> Result<(), StepError> {
        self.check_object(key, &incoming)?;
        if let Some(ts) = incoming.max_timestamp() {
            self.hlc.observe(ts);
        }
        let merged = match self.objects.get(key) {
            None => incoming,
            Some(mine) => {
                let mut m = mine.clone();
                m.merge(&incoming).map_err(|_| StepError::BadObject {
                    key: key.to_vec(),
                    reason: "object kind differs from the local one",
                })?;
                #[cfg(feature = "planted-bugs")]
                if self.has_bug(PlantedBug::MergeDropsSibling) {
                    if let Object::Causal(d) = &mut m {
                        if d.siblings().len() >= 2 && m_differs(mine, &incoming) {
                            d.drop_sibling(0);
                        }
                    }
                }
                if &m == mine {
                    return Ok(());
                }
                m
            }
        };
        self.store(key, merged);
        Ok(())
    }

    /// A peer's object must fit the key's policy and the limits.
    fn check_object(&self, key: &[u8], object: &Object) -> Result<(), StepError> {
        let bad = |reason| StepError::BadObject {
            key: key.to_vec(),
            reason,
        };
        let limits = &self.config.limits;
        if key.len() > limits.max_key_bytes {
            return Err(bad("key over the limit"));
        }
        match (self.policy(key), object) {
            (Policy::Siblings | Policy::Lww, Object::Causal(d)) => {
                // Concurrent coordinators can exceed max_siblings between them; not by more
                // than one per member per round of writes.
                if d.siblings().len()
                    > limits
                        .max_siblings
                        .saturating_mul(self.ring.members().len().max(2))
                {
                    return Err(bad("too many siblings"));
                }
                if d.siblings().iter().any(|(_, v)| {
                    v.value
                        .as_ref()
                        .is_some_and(|b| b.len() > limits.max_value_bytes)
                }) {
                    return Err(bad("value over the limit"));
                }
                Ok(())
            }
            (Policy::Crdt(kind), Object::Crdt(c)) if c.kind() == kind => {
                if c.payload_bytes() > limits.max_value_bytes {
                    return Err(bad("CRDT over the value limit"));
                }
                Ok(())
            }
            _ => Err(bad("object kind does not match the key's policy")),
        }
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.out.messages.push((to, message));
    }

    fn defer(&mut self, key: &[u8], d: Deferred) {
        if let Some(d) = self.in_flight.defer(key, d) {
            self.run_deferred(key, d);
        }
    }

    fn run_deferred(&mut self, key: &[u8], d: Deferred) {
        match d {
            Deferred::LocalWriteDone { tag } => self.local_write_done(tag),
            Deferred::LocalRead { tag } => self.local_read(tag),
            Deferred::ReadReply { to, tag } => {
                let object = self.objects.get(key).cloned();
                self.send(
                    to,
                    Message::ReadReply {
                        tag,
                        key: key.to_vec(),
                        object,
                    },
                );
            }
            Deferred::Ack { to, tag, seq } => self.send(
                to,
                Message::ReplicateAck {
                    tag,
                    seq,
                    key: key.to_vec(),
                },
            ),
            Deferred::Push { to, seq } => {
                if let Some(object) = self.objects.get(key).cloned() {
                    self.send(
                        to,
                        Message::Replicate {
                            tag: 0,
                            seq,
                            key: key.to_vec(),
                            object,
                        },
                    );
                }
            }
        }
    }

    fn reserve_dots(&mut self) {
        if let Some(ceiling) = self.dots.want_reservation() {
            let token = self.in_flight.issue(None);
            self.dots.reserving(token, ceiling);
            self.out.persists.push(Persist {
                token: PersistToken(token),
                write: Write::DotCeiling(ceiling),
            });
        }
    }
}

/// Whether a merge brought siblings from both sides (the planted bug's trigger).
#[cfg(feature = "planted-bugs")]
fn m_differs(mine: &Object, incoming: &Object) -> bool {
    let a = mine.sibling_dots();
    let b = incoming.sibling_dots();
    a.iter().any(|d| !b.contains(d)) && b.iter().any(|d| !a.contains(d))
}
