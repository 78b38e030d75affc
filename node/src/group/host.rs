//! [`GroupHost`]: what the replica loop ([`consensus_core::Replica`]) needs from this node — the
//! network (the QUIC endpoint), the disk (the group's [`LogStore`]) and the state machine (the
//! [`KvService`]) — for any protocol.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use consensus_core::{
    Consensus, Entry, EntryPayload, Envelope, Host, ReadState, Role, Snapshot, SoftState, Write,
};
use net_quic::{Endpoint, NodeId as NetNodeId};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::ServeConfig;
use crate::kv::KvStore;
use crate::proto::{Consistency, PeerMessage, Quorate, ReadOp, Responder, ServerError, WriteOp};
use crate::server::ServeError;
use crate::shards::split::{PendingSplit, SplitHost};
use crate::store::DurableIndex;

use super::admin::AdminWaits;
use super::kv_service::{reply, AppliedSplit, KvService};
use super::leaderless::Leaderless;
use super::membership::AppliedMembership;
use super::shard::GroupShard;
use super::Engine;

/// A write waiting for a leader to be known.
type ParkedWrite = (crate::proto::Session, WriteOp, Responder);

/// The world around one group's protocol instance.
pub(crate) struct GroupHost {
    id: u64,
    group: u64,
    /// The shard this group serves (its range, epoch, and the node's group table).
    pub(crate) shard: GroupShard,
    endpoint: Endpoint<Quorate>,
    durable: DurableIndex,
    pub(crate) kv: KvService,
    pub(crate) admin: AdminWaits,
    /// The role and leader as the engine last reported them.
    pub(crate) soft: SoftState,
    /// Addresses of members: the configured ones, then those recorded through the log.
    pub(crate) addrs: BTreeMap<u64, SocketAddr>,
    /// Writes that arrived while no leader was known.
    leaderless: Leaderless<ParkedWrite>,
    /// Messages the engine addressed to node 0 (the loop's sidecar), not sent.
    pub(crate) local: Vec<PeerMessage>,
    /// Membership as of the last applied entry.
    membership: AppliedMembership,
    /// Splits applied whose new group the loop still has to create (off the async workers).
    pending_splits: Vec<PendingSplit>,
}

impl GroupHost {
    pub(crate) fn new(
        config: Arc<ServeConfig>,
        endpoint: Endpoint<Quorate>,
        durable: DurableIndex,
        kv: KvStore,
        applied: u64,
        conf: consensus_core::ConfState,
        shard: GroupShard,
    ) -> Self {
        let mut addrs: BTreeMap<u64, SocketAddr> =
            config.members.iter().map(|m| (m.id, m.addr)).collect();
        addrs.extend(kv.member_addrs().iter().map(|(&id, &addr)| (id, addr)));
        let leaderless = Leaderless::new(
            config.limits.max_pending_requests,
            config.tick() * config.raft.election_ticks * 2,
        );
        let base_map = shard.map.clone();
        let mut host = GroupHost {
            leaderless,
            id: config.node_id,
            group: shard.group,
            shard,
            endpoint,
            durable,
            kv: KvService::new(config, kv, applied, base_map),
            admin: AdminWaits::default(),
            soft: SoftState {
                leader: None,
                role: Role::Follower,
            },
            addrs: BTreeMap::new(),
            local: Vec::new(),
            membership: AppliedMembership::new(conf),
            pending_splits: Vec::new(),
        };
        for (id, addr) in addrs {
            host.learn_addr(id, addr);
        }
        host
    }

    pub(crate) fn group(&self) -> u64 {
        self.group
    }

    /// Whether no client request waits on this group.
    pub(crate) fn is_idle(&self) -> bool {
        self.kv.pending_count() == 0 && self.leaderless.is_empty() && self.admin.is_empty()
    }

