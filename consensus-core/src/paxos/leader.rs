//! The distinguished proposer: proposals, the pipeline window, batching, counting acceptances.
//!
//! Every proposal gets its slot at once (so `propose` can say where it landed) and waits in a
//! bounded queue until the window lets it out: at most `max_inflight_slots` slots above the
//! chosen prefix are in flight, and none beyond an unchosen membership change (see
//! `membership`). Slots let out are written to the leader's own log and broadcast in
//! `Accept` batches of at most `max_msg_bytes`. A slot is chosen once a majority of the
//! configuration accepted it under our ballot; the leader's own acceptance counts once its
//! write is durable. Unacknowledged slots are re-sent with each heartbeat (one batch per peer).

use std::collections::{BTreeSet, VecDeque};

use super::election::is_majority_by;
use super::message::MessageBody;
use super::{MultiPaxos, PaxosStorage};
use crate::error::{Error, StorageError};
use crate::types::{Entry, EntryPayload, NodeId, Proposed, Role};

/// What only the leader keeps.
#[derive(Debug, Default)]
pub(crate) struct LeaderState {
    /// Proposals with their slot, not yet let into the window.
    queued: VecDeque<Entry>,
    /// Slots in the window and not yet chosen, in slot order: who accepted each under our
    /// ballot.
    inflight: VecDeque<InFlight>,
    /// Next slot to assign.
    next_slot: u64,
    /// Last slot phase 1 recovered (or `from - 1`): every value chosen before this leader is at
    /// or below it.
    pub(crate) recovery_end: u64,
    /// Highest slot holding a membership change not yet chosen (queued or in flight).
    pub(crate) pending_conf: Option<u64>,
    /// Slot of a membership change in the window and not yet chosen.
    inflight_conf: Option<u64>,
    /// Payload bytes proposed and not yet chosen.
    uncommitted_bytes: u64,
    /// Peers heard from under our ballot since the last check-quorum.
    pub(crate) active: BTreeSet<NodeId>,
    /// Let into the window since the last broadcast.
    fresh: Vec<Entry>,
    /// Commit index the last broadcast carried.
    commit_sent: u64,
    /// A heartbeat is due.
    pub(crate) heartbeat_pending: bool,
    /// Unacknowledged slots are due to be re-sent.
    pub(crate) resend_pending: bool,
    /// A leader transfer to this node is under way (proposals are refused meanwhile).
    pub(crate) transfer: Option<NodeId>,
    /// Set once this leader sent `TimeoutNow`: another leader may be elected before any lease
    /// runs out, so lease reads stop for the rest of this leadership.
    pub(crate) lease_forfeited: bool,
}

/// One slot in the window.
#[derive(Debug)]
struct InFlight {
    slot: u64,
    /// Its payload size as counted in `uncommitted_bytes`.
    size: u64,
    /// Whether it holds a membership change (its value is needed when it is chosen).
    conf_change: bool,
    /// Members that accepted it under our ballot.
    acks: Acks,
}

/// The members that accepted one slot: a handful, kept inline (no allocation per slot unless a
/// group has more than [`Acks::INLINE`] members).
#[derive(Debug, Default)]
struct Acks {
    inline: [NodeId; Acks::INLINE],
    len: usize,
    more: Vec<NodeId>,
}

impl Acks {
    const INLINE: usize = 5;

    fn contains(&self, id: NodeId) -> bool {
        self.inline[..self.len.min(Self::INLINE)].contains(&id) || self.more.contains(&id)
    }

    fn count(&self) -> usize {
        self.len
    }

    fn insert(&mut self, id: NodeId) {
        if self.contains(id) {
            return;
        }
        if self.len < Self::INLINE {
            self.inline[self.len] = id;
        } else {
            self.more.push(id);
        }
        self.len += 1;
    }
}

impl InFlight {
    fn accept(&mut self, from: NodeId) {
        self.acks.insert(from);
    }
}

impl LeaderState {
    /// Records `from`'s acceptance of each of `slots` (ascending) still in the window: one
    /// search for the first, then a walk (the window is in slot order too).
    fn accept_slots(&mut self, from: NodeId, slots: impl IntoIterator<Item = u64>) {
        let mut slots = slots.into_iter().peekable();
        let Some(&first) = slots.peek() else {
            return;
        };
        let mut at = self.inflight.partition_point(|f| f.slot < first);
        for slot in slots {
            if at > 0 && self.inflight.get(at - 1).is_some_and(|f| f.slot >= slot) {
                at = self.inflight.partition_point(|f| f.slot < slot); // not ascending after all
            }
            while self.inflight.get(at).is_some_and(|f| f.slot < slot) {
                at += 1;
            }
            match self.inflight.get_mut(at) {
                Some(f) if f.slot == slot => f.accept(from),
                Some(_) => {}
                None => return,
            }
        }
    }

