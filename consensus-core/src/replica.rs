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
//!    applied ([`Host::apply`], then [`Host::apply_stored`] for those the protocol left in its
//!    storage) and ordered reads handed over ([`Host::reads`]);
//! 4. tokens are confirmed to the engine, strictly in order, once [`Host::durable`] has reached
//!    their ticket. A write that asked for no sync waits only for the writes before it.
//!
//! The host reports durability progress by returning a higher [`Host::durable`]; call `drive`
//! again when it moves (or on any other event) and the held messages come out.

use std::collections::VecDeque;

use crate::error::Error;
use crate::protocol::{CommittedRange, Consensus, PersistToken, Write};
use crate::storage::MemStorage;
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
    /// [`Host::submit`] with the write handed over by value, so a host that keeps entries in
    /// memory can move them in rather than copy them (the replica loop calls this one). By
    /// default it submits by reference.
    fn submit_owned(
        &mut self,
        storage: &mut C::Storage,
        write: Write<C::HardState>,
    ) -> Result<u64, Self::Error> {
        self.submit(storage, &write)
    }
    /// The highest ticket known durable (every write up to it is durable: a prefix).
    fn durable(&self) -> u64;
    /// Restores the state machine from a snapshot received from a leader.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Self::Error>;
    /// Applies committed entries, in order.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Self::Error>;
    /// Applies the committed entries of `range`, in order, from the engine's storage (where the
    /// protocol left them: [`crate::Ready::committed_in_storage`]). By default they are read out
    /// in bounded chunks and handed to [`Host::apply`]; a host that can read its storage by
    /// reference overrides this and copies nothing.
    fn apply_stored(
        &mut self,
        storage: &C::Storage,
        range: CommittedRange,
    ) -> Result<(), Self::Error> {
        range.read(storage, |entries| self.apply(entries))
    }
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

/// A write submitted and not yet confirmed.
#[derive(Debug)]
struct Unconfirmed {
    /// Confirm once the host's durable ticket reaches this.
    ticket: u64,
    token: PersistToken,
}

/// The loop's own state: the writes submitted and not yet confirmed. [`Replica`] pairs it with an
/// engine; use it directly when engines live elsewhere (a map of groups, a test harness).
#[derive(Debug, Default)]
pub struct ReplicaLoop {
    unconfirmed: VecDeque<Unconfirmed>,
    /// The ticket the latest write waits for (a write asking no sync waits for this one).
    last_ticket: u64,
}

impl ReplicaLoop {
    /// A loop with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes submitted and not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    /// The ticket the oldest unconfirmed write waits for (a host that blocks waits for it, then
    /// drives again).
    pub fn waiting_for(&self) -> Option<u64> {
        self.unconfirmed.front().map(|write| write.ticket)
    }

    /// Runs the loop on `engine` until it has nothing more to do now. Returns after the first
    /// error (a storage failure stops the engine: do not call again).
    pub fn drive<C: Consensus, H: Host<C>>(
        &mut self,
        engine: &mut C,
        host: &mut H,
    ) -> Result<(), H::Error> {
        loop {
            self.confirm(engine, host.durable())?;
            if !engine.has_ready() {
                return Ok(());
            }
            let ready = engine.ready()?;
            if let Some(soft) = ready.soft_state {
                host.soft_state(soft);
            }
            for message in ready.messages {
                host.send(message)?;
            }
            if let Some(persist) = ready.persist {
                let sync = persist.write.sync;
                // Rare (a snapshot received): the state machine is restored from it after the
                // write, which the host now owns.
                let snapshot = persist.write.snapshot.clone();
                let ticket = host.submit_owned(engine.storage_mut(), persist.write)?;
                let ticket = if sync { ticket } else { self.last_ticket };
                debug_assert!(ticket >= self.last_ticket, "tickets never go back");
                self.last_ticket = ticket;
                if let Some(snapshot) = &snapshot {
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
            if let Some(range) = ready.committed_in_storage {
                // After the write above: the range may name entries it stored.
                host.apply_stored(engine.storage(), range)?;
            }
            if !ready.reads.is_empty() {
                host.reads(ready.reads)?;
            }
        }
    }

    /// Confirms, in order, every write whose ticket is durable.
    fn confirm<C: Consensus>(&mut self, engine: &mut C, durable: u64) -> Result<(), Error> {
        while self
            .unconfirmed
            .front()
            .is_some_and(|write| write.ticket <= durable)
        {
            if let Some(write) = self.unconfirmed.pop_front() {
                engine.persisted(write.token)?;
            }
        }
        Ok(())
    }
}

/// A protocol instance and its [`ReplicaLoop`]. See the module docs.
#[derive(Debug)]
pub struct Replica<C: Consensus> {
    engine: C,
    writes: ReplicaLoop,
}

impl<C: Consensus> Replica<C> {
    /// Wraps a protocol instance.
    pub fn new(engine: C) -> Self {
        Replica {
            engine,
            writes: ReplicaLoop::new(),
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
        self.writes.unconfirmed()
    }

    /// Runs the loop until the engine has nothing more to do now (see [`ReplicaLoop::drive`]).
    pub fn drive<H: Host<C>>(&mut self, host: &mut H) -> Result<(), H::Error> {
        self.writes.drive(&mut self.engine, host)
    }
}

/// A host for tests and examples: writes go to the engine's [`MemStorage`]
/// and are durable at once; messages, applied entries and reads are collected for the caller.
#[derive(Debug)]
pub struct MemHost<M> {
    /// Messages to deliver, in the order sent.
    pub messages: Vec<M>,
    /// Entries applied, in order (a received snapshot drops those it replaces).
    pub applied: Vec<Entry>,
    /// Reads ordered.
    pub reads: Vec<ReadState>,
    written: u64,
}

impl<M> Default for MemHost<M> {
    fn default() -> Self {
        MemHost {
            messages: Vec::new(),
            applied: Vec::new(),
            reads: Vec::new(),
            written: 0,
        }
    }
}

impl<M> MemHost<M> {
    /// A host that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C> Host<C> for MemHost<C::Message>
where
    C: Consensus<Storage = MemStorage<<C as Consensus>::HardState>>,
{
    type Error = Error;

    fn send(&mut self, message: C::Message) -> Result<(), Error> {
        self.messages.push(message);
        Ok(())
    }

    fn submit(
        &mut self,
        storage: &mut MemStorage<C::HardState>,
        write: &Write<C::HardState>,
    ) -> Result<u64, Error> {
        storage.write(write)?;
        self.written += 1;
        Ok(self.written)
    }

    fn submit_owned(
        &mut self,
        storage: &mut MemStorage<C::HardState>,
        write: Write<C::HardState>,
    ) -> Result<u64, Error> {
        storage.write_owned(write)?;
        self.written += 1;
        Ok(self.written)
    }

    fn durable(&self) -> u64 {
        self.written
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        // The state machine restarts from the snapshot.
        self.applied.retain(|e| e.index <= snapshot.meta.index);
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        if self.applied.is_empty() {
            self.applied = entries; // no second copy of what the engine handed out
        } else {
            self.applied.extend(entries);
        }
        Ok(())
    }

    fn reads(&mut self, reads: Vec<ReadState>) -> Result<(), Error> {
        self.reads.extend(reads);
        Ok(())
    }
}
