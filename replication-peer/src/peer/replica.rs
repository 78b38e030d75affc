//! The replica side of pushes and reads: merge what arrives, answer only from durable state.

use super::durability::Deferred;
use super::Peer;
use crate::error::StepError;
use crate::object::Object;
use crate::types::{Key, NodeId};

impl Peer {
    pub(super) fn on_replicate(
        &mut self,
        from: NodeId,
        tag: u64,
        seq: u64,
        key: Key,
        object: Object,
    ) -> Result<(), StepError> {
        self.check_replica(&key)?;
        self.merge_incoming(&key, object)?;
        // The ack promises the pushed state is durable here: wait until the key is clean.
        self.defer(&key, Deferred::Ack { to: from, tag, seq });
        Ok(())
    }

    pub(super) fn on_read(&mut self, from: NodeId, tag: u64, key: Key) -> Result<(), StepError> {
        self.check_replica(&key)?;
        // Answer from durable state only: a reader must never see a dot a crash could take
        // back (its context would later cover a different write reusing it).
        self.defer(&key, Deferred::ReadReply { to: from, tag });
        Ok(())
    }

    pub(super) fn replay_hints(&mut self) {
        let due = self.hints.due(
            self.now,
            self.config.hint_retry_ms,
            self.config.hint_replays_per_tick,
        );
        for (to, key) in due {
            if self.objects.contains_key(&key) {
                let seq = self.hints.push(to, &key, self.now);
                self.defer(&key, Deferred::Push { to, seq });
            } else {
                // Collected: every replica held the tombstone.
                self.hints.forget(to, &key);
            }
        }
    }
}
