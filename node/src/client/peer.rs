//! The client side of `replication = "peer"`: reads that show siblings and their context, writes
//! that name a context, and each node's replication status. Any member serves a request for a
//! key it replicates and forwards the others to a replica; if a node still answers `NotAReplica`
//! (a one-hop forward that did not land), the client asks the replicas it names in turn.

use bytes::Bytes;
use net_quic::NodeId;
use replication_peer::{CrdtOp, CrdtValue, VersionVector};

use super::{describe_request_error, Client, ClientError, Route};
use crate::proto::{
    PeerNodeStatus, PeerReply, PeerRequest, PeerSibling, Reply, Request, ServerError,
};

/// A read of a peer-replicated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRead {
    /// The member that coordinated the read.
    pub node: u64,
    /// Every sibling (empty: the key is absent).
    pub siblings: Vec<PeerSibling>,
    /// A CRDT key's merged value (`None` for other keys).
    pub crdt: Option<CrdtValue>,
    /// Send this with the next write to supersede these siblings.
    pub context: VersionVector,
}

/// An acknowledged write (durable on W replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerWritten {
    /// The member that coordinated it (the one asked, or the replica it forwarded to).
    pub node: u64,
    /// The write's counter at that member.
    pub counter: u64,
    /// The key's context at the coordinator right after the write.
    pub context: VersionVector,
}

impl Client {
    /// Reads `key` from R replicas (`None`: the cluster's default).
    pub async fn peer_get(
        &self,
        key: impl Into<Bytes>,
        r: Option<u32>,
    ) -> Result<PeerRead, ClientError> {
        let request = Request::Peer(PeerRequest::Get { key: key.into(), r });
        match self.peer_call(&request).await? {
            (
                node,
                PeerReply::Read {
                    siblings,
                    crdt,
                    context,
                },
            ) => Ok(PeerRead {
                node,
                siblings,
                crdt,
                context,
            }),
            (node, other) => Err(super::unexpected(node, &Reply::Peer(other))),
        }
    }

    /// Writes `value`, superseding the siblings `context` covers (an empty context: a blind
    /// write, kept beside concurrent ones), once W replicas (`None`: the default) hold it.
    pub async fn peer_put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        context: VersionVector,
        w: Option<u32>,
    ) -> Result<PeerWritten, ClientError> {
        let request = Request::Peer(PeerRequest::Put {
            key: key.into(),
            value: value.into(),
            context,
            w,
        });
        self.peer_written(&request).await
    }

    /// Deletes (a tombstone superseding what `context` covers).
    pub async fn peer_delete(
        &self,
        key: impl Into<Bytes>,
        context: VersionVector,
        w: Option<u32>,
    ) -> Result<PeerWritten, ClientError> {
        let request = Request::Peer(PeerRequest::Delete {
            key: key.into(),
            context,
            w,
        });
        self.peer_written(&request).await
    }

    /// Updates a CRDT key (its prefix's policy names the type) once W replicas hold it.
    pub async fn peer_update(
        &self,
        key: impl Into<Bytes>,
        op: CrdtOp,
        w: Option<u32>,
    ) -> Result<PeerWritten, ClientError> {
        let request = Request::Peer(PeerRequest::Update {
            key: key.into(),
            op,
            w,
        });
        self.peer_written(&request).await
    }

    /// One member's replication status (hints pending, anti-entropy per peer).
    pub async fn peer_status_of(&self, node: u64) -> Result<PeerNodeStatus, ClientError> {
        match self
            .call_one(node, &Request::Peer(PeerRequest::Status))
            .await?
        {
            Reply::Peer(PeerReply::Status(status)) => Ok(status),
            other => Err(super::unexpected(node, &other)),
        }
    }

    async fn peer_written(&self, request: &Request) -> Result<PeerWritten, ClientError> {
        match self.peer_call(request).await? {
            (
                _,
                PeerReply::Written {
                    node,
                    counter,
                    context,
                },
            ) => Ok(PeerWritten {
                node,
                counter,
                context,
            }),
            (node, other) => Err(super::unexpected(node, &Reply::Peer(other))),
        }
    }

    /// Any member (spread by client id), then, if it does not replicate the key, each replica
    /// it names, once each.
    async fn peer_call(&self, request: &Request) -> Result<(u64, PeerReply), ClientError> {
        let replicas = match self.call(request, Route::Session).await {
            Ok((node, Reply::Peer(reply))) => return Ok((node, reply)),
            Ok((node, other)) => return Err(super::unexpected(node, &other)),
            Err(ClientError::Refused(ServerError::NotAReplica { replicas })) => replicas,
            Err(error) => return Err(error),
        };
        let mut last = ServerError::NotAReplica {
            replicas: replicas.clone(),
        };
        for &(id, addr) in &replicas {
            if let Some(addr) = addr {
                self.learn_member(id, addr);
            }
            let net = self.net.read().expect("net lock").clone();
            match net
                .request(NodeId(id), request, self.config.attempt_timeout)
                .await
            {
                Ok(Ok(Reply::Peer(reply))) => return Ok((id, reply)),
                Ok(Ok(other)) => return Err(super::unexpected(id, &other)),
                Ok(Err(error)) => last = error,
                Err(error) => {
                    last = ServerError::Internal(format!(
                        "replica {id}: {}",
                        describe_request_error(&error)
                    ))
                }
            }
        }
        Err(ClientError::Refused(last))
    }
}
