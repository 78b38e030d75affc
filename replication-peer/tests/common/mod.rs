//! A tiny synchronous driver for the behaviour tests: every message is delivered in order
//! (unless its link is cut), every write is durable at once (unless a node's disk is held).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use replication_peer::{
    Config, Message, NodeId, Peer, Persist, Recovered, Request, RequestError, RequestId, Response,
    Write,
};

pub struct Cluster {
    pub peers: BTreeMap<NodeId, Peer>,
    pub disks: BTreeMap<NodeId, Recovered>,
    pub held: BTreeMap<NodeId, Vec<Persist>>,
    pub hold_disk: BTreeSet<NodeId>,
    pub cut: BTreeSet<NodeId>,
    pub queue: VecDeque<(NodeId, NodeId, Message)>,
    pub replies: BTreeMap<RequestId, Result<Response, RequestError>>,
    pub sent: Vec<(NodeId, NodeId, Message)>,
    pub now: u64,
    next_id: u64,
}

impl Cluster {
    pub fn new(members: &[NodeId], tweak: impl Fn(&mut Config)) -> Self {
        let mut peers = BTreeMap::new();
        for &id in members {
            let mut c = Config::new(id, members.to_vec());
            tweak(&mut c);
            peers.insert(id, Peer::new(c).unwrap());
        }
        let mut cluster = Cluster {
            disks: members.iter().map(|&m| (m, Recovered::default())).collect(),
            peers,
            held: BTreeMap::new(),
            hold_disk: BTreeSet::new(),
            cut: BTreeSet::new(),
            queue: VecDeque::new(),
            replies: BTreeMap::new(),
            sent: Vec::new(),
            now: 0,
            next_id: 0,
        };
        cluster.run();
        cluster
    }

    pub fn request(&mut self, node: NodeId, request: Request) -> RequestId {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        self.peers
            .get_mut(&node)
            .unwrap()
            .client_request(id, request);
        self.run();
        id
    }

    pub fn reply(&self, id: RequestId) -> Option<&Result<Response, RequestError>> {
        self.replies.get(&id)
    }

    /// Advances time by `ms` in steps of `step`, running everything after each.
    pub fn advance(&mut self, ms: u64, step: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += step;
            let ids: Vec<NodeId> = self.peers.keys().copied().collect();
            for id in ids {
                self.peers.get_mut(&id).unwrap().tick(self.now);
            }
            self.run();
        }
    }

    /// Makes a held disk durable.
    pub fn release_disk(&mut self, node: NodeId) {
        self.hold_disk.remove(&node);
        let held = self.held.remove(&node).unwrap_or_default();
        if let Some(last) = held.last().map(|p| p.token) {
            for p in &held {
                apply(self.disks.get_mut(&node).unwrap(), &p.write);
            }
            self.peers.get_mut(&node).unwrap().persisted(last).unwrap();
        }
        self.run();
    }

    /// Restarts `node` from its disk (what was held is lost).
    pub fn restart(&mut self, node: NodeId) {
        self.held.remove(&node);
        let config = self.peers[&node].config().clone();
        let peer = Peer::recover(config, self.disks[&node].clone()).unwrap();
        self.peers.insert(node, peer);
        self.run();
    }

    /// Runs until nothing moves.
    pub fn run(&mut self) {
        loop {
            let mut moved = false;
            let ids: Vec<NodeId> = self.peers.keys().copied().collect();
            for id in ids {
                let out = self.peers.get_mut(&id).unwrap().take_output();
                if out.is_empty() {
                    continue;
                }
                moved = true;
                for (to, m) in out.messages {
                    self.sent.push((id, to, m.clone()));
                    self.queue.push_back((id, to, m));
                }
                self.replies.extend(out.replies);
                if let Some(last) = out.persists.last().map(|p| p.token) {
                    if self.hold_disk.contains(&id) {
                        self.held.entry(id).or_default().extend(out.persists);
                    } else {
                        for p in &out.persists {
                            apply(self.disks.get_mut(&id).unwrap(), &p.write);
                        }
                        self.peers.get_mut(&id).unwrap().persisted(last).unwrap();
                    }
                }
            }
            while let Some((from, to, m)) = self.queue.pop_front() {
                moved = true;
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                self.peers.get_mut(&to).unwrap().step(from, m).unwrap();
            }
            if !moved {
                return;
            }
        }
    }
}

fn apply(disk: &mut Recovered, w: &Write) {
    match w {
        Write::Object { key, object } => {
            disk.objects.retain(|(k, _)| k != key);
            if let Some(o) = object {
                disk.objects.push((key.clone(), o.clone()));
            }
        }
        Write::DotCeiling(c) => disk.dot_ceiling = disk.dot_ceiling.max(*c),
    }
}

pub fn values(r: &Result<Response, RequestError>) -> Vec<Vec<u8>> {
    match r {
        Ok(Response::Read { siblings, .. }) => {
            siblings.iter().filter_map(|s| s.value.clone()).collect()
        }
        other => panic!("not a read: {other:?}"),
    }
}

pub fn context(r: &Result<Response, RequestError>) -> replication_peer::VersionVector {
    match r {
        Ok(Response::Read { context, .. }) => context.clone(),
        other => panic!("not a read: {other:?}"),
    }
}
