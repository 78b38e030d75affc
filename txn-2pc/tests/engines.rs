//! The engines driven by hand, sentence by sentence of the literature: presumed abort, read-only
//! and one-phase commit, the durability contract, recovery, heuristics, and bad input.

use txn_2pc::fence::{BranchKey, FenceRecord, Reply, Request, Service, ServiceEvent};
use txn_2pc::two_phase::{
    Answer, Config, Coordinator, CoordinatorEvent, CoordinatorRecord, Message, Participant,
    ParticipantEvent, ParticipantRecord,
};
use txn_2pc::{DurableRecord, Outcome, RecordError, RecoveryError, StepError, TxnId, Vote, Write};

const T: TxnId = TxnId(7);

fn forced<R: Clone>(writes: &[Write<R>]) -> Vec<(txn_2pc::ForceToken, R)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Force { token, record } => Some((*token, record.clone())),
            Write::Lazy { .. } => None,
        })
        .collect()
}

/// A participant asked to prepare by the coordinator, answering `vote`.
fn prepared(id: u64, vote: Vote) -> Participant {
    let mut p = Participant::new(id, Config::default());
    p.step(
        0,
        Message::Prepare {
            txn: T,
            participants: vec![1, 2],
        },
    )
    .unwrap();
    let out = p.take_output();
    assert_eq!(
        out.events,
        vec![ParticipantEvent::PrepareRequested { txn: T }]
    );
    p.vote(T, vote).unwrap();
    p
}

#[test]
fn a_participant_forces_prepared_before_its_yes_vote_leaves() {
    let mut p = prepared(1, Vote::Yes);
    let out = p.take_output();
    let force = forced(&out.writes);
    assert!(matches!(
        force[..],
        [(_, ParticipantRecord::Prepared { txn: T, .. })]
    ));
    assert!(
        out.messages.is_empty(),
        "the vote left before PREPARED was durable"
    );
    p.forced(force[0].0).unwrap();
    let out = p.take_output();
    assert_eq!(
        out.messages,
        vec![(
            0,
            Message::Vote {
                txn: T,
                vote: Vote::Yes
            }
        )]
    );
}

#[test]
fn a_participant_forces_committed_before_acknowledging() {
    let mut p = prepared(1, Vote::Yes);
    let token = forced(&p.take_output().writes)[0].0;
    p.forced(token).unwrap();
    p.take_output();
    p.step(0, Message::Commit { txn: T }).unwrap();
    let out = p.take_output();
    let force = forced(&out.writes);
    assert!(matches!(
        force[..],
        [(_, ParticipantRecord::Committed { txn: T })]
    ));
    assert!(out.messages.is_empty() && out.events.is_empty());
    p.forced(force[0].0).unwrap();
    let out = p.take_output();
    assert_eq!(out.messages, vec![(0, Message::Ack { txn: T })]);
    assert_eq!(
        out.events,
        vec![ParticipantEvent::Apply {
            txn: T,
            outcome: Outcome::Commit
        }]
    );
}

#[test]
fn the_coordinator_forces_commit_before_sending_it_and_writes_end_lazily_after_all_acks() {
    let mut c = Coordinator::new(0, Config::default());
    c.begin(T, &[1, 2]).unwrap();
    assert_eq!(c.take_output().messages.len(), 2);
    c.step(
        1,
        Message::Vote {
            txn: T,
            vote: Vote::Yes,
        },
    )
    .unwrap();
    assert!(c.take_output().is_empty(), "no record before the decision");
    c.step(
        2,
        Message::Vote {
            txn: T,
            vote: Vote::Yes,
        },
    )
    .unwrap();
    let out = c.take_output();
    let force = forced(&out.writes);
    assert!(matches!(
        force[..],
        [(_, CoordinatorRecord::Commit { txn: T, .. })]
    ));
    assert!(out.messages.is_empty());
    c.forced(force[0].0).unwrap();
    let out = c.take_output();
    assert_eq!(out.messages.len(), 2);
    c.step(1, Message::Ack { txn: T }).unwrap();
    c.step(2, Message::Ack { txn: T }).unwrap();
    let out = c.take_output();
    assert_eq!(
        out.writes,
        vec![Write::Lazy {
            record: CoordinatorRecord::End { txn: T }
        }]
    );
    assert!(out.events.contains(&CoordinatorEvent::Finished { txn: T }));
    // A duplicate ack after END is ignored by rule.
    c.step(2, Message::Ack { txn: T }).unwrap();
    assert!(c.take_output().is_empty());
}

