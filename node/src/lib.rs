//! The Quorate replicated key-value node: server, client and the pieces that compose
//! `consensus-core` (Raft, Multi-Paxos), `storage-wal` (durability) and `net-quic` (transport).
//!
//! This crate is the only place where protocols meet disks, clocks and sockets. It stays thin:
//! consensus logic lives in `consensus-core`, bytes on disk in `storage-wal`, bytes on the wire in
//! `net-quic`.
//!
//! - [`proto`]: the client and peer wire messages.
//! - [`config`]: [`config::ServeConfig`], loaded from TOML.
//! - [`kv`]: the replicated key-value state machine with client sessions.
//! - [`server`]: [`server::Server::start`] / [`server::serve`], the entry point of `quorate serve`.
//! - `engine`: builds the configured protocol's engine; `group`: the replica loop's host, the KV
//!   service and the admin layer of one group, for any protocol.
//! - `store`: durable storage of one group (any protocol's hard state) on `storage-wal` (group
//!   commit, snapshots, WAL compaction).
//! - `peer`: `replication = "peer"` — the node runs `replication-peer` (multi-master, any node
//!   takes writes) on its own write-ahead log instead of a consensus group.
//! - `primary`: `replication = "primary-backup"` — the group runs `replication-primary`
//!   (PacificA), its configuration manager a Raft group of the members beside it.
//! - [`shards`]: a sharded node (`[shards]`): the meta group, one group per key range, the
//!   router in front of their loops, the layout recorded in the data directory.
//! - [`xtxn`]: cross-shard transactions — the coordinator (txn-2pc's two-phase engine over the
//!   shards' logs), the in-doubt resolver and the bank simulator.
//! - [`client`] and [`cli`]: the Rust client and the `quorate` command line.

pub mod cli;
pub mod client;
#[cfg(test)]
mod cluster_tests;
pub mod config;
mod engine;
mod group;
pub mod kv;
mod peer;
mod primary;
pub mod proto;
pub mod server;
pub mod shards;
pub mod store;
pub mod xtxn;
