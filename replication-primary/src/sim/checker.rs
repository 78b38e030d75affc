//! The primary-backup invariants, fed by the run loop.

use std::collections::BTreeMap;

use consensus_core::{Entry, NodeId};

use crate::config::Ack;

/// A violated property and what was seen.
pub(super) type Violation = (&'static str, String);

/// A write acknowledged to a client.
#[derive(Clone, Debug)]
struct Acked {
    entry: Entry,
    lost: bool,
}

#[derive(Debug)]
pub(super) struct Checker {
    ack: Ack,
    window: u64,
    /// All and quorum: the entry first applied at each position.
    chosen: BTreeMap<u64, Entry>,
    acked: Vec<Acked>,
    /// The replica serving, and its epoch.
    serving: Option<(NodeId, u64)>,
    pub(super) failovers: u64,
    pub(super) lost_per_failover: Vec<u64>,
}

impl Checker {
    pub(super) fn new(ack: Ack, window: u64) -> Self {
        Checker {
            ack,
            window,
            chosen: BTreeMap::new(),
            acked: Vec::new(),
            serving: None,
            failovers: 0,
            lost_per_failover: Vec::new(),
        }
    }

    pub(super) fn acked_count(&self) -> u64 {
        self.acked.len() as u64
    }

    /// `node` applied `entry` (it is committed there).
    pub(super) fn applied(&mut self, node: NodeId, entry: &Entry) -> Result<(), Violation> {
        if self.ack == Ack::Async {
            return Ok(());
        }
        match self.chosen.get(&entry.index) {
            Some(e) if e != entry => Err((
                "committed prefix",
                format!(
                    "node {node} applied {:?} at {}; another replica applied {:?}",
                    entry.payload, entry.index, e.payload
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.chosen.insert(entry.index, entry.clone());
                Ok(())
            }
        }
    }

    /// The primary committed `entry`: `holders` replicas of `group` hold it durably, of which
    /// `members_missing` are members of its in-sync set.
    pub(super) fn committed(
        &self,
        primary: NodeId,
        entry: &Entry,
        holders: usize,
        group: usize,
        members_missing: &[NodeId],
    ) -> Result<(), Violation> {
        match self.ack {
            Ack::All if !members_missing.is_empty() => Err((
                "all: committed only when every member holds it",
                format!(
                    "primary {primary} committed {} while members {members_missing:?} do not hold it durably",
                    entry.index
                ),
            )),
            Ack::Quorum if holders * 2 <= group => Err((
                "quorum: committed only on a majority",
                format!(
                    "primary {primary} committed {} held durably by {holders} of {group}",
                    entry.index
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A read at `node`, ordered at `index` (its commit point): in `all` and `quorum` modes it
    /// must see every write acknowledged before it, by any primary.
    pub(super) fn read(&mut self, node: NodeId, index: u64) -> Result<(), Violation> {
        if self.ack == Ack::Async {
            return Ok(());
        }
        match self.acked.iter().map(|a| a.entry.index).max() {
            Some(newest) if newest > index => Err((
                "reads at the primary are linearizable",
                format!(
                    "node {node} served a read at {index}; write {newest} was acknowledged before"
                ),
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn acknowledged(&mut self, entry: Entry) {
        self.acked.push(Acked { entry, lost: false });
    }

    /// The replicas serving this tick, with `log(node, index)` their entries. Returns the writes
    /// lost if a new primary just started serving.
    pub(super) fn serving(
        &mut self,
        serving: &[(NodeId, u64)],
        log: impl Fn(NodeId, u64) -> Option<Entry>,
    ) -> Result<Option<u64>, Violation> {
        if serving.len() > 1 {
            return Err((
                "one primary serves at a time",
                format!("serving at once (node, epoch): {serving:?}"),
            ));
        }
        let Some(&(node, epoch)) = serving.first() else {
            return Ok(None);
        };
        if self.serving == Some((node, epoch)) {
            return Ok(None);
        }
        let first = self.serving.is_none();
        self.serving = Some((node, epoch));
        if first {
            return Ok(None);
        }
        self.failovers += 1;
        let lost = self.missing_from(node, &log, true);
        match self.ack {
            Ack::Async => {
                self.lost_per_failover.push(lost);
                if lost > self.window {
                    return Err((
                        "async: a failover loses at most async_window writes",
                        format!(
                            "node {node} (epoch {epoch}) serves without {lost} acknowledged writes"
                        ),
                    ));
                }
            }
            Ack::All | Ack::Quorum if lost > 0 => {
                return Err((
                    "no acknowledged write lost across a failover",
                    format!(
                        "node {node} serves epoch {epoch} without {lost} acknowledged writes: {:?}",
                        self.acked
                            .iter()
                            .filter(
                                |a| a.lost && log(node, a.entry.index).as_ref() != Some(&a.entry)
                            )
                            .map(|a| a.entry.index)
                            .take(8)
                            .collect::<Vec<_>>()
                    ),
                ));
            }
            _ => self.lost_per_failover.push(0),
        }
        Ok(Some(lost))
    }

    /// Acknowledged writes (not yet counted) missing from `node`'s log; marks them lost.
    fn missing_from(
        &mut self,
        node: NodeId,
        log: &impl Fn(NodeId, u64) -> Option<Entry>,
        mark: bool,
    ) -> u64 {
        let mut lost = 0;
        for a in self.acked.iter_mut().filter(|a| !a.lost) {
            if log(node, a.entry.index).as_ref() != Some(&a.entry) {
                lost += 1;
                if mark {
                    a.lost = true;
                }
            }
        }
        lost
    }

    /// At the end: the final primary holds every acknowledged write not counted lost.
    pub(super) fn final_primary(
        &mut self,
        node: NodeId,
        log: impl Fn(NodeId, u64) -> Option<Entry>,
    ) -> Result<(), Violation> {
        let missing = self.missing_from(node, &log, false);
        if missing > 0 {
            return Err((
                "no acknowledged write lost",
                format!("the final primary {node} lacks {missing} acknowledged writes"),
            ));
        }
        Ok(())
    }
}
