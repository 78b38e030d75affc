//! Seeds that once broke a safety invariant, replayed in their mode (the cause is named at each).

use replication_primary::sim::{run_seed, SimOptions};
use replication_primary::Ack;

fn replay(ack: Ack, seeds: &[u64]) {
    let opts = SimOptions {
        ack,
        ..SimOptions::default()
    };
    let failures: Vec<String> = seeds
        .iter()
        .filter_map(|&seed| run_seed(seed, opts).err().map(|f| f.to_string()))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A primary crashed after sending prepares of its new epoch but before the epoch was durable;
/// restarted, it learned the same epoch from the manager, took office in it again and reused
/// serial numbers with other entries — two members applied different entries at one index.
#[test]
fn a_restarted_primary_never_reuses_serial_numbers_of_its_epoch() {
    replay(Ack::All, &[2275, 2714]);
    replay(Ack::Async, &[1296]);
}
