//! A bounded memory of finished transactions, so stale duplicates are recognised.

use std::collections::{BTreeMap, VecDeque};

use crate::types::TxnId;

/// The last `capacity` finished transactions and what each ended as; older ones are forgotten.
#[derive(Clone, Debug)]
pub(crate) struct FinishedLog<V> {
    order: VecDeque<TxnId>,
    values: BTreeMap<TxnId, V>,
    capacity: usize,
}

impl<V> FinishedLog<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        FinishedLog {
            order: VecDeque::new(),
            values: BTreeMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn insert(&mut self, txn: TxnId, value: V) {
        if self.values.insert(txn, value).is_none() {
            self.order.push_back(txn);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.values.remove(&old);
                }
            }
        }
    }

    pub(crate) fn get(&self, txn: TxnId) -> Option<&V> {
        self.values.get(&txn)
    }

    pub(crate) fn contains(&self, txn: TxnId) -> bool {
        self.values.contains_key(&txn)
    }
}
