//! The invariants. Checked at every durable write: no dot a replica has seen superseded ever
//! comes back there (causality, and no tombstone resurrection after collection). Checked once
//! faults stop and anti-entropy has run: convergence, no acknowledged write lost except as LWW
//! documents, causality against acknowledged writes, CRDT values within what was issued.

use std::collections::{BTreeMap, BTreeSet};

use crate::crdt::{CrdtOp, CrdtValue};
use crate::dvv::{Dot, VersionVector};
use crate::message::{Request, Response};
use crate::object::Object;
use crate::output::Write;
use crate::policy::{Policy, PolicyTable};
use crate::ring::Ring;
use crate::types::{Key, NodeId};

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

#[derive(Debug, Default)]
struct Seen {
    /// Join of every durable context at this replica (kept after the key is collected).
    covered: VersionVector,
    /// Siblings of the last durable state.
    alive: BTreeSet<Dot>,
}

#[derive(Debug)]
struct Acked {
    key: Key,
    dot: Dot,
    context: VersionVector,
    delete: bool,
}

#[derive(Debug, Default)]
struct CounterBounds {
    acked_up: i64,
    acked_down: i64,
    issued_up: i64,
    issued_down: i64,
}

/// Everything the checker remembers.
#[derive(Debug)]
pub struct Checker {
    policies: PolicyTable,
    seen: BTreeMap<(NodeId, Key), Seen>,
    acked: Vec<Acked>,
    issued_contexts: BTreeMap<Key, Vec<VersionVector>>,
    deletes_issued: BTreeSet<Key>,
    /// Per key, the join of the contexts replicas held when they collected its tombstone: a
    /// write they covered was superseded, then collected with the tombstone.
    collected: BTreeMap<Key, VersionVector>,
    counters: BTreeMap<Key, CounterBounds>,
    set_adds: BTreeMap<Key, BTreeSet<Vec<u8>>>,
    assigned: BTreeMap<Key, BTreeSet<Vec<u8>>>,
    /// Durable writes checked.
    pub durable_writes: u64,
}

impl Checker {
    /// A checker for peers running `policies`.
    pub fn new(policies: PolicyTable) -> Self {
        Checker {
            policies,
            seen: BTreeMap::new(),
            acked: Vec::new(),
            issued_contexts: BTreeMap::new(),
            deletes_issued: BTreeSet::new(),
            collected: BTreeMap::new(),
            counters: BTreeMap::new(),
            set_adds: BTreeMap::new(),
            assigned: BTreeMap::new(),
            durable_writes: 0,
        }
    }

    /// A write became durable on `node`.
    pub fn on_durable(&mut self, node: NodeId, write: &Write) -> Result<(), Violation> {
        let Write::Object {
            key,
            object: Some(Object::Causal(d)),
        } = write
        else {
            if let Write::Object { key, object: None } = write {
                if let Some(s) = self.seen.get_mut(&(node, key.clone())) {
                    s.alive.clear();
                    self.collected
                        .entry(key.clone())
                        .or_default()
                        .join(&s.covered);
                }
            }
            return Ok(());
        };
        self.durable_writes += 1;
        let s = self.seen.entry((node, key.clone())).or_default();
        for (dot, v) in d.siblings() {
            // A tombstone sent again after its key was collected (a purge message lost) reads
            // as absent and is collected again: harmless. A value must never come back.
            if v.value.is_some() && s.covered.covers(*dot) && !s.alive.contains(dot) {
                return Err(violation(
                    "superseded write came back",
                    format!(
                        "node {node} key {:?}: dot {dot:?} was superseded here (context {:?}) and reappeared",
                        String::from_utf8_lossy(key),
                        s.covered
                    ),
                ));
            }
        }
        s.covered.join(d.context());
        s.alive = d.siblings().iter().map(|(dot, _)| *dot).collect();
        Ok(())
    }

    /// A client issued `request`.
    pub fn on_issue(&mut self, request: &Request) {
        match request {
            Request::Put { key, context, .. } => {
                self.issued_contexts
                    .entry(key.clone())
                    .or_default()
                    .push(context.clone());
            }
            Request::Delete { key, context, .. } => {
                self.issued_contexts
                    .entry(key.clone())
                    .or_default()
                    .push(context.clone());
                self.deletes_issued.insert(key.clone());
            }
            Request::Update { key, op, .. } => match op {
                CrdtOp::Increment(by) => {
                    let b = self.counters.entry(key.clone()).or_default();
                    if *by >= 0 {
                        b.issued_up += by;
                    } else {
                        b.issued_down -= by;
                    }
                }
                CrdtOp::Add(e) => {
                    self.set_adds
                        .entry(key.clone())
                        .or_default()
                        .insert(e.clone());
                }
                CrdtOp::Assign(v) => {
                    self.assigned
                        .entry(key.clone())
                        .or_default()
                        .insert(v.clone());
                }
                CrdtOp::Remove(_) => {}
            },
            Request::Get { .. } => {}
        }
    }

