//! Cross-shard transactions on a sharded node. The node that receives a `Txn` whose keys are on
//! several shards coordinates it ([`crate::xtxn::driver::run`]): it reads the keys and proposes
//! PREPARE, COMMIT and DECIDE to the groups' leaders through a client of its own cluster
//! (node-to-node requests on the client ALPN, with the node's certificate), answering the client
//! once COMMIT is applied and proposing the DECIDEs after (in a task of their own). Every node also
//! watches its data groups' prepared transactions ([`crate::xtxn::Resolver`]): one prepared for
//! longer than [`RESOLVE_AFTER`] is resolved through the coordinator shard (presumed abort), so a
//! coordinating node killed mid-transaction never leaves locks behind.
//!
//! Keys are located with the service client's cached shard map once it has one (it is fetched
//! again on every `WrongShard`, so splits are seen), else the bootstrap map.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, info};
use txn_2pc::two_phase::Config;

use crate::client::{Client, ClientConfig, ClientError};
use crate::config::ServeConfig;
use crate::group::shard::GroupTable;
use crate::proto::{
    Consistency, KeyValue, ReadOp, Reply, Request, Response, ServerError, Session, ShardMap,
    ShardTxnId, ShardTxnOp, ShardTxnResult, WriteOp,
};
use crate::xtxn::driver::{self, Shards};
use crate::xtxn::{Resolver, TxnRequest};

/// One coordinator tick.
const TICK: Duration = Duration::from_millis(50);
/// Resolver rounds this often.
const RESOLVE_TICK: Duration = Duration::from_millis(500);
/// A transaction prepared this long (in resolver rounds) is asked about at its coordinator shard.
pub const RESOLVE_AFTER: u64 = 6;
/// The ENDs owed to each coordinator shard go out together this often.
const END_FLUSH: Duration = Duration::from_millis(50);
/// At most this many ENDs wait; beyond, an END is proposed on its own.
const MAX_DEFERRED_ENDS: usize = 65_536;

/// ENDs owed, by coordinator shard.
type DeferredEnds = Arc<parking_lot::Mutex<BTreeMap<u64, Vec<ShardTxnId>>>>;

/// The coordinator's timers, in ticks of [`TICK`]: votes within 2 s, resends every 250 ms.
fn txn_config() -> Config {
    Config {
        vote_timeout: 40,
        retry_interval: 5,
        ..Config::default()
    }
}

/// The node's cross-shard transaction service.
pub(crate) struct XtxnService {
    config: Arc<ServeConfig>,
    map: Arc<ShardMap>,
    /// What the node's groups report (how many transactions each holds prepared).
    table: Arc<GroupTable>,
    client: OnceLock<Result<Arc<Client>, String>>,
    ends: DeferredEnds,
}

/// The cluster as a coordinator sees it: the node's own client.
#[derive(Clone)]
struct ClusterShards {
    client: Arc<Client>,
    map: Arc<ShardMap>,
    ends: DeferredEnds,
}

fn refused(error: ClientError) -> ServerError {
    match error {
        ClientError::Refused(error) => error,
        other => ServerError::Internal(other.to_string()),
    }
}

impl Shards for ClusterShards {
    fn locate(&self, key: &[u8]) -> u64 {
        self.map.locate(key).map_or(0, |s| s.group)
    }

    async fn read(&self, _group: u64, key: Bytes) -> Result<Option<KeyValue>, ServerError> {
        self.client
            .get(key, Consistency::Linearizable)
            .await
            .map_err(refused)
    }

    async fn propose(
        &self,
        group: u64,
        op: ShardTxnOp,
        session: Option<Session>,
    ) -> Result<ShardTxnResult, ServerError> {
        self.client
            .propose_to_group(group, op, session)
            .await
            .map_err(refused)
    }

    fn defer_end(&self, group: u64, txn: ShardTxnId) -> bool {
        let mut ends = self.ends.lock();
        if ends.values().map(Vec::len).sum::<usize>() >= MAX_DEFERRED_ENDS {
            return false;
        }
        ends.entry(group).or_default().push(txn);
        true
    }
}

impl XtxnService {
    /// The shard map to locate keys with: the client's, fresher after a split, else the
    /// bootstrap map.
    fn map(&self) -> Arc<ShardMap> {
        match self.client.get() {
            Some(Ok(client)) if client.cached_shard_map().is_sharded() => client.cached_shard_map(),
            _ => self.map.clone(),
        }
    }

    pub(crate) fn new(
        config: Arc<ServeConfig>,
        map: Arc<ShardMap>,
        table: Arc<GroupTable>,
    ) -> Arc<Self> {
        Arc::new(XtxnService {
            config,
            map,
            table,
            client: OnceLock::new(),
            ends: DeferredEnds::default(),
        })
    }

    /// The node's own client of its cluster (node-to-node requests on the client ALPN).
    pub(crate) fn client(&self) -> Result<Arc<Client>, ServerError> {
        self.shards().map(|shards| shards.client)
    }

