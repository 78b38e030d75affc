//! The `quorate` command line: `serve` runs a node; `kv` and `cluster` talk to a cluster through
//! [`crate::client::Client`].
//!
//! Output is meant for people by default and for programs with `--json` (one JSON document on
//! stdout, errors included as `{"error": ..., "kind": ...}`). Exit codes are listed in
//! [`args::EXIT_CODES_HELP`] and shown by `quorate --help`.

pub mod args;
mod output;
mod pb_output;
mod peer_output;
mod shards_output;
mod txn;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::client::{parse_endpoints, Client, ClientConfig, ClientError};
use crate::config::ServeConfig;
use args::{Cli, Command, GlobalArgs, ServeArgs};

/// How a command ended, which picks the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (exit 0).
    Success,
    /// Served, but its condition failed: key not found, compare-and-set mismatch (exit 1).
    ConditionFailed,
}

/// A failure of a command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The cluster could not be reached or had no leader in time (exit 3).
    #[error("{0}")]
    Unavailable(String),
    /// The cluster refused the request (exit 4).
    #[error("{0}")]
    Refused(String),
    /// A local problem: certificates, config, data directory (exit 5).
    #[error("{0}")]
    Local(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Unavailable(_) => 3,
            CliError::Refused(_) => 4,
            CliError::Local(_) => 5,
        }
    }

    /// A short machine-readable name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Usage(_) => "usage",
            CliError::Unavailable(_) => "unavailable",
            CliError::Refused(_) => "refused",
            CliError::Local(_) => "local",
        }
    }
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        let text = error.to_string();
        match error {
            ClientError::NoEndpoints | ClientError::BadEndpoint { .. } => CliError::Usage(text),
            ClientError::Credentials { .. } | ClientError::Endpoint(_) => CliError::Local(text),
            ClientError::Unavailable { .. } => CliError::Unavailable(text),
            ClientError::Refused(_) | ClientError::UnexpectedReply { .. } => {
                CliError::Refused(text)
            }
        }
    }
}

