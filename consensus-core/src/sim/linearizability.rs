//! A linearizability checker for key-value histories.
//!
//! The search is Wing & Gong's, with Lowe's improvements as Porcupine uses them: the call and return
//! events of all operations sit in one time-ordered list; the search linearizes an operation whose
//! call is pending, lifts it (and its return) out of the list, and backtracks when it meets the return
//! of an operation not yet linearized. A cache of (set of linearized operations, model state) prunes
//! states already explored. Every operation touches one key, so the history is checked per key.
//!
//! An operation that never returned may take effect at any point after its call, or never: its return
//! is placed after every other event, where linearizing it changes nothing anyone observed. A get that
//! never returned is dropped, since it has no effect at all.
//!
//! Session-consistent (`Sequential`) gets are held to their own, weaker rule in the same search: a
//! linearization of everything else must exist in which each of them reads the state at some point
//! no earlier than everything its client had observed before it and no later than its return. Its
//! client's last completed operation on the same key must be linearized before it (read-your-writes
//! and monotonic reads on that key), and its call is moved back to the call of its client's last
//! completed operation on any key — whose effect it must include, which took effect after that
//! call — so an operation that returned before then must precede it too. Other clients' concurrent
//! or earlier writes may be missing from what it reads.
//!
//! The search is bounded by a step budget; a history that exhausts it is reported as
//! [`Verdict::Unknown`], never silently accepted.

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasherDefault;

use super::history::{show_value, Key, KvInput, KvOutput, Operation, Value};

/// Default number of search steps allowed per key.
pub const DEFAULT_STEP_BUDGET: u64 = 2_000_000;

/// The outcome of checking a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// Some key's sub-history has none.
    NotLinearizable {
        /// The first key (in key order) whose sub-history failed.
        key: Key,
        /// A short human-readable reason.
        explanation: String,
    },
    /// The search ran out of budget on a key before deciding.
    Unknown {
        /// The key whose search was cut short.
        key: Key,
        /// Steps spent on that key.
        steps: u64,
    },
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// The sequential specification of one key: a register holding an optional value.
/// Returns the state after `input` if the operation may answer `output` in `state`.
fn step(state: Option<Value>, input: &KvInput, output: Option<&KvOutput>) -> Option<Option<Value>> {
    match (input, output) {
        (KvInput::Get { .. }, Some(KvOutput::Get(seen))) => (*seen == state).then_some(state),
        (KvInput::Get { .. }, None) => Some(state),
        (KvInput::Put { value, .. }, None | Some(KvOutput::Put)) => Some(Some(*value)),
        (KvInput::Delete { .. }, None | Some(KvOutput::Delete)) => Some(None),
        (KvInput::CompareAndSet { expected, new, .. }, None) => Some(if state == *expected {
            Some(*new)
        } else {
            state
        }),
        (KvInput::CompareAndSet { expected, new, .. }, Some(KvOutput::CompareAndSet(swapped))) => {
            match (state == *expected, *swapped) {
                (true, true) => Some(Some(*new)),
                (false, false) => Some(state),
                _ => None,
            }
        }
        // An output of the wrong kind for the input can never be explained.
        _ => None,
    }
}

/// Checks a whole history, key by key, with the default step budget.
pub fn check(history: &[Operation]) -> Verdict {
    check_with_budget(history, DEFAULT_STEP_BUDGET)
}

/// Checks a whole history, key by key, allowing `budget` search steps per key.
pub fn check_with_budget(history: &[Operation], budget: u64) -> Verdict {
    let mut per_key: BTreeMap<Key, Vec<KeyOp>> = BTreeMap::new();
    for op in session_bounded(history) {
        per_key.entry(op.op.input.key()).or_default().push(op);
    }
    let mut unknown = None;
    for (key, ops) in per_key {
        match check_key(&ops, budget) {
            KeyVerdict::Ok => {}
            KeyVerdict::Fail(explanation) => return Verdict::NotLinearizable { key, explanation },
            KeyVerdict::OutOfBudget(steps) => {
                unknown.get_or_insert(Verdict::Unknown { key, steps });
            }
        }
    }
    unknown.unwrap_or(Verdict::Linearizable)
}

