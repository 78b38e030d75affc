//! # replication-primary
//!
//! Sans-IO primary-backup replication with epochs and fencing (after PacificA). Not yet implemented;
//! this crate reserves the place in the workspace.
//!
//! It may not depend on tokio, the filesystem, clocks, threads or unseeded randomness, and never on
//! the `node` crate.
