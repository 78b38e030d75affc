//! The command line of `quorate`, declared with clap's derive API.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `quorate`: a replicated key-value store on Raft, WAL and QUIC.
#[derive(Parser, Debug)]
#[command(
    name = "quorate",
    version,
    about = "Quorate: a replicated key-value store (Raft + WAL + QUIC)",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Options every client command shares.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The exit codes, as shown by `quorate --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the request was served but its condition failed (get/del: key not found; cas: value differed)
  2  bad command line
  3  the cluster could not be reached, or no leader answered in time
  4  the cluster refused the request (key or value too large, unknown node id, ...)
  5  local setup problem (certificate files, config file, data directory)";

/// Options shared by the client commands (`kv`, `cluster`).
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Cluster members to contact, comma-separated: `ID=HOST:PORT` or `HOST:PORT` (plain addresses
    /// are numbered 1, 2, 3, ... in order, as `cargo xtask cluster` numbers its nodes).
    #[arg(
        long,
        global = true,
        env = "QUORATE_ENDPOINTS",
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Folder with `ca.pem` and `client-NAME.pem/.key` (as written by `cargo xtask certs`).
    #[arg(long, global = true, env = "QUORATE_CERTS")]
    pub certs: Option<PathBuf>,
    /// The client certificate to use: `client-NAME.pem` in the certificate folder.
    #[arg(
        long,
        global = true,
        env = "QUORATE_CLIENT_NAME",
        default_value = "admin"
    )]
    pub client_name: String,
    /// The cluster name the certificates were issued for.
    #[arg(
        long,
        global = true,
        env = "QUORATE_CLUSTER",
        default_value = "quorate"
    )]
    pub cluster: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up after this long, retries included (e.g. `500ms`, `5s`, `1m`).
    #[arg(long, global = true, env = "QUORATE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one node of the cluster.
    Serve(ServeArgs),
    /// Read and write keys.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Inspect and change the cluster's membership and leadership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `quorate serve`: flags override the config file, and `QUORATE_*` environment variables
/// override it too (a flag wins over its variable).
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The node's TOML configuration file.
    #[arg(long, short = 'c', env = "QUORATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (its certificate must be `node-ID.pem`).
    #[arg(long, env = "QUORATE_ID")]
    pub id: Option<u64>,
    /// Address to listen on (peers and clients share it), e.g. `127.0.0.1:7001`.
    #[arg(long, env = "QUORATE_LISTEN")]
    pub listen: Option<String>,
    /// Initial members, comma-separated `ID=HOST:PORT` (this node included).
    #[arg(long, env = "QUORATE_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Where the WAL and snapshots live.
    #[arg(long, env = "QUORATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder with `ca.pem` and `node-ID.pem/.key`.
    #[arg(long = "certs", env = "QUORATE_CERTS")]
    pub certs: Option<PathBuf>,
    /// Join an existing cluster instead of bootstrapping a new one.
    #[arg(long, env = "QUORATE_JOIN")]
    pub join: bool,
    /// Replication protocol: `raft`, `multi-paxos` or `zab` (overrides `protocol` in the file).
    #[arg(long, env = "QUORATE_PROTOCOL")]
    pub protocol: Option<String>,
    /// `consensus` (one group running `protocol`), `peer` (multi-master; `[peer]` settings) or
    /// `primary-backup` (PacificA; `[primary_backup]` settings).
    #[arg(long, env = "QUORATE_REPLICATION")]
    pub replication: Option<String>,
    /// Primary-backup: when the primary acknowledges a write, `all`, `quorum` or `async`
    /// (overrides `ack` in `[primary_backup]`).
    #[arg(long, env = "QUORATE_ACK")]
    pub ack: Option<String>,
    /// Bootstrap N key-range shards (the first key byte divided evenly; `[shards] count = N`),
    /// each its own group on every member, plus the meta group holding the shard map. Fixed at
    /// bootstrap: a restart must give the same.
    #[arg(long, env = "QUORATE_SHARDS", value_name = "N")]
    pub shards: Option<usize>,
}

/// `quorate kv ...`
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Set KEY to VALUE.
    Put {
        /// The key (UTF-8 text).
        key: String,
        /// The value (UTF-8 text).
        value: String,
        /// Peer replication: the context a `kv get --json` printed; the write supersedes the
        /// siblings it covers (without it, a write beside concurrent ones adds a sibling).
        #[arg(long, value_name = "CONTEXT")]
        context: Option<String>,
        /// Peer replication: replicas that must hold the write durably (default: the cluster's W).
        #[arg(long, value_name = "W")]
        w: Option<u32>,
    },
    /// Print the value of KEY (exit code 1 if there is none).
    Get {
        /// The key.
        key: String,
        /// How fresh the read must be.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        /// With `--consistency sequential`: read a state at least as new as this store revision
        /// (an earlier `put` prints its revision, `--json` reads print theirs), carrying a
        /// session across CLI runs.
        #[arg(long, value_name = "REVISION")]
        min_revision: Option<u64>,
        /// Peer replication: replicas to hear from (default: the cluster's R). A peer read prints
        /// every sibling; `--json` adds the context that resolves them.
        #[arg(long, value_name = "R")]
        r: Option<u32>,
    },
    /// Delete KEY (exit code 1 if there was none).
    Del {
        /// The key.
        key: String,
        /// Peer replication: the context of a read; the delete supersedes what it covers.
        #[arg(long, value_name = "CONTEXT")]
        context: Option<String>,
        /// Peer replication: replicas that must hold the delete durably.
        #[arg(long, value_name = "W")]
        w: Option<u32>,
    },
    /// List keys in [START, END) in order.
    Scan {
        /// First key (inclusive); the beginning if absent.
        start: Option<String>,
        /// End key (exclusive); the end if absent.
        end: Option<String>,
        /// Only keys starting with this prefix (instead of START/END).
        #[arg(long, conflicts_with_all = ["start", "end"])]
        prefix: Option<String>,
        /// At most this many keys.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// How fresh the read must be.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        /// With `--consistency sequential`: read a state at least as new as this store revision
        /// (an earlier `put` prints its revision, `--json` reads print theirs), carrying a
        /// session across CLI runs.
        #[arg(long, value_name = "REVISION")]
        min_revision: Option<u64>,
    },
    /// Compare-and-set: set KEY to NEW only if its value is EXPECTED (or absent, with
    /// `--absent`). Exit code 1 if it was not.
    Cas {
        /// The key.
        key: String,
        /// The value to set.
        new: String,
        /// The value KEY must have now.
        #[arg(long, required_unless_present = "absent")]
        expect: Option<String>,
        /// KEY must not exist now.
        #[arg(long, conflicts_with = "expect")]
        absent: bool,
    },
    /// Run a transaction (etcd's Txn): compares, then the success ops if all hold, else the
    /// failure ops, atomically at one revision. Prints SUCCESS or FAILURE and each op's result;
    /// exit code 1 when the failure branch ran. JSON:
    /// `{"compare":[{"key":"a","version":0}],"success":[{"put":{"key":"a","value":"1"}}],"failure":[{"get":"a"}]}`
    /// (compare on one of value / version / create_revision / mod_revision, op = != < >).
    Txn {
        /// The transaction as JSON text.
        #[arg(value_name = "JSON", conflicts_with = "file")]
        transaction: Option<String>,
        /// Read the transaction's JSON from this file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Peer replication: update a CRDT key (a `[peer.prefixes]` entry names its type). Updates
    /// made concurrently anywhere merge: increments add up, an add wins over a concurrent
    /// remove, a register keeps the latest assignment by hybrid logical clock.
    Update {
        /// The key.
        key: String,
        /// What to do: `incr` (counter), `add` / `remove` (or-set), `assign` (lww-register).
        #[arg(value_enum)]
        op: CrdtOpArg,
        /// The amount (`incr`, may be negative), the element (`add`, `remove`) or the value
        /// (`assign`).
        #[arg(allow_hyphen_values = true)]
        arg: String,
        /// Replicas that must hold the update durably (default: the cluster's W).
        #[arg(long, value_name = "W")]
        w: Option<u32>,
    },
}

/// A CRDT operation of `kv update`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrdtOpArg {
    /// Add ARG (an integer, negative to subtract) to a counter.
    Incr,
    /// Add the element ARG to a set.
    Add,
    /// Remove the element ARG from a set (the adds this replica has seen).
    Remove,
    /// Set a register to ARG.
    Assign,
}

/// How fresh a read must be.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsistencyArg {
    /// Never older than a write acknowledged before the read started (ReadIndex, or the leader's
    /// lease when the cluster runs with `read_mode = "lease"`).
    Linearizable,
    /// Session-consistent: the member asked serves its own state once it has applied at least
    /// the session's revision (read-your-writes and monotonic reads within a session, no leader
    /// round trip; may miss others' latest writes). Each CLI run is a new session: pass
    /// `--min-revision` to carry one on.
    Sequential,
    /// Whatever the node asked has applied; may be old.
    Stale,
}

/// `quorate cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Each member's role, term, commit and applied index.
    Status,
    /// The members and their addresses.
    Members,
    /// Add a member (it must be started with `quorate serve --join`).
    Add {
        /// The new node's id.
        id: u64,
        /// Its address, `HOST:PORT`.
        addr: String,
        /// Add it as a learner (receives the log, does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member.
    Remove {
        /// The node's id.
        id: u64,
    },
    /// Ask the leader to hand leadership to another voter.
    TransferLeader {
        /// The voter to become leader.
        id: u64,
    },
    /// The shards: each key range, its group, the group's leader and keys (as one member knows).
    Shards,
    /// Split the range holding KEY at KEY, online: a new group takes the keys from KEY to the
    /// range's end. Safe to run again (a split done already is reported, not repeated).
    Split {
        /// Where the range divides (UTF-8 text; the new group's first key).
        key: String,
    },
}

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 500ms, 5s or 1m"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        other => return Err(format!("unknown duration unit {other:?}: use ms, s or m")),
    };
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 86_400.0) {
        return Err(format!(
            "{text:?} is out of range: give a positive duration under a day"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_units_people_type() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn cas_needs_an_expectation() {
        assert!(Cli::try_parse_from(["quorate", "kv", "cas", "k", "v"]).is_err());
        assert!(Cli::try_parse_from(["quorate", "kv", "cas", "k", "v", "--absent"]).is_ok());
        assert!(Cli::try_parse_from(["quorate", "kv", "cas", "k", "v", "--expect", "old"]).is_ok());
    }
}
