//! Cross-shard transactions in the client: a `Txn` whose keys are on several shards is sent to
//! any member, which coordinates it (`shards::xtxn`); and the steps a coordinator or resolver
//! proposes to one named group ([`Client::propose_to_group`]).

use super::{unexpected, Client, ClientError, Route};
use crate::proto::{
    Reply, Request, ServerError, Session, ShardTxnOp, ShardTxnResult, WriteOp, WriteResult,
};

/// How often a `WrongShard` answer makes the client fetch the map and resend.
const REROUTES: usize = 5;

/// How often a cross-shard transaction that aborted on a conflict is run.
pub const TXN_ATTEMPTS: u32 = 3;

impl Client {
    /// Sends a transaction spanning shards to a member, which runs its two-phase commit. A
    /// resend after a lost reply (to any member) carries the same session sequence number, under
    /// which the coordinator shard records the request's outcome — the first run's commit, or
    /// the abort a run answers with — so the transaction commits at most once and an abort
    /// answered is final. One that aborted (a conflict: nothing applied) is run again under a
    /// new sequence number, up to [`TXN_ATTEMPTS`] times.
    pub(super) async fn cross_shard_txn(&self, op: WriteOp) -> Result<WriteResult, ClientError> {
        let mut pause = std::time::Duration::from_millis(10);
        for attempt in 1..=TXN_ATTEMPTS {
            let (_in_flight, session) = self.begin_write();
            let request = Request::Write {
                session,
                op: op.clone(),
            };
            match self.call(&request, Route::Any).await {
                Ok((_, Reply::Write(result))) => return Ok(result),
                Ok((node, other)) => return Err(unexpected(node, &other)),
                Err(ClientError::Refused(ServerError::TxnAborted(_))) if attempt < TXN_ATTEMPTS => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Sends `request` to member `node` only (retrying transient errors there).
    pub async fn request_to(&self, node: u64, request: &Request) -> Result<Reply, ClientError> {
        self.call_one(node, request).await
    }

    /// Proposes one step of a cross-shard transaction to `group` (through its leader) and
    /// returns what its state machine answered. Transient errors are retried with the same
    /// session — `session` if given (a client request's commit, under that client's session),
    /// else the next of this client's — so the step is applied at most once.
    pub async fn propose_to_group(
        &self,
        group: u64,
        op: ShardTxnOp,
        session: Option<Session>,
    ) -> Result<ShardTxnResult, ClientError> {
        let (_in_flight, own) = self.begin_write();
        let session = session.unwrap_or(own);
        let mut map = self.cached_shard_map();
        if !map.is_sharded() {
            map = self.refresh_shard_map().await?;
        }
        for attempt in 0..=REROUTES {
            let epoch = map.shard(group).map_or(0, |s| s.epoch);
            let request = Request::Routed {
                group,
                epoch,
                request: Box::new(Request::Write {
                    session,
                    op: WriteOp::Shard(op.clone()),
                }),
            };
            match self.call(&request, Route::Leader).await {
                Ok((_, Reply::Write(WriteResult::Shard(result)))) => return Ok(result),
                Ok((node, other)) => return Err(unexpected(node, &other)),
                Err(ClientError::Refused(ServerError::WrongShard { .. })) if attempt < REROUTES => {
                    map = self.refresh_shard_map().await?;
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("the last attempt returns")
    }
}
