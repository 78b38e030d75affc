//! The Rust client of a Quorate cluster: connect to any member, find the leader, retry safely.
//!
//! A [`Client`] knows some members' addresses (at least one), sends each request to the member it
//! believes leads, and follows [`ServerError::NotLeader`] redirects. When a member does not answer
//! or no leader is known yet (an election), it backs off and tries the next member, until the
//! operation's deadline ([`ClientConfig::timeout`]).
//!
//! Writes are exactly-once through a session (see [`crate::proto`]): the client picks a random
//! non-zero id when it is created and numbers its writes 1, 2, 3, ...; every retry of one write
//! carries the same number, so the state machine applies it once and answers a retry with the
//! original result. Reads are served by any member, at one of three levels
//! ([`Consistency`]):
//! - `Linearizable` (the default): never a value older than a write acknowledged (to anyone)
//!   before the read started; costs a round through the leader (ReadIndex) or its lease.
//! - `Sequential` (session-consistent, ZooKeeper's guarantee): the client remembers the newest
//!   store revision any reply gave it ([`Client::revision_seen`]) and sends it with the read; the
//!   member serves from its own state once it has applied that revision, without asking the
//!   leader. So this client reads its own writes and never sees the store go back, on whichever
//!   member; other clients' latest writes may be missing. A member that does not catch up in time
//!   answers [`ServerError::Behind`] and the client asks the next one. These reads go to the
//!   members in turn starting at one chosen by the client id, not to the leader. On a sharded
//!   cluster the session keeps one revision per group; a cross-shard transaction's answer
//!   carries one for every participant (its lock revision there, or later), so the client's
//!   sequential reads on any shard see its own transaction.
//! - `Stale`: the member's local state at once, no promise.
//!
//! ```no_run
//! # async fn demo() -> Result<(), node::client::ClientError> {
//! use node::client::{Client, ClientConfig};
//! use node::proto::Consistency;
//!
//! let endpoints = node::client::parse_endpoints(["127.0.0.1:7001", "127.0.0.1:7002"])?;
//! let config = ClientConfig::from_cert_dir("quorate", "certs".as_ref(), "admin", endpoints)?;
//! let client = Client::connect(config)?;
//! let revision = client.put("greeting", "hello").await?;
//! let kv = client.get("greeting", Consistency::Linearizable).await?;
//! assert_eq!(kv.map(|kv| kv.mod_revision), Some(revision));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

mod peer;
mod shards;
mod xtxn;
use net_quic::{Credentials, Limits, NodeId, RequestError};
pub use peer::{PeerRead, PeerWritten};
use shards::{request_group, ShardCache};
use tracing::debug;

use crate::proto::{
    AdminRequest, Consistency, KeyValue, Member, NodeStatus, Quorate, ReadOp, Reply, Request,
    ServerError, Session, WriteOp, WriteResult,
};
use crate::proto::{Compare, TxnOp, TxnOpResult};

/// How a [`Client`] connects and how long it tries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The cluster name the certificates were issued for.
    pub cluster: String,
    /// This client's certificate and key, and the cluster CA.
    pub credentials: Credentials,
    /// Known members: node id and address. At least one.
    pub endpoints: Vec<(u64, SocketAddr)>,
    /// How long one operation may take, retries and redirects included.
    pub timeout: Duration,
    /// How long one attempt against one member may take before the next member is tried.
    pub attempt_timeout: Duration,
    /// First pause after a failed attempt; doubles per failure up to `backoff_max`, except
    /// while answers show an election under way (then it stays at this).
    pub backoff_initial: Duration,
    /// Longest pause between attempts.
    pub backoff_max: Duration,
    /// How long a member that failed to answer is skipped (and redirects naming it ignored):
    /// after a leader crash, followers keep naming it until they elect another.
    pub suspect_for: Duration,
    /// A file remembering the last leader across processes (a hint; `None`: do not remember).
    pub leader_cache: Option<PathBuf>,
    /// Transport settings (frame size, keep-alive, connect timeout).
    pub limits: Limits,
}

impl ClientConfig {
    /// A configuration with default timings: 5 s per operation, 2 s per attempt, 300 ms to
    /// connect (a member that does not answer a handshake by then is skipped for 2 s), backoff
    /// from 20 ms to 200 ms.
    pub fn new(cluster: &str, credentials: Credentials, endpoints: Vec<(u64, SocketAddr)>) -> Self {
        let limits = Limits {
            // A live member completes a handshake in milliseconds; a dead one must not eat
            // the operation's deadline.
            connect_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_millis(500),
            ..Limits::default()
        };
        ClientConfig {
            cluster: cluster.to_string(),
            credentials,
            endpoints,
            timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            suspect_for: Duration::from_secs(2),
            leader_cache: None,
            limits,
        }
    }

    /// Loads `client-<name>.pem/.key` and `ca.pem` from a certificate folder (as written by
    /// `cargo xtask certs`).
    pub fn from_cert_dir(
        cluster: &str,
        dir: &Path,
        name: &str,
        endpoints: Vec<(u64, SocketAddr)>,
    ) -> Result<Self, ClientError> {
        let credentials =
            Credentials::load_client(dir, name).map_err(|source| ClientError::Credentials {
                dir: dir.display().to_string(),
                name: name.to_string(),
                source,
            })?;
        Ok(Self::new(cluster, credentials, endpoints))
    }
}

