//! `cargo xtask bench txn`: the commit protocols of txn-2pc measured against the literature.
//!
//! 1. **Cost per committed transaction**, fault-free, 2/3/5 participants, read off the
//!    simulator's counters (not computed here): messages, message delays and forced-write delays
//!    until every participant knows the outcome, and forced writes in all. Beside each, the
//!    figure the theory predicts; a measured figure above it fails the bench.
//!    Accounting (Gray & Lamport, "Consensus on Transaction Commit", §3 and §7): the initiating
//!    participant prepares first and its BEGIN-COMMIT is its yes vote (1 message), the
//!    coordinator sends PREPARE to the other N−1, they vote (N−1), the coordinator sends COMMIT
//!    to all N: 3N−1 messages and 4 message delays; forced-write delays are the initiator's
//!    PREPARED, the others' PREPARED and the coordinator's COMMIT: 3. The N acknowledgements
//!    (and each participant's COMMITTED write before its ack) come after every participant
//!    knows the outcome; they are shown apart, as the paper leaves them out.
//! 2. **Blocking**: the share of coordinator crashes (one crash, at a random moment of one
//!    transaction, never recovering) that leave participants in doubt.
//! 3. **Throughput** of the state machines in one process: transactions decided per CPU-second,
//!    5 participants, 64 in flight, forced writes confirmed at once.

use std::collections::VecDeque;

use txn_2pc::fence::{Reply, Request, Service, ServiceEvent};
use txn_2pc::sim::{branches, saga, tcc, three_phase, two_phase, Stats};
use txn_2pc::types::{NodeId, TxnId, Vote};
use txn_2pc::Write;

use crate::bench_core::cpu_seconds;

/// Arguments of `cargo xtask bench txn`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// CPU seconds per throughput case.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Runs per blocking measurement (each a different crash moment and seed).
    #[arg(long, default_value_t = 200)]
    crash_runs: u64,
}

struct Row {
    protocol: &'static str,
    n: u64,
    path_messages: u64,
    theory_messages: u64,
    other_messages: u64,
    delays: u64,
    theory_delays: u64,
    force_delays: u64,
    theory_force_delays: u64,
    forced: u64,
    theory_forced: u64,
    source: &'static str,
}

fn row_2pc(n: u64) -> Row {
    let report = two_phase::run(two_phase::Config::fault_free(
        1,
        n as usize,
        two_phase::Start::Initiator,
    ));
    let s = committed_stats("2pc", report);
    Row {
        protocol: "2pc",
        n,
        path_messages: s.messages_of(&["begin-commit", "prepare", "vote", "commit"]),
        theory_messages: 3 * n - 1,
        other_messages: s.total_messages()
            - s.messages_of(&["begin-commit", "prepare", "vote", "commit"]),
        delays: s.decision_message_depth,
        theory_delays: 4,
        force_delays: s.decision_force_depth,
        theory_force_delays: 3,
        forced: s.forced_writes,
        theory_forced: 2 * n + 1,
        source: "Gray & Lamport",
    }
}

fn row_3pc(n: u64) -> Row {
    let report = three_phase::run(three_phase::Config::fault_free(
        1,
        n as usize,
        three_phase::Start::Initiator,
    ));
    let s = committed_stats("3pc", report);
    Row {
        protocol: "3pc",
        n,
        path_messages: s.total_messages(),
        theory_messages: 3 * n - 1 + 2 * n,
        other_messages: 0,
        delays: s.decision_message_depth,
        theory_delays: 4 + 2,
        force_delays: s.decision_force_depth,
        theory_force_delays: 3 + 1,
        forced: s.forced_writes,
        theory_forced: 3 * n,
        source: "2PC + 1 round",
    }
}

