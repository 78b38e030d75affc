//! The engine's rules, one replica at a time through the replica loop.

use consensus_core::{Consensus, Entry, EntryPayload, Error, MemHost, MemStorage, Replica};
use replication_primary::{
    Ack, Body, Change, Config, ConfigManager, Configuration, Message, PrimaryBackup, MANAGER,
};

type Engine = PrimaryBackup<MemStorage<replication_primary::HardState>>;

fn replica(id: u64, ack: Ack) -> (Replica<Engine>, MemHost<Message>) {
    let cfg = Config::new(id, [1, 2, 3], ack);
    (
        Replica::new(PrimaryBackup::new(cfg, MemStorage::default()).unwrap()),
        MemHost::new(),
    )
}

fn config(version: u64, epoch: u64, primary: u64, members: &[u64]) -> Configuration {
    Configuration {
        version,
        epoch,
        primary: Some(primary),
        members: members.iter().copied().collect(),
    }
}

fn installed(to: u64, c: Configuration) -> Message {
    Message {
        from: MANAGER,
        to,
        epoch: c.epoch,
        body: Body::Installed(c),
    }
}

fn prepare(from: u64, to: u64, c: &Configuration, sent_at: u64, entries: Vec<Entry>) -> Message {
    let last = entries.last().map_or(0, |e| e.index);
    Message {
        from,
        to,
        epoch: c.epoch,
        body: Body::Prepare {
            config: c.clone(),
            sent_at,
            prev_index: 0,
            prev_term: 0,
            entries,
            commit: 0,
            last,
        },
    }
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Data(format!("e{term}.{index}").into_bytes().into()),
    }
}

#[test]
fn a_backup_refuses_a_lower_epoch_and_answers_with_its_configuration() {
    let (mut r, mut host) = replica(2, Ack::All);
    let newer = config(5, 5, 3, &[2, 3]);
    r.engine_mut().step(installed(2, newer.clone())).unwrap();
    r.drive(&mut host).unwrap();
    host.messages.clear();
    let old = config(1, 1, 1, &[1, 2, 3]);
    r.engine_mut()
        .step(prepare(1, 2, &old, 7, vec![entry(1, 1)]))
        .unwrap();
    r.drive(&mut host).unwrap();
    assert_eq!(
        r.engine().storage().entry(1),
        None,
        "nothing of epoch 1 stored"
    );
    assert_eq!(host.messages.len(), 1);
    assert!(
        matches!(&host.messages[0].body, Body::Fenced { config } if *config == newer),
        "{:?}",
        host.messages
    );
}

#[test]
fn a_backup_acknowledges_a_prepare_only_once_it_is_durable() {
    let (mut r, _host) = replica(2, Ack::All);
    let c = config(2, 2, 1, &[1, 2, 3]);
    r.engine_mut()
        .step(prepare(1, 2, &c, 3, vec![entry(2, 1), entry(2, 2)]))
        .unwrap();
    // Take the write without confirming it: no acknowledgement yet.
    let ready = r.engine_mut().ready().unwrap();
    assert!(ready.messages.is_empty(), "{:?}", ready.messages);
    let persist = ready.persist.expect("a write");
    r.engine_mut().storage_mut().write(&persist.write).unwrap();
    r.engine_mut().persisted(persist.token).unwrap();
    let ready = r.engine_mut().ready().unwrap();
    assert!(
        matches!(
            ready.messages.as_slice(),
            [Message {
                to: 1,
                body: Body::PrepareAck {
                    sent_at: 3,
                    durable: 2
                },
                ..
            }]
        ),
        "{:?}",
        ready.messages
    );
}

#[test]
fn a_backup_asks_to_take_over_only_after_its_grace_period() {
    let (mut r, mut host) = replica(2, Ack::All);
    let grace = r.engine().config().grace_ticks;
    for _ in 0..grace - 1 {
        r.engine_mut().tick();
        r.drive(&mut host).unwrap();
    }
    assert!(
        !host.messages.iter().any(|m| m.to == MANAGER),
        "{:?}",
        host.messages
    );
    r.engine_mut().tick();
    r.drive(&mut host).unwrap();
    let request = host
        .messages
        .iter()
        .find(|m| m.to == MANAGER)
        .expect("a request");
    assert!(matches!(
        request.body,
        Body::Request(replication_primary::ChangeRequest {
            based_on: 1,
            change: Change::BecomePrimary(2)
        })
    ));
}

/// Replica 1 of {1, 2, 3} made primary of epoch 2 by the manager.
fn primary() -> (Replica<Engine>, MemHost<Message>, ConfigManager) {
    let (mut r, mut host) = replica(1, Ack::All);
    let mut manager = ConfigManager::new(r.engine().configuration().clone(), [1, 2, 3]);
    r.drive(&mut host).unwrap();
    let request = host
        .messages
        .iter()
        .find(|m| m.to == MANAGER)
        .cloned()
        .unwrap();
    let Body::Request(change) = request.body else {
        panic!()
    };
    let c = manager.handle(1, change).unwrap().clone();
    host.messages.clear();
    r.engine_mut().step(installed(1, c)).unwrap();
    r.drive(&mut host).unwrap();
    (r, host, manager)
}

