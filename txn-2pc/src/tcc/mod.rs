//! TCC — try / confirm / cancel — orchestrated over [`fence::Service`](crate::fence::Service)
//! branches.
//!
//! The [`Orchestrator`] forces BEGIN (its branches) before any TRY leaves, so that after a crash
//! it can cancel what it started; it sends TRY to every branch; if every branch answers done it
//! forces CONFIRM, otherwise (a failure, a refusal, or the try timeout) it forces CANCEL; then it
//! resends that decision to every branch until each acknowledges, and writes END lazily. A
//! cancel may overtake its try; the branch's fence makes that safe (empty rollback, and the late
//! try is refused). Pick TCC when the branches are services that can reserve resources (an
//! account hold, a seat lock) rather than databases that can prepare.

mod orchestrator;

pub use orchestrator::{Decision, Orchestrator, OrchestratorEvent, OrchestratorRecord};

/// Timeouts in ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Cancel if some branch has not answered its try after this long.
    pub try_timeout: u64,
    /// Resend confirm/cancel to unacknowledged branches this often.
    pub retry_interval: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            try_timeout: 30,
            retry_interval: 8,
        }
    }
}