fn row_tcc(n: u64) -> Row {
    let s = committed_stats("tcc", tcc::run(branches::Config::fault_free(1, n as usize)));
    let path = s.messages_of(&["do", "done", "confirm"]);
    Row {
        protocol: "tcc",
        n,
        path_messages: path,
        theory_messages: 3 * n,
        other_messages: s.total_messages() - path,
        delays: s.decision_message_depth,
        theory_delays: 3,
        force_delays: s.decision_force_depth,
        theory_force_delays: 3,
        forced: s.forced_writes,
        theory_forced: 2 + 2 * n,
        source: "2 rounds",
    }
}

fn row_saga(n: u64) -> Row {
    let s = committed_stats(
        "saga",
        saga::run(branches::Config::fault_free(1, n as usize)),
    );
    // The harness's saga over these services (its groups of parallel steps) gives the theory:
    // one round trip per group, one forced record per step plus STARTED.
    let services: Vec<NodeId> = (1..=n).collect();
    let groups = saga::definition(TxnId(1), &services).groups.len() as u64;
    Row {
        protocol: "saga",
        n,
        path_messages: s.total_messages(),
        theory_messages: 2 * n,
        other_messages: 0,
        delays: s.decision_message_depth,
        theory_delays: 2 * groups,
        force_delays: s.decision_force_depth,
        theory_force_delays: 1 + groups,
        forced: s.forced_writes,
        theory_forced: 1 + n,
        source: "1 round/group",
    }
}

fn committed_stats(protocol: &str, report: txn_2pc::sim::Report) -> Stats {
    assert!(
        report.is_clean() && report.stats.committed == 1,
        "{protocol}: the fault-free run did not commit: {}",
        report.render()
    );
    report.stats
}

/// Share of runs, each with the coordinator dying for good at a different moment of one
/// transaction, that end with participants in doubt: (in doubt, reported blocked).
fn blocking_share(protocol: &str, n: usize, runs: u64) -> (f64, f64) {
    let mut in_doubt = 0u64;
    let mut blocked = 0u64;
    for run in 0..runs {
        let dies_at = run % 16;
        let stats = match protocol {
            "2pc" => {
                let mut config = two_phase::Config::fault_free(run, n, two_phase::Start::Initiator);
                config.coordinator = two_phase::CoordinatorFate::DiesAt(dies_at);
                config.max_ticks = 500;
                two_phase::run(config).stats
            }
            _ => {
                let mut config =
                    three_phase::Config::fault_free(run, n, three_phase::Start::Initiator);
                config.coordinator = three_phase::CoordinatorFate::DiesAt(dies_at);
                config.max_ticks = 1_500;
                three_phase::run(config).stats
            }
        };
        in_doubt += u64::from(stats.in_doubt > 0);
        blocked += u64::from(stats.blocked > 0 && protocol == "2pc");
    }
    (in_doubt as f64 / runs as f64, blocked as f64 / runs as f64)
}

// ---- throughput: the engines wired directly, no simulator -------------------------------------

const IN_FLIGHT: usize = 64;
const PARTICIPANTS: u64 = 5;

/// Runs `step` (which starts transactions up to the window and pumps until quiet, returning how
/// many were decided) for about `seconds` of CPU; returns decisions per CPU-second.
fn measure(seconds: f64, mut step: impl FnMut() -> u64) -> f64 {
    for _ in 0..50 {
        step();
    }
    let start = cpu_seconds();
    let mut decided = 0u64;
    let mut rounds = 0u64;
    loop {
        decided += step();
        rounds += 1;
        if rounds.is_multiple_of(16) && cpu_seconds() - start >= seconds {
            break;
        }
    }
    decided as f64 / (cpu_seconds() - start).max(1e-9)
}

fn tokens<R>(writes: &[Write<R>]) -> Option<txn_2pc::ForceToken> {
    writes.iter().rev().find_map(|w| match w {
        Write::Force { token, .. } => Some(*token),
        Write::Lazy { .. } => None,
    })
}

