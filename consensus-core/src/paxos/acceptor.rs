//! The acceptor: promises (phase 1b) and acceptances (phase 2b).
//!
//! Rules (Paxos Made Simple §2.2): never accept a ballot below the promise; promise only a ballot
//! at least the promise; the promise is durable before `Promise` leaves and accepted slots are
//! durable before `Accepted` leaves (both held, see `crate::protocol`). An accepted slot is
//! written on its own: higher slots are never cut. Slots already known chosen are never
//! overwritten: a stale proposer's value for one is ignored, the chosen value is acknowledged.

use super::ballot::Ballot;
use super::config::PlantedBug;
use super::message::MessageBody;
use super::{MultiPaxos, PaxosStorage};
use crate::entries::Entries;
use crate::error::StorageError;
use crate::types::{NodeId, Role};

impl<S: PaxosStorage> MultiPaxos<S> {
    /// Whether a promise for `ballot` must wait: this node hears from a live leader (leader
    /// stickiness, which also makes leases safe) or restarted recently in lease mode.
    /// A leader transfer overrides stickiness (the old leader gave its lease up) but not the
    /// restart quiet period.
    fn sticky(&self, ballot: Ballot, transfer: bool) -> bool {
        let leading = self.role == Role::Leader;
        let hearing = self.role == Role::Follower
            && self.leader.is_some_and(|leader| leader != ballot.node)
            && self.election_elapsed < self.config.election_tick;
        ((leading || hearing) && !transfer) || self.clock < self.quiet_until
    }

    /// A proposer with a higher ballot showed up: stop campaigning or leading.
    fn yield_to(&mut self, ballot: Ballot, leader: Option<NodeId>) {
        if self.role != Role::Follower && ballot > self.ballot {
            self.become_follower(leader);
        }
    }

    /// Phase 1b: answer `Prepare(ballot, from)`.
    pub(super) fn handle_prepare(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        from_slot: u64,
        transfer: bool,
    ) -> Result<(), StorageError> {
        if ballot < self.promised {
            let promised = self.promised;
            self.send_with(from, ballot, MessageBody::Nack { promised });
            return Ok(());
        }
        if ballot > self.promised {
            if self.sticky(ballot, transfer) {
                return Ok(()); // a live leader is heard: do not let a newcomer depose it
            }
            self.yield_to(ballot, None);
            self.promised = ballot;
            self.leader = None;
            self.election_elapsed = 0;
            self.redraw_election_timeout();
        }
        let compacted = self.log.snapshot_index();
        let last = self.log.last_slot();
        let lo = from_slot.max(compacted + 1);
        let (accepted, covered) = if lo > last {
            (Vec::new(), last)
        } else {
            self.log.range(lo, last, self.config.max_msg_bytes)?
        };
        self.send_with(
            from,
            ballot,
            MessageBody::Promise {
                from: from_slot,
                accepted,
                covered: covered.max(compacted),
                last,
                compacted,
            },
        );
        Ok(())
    }

    /// Phase 2b: answer `Accept(ballot, entries)` and learn the proposer's commit index.
    pub(super) fn handle_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Entries,
        commit: u64,
    ) -> Result<(), StorageError> {
        let below = ballot < self.promised;
        if below && !self.config.has_bug(PlantedBug::AcceptBelowPromise) {
            let promised = self.promised;
            self.send_with(from, ballot, MessageBody::Nack { promised });
            return Ok(());
        }
        if !below {
            if ballot == self.ballot && self.role != Role::Follower {
                return Ok(()); // our own ballot: another node cannot hold it
            }
            self.yield_to(ballot, Some(ballot.node));
            if ballot > self.promised {
                self.redraw_election_timeout();
            }
            self.promised = ballot;
            self.leader = Some(ballot.node);
            self.election_elapsed = 0;
        }
        let term = ballot.encode();
        let snapshot_index = self.log.snapshot_index();
        let floor = snapshot_index.max(self.commit);
        let (first, last) = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => (first.index, last.index),
            _ => (0, 0),
        };
        // Consecutive slots (first, first + 1, …), all under this ballot, all above the floor.
        let one_run = !entries.is_empty()
            && first > floor
            && (first..)
                .zip(&entries)
                .all(|(slot, e)| e.index == slot && e.term == term);
        if one_run {
            // The common case: one run of slots, all new here; the batch is staged as it came
            // and acknowledged as one range.
            self.log.put_run(entries);
            self.send_with(from, ballot, MessageBody::Accepted { first, last });
            if !below {
                self.learn_commit(from, ballot, commit)?;
            }
            return Ok(());
        }
        let mut slots = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.term != term || entry.index == 0 {
                continue; // malformed: a proposer proposes under its own ballot only
            }
            if entry.index <= snapshot_index {
                // Compacted, hence chosen: the proposer's value is the chosen one (safety).
                slots.push(entry.index);
                continue;
            }
            if entry.index <= self.commit {
                // Known chosen: acknowledge the chosen value, ignore a stale proposer's other one.
                if self
                    .log
                    .get(entry.index)?
                    .is_some_and(|e| e.payload == entry.payload)
                {
                    slots.push(entry.index);
                }
                continue;
            }
            slots.push(entry.index);
            self.log.put(entry);
        }
        // One `Accepted` per contiguous run of the slots accepted.
        let mut runs = slots.into_iter().peekable();
        while let Some(first) = runs.next() {
            let mut last = first;
            while runs.peek() == Some(&(last + 1)) {
                last += 1;
                runs.next();
            }
            self.send_with(from, ballot, MessageBody::Accepted { first, last });
        }
        if !below {
            self.learn_commit(from, ballot, commit)?;
        }
        Ok(())
    }

    /// A proposer's ballot was refused because `promised` is higher.
    pub(super) fn handle_nack(&mut self, ballot: Ballot, promised: Ballot) {
        if ballot == self.ballot && promised > self.ballot && self.role != Role::Follower {
            tracing::debug!(id = self.config.id, %ballot, %promised, "preempted; backing off");
            self.max_round_seen = self.max_round_seen.max(promised.round);
            self.become_follower(None);
        }
    }

    /// Leader liveness: follow it, learn its commit index, confirm its ballot for reads.
    pub(super) fn handle_heartbeat(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit: u64,
        read_round: u64,
    ) -> Result<(), StorageError> {
        if ballot < self.promised {
            let promised = self.promised;
            self.send_with(from, ballot, MessageBody::Nack { promised });
            return Ok(());
        }
        if ballot == self.ballot && self.role != Role::Follower {
            return Ok(());
        }
        self.yield_to(ballot, Some(from));
        if self.leader != Some(from) {
            self.redraw_election_timeout();
        }
        self.leader = Some(from);
        self.election_elapsed = 0;
        self.learn_commit(from, ballot, commit)?;
        self.send_with(from, ballot, MessageBody::HeartbeatAck { read_round });
        Ok(())
    }
}