    /// Sends a quiescence message to member `to`.
    pub(crate) fn send_control(&self, to: u64, message: &crate::proto::quiesce::Quiesce) {
        match PeerMessage::control(self.group, self.shard.wire_epoch, message) {
            Ok(envelope) => {
                if let Err(error) = self.endpoint.send(NetNodeId(to), &envelope) {
                    debug!(node = self.id, to, %error, "quiescence message not sent");
                }
            }
            Err(error) => warn!(node = self.id, %error, "quiescence message does not encode"),
        }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint<Quorate> {
        &self.endpoint
    }

    /// Records where member `id` listens (and tells the endpoint).
    pub(crate) fn learn_addr(&mut self, id: u64, addr: SocketAddr) {
        self.addrs.insert(id, addr);
        if id != self.id {
            self.endpoint.set_peer_addr(NetNodeId(id), addr);
        }
    }

    /// What a follower answers a leader-only request with.
    pub(crate) fn not_leader(&self) -> ServerError {
        not_leader(self.id, self.soft.leader, &self.addrs)
    }

    fn leader_check(&self) -> Result<(), ServerError> {
        if self.soft.role == Role::Leader {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    pub(crate) fn handle_write<C: Consensus>(
        &mut self,
        engine: &mut C,
        session: crate::proto::Session,
        op: WriteOp,
        responder: Responder,
    ) {
        if let Err(error) = self.shard.check_write(&op) {
            return reply(responder, Err(error));
        }
        let leader = self.leader_check();
        if matches!(leader, Err(ServerError::NoLeader)) {
            if let Err(error) = self.kv.validate_write(&session, &op) {
                return reply(responder, Err(error));
            }
            match self
                .leaderless
                .park(Instant::now(), (session, op, responder))
            {
                Ok(()) => return,
                // Full: refused at once, as without parking.
                Err((_, _, responder)) => return reply(responder, Err(ServerError::NoLeader)),
            }
        }
        self.kv.write(engine, leader, session, op, responder);
    }

    /// Once a leader is known, handles again the writes that waited for one: proposed here if
    /// this member leads, redirected otherwise. Returns whether any was released.
    pub(crate) fn release_parked<C: Consensus>(&mut self, engine: &mut C) -> bool {
        let leader_known = self.soft.role == Role::Leader
            || self.soft.leader.is_some_and(|leader| leader != self.id);
        if self.leaderless.is_empty() || !leader_known {
            return false;
        }
        debug!(
            node = self.id,
            writes = self.leaderless.len(),
            leader = ?self.soft.leader,
            "a leader is known: handling the writes that waited for one"
        );
        for (session, op, responder) in self.leaderless.release() {
            self.handle_write(engine, session, op, responder);
        }
        true
    }

    pub(crate) fn handle_read(
        &mut self,
        consistency: Consistency,
        op: ReadOp,
        responder: Responder,
    ) {
        if let Err(error) = self.shard.check_read(&op) {
            return reply(responder, Err(error));
        }
        self.kv.read(consistency, op, responder);
    }

    pub(crate) fn flush_proposals<C: Consensus>(&mut self, engine: &mut C) {
        let (id, leader, addrs) = (self.id, self.soft.leader, &self.addrs);
        self.kv
            .flush_proposals(engine, || not_leader(id, leader, addrs));
    }

    pub(crate) fn flush_reads<C: Consensus>(&mut self, engine: &mut C) {
        let (id, leader, addrs) = (self.id, self.soft.leader, &self.addrs);
        self.kv
            .flush_reads(engine, || not_leader(id, leader, addrs));
    }

    /// Times out requests that waited too long.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.kv.expire(now);
        self.admin.expire(now);
        for (_, _, responder) in self.leaderless.expire(now) {
            reply(responder, Err(ServerError::NoLeader));
        }
    }

    /// Answers everything still waiting with `error`.
    pub(crate) fn fail_all(&mut self, error: ServerError) {
        self.kv.fail_all(error.clone());
        for (_, _, responder) in self.leaderless.release() {
            reply(responder, Err(error.clone()));
        }
        self.admin.fail_all(error);
    }

    fn send_message<M: Envelope + serde::Serialize>(&mut self, message: M) {
        let to = NetNodeId(message.to());
        let envelope = match PeerMessage::encode(self.group, &message) {
            Ok(envelope) => PeerMessage {
                epoch: self.shard.wire_epoch,
                ..envelope
            },
            Err(error) => {
                warn!(node = self.id, %to, %error, "message does not encode");
                return;
            }
        };
        if to.0 == super::sidecar::LOCAL_SERVICE {
            self.local.push(envelope);
            return;
        }
        if envelope.bulk {
            // A snapshot travels on its own stream, so small messages do not queue behind it.
            let endpoint = self.endpoint.clone();
            let node = self.id;
            tokio::spawn(async move {
                if let Err(error) = endpoint.send_bulk(to, &envelope).await {
                    warn!(node, %to, %error, "snapshot not sent");
                }
            });
        } else if let Err(error) = self.endpoint.send(to, &envelope) {
            debug!(node = self.id, %to, %error, "message not sent");
        }
    }
}

impl GroupHost {
    /// The meta group tells the node which splits its state machine records.
    fn publish_splits(&self) {
        if let (Some(splits), Some(_)) = (&self.shard.splits, &self.shard.map) {
            splits.planned(self.kv.store().splits());
        }
    }

    /// A snapshot from the leader shows splits of this group's range that this member never
    /// applied (its log was compacted past them): the range and epoch follow, and the node joins
    /// the groups those splits created, empty, to catch up from their leaders
    /// ([`crate::shards::split::SplitHost::missed`]).
    fn splits_missed(&mut self) {
        let Some((group, epoch, range)) = self.kv.store().owned_range() else {
            return;
        };
        if group != self.group || epoch <= self.shard.epoch {
            return;
        }
        warn!(
            node = self.id,
            group,
            epoch,
            ours = self.shard.epoch,
            "a snapshot carried splits of this range never applied here: joining the groups they created"
        );
        self.shard.range = range.clone();
        self.shard.epoch = epoch;
        if let Some(splits) = &self.shard.splits {
            splits.epoch_moved(group, epoch);
            splits.missed(group, epoch);
        }
    }

    /// This group's range divided at the log entry `index`: it keeps the lower half, and the node
    /// starts the new group from `upper` with this group's members as of `index` (the same state
    /// and members on every member).
    fn split_applied(&mut self, index: u64, split: AppliedSplit) {
        let AppliedSplit {
            plan,
            upper,
            answer,
        } = split;
        info!(
            node = self.id,
            group = self.group,
            index,
            key = ?plan.key,
            new_group = plan.new_group,
            epoch = plan.epoch,
            "range split applied"
        );
        self.shard.range = plan.lower();
        self.shard.epoch = plan.epoch;
        match &self.shard.splits {
            Some(splits) => {
                splits.epoch_moved(plan.source, plan.epoch);
                self.pending_splits.push(PendingSplit {
                    plan,
                    upper,
                    members: self.membership.for_split(),
                    answer,
                });
            }
            None => {
                warn!(
                    node = self.id,
                    "a split applied on a node that cannot start groups"
                );
                if let Some((responder, answer)) = answer {
                    reply(responder, answer);
                }
            }
        }
    }

    /// The splits applied since the last call, for the loop to create their groups (in order,
    /// off the async workers) before it goes on.
    pub(crate) fn take_pending_splits(&mut self) -> Option<(Arc<SplitHost>, Vec<PendingSplit>)> {
        if self.pending_splits.is_empty() {
            return None;
        }
        let splits = self.shard.splits.clone()?;
        Some((splits, std::mem::take(&mut self.pending_splits)))
    }
}

pub(crate) fn not_leader(
    id: u64,
    leader: Option<u64>,
    addrs: &BTreeMap<u64, SocketAddr>,
) -> ServerError {
    match leader {
        Some(leader) if leader != id => ServerError::NotLeader {
            leader: Some(leader),
            leader_addr: addrs.get(&leader).copied(),
        },
        _ => ServerError::NoLeader,
    }
}

impl<C: Engine> Host<C> for GroupHost {
    type Error = ServeError;

    fn send(&mut self, message: C::Message) -> Result<(), ServeError> {
        self.send_message(message);
        Ok(())
    }

    fn submit(
        &mut self,
        storage: &mut C::Storage,
        write: &Write<C::HardState>,
    ) -> Result<u64, ServeError> {
        Ok(C::as_store(storage).submit(write)?)
    }

    fn durable(&self) -> u64 {
        self.durable.get()
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), ServeError> {
        self.kv.install(snapshot)?;
        self.membership.installed(&snapshot.meta.conf_state);
        let addrs: Vec<(u64, SocketAddr)> = self
            .kv
            .store()
            .member_addrs()
            .iter()
            .map(|(&id, &addr)| (id, addr))
            .collect();
        for (id, addr) in addrs {
            self.learn_addr(id, addr);
        }
        self.admin.snapshot_installed(snapshot.meta.index);
        self.publish_splits();
        self.splits_missed();
        info!(
            node = self.id,
            index = snapshot.meta.index,
            keys = self.kv.store().len(),
            "installed snapshot from the leader"
        );
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ServeError> {
        for entry in entries {
            let index = entry.index;
            match &entry.payload {
                EntryPayload::Data(data) => {
                    let applied = self.kv.apply_data(index, data)?;
                    for (id, addr) in applied.addrs {
                        self.learn_addr(id, addr);
                    }
                    for split in applied.splits {
                        self.split_applied(index, split);
                    }
                    self.publish_splits();
                }
                EntryPayload::Noop => self.kv.apply_other(index),
                EntryPayload::ConfChange(change) => {
                    info!(node = self.id, index, ?change, "membership change applied");
                    self.membership.applied(change);
                    self.kv.apply_other(index);
                }
            }
            self.admin.applied(&entry);
        }
        self.kv.serve_ready_reads();
        Ok(())
    }

    fn reads(&mut self, reads: Vec<ReadState>) -> Result<(), ServeError> {
        self.kv.ordered(reads);
        Ok(())
    }

    fn soft_state(&mut self, soft: SoftState) {
        let was_leader = self.soft.role == Role::Leader;
        if soft != self.soft {
            info!(node = self.id, leader = ?soft.leader, role = ?soft.role, "role change");
        }
        self.soft = soft;
        if was_leader && soft.role != Role::Leader {
            self.kv.fail_writes(ServerError::LeaderChanged);
            self.admin.leadership_lost();
        }
        self.admin.leader_changed(soft.leader);
    }
}