fn throughput_2pc(seconds: f64) -> f64 {
    use txn_2pc::two_phase::{
        Config, Coordinator, CoordinatorEvent, Message, Participant, ParticipantEvent,
    };
    let mut coordinator = Coordinator::new(0, Config::default());
    let mut participants: Vec<Participant> = (1..=PARTICIPANTS)
        .map(|id| Participant::new(id, Config::default()))
        .collect();
    let members: Vec<NodeId> = (1..=PARTICIPANTS).collect();
    let mut next = 0u64;
    let mut live = 0usize;
    let mut queue: VecDeque<(NodeId, NodeId, Message)> = VecDeque::new();
    measure(seconds, move || {
        while live < IN_FLIGHT {
            next += 1;
            let _ = coordinator.begin(TxnId(next), &members);
            live += 1;
        }
        let mut decided = 0;
        loop {
            let out = coordinator.take_output();
            let mut progress = !out.is_empty();
            if let Some(t) = tokens(&out.writes) {
                let _ = coordinator.forced(t);
            }
            queue.extend(out.messages.into_iter().map(|(to, m)| (0, to, m)));
            for event in out.events {
                if let CoordinatorEvent::Finished { .. } = event {
                    decided += 1;
                    live -= 1;
                }
            }
            for p in participants.iter_mut() {
                let out = p.take_output();
                progress |= !out.is_empty();
                if let Some(t) = tokens(&out.writes) {
                    let _ = p.forced(t);
                }
                queue.extend(out.messages.into_iter().map(|(to, m)| (p.id(), to, m)));
                for event in out.events {
                    if let ParticipantEvent::PrepareRequested { txn } = event {
                        let _ = p.vote(txn, Vote::Yes);
                    }
                }
            }
            while let Some((from, to, message)) = queue.pop_front() {
                progress = true;
                let _ = if to == 0 {
                    coordinator.step(from, message)
                } else {
                    participants[(to - 1) as usize].step(from, message)
                };
            }
            if !progress {
                return decided;
            }
        }
    })
}

fn throughput_3pc(seconds: f64) -> f64 {
    use txn_2pc::three_phase::{
        Config, Coordinator, CoordinatorEvent, Message, Participant, ParticipantEvent, Vote3,
    };
    let mut coordinator = Coordinator::new(0, Config::default());
    let mut participants: Vec<Participant> = (1..=PARTICIPANTS)
        .map(|id| Participant::new(id, Config::default()))
        .collect();
    let members: Vec<NodeId> = (1..=PARTICIPANTS).collect();
    let mut next = 0u64;
    let mut live = 0usize;
    let mut queue: VecDeque<(NodeId, NodeId, Message)> = VecDeque::new();
    measure(seconds, move || {
        while live < IN_FLIGHT {
            next += 1;
            let _ = coordinator.begin(TxnId(next), &members);
            live += 1;
        }
        let mut decided = 0;
        loop {
            let out = coordinator.take_output();
            let mut progress = !out.is_empty();
            queue.extend(out.messages.into_iter().map(|(to, m)| (0, to, m)));
            for event in out.events {
                let CoordinatorEvent::Decided { .. } = event;
                decided += 1;
                live -= 1;
            }
            for p in participants.iter_mut() {
                let out = p.take_output();
                progress |= !out.is_empty();
                if let Some(t) = tokens(&out.writes) {
                    let _ = p.forced(t);
                }
                queue.extend(out.messages.into_iter().map(|(to, m)| (p.id(), to, m)));
                for event in out.events {
                    if let ParticipantEvent::PrepareRequested { txn } = event {
                        let _ = p.vote(txn, Vote3::Yes);
                    }
                }
            }
            while let Some((from, to, message)) = queue.pop_front() {
                progress = true;
                let _ = if to == 0 {
                    coordinator.step(from, message)
                } else {
                    participants[(to - 1) as usize].step(from, message)
                };
            }
            if !progress {
                return decided;
            }
        }
    })
}

