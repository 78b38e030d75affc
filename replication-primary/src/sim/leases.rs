//! The lease invariant, checked on the leases themselves: a replica serving as primary of epoch
//! `e` must not have granted a primary of an older epoch a lease that is still running.
//!
//! That is the argument PacificA's safety rests on (the old primary serves only while it holds a
//! lease from every member, so once every lease a new primary granted has run out, the old one
//! cannot serve). Checking it directly catches a shortened grace period at every failover that
//! follows a silent primary, not only in the rare runs where the old primary still happens to
//! serve in the same tick as the new one.
//!
//! Leases run on the primary's clock from the prepare's `sent_at`; every replica ticks once per
//! simulated tick, so the grant's end in simulated time is the tick the prepare left plus
//! `lease_ticks`. A prepare is found by (primary, epoch, `sent_at`): a restarted primary never
//! reuses an epoch, so an answer to an older incarnation's prepare cannot be mistaken for one of
//! the current incarnation (an answer whose prepare is unknown is ignored).

use std::collections::BTreeMap;

use consensus_core::NodeId;

use super::checker::Violation;
use crate::message::{Body, Message};

/// A lease `grantor` gave the primary `to` of `epoch`, running until `until` (simulated ticks).
#[derive(Clone, Copy, Debug)]
struct Grant {
    to: NodeId,
    epoch: u64,
    until: u64,
}

/// Prepares sent and leases granted so far.
#[derive(Debug)]
pub(super) struct Leases {
    lease_ticks: u64,
    /// (primary, epoch, sent_at) → the simulated tick the prepare left.
    sent: BTreeMap<(NodeId, u64, u64), u64>,
    /// Per grantor, the longest-running lease per (primary, epoch).
    granted: BTreeMap<NodeId, Vec<Grant>>,
}

impl Leases {
    pub(super) fn new(lease_ticks: u64) -> Self {
        Leases {
            lease_ticks,
            sent: BTreeMap::new(),
            granted: BTreeMap::new(),
        }
    }

    /// A message a replica sent at simulated tick `now`.
    pub(super) fn sent(&mut self, now: u64, m: &Message) {
        match &m.body {
            Body::Prepare { sent_at, .. } | Body::Snapshot { sent_at, .. } => {
                self.sent.insert((m.from, m.epoch, *sent_at), now);
            }
            Body::PrepareAck { sent_at, .. } | Body::Mismatch { sent_at, .. } => {
                let Some(&left) = self.sent.get(&(m.to, m.epoch, *sent_at)) else {
                    return;
                };
                let until = left + self.lease_ticks;
                let grants = self.granted.entry(m.from).or_default();
                match grants
                    .iter_mut()
                    .find(|g| g.to == m.to && g.epoch == m.epoch)
                {
                    Some(g) => g.until = g.until.max(until),
                    None => grants.push(Grant {
                        to: m.to,
                        epoch: m.epoch,
                        until,
                    }),
                }
            }
            _ => {}
        }
    }

    /// Checks the replicas serving at `now` (id, epoch), and forgets what has run out.
    pub(super) fn check(&mut self, now: u64, serving: &[(NodeId, u64)]) -> Result<(), Violation> {
        for grants in self.granted.values_mut() {
            grants.retain(|g| g.until > now);
        }
        let horizon = now.saturating_sub(4 * self.lease_ticks);
        self.sent.retain(|_, &mut left| left >= horizon);
        for &(id, epoch) in serving {
            let running = self
                .granted
                .get(&id)
                .into_iter()
                .flatten()
                .find(|g| g.to != id && g.epoch < epoch);
            if let Some(g) = running {
                return Err((
                    "one primary serves at a time",
                    format!(
                        "node {id} serves epoch {epoch} while the lease it granted node {} \
                         (epoch {}) runs until tick {}",
                        g.to, g.epoch, g.until
                    ),
                ));
            }
        }
        Ok(())
    }
}
