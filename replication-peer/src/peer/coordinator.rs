//! Client requests at their coordinator (a replica of the key): writes with W, reads with R,
//! read repair, timeouts.
//!
//! A write is applied locally first and pushed to the other replicas only once it is durable
//! here (so no peer ever holds a dot this node could lose); it is acknowledged once W replicas,
//! this one included, hold it durably. A read asks all N replicas, answers once R have, and when
//! all have answered (or the request times out) repairs the ones that were behind.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::durability::Deferred;
use super::Peer;
use crate::crdt::{Crdt, CrdtOp, OpContext};
use crate::dvv::{Dot, Dvv, VersionVector};
use crate::error::RequestError;
use crate::message::{Message, Request, Response, SiblingView};
use crate::object::{Object, Versioned};
use crate::policy::Policy;
use crate::types::{Key, NodeId, RequestId};

#[derive(Debug)]
enum Pending {
    Write {
        w: usize,
        acks: BTreeSet<NodeId>,
        dot: Dot,
        context: VersionVector,
        replied: bool,
    },
    Read {
        r: usize,
        replies: BTreeMap<NodeId, Option<Object>>,
        replied: bool,
    },
}

#[derive(Debug)]
struct InProgress {
    id: RequestId,
    key: Key,
    started: u64,
    state: Pending,
}

/// Requests this node coordinates.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    next_tag: u64,
    active: BTreeMap<u64, InProgress>,
    /// Writes waiting for the dot allocator's next durable ceiling, with when they arrived.
    blocked: VecDeque<(RequestId, Request, u64)>,
}

impl Requests {
    pub(crate) fn len(&self) -> usize {
        self.active.len() + self.blocked.len()
    }
}

impl Peer {
    /// A client request, which this node coordinates; the reply comes in a later output.
    pub fn client_request(&mut self, id: RequestId, request: Request) {
        if let Err(e) = self.admit(&request) {
            self.out.replies.push((id, Err(e)));
            return;
        }
        match request {
            Request::Get { key, r } => self.start_read(id, key, r),
            write if self.dots.available() => self.start_write(id, write),
            write => self.requests.blocked.push_back((id, write, self.now)),
        }
    }

    fn admit(&self, request: &Request) -> Result<(), RequestError> {
        if self.requests.len() >= self.config.max_pending_requests {
            return Err(RequestError::Overloaded {
                pending: self.requests.len(),
            });
        }
        let key = request.key();
        let limits = &self.config.limits;
        if key.len() > limits.max_key_bytes {
            return Err(RequestError::KeyTooLarge {
                len: key.len(),
                max: limits.max_key_bytes,
            });
        }
        let replicas = self.ring.replicas(key);
        if !replicas.contains(&self.id()) {
            return Err(RequestError::NotAReplica {
                replicas: replicas.to_vec(),
            });
        }
        let n = replicas.len();
        let quorum = match request {
            Request::Get { r, .. } => *r,
            Request::Put { w, .. } | Request::Delete { w, .. } | Request::Update { w, .. } => *w,
        };
        if quorum == 0 || quorum > n {
            return Err(RequestError::BadQuorum {
                asked: quorum,
                replicas: n,
            });
        }
        let policy = self.policy(key);
        let wrong = |operation| Err(RequestError::WrongPolicy { policy, operation });
        match (request, policy) {
            (Request::Put { value, .. }, Policy::Siblings | Policy::Lww)
                if value.len() > limits.max_value_bytes =>
            {
                return Err(RequestError::ValueTooLarge {
                    len: value.len(),
                    max: limits.max_value_bytes,
                });
            }
            (Request::Put { .. }, Policy::Crdt(_)) => return wrong("put"),
            (Request::Delete { .. }, Policy::Crdt(_)) => return wrong("delete"),
            (Request::Update { .. }, Policy::Siblings | Policy::Lww) => {
                return wrong("a CRDT update")
            }
            (Request::Update { op, .. }, Policy::Crdt(kind)) => {
                let fits = matches!(
                    (op, kind),
                    (CrdtOp::Increment(_), crate::CrdtKind::Counter)
                        | (CrdtOp::Add(_) | CrdtOp::Remove(_), crate::CrdtKind::OrSet)
                        | (CrdtOp::Assign(_), crate::CrdtKind::LwwRegister)
                );
                if !fits {
                    return wrong("this CRDT operation");
                }
            }
            _ => {}
        }
        if let Request::Put { context, .. } | Request::Delete { context, .. } = request {
            let counter = context.get(self.id());
            if counter > self.dots.issued() {
                return Err(RequestError::ContextFromFuture {
                    node: self.id(),
                    counter,
                    issued: self.dots.issued(),
                });
            }
        }
        Ok(())
    }