/// One operation as the per-key search sees it.
#[derive(Clone, Copy)]
struct KeyOp {
    /// Its position in the whole history.
    at: usize,
    /// The operation; a sequential get's call is moved back to its session's lower bound.
    op: Operation,
    /// For a sequential get, the position in the whole history of its client's last completed
    /// operation on the same key, which must be linearized before it.
    after: Option<usize>,
}

/// Turns each sequential get into an operation the search can place: its call becomes the
/// earliest time its client's earlier observations allow — the latest (session-bounded) call among
/// its client's operations that returned before it (any key; 0 for a session's first) — and its
/// client's last such operation on the same key becomes its predecessor. An earlier sequential get
/// bounds it by its own moved call, since it may have read a state older than its call.
fn session_bounded(history: &[Operation]) -> Vec<KeyOp> {
    let mut by_client: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (at, op) in history.iter().enumerate() {
        by_client.entry(op.client).or_default().push(at);
    }
    let mut bounded: Vec<KeyOp> = history
        .iter()
        .enumerate()
        .map(|(at, op)| KeyOp {
            at,
            op: *op,
            after: None,
        })
        .collect();
    for mut session in by_client.into_values() {
        session.sort_by_key(|&i| history[i].call);
        for (n, &at) in session.iter().enumerate() {
            let op = &history[at];
            if !(op.is_sequential() && matches!(op.input, KvInput::Get { .. })) {
                continue;
            }
            let mut call = 0;
            let mut last_on_key: Option<usize> = None;
            for &i in &session[..n] {
                let earlier = &history[i];
                if earlier.completion.is_none_or(|(ret, _)| ret >= op.call) {
                    continue;
                }
                call = call.max(bounded[i].op.call);
                if earlier.input.key() == op.input.key()
                    && last_on_key.is_none_or(|l| history[l].call < earlier.call)
                {
                    last_on_key = Some(i);
                }
            }
            bounded[at].op.call = call;
            bounded[at].after = last_on_key;
        }
    }
    bounded
}

enum KeyVerdict {
    Ok,
    Fail(String),
    OutOfBudget(u64),
}

const NIL: usize = usize::MAX;

/// One call or return event in the search list.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call, the index of its return event.
    matching: usize,
}

/// A set of operation indexes, hashed together with a model state in the cache.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// A deterministic hasher: the cache is only queried for membership, but nothing in the simulator
/// may depend on a per-process random seed.
type FixedState = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

fn check_key(history: &[KeyOp], budget: u64) -> KeyVerdict {
    // Gets that never returned have no effect and cannot constrain anything.
    let kept: Vec<&KeyOp> = history
        .iter()
        .filter(|k| k.op.completion.is_some() || k.op.input.is_write())
        .collect();
    if kept.is_empty() {
        return KeyVerdict::Ok;
    }
    let ops: Vec<&Operation> = kept.iter().map(|k| &k.op).collect();
    // Each sequential get's predecessor as a position in `ops` (it completed, so it was kept).
    let local: BTreeMap<usize, usize> = kept.iter().enumerate().map(|(i, k)| (k.at, i)).collect();
    let must_follow: Vec<Option<usize>> = kept
        .iter()
        .map(|k| k.after.and_then(|at| local.get(&at).copied()))
        .collect();

    // (time, order, event): calls sort before returns at equal times (equal times overlap); unknown
    // returns go after everything.
    let mut timed: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        timed.push((op.call, 0, i));
        let ret = op.completion.map_or(u64::MAX, |(ret, _)| ret);
        timed.push((ret, 1, i));
    }
    timed.sort_unstable();
    let mut events: Vec<Event> = Vec::with_capacity(timed.len());
    let mut return_pos = vec![NIL; ops.len()];
    for (pos, &(_, kind, op)) in timed.iter().enumerate() {
        if kind == 1 {
            return_pos[op] = pos;
        }
        events.push(Event {
            op,
            is_call: kind == 0,
            matching: NIL,
        });
    }
    for e in events.iter_mut().filter(|e| e.is_call) {
        e.matching = return_pos[e.op];
    }

    // A doubly linked list over event positions, with a head sentinel at index `len`.
    let len = events.len();
    let head = len;
    let mut next: Vec<usize> = (1..=len).map(|i| if i == len { NIL } else { i }).collect();
    next.push(0);
    let mut prev: Vec<usize> = (0..len)
        .map(|i| if i == 0 { head } else { i - 1 })
        .collect();
    prev.push(NIL);

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, n) = (prev[i], next[i]);
        next[p] = n;
        if n != NIL {
            prev[n] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, n) = (prev[i], next[i]);
        next[p] = i;
        if n != NIL {
            prev[n] = i;
        }
    };

    let mut cache: HashSet<(Bits, Option<Value>), FixedState> = HashSet::default();
    let mut linearized = Bits::new(ops.len());
    let mut state: Option<Value> = None;
    let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
    // The deepest point the search reached, for the explanation.
    let mut deepest: (usize, Option<Value>, usize) = (0, None, NIL);
    let mut steps: u64 = 0;
    let mut entry = next[head];

    while next[head] != NIL {
        steps += 1;
        if steps > budget {
            return KeyVerdict::OutOfBudget(steps);
        }
        let event = events[entry];
        if event.is_call {
            let op = ops[event.op];
            let output = op.completion.as_ref().map(|(_, out)| out);
            let ordered = must_follow[event.op].is_none_or(|before| linearized.get(before));
            if let Some(new_state) = step(state, &op.input, output).filter(|_| ordered) {
                let mut candidate = linearized.clone();
                candidate.set(event.op);
                if cache.insert((candidate.clone(), new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    linearized = candidate;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, event.matching);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // The return of an operation not yet linearized: this branch is dead.
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), state, event.op);
            }
            let Some((call, old_state)) = stack.pop() else {
                return KeyVerdict::Fail(explain(&ops, deepest));
            };
            state = old_state;
            linearized.clear(events[call].op);
            relink(&mut next, &mut prev, events[call].matching);
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    KeyVerdict::Ok
}

