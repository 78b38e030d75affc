//! Client requests of a peer node: the wire's [`PeerRequest`] into the engine's [`Request`],
//! the engine's answers back into [`PeerReply`] / [`ServerError`].

use std::net::SocketAddr;

use bytes::Bytes;
use replication_peer::{Request, RequestError, Response};

use crate::config::{PeerSettings, ServeConfig};
use crate::proto::{PeerReply, PeerRequest, PeerSibling, ServerError};

/// The engine request for a client's, with the cluster's R/W defaults filled in; `None` for a
/// request the node answers itself (status).
pub(super) fn engine_request(
    request: PeerRequest,
    settings: &PeerSettings,
) -> Result<Option<Request>, ServerError> {
    let key_of = |key: Bytes| {
        if key.is_empty() {
            Err(ServerError::EmptyKey)
        } else {
            Ok(key.to_vec())
        }
    };
    let quorum = |asked: Option<u32>, default: usize| asked.map_or(default, |q| q as usize);
    Ok(Some(match request {
        PeerRequest::Get { key, r } => Request::Get {
            key: key_of(key)?,
            r: quorum(r, settings.r),
        },
        PeerRequest::Put {
            key,
            value,
            context,
            w,
        } => Request::Put {
            key: key_of(key)?,
            value: value.to_vec(),
            context,
            w: quorum(w, settings.w),
        },
        PeerRequest::Delete { key, context, w } => Request::Delete {
            key: key_of(key)?,
            context,
            w: quorum(w, settings.w),
        },
        PeerRequest::Update { key, op, w } => Request::Update {
            key: key_of(key)?,
            op,
            w: quorum(w, settings.w),
        },
        PeerRequest::Status => return Ok(None),
    }))
}

/// The client's answer to the engine's.
pub(super) fn reply(
    config: &ServeConfig,
    answer: Result<Response, RequestError>,
) -> Result<PeerReply, ServerError> {
    match answer {
        Ok(Response::Read {
            siblings,
            crdt,
            context,
        }) => Ok(PeerReply::Read {
            siblings: siblings
                .into_iter()
                .map(|s| PeerSibling {
                    node: s.dot.node,
                    counter: s.dot.counter,
                    value: s.value.map(Bytes::from),
                })
                .collect(),
            crdt,
            context,
        }),
        Ok(Response::Written { dot, context }) => Ok(PeerReply::Written {
            node: dot.node,
            counter: dot.counter,
            context,
        }),
        Err(error) => Err(server_error(config, error)),
    }
}

fn server_error(config: &ServeConfig, error: RequestError) -> ServerError {
    match error {
        RequestError::NotAReplica { replicas } => ServerError::NotAReplica {
            replicas: replicas
                .into_iter()
                .map(|id| (id, config.member_addr(id)))
                .collect::<Vec<(u64, Option<SocketAddr>)>>(),
        },
        RequestError::Timeout { acks, needed } => ServerError::QuorumTimeout {
            acks: acks as u32,
            needed: needed as u32,
        },
        RequestError::Overloaded { pending } => {
            ServerError::Busy(format!("{pending} peer requests in progress"))
        }
        RequestError::KeyTooLarge { len, max } => ServerError::KeyTooLarge {
            size: len as u64,
            limit: max as u64,
        },
        RequestError::ValueTooLarge { len, max } => ServerError::ValueTooLarge {
            size: len as u64,
            limit: max as u64,
        },
        other => ServerError::PeerRefused(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication_peer::VersionVector;

    #[test]
    fn defaults_fill_in_and_an_empty_key_is_refused() {
        let settings = PeerSettings::default();
        let get = engine_request(
            PeerRequest::Get {
                key: Bytes::from_static(b"k"),
                r: None,
            },
            &settings,
        );
        assert_eq!(
            get,
            Ok(Some(Request::Get {
                key: b"k".to_vec(),
                r: settings.r
            }))
        );
        let put = engine_request(
            PeerRequest::Put {
                key: Bytes::new(),
                value: Bytes::new(),
                context: VersionVector::new(),
                w: Some(1),
            },
            &settings,
        );
        assert_eq!(put, Err(ServerError::EmptyKey));
        assert_eq!(engine_request(PeerRequest::Status, &settings), Ok(None));
    }
}