    pub(super) fn retry_blocked(&mut self) {
        while self.dots.available() {
            let Some((id, request, _)) = self.requests.blocked.pop_front() else {
                break;
            };
            self.start_write(id, request);
        }
        self.reserve_dots();
    }

    fn start_write(&mut self, id: RequestId, request: Request) {
        let me = self.id();
        let dot = Dot {
            node: me,
            counter: self.dots.next(),
        };
        self.reserve_dots();
        let key = request.key().to_vec();
        let policy = self.policy(&key);
        let local = self.objects.get(&key);
        if let Some(ts) = local.and_then(Object::max_timestamp) {
            self.hlc.observe(ts);
        }
        let at = self.hlc.now(self.now);
        let mut object = local.cloned().unwrap_or_else(|| match policy {
            Policy::Crdt(kind) => Object::Crdt(Crdt::empty(kind)),
            _ => Object::Causal(Dvv::new()),
        });
        let (w, result) = match (request, &mut object) {
            (
                Request::Put {
                    value, context, w, ..
                },
                Object::Causal(d),
            ) => (
                w,
                self.causal_write(policy, d, context, dot, Some(value), at),
            ),
            (Request::Delete { context, w, .. }, Object::Causal(d)) => {
                (w, self.causal_write(policy, d, context, dot, None, at))
            }
            (Request::Update { op, w, .. }, Object::Crdt(c)) => {
                c.apply(
                    &op,
                    &OpContext {
                        node: me,
                        dot,
                        now: at,
                    },
                );
                let len = c.payload_bytes();
                let max = self.config.limits.max_value_bytes;
                (
                    w,
                    if len > max {
                        Err(RequestError::ValueTooLarge { len, max })
                    } else {
                        Ok(())
                    },
                )
            }
            (_, _) => (
                0,
                Err(RequestError::WrongPolicy {
                    policy,
                    operation: "this request on the key's stored object",
                }),
            ),
        };
        if let Err(e) = result {
            self.out.replies.push((id, Err(e)));
            return;
        }
        let context = object.context();
        self.store(&key, object);
        let tag = self.new_request(
            id,
            key.clone(),
            Pending::Write {
                w,
                acks: BTreeSet::new(),
                dot,
                context,
                replied: false,
            },
        );
        self.defer(&key, Deferred::LocalWriteDone { tag });
    }

    fn causal_write(
        &self,
        policy: Policy,
        d: &mut Dvv<Versioned>,
        context: VersionVector,
        dot: Dot,
        value: Option<Vec<u8>>,
        at: crate::Timestamp,
    ) -> Result<(), RequestError> {
        // LWW: a write replaces everything its coordinator has seen, so blind writes do not
        // pile up siblings; only writes concurrent across coordinators meet as siblings, and the
        // read shows the one with the largest timestamp.
        let context = if policy == Policy::Lww {
            let mut c = d.context().clone();
            c.join(&context);
            c
        } else {
            context
        };
        d.write(&context, dot, Versioned { value, at });
        let max = self.config.limits.max_siblings;
        if d.siblings().len() > max {
            return Err(RequestError::TooManySiblings {
                count: d.siblings().len(),
                max,
            });
        }
        Ok(())
    }