#[test]
fn presumed_abort_writes_nothing_waits_for_no_ack_and_answers_abort_for_the_unknown() {
    let mut c = Coordinator::new(0, Config::default());
    c.begin(T, &[1, 2]).unwrap();
    c.take_output();
    c.step(
        1,
        Message::Vote {
            txn: T,
            vote: Vote::No,
        },
    )
    .unwrap();
    let out = c.take_output();
    assert!(out.writes.is_empty(), "an abort needs no write");
    // Only the participant that might have voted yes hears about it.
    assert_eq!(out.messages, vec![(2, Message::Abort { txn: T })]);
    c.step(9, Message::DecisionRequest { txn: TxnId(99) })
        .unwrap();
    assert_eq!(
        c.take_output().messages,
        vec![(
            9,
            Message::DecisionReply {
                txn: TxnId(99),
                answer: Answer::Decided(Outcome::Abort)
            }
        )]
    );
}

#[test]
fn read_only_voters_skip_phase_two_and_a_single_participant_commits_in_one_phase() {
    let mut c = Coordinator::new(0, Config::default());
    c.begin(T, &[1, 2]).unwrap();
    c.take_output();
    c.step(
        1,
        Message::Vote {
            txn: T,
            vote: Vote::ReadOnly,
        },
    )
    .unwrap();
    c.step(
        2,
        Message::Vote {
            txn: T,
            vote: Vote::Yes,
        },
    )
    .unwrap();
    let out = c.take_output();
    let force = forced(&out.writes);
    assert!(
        matches!(&force[..], [(_, CoordinatorRecord::Commit { participants, .. })] if participants == &vec![2])
    );
    c.forced(force[0].0).unwrap();
    assert_eq!(
        c.take_output().messages,
        vec![(2, Message::Commit { txn: TxnId(7) })]
    );

    let mut c = Coordinator::new(0, Config::default());
    c.begin(TxnId(8), &[3]).unwrap();
    assert_eq!(
        c.take_output().messages,
        vec![(3, Message::OnePhaseCommit { txn: TxnId(8) })]
    );
}

#[test]
fn recovery_lists_in_doubt_transactions_and_an_operator_heuristic_is_recorded_and_reported() {
    let records = vec![
        ParticipantRecord::Prepared {
            txn: T,
            coordinator: 0,
            participants: vec![1, 2],
        },
        ParticipantRecord::Prepared {
            txn: TxnId(8),
            coordinator: 0,
            participants: vec![1, 2],
        },
        ParticipantRecord::Committed { txn: TxnId(8) },
    ];
    let (mut p, in_doubt) = Participant::recover(1, Config::default(), records).unwrap();
    assert_eq!(in_doubt.iter().map(|d| d.txn).collect::<Vec<_>>(), vec![T]);
    p.force_heuristic(T, Outcome::Commit).unwrap();
    let out = p.take_output();
    let force = forced(&out.writes);
    assert!(matches!(
        force[..],
        [(
            _,
            ParticipantRecord::Heuristic {
                txn: T,
                outcome: Outcome::Commit
            }
        )]
    ));
    p.forced(force[0].0).unwrap();
    assert_eq!(
        p.take_output().events,
        vec![ParticipantEvent::HeuristicApplied {
            txn: T,
            outcome: Outcome::Commit
        }]
    );
    p.step(0, Message::Abort { txn: T }).unwrap();
    assert!(p
        .take_output()
        .events
        .contains(&ParticipantEvent::HeuristicDamage {
            txn: T,
            heuristic: Outcome::Commit,
            decided: Outcome::Abort
        }));
}

#[test]
fn a_coordinator_resumes_commit_without_end_after_a_crash() {
    let records = vec![
        CoordinatorRecord::Commit {
            txn: T,
            participants: vec![1, 2],
        },
        CoordinatorRecord::Commit {
            txn: TxnId(8),
            participants: vec![1],
        },
        CoordinatorRecord::End { txn: TxnId(8) },
    ];
    let (mut c, resumed) = Coordinator::recover(0, Config::default(), records).unwrap();
    assert_eq!(resumed, vec![T]);
    assert_eq!(c.take_output().messages.len(), 2);
}