    fn shards(&self) -> Result<ClusterShards, ServerError> {
        let client = self.client.get_or_init(|| {
            let (cert, key, ca) = self.config.cert_paths();
            let credentials = net_quic::Credentials::from_pem_files(&cert, &key, &ca)
                .map_err(|e| e.to_string())?;
            let endpoints = self.config.members.iter().map(|m| (m.id, m.addr)).collect();
            let mut config = ClientConfig::new(&self.config.cluster, credentials, endpoints);
            config.timeout = Duration::from_secs(3);
            Client::connect(config)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match client {
            Ok(client) => Ok(ClusterShards {
                client: client.clone(),
                map: self.map(),
                ends: self.ends.clone(),
            }),
            Err(error) => Err(ServerError::Internal(format!(
                "no client for cross-shard transactions: {error}"
            ))),
        }
    }

    /// The transaction a plain request carries, with the request's session, if its keys are on
    /// several data groups.
    pub(crate) fn cross_shard(&self, request: &Request) -> Option<(TxnRequest, Session)> {
        let Request::Write {
            session,
            op:
                WriteOp::Txn {
                    compares,
                    success,
                    failure,
                },
            ..
        } = request
        else {
            return None;
        };
        let txn = TxnRequest {
            compares: compares.clone(),
            success: success.clone(),
            failure: failure.clone(),
        };
        let map = self.map();
        let groups = txn.groups(|k| map.locate(k).map_or(0, |s| s.group));
        (groups.len() > 1).then_some((txn, *session))
    }

    /// Coordinates `txn`, the request of `session`, in the background and answers `responder`
    /// with its outcome. Its commit is proposed under `session`, so a client that sends the
    /// request again (its reply was lost), here or to another member, gets it applied once.
    pub(crate) fn coordinate(
        self: &Arc<Self>,
        txn: TxnRequest,
        session: Session,
        responder: net_quic::Responder<Response>,
    ) {
        if session.client_id == 0 || session.seq == 0 {
            let _ = responder.reply(&Err(ServerError::InvalidSession(
                "client id and sequence number must be non-zero".into(),
            )));
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let response = match this.shards() {
                Ok(shards) => {
                    let id = rand_id();
                    let report =
                        driver::run(shards, id, txn, Some(session), txn_config(), TICK).await;
                    debug!(txn = id, outcome = ?report.outcome, participants = ?report.participants, reason = ?report.reason, "cross-shard transaction");
                    report.into_result().map(Reply::Write)
                }
                Err(error) => Err(error),
            };
            let _ = responder.reply(&response);
        });
    }

    /// Sends the ENDs the node's coordinators owe, one `EndAll` entry per coordinator shard
    /// every [`END_FLUSH`], until shutdown (then once more). An END that fails goes back.
    pub(crate) async fn flush_ends(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(END_FLUSH);
        loop {
            let stopping = tokio::select! {
                _ = ticker.tick() => *shutdown.borrow(),
                _ = shutdown.changed() => true,
            };
            let owed = std::mem::take(&mut *self.ends.lock());
            if !owed.is_empty() {
                if let Ok(client) = self.client() {
                    for (group, txns) in owed {
                        let op = ShardTxnOp::EndAll { txns: txns.clone() };
                        if client.propose_to_group(group, op, None).await.is_err() && !stopping {
                            let mut ends = self.ends.lock();
                            let total: usize = ends.values().map(Vec::len).sum();
                            if total + txns.len() <= MAX_DEFERRED_ENDS {
                                ends.entry(group).or_default().extend(txns);
                            }
                        }
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Watches the data groups' prepared transactions until shutdown, resolving those prepared
    /// too long through their coordinator shards.
    pub(crate) async fn resolve(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut resolvers: BTreeMap<u64, Resolver> = BTreeMap::new();
        let node = self.config.node_id;
        let mut ticker = tokio::time::interval(RESOLVE_TICK);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let Ok(shards) = self.shards() else {
                continue;
            };
            // Groups a split created join as the map shows them.
            let map = self.map();
            for shard in &map.shards {
                resolvers
                    .entry(shard.group)
                    .or_insert_with(|| Resolver::new(shard.group, RESOLVE_AFTER, 2));
            }
            for (&group, resolver) in resolvers.iter_mut() {
                // A group with nothing prepared here is not asked (an idle group stays quiet,
                // and a thousand of them cost no requests); its resolver forgets what it held.
                if self.table.get(group).prepared == 0 {
                    driver::resolve_round(&shards, resolver, &BTreeMap::new()).await;
                    continue;
                }
                let epoch = map.shard(group).map_or(0, |s| s.epoch);
                // This node's own view of the group (a stale read: no leader round needed).
                let request = Request::Routed {
                    group,
                    epoch,
                    request: Box::new(Request::Read {
                        consistency: Consistency::Stale,
                        op: ReadOp::Prepared,
                    }),
                };
                let prepared = match shards.client.request_to(node, &request).await {
                    Ok(Reply::Prepared { txns }) => txns.into_iter().collect(),
                    _ => continue,
                };
                let decided = driver::resolve_round(&shards, resolver, &prepared).await;
                if decided > 0 {
                    info!(
                        node,
                        group, decided, "resolved in-doubt cross-shard transactions"
                    );
                }
            }
        }
    }
}

/// A fresh transaction id: random per process (hash seeds), a counter within it.
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}