    fn new_request(&mut self, id: RequestId, key: Key, state: Pending) -> u64 {
        self.requests.next_tag += 1;
        let tag = self.requests.next_tag;
        self.requests.active.insert(
            tag,
            InProgress {
                id,
                key,
                started: self.now,
                state,
            },
        );
        tag
    }

    /// The coordinator's own copy is durable: count it and push to the other replicas.
    pub(super) fn local_write_done(&mut self, tag: u64) {
        let me = self.id();
        let Some(req) = self.requests.active.get_mut(&tag) else {
            return;
        };
        if let Pending::Write { acks, .. } = &mut req.state {
            acks.insert(me);
        }
        let key = req.key.clone();
        if let Some(object) = self.objects.get(&key).cloned() {
            for to in self.other_replicas(&key) {
                let seq = self.hints.push(to, &key, self.now);
                self.send(
                    to,
                    Message::Replicate {
                        tag,
                        seq,
                        key: key.clone(),
                        object: object.clone(),
                    },
                );
            }
        }
        self.check_write(tag);
    }

    pub(super) fn on_replicate_ack(&mut self, from: NodeId, tag: u64, seq: u64, key: &[u8]) {
        self.hints.acked(from, key, seq);
        if let Some(req) = self.requests.active.get_mut(&tag) {
            if let Pending::Write { acks, .. } = &mut req.state {
                if req.key == key {
                    acks.insert(from);
                }
            }
            self.check_write(tag);
        }
    }

    fn check_write(&mut self, tag: u64) {
        let n = self.ring.replication();
        let Some(req) = self.requests.active.get_mut(&tag) else {
            return;
        };
        let Pending::Write {
            w,
            acks,
            dot,
            context,
            replied,
        } = &mut req.state
        else {
            return;
        };
        if !*replied && acks.len() >= *w {
            *replied = true;
            self.out.replies.push((
                req.id,
                Ok(Response::Written {
                    dot: *dot,
                    context: context.clone(),
                }),
            ));
        }
        if acks.len() >= n {
            self.requests.active.remove(&tag);
        }
    }

    fn start_read(&mut self, id: RequestId, key: Key, r: usize) {
        let tag = self.new_request(
            id,
            key.clone(),
            Pending::Read {
                r,
                replies: BTreeMap::new(),
                replied: false,
            },
        );
        for to in self.other_replicas(&key) {
            self.send(
                to,
                Message::Read {
                    tag,
                    key: key.clone(),
                },
            );
        }
        self.defer(&key, Deferred::LocalRead { tag });
    }

    pub(super) fn local_read(&mut self, tag: u64) {
        let me = self.id();
        if let Some(req) = self.requests.active.get(&tag) {
            let object = self.objects.get(&req.key).cloned();
            self.read_answered(tag, me, object);
        }
    }

    pub(super) fn on_read_reply(
        &mut self,
        from: NodeId,
        tag: u64,
        key: Key,
        object: Option<Object>,
    ) -> Result<(), crate::StepError> {
        if let Some(o) = &object {
            self.check_object(&key, o)?;
        }
        match self.requests.active.get(&tag) {
            Some(req) if req.key == key && self.ring.replicas(&key).contains(&from) => {
                self.read_answered(tag, from, object);
            }
            _ => {} // late or stray: the request is gone
        }
        Ok(())
    }

    fn read_answered(&mut self, tag: u64, from: NodeId, object: Option<Object>) {
        let n = self.ring.replication();
        let Some(req) = self.requests.active.get_mut(&tag) else {
            return;
        };
        let Pending::Read {
            r,
            replies,
            replied,
        } = &mut req.state
        else {
            return;
        };
        replies.insert(from, object);
        let all = replies.len() >= n;
        if !*replied && replies.len() >= *r {
            *replied = true;
            let merged = merge_all(replies.values().flatten());
            let id = req.id;
            let key = req.key.clone();
            let response = self.read_view(&key, merged.as_ref());
            self.out.replies.push((id, Ok(response)));
        }
        if all {
            self.finish_read(tag);
        }
    }

