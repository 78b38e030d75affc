//! Shard routing in the client. Until it knows better the client assumes one group and sends
//! requests plain, so an unsharded cluster sees exactly the requests it always did. A sharded
//! cluster's meta group answers a plain key request `WrongShard` (it holds no keys): the client
//! then fetches the shard map from any member (`AdminRequest::Shards`), caches it, and sends every
//! key operation to the group holding its key (`Request::Routed`, to that group's leader, each
//! group with its own leader hint). Every later `WrongShard` (a stale map) fetches the map again
//! and resends, a few times at most.
//!
//! A scan crosses shards in key order: each shard's part of the range, the limit counting down
//! across them. A transaction whose keys are on several shards is refused here with
//! `ServerError::CrossShard`, which `Client::txn` turns into a cross-shard transaction
//! (`client/xtxn.rs`).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::{unexpected, Client, ClientError, Route, ScanPage};
use crate::proto::{
    AdminRequest, Consistency, ReadOp, Reply, Request, ServerError, ShardInfo, ShardMap, SplitPlan,
    WriteOp, WriteResult,
};

/// How often a `WrongShard` answer makes the client fetch the map and resend.
const REROUTES: usize = 5;

/// Back-offs (10 ms doubling to 160 ms) while the refetched map is no newer than the cached one
/// (a split applied at the group before the meta group's map shows it, or the new group not yet
/// running on the member asked), before the client gives up.
const STALE_MAP_BACKOFFS: u32 = 8;

/// The pause before the `attempt`-th refetch of a map that was not newer.
fn stale_map_backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(10 << attempt.min(4))
}

/// The cached shard map.
#[derive(Debug, Default)]
pub(super) struct ShardCache {
    map: RwLock<Option<Arc<ShardMap>>>,
}

impl ShardCache {
    fn get(&self) -> Option<Arc<ShardMap>> {
        self.map.read().expect("shard map lock").clone()
    }

    fn set(&self, map: ShardMap) -> Arc<ShardMap> {
        let map = Arc::new(map);
        *self.map.write().expect("shard map lock") = Some(map.clone());
        map
    }

    /// Whether a map was fetched (or set) at all.
    pub(super) fn is_known(&self) -> bool {
        self.get().is_some()
    }

    /// Whether the cached map has data groups (false before a map was fetched).
    pub(super) fn is_sharded(&self) -> bool {
        self.get().is_some_and(|map| map.is_sharded())
    }
}

/// The group a request is for (0 unless routed).
pub(super) fn request_group(request: &Request) -> u64 {
    match request {
        Request::Routed { group, .. } => *group,
        _ => 0,
    }
}

/// `request` addressed to `shard` (plain on an unsharded cluster).
fn routed(map: &ShardMap, shard: &ShardInfo, request: Request) -> Request {
    if map.is_sharded() {
        Request::Routed {
            group: shard.group,
            epoch: shard.epoch,
            request: Box::new(request),
        }
    } else {
        request
    }
}

/// The one shard holding every key (the first shard when there are none).
fn locate_all<'a>(map: &'a ShardMap, keys: &[&Bytes]) -> Result<&'a ShardInfo, ClientError> {
    let malformed = || {
        ClientError::Refused(ServerError::Internal(
            "the shard map does not cover every key".into(),
        ))
    };
    let Some(first) = keys.first() else {
        return map.shards.first().ok_or_else(malformed);
    };
    let shard = map.locate(first).ok_or_else(malformed)?;
    let mut groups = BTreeSet::new();
    for key in keys {
        groups.insert(map.locate(key).ok_or_else(malformed)?.group);
    }
    if groups.len() > 1 {
        return Err(ClientError::Refused(ServerError::CrossShard {
            groups: groups.into_iter().collect(),
        }));
    }
    Ok(shard)
}

fn is_wrong_shard(result: &Result<(u64, Reply), ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Refused(ServerError::WrongShard { .. }))
    )
}

impl Client {
    /// The shard map as cached: one group until a member answered `WrongShard` (or
    /// [`Client::refresh_shard_map`] was called).
    pub fn cached_shard_map(&self) -> Arc<ShardMap> {
        self.shards
            .get()
            .unwrap_or_else(|| Arc::new(ShardMap::single()))
    }