    /// The coordinator answered `request` successfully.
    pub fn on_success(&mut self, request: &Request, response: &Response) {
        let Response::Written { dot, .. } = response else {
            return;
        };
        match request {
            Request::Put { key, context, .. } | Request::Delete { key, context, .. } => {
                self.acked.push(Acked {
                    key: key.clone(),
                    dot: *dot,
                    context: context.clone(),
                    delete: matches!(request, Request::Delete { .. }),
                });
            }
            Request::Update {
                key,
                op: CrdtOp::Increment(by),
                ..
            } => {
                let b = self.counters.entry(key.clone()).or_default();
                if *by >= 0 {
                    b.acked_up += by;
                } else {
                    b.acked_down -= by;
                }
            }
            _ => {}
        }
    }

    /// After the quiet phase: every invariant on the final states (`states[node]` = objects).
    pub fn final_check(
        &self,
        ring: &Ring,
        states: &BTreeMap<NodeId, BTreeMap<Key, Object>>,
    ) -> Result<(), Violation> {
        let final_state = converged(ring, &self.policies, states)?;
        let empty = Vec::new();
        for a in self.acked.iter().filter(|a| !a.delete) {
            let collected = self.collected.get(&a.key).is_some_and(|c| c.covers(a.dot));
            let policy = self.policies.policy(&a.key);
            let excused = || {
                self.issued_contexts
                    .get(&a.key)
                    .unwrap_or(&empty)
                    .iter()
                    .any(|c| c.covers(a.dot))
            };
            match final_state.get(&a.key) {
                None => {
                    let ok = collected
                        || if policy == Policy::Lww {
                            self.deletes_issued.contains(&a.key)
                        } else {
                            excused()
                        };
                    if !ok {
                        return Err(violation(
                            "acknowledged write lost",
                            format!(
                                "key {:?}: acknowledged write {:?} vanished with the key",
                                show(&a.key),
                                a.dot
                            ),
                        ));
                    }
                }
                Some(o) => {
                    if !o.context().covers(a.dot) && !collected {
                        return Err(violation(
                            "acknowledged write lost",
                            format!(
                                "key {:?}: final context {:?} never saw acknowledged write {:?}",
                                show(&a.key),
                                o.context(),
                                a.dot
                            ),
                        ));
                    }
                    if policy == Policy::Siblings
                        && !o.sibling_dots().contains(&a.dot)
                        && !excused()
                        && !collected
                    {
                        return Err(violation(
                            "acknowledged write lost",
                            format!("key {:?}: acknowledged write {:?} is gone though no write saw it (siblings {:?})", show(&a.key), a.dot, o.sibling_dots()),
                        ));
                    }
                }
            }
        }
        for (key, o) in &final_state {
            for s in o.sibling_dots() {
                if let Some(x) = self
                    .acked
                    .iter()
                    .find(|x| x.key == *key && x.context.covers(s))
                {
                    return Err(violation(
                        "causality",
                        format!(
                            "key {:?}: sibling {s:?} survives write {:?}, which saw it",
                            show(key),
                            x.dot
                        ),
                    ));
                }
            }
            if let Object::Crdt(c) = o {
                match c.value() {
                    CrdtValue::Counter(v) => {
                        let b = self.counters.get(key).map_or((0, 0), |b| {
                            (b.acked_up - b.issued_down, b.issued_up - b.acked_down)
                        });
                        if v < b.0 || v > b.1 {
                            return Err(violation(
                                "counter out of bounds",
                                format!(
                                    "key {:?}: value {v} outside [{}, {}]",
                                    show(key),
                                    b.0,
                                    b.1
                                ),
                            ));
                        }
                    }
                    CrdtValue::Set(elements) => {
                        let adds = self.set_adds.get(key);
                        if elements.iter().any(|e| adds.is_none_or(|a| !a.contains(e))) {
                            return Err(violation("set element never added", show(key)));
                        }
                    }
                    CrdtValue::Register(Some(v)) => {
                        if self.assigned.get(key).is_none_or(|a| !a.contains(&v)) {
                            return Err(violation("register value never assigned", show(key)));
                        }
                    }
                    CrdtValue::Register(None) => {}
                }
            }
        }
        Ok(())
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Whether every key's replicas hold the same state (a tombstone counts as absent: collection
/// may be mid-way); returns the common state.
pub fn converged(
    ring: &Ring,
    policies: &PolicyTable,
    states: &BTreeMap<NodeId, BTreeMap<Key, Object>>,
) -> Result<BTreeMap<Key, Object>, Violation> {
    let _ = policies;
    let keys: BTreeSet<&Key> = states.values().flat_map(BTreeMap::keys).collect();
    let mut common = BTreeMap::new();
    for key in keys {
        let mut first: Option<(NodeId, Option<&Object>)> = None;
        for &r in ring.replicas(key) {
            let o = states
                .get(&r)
                .and_then(|s| s.get(key))
                .filter(|o| !o.is_tombstone());
            match first {
                None => first = Some((r, o)),
                Some((f, fo)) if fo != o => {
                    return Err(violation(
                        "convergence",
                        format!(
                            "key {:?}: node {f} holds {fo:?}, node {r} holds {o:?}",
                            show(key)
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some((_, Some(o))) = first {
            common.insert(key.clone(), o.clone());
        }
    }
    Ok(common)
}
