//! Replays one simulator seed with its whole trace: `cargo run -p txn-2pc --example sim_replay -- 2pc 3`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let protocol = args.get(1).map(String::as_str).unwrap_or("2pc");
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let report = match protocol {
        "2pc" => {
            let mut config = txn_2pc::sim::two_phase::Config::from_seed(seed);
            config.keep_trace = true;
            if args.get(3).map(String::as_str) == Some("commit-before-decision") {
                config.bug = Some(txn_2pc::two_phase::PlantedBug::CommitBeforeForcingDecision);
            }
            txn_2pc::sim::two_phase::run(config)
        }
        "3pc" | "3pc-partitions" => {
            let profile = if protocol == "3pc" {
                txn_2pc::sim::three_phase::Profile::CrashOnly
            } else {
                txn_2pc::sim::three_phase::Profile::Partitions
            };
            let mut config = txn_2pc::sim::three_phase::Config::with_profile(seed, profile);
            config.keep_trace = true;
            txn_2pc::sim::three_phase::run(config)
        }
        "tcc" | "saga" => {
            let mut config = txn_2pc::sim::branches::Config::from_seed(seed);
            config.keep_trace = true;
            if protocol == "tcc" {
                txn_2pc::sim::tcc::run(config)
            } else {
                txn_2pc::sim::saga::run(config)
            }
        }
        other => {
            eprintln!("unknown protocol {other}");
            std::process::exit(2);
        }
    };
    println!("{}", report.render());
}