    /// Fetches the shard map again, with each group's leader and keys as the answering member
    /// knows them (what `quorate cluster shards` shows).
    pub async fn refresh_shard_map(&self) -> Result<Arc<ShardMap>, ClientError> {
        let request = Request::Admin(AdminRequest::Shards);
        match self.call(&request, Route::Any).await {
            Ok((_, Reply::Shards(map))) => {
                for shard in &map.shards {
                    if let Some(leader) = shard.leader {
                        if self.leader_of(shard.group).is_none() {
                            self.set_leader_of(shard.group, Some(leader));
                        }
                    }
                }
                Ok(self.shards.set(map))
            }
            Ok((node, other)) => Err(unexpected(node, &other)),
            // A node that knows no shards runs one group.
            Err(ClientError::Refused(ServerError::Unsupported(_))) => {
                Ok(self.shards.set(ShardMap::single()))
            }
            Err(error) => Err(error),
        }
    }

    /// The shard map as member `node` knows it (its groups' leaders and keys there), asked of
    /// that member only.
    pub async fn shard_map_of(&self, node: u64) -> Result<ShardMap, ClientError> {
        match self
            .call_one(node, &Request::Admin(AdminRequest::Shards))
            .await?
        {
            Reply::Shards(map) => Ok(map),
            other => Err(unexpected(node, &other)),
        }
    }

    /// Sends the request `build` makes for the shard holding `keys` (all on one shard), to the
    /// members as `route` says; re-fetches the map and resends on `WrongShard`.
    pub(super) async fn call_keyed(
        &self,
        keys: &[&Bytes],
        route: Route,
        uncertain: &mut bool,
        build: impl Fn(u64) -> Request,
    ) -> Result<(u64, Reply), ClientError> {
        let mut map = self.cached_shard_map();
        let mut reroute = Reroute::default();
        loop {
            let shard = locate_all(&map, keys)?;
            let request = routed(&map, shard, build(shard.group));
            let result = self.call_tracked(&request, route, uncertain).await;
            if !is_wrong_shard(&result) {
                return result;
            }
            match self.next_map(&map, &mut reroute).await? {
                Some(next) => map = next,
                None => return result,
            }
        }
    }

    /// After a `WrongShard`: the map fetched again, after a back-off if it is not newer than
    /// `stale`; `None` once the reroutes or back-offs are used up.
    async fn next_map(
        &self,
        stale: &ShardMap,
        reroute: &mut Reroute,
    ) -> Result<Option<Arc<ShardMap>>, ClientError> {
        if reroute.newer >= REROUTES {
            return Ok(None);
        }
        let map = self.refresh_shard_map().await?;
        if map.epoch > stale.epoch {
            reroute.newer += 1;
            return Ok(Some(map));
        }
        if reroute.backoffs >= STALE_MAP_BACKOFFS {
            return Ok(None);
        }
        tokio::time::sleep(stale_map_backoff(reroute.backoffs)).await;
        reroute.backoffs += 1;
        Ok(Some(self.refresh_shard_map().await?))
    }

    /// Splits the range holding `key` at `key` (`quorate cluster split`): the meta group records
    /// the plan, then the source group divides its state and every member starts the new group.
    /// Safe to retry: a split recorded already is answered with its plan and not applied twice.
    pub async fn split(&self, key: impl Into<Bytes>) -> Result<SplitPlan, ClientError> {
        let key = key.into();
        let (_in_flight, session) = self.begin_write();
        let request = Request::Write {
            session,
            op: WriteOp::SplitMap { key },
        };
        let plan = match self.call(&request, Route::Leader).await? {
            (_, Reply::Write(WriteResult::Split(plan))) => plan,
            (node, other) => return Err(unexpected(node, &other)),
        };
        self.finish_split(&plan).await?;
        Ok(plan)
    }

    /// The second step of a split the meta group recorded: the source group divides at the plan
    /// (nothing happens if it did already). The meta group's leader also runs it for recorded
    /// splits whose group it does not see running, so a split whose client died in between
    /// completes.
    pub async fn finish_split(&self, plan: &SplitPlan) -> Result<(), ClientError> {
        let (_in_flight, session) = self.begin_write();
        let request = Request::Routed {
            group: plan.source,
            epoch: plan.source_epoch,
            request: Box::new(Request::Write {
                session,
                op: WriteOp::SplitRange(plan.clone()),
            }),
        };
        let mut backoffs = 0;
        loop {
            match self.call(&request, Route::Leader).await {
                Ok((_, Reply::Write(WriteResult::Split(_)))) => break,
                // The source moved past the plan's epoch: this split (or a retry of it) applied.
                Err(ClientError::Refused(ServerError::WrongShard { group, epoch }))
                    if group == plan.source && epoch >= plan.epoch =>
                {
                    break
                }
                // A prepared cross-shard transaction holds a key of the upper half (it is
                // decided shortly), or an earlier split of the source is not applied there yet.
                Err(ClientError::Refused(
                    ServerError::Locked { .. } | ServerError::WrongShard { .. },
                )) if backoffs < STALE_MAP_BACKOFFS => {
                    tokio::time::sleep(stale_map_backoff(backoffs)).await;
                    backoffs += 1;
                }
                Ok((node, other)) => return Err(unexpected(node, &other)),
                Err(error) => return Err(error),
            }
        }
        self.refresh_shard_map().await?;
        Ok(())
    }

