//! [`DurableAppend`]: the future [`Wal::append_durable_async`] returns, resolving once its record
//! is durable.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Result, WalError};
use crate::wal::Wal;

/// A record appended by [`Wal::append_durable_async`], waiting to be durable: resolves to its
/// index once an fsync covered it (or to the error that prevents that). See that method.
#[must_use = "the record is appended, but not known durable until the future resolves"]
pub struct DurableAppend<'a> {
    wal: &'a Wal,
    state: Waiting,
}

enum Waiting {
    /// The append itself failed; the error, until it is returned.
    Failed(Option<WalError>),
    /// Record `index`, appended in truncation `epoch`; `registered` once its waker was left
    /// with the group commit (its first wait counts as an arrival for gathering).
    Record {
        index: u64,
        epoch: u64,
        registered: bool,
    },
}

impl<'a> DurableAppend<'a> {
    pub(crate) fn new(wal: &'a Wal, appended: Result<(u64, u64)>) -> Self {
        let state = match appended {
            Ok((index, epoch)) => Waiting::Record {
                index,
                epoch,
                registered: false,
            },
            Err(e) => Waiting::Failed(Some(e)),
        };
        DurableAppend { wal, state }
    }

    /// The index the record got, unless the append failed.
    pub fn index(&self) -> Option<u64> {
        match self.state {
            Waiting::Record { index, .. } => Some(index),
            Waiting::Failed(_) => None,
        }
    }
}

impl std::fmt::Debug for DurableAppend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableAppend")
            .field("index", &self.index())
            .finish()
    }
}

impl Future for DurableAppend<'_> {
    type Output = Result<u64>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<u64>> {
        let this = self.get_mut();
        match &mut this.state {
            Waiting::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("DurableAppend polled after it completed"))),
            Waiting::Record {
                index,
                epoch,
                registered,
            } => {
                if let Some(outcome) = this.wal.durable_outcome(*index, epoch) {
                    return Poll::Ready(outcome);
                }
                this.wal
                    .register_waker(*index, *epoch, cx.waker(), !*registered);
                *registered = true;
                // Look again: a ring between the first look and the registration found no waker.
                match this.wal.durable_outcome(*index, epoch) {
                    Some(outcome) => Poll::Ready(outcome),
                    None => Poll::Pending,
                }
            }
        }
    }
}
