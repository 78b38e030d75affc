//! FastLeaderElection-style leader election.
//!
//! A looking member votes for itself and broadcasts a notification carrying its vote (proposed
//! leader, that leader's current epoch and last zxid) and its election round. On a notification
//! from a voter it adopts a better vote (ordered by current epoch, then last zxid, then server id)
//! and re-broadcasts; a notification of a newer round resets its tally. Once a quorum of voters of
//! its round agree with its vote, it waits one short, seeded-jittered pause for a better vote, then
//! decides: lead if the vote names itself, follow otherwise. Votes are not durable: the safety of
//! what a leader does comes from the epochs of discovery, not from the election.
//!
//! A member already following or leading answers a looking member with its leader, so late
//! members join the established leader rather than start a new election. Resent notifications
//! back off exponentially with jitter; a round that does not decide in two election timeouts is
//! abandoned for a new one.

use std::collections::BTreeMap;

use rand::Rng;

use super::config::PlantedBug;
use super::message::{MessageBody, PeerState, Vote};
use super::{FollowerPhase, State, Zab, ZabStorage};
use crate::types::{ConfState, EntryPayload, NodeId};

/// The election's volatile state.
#[derive(Debug, Default)]
pub(crate) struct Election {
    pub(crate) round: u64,
    pub(crate) vote: Option<Vote>,
    /// Votes of voters in `round` (this member's own included).
    pub(crate) received: BTreeMap<NodeId, Vote>,
    pub(crate) since: u64,
    pub(crate) notify_at: u64,
    pub(crate) backoff: u64,
    pub(crate) decide_at: Option<u64>,
    /// Members that say they follow someone: member -> the leader it names.
    pub(crate) following: BTreeMap<NodeId, NodeId>,
    /// The membership the election runs in: the latest configuration in this member's history
    /// (committed or not). The applied one may lag after a restart (the commit point is only a
    /// hint), and members whose views differ could then never agree.
    pub(crate) conf: ConfState,
    /// FOLLOWERINFOs that arrived while this member was still looking (member -> accepted
    /// epoch, observer): a follower that decided first is not kept waiting for its resend once
    /// this member decides to lead. Bounded by the membership; cleared with each new round.
    pub(crate) early_infos: BTreeMap<NodeId, (u64, bool)>,
}

impl Election {
    fn quorum(&self) -> usize {
        self.conf.voters.len() / 2 + 1
    }
}

/// Whether vote `a` beats vote `b`: (current epoch, last zxid, server id), or server id alone
/// under the planted `ElectionIgnoresZxid`.
pub(crate) fn better(a: &Vote, b: &Vote, ignore_zxid: bool) -> bool {
    if ignore_zxid {
        return a.leader > b.leader;
    }
    (a.epoch, a.zxid, a.leader) > (b.epoch, b.zxid, b.leader)
}

impl<S: ZabStorage> Zab<S> {
    /// This member's own vote: for itself if it may lead, otherwise a blank any vote beats.
    pub(crate) fn own_vote(&self) -> Vote {
        if !self.election.conf.is_voter(self.config.id) {
            return Vote {
                leader: 0,
                epoch: 0,
                zxid: super::Zxid::default(),
            };
        }
        Vote {
            leader: self.config.id,
            epoch: self.current_epoch,
            zxid: self.log.last_zxid(),
        }
    }

    /// The configuration of the last membership entry in the history (the applied one if none
    /// follows it).
    fn latest_conf(&self) -> ConfState {
        let mut conf = self.conf.clone();
        let last = self.log.last_index();
        if last > self.applied {
            if let Ok(entries) = self.log.entries(self.applied + 1, last + 1, u64::MAX) {
                for entry in entries {
                    if let EntryPayload::ConfChange(change) = &entry.payload {
                        if let Ok(next) = super::membership::apply_change(&conf, change) {
                            conf = next;
                        }
                    }
                }
            }
        }
        conf
    }

    /// Whether a vote names a member this one may adopt as leader: a voter of its view of the
    /// membership, or any member whose history is of a newer epoch than this one's — its view
    /// may lag (an uncommitted change of an older epoch, cut by the newer leader), and refusing
    /// the newer history left elections where no member could gather a quorum (seed 3214).
    /// Safety does not rest on it: discovery does. Measured over seeds 0..4000 (and churn
    /// 0..3000): 1 + 1 liveness failures with this rule (1735; churn 458), 2 + 3 without it;
    /// rerun at commit 05fcbe5: 0 + 1 (churn 1250), and 0 + 0 with the rule below.
    ///
    /// A vote others cast for this member is adopted if it is a voter of the membership it
    /// applied, even when a newer change in its history demotes it: it may hold the newest
    /// history, which makes every other leader step aside for it (churn seed 1250).
    fn may_lead(&self, vote: &Vote) -> bool {
        let me = self.config.id;
        vote.leader != 0
            && (self.election.conf.is_voter(vote.leader)
                || vote.epoch > self.current_epoch
                || (vote.leader == me && self.conf.is_voter(me)))
    }

