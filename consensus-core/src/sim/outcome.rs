//! What a run found: its failure (if any), counters and the last events.

use super::config::SimConfig;
use super::invariants::Violation;

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A safety invariant broke during the run.
    Invariant(Violation),
    /// The client history has no linearization.
    NotLinearizable {
        /// The key whose history failed.
        key: u64,
        /// Why.
        explanation: String,
    },
    /// The linearizability search ran out of budget (reported, never silently passed).
    LinearizabilityUnknown {
        /// The key whose search was cut short.
        key: u64,
    },
    /// Once faults stopped the cluster did not elect a leader and commit a write in time.
    NoProgress(String),
    /// The protocol returned an error the driver does not expect (a contract breach).
    Protocol(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Invariant(v) => write!(f, "invariant violated: {v}"),
            Failure::NotLinearizable { key, explanation } => {
                write!(f, "history not linearizable on key {key}: {explanation}")
            }
            Failure::LinearizabilityUnknown { key } => {
                write!(
                    f,
                    "linearizability of key {key} undecided within the search budget"
                )
            }
            Failure::NoProgress(why) => write!(f, "liveness: {why}"),
            Failure::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Ticks simulated.
    pub ticks: u64,
    /// Client operations issued.
    pub operations: u64,
    /// Client operations that returned.
    pub completed: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Membership changes proposed and accepted by a leader.
    pub conf_changes: u64,
    /// Leader transfers requested.
    pub transfers: u64,
    /// Compactions done.
    pub compactions: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Highest commit index reached.
    pub commit_index: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Sequential reads served.
    pub sequential_reads: u64,
    /// Sequential reads sent to a member that had not applied the session's revision yet (held
    /// there until it had, or until the client asked another member).
    pub sequential_held: u64,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Outcome<O> {
    /// The run's parameters.
    pub config: SimConfig<O>,
    /// Hash over every traced event: equal for two runs of one seed.
    pub trace_hash: u64,
    /// The first failure, if any.
    pub failure: Option<Failure>,
    /// Counters.
    pub stats: SimStats,
    /// The last events before the end of the run (or the failure).
    pub trace: Vec<String>,
}

impl<O: std::fmt::Debug> Outcome<O> {
    /// Whether the run found nothing wrong.
    pub fn is_clean(&self) -> bool {
        self.failure.is_none()
    }

    /// A short report: parameters, failure and the last events.
    pub fn report(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "seed {} ({} nodes, {} clients, {} keys, think {}, bursts {}, churn {}, nemesis {} ppm, \
             protocol {:?}): ",
            c.seed,
            c.nodes,
            c.clients,
            c.keys,
            c.client_think,
            c.client_bursts,
            c.leader_churn,
            c.nemesis_ppm,
            c.protocol
        );
        match &self.failure {
            Some(f) => out.push_str(&f.to_string()),
            None => out.push_str("clean"),
        }
        out.push_str(&format!(
            "\n  stats: {:?}\n  trace hash {:#018x}; last {} events:\n",
            self.stats,
            self.trace_hash,
            self.trace.len()
        ));
        for line in &self.trace {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}
