//! The router of a sharded node: it owns the endpoint's receivers and hands each peer message to
//! its group's loop by `PeerMessage.group` (dropping one of another epoch, or for a group this
//! node does not run), and each client request to the group it names (`Request::Routed`; a
//! plain request goes to group 0, the meta group). Each group's loop is its own task with its own
//! bounded channels: a full group loses peer messages (as a lossy link would; the protocols
//! resend) and answers requests `Busy`, never stalling the other groups.
//!
//! [`supervise`] runs the router beside the group tasks: shutdown reaches every group, a group
//! stopping on an error stops the others, and the endpoint is closed once all have finished.

use std::collections::BTreeMap;
use std::time::Duration;

use net_quic::{ClientRequest, Endpoint, PeerMessage as NetPeerMessage, Receivers};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::split::GroupEvent;
use crate::group::GroupChannels;
use crate::proto::{Quorate, Request, Response, ServerError, META_GROUP};
use crate::server::ServeError;

/// Queued peer messages per group.
const PEER_QUEUE: usize = 4096;
/// Queued client requests per group.
const REQUEST_QUEUE: usize = 4096;

/// Where the router sends one group's traffic.
struct Route {
    /// The range epoch a routed request must name.
    epoch: u64,
    /// The epoch the group's peer messages carry (fixed at its creation; see `GroupShard`).
    wire_epoch: u64,
    peer: mpsc::Sender<NetPeerMessage<crate::proto::PeerMessage>>,
    requests: mpsc::Sender<ClientRequest<Quorate>>,
}

/// Dispatches the endpoint's traffic to the groups' loops.
pub(crate) struct Router {
    routes: BTreeMap<u64, Route>,
    receivers: Receivers<Quorate>,
    node: u64,
    /// Coordinates transactions whose keys span shards (a sharded node).
    xtxn: Option<std::sync::Arc<super::xtxn::XtxnService>>,
}

impl Router {
    /// A router over `receivers`; [`Router::add`] the groups before running it.
    pub(crate) fn new(node: u64, receivers: Receivers<Quorate>) -> Self {
        Router {
            routes: BTreeMap::new(),
            receivers,
            node,
            xtxn: None,
        }
    }

    /// Plain `Txn` requests spanning shards go to `service` instead of the meta group.
    pub(crate) fn set_xtxn(&mut self, service: std::sync::Arc<super::xtxn::XtxnService>) {
        self.xtxn = Some(service);
    }

    /// Adds group `group` at range epoch `epoch`, its peer messages carrying `wire_epoch`;
    /// returns the channels its loop reads. Also while the router runs (a split's new group).
    pub(crate) fn add(&mut self, group: u64, epoch: u64, wire_epoch: u64) -> GroupChannels {
        let (peer, peer_rx) = mpsc::channel(PEER_QUEUE);
        let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        self.routes.insert(
            group,
            Route {
                epoch,
                wire_epoch,
                peer,
                requests,
            },
        );
        GroupChannels {
            peer: peer_rx,
            requests: requests_rx,
        }
    }

    /// A split moved `group` to range epoch `epoch` (never back).
    pub(crate) fn set_epoch(&mut self, group: u64, epoch: u64) {
        if let Some(route) = self.routes.get_mut(&group) {
            route.epoch = route.epoch.max(epoch);
        }
    }

    /// Routes one message or request; `false` once the endpoint's receivers are closed.
    async fn route_next(&mut self) -> bool {
        tokio::select! {
            message = self.receivers.peer.recv() => match message {
                Some(message) => {
                    self.route_peer(message);
                    true
                }
                None => false,
            },
            request = self.receivers.requests.recv() => match request {
                Some(request) => {
                    self.route_request(request);
                    true
                }
                None => false,
            },
        }
    }

    fn route_peer(&mut self, message: NetPeerMessage<crate::proto::PeerMessage>) {
        let (group, epoch) = (message.msg.group, message.msg.epoch);
        let Some(route) = self.routes.get(&group) else {
            debug!(
                node = self.node,
                group, "dropping a peer message for a group not here"
            );
            return;
        };
        if route.wire_epoch != epoch {
            debug!(
                node = self.node,
                group,
                epoch,
                ours = route.epoch,
                "dropping a peer message of another epoch"
            );
            return;
        }
        if let Err(error) = route.peer.try_send(message) {
            debug!(node = self.node, group, %error, "group queue full or closed: peer message dropped");
        }
    }