#[test]
fn bad_input_gets_a_typed_error_never_a_panic() {
    let mut c = Coordinator::new(0, Config::default());
    assert_eq!(
        c.step(
            1,
            Message::Vote {
                txn: T,
                vote: Vote::No
            }
        ),
        Err(StepError::UnknownTxn(T))
    );
    c.begin(T, &[1, 2]).unwrap();
    assert_eq!(c.begin(T, &[1, 2]), Err(StepError::DuplicateTxn(T)));
    assert!(matches!(c.begin(TxnId(9), &[]), Err(StepError::Invalid(_))));
    assert_eq!(
        c.step(
            5,
            Message::Vote {
                txn: T,
                vote: Vote::Yes
            }
        ),
        Err(StepError::NotAParticipant { txn: T, from: 5 })
    );
    // A token this coordinator never issued (it has forced nothing yet).
    let mut other = prepared(2, Vote::Yes);
    let foreign = forced(&other.take_output().writes)[0].0;
    assert_eq!(
        c.forced(foreign),
        Err(txn_2pc::DurabilityError::UnknownToken(0))
    );
    other.forced(foreign).unwrap();
    assert_eq!(
        other.forced(foreign),
        Err(txn_2pc::DurabilityError::AlreadyConfirmed(0))
    );

    let mut p = prepared(1, Vote::No);
    assert!(matches!(
        p.step(0, Message::Commit { txn: T }),
        Err(StepError::Conflict { .. })
    ));
    assert!(matches!(
        p.vote(TxnId(40), Vote::Yes),
        Err(StepError::WrongState { .. })
    ));

    assert_eq!(ParticipantRecord::decode(&[]), Err(RecordError::Empty));
    assert_eq!(
        ParticipantRecord::decode(&[9, 1, 2]),
        Err(RecordError::Version(9))
    );
    assert!(matches!(
        ParticipantRecord::decode(&[1, 200, 200, 200]),
        Err(RecordError::Body(_))
    ));
    let bytes = ParticipantRecord::Committed { txn: T }.encode();
    assert_eq!(
        ParticipantRecord::decode(&bytes),
        Ok(ParticipantRecord::Committed { txn: T })
    );
    let stored = [bytes, vec![1, 77]];
    assert!(matches!(
        txn_2pc::record::decode_all::<ParticipantRecord, _>(stored.iter()),
        Err(RecoveryError::Unparsable { index: 1, .. })
    ));
    assert!(matches!(
        Coordinator::recover(
            0,
            Config::default(),
            vec![CoordinatorRecord::End { txn: T }]
        ),
        Err(RecoveryError::Inconsistent { .. })
    ));
}

#[test]
fn a_cancel_before_its_try_is_an_empty_rollback_that_fences_off_the_late_try() {
    let key = BranchKey { txn: T, step: 0 };
    let mut s = Service::new(1);
    s.step(0, Request::Undo { key }).unwrap();
    let out = s.take_output();
    let force = forced(&out.writes);
    assert!(matches!(
        force[..],
        [(
            _,
            FenceRecord::Undone {
                compensated: false,
                ..
            }
        )]
    ));
    s.forced(force[0].0).unwrap();
    assert_eq!(s.take_output().messages, vec![(0, Reply::Undone { key })]);
    s.step(
        0,
        Request::Do {
            key,
            attempt: 0,
            payload: vec![],
        },
    )
    .unwrap();
    let out = s.take_output();
    assert!(out.writes.is_empty());
    assert!(!out
        .events
        .iter()
        .any(|e| matches!(e, ServiceEvent::DoRequested { .. })));
    assert_eq!(out.messages, vec![(0, Reply::Refused { key })]);
}

#[test]
fn retried_tries_and_confirms_are_idempotent() {
    let key = BranchKey { txn: T, step: 0 };
    let mut s = Service::new(1);
    let try_ = Request::Do {
        key,
        attempt: 0,
        payload: vec![],
    };
    s.step(0, try_.clone()).unwrap();
    s.take_output();
    s.decide(key, Ok(vec![1])).unwrap();
    let token = forced(&s.take_output().writes)[0].0;
    s.forced(token).unwrap();
    s.take_output();
    s.step(0, try_).unwrap();
    let out = s.take_output();
    assert!(out.writes.is_empty());
    assert_eq!(out.messages, vec![(0, Reply::Done { key })]);
    s.step(0, Request::Confirm { key }).unwrap();
    let token = forced(&s.take_output().writes)[0].0;
    s.forced(token).unwrap();
    s.take_output();
    s.step(0, Request::Confirm { key }).unwrap();
    let out = s.take_output();
    assert!(out.writes.is_empty());
    assert_eq!(out.messages, vec![(0, Reply::Confirmed { key })]);
    assert!(matches!(
        s.step(0, Request::Undo { key }),
        Err(StepError::Conflict { .. })
    ));
}
