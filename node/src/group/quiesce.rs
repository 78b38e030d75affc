//! Quiescence of an idle group (sharded nodes): no ticks, no heartbeats while nothing happens.
//!
//! - A leader whose group has been idle (nothing pending, `commit = applied = last index`) for
//!   `idle_after` ticks proposes to go quiet at its last index and stops ticking its engine (so no
//!   heartbeat follows the proposal); its loop still counts ticks. Once every other member has
//!   acknowledged, the leader goes quiet; a refusal, a change of role, term or index, new work, or
//!   `propose_for` ticks without every answer (less than the followers' election timeout) make
//!   it tick again and retry later.
//! - A follower acknowledges only a proposal from the leader it follows, in its term, at exactly
//!   its own last, committed and applied index; then it stops ticking. Its acknowledgement is sent
//!   after the loop's own messages of the same iteration, so on the one ordered connection it
//!   arrives after the answers to the leader's last heartbeats.
//! - A quiet member wakes on any protocol message or client request for the group (a proposing
//!   leader only on a request: answers to its last heartbeats still arrive).
//! - Lease reads count ticks, so quiescence is off with `read_mode = "lease"`.
//!
//! If a quiet group's leader dies, its followers learn of it when a request or a message (the
//! restarted node's campaign) wakes them, then elect after an election timeout.

use std::collections::BTreeSet;

use crate::proto::quiesce::Quiesce;

/// Where the group stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Ticking; idle for this many ticks (a leader).
    Active { idle_ticks: u32 },
    /// A leader waiting for the followers' answers, its engine not ticking.
    Proposed {
        term: u64,
        index: u64,
        waiting: BTreeSet<u64>,
        waited: u32,
    },
    /// Not ticking.
    Quiet,
}

/// What the loop knows of the group when it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    /// This member leads.
    pub(crate) leader_role: bool,
    /// The leader it knows.
    pub(crate) leader: Option<u64>,
    /// Current term.
    pub(crate) term: u64,
    /// Commit index.
    pub(crate) commit: u64,
    /// Applied index.
    pub(crate) applied: u64,
    /// Last log index.
    pub(crate) last_index: u64,
    /// No client request, read or admin change pending; no snapshot running.
    pub(crate) idle: bool,
    /// The other members.
    pub(crate) peers: Vec<u64>,
}

impl View {
    fn settled(&self) -> bool {
        self.commit == self.last_index && self.applied == self.last_index
    }
}

/// One group's quiescence state.
#[derive(Debug)]
pub(crate) struct Quiescence {
    enabled: bool,
    phase: Phase,
    idle_after: u32,
    propose_for: u32,
}

impl Quiescence {
    /// Off (unsharded nodes, lease reads).
    pub(crate) fn disabled() -> Self {
        Quiescence {
            enabled: false,
            phase: Phase::Active { idle_ticks: 0 },
            idle_after: 0,
            propose_for: 0,
        }
    }

    /// On: a leader proposes after `idle_after` idle ticks and waits at most `propose_for`.
    pub(crate) fn new(idle_after: u32, propose_for: u32) -> Self {
        Quiescence {
            enabled: true,
            phase: Phase::Active { idle_ticks: 0 },
            idle_after: idle_after.max(1),
            propose_for: propose_for.max(1),
        }
    }

    /// Whether the engine is ticked.
    pub(crate) fn ticks_engine(&self) -> bool {
        matches!(self.phase, Phase::Active { .. })
    }

    /// Whether the loop's ticker runs at all.
    pub(crate) fn ticker_runs(&self) -> bool {
        self.phase != Phase::Quiet
    }

    /// Whether the group is quiet.
    pub(crate) fn is_quiet(&self) -> bool {
        self.phase == Phase::Quiet
    }

    /// A client request arrived: tick again.
    pub(crate) fn on_request(&mut self) {
        self.phase = Phase::Active { idle_ticks: 0 };
    }

    /// A protocol message arrived: a quiet member ticks again.
    pub(crate) fn on_message(&mut self) {
        if self.phase == Phase::Quiet {
            self.phase = Phase::Active { idle_ticks: 0 };
        }
    }

    /// One tick of the loop; returns the proposals to send (to every peer).
    pub(crate) fn on_tick(&mut self, view: &View) -> Vec<(u64, Quiesce)> {
        if !self.enabled {
            return Vec::new();
        }
        match &mut self.phase {
            Phase::Active { idle_ticks } => {
                if !(view.leader_role && view.idle && view.settled()) {
                    *idle_ticks = 0;
                    return Vec::new();
                }
                *idle_ticks += 1;
                if *idle_ticks < self.idle_after {
                    return Vec::new();
                }
                let (term, index) = (view.term, view.last_index);
                if view.peers.is_empty() {
                    self.phase = Phase::Quiet;
                    return Vec::new();
                }
                self.phase = Phase::Proposed {
                    term,
                    index,
                    waiting: view.peers.iter().copied().collect(),
                    waited: 0,
                };
                view.peers
                    .iter()
                    .map(|&peer| (peer, Quiesce::Propose { term, index }))
                    .collect()
            }
            Phase::Proposed {
                term,
                index,
                waited,
                ..
            } => {
                *waited += 1;
                let changed = !view.leader_role
                    || !view.idle
                    || !view.settled()
                    || view.term != *term
                    || view.last_index != *index;
                if changed || *waited > self.propose_for {
                    self.phase = Phase::Active { idle_ticks: 0 };
                }
                Vec::new()
            }
            Phase::Quiet => Vec::new(),
        }
    }

