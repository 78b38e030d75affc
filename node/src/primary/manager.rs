//! The configuration manager of a primary-backup group: a Raft group of the node's members
//! (group id [`MANAGER_GROUP`], its own store in `<data dir>/manager/`) whose state machine is
//! `replication_primary::ConfigManager`.
//!
//! - The primary-backup engine addresses the manager as node 0; the loop hands those requests
//!   here ([`Sidecar::take_from_engine`]). The Raft leader proposes each request as one log entry; a
//!   follower forwards its own node's requests to the leader ([`ManagerMessage::Request`]).
//! - Every member applies every entry, in log order, to its `ConfigManager` (which refuses stale
//!   or disallowed requests), and steps each configuration it installs into its *own* engine as
//!   `Body::Installed` from the manager. Decisions therefore reach every replica whose manager
//!   member keeps up, without messages of their own; a replica cut off from the manager learns
//!   them from its primary's prepares or a backup's `Fenced` answer.
//! - The leader drops a request the state machine would refuse, and one already proposed and
//!   not yet applied (replicas resend unanswered requests every few ticks); a request based on
//!   an older version than it applied is answered with the configuration in force
//!   ([`ManagerMessage::Installed`]), so the requester stops asking.
//!
//! The manager's log is small (one entry per accepted change) and never compacted; on restart
//! the state machine is rebuilt by replaying it from the bootstrap configuration, which every
//! member derives from `[[members]]` alike.

use std::sync::Arc;

use bytes::Bytes;
use consensus_core::{
    Consensus, Entry, EntryPayload, Envelope, Host, Raft, ReadState, Replica, Role, Snapshot,
    SoftState, Write,
};
use net_quic::{Endpoint, NodeId as NetNodeId};
use replication_primary::{
    Body, ChangeRequest, ConfigManager, Configuration, Message as PbMessage, Refused, MANAGER,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::ServeConfig;
use crate::group::sidecar::Sidecar;
use crate::proto::{PeerMessage, Quorate};
use crate::server::ServeError;
use crate::store::{Durability, DurableIndex, RaftStore};

use super::PbEngine;

/// The manager's group id on the wire (the primary-backup group is 0).
pub(crate) const MANAGER_GROUP: u64 = 1;

/// The manager group's messages between nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ManagerMessage {
    /// Raft between the manager's members.
    Raft(consensus_core::Message),
    /// A replica's change request, forwarded by its node to the manager's leader.
    Request {
        /// The requesting replica (= the sending node).
        from: u64,
        /// The leader it is sent to.
        to: u64,
        /// What it asks.
        request: ChangeRequest,
    },
    /// The leader's answer to a request based on an older version: the configuration in force.
    Installed {
        /// The leader.
        from: u64,
        /// The requester.
        to: u64,
        /// The configuration the leader's state machine holds.
        config: Configuration,
    },
}

impl Envelope for ManagerMessage {
    fn from(&self) -> u64 {
        match self {
            ManagerMessage::Raft(m) => m.from(),
            ManagerMessage::Request { from, .. } | ManagerMessage::Installed { from, .. } => *from,
        }
    }

    fn to(&self) -> u64 {
        match self {
            ManagerMessage::Raft(m) => m.to(),
            ManagerMessage::Request { to, .. } | ManagerMessage::Installed { to, .. } => *to,
        }
    }
}

/// One entry of the manager's log: a request and who made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ManagerEntry {
    from: u64,
    request: ChangeRequest,
}

/// The manager member on this node (see the module docs).
pub(crate) struct Manager {
    replica: Replica<Raft<RaftStore>>,
    host: ManagerHost,
    durable_rx: watch::Receiver<Durability>,
}

/// What the manager's replica loop drives: the network, the manager's store, the state machine.
struct ManagerHost {
    id: u64,
    endpoint: Endpoint<Quorate>,
    durable: DurableIndex,
    state: ConfigManager,
    soft: SoftState,
    /// Requests proposed by this leader and not yet applied.
    proposed: Vec<ManagerEntry>,
    /// `Installed` messages for this node's engine.
    to_engine: Vec<PeerMessage>,
}

