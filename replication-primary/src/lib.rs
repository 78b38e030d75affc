//! # replication-primary
//!
//! Sans-IO primary-backup replication after PacificA (Lin et al., MSR-TR-2008-25), the model
//! Elasticsearch follows: a primary assigns serial numbers and sends PREPARE to every replica; the
//! commit point travels on later messages; backups catch up by the primary going back to what
//! they acknowledged. The configuration (in-sync set, primary, version, epoch) belongs to a
//! configuration manager outside this crate: replicas take its decisions as inputs
//! ([`Body::Installed`]) and send it [`ChangeRequest`]s based on the version they know, which it
//! refuses when stale ([`ConfigManager`] holds its rules as a pure state machine).
//!
//! - **Fencing.** Every message carries the sender's epoch; a replica refuses anything from a
//!   lower epoch (answering with [`Body::Fenced`]).
//! - **Leases.** A backup's answer to a prepare grants the primary a lease of `lease_ticks` from
//!   the prepare's send time. The primary serves (acknowledges writes, answers reads) only while
//!   it holds a lease from every member; when one runs out it asks the manager to remove that
//!   backup. A backup asks to become primary only after hearing nothing for `grace_ticks ≥
//!   lease_ticks`, so two primaries never serve at once.
//! - **Reconciliation.** A new primary serves only once everything it prepared is committed in its
//!   epoch; a backup syncing to a new epoch cuts whatever that primary never prepared.
//! - **Acknowledgement** ([`Ack`]): `all` (every member of the in-sync set), `quorum` (a majority
//!   of the replicas; a candidate first checks that its durable tail is the best of a majority),
//!   `async` (the primary's own fsync; a failover loses at most [`Config::async_window`]
//!   acknowledged writes: a write is acknowledged only once every member is durable within that
//!   window of it).
//! - **Snapshots.** The host compacts applied entries into local snapshots; a backup behind the
//!   primary's compacted log is sent the primary's latest snapshot ([`Body::Snapshot`]) and
//!   restarts its state and log from it. An `async` backup whose own snapshot holds entries a
//!   failover took back asks for a newer one ([`Body::Resync`]).
//! - Reads at the primary are linearizable under its lease ([`consensus_core::Consensus::read_index`]
//!   only while serving); reads at a backup are stale by [`PrimaryBackup::lag`].
//!
//! It implements [`consensus_core::Consensus`], so the node's replica loop drives it like Raft:
//! messages to [`MANAGER`] go to the configuration manager, its answers come back through `step`.
//! No tokio, files, clocks, threads or unseeded randomness.
//!
//! ```
//! use consensus_core::{Consensus, MemHost, MemStorage, Replica};
//! use replication_primary::{Ack, Body, Config, ConfigManager, Message, PrimaryBackup, MANAGER};
//!
//! // A one-replica group: the replica asks the manager for an epoch, then serves.
//! let cfg = Config::new(1, [1], Ack::All);
//! let mut manager = ConfigManager::new(cfg.bootstrap(), [1]);
//! let mut replica = Replica::new(PrimaryBackup::new(cfg, MemStorage::default()).unwrap());
//! let mut host = MemHost::new();
//! replica.drive(&mut host).unwrap();
//! let request = host.messages.pop().unwrap();
//! let Body::Request(change) = request.body else { panic!("expected a request") };
//! assert_eq!(request.to, MANAGER);
//! let installed = manager.handle(request.from, change).unwrap().clone();
//! let epoch = installed.epoch;
//! replica
//!     .engine_mut()
//!     .step(Message { from: MANAGER, to: 1, epoch, body: Body::Installed(installed) })
//!     .unwrap();
//! replica.drive(&mut host).unwrap();
//! replica.engine_mut().tick();
//! replica.drive(&mut host).unwrap();
//! assert!(replica.engine().is_serving());
//! replica.engine_mut().propose(b"x".to_vec().into()).unwrap();
//! replica.drive(&mut host).unwrap();
//! assert_eq!(host.applied.len(), 1);
//! ```

/// `planted!(cfg, Bug)`: whether planted bug `Bug` is on (always false without the feature).
macro_rules! planted {
    ($cfg:expr, $bug:ident) => {{
        #[cfg(feature = "planted-bugs")]
        let on = $cfg.planted_bug == Some($crate::PlantedBug::$bug);
        #[cfg(not(feature = "planted-bugs"))]
        let on = false;
        on
    }};
}

pub mod config;
pub mod configuration;
mod engine;
pub mod manager;
pub mod message;
#[cfg(feature = "sim")]
pub mod sim;

#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{Ack, Config};
pub use configuration::{Change, ChangeRequest, Configuration, HardState};
pub use engine::PrimaryBackup;
pub use manager::{ConfigManager, Refused};
pub use message::{Body, Message, MANAGER};