    pub(crate) fn ignores_zxid(&self) -> bool {
        self.has_bug(PlantedBug::ElectionIgnoresZxid)
    }

    /// Steps aside for `better`, a follower whose history beats ours: a new round voting for it.
    pub(crate) fn step_aside_for(&mut self, better: Vote) {
        self.become_looking();
        if self.election.conf.is_voter(better.leader) {
            self.election.vote = Some(better);
            if self.election.conf.is_voter(self.config.id) {
                self.election.received.insert(self.config.id, better);
            }
            self.broadcast_notification();
        }
    }

    /// Starts (or restarts) looking: a new round, voting for itself.
    pub(crate) fn become_looking(&mut self) {
        if matches!(self.state, State::Leading(_)) {
            self.abandon_reads();
        }
        self.state = State::Looking;
        self.election.conf = self.latest_conf();
        self.randomize_timeout();
        self.election.round += 1;
        self.election.received.clear();
        self.election.following.clear();
        self.election.early_infos.clear();
        self.election.decide_at = None;
        self.election.since = self.now;
        self.election.backoff = 1;
        let vote = self.own_vote();
        self.election.vote = Some(vote);
        if self.election.conf.is_voter(self.config.id) {
            self.election.received.insert(self.config.id, vote);
        }
        self.broadcast_notification();
        self.check_decision();
    }

    fn my_peer_state(&self) -> PeerState {
        match &self.state {
            State::Looking => PeerState::Looking,
            State::Leading(_) => PeerState::Leading,
            State::Following(_) if self.is_observer() => PeerState::Observing,
            State::Following(_) => PeerState::Following,
        }
    }

    pub(crate) fn my_notification(&self) -> MessageBody {
        let vote = match &self.state {
            State::Looking => self.election.vote.unwrap_or_else(|| self.own_vote()),
            State::Leading(l) => Vote {
                leader: self.config.id,
                epoch: l.epoch.max(self.current_epoch),
                zxid: self.log.last_zxid(),
            },
            State::Following(f) => Vote {
                leader: f.leader,
                epoch: f.epoch,
                zxid: self.log.last_zxid(),
            },
        };
        MessageBody::Notification {
            round: self.election.round,
            vote,
            state: self.my_peer_state(),
        }
    }

    pub(crate) fn broadcast_notification(&mut self) {
        let body = self.my_notification();
        let mut voters: Vec<NodeId> = self.election.conf.voters.iter().copied().collect();
        voters.extend(self.conf.voters.iter().copied());
        voters.sort_unstable();
        voters.dedup();
        for to in voters {
            self.send(to, body.clone());
        }
        let jitter = self.rng.gen_range(0..=self.election.backoff);
        self.election.notify_at = self.now + self.election.backoff + jitter;
        self.election.backoff =
            (self.election.backoff * 2).min(u64::from(self.config.election_tick));
    }

    pub(crate) fn tick_looking(&mut self) {
        if let Some(at) = self.election.decide_at {
            if self.now >= at {
                self.decide();
                return;
            }
        }
        let stuck = u64::from(self.election_timeout) * 2;
        if self.now.saturating_sub(self.election.since) >= stuck {
            self.become_looking();
            return;
        }
        if self.now >= self.election.notify_at {
            self.broadcast_notification();
        }
    }

