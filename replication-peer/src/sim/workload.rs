//! Clients: random gets, puts, deletes and CRDT updates on a small key space spanning every
//! policy, with contexts taken only from their own reads (as a careful client would).

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::crdt::{CrdtKind, CrdtOp};
use crate::dvv::VersionVector;
use crate::message::Request;
use crate::policy::{Policy, PolicyTable};
use crate::types::Key;

/// The policy table every simulated peer runs: one prefix per policy.
pub fn policies() -> PolicyTable {
    PolicyTable::new(Policy::Siblings)
        .with_prefix("s/", Policy::Siblings)
        .with_prefix("l/", Policy::Lww)
        .with_prefix("c/", Policy::Crdt(CrdtKind::Counter))
        .with_prefix("o/", Policy::Crdt(CrdtKind::OrSet))
        .with_prefix("r/", Policy::Crdt(CrdtKind::LwwRegister))
}

/// The simulated key space.
pub fn keys() -> Vec<Key> {
    let mut keys = Vec::new();
    for (prefix, n) in [("s/", 8), ("l/", 5), ("c/", 2), ("o/", 2), ("r/", 2)] {
        for i in 0..n {
            keys.push(format!("{prefix}{i}").into_bytes());
        }
    }
    keys
}

/// One client's memory: the context of its last read of each key.
#[derive(Debug, Default)]
pub struct Client {
    /// Context per key from the last successful read.
    pub contexts: BTreeMap<Key, VersionVector>,
    written: u64,
}

impl Client {
    /// A random request on a random key; `n` is the replication factor (for R/W).
    pub fn next_request(
        &mut self,
        rng: &mut ChaCha8Rng,
        client_id: usize,
        keys: &[Key],
        n: usize,
    ) -> Request {
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let quorum = rng.gen_range(1..=n);
        if rng.gen_bool(0.3) {
            return Request::Get { key, r: quorum };
        }
        self.written += 1;
        let stamp = format!("c{client_id}-{}", self.written).into_bytes();
        let context = if rng.gen_bool(0.8) {
            self.contexts.get(&key).cloned().unwrap_or_default()
        } else {
            VersionVector::new()
        };
        match &key[..2] {
            b"c/" => Request::Update {
                key,
                op: CrdtOp::Increment([-2, -1, 1, 2, 3, 5][rng.gen_range(0..6)]),
                w: quorum,
            },
            b"o/" => {
                let e = vec![b'a' + rng.gen_range(0..4u8)];
                let op = if rng.gen_bool(0.6) {
                    CrdtOp::Add(e)
                } else {
                    CrdtOp::Remove(e)
                };
                Request::Update { key, op, w: quorum }
            }
            b"r/" => Request::Update {
                key,
                op: CrdtOp::Assign(stamp),
                w: quorum,
            },
            _ if rng.gen_bool(0.25) => Request::Delete {
                key,
                context,
                w: quorum,
            },
            _ => Request::Put {
                key,
                value: stamp,
                context,
                w: quorum,
            },
        }
    }
}
