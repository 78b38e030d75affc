//! A TCC money transfer between two account services that survives a lost cancel and a late
//! try.
//!
//! `cargo run -p txn-2pc --example tcc_transfer`
//!
//! Alice's bank (node 1) and Bob's bank (node 2) each run a fenced [`Service`]. Try freezes the
//! amount at Alice's and books a pending credit at Bob's; confirm makes both final; cancel
//! releases them. The fence record and the balance change are one record, applied together.

use std::collections::VecDeque;

use txn_2pc::fence::{FenceRecord, Reply, Request, Service, ServiceEvent};
use txn_2pc::tcc::{Config, Orchestrator, OrchestratorEvent};
use txn_2pc::{NodeId, TxnId, Write};

const ORCHESTRATOR: NodeId = 0;

/// One account and the money in flight on it.
#[derive(Debug, Default)]
struct Account {
    balance: i64,
    frozen: i64,
    pending_credit: i64,
}

/// An account service: the fenced engine plus the account the records change.
struct Bank {
    service: Service,
    account: Account,
}

impl Bank {
    fn new(id: NodeId, balance: i64) -> Self {
        Bank {
            service: Service::new(id),
            account: Account {
                balance,
                ..Account::default()
            },
        }
    }

    /// Applies a durable record to the account (the business half of the record).
    fn apply(&mut self, record: &FenceRecord) {
        let amount = |effect: &[u8]| -> i64 {
            String::from_utf8_lossy(effect)
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        match record {
            FenceRecord::Done { effect, .. } => {
                let n = amount(effect);
                if effect.starts_with(b"freeze") {
                    self.account.frozen += n;
                } else {
                    self.account.pending_credit += n;
                }
            }
            // The effects of confirm/cancel follow from what the try booked.
            FenceRecord::Confirmed { .. } => {
                self.account.balance -= self.account.frozen;
                self.account.balance += self.account.pending_credit;
                self.account.frozen = 0;
                self.account.pending_credit = 0;
            }
            FenceRecord::Undone {
                compensated: true, ..
            } => {
                self.account.frozen = 0;
                self.account.pending_credit = 0;
            }
            FenceRecord::Undone {
                compensated: false, ..
            }
            | FenceRecord::Failed { .. } => {}
        }
    }

    /// Runs the service's output: records (durable at once here), decisions, replies.
    fn drain(&mut self, replies: &mut VecDeque<(NodeId, Reply)>) {
        loop {
            let out = self.service.take_output();
            if out.is_empty() {
                return;
            }
            for write in &out.writes {
                if let Write::Force { token, record } = write {
                    let what = match record {
                        FenceRecord::Done { key, effect, .. } => {
                            format!("DONE {} ({})", key.txn, String::from_utf8_lossy(effect))
                        }
                        other => format!("{other:?}"),
                    };
                    println!("    n{} writes {what}", self.service.id());
                    self.service.forced(*token).expect("issued here");
                }
            }
            for event in out.events {
                match event {
                    ServiceEvent::DoRequested { key, payload, .. } => {
                        let text = String::from_utf8_lossy(&payload).to_string();
                        let wants: i64 = text
                            .split_whitespace()
                            .last()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        // Alice's bank refuses to freeze more than is available.
                        let ok = !text.starts_with("freeze")
                            || self.account.balance - self.account.frozen >= wants;
                        let decision = if ok { Ok(payload) } else { Err(()) };
                        self.service.decide(key, decision).expect("requested");
                    }
                    ServiceEvent::Applied { record } => self.apply(&record),
                }
            }
            for (_, reply) in &out.messages {
                if let Reply::Refused { key } = reply {
                    println!(
                        "    n{} refuses the try of {}: its cancel came first (fence)",
                        self.service.id(),
                        key.txn
                    );
                }
            }
            replies.extend(
                out.messages
                    .into_iter()
                    .map(|(_, r)| (self.service.id(), r)),
            );
        }
    }
}

struct World {
    tm: Orchestrator,
    banks: [Bank; 2],
    requests: VecDeque<(NodeId, Request)>,
    replies: VecDeque<(NodeId, Reply)>,
}

impl World {
    fn drain_tm(&mut self) {
        loop {
            let out = self.tm.take_output();
            if out.is_empty() {
                return;
            }
            for write in &out.writes {
                if let Write::Force { token, .. } = write {
                    self.tm.forced(*token).expect("issued here");
                }
            }
            for event in out.events {
                if let OrchestratorEvent::Decided { txn, decision } = event {
                    println!("  orchestrator decides {decision:?} for {txn}");
                }
            }
            self.requests.extend(out.messages);
        }
    }