/// An orchestrator of fenced services, as the TCC and saga throughput loops see it.
trait Driver {
    fn start(&mut self, txn: TxnId, services: &[NodeId]);
    fn step(&mut self, from: NodeId, reply: Reply);
    /// Drains: (messages, transactions finished).
    fn drain(&mut self) -> (Vec<(NodeId, Request)>, u64, bool);
}

impl Driver for txn_2pc::tcc::Orchestrator {
    fn start(&mut self, txn: TxnId, services: &[NodeId]) {
        let _ = self.begin(txn, services.iter().map(|&s| (s, vec![1])).collect());
    }
    fn step(&mut self, from: NodeId, reply: Reply) {
        let _ = txn_2pc::tcc::Orchestrator::step(self, from, reply);
    }
    fn drain(&mut self) -> (Vec<(NodeId, Request)>, u64, bool) {
        let out = self.take_output();
        let busy = !out.is_empty();
        if let Some(t) = tokens(&out.writes) {
            let _ = self.forced(t);
        }
        let done = out
            .events
            .iter()
            .filter(|e| matches!(e, txn_2pc::tcc::OrchestratorEvent::Finished { .. }))
            .count() as u64;
        (out.messages, done, busy)
    }
}

impl Driver for txn_2pc::saga::Orchestrator {
    fn start(&mut self, txn: TxnId, services: &[NodeId]) {
        let _ = txn_2pc::saga::Orchestrator::start(self, txn, saga::definition(txn, services));
    }
    fn step(&mut self, from: NodeId, reply: Reply) {
        let _ = txn_2pc::saga::Orchestrator::step(self, from, reply);
    }
    fn drain(&mut self) -> (Vec<(NodeId, Request)>, u64, bool) {
        let out = self.take_output();
        let busy = !out.is_empty();
        if let Some(t) = tokens(&out.writes) {
            let _ = self.forced(t);
        }
        let done = out
            .events
            .iter()
            .filter(|e| matches!(e, txn_2pc::saga::OrchestratorEvent::Finished { .. }))
            .count() as u64;
        (out.messages, done, busy)
    }
}