/// Runs the command line of this process and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.global.json;
    match run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::ConditionFailed) => ExitCode::from(1),
        Err(error) => {
            if json {
                output::print_json_error(&error);
            } else {
                eprintln!("error: {error}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<Outcome, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Local(format!("cannot start the async runtime: {e}")))?;
    match cli.command {
        Command::Serve(args) => {
            let config = serve_config(&args)?;
            init_server_logging();
            runtime.block_on(serve_node(config))?;
            Ok(Outcome::Success)
        }
        Command::Kv(command) => runtime.block_on(async {
            init_client_logging();
            let client = client(&cli.global)?;
            let result = output::kv(&client, command, cli.global.json).await;
            close(&client).await;
            result
        }),
        Command::Cluster(command) => runtime.block_on(async {
            init_client_logging();
            let client = client(&cli.global)?;
            let result = output::cluster(&client, command, cli.global.json).await;
            close(&client).await;
            result
        }),
    }
}

/// Runs the node until it is asked to stop.
async fn serve_node(config: ServeConfig) -> Result<(), CliError> {
    crate::server::serve(config)
        .await
        .map_err(|e| CliError::Local(format!("node stopped: {e}")))
}

/// Closes the client's connections. Bounded to 10 ms: the close frames leave at once, and
/// waiting for the connections to drain (three probe timeouts, ~100 ms even on loopback; up
/// to a second for a member that died) only delays the exit after the answer was printed (a
/// failover measurement spent 100 ms of each CLI run here). A member that misses a close
/// frame drops the connection at its idle timeout.
async fn close(client: &Client) {
    let _ = tokio::time::timeout(Duration::from_millis(10), client.close()).await;
}

/// Client commands log only when asked (`QUORATE_LOG=debug` shows every attempt), to stderr.
fn init_client_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("QUORATE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

fn init_server_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUORATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Builds the client of a `kv` or `cluster` command from the global options.
fn client(global: &GlobalArgs) -> Result<Client, CliError> {
    let endpoints = parse_endpoints(&global.endpoints)?;
    let certs = global.certs.as_deref().ok_or_else(|| {
        CliError::Usage(
            "no certificate folder: pass --certs DIR or set QUORATE_CERTS (the folder `cargo xtask cluster` \
             or `cargo xtask certs` wrote, with ca.pem and client-NAME.pem/.key)"
                .to_string(),
        )
    })?;
    let mut config =
        ClientConfig::from_cert_dir(&global.cluster, certs, &global.client_name, endpoints)?;
    config.timeout = global.timeout;
    // Leave time to try every listed member at least once within the operation's deadline.
    let members = config.endpoints.len().max(1) as u32;
    config.attempt_timeout = (global.timeout / members)
        .clamp(Duration::from_millis(300), Duration::from_secs(2))
        .min(global.timeout);
    config.leader_cache = leader_cache_path(&global.cluster, &config.endpoints);
    Ok(Client::connect(config)?)
}

/// Where CLI runs remember the last leader of a cluster (`$XDG_CACHE_HOME/quorate/`, else
/// `~/.cache/quorate/`), keyed by cluster name and endpoints so two clusters never share a hint.
fn leader_cache_path(cluster: &str, endpoints: &[(u64, std::net::SocketAddr)]) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    let key: String = endpoints
        .iter()
        .map(|(id, addr)| format!("{id}={addr},"))
        .collect();
    let name: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(base.join("quorate").join(format!(
        "leader-{name}-{:08x}",
        crc32fast::hash(key.as_bytes())
    )))
}

/// The node configuration of `quorate serve`: the file (if any), then environment variables and
/// flags over it (clap has already let a flag win over its variable).
pub fn serve_config(args: &ServeArgs) -> Result<ServeConfig, CliError> {
    use toml::Value;
    let mut table = match &args.config {
        Some(path) => read_table(path)?,
        None => toml::Table::new(),
    };
    if let Some(id) = args.id {
        let id =
            i64::try_from(id).map_err(|_| CliError::Usage(format!("--id {id} is too large")))?;
        table.insert("node_id".into(), Value::Integer(id));
    }
    if let Some(listen) = &args.listen {
        table.insert("listen".into(), Value::String(listen.clone()));
    }
    if let Some(dir) = &args.data_dir {
        table.insert("data_dir".into(), Value::String(path_text(dir)?));
    }
    if let Some(dir) = &args.certs {
        let mut certs = toml::Table::new();
        certs.insert("dir".into(), Value::String(path_text(dir)?));
        table.insert("certs".into(), Value::Table(certs));
    }
    if let Some(peers) = &args.peers {
        let mut members = Vec::new();
        for peer in peers.iter().filter(|p| !p.trim().is_empty()) {
            let (id, addr) = peer.split_once('=').ok_or_else(|| {
                CliError::Usage(format!(
                    "--peers entry {peer:?} must be ID=HOST:PORT, e.g. 1=127.0.0.1:7001"
                ))
            })?;
            let id: i64 = id.trim().parse().map_err(|_| {
                CliError::Usage(format!("--peers entry {peer:?}: {id:?} is not a node id"))
            })?;
            let mut member = toml::Table::new();
            member.insert("id".into(), Value::Integer(id));
            member.insert("addr".into(), Value::String(addr.trim().to_string()));
            members.push(Value::Table(member));
        }
        table.insert("members".into(), Value::Array(members));
    }
    if let Some(protocol) = &args.protocol {
        table.insert("protocol".into(), Value::String(protocol.clone()));
    }
    if let Some(replication) = &args.replication {
        table.insert("replication".into(), Value::String(replication.clone()));
    }
    if let Some(ack) = &args.ack {
        let section = table
            .entry("primary_backup")
            .or_insert_with(|| Value::Table(toml::Table::new()));
        match section {
            Value::Table(section) => {
                section.insert("ack".into(), Value::String(ack.clone()));
            }
            _ => {
                return Err(CliError::Usage(
                    "primary_backup in the config file must be a table".into(),
                ))
            }
        }
    }
    if args.join {
        table.insert("join".into(), Value::Boolean(true));
    }
    if let Some(count) = args.shards {
        let mut shards = toml::Table::new();
        shards.insert("count".into(), Value::Integer(count as i64));
        table.insert("shards".into(), Value::Table(shards));
    }
    let text = toml::to_string(&table)
        .map_err(|e| CliError::Local(format!("cannot assemble the configuration: {e}")))?;
    ServeConfig::from_toml_str(&text).map_err(|e| {
        let source = match &args.config {
            Some(path) => format!("{} (with flag/env overrides)", path.display()),
            None => "flags and environment (no --config file)".to_string(),
        };
        CliError::Local(format!(
            "bad node configuration from {source}: {e}; a node needs at least node_id, listen and \
             data_dir (flags --id, --listen, --data-dir) and a [certs] dir (--certs)"
        ))
    })
}

fn read_table(path: &Path) -> Result<toml::Table, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Local(format!(
            "cannot read config file {}: {e}; check the --config path",
            path.display()
        ))
    })?;
    text.parse::<toml::Table>().map_err(|e| {
        CliError::Local(format!(
            "config file {} is not valid TOML: {e}",
            path.display()
        ))
    })
}