fn explain(ops: &[&Operation], deepest: (usize, Option<Value>, usize)) -> String {
    let (depth, state, blocked) = deepest;
    let blocked = ops[blocked];
    let why = match (&blocked.input, blocked.completion) {
        (KvInput::Get { .. }, Some((_, KvOutput::Get(seen)))) => format!(
            "it read {} where the register held {}",
            show_value(seen),
            show_value(state)
        ),
        (KvInput::CompareAndSet { expected, .. }, Some((_, KvOutput::CompareAndSet(swapped)))) => {
            format!(
                "it {} expecting {} while the register held {}",
                if swapped { "swapped" } else { "did not swap" },
                show_value(*expected),
                show_value(state)
            )
        }
        _ => format!("the register held {}", show_value(state)),
    };
    format!(
        "no linearization of {} operations; the longest linearizable prefix has {}, after which \
         `{}` must take effect before it returns but cannot: {}",
        ops.len(),
        depth,
        blocked,
        why
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::history::{KvInput::*, KvOutput as Out, Operation as Op};

    fn get(c: u64, k: Key, call: u64, ret: u64, v: Option<Value>) -> Op {
        Op::completed(c, Get { key: k }, call, ret, Out::Get(v))
    }
    fn put(c: u64, k: Key, v: Value, call: u64, ret: u64) -> Op {
        Op::completed(c, Put { key: k, value: v }, call, ret, Out::Put)
    }
    fn cas(c: u64, k: Key, e: Option<Value>, n: Value, call: u64, ret: u64, ok: bool) -> Op {
        let input = CompareAndSet {
            key: k,
            expected: e,
            new: n,
        };
        Op::completed(c, input, call, ret, Out::CompareAndSet(ok))
    }
    fn del(c: u64, k: Key, call: u64, ret: u64) -> Op {
        Op::completed(c, Delete { key: k }, call, ret, Out::Delete)
    }

    fn seq_get(c: u64, k: Key, call: u64, ret: u64, v: Option<Value>) -> Op {
        get(c, k, call, ret, v).with_consistency(crate::sim::history::Consistency::Sequential)
    }

    #[test]
    fn a_sequential_read_may_miss_another_clients_finished_write() {
        let h = [
            put(1, 0, 1, 1, 2),
            put(2, 0, 2, 3, 4),
            seq_get(3, 0, 5, 6, Some(1)),
        ];
        assert!(check(&h).is_linearizable());
        // Held to the linearizable rule, the same read is stale.
        let strict = [h[0], h[1], get(3, 0, 5, 6, Some(1))];
        assert!(!check(&strict).is_linearizable());
    }

    #[test]
    fn a_sequential_read_must_see_its_own_sessions_write() {
        let h = [
            put(1, 0, 1, 1, 2),
            put(2, 0, 2, 3, 4),
            seq_get(2, 0, 5, 6, Some(1)),
        ];
        match check(&h) {
            Verdict::NotLinearizable { key, explanation } => {
                assert_eq!(key, 0);
                assert!(explanation.contains("(sequential)"), "{explanation}");
            }
            other => panic!("read-your-writes broken, yet {other:?}"),
        }
    }

    #[test]
    fn sequential_reads_of_one_session_never_go_back() {
        let base = [put(1, 0, 1, 1, 2), put(1, 0, 2, 3, 4)];
        let forward = [
            base[0],
            base[1],
            seq_get(2, 0, 5, 6, Some(1)),
            seq_get(2, 0, 7, 8, Some(2)),
        ];
        assert!(check(&forward).is_linearizable());
        let back = [
            base[0],
            base[1],
            seq_get(2, 0, 5, 6, Some(2)),
            seq_get(2, 0, 7, 8, Some(1)),
        ];
        assert!(!check(&back).is_linearizable());
        // Another session may still read the older value.
        let other = [
            base[0],
            base[1],
            seq_get(2, 0, 5, 6, Some(2)),
            seq_get(3, 0, 7, 8, Some(1)),
        ];
        assert!(check(&other).is_linearizable());
    }

    #[test]
    fn a_session_bound_crosses_keys() {
        // Client 2 wrote key 1 after client 1's write of key 0 had returned: a sequential read of
        // key 0 by client 2 must then see it.
        let h = [
            put(1, 0, 7, 1, 2),
            put(2, 1, 1, 3, 4),
            seq_get(2, 0, 5, 6, None),
        ];
        assert!(!check(&h).is_linearizable());
        // Had the writes overlapped, client 2's state may predate key 0's write.
        let h = [
            put(1, 0, 7, 1, 4),
            put(2, 1, 1, 2, 3),
            seq_get(2, 0, 5, 6, None),
        ];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn a_sequential_read_cannot_see_the_future() {
        // The value is written only after the read returned.
        let h = [seq_get(1, 0, 1, 2, Some(5)), put(2, 0, 5, 3, 4)];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn a_sessions_earlier_sequential_read_bounds_it_by_what_that_read_saw() {
        // Client 2's first read legitimately saw the state before client 1's write finished;
        // its second, after it, may see the same state (a member still behind).
        let h = [
            put(3, 0, 1, 1, 2),
            put(1, 0, 2, 3, 4),
            seq_get(2, 0, 5, 6, Some(1)),
            seq_get(2, 0, 7, 8, Some(1)),
        ];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn an_empty_history_is_linearizable() {
        assert_eq!(check(&[]), Verdict::Linearizable);
    }

    #[test]
    fn a_sequential_history_that_follows_the_register_is_linearizable() {
        let h = [
            get(1, 0, 1, 2, None),
            put(1, 0, 5, 3, 4),
            get(2, 0, 5, 6, Some(5)),
            cas(1, 0, Some(5), 6, 7, 8, true),
            cas(2, 0, Some(5), 7, 9, 10, false),
            del(1, 0, 11, 12),
            get(2, 0, 13, 14, None),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_rejected() {
        let h = [
            put(1, 7, 1, 1, 2),
            put(1, 7, 2, 3, 4),
            get(2, 7, 5, 6, Some(1)),
        ];
        match check(&h) {
            Verdict::NotLinearizable { key, explanation } => {
                assert_eq!(key, 7);
                assert!(explanation.contains("read 1"), "{explanation}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn a_lost_write_is_rejected() {
        // The put returned, yet a later read sees the key as never written.
        let h = [put(1, 3, 9, 1, 2), get(2, 3, 3, 4, None)];
        assert!(matches!(check(&h), Verdict::NotLinearizable { key: 3, .. }));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let old = [
            put(1, 0, 1, 1, 2),
            put(1, 0, 2, 3, 6),
            get(2, 0, 4, 5, Some(1)),
        ];
        let new = [
            put(1, 0, 1, 1, 2),
            put(1, 0, 2, 3, 6),
            get(2, 0, 4, 5, Some(2)),
        ];
        assert!(check(&old).is_linearizable());
        assert!(check(&new).is_linearizable());
    }

    #[test]
    fn two_readers_overlapping_a_write_cannot_see_new_then_old() {
        // Reader A sees the new value and returns before reader B starts; B then sees the old one.
        let h = [
            put(1, 0, 1, 1, 2),
            put(1, 0, 2, 3, 20),
            get(2, 0, 4, 5, Some(2)),
            get(3, 0, 6, 7, Some(1)),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable { key: 0, .. }));
    }

    #[test]
    fn two_successful_cas_from_the_same_expected_value_are_rejected() {
        let h = [
            put(1, 0, 1, 1, 2),
            cas(2, 0, Some(1), 2, 3, 10, true),
            cas(3, 0, Some(1), 3, 4, 11, true),
        ];
        match check(&h) {
            Verdict::NotLinearizable { explanation, .. } => {
                assert!(explanation.contains("swapped"), "{explanation}")
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_cas_needs_a_different_value_at_its_linearization_point() {
        // Nothing but the initial put happened: a cas expecting 1 cannot fail.
        let h = [put(1, 0, 1, 1, 2), cas(2, 0, Some(1), 2, 3, 4, false)];
        assert!(!check(&h).is_linearizable());
        // With a concurrent put of another value, it can.
        let h = [
            put(1, 0, 1, 1, 2),
            put(3, 0, 5, 3, 6),
            cas(2, 0, Some(1), 2, 4, 5, false),
        ];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn cas_on_an_absent_key_succeeds_only_while_absent() {
        let h = [cas(1, 0, None, 4, 1, 2, true), get(2, 0, 3, 4, Some(4))];
        assert!(check(&h).is_linearizable());
        let h = [del(1, 0, 1, 2), cas(1, 0, None, 4, 3, 4, false)];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let write = Op::unknown(1, Put { key: 0, value: 8 }, 1);
        // Never took effect.
        assert!(check(&[write, get(2, 0, 2, 3, None)]).is_linearizable());
        // Took effect long after its call.
        let h = [write, get(2, 0, 2, 3, None), get(2, 0, 4, 5, Some(8))];
        assert!(check(&h).is_linearizable());
        // But not before its call.
        let h = [
            get(2, 0, 1, 2, Some(8)),
            Op::unknown(1, Put { key: 0, value: 8 }, 3),
        ];
        assert!(!check(&h).is_linearizable());
        // And once seen, it cannot be unseen.
        let h = [write, get(2, 0, 2, 3, Some(8)), get(2, 0, 4, 5, None)];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn an_unknown_cas_applies_only_if_its_expectation_holds() {
        let h = [
            put(1, 0, 1, 1, 2),
            Op::unknown(
                2,
                CompareAndSet {
                    key: 0,
                    expected: Some(3),
                    new: 4,
                },
                3,
            ),
            get(3, 0, 4, 5, Some(4)),
        ];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn keys_are_checked_independently_and_the_failing_key_is_named() {
        let h = [
            put(1, 1, 1, 1, 2),
            put(1, 2, 1, 3, 4),
            get(2, 1, 5, 6, Some(1)),
            get(2, 2, 7, 8, Some(9)),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable { key: 2, .. }));
    }

    #[test]
    fn an_output_of_the_wrong_kind_is_rejected() {
        let h = [Op::completed(1, Get { key: 0 }, 1, 2, Out::Put)];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn a_tiny_budget_reports_unknown_rather_than_a_verdict() {
        let h: Vec<Op> = (0..10).map(|i| put(i, 0, i, 1, 100)).collect();
        let mut with_read = h.clone();
        with_read.push(get(99, 0, 101, 102, Some(3)));
        assert!(matches!(
            check_with_budget(&with_read, 5),
            Verdict::Unknown { key: 0, .. }
        ));
        assert!(check(&with_read).is_linearizable());
    }

    #[test]
    fn many_concurrent_writes_with_reads_are_decided_quickly() {
        // 14 overlapping puts then a read of one of them: the search is exponential in the
        // concurrency, which the cache keeps to (subsets x states) rather than orderings.
        let mut h: Vec<Op> = (0..14).map(|i| put(i, 0, i, 1 + i, 200 + i)).collect();
        h.push(get(100, 0, 300, 301, Some(7)));
        assert!(check(&h).is_linearizable());
        h.push(get(100, 0, 302, 303, Some(8)));
        assert!(!check(&h).is_linearizable());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// A random sequential execution on a register per key, stretched into overlapping
        /// intervals around each operation's linearization point; some ops lose their answer.
        fn linearizable_history() -> impl Strategy<Value = Vec<Op>> {
            history_and_final_state(true).prop_map(|(h, _)| h)
        }

        /// As [`linearizable_history`], also returning the final value of every key; with
        /// `allow_unknown` false every operation returned.
        fn history_and_final_state(
            allow_unknown: bool,
        ) -> impl Strategy<Value = (Vec<Op>, BTreeMap<Key, Value>)> {
            let op = (
                0u64..3,
                0u8..4,
                0u64..4,
                any::<bool>(),
                0u64..25,
                0u64..25,
                0u8..10,
            );
            proptest::collection::vec(op, 1..40).prop_map(move |raw| {
                let mut store: BTreeMap<Key, Value> = BTreeMap::new();
                let mut out = Vec::new();
                for (i, (key, kind, value, expect_current, before, after, lose)) in
                    raw.into_iter().enumerate()
                {
                    let point = 100 + 50 * i as u64;
                    let current = store.get(&key).copied();
                    let (input, output) = match kind {
                        0 => (Get { key }, Out::Get(current)),
                        1 => {
                            store.insert(key, value);
                            (Put { key, value }, Out::Put)
                        }
                        2 => {
                            let expected = if expect_current {
                                current
                            } else {
                                Some(value + 10)
                            };
                            let swapped = expected == current;
                            if swapped {
                                store.insert(key, value);
                            }
                            let input = CompareAndSet {
                                key,
                                expected,
                                new: value,
                            };
                            (input, Out::CompareAndSet(swapped))
                        }
                        _ => {
                            store.remove(&key);
                            (Delete { key }, Out::Delete)
                        }
                    };
                    let client = i as u64;
                    let call = point - before - 1;
                    out.push(if lose == 0 && allow_unknown {
                        Op::unknown(client, input, call)
                    } else {
                        Op::completed(client, input, call, point + after + 1, output)
                    });
                }
                (out, store)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn histories_of_a_sequential_execution_are_linearizable(h in linearizable_history()) {
                prop_assert_eq!(check(&h), Verdict::Linearizable);
            }

            #[test]
            fn reading_a_value_never_written_is_rejected(h in linearizable_history(), pick in any::<proptest::sample::Index>()) {
                let gets: Vec<usize> = h.iter().enumerate()
                    .filter(|(_, op)| matches!(op.completion, Some((_, Out::Get(_)))))
                    .map(|(i, _)| i).collect();
                prop_assume!(!gets.is_empty());
                let mut h = h;
                let i = gets[pick.index(gets.len())];
                if let Some((ret, _)) = h[i].completion {
                    h[i].completion = Some((ret, Out::Get(Some(1_000_000))));
                }
                let rejected = matches!(check(&h), Verdict::NotLinearizable { .. });
                prop_assert!(rejected);
            }

            #[test]
            fn a_stale_read_after_the_history_is_rejected((h, last) in history_and_final_state(false), key in 0u64..3) {
                // After everything: write a fresh value, then read back the value it replaced.
                let end = h.iter().map(|op| op.completion.map_or(op.call, |(r, _)| r)).max().unwrap_or(0);
                let mut h = h;
                h.push(put(500, key, 777, end + 10, end + 11));
                h.push(get(501, key, end + 12, end + 13, last.get(&key).copied()));
                let failed_key = match check(&h) {
                    Verdict::NotLinearizable { key, .. } => Some(key),
                    _ => None,
                };
                prop_assert_eq!(failed_key, Some(key));
            }

            #[test]
            fn a_lost_acknowledged_write_is_rejected((h, _) in history_and_final_state(false), key in 0u64..3) {
                let end = h.iter().map(|op| op.completion.map_or(op.call, |(r, _)| r)).max().unwrap_or(0);
                let mut h = h;
                h.push(put(500, key, 777, end + 10, end + 11));
                h.push(cas(501, key, Some(777), 778, end + 12, end + 13, false));
                prop_assert!(!check(&h).is_linearizable());
            }
        }
    }
}