fn throughput_branches(seconds: f64, mut orchestrator: impl Driver) -> f64 {
    let mut services: Vec<Service> = (1..=PARTICIPANTS).map(Service::new).collect();
    let members: Vec<NodeId> = (1..=PARTICIPANTS).collect();
    let mut next = 0u64;
    let mut live = 0usize;
    let mut requests: VecDeque<(NodeId, Request)> = VecDeque::new();
    let mut replies: VecDeque<(NodeId, Reply)> = VecDeque::new();
    measure(seconds, move || {
        while live < IN_FLIGHT {
            next += 1;
            orchestrator.start(TxnId(next), &members);
            live += 1;
        }
        let mut decided = 0;
        loop {
            let (messages, done, mut progress) = orchestrator.drain();
            decided += done;
            live -= done as usize;
            requests.extend(messages);
            for s in services.iter_mut() {
                let out = s.take_output();
                progress |= !out.is_empty();
                if let Some(t) = tokens(&out.writes) {
                    let _ = s.forced(t);
                }
                replies.extend(out.messages.into_iter().map(|(_, r)| (s.id(), r)));
                for event in out.events {
                    if let ServiceEvent::DoRequested { key, .. } = event {
                        let _ = s.decide(key, Ok(vec![1]));
                    }
                }
            }
            while let Some((to, request)) = requests.pop_front() {
                progress = true;
                let _ = services[(to - 1) as usize].step(0, request);
            }
            while let Some((from, reply)) = replies.pop_front() {
                progress = true;
                orchestrator.step(from, reply);
            }
            if !progress {
                return decided;
            }
        }
    })
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    println!("cost per committed transaction, fault-free, measured by the simulator's counters");
    println!(
        "(msgs = messages until every participant knows the outcome; +after = acks and the like \
         after that; delays/fw-delays = longest message / forced-write chain to the last one \
         to learn it; forced = forced writes in all)\n"
    );
    println!(
        "{:<6} {:>2} | {:>5} {:>6} {:>6} | {:>6} {:>6} | {:>9} {:>6} | {:>6} {:>6} | {:<15} verdict",
        "proto",
        "N",
        "msgs",
        "theory",
        "+after",
        "delays",
        "theory",
        "fw-delays",
        "theory",
        "forced",
        "theory",
        "theory from",
    );
    let mut above = Vec::new();
    for row_of in [row_2pc as fn(u64) -> Row, row_3pc, row_tcc, row_saga] {
        for n in [2u64, 3, 5] {
            let r = row_of(n);
            let over = r.path_messages > r.theory_messages
                || r.delays > r.theory_delays
                || r.force_delays > r.theory_force_delays
                || r.forced > r.theory_forced;
            if over {
                above.push(format!("{} N={}", r.protocol, r.n));
            }
            println!(
                "{:<6} {:>2} | {:>5} {:>6} {:>6} | {:>6} {:>6} | {:>9} {:>6} | {:>6} {:>6} | {:<15} {}",
                r.protocol,
                r.n,
                r.path_messages,
                r.theory_messages,
                r.other_messages,
                r.delays,
                r.theory_delays,
                r.force_delays,
                r.theory_force_delays,
                r.forced,
                r.theory_forced,
                r.source,
                if over { "ABOVE THEORY" } else { "ok" }
            );
        }
    }
    println!(
        "\ntheory: 2pc 3N-1 msgs, 4 delays, 3 fw-delays, N+1 writes to decide + N COMMITTED; \
         3pc one more round (+2N msgs, +2 delays, <=+1 fw-delay; its coordinator logs nothing, so \
         it measures 3) and at most 3 writes per participant; tcc try/done/confirm (+N confirmed \
         acks), BEGIN + decision + 2 per branch; saga one round per group of parallel steps, \
         STARTED + 1 per step\n"
    );
    println!(
        "coordinator crashes (one per run, at tick 0..15 of one transaction, never recovering), \
         {} runs each:",
        args.crash_runs
    );
    println!(
        "{:<6} {:>2} | {:>9} {:>17}",
        "proto", "N", "in doubt", "reported blocked"
    );
    for protocol in ["2pc", "3pc"] {
        for n in [2usize, 3, 5] {
            let (in_doubt, blocked) = blocking_share(protocol, n, args.crash_runs);
            println!(
                "{:<6} {:>2} | {:>8.1}% {:>16.1}%",
                protocol,
                n,
                100.0 * in_doubt,
                100.0 * blocked
            );
        }
    }
    println!(
        "\nthroughput of the state machines, in process, {PARTICIPANTS} participants, \
         {IN_FLIGHT} in flight, forced writes confirmed at once ({:.1} CPU-s each):",
        args.seconds
    );
    let cases: [(&str, f64); 4] = [
        ("2pc", throughput_2pc(args.seconds)),
        ("3pc", throughput_3pc(args.seconds)),
        (
            "tcc",
            throughput_branches(
                args.seconds,
                txn_2pc::tcc::Orchestrator::new(0, txn_2pc::tcc::Config::default()),
            ),
        ),
        (
            "saga",
            throughput_branches(
                args.seconds,
                txn_2pc::saga::Orchestrator::new(0, txn_2pc::saga::Config::default()),
            ),
        ),
    ];
    for (name, per_second) in cases {
        println!("{name:<6} {per_second:>12.0} transactions decided per CPU-second");
    }
    let r = row_2pc(5);
    if !above.is_empty() {
        anyhow::bail!("above the theoretical cost: {}", above.join(", "));
    }
    println!(
        "\ntxn-2pc-vs-theory messages@5: {:.2}",
        r.path_messages as f64 / r.theory_messages as f64
    );
    Ok(())
}
