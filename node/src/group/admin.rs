//! The admin layer: membership changes, leader transfer and status, through the protocol's
//! capabilities (`change_membership`, `transfer_leader`, `status`) — a protocol without one
//! answers a clear "not supported".

use std::net::SocketAddr;

use consensus_core::{ConfChange, Entry, EntryPayload, MemberChange, Role, Storage};
use tokio::time::Instant;
use tracing::info;

use crate::kv::{Batch, Command};
use crate::proto::{self, AdminRequest, Member, NodeStatus, Reply, Responder, ServerError};

use super::kv_service::reply;
use super::{Driver, Engine};

/// A membership change waiting to be applied.
struct ConfWait {
    index: u64,
    change: MemberChange,
    responder: Responder,
}

/// Admin requests waiting on the log or on an election.
#[derive(Default)]
pub(crate) struct AdminWaits {
    conf: Vec<ConfWait>,
    /// A leader transfer: target, deadline, who waits.
    transfer: Option<(u64, Instant, Responder)>,
}

impl AdminWaits {
    /// Whether no admin request waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.conf.is_empty() && self.transfer.is_none()
    }

    /// An entry was applied: a membership change waiting at its index is done if the entry
    /// carries that change, and was lost (another leader's entry won the slot) otherwise.
    pub(crate) fn applied(&mut self, entry: &Entry) {
        let mut i = 0;
        while i < self.conf.len() {
            if self.conf[i].index != entry.index {
                i += 1;
                continue;
            }
            let wait = self.conf.swap_remove(i);
            let ours = match &entry.payload {
                EntryPayload::ConfChange(ConfChange::Single(change)) => *change == wait.change,
                EntryPayload::ConfChange(ConfChange::EnterJoint(changes)) => {
                    changes.contains(&wait.change)
                }
                _ => false,
            };
            let result = if ours {
                Ok(Reply::Done)
            } else {
                Err(ServerError::LeaderChanged)
            };
            reply(wait.responder, result);
        }
    }

    /// Changes at or below an installed snapshot can no longer be matched with their entry.
    pub(crate) fn snapshot_installed(&mut self, index: u64) {
        let (lost, kept) = std::mem::take(&mut self.conf)
            .into_iter()
            .partition(|wait| wait.index <= index);
        self.conf = kept;
        for wait in lost {
            reply(wait.responder, Err(ServerError::LeaderChanged));
        }
    }

    pub(crate) fn leadership_lost(&mut self) {
        for wait in self.conf.drain(..) {
            reply(wait.responder, Err(ServerError::LeaderChanged));
        }
    }

    pub(crate) fn leader_changed(&mut self, leader: Option<u64>) {
        if let Some((to, _, _)) = &self.transfer {
            if leader == Some(*to) {
                if let Some((_, _, responder)) = self.transfer.take() {
                    reply(responder, Ok(Reply::Done));
                }
            }
        }
    }

    pub(crate) fn expire(&mut self, now: Instant) {
        if self
            .transfer
            .as_ref()
            .is_some_and(|(_, deadline, _)| *deadline <= now)
        {
            if let Some((_, _, responder)) = self.transfer.take() {
                reply(responder, Err(ServerError::Timeout));
            }
        }
    }

    pub(crate) fn fail_all(&mut self, error: ServerError) {
        for wait in self.conf.drain(..) {
            reply(wait.responder, Err(error.clone()));
        }
        if let Some((_, _, responder)) = self.transfer.take() {
            reply(responder, Err(error));
        }
    }
}

/// What a client is told when the engine refuses a request.
pub(crate) fn engine_error(
    error: consensus_core::Error,
    not_leader: impl Fn() -> ServerError,
) -> ServerError {
    use consensus_core::Error as E;
    match error {
        E::NotLeader { .. } => not_leader(),
        E::NoLeader => ServerError::NoLeader,
        E::ConfChangePending { pending_index } => ServerError::InvalidMembership(format!(
            "a membership change is already pending at index {pending_index}; retry once it is applied"
        )),
        E::InvalidConfChange { reason } => ServerError::InvalidMembership(reason.into()),
        E::UnknownNode(id) => ServerError::UnknownNode(id),
        E::TransferInProgress { to } => {
            ServerError::Busy(format!("leadership transfer to {to} in progress"))
        }
        E::UncommittedLimit { .. } => {
            ServerError::Busy("too much uncommitted data on the leader".into())
        }
        E::ProposalTooLarge { size, limit } => ServerError::RequestTooLarge { size, limit },
        E::Unsupported {
            protocol,
            capability,
        } => ServerError::Unsupported(format!("{protocol} does not support {capability}")),
        other => ServerError::Internal(other.to_string()),
    }
}