    fn route_request(&mut self, request: ClientRequest<Quorate>) {
        let ClientRequest {
            client,
            request,
            responder,
        } = request;
        let (group, epoch, request) = match request {
            Request::Routed {
                group,
                epoch,
                request,
            } => (group, Some(epoch), *request),
            plain => {
                if let Some((txn, session)) = self.xtxn.as_ref().and_then(|x| x.cross_shard(&plain))
                {
                    if let Some(service) = &self.xtxn {
                        service.coordinate(txn, session, responder);
                    }
                    return;
                }
                (META_GROUP, None, plain)
            }
        };
        let refuse = |responder: net_quic::Responder<Response>, error: ServerError| {
            let _ = responder.reply(&Err(error));
        };
        let Some(route) = self.routes.get(&group) else {
            // Groups are only ever added (splits; no merge), so a client naming one this node
            // does not run has it from a newer map than this member has applied: this member is
            // behind (a split's new group it has not started yet), as a group with no leader
            // known here — the client asks again or another member, not a map that already
            // names the group.
            return refuse(responder, ServerError::NoLeader);
        };
        if epoch.is_some_and(|epoch| epoch != route.epoch) {
            let epoch = route.epoch;
            return refuse(responder, ServerError::WrongShard { group, epoch });
        }
        let request = ClientRequest {
            client,
            request,
            responder,
        };
        match route.requests.try_send(request) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(request)) => refuse(
                request.responder,
                ServerError::Busy(format!("group {group} has too many requests queued")),
            ),
            Err(mpsc::error::TrySendError::Closed(request)) => {
                refuse(request.responder, ServerError::ShuttingDown)
            }
        }
    }
}

/// Runs the router and the groups' loops until shutdown (or a group's fatal error), then
/// closes the endpoint. Returns the first group's error, if any.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn supervise(
    node: u64,
    mut router: Router,
    groups: Vec<(u64, JoinHandle<Result<(), ServeError>>)>,
    mut events: mpsc::UnboundedReceiver<GroupEvent>,
    endpoint: Endpoint<Quorate>,
    mut shutdown_rx: watch::Receiver<bool>,
    stop_tx: watch::Sender<bool>,
) -> Result<(), ServeError> {
    // Aborting this task (a simulated crash) aborts the groups' loops too.
    let mut abort = AbortOnDrop(groups.iter().map(|(_, h)| h.abort_handle()).collect());
    let mut tasks = JoinSet::new();
    for (group, handle) in groups {
        tasks.spawn(async move { (group, handle.await) });
    }
    let mut first_error = None;
    let mut routing = true;
    let mut stopping = false;
    loop {
        tokio::select! {
            changed = shutdown_rx.changed(), if !stopping => {
                if changed.is_err() || *shutdown_rx.borrow() {
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
            }
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let error = match joined {
                    Ok((_, Ok(Ok(())))) => None,
                    Ok((group, Ok(Err(error)))) => Some((group, error)),
                    Ok((group, Err(error))) => {
                        Some((group, ServeError::Stopped(format!("group task failed: {error}"))))
                    }
                    Err(error) => Some((0, ServeError::Stopped(format!("group task failed: {error}")))),
                };
                if let Some((group, error)) = error {
                    warn!(node, group, %error, "group stopped on an error: stopping the node");
                    first_error.get_or_insert(error);
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
            }
            Some(event) = events.recv(), if !stopping => match event {
                GroupEvent::Epoch { group, epoch } => router.set_epoch(group, epoch),
                GroupEvent::Created { group, epoch, start } => {
                    info!(node, group, epoch, "starting a group created by a split");
                    let channels = router.add(group, epoch, epoch);
                    let handle = start(endpoint.clone(), channels, stop_tx.subscribe(), false);
                    abort.0.push(handle.abort_handle());
                    tasks.spawn(async move { (group, handle.await) });
                }
            },
            open = router.route_next(), if routing => routing = open,
        }
    }
    let report = endpoint.shutdown(Duration::from_millis(500)).await;
    info!(node, ?report, "endpoint closed");
    first_error.map_or(Ok(()), Err)
}

/// Aborts the tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}