/// Parses member addresses: `ID=HOST:PORT` or a bare `HOST:PORT`, which gets the id of its
/// position (1 for the first entry, 2 for the second, ...), as `cargo xtask cluster` numbers its
/// nodes. Host names are resolved.
pub fn parse_endpoints<S: AsRef<str>>(
    entries: impl IntoIterator<Item = S>,
) -> Result<Vec<(u64, SocketAddr)>, ClientError> {
    use std::net::ToSocketAddrs;
    let mut out: Vec<(u64, SocketAddr)> = Vec::new();
    for (position, entry) in entries.into_iter().enumerate() {
        let entry = entry.as_ref().trim();
        if entry.is_empty() {
            continue;
        }
        let bad = |why: &str| ClientError::BadEndpoint {
            entry: entry.to_string(),
            why: why.to_string(),
        };
        let (id, addr) = match entry.split_once('=') {
            Some((id, addr)) => (
                id.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&id| id != 0)
                    .ok_or_else(|| bad("the node id before '=' must be a positive integer"))?,
                addr.trim(),
            ),
            None => (position as u64 + 1, entry),
        };
        let addr = addr
            .to_socket_addrs()
            .map_err(|e| bad(&format!("not a HOST:PORT address ({e})")))?
            .next()
            .ok_or_else(|| bad("the host name resolves to no address"))?;
        if out.iter().any(|&(known, _)| known == id) {
            return Err(bad("this node id is listed twice"));
        }
        out.push((id, addr));
    }
    if out.is_empty() {
        return Err(ClientError::NoEndpoints);
    }
    Ok(out)
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No member address was given.
    #[error("no cluster member given: pass --endpoints HOST:PORT,... or set QUORATE_ENDPOINTS")]
    NoEndpoints,
    /// A member address does not parse.
    #[error("bad endpoint {entry:?}: {why} (write ID=HOST:PORT or HOST:PORT)")]
    BadEndpoint {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// The client certificate could not be loaded.
    #[error("cannot load client certificate client-{name}.pem/.key and ca.pem from {dir}: {source} (create them with `cargo xtask certs --dir {dir} --clients {name}`, or pass --certs / --client-name)")]
    Credentials {
        /// The certificate folder.
        dir: String,
        /// The client name.
        name: String,
        /// Why loading failed.
        #[source]
        source: net_quic::TlsError,
    },
    /// The local QUIC endpoint could not be created.
    #[error("cannot create the client endpoint: {0}")]
    Endpoint(#[from] net_quic::BindError),
    /// No member served the request before the deadline. For a write, it may or may not have
    /// been applied.
    #[error("no leader reachable at {endpoints} within {} ({attempts} attempts; last error: {last}): is the cluster running? try `quorate cluster status`", human_duration(*.elapsed))]
    Unavailable {
        /// The members tried.
        endpoints: String,
        /// Time spent.
        elapsed: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last failure seen.
        last: String,
    },
    /// The cluster refused the request (bad key, unknown node, ...); retrying will not help.
    #[error("{0}")]
    Refused(ServerError),
    /// The member answered with a reply of another kind than the request calls for (a bug).
    #[error("unexpected reply from node {node}: {reply}")]
    UnexpectedReply {
        /// The member that answered.
        node: u64,
        /// The reply, debug-printed.
        reply: String,
    },
}

impl ClientError {
    /// The server's refusal, if that is what this is.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ClientError::Refused(error) => Some(error),
            _ => None,
        }
    }
}

/// What kind of request is being sent, which decides where it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Only the leader serves it (writes, membership, transfer): follow redirects.
    Leader,
    /// Any member serves it (reads, status): prefer the leader, move on on failure.
    Any,
    /// A sequential read: any member, in turn from one chosen by the client id (not the
    /// leader first); one that is behind the session makes the client move on at once.
    Session,
}

/// The client's session state: the next sequence number and the writes awaiting a reply.
#[derive(Debug)]
struct SessionState {
    next_seq: u64,
    in_flight: BTreeSet<u64>,
}

/// A client of a Quorate cluster. Cheap to share behind an `Arc`; every method takes `&self` and
/// many operations may run at once.
pub struct Client {
    config: ClientConfig,
    client_id: u64,
    session: Mutex<SessionState>,
    /// Known member addresses, learnt from the configuration, redirects and membership replies.
    members: Mutex<BTreeMap<u64, SocketAddr>>,
    /// The member believed to lead, per group (group 0 alone on an unsharded cluster).
    leaders: Mutex<BTreeMap<u64, u64>>,
    /// The groups whose leader hint was confirmed by the leader itself in this process (a hint
    /// from the cache or a redirect may name a member that is gone).
    confirmed: Mutex<BTreeSet<u64>>,
    /// Members that failed to answer, and when.
    suspects: Mutex<BTreeMap<u64, Instant>>,
    /// The transport; replaced when a new member address is learnt.
    net: RwLock<Arc<net_quic::Client<Quorate>>>,
    /// The newest store revision a reply carried: what this session's sequential reads ask for.
    revision_seen: std::sync::atomic::AtomicU64,
    /// The same per group of a sharded cluster (each group counts its own revisions).
    group_revisions: Mutex<BTreeMap<u64, u64>>,
    /// The shard map, once fetched.
    shards: ShardCache,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field("members", &self.members)
            .field("leaders", &self.leaders)
            .finish_non_exhaustive()
    }
}

/// A random non-zero 64-bit id. std's `RandomState` is keyed from the operating system's random
/// source, which is all a session id needs (uniqueness among the cluster's clients).
fn random_client_id() -> u64 {
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        hasher.write_u32(std::process::id());
        let id = hasher.finish();
        if id != 0 {
            return id;
        }
    }
}

