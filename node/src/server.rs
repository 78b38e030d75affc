//! The server: opens the store, builds the configured protocol's engine (see `engine`), binds
//! the QUIC endpoint and runs the group's driver; [`serve`] does all that and waits for SIGINT / SIGTERM to shut down cleanly.
//!
//! Start-up order: validate the config, load the certificates, open the data directory (refusing
//! one recorded for another protocol, cluster or node, recovering snapshot + WAL, or bootstrapping a fresh
//! group from `[[members]]`), restore the KV store from the snapshot, bind the endpoint, start
//! the driver. The engine re-applies committed entries after the snapshot on its own.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use net_quic::{Credentials, Endpoint, EndpointConfig, Limits, NodeId as NetNodeId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::{ConfigError, ServeConfig};
use crate::kv::KvError;
use crate::proto::Quorate;
use crate::store::StoreError;

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificates could not be loaded.
    #[error("loading certificates ({paths}): {source}; generate dev certificates with `cargo xtask certs`")]
    Certs {
        /// Certificate, key and CA paths.
        paths: String,
        /// The error.
        #[source]
        source: Box<net_quic::TlsError>,
    },
    /// The certificate names another node.
    #[error("the certificate names {found}, but this node is configured as node {expected}")]
    WrongCertificate {
        /// Configured id.
        expected: u64,
        /// What the certificate names.
        found: String,
    },
    /// The endpoint could not bind.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The listen address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: Box<net_quic::BindError>,
    },
    /// The data directory could not be opened or written (another cluster's, corrupt, ...).
    #[error(transparent)]
    Store(Box<StoreError>),
    /// The data directory's shard layout does not fit the configuration.
    #[error(transparent)]
    Layout(#[from] crate::shards::layout::LayoutError),
    /// The protocol engine refused its state or an operation.
    #[error("consensus: {0}")]
    Consensus(#[from] consensus_core::Error),

    /// The state machine's snapshot or a log entry does not decode.
    #[error("state machine: {0}")]
    Kv(#[from] KvError),
    /// The driver stopped on a fatal condition.
    #[error("server stopped: {0}")]
    Stopped(String),
}

impl From<StoreError> for ServeError {
    fn from(error: StoreError) -> Self {
        ServeError::Store(Box::new(error))
    }
}

/// Entry point of a node (see [`Server::start`]).
#[derive(Debug)]
pub struct Server;

/// A running node: its address, and the way to stop it.
#[derive(Debug)]
pub struct ServerHandle {
    node_id: u64,
    local_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    driver: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Starts a node: opens (or bootstraps) its data directory, binds its endpoint and runs its
    /// driver in the background. Must be called inside a tokio runtime.
    pub async fn start(config: ServeConfig) -> Result<ServerHandle, ServeError> {
        config.validate()?;
        let config = Arc::new(config);
        let (cert, key, ca) = config.cert_paths();
        let cert_error = |source| ServeError::Certs {
            paths: format!(
                "cert {}, key {}, ca {}",
                cert.display(),
                key.display(),
                ca.display()
            ),
            source: Box::new(source),
        };
        let credentials = Credentials::from_pem_files(&cert, &key, &ca).map_err(cert_error)?;
        match credentials.identity(&config.cluster) {
            Ok(net_quic::Identity::Node(NetNodeId(id))) if id == config.node_id => {}
            Ok(other) => {
                return Err(ServeError::WrongCertificate {
                    expected: config.node_id,
                    found: other.to_string(),
                })
            }
            Err(source) => return Err(cert_error(source)),
        }

        let group = crate::engine::open(&config).await?;

        // A restarted peer answers its old connection with a reset at once (net-quic's
        // connection ids survive restarts); a peer that went silent is dropped after the idle
        // timeout, kept short on a cluster link so reconnect attempts start soon.
        let limits = Limits {
            max_frame_len: (config.limits.max_request_bytes as usize)
                .max(config.raft.max_msg_bytes as usize * 2)
                .max(Limits::default().max_frame_len),
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            ..Limits::default()
        };
        let endpoint_config = EndpointConfig {
            cluster: config.cluster.clone(),
            listen: config.listen,
            credentials,
            peers: config
                .members
                .iter()
                .filter(|m| m.id != config.node_id)
                .map(|m| (NetNodeId(m.id), m.addr))
                .collect(),
            limits,
        };
        let (endpoint, receivers) =
            Endpoint::<Quorate>::bind(endpoint_config).map_err(|source| ServeError::Bind {
                addr: config.listen,
                source: Box::new(source),
            })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| ServeError::Stopped(format!("reading the bound address: {e}")))?;
        info!(
            node = config.node_id,
            cluster = %config.cluster,
            %local_addr,
            data_dir = %config.data_dir.display(),
            protocol = %config.protocol,
            replication = ?config.replication,
            snapshot_index = group.snapshot_index,
            keys = group.keys,
            "node started"
        );
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let driver = (group.start)(endpoint, receivers, shutdown_rx);
        Ok(ServerHandle {
            node_id: config.node_id,
            local_addr,
            shutdown_tx,
            driver,
        })
    }
}

impl ServerHandle {
    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The address the endpoint is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the driver has stopped (on its own: a fatal error).
    pub fn is_finished(&self) -> bool {
        self.driver.is_finished()
    }

    /// Stops the node: pending requests are answered, the store is synced and the endpoint
    /// closed. Returns the driver's error if it had stopped on one.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.shutdown_tx.send(true);
        self.wait().await
    }

    /// Stops the node at once, without answering pending requests or handing off leadership
    /// (what a crash looks like to the rest of the cluster, minus losing the page cache).
    pub async fn abort(self) {
        self.driver.abort();
        let _ = self.driver.await;
    }

    /// Waits until the node stops (after [`ServerHandle::shutdown`] or a fatal error).
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.driver.await {
            Ok(result) => result,
            Err(error) => Err(ServeError::Stopped(format!("driver task failed: {error}"))),
        }
    }
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down cleanly. What `quorate serve` calls.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let handle = Server::start(config).await?;
    let ServerHandle {
        node_id,
        shutdown_tx,
        mut driver,
        ..
    } = handle;
    tokio::select! {
        result = &mut driver => {
            return match result {
                Ok(result) => result,
                Err(error) => Err(ServeError::Stopped(format!("driver task failed: {error}"))),
            };
        }
        signal = shutdown_signal() => {
            info!(node = node_id, signal, "shutting down");
        }
    }
    let _ = shutdown_tx.send(true);
    match driver.await {
        Ok(result) => result,
        Err(error) => Err(ServeError::Stopped(format!("driver task failed: {error}"))),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, naming which.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