impl Manager {
    /// The manager member over its opened store; `state` is the bootstrap configuration's
    /// manager (the log is replayed into it).
    pub(crate) fn new(
        config: &Arc<ServeConfig>,
        store: RaftStore,
        state: ConfigManager,
        endpoint: Endpoint<Quorate>,
    ) -> Result<Self, ServeError> {
        let mut raft_config = consensus_core::Config::new(config.node_id);
        raft_config.election_tick = config.raft.election_ticks;
        raft_config.heartbeat_tick = config.raft.heartbeat_ticks;
        let durable_rx = store.subscribe_durable();
        let durable = store.durable_handle();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ config.node_id.rotate_left(17);
        let raft = Raft::new(raft_config, store, consensus_core::seeded_rng(seed))?;
        Ok(Manager {
            replica: Replica::new(raft),
            host: ManagerHost {
                id: config.node_id,
                endpoint,
                durable,
                state,
                soft: SoftState {
                    leader: None,
                    role: Role::Follower,
                },
                proposed: Vec::new(),
                to_engine: Vec::new(),
            },
            durable_rx,
        })
    }

    /// A request from replica `from` (this node's engine, or forwarded to this leader).
    fn request(&mut self, from: u64, request: ChangeRequest) {
        let host = &mut self.host;
        if host.soft.role == Role::Leader {
            let entry = ManagerEntry { from, request };
            let mut probe = host.state.clone();
            match probe.handle(from, request) {
                Ok(_) if host.proposed.contains(&entry) => {}
                Ok(_) => {
                    let data = match postcard::to_allocvec(&entry) {
                        Ok(data) => Bytes::from(data),
                        Err(error) => {
                            warn!(node = host.id, %error, "manager entry does not encode");
                            return;
                        }
                    };
                    match self.replica.engine_mut().propose(data) {
                        Ok(proposed) => {
                            debug!(
                                node = host.id,
                                from,
                                ?request,
                                index = proposed.index,
                                "manager: proposed"
                            );
                            host.proposed.push(entry);
                        }
                        Err(error) => debug!(node = host.id, %error, "manager: not proposed"),
                    }
                }
                Err(Refused::Stale { current, .. }) if current > request.based_on => {
                    let config = host.state.current().clone();
                    host.answer(from, config);
                }
                // Disallowed, or based on a version this leader has not applied yet: the
                // replica asks again.
                Err(_) => {}
            }
            return;
        }
        // Only this node's own requests are forwarded (a forwarded one is never forwarded on).
        match host.soft.leader {
            Some(leader) if leader != host.id && from == host.id => {
                host.send_wire(ManagerMessage::Request {
                    from,
                    to: leader,
                    request,
                });
            }
            _ => {}
        }
    }
}

impl ManagerHost {
    fn send_wire(&self, message: ManagerMessage) {
        let to = NetNodeId(message.to());
        match PeerMessage::encode(MANAGER_GROUP, &message) {
            Ok(envelope) => {
                if let Err(error) = self.endpoint.send(to, &envelope) {
                    debug!(node = self.id, %to, %error, "manager message not sent");
                }
            }
            Err(error) => warn!(node = self.id, %to, %error, "manager message does not encode"),
        }
    }

    /// Tells replica `to` the configuration in force: this node's engine directly, another
    /// node's through the network.
    fn answer(&mut self, to: u64, config: Configuration) {
        if to == self.id {
            self.installed(config);
        } else {
            self.send_wire(ManagerMessage::Installed {
                from: self.id,
                to,
                config,
            });
        }
    }

    /// Queues `config` for this node's engine, as the manager's `Installed`.
    fn installed(&mut self, config: Configuration) {
        let message = PbMessage {
            from: MANAGER,
            to: self.id,
            epoch: config.epoch,
            body: Body::Installed(config),
        };
        match PeerMessage::encode(0, &message) {
            Ok(envelope) => self.to_engine.push(envelope),
            Err(error) => warn!(node = self.id, %error, "installed configuration does not encode"),
        }
    }
}

impl Sidecar<PbEngine> for Manager {
    fn group(&self) -> u64 {
        MANAGER_GROUP
    }

    fn subscribe_durable(&self) -> watch::Receiver<Durability> {
        self.durable_rx.clone()
    }

