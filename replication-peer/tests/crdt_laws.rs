//! Property tests: every merge in the crate is commutative, associative and idempotent on states
//! replicas can actually reach, and a write supersedes exactly the siblings its context saw.

use proptest::prelude::*;
use replication_peer::crdt::{LwwRegister, OrSet, PnCounter};
use replication_peer::{Dot, Dvv, Lattice, Timestamp, VersionVector};

/// One step of a 3-replica history: a local update on `replica`, or a merge into it.
#[derive(Clone, Debug)]
enum Step {
    Update {
        replica: usize,
        value: u8,
        blind: bool,
    },
    Merge {
        into: usize,
        from: usize,
    },
}

fn history() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            (0..3usize, any::<u8>(), any::<bool>()).prop_map(|(replica, value, blind)| {
                Step::Update {
                    replica,
                    value,
                    blind,
                }
            }),
            (0..3usize, 0..3usize).prop_map(|(into, from)| Step::Merge { into, from }),
        ],
        0..30,
    )
}

/// Replays a history on three replicas of any state type.
fn replay<S: Clone + Default>(
    steps: &[Step],
    mut update: impl FnMut(&mut S, u64, u64, u8, bool),
    merge: impl Fn(&mut S, &S),
) -> [S; 3] {
    let mut states: [S; 3] = Default::default();
    let mut counters = [0u64; 3];
    for s in steps {
        match *s {
            Step::Update {
                replica,
                value,
                blind,
            } => {
                counters[replica] += 1;
                update(
                    &mut states[replica],
                    replica as u64 + 1,
                    counters[replica],
                    value,
                    blind,
                );
            }
            Step::Merge { into, from } => {
                let other = states[from].clone();
                merge(&mut states[into], &other);
            }
        }
    }
    states
}

fn check_laws<S: Clone + PartialEq + std::fmt::Debug>(
    [a, b, c]: [S; 3],
    merge: impl Fn(&mut S, &S),
) -> Result<(), TestCaseError> {
    let join = |x: &S, y: &S| {
        let mut m = x.clone();
        merge(&mut m, y);
        m
    };
    prop_assert_eq!(join(&a, &b), join(&b, &a), "commutative");
    prop_assert_eq!(
        join(&join(&a, &b), &c),
        join(&a, &join(&b, &c)),
        "associative"
    );
    prop_assert_eq!(join(&a, &a), a.clone(), "idempotent");
    Ok(())
}

fn dvv_update(d: &mut Dvv<u8>, node: u64, counter: u64, value: u8, blind: bool) {
    let ctx = if blind {
        VersionVector::new()
    } else {
        d.context().clone()
    };
    d.write(&ctx, Dot { node, counter }, value);
}

proptest! {
    #[test]
    fn dvv_merge_is_a_join(steps in history()) {
        let states = replay(&steps, dvv_update, |a: &mut Dvv<u8>, b| a.merge(b));
        check_laws(states, |a, b| a.merge(b))?;
    }

    #[test]
    fn pn_counter_merge_is_a_join_and_counts_every_increment(steps in history()) {
        let upd = |s: &mut PnCounter, node, _c, v: u8, neg: bool| {
            s.increment(node, if neg { -i64::from(v) } else { i64::from(v) })
        };
        let states = replay(&steps, upd, |a: &mut PnCounter, b| a.merge(b));
        check_laws(states.clone(), |a, b| a.merge(b))?;
        let expected: i64 = steps.iter().map(|s| match s {
            Step::Update { value, blind, .. } => if *blind { -i64::from(*value) } else { i64::from(*value) },
            _ => 0,
        }).sum();
        let mut all = states[0].clone();
        all.merge(&states[1]);
        all.merge(&states[2]);
        prop_assert_eq!(all.value(), expected);
    }

    #[test]
    fn or_set_merge_is_a_join(steps in history()) {
        let upd = |s: &mut OrSet, node, counter, v: u8, remove: bool| {
            let e = vec![v % 4];
            if remove { s.remove(&e) } else { s.add(e, Dot { node, counter }) }
        };
        let states = replay(&steps, upd, |a: &mut OrSet, b| a.merge(b));
        check_laws(states, |a, b| a.merge(b))?;
    }

    #[test]
    fn lww_register_merge_is_a_join(steps in history()) {
        let upd = |s: &mut LwwRegister, node, counter, v: u8, _| {
            s.assign(vec![v], Timestamp { wall: u64::from(v % 8), logical: counter as u32, node })
        };
        let states = replay(&steps, upd, |a: &mut LwwRegister, b| a.merge(b));
        check_laws(states, |a, b| a.merge(b))?;
    }

    #[test]
    fn a_write_supersedes_exactly_what_its_read_saw(steps in history(), later in history()) {
        let [mut a, _, _] = replay(&steps, dvv_update, |a: &mut Dvv<u8>, b| a.merge(b));
        let read = a.clone();
        // Concurrent activity reaches the replica after the read.
        let [x, y, z] = replay(&later, |d: &mut Dvv<u8>, node, counter, v, blind| {
            dvv_update(d, node + 10, counter, v, blind)
        }, |a: &mut Dvv<u8>, b| a.merge(b));
        for s in [&x, &y, &z] {
            a.merge(s);
        }
        let before = a.clone();
        let dot = Dot { node: 99, counter: 1 };
        a.write(read.context(), dot, 0);
        for (d, _) in read.siblings() {
            prop_assert!(!a.siblings().iter().any(|(s, _)| s == d), "saw {:?} yet it survived", d);
        }
        for (d, _) in before.siblings() {
            if !read.context().covers(*d) {
                prop_assert!(a.siblings().iter().any(|(s, _)| s == d), "never saw {:?} yet it went", d);
            }
        }
        prop_assert!(a.siblings().iter().any(|(s, _)| *s == dot));
    }
}