/// Removes a write from the in-flight set when its future ends, even if it is cancelled.
struct InFlight<'a> {
    client: &'a Client,
    seq: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut session) = self.client.session.lock() {
            session.in_flight.remove(&self.seq);
        }
    }
}

impl Client {
    /// Creates the client (no connection is made until the first request). Must be called
    /// inside a tokio runtime.
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let members: BTreeMap<u64, SocketAddr> = config.endpoints.iter().copied().collect();
        let net = Self::transport(&config, &members)?;
        Ok(Client {
            client_id: random_client_id(),
            session: Mutex::new(SessionState {
                next_seq: 1,
                in_flight: BTreeSet::new(),
            }),
            members: Mutex::new(members),
            leaders: Mutex::new(
                config
                    .leader_cache
                    .as_deref()
                    .and_then(read_leader_cache)
                    .map(|leader| (0, leader))
                    .into_iter()
                    .collect(),
            ),
            confirmed: Mutex::new(BTreeSet::new()),
            suspects: Mutex::new(BTreeMap::new()),
            net: RwLock::new(Arc::new(net)),
            revision_seen: std::sync::atomic::AtomicU64::new(0),
            group_revisions: Mutex::new(BTreeMap::new()),
            shards: ShardCache::default(),
            config,
        })
    }

    fn transport(
        config: &ClientConfig,
        members: &BTreeMap<u64, SocketAddr>,
    ) -> Result<net_quic::Client<Quorate>, ClientError> {
        let any_v6 = members.values().any(|addr| addr.is_ipv6());
        let bind: SocketAddr = if any_v6 {
            "[::]:0".parse().expect("valid address")
        } else {
            "0.0.0.0:0".parse().expect("valid address")
        };
        Ok(net_quic::Client::new(net_quic::ClientConfig {
            cluster: config.cluster.clone(),
            bind,
            credentials: config.credentials.clone(),
            nodes: members
                .iter()
                .map(|(&id, &addr)| (NodeId(id), addr))
                .collect(),
            limits: config.limits.clone(),
        })?)
    }

    /// This client's session id (random, non-zero).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The member this client currently believes leads, if any.
    pub fn leader_hint(&self) -> Option<u64> {
        self.leader_of(0)
    }

    /// The member this client believes leads `group`.
    pub fn leader_of(&self, group: u64) -> Option<u64> {
        self.leaders
            .lock()
            .expect("leader lock")
            .get(&group)
            .copied()
    }

    fn is_confirmed(&self, group: u64) -> bool {
        self.confirmed
            .lock()
            .expect("confirmed lock")
            .contains(&group)
    }

    fn confirm(&self, group: u64, confirmed: bool) {
        let mut groups = self.confirmed.lock().expect("confirmed lock");
        if confirmed {
            groups.insert(group);
        } else {
            groups.remove(&group);
        }
    }

    /// The member addresses known so far.
    pub fn known_members(&self) -> BTreeMap<u64, SocketAddr> {
        self.members.lock().expect("members lock").clone()
    }

    /// Records a member's address; rebuilds the transport if it is new or moved.
    fn learn_member(&self, id: u64, addr: SocketAddr) {
        let members = {
            let mut members = self.members.lock().expect("members lock");
            if members.get(&id) == Some(&addr) {
                return;
            }
            members.insert(id, addr);
            members.clone()
        };
        debug!(id, %addr, "client learnt a member address");
        match Self::transport(&self.config, &members) {
            Ok(net) => *self.net.write().expect("net lock") = Arc::new(net),
            Err(error) => debug!(%error, "could not rebuild the client transport"),
        }
    }

    fn learn_members(&self, members: &[Member]) {
        for member in members {
            if let Some(addr) = member.addr {
                self.learn_member(member.id, addr);
            }
        }
    }

    fn set_leader_of(&self, group: u64, leader: Option<u64>) {
        let changed = {
            let mut leaders = self.leaders.lock().expect("leader lock");
            let old = match leader {
                Some(leader) => leaders.insert(group, leader),
                None => leaders.remove(&group),
            };
            old != leader
        };
        if let (true, 0, Some(leader), Some(path)) =
            (changed, group, leader, &self.config.leader_cache)
        {
            write_leader_cache(path, leader);
        }
    }

    /// Whether `node` failed to answer within the last `suspect_for`.
    fn is_suspect(&self, node: u64) -> bool {
        let mut suspects = self.suspects.lock().expect("suspects lock");
        match suspects.get(&node) {
            Some(since) if since.elapsed() < self.config.suspect_for => true,
            Some(_) => {
                suspects.remove(&node);
                false
            }
            None => false,
        }
    }

    fn suspect(&self, node: u64) {
        self.suspects
            .lock()
            .expect("suspects lock")
            .insert(node, Instant::now());
    }

    fn answered(&self, node: u64) {
        self.suspects.lock().expect("suspects lock").remove(&node);
    }

    fn endpoints_text(&self) -> String {
        let members = self.members.lock().expect("members lock");
        members
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The member to try next: the leader if known, else the members in turn, skipping those
    /// that just failed to answer (unless every member did).
    fn pick(&self, turn: &mut usize, route: Route, group: u64) -> u64 {
        if let Some(leader) = self.leader_of(group).filter(|_| route != Route::Session) {
            let known = self
                .members
                .lock()
                .expect("members lock")
                .contains_key(&leader);
            if known && !self.is_suspect(leader) {
                return leader;
            }
        }
        let ids: Vec<u64> = self
            .members
            .lock()
            .expect("members lock")
            .keys()
            .copied()
            .collect();
        for _ in 0..ids.len() {
            let id = ids[*turn % ids.len()];
            *turn += 1;
            if !self.is_suspect(id) {
                return id;
            }
        }
        let id = ids[*turn % ids.len()];
        *turn += 1;
        id
    }

    /// Sends `request` until a member serves it or the deadline passes.
    async fn call(&self, request: &Request, route: Route) -> Result<(u64, Reply), ClientError> {
        self.call_tracked(request, route, &mut false).await
    }

    /// [`Client::call`], also telling through `uncertain` whether an earlier attempt may have
    /// been executed without its reply reaching us (a timeout, a lost connection, a leader
    /// change): a refusal of the final attempt may then be caused by that earlier execution.
    async fn call_tracked(
        &self,
        request: &Request,
        route: Route,
        uncertain: &mut bool,
    ) -> Result<(u64, Reply), ClientError> {
        let group = request_group(request);
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        let mut backoff = self.config.backoff_initial;
        let mut turn = match route {
            Route::Session => (self.client_id % self.member_count().max(1) as u64) as usize,
            Route::Leader | Route::Any => 0,
        };
        let mut attempts = 0u32;
        let mut immediate = 0usize;
        let mut last = String::from("no attempt finished");
        // A member behind the session, kept for the final error (a last attempt cut short by the
        // deadline would hide it).
        let mut behind: Option<String> = None;
        debug!(?route, leader = ?self.leader_of(group), "client call");
        if route == Route::Leader && !self.is_confirmed(group) {
            // No leader confirmed yet (a fresh process, or the last one stopped answering): ask
            // every member at once rather than spend the deadline on one that may be dead.
            // Followers only redirect, and sessions make a write apply once.
            attempts += 1;
            if let Some(found) = self.fan_out(request, deadline, uncertain, &mut last).await {
                return found;
            }
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let target = self.pick(&mut turn, route, group);
            let budget = self.config.attempt_timeout.min(deadline - now);
            attempts += 1;
            let net = self.net.read().expect("net lock").clone();
            let outcome = net.request(NodeId(target), request, budget).await;
            if outcome.is_ok() {
                self.answered(target);
            }
            // An answer showing an election under way (no leader known, or below: a redirect to
            // a member that just failed to answer) keeps the next pause short: the new leader
            // is typically a vote round away, and a doubled pause would hide it.
            let mut electing = matches!(outcome, Ok(Err(ServerError::NoLeader)));
            let retry_now = match outcome {
                Ok(Ok(reply)) => {
                    debug!(target, attempts, "client served");
                    if route == Route::Leader {
                        self.set_leader_of(group, Some(target));
                        self.confirm(group, true);
                    }
                    self.observe_reply(group, &reply);
                    return Ok((target, reply));
                }
                Ok(Err(error @ ServerError::Behind { .. })) => {
                    // Only this member lags: ask the next one at once.
                    last = format!("node {target}: {error}");
                    behind = Some(last.clone());
                    !turn.is_multiple_of(self.member_count())
                }
                Ok(Err(ServerError::NotLeader {
                    leader,
                    leader_addr,
                })) => {
                    last = format!("node {target} is not the leader");
                    if let (Some(leader), Some(addr)) = (leader, leader_addr) {
                        self.learn_member(leader, addr);
                    }
                    match leader {
                        // A hint naming a member that just failed to answer is stale (the
                        // followers have not elected another leader yet): ask the others.
                        Some(leader) if self.is_suspect(leader) => {
                            electing = true;
                            self.set_leader_of(group, None);
                            !turn.is_multiple_of(self.member_count())
                        }
                        Some(leader) if leader != target => {
                            self.set_leader_of(group, Some(leader));
                            // A fresh hint: follow it at once, but only once per attempt
                            // budget so that two members pointing at each other cannot spin.
                            !attempts.is_multiple_of(4)
                        }
                        _ => {
                            self.set_leader_of(group, None);
                            false
                        }
                    }
                }
                Ok(Err(error)) if is_transient(&error) => {
                    last = format!("node {target}: {error}");
                    if matches!(error, ServerError::Timeout | ServerError::LeaderChanged) {
                        *uncertain = true;
                    }
                    if self.leader_of(group) == Some(target) {
                        self.set_leader_of(group, None);
                    }
                    false
                }
                Ok(Err(error)) => return Err(ClientError::Refused(error)),
                Err(error) => {
                    if !matches!(
                        error,
                        RequestError::UnknownNode(_) | RequestError::Connect(_)
                    ) {
                        *uncertain = true;
                    }
                    last = format!("node {target}: {}", describe_request_error(&error));
                    self.suspect(target);
                    if self.leader_of(group) == Some(target) {
                        self.set_leader_of(group, None);
                        self.confirm(group, false);
                    }
                    // A member that cannot be reached: try the next one without waiting,
                    // unless every member has just failed.
                    matches!(error, RequestError::Timeout(_))
                        || !turn.is_multiple_of(self.member_count())
                }
            };
            debug!(target, attempts, %last, "client attempt failed");
            // At most one round over the members without a pause: two members naming each
            // other (or a stale leader) must not make the client spin.
            let retry_now = retry_now && immediate < self.member_count();
            immediate = if retry_now { immediate + 1 } else { 0 };
            if !retry_now {
                let pause = if electing {
                    self.config.backoff_initial
                } else {
                    backoff
                };
                let pause = pause.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                if !electing {
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
        let last = match behind {
            Some(behind) if behind != last => format!("{last}; before that, {behind}"),
            _ => last,
        };
        Err(ClientError::Unavailable {
            endpoints: self.endpoints_text(),
            elapsed: started.elapsed(),
            attempts,
            last,
        })
    }

    /// Sends `request` to every member not suspected, at once, and returns the first reply that
    /// serves it. Refusals leave their leader hints behind; members that do not answer become
    /// suspects. `None`: nobody served it (the caller's retry loop goes on from the hints).
    async fn fan_out(
        &self,
        request: &Request,
        deadline: Instant,
        uncertain: &mut bool,
        last: &mut String,
    ) -> Option<Result<(u64, Reply), ClientError>> {
        let group = request_group(request);
        let ids: Vec<u64> = {
            let members = self.members.lock().expect("members lock");
            members
                .keys()
                .copied()
                .filter(|&id| !self.is_suspect(id))
                .collect()
        };
        if ids.len() < 2 {
            return None;
        }
        let budget = self
            .config
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let net = self.net.read().expect("net lock").clone();
        let mut attempts: Vec<_> = ids
            .iter()
            .map(|&id| {
                let net = net.clone();
                Box::pin(async move { (id, net.request(NodeId(id), request, budget).await) })
            })
            .collect();
        let mut hint = None;
        while !attempts.is_empty() {
            let ((id, outcome), _, rest) = select_first(attempts).await;
            attempts = rest;
            match outcome {
                Ok(Ok(reply)) => {
                    debug!(target = id, "client served by the fan-out");
                    self.answered(id);
                    self.set_leader_of(group, Some(id));
                    self.confirm(group, true);
                    self.observe_reply(group, &reply);
                    // The others' answers (redirects, or a dead member's timeout) do not matter
                    // now: returning drops their futures, which cancels them.
                    return Some(Ok((id, reply)));
                }
                Ok(Err(ServerError::NotLeader {
                    leader,
                    leader_addr,
                })) => {
                    self.answered(id);
                    *last = format!("node {id} is not the leader");
                    if let (Some(leader), Some(addr)) = (leader, leader_addr) {
                        self.learn_member(leader, addr);
                    }
                    if let Some(leader) = leader.filter(|&l| l != id) {
                        hint = Some(leader);
                    }
                }
                Ok(Err(error)) if is_transient(&error) => {
                    self.answered(id);
                    *last = format!("node {id}: {error}");
                    if matches!(error, ServerError::Timeout | ServerError::LeaderChanged) {
                        *uncertain = true;
                    }
                }
                Ok(Err(error)) => return Some(Err(ClientError::Refused(error))),
                Err(error) => {
                    if !matches!(
                        error,
                        RequestError::UnknownNode(_) | RequestError::Connect(_)
                    ) {
                        *uncertain = true;
                    }
                    *last = format!("node {id}: {}", describe_request_error(&error));
                    self.suspect(id);
                }
            }
        }
        debug!(?hint, %last, "client fan-out served by nobody");
        self.set_leader_of(group, hint.filter(|&h| !self.is_suspect(h)));
        None
    }

    fn member_count(&self) -> usize {
        self.members.lock().expect("members lock").len().max(1)
    }

    /// Starts a write: the next sequence number and the session to send with it.
    fn begin_write(&self) -> (InFlight<'_>, Session) {
        let mut state = self.session.lock().expect("session lock");
        let seq = state.next_seq;
        state.next_seq += 1;
        state.in_flight.insert(seq);
        let first_unacked = *state.in_flight.first().expect("just inserted");
        (
            InFlight { client: self, seq },
            Session {
                client_id: self.client_id,
                seq,
                first_unacked,
            },
        )
    }

    /// Applies a write under the next sequence number of this client's session; retries keep
    /// that number, so the write is applied at most once.
    pub async fn write(&self, op: WriteOp) -> Result<WriteResult, ClientError> {
        let (_in_flight, session) = self.begin_write();
        self.write_in_session(session, op).await
    }

    /// Sends a write with an explicit session (client id, sequence number). Sending the same
    /// session twice applies the write once and answers both with the same result; tools and
    /// tests use this to replay a write whose reply was lost.
    pub async fn write_in_session(
        &self,
        session: Session,
        op: WriteOp,
    ) -> Result<WriteResult, ClientError> {
        let keys = op.keys();
        let build = |_| Request::Write {
            session,
            op: op.clone(),
        };
        match self
            .call_keyed(&keys, Route::Leader, &mut false, build)
            .await?
        {
            (_, Reply::Write(result)) => Ok(result),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// A session for [`Client::write_in_session`]: this client's id and a fresh sequence number.
    pub fn new_session(&self) -> Session {
        let mut state = self.session.lock().expect("session lock");
        let seq = state.next_seq;
        state.next_seq += 1;
        Session {
            client_id: self.client_id,
            seq,
            first_unacked: state.in_flight.first().copied().unwrap_or(seq),
        }
    }

    /// Sets `key` to `value`; returns the store revision of the write.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        let op = WriteOp::Put {
            key: key.into(),
            value: value.into(),
        };
        match self.write(op).await? {
            WriteResult::Put { revision } => Ok(revision),
            other => Err(unexpected_write(&other)),
        }
    }

    /// Deletes `key`; returns whether it existed, and the store revision after the request.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<(bool, u64), ClientError> {
        match self.write(WriteOp::Delete { key: key.into() }).await? {
            WriteResult::Delete { revision, deleted } => Ok((deleted, revision)),
            other => Err(unexpected_write(&other)),
        }
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: if it is absent).
    pub async fn cas(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: impl Into<Bytes>,
    ) -> Result<CasOutcome, ClientError> {
        let op = WriteOp::Cas {
            key: key.into(),
            expected,
            new: new.into(),
        };
        match self.write(op).await? {
            WriteResult::Cas {
                succeeded: true,
                revision,
                ..
            } => Ok(CasOutcome::Swapped { revision }),
            WriteResult::Cas {
                succeeded: false,
                revision,
                current,
            } => Ok(CasOutcome::Mismatch { revision, current }),
            other => Err(unexpected_write(&other)),
        }
    }

    /// Runs a transaction: if every compare holds, the `success` ops, else the `failure` ops, as
    /// one atomic write at one store revision (etcd's `Txn`).
    pub async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> Result<TxnOutcome, ClientError> {
        let op = WriteOp::Txn {
            compares,
            success,
            failure,
        };
        // Know the map first: a plain Txn sent to every member at once (a fresh client's first
        // write) would be coordinated by each of them if it spans shards.
        if !self.shards.is_known() {
            self.refresh_shard_map().await?;
        }
        let result = match self.write(op.clone()).await {
            // Keys on several shards: a member coordinates its two-phase commit.
            Err(ClientError::Refused(ServerError::CrossShard { .. })) => {
                self.cross_shard_txn(op).await?
            }
            other => other?,
        };
        match result {
            WriteResult::Txn {
                succeeded,
                revision,
                results,
            }
            | WriteResult::CrossShardTxn {
                succeeded,
                revision,
                results,
                ..
            } => Ok(TxnOutcome {
                succeeded,
                revision,
                results,
            }),
            other => Err(unexpected_write(&other)),
        }
    }

    /// The newest store revision this client has seen in a reply: a sequential read never
    /// returns an older state. Hand it to another client (or a later CLI run, `--min-revision`)
    /// to carry the session on.
    pub fn revision_seen(&self) -> u64 {
        self.revision_seen.load(Ordering::Relaxed)
    }

    /// Raises the session's revision to at least `revision` (seen elsewhere).
    pub fn observe_revision(&self, revision: u64) {
        self.revision_seen.fetch_max(revision, Ordering::Relaxed);
    }

    /// Raises the session's revisions to what `reply`, from `group`, shows: its revision, or a
    /// cross-shard transaction's revision of every participant group (the answer comes from
    /// whichever member coordinated it, for no group of its own).
    fn observe_reply(&self, group: u64, reply: &Reply) {
        let shown: Vec<(u64, u64)> = match reply {
            Reply::Write(WriteResult::CrossShardTxn {
                revision,
                shard_revisions,
                ..
            }) => {
                self.observe_revision(*revision);
                shard_revisions.clone()
            }
            _ => match reply_revision(reply) {
                Some(revision) => {
                    self.observe_revision(revision);
                    vec![(group, revision)]
                }
                None => Vec::new(),
            },
        };
        if shown.is_empty() {
            return;
        }
        let mut revisions = self.group_revisions.lock().expect("revisions lock");
        for (group, revision) in shown {
            let seen = revisions.entry(group).or_default();
            *seen = (*seen).max(revision);
        }
    }

    /// The newest revision of `group` this session saw (every revision, unsharded).
    fn revision_of(&self, group: u64) -> u64 {
        if !self.shards.is_sharded() {
            return self.revision_seen();
        }
        let revisions = self.group_revisions.lock().expect("revisions lock");
        revisions.get(&group).copied().unwrap_or(0)
    }

    /// `consistency` with this session's revision of `group` filled in, and where to send it.
    fn in_session(&self, consistency: Consistency, group: u64) -> (Consistency, Route) {
        match consistency {
            Consistency::Sequential { min_revision } => (
                Consistency::Sequential {
                    min_revision: min_revision.max(self.revision_of(group)),
                },
                Route::Session,
            ),
            other => (other, Route::Any),
        }
    }

    /// Reads `key`.
    pub async fn get(
        &self,
        key: impl Into<Bytes>,
        consistency: Consistency,
    ) -> Result<Option<KeyValue>, ClientError> {
        Ok(self.get_with_revision(key, consistency).await?.1)
    }

    /// Reads `key`; also returns the store revision the read saw.
    pub async fn get_with_revision(
        &self,
        key: impl Into<Bytes>,
        consistency: Consistency,
    ) -> Result<(u64, Option<KeyValue>), ClientError> {
        let key: Bytes = key.into();
        let (_, route) = self.in_session(consistency, 0);
        let build = |group| Request::Read {
            consistency: self.in_session(consistency, group).0,
            op: ReadOp::Get { key: key.clone() },
        };
        match self.call_keyed(&[&key], route, &mut false, build).await? {
            (_, Reply::Get { revision, kv }) => Ok((revision, kv)),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Reads `key` from one member only (no redirect, no retry on another member): how a test
    /// checks what a particular follower serves.
    pub async fn get_from(
        &self,
        node: u64,
        key: impl Into<Bytes>,
        consistency: Consistency,
    ) -> Result<Option<KeyValue>, ClientError> {
        let key: Bytes = key.into();
        let build = |group| Request::Read {
            consistency: self.in_session(consistency, group).0,
            op: ReadOp::Get { key: key.clone() },
        };
        match self.call_one_keyed(node, &key, build).await? {
            Reply::Get { kv, .. } => Ok(kv),
            other => Err(unexpected(node, &other)),
        }
    }

    /// Lists pairs with keys in `start..end` (`end: None`: to the last key), at most `limit`
    /// (0: the server's maximum). Returns the pairs and whether more remain. On a sharded cluster
    /// the shards are read one after the other in key order (the page's revision is the highest
    /// of theirs; with `limit` 0 each shard returns up to the server's maximum).
    pub async fn scan(
        &self,
        start: impl Into<Bytes>,
        end: Option<Bytes>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<ScanPage, ClientError> {
        let start: Bytes = start.into();
        if self.cached_shard_map().is_sharded() {
            return self.scan_shards(start, end, limit, consistency).await;
        }
        let (session_consistency, route) = self.in_session(consistency, 0);
        let request = Request::Read {
            consistency: session_consistency,
            op: ReadOp::Scan {
                start: start.clone(),
                end: end.clone(),
                limit,
            },
        };
        let result = match self.call(&request, route).await {
            // A sharded cluster: learn its map and scan shard by shard.
            Err(ClientError::Refused(ServerError::WrongShard { .. })) => {
                if self.refresh_shard_map().await?.is_sharded() {
                    return self.scan_shards(start, end, limit, consistency).await;
                }
                self.call(&request, route).await?
            }
            other => other?,
        };
        match result {
            (
                _,
                Reply::Scan {
                    revision,
                    kvs,
                    more,
                },
            ) => Ok(ScanPage {
                revision,
                kvs,
                more,
            }),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// The status of the first member that answers (the leader if known).
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        match self
            .call(&Request::Admin(AdminRequest::Status), Route::Any)
            .await?
        {
            (_, Reply::Status(status)) => {
                self.learn_members(&status.members);
                Ok(status)
            }
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// The status of one member, asked once within the operation timeout.
    pub async fn status_of(&self, node: u64) -> Result<NodeStatus, ClientError> {
        match self
            .call_one(node, &Request::Admin(AdminRequest::Status))
            .await?
        {
            Reply::Status(status) => Ok(status),
            other => Err(unexpected(node, &other)),
        }
    }

    /// The status of every known member, asked at once; members that do not answer in time get
    /// their error. First learns the membership from any member.
    pub async fn status_all(&self) -> Vec<(u64, Result<NodeStatus, ClientError>)> {
        // Learn the full membership first; if nobody answers, ask the known addresses anyway.
        let _ = self.members().await;
        let ids: Vec<u64> = self.known_members().keys().copied().collect();
        let asks = ids
            .iter()
            .map(|&id| async move { (id, self.status_of(id).await) });
        futures_join_all(asks).await
    }

    /// The membership, as the first member that answers sees it (the leader if known), and the
    /// leader it knows.
    pub async fn members(&self) -> Result<(Vec<Member>, Option<u64>), ClientError> {
        match self
            .call(&Request::Admin(AdminRequest::Members), Route::Any)
            .await?
        {
            (_, Reply::Members { members, leader }) => {
                self.learn_members(&members);
                Ok((members, leader))
            }
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Adds member `id` listening at `addr` (as a learner if `learner`).
    pub async fn add_member(
        &self,
        id: u64,
        addr: SocketAddr,
        learner: bool,
    ) -> Result<(), ClientError> {
        let mut uncertain = false;
        let result = self
            .admin(
                AdminRequest::AddMember { id, addr, learner },
                &mut uncertain,
            )
            .await;
        match result {
            // A retry refused because an earlier, unanswered attempt already added the node.
            Err(ClientError::Refused(ServerError::InvalidMembership(_))) if uncertain => {
                let (members, _) = self.members().await?;
                if !members.iter().any(|m| m.id == id) {
                    return result;
                }
            }
            other => other?,
        }
        self.learn_member(id, addr);
        Ok(())
    }

    /// Removes member `id`.
    pub async fn remove_member(&self, id: u64) -> Result<(), ClientError> {
        let mut uncertain = false;
        let result = self
            .admin(AdminRequest::RemoveMember { id }, &mut uncertain)
            .await;
        match result {
            // A retry refused because an earlier, unanswered attempt already removed the node
            // (a node that never was a member is refused on the first attempt).
            Err(ClientError::Refused(ServerError::UnknownNode(node)))
                if uncertain && node == id =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Asks the leader to hand leadership to `to`; returns once `to` leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ClientError> {
        self.admin(AdminRequest::TransferLeader { to }, &mut false)
            .await?;
        self.set_leader_of(0, Some(to));
        Ok(())
    }

    async fn admin(&self, request: AdminRequest, uncertain: &mut bool) -> Result<(), ClientError> {
        match self
            .call_tracked(&Request::Admin(request), Route::Leader, uncertain)
            .await?
        {
            (_, Reply::Done) => Ok(()),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// One request to one member, retried on that member only (transport failures, elections)
    /// until the operation timeout.
    async fn call_one(&self, node: u64, request: &Request) -> Result<Reply, ClientError> {
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        let mut backoff = self.config.backoff_initial;
        let mut attempts = 0u32;
        let mut last = String::from("no attempt finished");
        while Instant::now() < deadline {
            attempts += 1;
            let budget = self
                .config
                .attempt_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let net = self.net.read().expect("net lock").clone();
            match net.request(NodeId(node), request, budget).await {
                Ok(Ok(reply)) => {
                    self.observe_reply(request_group(request), &reply);
                    return Ok(reply);
                }
                Ok(Err(error)) if is_transient(&error) => last = error.to_string(),
                Ok(Err(error)) => return Err(ClientError::Refused(error)),
                Err(RequestError::UnknownNode(_)) => {
                    return Err(ClientError::Refused(ServerError::UnknownNode(node)))
                }
                Err(error) => last = describe_request_error(&error),
            }
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
        let addr = self
            .known_members()
            .get(&node)
            .map(|addr| addr.to_string())
            .unwrap_or_else(|| "?".into());
        Err(ClientError::Unavailable {
            endpoints: format!("{node}={addr}"),
            elapsed: started.elapsed(),
            attempts,
            last,
        })
    }

    /// Closes the connections (waits briefly for the close to reach the members).
    pub async fn close(&self) {
        let net = self.net.read().expect("net lock").clone();
        net.close().await;
    }
}

/// Polls futures concurrently until the first one finishes; returns its output, its position and
/// the others (still running).
async fn select_first<F: std::future::Future + Unpin>(
    mut futures: Vec<F>,
) -> (F::Output, usize, Vec<F>) {
    debug_assert!(!futures.is_empty(), "something to wait for");
    let (output, index) = std::future::poll_fn(|cx| {
        for (index, future) in futures.iter_mut().enumerate() {
            if let std::task::Poll::Ready(output) = std::pin::Pin::new(future).poll(cx) {
                return std::task::Poll::Ready((output, index));
            }
        }
        std::task::Poll::Pending
    })
    .await;
    futures.remove(index);
    (output, index, futures)
}

/// Polls futures concurrently and returns their outputs in order (a small `join_all`, to
/// avoid a dependency for one use).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("all ready")).collect()
}

/// The result of a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value matched and was replaced.
    Swapped {
        /// Revision of the write.
        revision: u64,
    },
    /// The value did not match; nothing was written.
    Mismatch {
        /// Store revision at the time.
        revision: u64,
        /// The current pair (`None`: the key is absent).
        current: Option<KeyValue>,
    },
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every compare held (the success branch ran; else the failure branch).
    pub succeeded: bool,
    /// Store revision after the transaction.
    pub revision: u64,
    /// What each op of the branch that ran did.
    pub results: Vec<TxnOpResult>,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Store revision the scan saw.
    pub revision: u64,
    /// Pairs in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether the limit cut the range short.
    pub more: bool,
}

/// Whether another attempt (same member later, or another member) may succeed.
/// The leader remembered by an earlier process, if the cache file holds one.
fn read_leader_cache(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().filter(|&id| id != 0)
}

/// Remembers `leader` for the next process (best effort: a hint, never an error).
fn write_leader_cache(path: &Path, leader: u64) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{leader}\n"))?;
        std::fs::rename(&tmp, path)
    };
    if let Err(error) = write() {
        debug!(path = %path.display(), %error, "leader hint not cached");
    }
}

fn is_transient(error: &ServerError) -> bool {
    matches!(
        error,
        ServerError::NotLeader { .. }
            | ServerError::NoLeader
            | ServerError::Timeout
            | ServerError::Busy(_)
            | ServerError::LeaderChanged
            | ServerError::ShuttingDown
            | ServerError::Behind { .. }
            | ServerError::Locked { .. }
    )
}

/// The store revision a reply shows this session (the state it reflects includes everything up
/// to it).
fn reply_revision(reply: &Reply) -> Option<u64> {
    match reply {
        Reply::Write(
            WriteResult::Put { revision }
            | WriteResult::Delete { revision, .. }
            | WriteResult::Cas { revision, .. }
            | WriteResult::Txn { revision, .. },
        )
        | Reply::Get { revision, .. }
        | Reply::Scan { revision, .. } => Some(*revision),
        // Per group: see `Client::observe_reply`.
        Reply::Write(
            WriteResult::Shard(_) | WriteResult::Split(_) | WriteResult::CrossShardTxn { .. },
        )
        | Reply::Status(_)
        | Reply::Members { .. }
        | Reply::Done
        | Reply::Peer(_)
        | Reply::Shards(_)
        | Reply::Prepared { .. } => None,
    }
}

fn describe_request_error(error: &RequestError) -> String {
    match error {
        RequestError::Timeout(after) => format!("no reply within {}", human_duration(*after)),
        RequestError::Connection(e) => format!("connection failed: {e}"),
        other => other.to_string(),
    }
}

/// A duration as people read it: `850ms`, `1.2s`.
pub fn human_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

fn unexpected(node: u64, reply: &Reply) -> ClientError {
    ClientError::UnexpectedReply {
        node,
        reply: format!("{reply:?}"),
    }
}

fn unexpected_write(result: &WriteResult) -> ClientError {
    ClientError::UnexpectedReply {
        node: 0,
        reply: format!("{result:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_ids_by_position_or_explicitly() {
        let parsed = parse_endpoints(["127.0.0.1:7001", "127.0.0.1:7002"]).unwrap();
        assert_eq!(
            parsed,
            vec![
                (1, "127.0.0.1:7001".parse().unwrap()),
                (2, "127.0.0.1:7002".parse().unwrap())
            ]
        );
        let parsed = parse_endpoints(["7=127.0.0.1:9000"]).unwrap();
        assert_eq!(parsed, vec![(7, "127.0.0.1:9000".parse().unwrap())]);
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_entry_named() {
        let error = parse_endpoints(["nonsense"]).unwrap_err();
        assert!(error.to_string().contains("\"nonsense\""), "{error}");
        assert!(matches!(
            parse_endpoints(["0=127.0.0.1:1"]),
            Err(ClientError::BadEndpoint { .. })
        ));
        assert!(matches!(
            parse_endpoints(["1=127.0.0.1:1", "1=127.0.0.1:2"]),
            Err(ClientError::BadEndpoint { .. })
        ));
        assert!(matches!(
            parse_endpoints(Vec::<String>::new()),
            Err(ClientError::NoEndpoints)
        ));
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(Duration::from_millis(945)), "945ms");
        assert_eq!(human_duration(Duration::from_millis(1001)), "1.0s");
        assert_eq!(human_duration(Duration::from_millis(12_340)), "12.3s");
    }

    #[test]
    fn client_ids_are_nonzero_and_differ() {
        let a = random_client_id();
        let b = random_client_id();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }
}
