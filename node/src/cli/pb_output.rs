//! `cluster status` against a cluster running `replication = "primary-backup"`: beside the
//! per-node table, who is primary, in which epoch, the in-sync set and each backup's lag.

use serde::Serialize;

use crate::client::ClientError;
use crate::proto::{NodeStatus, Role};

/// The group as its primary (or, without one, the newest configuration seen) reports it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(super) struct PbSummary {
    /// The node serving as primary, if one answered as primary.
    pub primary: Option<u64>,
    /// Its epoch (the newest seen if no primary answered).
    pub epoch: u64,
    /// Whether the primary serves (holds every lease, reconciled).
    pub serving: bool,
    /// The in-sync set.
    pub in_sync: Vec<u64>,
    /// Per other replica: entries of the primary's log not durable there (as the primary knows).
    pub backup_lag: Vec<(u64, u64)>,
    /// Per replica that answered: entries the primary reported committed it has not applied.
    pub applied_lag: Vec<(u64, u64)>,
}

fn ids(text: &str) -> Vec<u64> {
    text.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The summary, or `None` when no member answered as a primary-backup replica.
pub(super) fn summary(statuses: &[(u64, Result<NodeStatus, ClientError>)]) -> Option<PbSummary> {
    let answered: Vec<&NodeStatus> = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .filter(|s| s.protocol == "primary-backup")
        .collect();
    let primary = answered
        .iter()
        .filter(|s| s.role == Role::Leader)
        .max_by_key(|s| s.term)
        .copied();
    let newest = primary.or_else(|| answered.iter().max_by_key(|s| s.term).copied())?;
    let backup_lag = primary
        .and_then(|p| p.detail("backup_lag"))
        .map(|text| {
            text.split(',')
                .filter_map(|pair| {
                    let (id, lag) = pair.split_once('=')?;
                    Some((id.parse().ok()?, lag.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let applied_lag = answered
        .iter()
        .filter(|s| s.role != Role::Leader)
        .filter_map(|s| Some((s.id, s.detail("lag")?.parse().ok()?)))
        .collect();
    Some(PbSummary {
        primary: primary.map(|p| p.id),
        epoch: newest.term,
        serving: primary.is_some_and(|p| p.detail("serving") == Some("true")),
        in_sync: newest.detail("in_sync").map(ids).unwrap_or_default(),
        backup_lag,
        applied_lag,
    })
}

/// The summary as text lines.
pub(super) fn lines(summary: &PbSummary) -> Vec<String> {
    let list = |pairs: &[(u64, u64)]| {
        if pairs.is_empty() {
            "-".to_string()
        } else {
            pairs
                .iter()
                .map(|(id, lag)| format!("node {id} {lag}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let in_sync = summary
        .in_sync
        .iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let head = match summary.primary {
        Some(p) => format!(
            "primary: node {p}, epoch {}, {}; in-sync set {{{in_sync}}}",
            summary.epoch,
            if summary.serving {
                "serving"
            } else {
                "not serving yet (leases or reconciliation)"
            }
        ),
        None => format!(
            "no primary among the members that answered (newest epoch seen {}, in-sync set {{{in_sync}}}): a failover may be under way",
            summary.epoch
        ),
    };
    vec![
        head,
        format!(
            "backup lag (entries not yet durable there, as the primary knows): {}",
            list(&summary.backup_lag)
        ),
        format!(
            "applied lag (committed entries not yet applied, as each backup knows): {}",
            list(&summary.applied_lag)
        ),
    ]
}
