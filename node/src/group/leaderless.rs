//! Writes that reach a member while no leader is known (an election is under way) wait here,
//! bounded in number and time, instead of being refused at once.
//!
//! Refusing them (`NoLeader`) leaves the client to poll with backoff, so it learns of the new
//! leader up to one backoff pause late; a write parked here is handled again the moment this
//! member learns a leader — proposed if it is the leader itself, otherwise answered `NotLeader`
//! naming it, which the client follows at once. A write still parked after its wait (two
//! election timeouts: the longest randomized timeout) is answered `NoLeader`, as before.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Requests (`T`) waiting for a leader, oldest first, each with its deadline.
pub(crate) struct Leaderless<T> {
    parked: VecDeque<(Instant, T)>,
    limit: usize,
    wait: Duration,
}

impl<T> Leaderless<T> {
    /// At most `limit` requests wait, each at most `wait`.
    pub(crate) fn new(limit: usize, wait: Duration) -> Self {
        Leaderless {
            parked: VecDeque::new(),
            limit,
            wait,
        }
    }

    /// Parks a request; gives it back when the queue is full (the caller refuses it).
    pub(crate) fn park(&mut self, now: Instant, request: T) -> Result<(), T> {
        if self.parked.len() >= self.limit {
            return Err(request);
        }
        self.parked.push_back((now + self.wait, request));
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.parked.len()
    }

    /// Every parked request, oldest first, to be handled again now that a leader is known.
    pub(crate) fn release(&mut self) -> Vec<T> {
        self.parked.drain(..).map(|(_, request)| request).collect()
    }

    /// The requests whose wait is over at `now` (the caller refuses them).
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut expired = Vec::new();
        while self
            .parked
            .front()
            .is_some_and(|(deadline, _)| *deadline <= now)
        {
            if let Some((_, request)) = self.parked.pop_front() {
                expired.push(request);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wait_in_order_up_to_the_limit_and_leave_when_released() {
        let now = Instant::now();
        let mut queue = Leaderless::new(2, Duration::from_secs(1));
        assert!(queue.park(now, 1).is_ok());
        assert!(queue.park(now, 2).is_ok());
        assert_eq!(
            queue.park(now, 3),
            Err(3),
            "a full queue gives the request back"
        );
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.release(), vec![1, 2]);
        assert_eq!(queue.len(), 0);
        assert!(
            queue.park(now, 4).is_ok(),
            "released requests free their room"
        );
    }

    #[test]
    fn a_request_expires_once_its_wait_is_over_and_not_before() {
        let start = Instant::now();
        let wait = Duration::from_millis(100);
        let mut queue = Leaderless::new(8, wait);
        queue.park(start, "first").unwrap();
        queue
            .park(start + Duration::from_millis(50), "second")
            .unwrap();
        assert!(queue
            .expire(start + wait - Duration::from_millis(1))
            .is_empty());
        assert_eq!(queue.expire(start + wait), vec!["first"]);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.expire(start + Duration::from_secs(1)), vec!["second"]);
        assert!(queue.release().is_empty());
    }
}
