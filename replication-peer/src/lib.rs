//! # replication-peer
//!
//! Sans-IO peer-to-peer multi-master replication with eventual consistency, after Dynamo
//! (SOSP'07) and Riak KV ≥ 2.0: every replica of a key takes writes, and replicas converge.
//! A [`Peer`] is a deterministic state machine — client requests, peer messages, ticks and
//! durability confirmations in; messages, durable writes and replies out. No I/O, clocks,
//! threads or randomness inside; no other Quorate crate needed.
//!
//! ## What a key holds
//!
//! Every key carries a [dotted version vector](dvv): concurrent writes stay as siblings, and a
//! write that names the context its client read supersedes exactly what that read saw. How
//! siblings resolve is a [`Policy`] chosen per key prefix ([`PolicyTable`]):
//!
//! | policy | reads return | concurrent writes |
//! |---|---|---|
//! | `Siblings` | every sibling and the context that resolves them | all kept until a write names them |
//! | `Lww` | the sibling with the largest [hybrid logical clock](hlc) timestamp | **dropped** (documented loss), except a write that saw another always wins over it |
//! | `Crdt(kind)` | the merged [CRDT](crdt) value (counter, OR-set, LWW register) | merged automatically |
//!
//! Key size, value size and sibling count are bounded ([`Limits`]); a write past them is refused
//! with a typed [`RequestError`].
//!
//! ## How writes travel
//!
//! Placement is [consistent hashing with virtual nodes](ring): each key has N replicas; R and W
//! are per request (W = 1 for the lowest latency, R + W > N for read-your-writes while no replica
//! fails). A write is durable at its coordinator, then pushed to the other replicas at once;
//! unacknowledged pushes stay as bounded hints and are replayed (hinted handoff). Reads repair
//! the replicas that answered with less. [Merkle trees](merkle) per ring partition find what
//! pushes and repairs missed, descending only into differing subtrees. Deletes are tombstones,
//! collected only after every replica confirmed holding them (see `peer/gc.rs`).
//!
//! ## Driving it
//!
//! ```
//! use replication_peer::{Config, Peer, Request, RequestId, Response, VersionVector};
//!
//! let mut peer = Peer::new(Config { replication: 1, ..Config::new(1, vec![1]) }).unwrap();
//! peer.client_request(RequestId(1), Request::Put {
//!     key: b"k".to_vec(), value: b"v".to_vec(), context: VersionVector::new(), w: 1,
//! });
//! // Make every write durable and confirm it, until nothing is left to do.
//! let mut replies = Vec::new();
//! loop {
//!     let out = peer.take_output();
//!     if out.is_empty() { break; }
//!     replies.extend(out.replies);
//!     if let Some(last) = out.persists.last() { peer.persisted(last.token).unwrap(); }
//! }
//! assert!(matches!(replies[0], (RequestId(1), Ok(Response::Written { .. }))));
//! ```
//!
//! A node embeds it as: feed [`Peer::client_request`] / [`Peer::step`] / [`Peer::tick`]; write
//! every [`Persist`] in order and confirm with [`Peer::persisted`]; send the messages; answer the
//! replies; on restart, read back the objects and dot ceiling into [`Recovered`].
//! `examples/three_peers.rs` runs three peers through a partition.
//!
//! ## The simulator (feature `sim`)
//!
//! [`sim`] runs real peers under a seeded network (drops, duplicates, reordering, partitions) and
//! crashes that lose what was not durable, and checks convergence, that no acknowledged write is
//! lost except as LWW documents, causality, and that tombstones never resurrect. The feature
//! `planted-bugs` adds the bugs it must catch.

pub mod config;
pub mod crdt;
pub mod dvv;
pub mod error;
pub mod hash;
pub mod hlc;
pub mod merkle;
pub mod message;
pub mod object;
pub mod output;
mod peer;
pub mod policy;
pub mod ring;
#[cfg(feature = "sim")]
pub mod sim;
pub mod types;

pub use config::Config;
pub use crdt::{Crdt, CrdtKind, CrdtOp, CrdtValue, Lattice};
pub use dvv::{Dot, Dvv, VersionVector};
pub use error::{ConfigError, RequestError, StepError};
pub use hlc::{Hlc, Timestamp};
pub use message::{Message, Request, Response, SiblingView};
pub use object::{Object, Versioned};
pub use output::{Output, Persist, PersistToken, Write};
#[cfg(feature = "planted-bugs")]
pub use peer::PlantedBug;
pub use peer::{Peer, PeerStatus, Recovered};
pub use policy::{Limits, Policy, PolicyTable};
pub use ring::{PartitionId, Ring};
pub use types::{Key, NodeId, RequestId};
