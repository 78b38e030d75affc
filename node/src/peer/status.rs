//! What a peer node tells `quorate cluster status`: its own [`PeerNodeStatus`] (hints pending and
//! anti-entropy age per peer), and a [`NodeStatus`] so tools written for consensus clusters
//! still see the node (protocol `"peer"`, no leader, the peer figures as detail pairs).

use replication_peer::{Peer, PeerStatus};

use crate::config::ServeConfig;
use crate::proto::{Member, NodeStatus, PeerNodeStatus, Role};

/// The peer view.
pub(super) fn peer_status(
    config: &ServeConfig,
    peer: &Peer,
    now_ms: u64,
    wal_records: u64,
) -> PeerNodeStatus {
    let s: PeerStatus = peer.status();
    PeerNodeStatus {
        id: s.id,
        n: peer.config().replication as u32,
        r: config.peer.r as u32,
        w: config.peer.w as u32,
        keys: s.keys as u64,
        tombstones: s.tombstones as u64,
        pending_requests: s.pending_requests as u64,
        hints_pending: s
            .hints_pending
            .iter()
            .map(|(&id, &n)| (id, n as u64))
            .collect(),
        hints_dropped: s.hints_dropped,
        anti_entropy_age_ms: s
            .last_anti_entropy
            .iter()
            .map(|(&id, &at)| (id, now_ms.saturating_sub(at)))
            .collect(),
        tombstones_collected: s.tombstones_collected,
        refused_messages: s.refused_messages,
        wal_records,
    }
}

/// The consensus-shaped view of the same node.
pub(super) fn node_status(config: &ServeConfig, status: &PeerNodeStatus) -> NodeStatus {
    let mut detail = vec![
        ("n".to_string(), status.n.to_string()),
        ("r".to_string(), status.r.to_string()),
        ("w".to_string(), status.w.to_string()),
        ("tombstones".to_string(), status.tombstones.to_string()),
        (
            "hints_dropped".to_string(),
            status.hints_dropped.to_string(),
        ),
    ];
    for (peer, hints) in &status.hints_pending {
        detail.push((format!("hints_pending.{peer}"), hints.to_string()));
    }
    for (peer, age) in &status.anti_entropy_age_ms {
        detail.push((format!("anti_entropy_age_ms.{peer}"), age.to_string()));
    }
    NodeStatus {
        id: config.node_id,
        cluster: config.cluster.clone(),
        role: Role::Follower,
        protocol: "peer".to_string(),
        term: 0,
        detail,
        leader: None,
        commit_index: 0,
        applied_index: 0,
        last_index: status.wal_records,
        persisted_index: 0,
        snapshot_index: 0,
        revision: 0,
        keys: status.keys,
        members: members(config),
    }
}

/// Every configured member; none leads.
pub(super) fn members(config: &ServeConfig) -> Vec<Member> {
    config
        .members
        .iter()
        .map(|m| Member {
            id: m.id,
            addr: Some(m.addr),
            voter: true,
            leader: false,
        })
        .collect()
}