    fn deliver(&mut self, to: NodeId, request: Request) {
        let bank = &mut self.banks[(to - 1) as usize];
        if let Err(e) = bank.service.step(ORCHESTRATOR, request) {
            println!("    n{to} refuses: {e}");
        }
        bank.drain(&mut self.replies);
    }

    /// Delivers everything, except requests `hold` picks out (they are returned, undelivered).
    fn run(&mut self, hold: impl Fn(NodeId, &Request) -> bool) -> Vec<(NodeId, Request)> {
        let mut held = Vec::new();
        loop {
            self.drain_tm();
            if let Some((to, request)) = self.requests.pop_front() {
                if hold(to, &request) {
                    held.push((to, request));
                } else {
                    self.deliver(to, request);
                }
            } else if let Some((from, reply)) = self.replies.pop_front() {
                let _ = self.tm.step(from, reply);
            } else {
                return held;
            }
        }
    }

    fn balances(&self) -> String {
        format!(
            "alice {:?}, bob {:?}",
            self.banks[0].account, self.banks[1].account
        )
    }
}

fn transfer(amount: i64) -> Vec<(NodeId, Vec<u8>)> {
    vec![
        (1, format!("freeze {amount}").into_bytes()),
        (2, format!("credit {amount}").into_bytes()),
    ]
}

fn main() {
    let mut world = World {
        tm: Orchestrator::new(ORCHESTRATOR, Config::default()),
        banks: [Bank::new(1, 100), Bank::new(2, 0)],
        requests: VecDeque::new(),
        replies: VecDeque::new(),
    };

    println!("T1: alice sends bob 30");
    world.tm.begin(TxnId(1), transfer(30)).expect("new");
    world.run(|_, _| false);
    println!("  {}", world.balances());
    assert_eq!(world.banks[0].account.balance, 70);
    assert_eq!(world.banks[1].account.balance, 30);

    println!("\nT2: alice sends bob 50, but the try to bob's bank is stuck in the network");
    world.tm.begin(TxnId(2), transfer(50)).expect("new");
    let late = world.run(|to, r| to == 2 && matches!(r, Request::Do { .. }));
    println!("  the try timeout passes; the first cancel to alice's bank is lost");
    for _ in 0..Config::default().try_timeout {
        world.tm.tick();
    }
    let lost = world.run(|to, r| to == 1 && matches!(r, Request::Undo { .. }));
    println!("  (lost: {lost:?})");
    println!("  the orchestrator retries the cancel it has no ack for");
    for _ in 0..Config::default().retry_interval {
        world.tm.tick();
    }
    world.run(|_, _| false);
    println!("  the stuck try finally reaches bob's bank, after its cancel:");
    for (to, request) in late {
        world.deliver(to, request);
    }
    world.run(|_, _| false);
    println!("  {}", world.balances());
    // Empty rollback at bob's, then the late try refused: no pending credit hangs there.
    assert_eq!(world.banks[0].account.balance, 70);
    assert_eq!(world.banks[0].account.frozen, 0);
    assert_eq!(world.banks[1].account.balance, 30);
    assert_eq!(world.banks[1].account.pending_credit, 0);
    assert_eq!(world.tm.live(), 0);
    println!(
        "\nmoney is conserved: {} in all",
        world.banks[0].account.balance + world.banks[1].account.balance
    );
}