    /// Read repair: every replica that answered with less than the merge gets the merge.
    fn finish_read(&mut self, tag: u64) {
        let Some(req) = self.requests.active.remove(&tag) else {
            return;
        };
        let Pending::Read { replies, .. } = req.state else {
            return;
        };
        let Some(merged) = merge_all(replies.values().flatten()) else {
            return;
        };
        if let Some(ts) = merged.max_timestamp() {
            self.hlc.observe(ts);
        }
        let digest = merged.digest();
        let me = self.id();
        for (node, object) in replies {
            if object.as_ref().map(Object::digest) == Some(digest) {
                continue;
            }
            if node == me {
                // Only fails on a kind mismatch, which check_object already refused.
                let _ = self.merge_incoming(&req.key, merged.clone());
            } else {
                self.send(
                    node,
                    Message::Repair {
                        key: req.key.clone(),
                        object: merged.clone(),
                    },
                );
            }
        }
    }

    fn read_view(&self, key: &[u8], merged: Option<&Object>) -> Response {
        let policy = self.policy(key);
        let view = |(dot, v): (&Dot, &Versioned)| SiblingView {
            dot: *dot,
            value: v.value.clone(),
        };
        match merged {
            None => Response::Read {
                siblings: Vec::new(),
                crdt: match policy {
                    Policy::Crdt(kind) => Some(Crdt::empty(kind).value()),
                    _ => None,
                },
                context: VersionVector::new(),
            },
            Some(Object::Crdt(c)) => Response::Read {
                siblings: Vec::new(),
                crdt: Some(c.value()),
                context: VersionVector::new(),
            },
            Some(o @ Object::Causal(d)) => {
                let siblings = if o.reads_as_absent(policy) {
                    Vec::new()
                } else if policy == Policy::Lww {
                    o.lww_winner()
                        .map(|(dot, v)| view((&dot, v)))
                        .into_iter()
                        .collect()
                } else {
                    d.siblings().iter().map(|(dot, v)| view((dot, v))).collect()
                };
                Response::Read {
                    siblings,
                    crdt: None,
                    context: d.context().clone(),
                }
            }
        }
    }

    pub(super) fn expire_requests(&mut self) {
        let timeout = self.config.request_timeout_ms;
        let now = self.now;
        // A write still waiting for its dot (the ceiling write is slow) times out like any.
        while self
            .requests
            .blocked
            .front()
            .is_some_and(|(_, _, at)| now.saturating_sub(*at) >= timeout)
        {
            if let Some((id, request, _)) = self.requests.blocked.pop_front() {
                let needed = match request {
                    Request::Put { w, .. }
                    | Request::Delete { w, .. }
                    | Request::Update { w, .. } => w,
                    Request::Get { r, .. } => r,
                };
                self.out
                    .replies
                    .push((id, Err(RequestError::Timeout { acks: 0, needed })));
            }
        }
        let expired: Vec<u64> = self
            .requests
            .active
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.started) >= timeout)
            .map(|(&t, _)| t)
            .collect();
        for tag in expired {
            let Some(req) = self.requests.active.get(&tag) else {
                continue;
            };
            let id = req.id;
            match &req.state {
                Pending::Write {
                    w, acks, replied, ..
                } => {
                    if !replied {
                        let e = RequestError::Timeout {
                            acks: acks.len(),
                            needed: *w,
                        };
                        self.out.replies.push((id, Err(e)));
                    }
                    self.requests.active.remove(&tag);
                }
                Pending::Read {
                    r,
                    replies,
                    replied,
                } => {
                    if !replied {
                        let e = RequestError::Timeout {
                            acks: replies.len(),
                            needed: *r,
                        };
                        self.out.replies.push((id, Err(e)));
                    }
                    self.finish_read(tag);
                }
            }
        }
    }
}

fn merge_all<'a>(objects: impl Iterator<Item = &'a Object>) -> Option<Object> {
    let mut merged: Option<Object> = None;
    for o in objects {
        match &mut merged {
            None => merged = Some(o.clone()),
            Some(m) => {
                // A kind mismatch was refused when the reply arrived.
                let _ = m.merge(o);
            }
        }
    }
    merged
}
