//! Property test: random sequences of append / durable append / sync / truncate / compact /
//! metadata / clean reopen / crash, checked against a simple in-memory model of the log.

mod common;

use std::collections::BTreeMap;

use common::{open, small_options};
use proptest::prelude::*;
use storage_wal::{MemFs, Wal};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    AppendDurable(usize),
    Sync,
    /// Truncate from `next_index - back` (clamped to the first index).
    Truncate(u64),
    /// Compact below `first_index + ahead` (past the end resets the log).
    Compact(u64),
    SetMetadata(u8),
    Reopen,
    Crash(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..700, 1..6).prop_map(Op::Append),
        3 => (0usize..700).prop_map(Op::AppendDurable),
        2 => Just(Op::Sync),
        2 => (0u64..8).prop_map(Op::Truncate),
        2 => (0u64..14).prop_map(Op::Compact),
        1 => any::<u8>().prop_map(Op::SetMetadata),
        1 => Just(Op::Reopen),
        2 => any::<u64>().prop_map(Op::Crash),
    ]
}

/// What the log must hold: every record by index (compaction only moves `first`), the next
/// index, and how far records were acknowledged durable.
struct Model {
    records: BTreeMap<u64, Vec<u8>>,
    first: u64,
    next: u64,
    durable: u64,
    metadata: Option<Vec<u8>>,
}

fn payload(counter: &mut u64, len: usize) -> Vec<u8> {
    *counter += 1;
    let c = *counter;
    (0..len)
        .map(|k| (c as usize * 31 + k * 7) as u8 | 1)
        .collect()
}

fn check(wal: &Wal, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(wal.first_index(), model.first);
    prop_assert_eq!(wal.next_index(), model.next);
    prop_assert!(
        wal.durable_index() >= model.durable,
        "durable {} < {}",
        wal.durable_index(),
        model.durable
    );
    prop_assert_eq!(wal.metadata(), model.metadata.clone());
    if model.first < model.next {
        let got = wal.read_range(model.first..model.next, u64::MAX).unwrap();
        let want: Vec<Vec<u8>> = (model.first..model.next)
            .map(|i| model.records[&i].clone())
            .collect();
        prop_assert_eq!(got, want);
    }
    Ok(())
}

/// After a reopen the first index may be lower than the last compaction point (whole segments
/// only are deleted), never higher; the records below it must still be the original ones.
fn after_reopen(wal: &Wal, model: &mut Model) -> Result<(), TestCaseError> {
    prop_assert!(wal.first_index() <= model.first.max(wal.next_index()));
    model.first = wal.first_index();
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let options = small_options();
    let mut fs = MemFs::new();
    let mut wal = open(&fs, &options).unwrap();
    let mut model = Model {
        records: BTreeMap::new(),
        first: 1,
        next: 1,
        durable: 0,
        metadata: None,
    };
    let mut counter = 0u64;
    for op in ops {
        match op {
            Op::Append(lens) => {
                let batch: Vec<Vec<u8>> =
                    lens.into_iter().map(|l| payload(&mut counter, l)).collect();
                let range = wal.append_batch(&batch).unwrap();
                prop_assert_eq!(range.start, model.next);
                for p in batch {
                    model.records.insert(model.next, p);
                    model.next += 1;
                }
            }
            Op::AppendDurable(len) => {
                let p = payload(&mut counter, len);
                let index = wal.append_durable(&p).unwrap();
                prop_assert_eq!(index, model.next);
                model.records.insert(index, p);
                model.next += 1;
                model.durable = index;
            }
            Op::Sync => {
                prop_assert_eq!(wal.sync().unwrap(), model.next - 1);
                model.durable = model.next - 1;
            }
            Op::Truncate(back) => {
                let index = model.next.saturating_sub(back).max(model.first);
                wal.truncate_from(index).unwrap();
                if index < model.next {
                    model.records.retain(|&i, _| i < index);
                    model.next = index;
                    model.durable = model.durable.min(index - 1);
                }
            }
            Op::Compact(ahead) => {
                let index = model.first + ahead;
                wal.compact(index).unwrap();
                if index > model.next {
                    model.records.clear();
                    model.next = index;
                    model.durable = index - 1;
                }
                model.first = model.first.max(index);
            }
            Op::SetMetadata(b) => {
                wal.set_metadata(&[b; 3]).unwrap();
                model.metadata = Some(vec![b; 3]);
            }
            Op::Reopen => {
                drop(wal);
                wal = open(&fs, &options).unwrap();
                after_reopen(&wal, &mut model)?;
            }
            Op::Crash(seed) => {
                drop(wal);
                fs = fs.crash(seed);
                wal = open(&fs, &options).unwrap();
                let next = wal.next_index();
                prop_assert!(
                    next > model.durable,
                    "durable record lost: next {next}, durable {}",
                    model.durable
                );
                prop_assert!(next <= model.next, "records appeared from nowhere");
                model.records.retain(|&i, _| i < next);
                model.next = next;
                model.durable = next - 1;
                after_reopen(&wal, &mut model)?;
            }
        }
        check(&wal, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