    fn tick(&mut self) {
        self.replica.engine_mut().tick();
    }

    fn step(&mut self, from: u64, envelope: PeerMessage) {
        let message: ManagerMessage = match envelope.decode() {
            Ok(message) => message,
            Err(error) => {
                warn!(node = self.host.id, from, %error, "dropping a manager message that does not decode");
                return;
            }
        };
        if message.from() != from || message.to() != self.host.id {
            warn!(
                node = self.host.id,
                claimed = message.from(),
                to = message.to(),
                from,
                "dropping a manager message whose sender or addressee does not match"
            );
            return;
        }
        match message {
            ManagerMessage::Raft(m) => {
                if let Err(error) = self.replica.engine_mut().step(m) {
                    debug!(node = self.host.id, %error, "manager: message refused by Raft");
                }
            }
            ManagerMessage::Request { from, request, .. } => self.request(from, request),
            // Only configurations the sender's state machine applied (committed) are sent.
            ManagerMessage::Installed { config, .. } => self.host.installed(config),
        }
    }

    fn take_from_engine(&mut self, envelope: PeerMessage) {
        match envelope.decode::<PbMessage>() {
            Ok(PbMessage {
                from,
                body: Body::Request(request),
                ..
            }) if from == self.host.id => self.request(from, request),
            Ok(other) => debug!(node = self.host.id, ?other, "manager: not a request"),
            Err(error) => {
                warn!(node = self.host.id, %error, "manager: engine message does not decode")
            }
        }
    }

    fn drive(&mut self) -> Result<Vec<PeerMessage>, ServeError> {
        self.replica.drive(&mut self.host)?;
        Ok(std::mem::take(&mut self.host.to_engine))
    }

    fn status_detail(&self) -> Vec<(String, String)> {
        let leader = self
            .host
            .soft
            .leader
            .map_or_else(|| "-".to_string(), |l| l.to_string());
        vec![
            ("manager_leader".into(), leader),
            (
                "manager_version".into(),
                self.host.state.current().version.to_string(),
            ),
        ]
    }
}

impl Host<Raft<RaftStore>> for ManagerHost {
    type Error = ServeError;

    fn send(&mut self, message: consensus_core::Message) -> Result<(), ServeError> {
        self.send_wire(ManagerMessage::Raft(message));
        Ok(())
    }

    fn submit(
        &mut self,
        storage: &mut RaftStore,
        write: &Write<consensus_core::HardState>,
    ) -> Result<u64, ServeError> {
        Ok(storage.submit(write)?)
    }

    fn durable(&self) -> u64 {
        self.durable.get()
    }

    fn install_snapshot(&mut self, _snapshot: &Snapshot) -> Result<(), ServeError> {
        // The manager never compacts its log, so no member is ever sent a snapshot.
        Err(ServeError::Stopped(
            "the configuration manager received a snapshot; it keeps its whole log and takes none"
                .into(),
        ))
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ServeError> {
        for entry in entries {
            let EntryPayload::Data(data) = &entry.payload else {
                continue;
            };
            let Ok(ManagerEntry { from, request }) = postcard::from_bytes::<ManagerEntry>(data)
            else {
                warn!(
                    node = self.id,
                    index = entry.index,
                    "manager entry does not decode"
                );
                continue;
            };
            self.proposed
                .retain(|p| *p != ManagerEntry { from, request });
            match self.state.handle(from, request) {
                Ok(config) => {
                    let config = config.clone();
                    info!(
                        node = self.id,
                        version = config.version,
                        epoch = config.epoch,
                        primary = ?config.primary,
                        members = ?config.members,
                        "configuration installed"
                    );
                    self.installed(config);
                }
                Err(refused) => {
                    debug!(node = self.id, from, %refused, "manager refused a request");
                    if from == self.id {
                        let config = self.state.current().clone();
                        self.installed(config);
                    }
                }
            }
        }
        Ok(())
    }

    fn reads(&mut self, _reads: Vec<ReadState>) -> Result<(), ServeError> {
        Ok(())
    }

    fn soft_state(&mut self, soft: SoftState) {
        if soft.role != Role::Leader {
            self.proposed.clear();
        }
        self.soft = soft;
    }
}
