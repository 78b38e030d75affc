//! Runs the primary-backup simulator on one seed and prints what it saw (or the failure and its
//! trace): `cargo run -p replication-primary --example sim_seed -- <seed> [all|quorum|async] [trace events]`.

use replication_primary::sim::{run_seed, SimOptions};
use replication_primary::Ack;

fn main() {
    let mut args = std::env::args().skip(1);
    let seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let ack = match args.next().as_deref() {
        Some("quorum") => Ack::Quorum,
        Some("async") => Ack::Async,
        _ => Ack::All,
    };
    let trace_window = args.next().and_then(|s| s.parse().ok()).unwrap_or(80);
    match run_seed(
        seed,
        SimOptions {
            ack,
            trace_window,
            ..SimOptions::default()
        },
    ) {
        Ok(stats) => println!("seed {seed} ({ack:?}): clean, {stats:?}"),
        Err(failure) => {
            println!("{failure}");
            std::process::exit(1);
        }
    }
}
