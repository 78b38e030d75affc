//! # txn-2pc
//!
//! Sans-IO transaction commit protocols: two-phase commit (presumed abort), three-phase commit and
//! sagas/TCC. Not yet implemented; this crate reserves the place in the workspace.
//!
//! It may not depend on tokio, the filesystem, clocks, threads or unseeded randomness, and never on
//! the `node` crate.