    pub(crate) fn handle_notification(
        &mut self,
        from: NodeId,
        round: u64,
        vote: Vote,
        state: PeerState,
    ) {
        let joining = self.conf.voters.is_empty() && self.election.conf.voters.is_empty();
        if !joining && !self.election.conf.contains(from) && !self.conf.contains(from) {
            return; // not a member: nothing to learn, nothing to store (keeps the tallies bounded)
        }
        if joining {
            // A new member that knows no membership yet (started to join) waits for the leader
            // of the group that added it to say so; it takes part in no election.
            if state == PeerState::Leading
                && vote.leader == from
                && matches!(self.state, State::Looking)
            {
                self.become_following(from);
            }
            return;
        }
        let from_voter = self.election.conf.is_voter(from);
        if !matches!(self.state, State::Looking) {
            if state == PeerState::Looking && from_voter && self.missed_leader() {
                // A voter is looking and this follower has not heard its leader for half an
                // election timeout either: join that election now rather than wait out its own
                // (randomized, up to twice as long) timeout — with one member down, a quorum of
                // the rest needs both. ZooKeeper's followers learn it from the leader's closed
                // socket; here silence is the only signal. Safety rests on discovery, not on
                // who looks when.
                self.become_looking();
                self.handle_notification(from, round, vote, state);
                return;
            }
            // Tell a looking member who leads.
            if state == PeerState::Looking {
                let body = self.my_notification();
                let body = match body {
                    MessageBody::Notification { vote, state, .. } => {
                        MessageBody::Notification { round, vote, state }
                    }
                    other => other,
                };
                self.send(from, body);
            }
            return;
        }
        match state {
            PeerState::Looking => {
                // Like Raft's servers, a member takes part whatever its own view of the
                // membership (views lag; the tally counts only voters of this member's view). A
                // vote for a member that cannot lead here is never adopted.
                let _ = from_voter;
                let ignore = self.ignores_zxid();
                let mine = self.election.vote.unwrap_or_else(|| self.own_vote());
                if round > self.election.round {
                    self.election.round = round;
                    self.election.received.clear();
                    self.election.decide_at = None;
                    self.election.since = self.now;
                    let own = self.own_vote();
                    let pick = if self.may_lead(&vote) && better(&vote, &own, ignore) {
                        vote
                    } else {
                        own
                    };
                    self.election.vote = Some(pick);
                    if self.election.conf.is_voter(self.config.id) {
                        self.election.received.insert(self.config.id, pick);
                    }
                    self.election.backoff = 1;
                    self.broadcast_notification();
                } else if round < self.election.round {
                    let body = self.my_notification();
                    self.send(from, body);
                    return;
                } else if self.may_lead(&vote) && better(&vote, &mine, ignore) {
                    self.election.vote = Some(vote);
                    self.election.decide_at = None;
                    if self.election.conf.is_voter(self.config.id) {
                        self.election.received.insert(self.config.id, vote);
                    }
                    self.election.backoff = 1;
                    self.broadcast_notification();
                }
                self.election.received.insert(from, vote);
                self.check_decision();
            }
            PeerState::Leading => {
                // The leader itself says it leads: join it (discovery decides whether it may).
                if vote.leader == from && from != self.config.id {
                    self.become_following(from);
                }
            }
            PeerState::Following | PeerState::Observing => {
                // Only members that decided in this election (no NEWEPOCH yet) count: one still
                // in a session with an earlier attempt of ours says nothing about this round.
                if vote.epoch == 0 {
                    self.election.following.insert(from, vote.leader);
                }
                if vote.leader == self.config.id && self.election.conf.is_voter(self.config.id) {
                    // A quorum decided for us before we heard enough of them: lead.
                    let me = self.config.id;
                    let behind = self
                        .election
                        .following
                        .iter()
                        .filter(|(id, l)| **l == me && self.election.conf.is_voter(**id))
                        .count();
                    if behind + 1 >= self.election.quorum() {
                        self.become_leading();
                    }
                    return;
                }
                // Ask the leader it names; its own answer (Leading) makes us join.
                if vote.leader != self.config.id && vote.leader != 0 {
                    let body = self.my_notification();
                    self.send(vote.leader, body);
                }
            }
        }
    }

    /// Whether this member follows (as a voter) a leader it has not heard from for half an
    /// election timeout.
    fn missed_leader(&self) -> bool {
        match &self.state {
            State::Following(f) => {
                !self.is_observer()
                    && self.now.saturating_sub(f.heard_at)
                        >= u64::from(self.config.election_tick) / 2
            }
            _ => false,
        }
    }

    fn check_decision(&mut self) {
        let Some(vote) = self.election.vote else {
            return;
        };
        if vote.leader == 0 {
            return;
        }
        let agree = self
            .election
            .received
            .iter()
            .filter(|(id, v)| self.election.conf.is_voter(**id) && v.leader == vote.leader)
            .count();
        if agree >= self.election.quorum() {
            if self.election.decide_at.is_none() {
                // Finalize wait: a better vote may still be on its way.
                self.election.decide_at = Some(self.now + 1 + self.rng.gen_range(0..2));
            }
        } else {
            self.election.decide_at = None;
        }
    }

    fn decide(&mut self) {
        self.election.decide_at = None;
        let Some(vote) = self.election.vote else {
            return;
        };
        if vote.leader == self.config.id {
            self.become_leading();
        } else {
            self.become_following(vote.leader);
        }
    }

    /// Follows (or observes) `leader`: FOLLOWERINFO goes out at once.
    pub(crate) fn become_following(&mut self, leader: NodeId) {
        if matches!(self.state, State::Leading(_)) {
            self.abandon_reads();
        }
        self.randomize_timeout();
        self.state = State::Following(super::Following {
            leader,
            epoch: 0,
            fresh: false,
            phase: FollowerPhase::Discovery,
            heard_at: self.now,
            info_sent_at: self.now,
        });
        self.send_follower_info();
    }
}
