//! The one replica loop: **send → persist → confirm → apply**, for any [`Consensus`] protocol.
//!
//! The node's driver, the simulator, the benches, the examples and the tests all run a protocol
//! through [`Replica::drive`]; only the [`Host`] differs (real WAL and QUIC, or simulated disk and
//! network). The loop keeps the persistence contract of [`crate::protocol`] so no caller has to:
//!
//! 1. messages of a `Ready` go to [`Host::send`] at once;
//! 2. its write goes to [`Host::submit`], which returns a *ticket* — the write's place in the
//!    host's durable order (a WAL index, a simulated disk's sequence number);
//! 3. a received snapshot is installed ([`Host::install_snapshot`]), then committed entries are
//!    applied ([`Host::apply`]) and ordered reads handed over ([`Host::reads`]);
//! 4. tokens are confirmed to the engine, strictly in order, once [`Host::durable`] has reached
//!    their ticket. A write that asked for no sync waits only for the writes before it.
//!
//! The host reports durability progress by returning a higher [`Host::durable`]; call `drive`
//! again when it moves (or on any other event) and the held messages come out.

use std::collections::VecDeque;

use crate::error::Error;
use crate::protocol::{Consensus, PersistToken, Write};
use crate::types::{Entry, ReadState, Snapshot, SoftState};

/// What a replica loop needs from the world around one protocol instance.
pub trait Host<C: Consensus> {
    /// The host's error type; the engine's errors convert into it.
    type Error: From<Error>;

    /// Sends a message (best effort: the protocol tolerates loss).
    fn send(&mut self, message: C::Message) -> Result<(), Self::Error>;
    /// Starts writing `write`: applies it to `storage` (the engine's read view) and queues it for
    /// durability. Returns the write's ticket: it is durable once [`Host::durable`] reaches it.
    fn submit(
        &mut self,
        storage: &mut C::Storage,
        write: &Write<C::HardState>,
    ) -> Result<u64, Self::Error>;
    /// The highest ticket known durable (every write up to it is durable: a prefix).
    fn durable(&self) -> u64;
    /// Restores the state machine from a snapshot received from a leader.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Self::Error>;
    /// Applies committed entries, in order.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Self::Error>;
    /// Linearizable reads now ordered: serve each once applied through its index.
    fn reads(&mut self, reads: Vec<ReadState>) -> Result<(), Self::Error> {
        let _ = reads;
        Ok(())
    }
    /// The role or the leader changed.
    fn soft_state(&mut self, soft: SoftState) {
        let _ = soft;
    }
}

/// A write submitted and not yet confirmed to the engine.
#[derive(Debug)]
struct Unconfirmed {
    /// Confirm once the host's durable ticket reaches this.
    ticket: u64,
    token: PersistToken,
}

/// A protocol instance and the writes it waits on. See the module docs.
#[derive(Debug)]
pub struct Replica<C: Consensus> {
    engine: C,
    unconfirmed: VecDeque<Unconfirmed>,
    /// The ticket the latest write waits for (a write asking no sync waits for this one).
    last_ticket: u64,
}

impl<C: Consensus> Replica<C> {
    /// Wraps a protocol instance.
    pub fn new(engine: C) -> Self {
        Replica {
            engine,
            unconfirmed: VecDeque::new(),
            last_ticket: 0,
        }
    }

    /// The protocol instance (status, storage).
    pub fn engine(&self) -> &C {
        &self.engine
    }

    /// The protocol instance, to feed it events (`step`, `tick`, `propose`, …).
    pub fn engine_mut(&mut self) -> &mut C {
        &mut self.engine
    }

    /// Gives the instance back (what a crash leaves is the host's durable state, not this).
    pub fn into_engine(self) -> C {
        self.engine
    }

    /// Writes submitted and not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    /// Runs the loop until the engine has nothing more to do now. Returns after the first error
    /// (a storage failure stops the engine: do not call again).
    pub fn drive<H: Host<C>>(&mut self, host: &mut H) -> Result<(), H::Error> {
        loop {
            self.confirm(host.durable())?;
            if !self.engine.has_ready() {
                return Ok(());
            }
            let ready = self.engine.ready()?;
            if let Some(soft) = ready.soft_state {
                host.soft_state(soft);
            }
            for message in ready.messages {
                host.send(message)?;
            }
            if let Some(persist) = ready.persist {
                let ticket = host.submit(self.engine.storage_mut(), &persist.write)?;
                let ticket = if persist.write.sync {
                    ticket
                } else {
                    self.last_ticket
                };
                debug_assert!(ticket >= self.last_ticket, "tickets never go back");
                self.last_ticket = ticket;
                if let Some(snapshot) = &persist.write.snapshot {
                    host.install_snapshot(snapshot)?;
                }
                self.unconfirmed.push_back(Unconfirmed {
                    ticket,
                    token: persist.token,
                });
            }
            if !ready.committed.is_empty() {
                host.apply(ready.committed)?;
            }
            if !ready.reads.is_empty() {
                host.reads(ready.reads)?;
            }
        }
    }

    /// Confirms, in order, every write whose ticket is durable.
    fn confirm(&mut self, durable: u64) -> Result<(), Error> {
        while self
            .unconfirmed
            .front()
            .is_some_and(|write| write.ticket <= durable)
        {
            if let Some(write) = self.unconfirmed.pop_front() {
                self.engine.persisted(write.token)?;
            }
        }
        Ok(())
    }
}
