//! Each planted bug is caught by the simulator within 50 seeds.

use replication_primary::sim::{run_seed, SimOptions};
use replication_primary::{Ack, PlantedBug};

/// The first seed below 50 whose run fails with `bug` planted, and the property it broke.
fn first_catch(ack: Ack, bug: PlantedBug) -> Option<(u64, &'static str)> {
    let opts = SimOptions {
        ack,
        bug: Some(bug),
        ..SimOptions::default()
    };
    (0..50).find_map(|seed| run_seed(seed, opts).err().map(|f| (seed, f.property)))
}

#[test]
fn a_backup_accepting_a_lower_epoch_is_caught() {
    let caught = first_catch(Ack::All, PlantedBug::AcceptLowerEpoch);
    assert!(caught.is_some(), "not caught within 50 seeds");
    eprintln!("AcceptLowerEpoch caught: {caught:?}");
}

#[test]
fn a_primary_serving_before_the_grace_period_is_caught() {
    let caught = first_catch(Ack::All, PlantedBug::ServeBeforeGrace);
    assert_eq!(
        caught.map(|c| c.1),
        Some("one primary serves at a time"),
        "{caught:?}"
    );
    eprintln!("ServeBeforeGrace caught: {caught:?}");
}

#[test]
fn an_all_mode_primary_acking_before_every_backup_is_caught() {
    let caught = first_catch(Ack::All, PlantedBug::AllAckBeforeBackups);
    assert!(caught.is_some(), "not caught within 50 seeds");
    eprintln!("AllAckBeforeBackups caught: {caught:?}");
}

#[test]
fn a_primary_reading_without_its_leases_is_caught() {
    let caught = first_catch(Ack::All, PlantedBug::ReadWithoutLease);
    assert_eq!(
        caught.map(|c| c.1),
        Some("reads at the primary are linearizable"),
        "{caught:?}"
    );
    eprintln!("ReadWithoutLease caught: {caught:?}");
}