    pub(crate) fn start(&mut self, from: u64, recovery_end: u64) {
        self.next_slot = from;
        self.recovery_end = recovery_end;
    }

    pub(crate) fn enqueue(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.next_slot, "slots are assigned in order");
        self.next_slot = entry.index + 1;
        self.uncommitted_bytes += entry.payload_size().max(1);
        if matches!(entry.payload, EntryPayload::ConfChange(_)) {
            self.pending_conf = Some(entry.index);
        }
        self.queued.push_back(entry);
    }
}

impl<S: PaxosStorage> MultiPaxos<S> {
    /// Queues `payload` in the next free slot.
    pub(super) fn propose_payload(&mut self, payload: EntryPayload) -> Result<Proposed, Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(to) = self.lead.transfer {
            return Err(Error::TransferInProgress { to });
        }
        let entry = Entry {
            term: self.ballot.encode(),
            index: self.lead.next_slot,
            payload,
        };
        let size = entry.payload_size();
        if size > self.config.max_msg_bytes {
            return Err(Error::ProposalTooLarge {
                size,
                limit: self.config.max_msg_bytes,
            });
        }
        let uncommitted = self.lead.uncommitted_bytes;
        if uncommitted + size.max(1) > self.config.max_uncommitted_bytes {
            return Err(Error::UncommittedLimit {
                uncommitted,
                limit: self.config.max_uncommitted_bytes,
            });
        }
        let (index, term) = (entry.index, entry.term);
        self.lead.enqueue(entry);
        Ok(Proposed { index, term })
    }

    /// Whether the queue's head may enter the window now.
    fn can_let_in(&self) -> bool {
        let Some(front) = self.lead.queued.front() else {
            return false;
        };
        if front.index > self.commit + self.config.max_inflight_slots {
            return false;
        }
        // Drain behind an unchosen membership change: the slots after it belong to the
        // configuration it creates, which is not in force until it is chosen.
        self.lead.inflight_conf.is_none()
    }

    /// Whether `flush_leader` would produce a write or a message (exact: `has_ready` relies
    /// on it).
    pub(super) fn leader_has_work(&self) -> bool {
        if self.can_let_in() {
            return true;
        }
        // Called from every `has_ready`: no allocation here.
        let me = self.config.id;
        let conf = &self.conf;
        let peers = conf
            .voters
            .iter()
            .chain(&conf.outgoing)
            .chain(&conf.learners)
            .copied()
            .filter(|&id| id != me);
        if peers.clone().next().is_none() {
            return false;
        }
        let heartbeat_due = self.lead.heartbeat_pending
            || self.reads.heartbeat_pending()
            || self.lead.commit_sent < self.commit;
        heartbeat_due
            || (self.lead.resend_pending
                && self
                    .lead
                    .inflight
                    .iter()
                    .any(|f| peers.clone().any(|peer| !f.acks.contains(peer))))
    }

    /// Lets proposals into the window and broadcasts what is due.
    pub(super) fn flush_leader(&mut self) {
        while self.can_let_in() {
            let Some(entry) = self.lead.queued.pop_front() else {
                break;
            };
            let conf_change = matches!(entry.payload, EntryPayload::ConfChange(_));
            if conf_change {
                self.lead.inflight_conf = Some(entry.index);
            }
            debug_assert!(
                self.lead
                    .inflight
                    .back()
                    .is_none_or(|f| f.slot < entry.index),
                "slots enter the window in order"
            );
            self.lead.inflight.push_back(InFlight {
                slot: entry.index,
                size: entry.payload_size().max(1),
                conf_change,
                acks: Acks::default(),
            });
            self.log.put(entry.clone());
            self.lead.fresh.push(entry);
        }
        let peers = self.peers();
        let fresh = std::mem::take(&mut self.lead.fresh);
        if !fresh.is_empty() {
            if let Some((&last, others)) = peers.split_last() {
                for &to in others {
                    self.send_accepts(to, fresh.iter().cloned());
                }
                self.send_batch(last, fresh); // the last peer gets the batch itself
            }
            self.lead.commit_sent = self.commit;
        }
        if self.lead.resend_pending {
            self.lead.resend_pending = false;
            self.resend_unacked(&peers);
        }
        if self.lead.heartbeat_pending
            || self.reads.heartbeat_pending()
            || self.lead.commit_sent < self.commit
        {
            self.lead.heartbeat_pending = false;
            self.broadcast_heartbeat(&peers);
        }
    }

    /// Every member but this node (voters and learners).
    pub(super) fn peers(&self) -> Vec<NodeId> {
        let me = self.config.id;
        self.conf
            .members()
            .into_iter()
            .filter(|&id| id != me)
            .collect()
    }

    /// [`Self::send_accepts`] for a vector: one that fits one message is sent as it is.
    fn send_batch(&mut self, to: NodeId, entries: Vec<Entry>) {
        let bytes: u64 = entries.iter().map(Entry::payload_size).sum();
        if bytes <= self.config.max_msg_bytes {
            let commit = self.commit;
            self.send(to, MessageBody::Accept { entries, commit });
        } else {
            self.send_accepts(to, entries);
        }
    }

    /// Sends `entries` to `to` in `Accept` batches of at most `max_msg_bytes`.
    fn send_accepts(&mut self, to: NodeId, entries: impl IntoIterator<Item = Entry>) {
        let commit = self.commit;
        let entries = entries.into_iter();
        let mut batch = Vec::with_capacity(entries.size_hint().0);
        let mut bytes = 0u64;
        for entry in entries {
            let size = entry.payload_size();
            if !batch.is_empty() && bytes + size > self.config.max_msg_bytes {
                let entries = std::mem::take(&mut batch);
                self.send(to, MessageBody::Accept { entries, commit });
                bytes = 0;
            }
            bytes += size;
            batch.push(entry);
        }
        if !batch.is_empty() {
            self.send(
                to,
                MessageBody::Accept {
                    entries: batch,
                    commit,
                },
            );
        }
    }

    /// Re-sends, to each peer, one batch of in-flight slots it has not acknowledged.
    fn resend_unacked(&mut self, peers: &[NodeId]) {
        for &to in peers {
            let mut entries = Vec::new();
            let mut bytes = 0u64;
            for f in &self.lead.inflight {
                if f.acks.contains(to) {
                    continue;
                }
                let Ok(Some(entry)) = self.log.get(f.slot) else {
                    continue;
                };
                bytes += entry.payload_size();
                if !entries.is_empty() && bytes > self.config.max_msg_bytes {
                    break;
                }
                entries.push(entry);
            }
            if !entries.is_empty() {
                let commit = self.commit;
                self.send(to, MessageBody::Accept { entries, commit });
            }
        }
    }

    fn broadcast_heartbeat(&mut self, peers: &[NodeId]) {
        let read_round = self.next_read_round();
        let commit = self.commit;
        for &to in peers {
            self.send(to, MessageBody::Heartbeat { commit, read_round });
        }
        self.lead.commit_sent = commit;
    }

    /// Phase 2b arrived.
    pub(super) fn handle_accepted(&mut self, from: NodeId, ballot: super::Ballot, slots: &[u64]) {
        if self.role != Role::Leader || ballot != self.ballot {
            return;
        }
        self.lead.active.insert(from);
        self.lead.accept_slots(from, slots.iter().copied());
        if let Err(error) = self.advance_chosen() {
            self.fail(error);
        }
    }

    /// The leader's own write of `slots` is durable: count its acceptance.
    pub(super) fn own_accepts_durable(&mut self, slots: &[(u64, u64)]) {
        if self.role != Role::Leader {
            return;
        }
        let (me, term) = (self.config.id, self.ballot.encode());
        let ours = slots
            .iter()
            .filter(|&&(_, slot_term)| slot_term == term)
            .map(|&(slot, _)| slot);
        self.lead.accept_slots(me, ours);
        if let Err(error) = self.advance_chosen() {
            self.fail(error);
        }
    }

    /// Moves the chosen prefix over every slot a majority accepted.
    fn advance_chosen(&mut self) -> Result<(), StorageError> {
        let before = self.commit;
        loop {
            let slot = self.commit + 1;
            let chosen = self.lead.inflight.front().is_some_and(|f| {
                f.slot == slot
                    && f.acks.count() * 2 > self.conf.voters.len()
                    && is_majority_by(&self.conf.voters, |id| f.acks.contains(id))
            });
            if !chosen {
                break;
            }
            let Some(f) = self.lead.inflight.pop_front() else {
                break;
            };
            self.lead.uncommitted_bytes = self.lead.uncommitted_bytes.saturating_sub(f.size);
            if self.lead.pending_conf == Some(slot) {
                self.lead.pending_conf = None;
            }
            if self.lead.inflight_conf == Some(slot) {
                self.lead.inflight_conf = None;
            }
            if f.conf_change {
                // Only a membership change needs its value here (to change the configuration).
                let Some(entry) = self.log.get(slot)? else {
                    return Err(StorageError::Inconsistent(format!(
                        "leader lost its own proposal for slot {slot}"
                    )));
                };
                self.on_chosen(&entry);
            } else {
                self.on_chosen_data(slot);
            }
            if self.role != Role::Leader {
                return Ok(()); // a membership change removed us
            }
        }
        if self.commit > before {
            self.on_commit_advanced();
        }
        Ok(())
    }
}
