//! Project tooling for Quorate, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! Developer tooling that is not the product lives here, in Rust, rather than in shell scripts.
//! One module per command; each owns its arguments.

use clap::{Parser, Subcommand};

mod bench_cluster;
mod bench_cluster_peer;
mod bench_cluster_primary;
mod bench_cluster_shard_load;
mod bench_cluster_shards;
mod bench_cluster_txn;
mod bench_core;
mod bench_net;
mod bench_peer;
mod bench_store;
mod bench_txn;
mod bench_wal;
mod certs;
mod cluster;
mod etcd;
mod plot;
mod sim;
mod sim_bank;
mod sim_peer;
mod sim_primary;
mod sim_txn;
mod zookeeper;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Quorate project tooling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a benchmark and print a table with ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
    /// Run the deterministic protocol simulator over a range of seeds.
    Sim(sim::Args),
    /// Generate a development CA plus node and client certificates into a folder.
    Certs(certs::Args),
    /// Start a local Quorate cluster on loopback (certificates, one node.toml per node) until Ctrl-C.
    Cluster(cluster::Args),
}

#[derive(Subcommand)]
enum Bench {
    /// The write-ahead log against raw write + fdatasync on the same filesystem.
    Wal(bench_wal::Args),
    /// One write-ahead log shared by every group of a node against one log per group.
    Store(bench_store::Args),
    /// The Raft core (three nodes in one process) against tikv's raft-rs.
    Core(bench_core::Args),
    /// The QUIC transport against the same framing over TCP + TLS.
    Net(bench_net::Args),
    /// A local 3-node Quorate cluster under concurrent clients (etcd 3.4 or ZooKeeper 3.8 beside it with --peer).
    Cluster(bench_cluster::Args),
    /// The txn-2pc commit protocols: cost against the literature, blocking, throughput.
    Txn(bench_txn::Args),
    /// replication-peer: Merkle anti-entropy bytes against the data and the full key list.
    Peer(bench_peer::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { what } => match what {
            Bench::Wal(args) => bench_wal::run(args),
            Bench::Store(args) => bench_store::run(args),
            Bench::Core(args) => bench_core::run(args),
            Bench::Net(args) => bench_net::run(args),
            Bench::Cluster(args) => bench_cluster::run(args),
            Bench::Txn(args) => bench_txn::run(args),
            Bench::Peer(args) => bench_peer::run(args),
        },
        Command::Sim(args) => sim::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Cluster(args) => cluster::run(args),
    }
}