fn path_text(path: &Path) -> Result<String, CliError> {
    path.to_str().map(str::to_string).ok_or_else(|| {
        CliError::Usage(format!(
            "path {} is not UTF-8; TOML configuration needs UTF-8 paths",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(argv: &[&str]) -> ServeArgs {
        let mut full = vec!["quorate", "serve"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Serve(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn flags_alone_make_a_node_configuration() {
        let args = serve_args(&[
            "--id",
            "2",
            "--listen",
            "127.0.0.1:7002",
            "--data-dir",
            "/tmp/q2",
            "--certs",
            "/tmp/certs",
            "--peers",
            "1=127.0.0.1:7001,2=127.0.0.1:7002",
        ]);
        let config = serve_config(&args).unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.listen, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(config.members.len(), 2);
        assert_eq!(
            config.member_addr(1),
            Some("127.0.0.1:7001".parse().unwrap())
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node_id = 1\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"d1\"\n[certs]\ndir = \"c\"\n\
             [[members]]\nid = 1\naddr = \"127.0.0.1:7001\"\n",
        )
        .unwrap();
        let args = serve_args(&[
            "--config",
            path.to_str().unwrap(),
            "--data-dir",
            "elsewhere",
        ]);
        let config = serve_config(&args).unwrap();
        assert_eq!(config.node_id, 1);
        assert_eq!(config.data_dir, Path::new("elsewhere"));
    }

    #[test]
    fn replication_and_ack_flags_select_primary_backup() {
        let base = [
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7001",
            "--data-dir",
            "/tmp/q1",
            "--certs",
            "/tmp/certs",
            "--peers",
            "1=127.0.0.1:7001",
        ];
        let mut argv = base.to_vec();
        argv.extend(["--replication", "primary-backup", "--ack", "quorum"]);
        let config = serve_config(&serve_args(&argv)).unwrap();
        assert_eq!(
            config.replication,
            crate::config::Replication::PrimaryBackup
        );
        assert_eq!(config.primary_backup.ack, crate::config::AckSetting::Quorum);
        let mut bad = base.to_vec();
        bad.extend(["--replication", "primary-backup", "--ack", "most"]);
        let error = serve_config(&serve_args(&bad)).unwrap_err();
        assert!(error.to_string().contains("async"), "{error}");
    }

    #[test]
    fn a_missing_setting_says_which_flags_give_it() {
        let error = serve_config(&serve_args(&["--id", "1"])).unwrap_err();
        assert_eq!(error.exit_code(), 5);
        assert!(error.to_string().contains("--listen"), "{error}");
    }
}
