//! A node's simulated disk: writes become durable a few ticks after they are issued, in
//! order; a crash keeps what was durable plus a random prefix of the rest.

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::object::Object;
use crate::output::{Persist, PersistToken, Write};
use crate::peer::Recovered;
use crate::types::Key;

/// One node's disk.
#[derive(Debug, Default)]
pub struct Disk {
    /// Durable objects.
    pub objects: BTreeMap<Key, Object>,
    /// Durable dot ceiling.
    pub dot_ceiling: u64,
    queue: VecDeque<(u64, Persist)>,
    last_due: u64,
}

impl Disk {
    /// Queues a write that becomes durable at `now + latency` (or after the previous one).
    pub fn submit(&mut self, now: u64, latency: u64, p: Persist) {
        self.last_due = self.last_due.max(now + latency);
        self.queue.push_back((self.last_due, p));
    }

    /// Applies the writes due by `now`; returns them (for the checker) and the last token.
    pub fn flush(&mut self, now: u64) -> (Vec<Write>, Option<PersistToken>) {
        let mut applied = Vec::new();
        let mut last = None;
        while self.queue.front().is_some_and(|(due, _)| *due <= now) {
            let (_, p) = self.queue.pop_front().expect("checked");
            last = Some(p.token);
            self.apply(&p.write);
            applied.push(p.write);
        }
        (applied, last)
    }

    /// A crash: a random prefix of the queued writes made it, the rest is lost.
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) -> Vec<Write> {
        let keep = rng.gen_range(0..=self.queue.len());
        let mut applied = Vec::new();
        for (_, p) in self.queue.drain(..).take(keep).collect::<Vec<_>>() {
            self.apply(&p.write);
            applied.push(p.write);
        }
        self.queue.clear();
        applied
    }

    /// What a restarting node reads back.
    pub fn recovered(&self) -> Recovered {
        Recovered {
            dot_ceiling: self.dot_ceiling,
            objects: self
                .objects
                .iter()
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect(),
        }
    }

    fn apply(&mut self, w: &Write) {
        match w {
            Write::Object {
                key,
                object: Some(o),
            } => {
                self.objects.insert(key.clone(), o.clone());
            }
            Write::Object { key, object: None } => {
                self.objects.remove(key);
            }
            Write::DotCeiling(c) => self.dot_ceiling = self.dot_ceiling.max(*c),
        }
    }
}