    pub(super) async fn call_one_keyed(
        &self,
        node: u64,
        key: &Bytes,
        build: impl Fn(u64) -> Request,
    ) -> Result<Reply, ClientError> {
        let mut map = self.cached_shard_map();
        let mut reroute = Reroute::default();
        loop {
            let shard = locate_all(&map, &[key])?;
            let request = routed(&map, shard, build(shard.group));
            let result = self.call_one(node, &request).await;
            if !matches!(
                result,
                Err(ClientError::Refused(ServerError::WrongShard { .. }))
            ) {
                return result;
            }
            match self.next_map(&map, &mut reroute).await? {
                Some(next) => map = next,
                None => return result,
            }
        }
    }

    pub(super) async fn scan_shards(
        &self,
        start: Bytes,
        end: Option<Bytes>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<ScanPage, ClientError> {
        let mut map = self.cached_shard_map();
        let mut reroute = Reroute::default();
        'reroute: loop {
            let mut page = ScanPage {
                revision: 0,
                kvs: Vec::new(),
                more: false,
            };
            let parts: Vec<(ShardInfo, crate::proto::KeyRange)> = map
                .overlapping(&start, end.as_deref())
                .map(|(shard, part)| (shard.clone(), part))
                .collect();
            for (i, (shard, part)) in parts.iter().enumerate() {
                let remaining = if limit == 0 {
                    0
                } else {
                    limit - page.kvs.len() as u32
                };
                let (consistency, route) = self.in_session(consistency, shard.group);
                let read = Request::Read {
                    consistency,
                    op: ReadOp::Scan {
                        start: part.start.clone(),
                        end: part.end.clone(),
                        limit: remaining,
                    },
                };
                let result = self
                    .call_tracked(&routed(&map, shard, read), route, &mut false)
                    .await;
                if is_wrong_shard(&result) {
                    if let Some(next) = self.next_map(&map, &mut reroute).await? {
                        map = next;
                        continue 'reroute;
                    }
                }
                match result? {
                    (
                        _,
                        Reply::Scan {
                            revision,
                            kvs,
                            more,
                        },
                    ) => {
                        page.revision = page.revision.max(revision);
                        page.kvs.extend(kvs);
                        let full = limit != 0 && page.kvs.len() as u32 >= limit;
                        if more || (full && i + 1 < parts.len()) {
                            page.more = true;
                            return Ok(page);
                        }
                        if full {
                            return Ok(page);
                        }
                    }
                    (node, other) => return Err(unexpected(node, &other)),
                }
            }
            return Ok(page);
        }
    }
}

/// How often a request was sent again after `WrongShard`.
#[derive(Debug, Default)]
struct Reroute {
    /// Maps fetched that were newer.
    newer: usize,
    /// Back-offs taken for maps that were not.
    backoffs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_shard_locate_it_and_keys_of_several_are_cross_shard() {
        let map = ShardMap::from_split_keys(&[Bytes::from_static(b"g")]).unwrap();
        let (a, b, h) = (
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"h"),
        );
        assert_eq!(locate_all(&map, &[&a, &b]).unwrap().group, 1);
        assert_eq!(locate_all(&map, &[&h]).unwrap().group, 2);
        assert_eq!(locate_all(&map, &[]).unwrap().group, 1);
        match locate_all(&map, &[&a, &h]) {
            Err(ClientError::Refused(ServerError::CrossShard { groups })) => {
                assert_eq!(groups, vec![1, 2])
            }
            other => panic!("expected CrossShard, got {other:?}"),
        }
    }

    #[test]
    fn requests_are_routed_only_on_a_sharded_map() {
        let plain = Request::Admin(AdminRequest::Status);
        let single = ShardMap::single();
        assert_eq!(routed(&single, &single.shards[0], plain.clone()), plain);
        let map = ShardMap::from_split_keys(&[Bytes::from_static(b"g")]).unwrap();
        let wrapped = routed(&map, &map.shards[1], plain.clone());
        assert_eq!(request_group(&wrapped), 2);
        assert!(matches!(wrapped, Request::Routed { epoch: 1, .. }));
    }
}