    /// A quiescence message from `from`; returns the answer to send (after the loop's own
    /// messages of this iteration).
    pub(crate) fn on_control(
        &mut self,
        from: u64,
        message: Quiesce,
        view: &View,
    ) -> Option<Quiesce> {
        match message {
            Quiesce::Propose { term, index } => {
                let agree = self.enabled
                    && !view.leader_role
                    && view.leader == Some(from)
                    && view.term == term
                    && view.last_index == index
                    && view.settled()
                    && view.idle;
                if agree {
                    self.phase = Phase::Quiet;
                    Some(Quiesce::Ack { term, index })
                } else {
                    self.phase = Phase::Active { idle_ticks: 0 };
                    Some(Quiesce::Refuse { term })
                }
            }
            Quiesce::Ack { term, index } => {
                if let Phase::Proposed {
                    term: t,
                    index: i,
                    waiting,
                    ..
                } = &mut self.phase
                {
                    if (*t, *i) == (term, index) {
                        waiting.remove(&from);
                        if waiting.is_empty() {
                            self.phase = Phase::Quiet;
                        }
                    }
                }
                None
            }
            Quiesce::Refuse { term } => {
                if matches!(&self.phase, Phase::Proposed { term: t, .. } if *t == term) {
                    self.phase = Phase::Active { idle_ticks: 0 };
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader() -> View {
        View {
            leader_role: true,
            leader: Some(1),
            term: 3,
            commit: 9,
            applied: 9,
            last_index: 9,
            idle: true,
            peers: vec![2, 3],
        }
    }

    fn follower() -> View {
        View {
            leader_role: false,
            peers: vec![1, 3],
            ..leader()
        }
    }

    #[test]
    fn an_idle_leader_goes_quiet_only_once_every_follower_acknowledged_its_last_index() {
        let mut q = Quiescence::new(3, 5);
        assert!(q.on_tick(&leader()).is_empty());
        assert!(q.on_tick(&leader()).is_empty());
        let proposals = q.on_tick(&leader());
        let propose = Quiesce::Propose { term: 3, index: 9 };
        assert_eq!(proposals, vec![(2, propose), (3, propose)]);
        assert!(!q.ticks_engine(), "no heartbeat follows the proposal");
        assert!(q.ticker_runs());
        let mut f2 = Quiescence::new(3, 5);
        let ack = f2.on_control(1, propose, &follower()).unwrap();
        assert_eq!(ack, Quiesce::Ack { term: 3, index: 9 });
        assert!(f2.is_quiet());
        assert_eq!(q.on_control(2, ack, &leader()), None);
        assert!(!q.is_quiet(), "node 3 has not answered");
        q.on_message();
        assert!(
            !q.ticks_engine(),
            "a proposing leader is not woken by messages"
        );
        q.on_control(3, ack, &leader());
        assert!(q.is_quiet() && !q.ticker_runs());
        q.on_message();
        assert!(q.ticks_engine(), "a message wakes a quiet member");
        f2.on_request();
        assert!(f2.ticks_engine(), "a request wakes a quiet member");
    }

    #[test]
    fn a_follower_behind_or_following_another_leader_refuses_and_the_leader_retries_later() {
        let mut f = Quiescence::new(3, 5);
        let propose = Quiesce::Propose { term: 3, index: 9 };
        let behind = View {
            applied: 8,
            commit: 8,
            ..follower()
        };
        assert_eq!(
            f.on_control(1, propose, &behind),
            Some(Quiesce::Refuse { term: 3 })
        );
        assert!(!f.is_quiet());
        assert_eq!(
            f.on_control(2, propose, &follower()),
            Some(Quiesce::Refuse { term: 3 })
        );
        let newer = View {
            term: 4,
            ..follower()
        };
        assert_eq!(
            f.on_control(1, propose, &newer),
            Some(Quiesce::Refuse { term: 3 })
        );

        let mut q = Quiescence::new(1, 5);
        assert_eq!(q.on_tick(&leader()).len(), 2);
        q.on_control(2, Quiesce::Refuse { term: 3 }, &leader());
        assert!(q.ticks_engine(), "a refusal makes the leader tick again");
    }

    #[test]
    fn a_proposal_unanswered_in_time_or_new_work_resumes_ticking() {
        let mut q = Quiescence::new(1, 2);
        assert_eq!(q.on_tick(&leader()).len(), 2);
        q.on_tick(&leader());
        q.on_tick(&leader());
        assert!(!q.ticks_engine());
        q.on_tick(&leader());
        assert!(q.ticks_engine(), "gave up after propose_for ticks");
        assert_eq!(q.on_tick(&leader()).len(), 2);
        let busy = View {
            idle: false,
            ..leader()
        };
        q.on_tick(&busy);
        assert!(q.ticks_engine());
        let mut off = Quiescence::disabled();
        for _ in 0..10 {
            assert!(off.on_tick(&leader()).is_empty());
        }
        assert!(off.ticks_engine());
        assert_eq!(
            off.on_control(1, Quiesce::Propose { term: 3, index: 9 }, &follower()),
            Some(Quiesce::Refuse { term: 3 })
        );
    }

    #[test]
    fn a_single_member_group_goes_quiet_alone() {
        let mut q = Quiescence::new(2, 5);
        let alone = View {
            peers: vec![],
            ..leader()
        };
        q.on_tick(&alone);
        q.on_tick(&alone);
        assert!(q.is_quiet());
    }
}