impl<C: Engine> Driver<C> {
    pub(super) fn handle_admin(&mut self, admin: AdminRequest, responder: Responder) {
        let result = match admin {
            AdminRequest::Status => Ok(Reply::Status(self.status())),
            AdminRequest::Shards => {
                let current = self.host.kv.store().shard_map();
                Ok(Reply::Shards(
                    self.host.shard.map(current, self.group_state()),
                ))
            }
            AdminRequest::Members => Ok(Reply::Members {
                members: self.members(),
                leader: self.host.soft.leader,
            }),
            AdminRequest::AddMember { id, addr, learner } => {
                let change = if learner {
                    MemberChange::AddLearner(id)
                } else {
                    MemberChange::AddVoter(id)
                };
                match self.add_member(id, addr, learner, change) {
                    Ok(index) => return self.wait_applied(index, change, responder),
                    Err(error) => Err(error),
                }
            }
            AdminRequest::RemoveMember { id } => match self.remove_member(id) {
                Ok(index) => return self.wait_applied(index, MemberChange::Remove(id), responder),
                Err(error) => Err(error),
            },
            AdminRequest::TransferLeader { to } => match self.transfer_leader(to) {
                Ok(true) => {
                    let deadline = Instant::now() + self.config.request_timeout();
                    if let Some((_, _, old)) =
                        self.host.admin.transfer.replace((to, deadline, responder))
                    {
                        reply(old, Err(ServerError::LeaderChanged));
                    }
                    return;
                }
                Ok(false) => Ok(Reply::Done),
                Err(error) => Err(error),
            },
        };
        reply(responder, result);
    }

    fn wait_applied(&mut self, index: u64, change: MemberChange, responder: Responder) {
        self.host.admin.conf.push(ConfWait {
            index,
            change,
            responder,
        });
    }

    fn engine_error(&self, error: consensus_core::Error) -> ServerError {
        engine_error(error, || self.host.not_leader())
    }

    fn require_leader(&self) -> Result<(), ServerError> {
        if self.host.soft.role == Role::Leader {
            Ok(())
        } else {
            Err(self.host.not_leader())
        }
    }

    /// Starts a transfer; `Ok(false)` when `to` already leads (this member).
    fn transfer_leader(&mut self, to: u64) -> Result<bool, ServerError> {
        self.require_leader()?;
        if to == self.id {
            return Ok(false);
        }
        if !self.replica.engine().status().conf_state.is_voter(to) {
            return Err(ServerError::UnknownNode(to));
        }
        self.replica
            .engine_mut()
            .transfer_leader(to)
            .map_err(|error| self.engine_error(error))?;
        Ok(true)
    }

    /// Proposes the new member's address, then the change; returns the change's log index.
    fn add_member(
        &mut self,
        id: u64,
        addr: SocketAddr,
        learner: bool,
        change: MemberChange,
    ) -> Result<u64, ServerError> {
        self.require_leader()?;
        if id == 0 {
            return Err(ServerError::InvalidMembership(
                "node id 0 is reserved".into(),
            ));
        }
        let conf = self.replica.engine().status().conf_state;
        if conf.is_voter(id) || (learner && conf.contains(id)) {
            return Err(ServerError::InvalidMembership(format!(
                "node {id} is already a member"
            )));
        }
        // The address goes through the log first, so every member (and any later snapshot)
        // knows where the new member listens by the time the change applies.
        self.host.learn_addr(id, addr);
        let batch = Batch {
            commands: vec![Command::SetMemberAddr { id, addr }],
        };
        let data = batch
            .encode()
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        self.replica
            .engine_mut()
            .propose(data)
            .map_err(|error| self.engine_error(error))?;
        let proposed = self
            .replica
            .engine_mut()
            .change_membership(change)
            .map_err(|error| self.engine_error(error))?;
        info!(node = self.id, member = id, %addr, learner, index = proposed.index, "adding member");
        Ok(proposed.index)
    }

    fn remove_member(&mut self, id: u64) -> Result<u64, ServerError> {
        self.require_leader()?;
        if !self.replica.engine().status().conf_state.contains(id) {
            return Err(ServerError::UnknownNode(id));
        }
        let proposed = self
            .replica
            .engine_mut()
            .change_membership(MemberChange::Remove(id))
            .map_err(|error| self.engine_error(error))?;
        info!(
            node = self.id,
            member = id,
            index = proposed.index,
            "removing member"
        );
        Ok(proposed.index)
    }

    fn members(&self) -> Vec<Member> {
        let conf = self.replica.engine().status().conf_state;
        conf.members()
            .into_iter()
            .map(|id| Member {
                id,
                addr: self.host.addrs.get(&id).copied(),
                voter: conf.is_voter(id),
                leader: self.host.soft.leader == Some(id),
            })
            .collect()
    }

    fn status(&self) -> NodeStatus {
        let engine = self.replica.engine();
        let status = engine.status();
        let role = match status.role {
            Role::Leader => proto::Role::Leader,
            Role::Candidate => proto::Role::Candidate,
            Role::PreCandidate => proto::Role::PreCandidate,
            Role::Follower if status.conf_state.learners.contains(&self.id) => proto::Role::Learner,
            Role::Follower => proto::Role::Follower,
        };
        NodeStatus {
            id: self.id,
            cluster: self.config.cluster.clone(),
            role,
            protocol: status.protocol.to_string(),
            term: status.term,
            detail: status
                .detail
                .iter()
                .map(|(name, value)| (name.to_string(), value.clone()))
                .chain(
                    self.sidecar
                        .iter()
                        .flat_map(|sidecar| sidecar.status_detail()),
                )
                .collect(),
            leader: status.leader,
            commit_index: status.commit,
            applied_index: self.host.kv.applied(),
            last_index: status.last_index,
            persisted_index: status.persisted_index,
            snapshot_index: engine.store().snapshot_meta().index,
            revision: self.host.kv.store().revision(),
            keys: self.host.kv.store().len() as u64,
            members: self.members(),
        }
    }
}