fn ack_all(r: &mut Replica<Engine>, host: &mut MemHost<Message>) {
    let prepares: Vec<Message> = host
        .messages
        .drain(..)
        .filter(|m| matches!(m.body, Body::Prepare { .. }))
        .collect();
    for m in prepares {
        let Body::Prepare {
            sent_at,
            prev_index,
            entries,
            ..
        } = m.body
        else {
            continue;
        };
        let durable = prev_index + entries.len() as u64;
        let ack = Message {
            from: m.to,
            to: 1,
            epoch: m.epoch,
            body: Body::PrepareAck { sent_at, durable },
        };
        r.engine_mut().step(ack).unwrap();
    }
    r.drive(host).unwrap();
}

#[test]
fn the_primary_serves_reads_only_under_leases_from_every_member() {
    let (mut r, mut host, _) = primary();
    assert!(matches!(
        r.engine_mut().read_index(1),
        Err(Error::NotLeader { .. })
    ));
    ack_all(&mut r, &mut host);
    assert!(r.engine().is_serving());
    r.engine_mut().read_index(2).unwrap();
    r.drive(&mut host).unwrap();
    assert_eq!(host.reads.len(), 1);
    // Backup 3 goes silent; backup 2 keeps answering. Once 3's lease runs out the primary stops
    // serving and asks the manager to remove it.
    let lease = r.engine().config().lease_ticks;
    let mut asked = None;
    for _ in 0..lease + 2 {
        r.engine_mut().tick();
        r.drive(&mut host).unwrap();
        if let Some(m) = host.messages.iter().find(|m| m.to == MANAGER) {
            asked = Some(m.clone());
        }
        host.messages.retain(|m| m.to != 3);
        ack_all(&mut r, &mut host);
    }
    assert!(!r.engine().is_serving());
    assert!(r.engine_mut().propose(b"w".to_vec().into()).is_err());
    let asked = asked.expect("a removal request");
    assert!(matches!(
        asked.body,
        Body::Request(replication_primary::ChangeRequest {
            change: Change::Remove(3),
            ..
        })
    ));
}

#[test]
fn an_all_mode_write_commits_only_once_every_member_has_it() {
    let (mut r, mut host, _) = primary();
    ack_all(&mut r, &mut host);
    let start = host.applied.len();
    r.engine_mut().propose(b"w".to_vec().into()).unwrap();
    r.drive(&mut host).unwrap();
    // Only backup 2 answers the write.
    let prepares: Vec<Message> = host.messages.drain(..).collect();
    for m in prepares {
        let Body::Prepare {
            sent_at,
            prev_index,
            entries,
            ..
        } = m.body
        else {
            continue;
        };
        if m.to == 2 {
            let durable = prev_index + entries.len() as u64;
            r.engine_mut()
                .step(Message {
                    from: 2,
                    to: 1,
                    epoch: m.epoch,
                    body: Body::PrepareAck { sent_at, durable },
                })
                .unwrap();
        }
    }
    r.drive(&mut host).unwrap();
    assert_eq!(
        host.applied.len(),
        start,
        "not committed with backup 3 missing"
    );
    // The next beacon resends it to 3, whose answer commits it.
    for _ in 0..r.engine().config().beacon_ticks {
        r.engine_mut().tick();
        r.drive(&mut host).unwrap();
    }
    ack_all(&mut r, &mut host);
    assert_eq!(host.applied.len(), start + 1);
}

#[test]
fn grace_shorter_than_the_lease_is_refused() {
    let mut cfg = Config::new(1, [1, 2, 3], Ack::All);
    cfg.grace_ticks = cfg.lease_ticks - 1;
    assert!(matches!(
        PrimaryBackup::new(cfg, MemStorage::default()),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn a_new_primary_sends_nothing_of_its_epoch_before_the_epoch_is_durable() {
    // A crash before the epoch is durable must leave no prepare of it anywhere: the restarted
    // replica may learn the same epoch again from the manager and take office in it once more.
    let (mut r, mut host) = replica(1, Ack::All);
    r.drive(&mut host).unwrap();
    host.messages.clear();
    r.engine_mut()
        .step(installed(1, config(2, 2, 1, &[1, 2, 3])))
        .unwrap();
    let ready = r.engine_mut().ready().unwrap();
    let prepares = |ms: &[Message]| {
        ms.iter()
            .filter(|m| matches!(m.body, Body::Prepare { .. }))
            .count()
    };
    assert_eq!(prepares(&ready.messages), 0, "{:?}", ready.messages);
    assert!(!r.engine().is_serving());
    let persist = ready.persist.expect("the epoch's hard state is written");
    assert_eq!(
        persist.write.hard_state.as_ref().map(|h| h.synced_epoch),
        Some(2)
    );
    // Nor on later ticks while the write is outstanding.
    for _ in 0..3 {
        r.engine_mut().tick();
    }
    let ready = r.engine_mut().ready().unwrap();
    assert_eq!(prepares(&ready.messages), 0, "{:?}", ready.messages);
    r.engine_mut().storage_mut().write(&persist.write).unwrap();
    r.engine_mut().persisted(persist.token).unwrap();
    let ready = r.engine_mut().ready().unwrap();
    assert_eq!(prepares(&ready.messages), 2, "{:?}", ready.messages);
}
