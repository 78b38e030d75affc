//! The parameters of one run, all derived from its seed.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::network::NetworkConfig;
use super::protocol::SimProtocol;

/// Parameters of one simulated run; `O` is the protocol's own knobs.
/// [`SimConfig::from_seed`] derives them all from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig<O> {
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Number of nodes (3 to 7).
    pub nodes: usize,
    /// Ticks during which faults are injected.
    pub fault_ticks: u64,
    /// Ticks allowed, after faults stop, for a leader to emerge and a final write to commit.
    pub liveness_ticks: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Size of the key space.
    pub keys: u64,
    /// Network unreliability during the fault phase.
    pub network: NetworkConfig,
    /// Per-tick chance (parts per million) that the nemesis acts.
    pub nemesis_ppm: u32,
    /// Clients wait up to this many ticks between operations (long waits leave new leaders idle).
    pub client_think: u64,
    /// Clients work in bursts: active for 50 ticks, then quiet for 50 (leaders change while idle).
    pub client_bursts: bool,
    /// Leader churn: a few ticks after each new leader appears, cut it off (or crash it), and heal
    /// a little later, so short-lived leaders leave competing uncommitted tails behind.
    pub leader_churn: bool,
    /// Events kept for the failure report.
    pub trace_window: usize,
    /// Keep every event (for `--verbose`).
    pub keep_full_trace: bool,
    /// The protocol's knobs.
    pub protocol: O,
    /// A planted bug in the harness itself (the sequential-read rule), to prove the checker bites.
    #[cfg(feature = "planted-bugs")]
    pub harness_bug: Option<super::client::HarnessBug>,
}

impl<O> SimConfig<O> {
    /// Derives a run's parameters for protocol `P` from its seed; `nodes` overrides the node count.
    pub fn from_seed<P: SimProtocol<Options = O>>(seed: u64, nodes: Option<usize>) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0ff_ee00_0001);
        let nodes = nodes.unwrap_or_else(|| rng.gen_range(3..=7)).clamp(3, 7);
        let network = NetworkConfig {
            drop_ppm: rng.gen_range(0..60_000),
            duplicate_ppm: rng.gen_range(0..30_000),
            min_delay: 1,
            max_delay: rng.gen_range(1..=5),
            reorder_ppm: rng.gen_range(0..50_000),
            max_in_flight: 20_000,
        };
        let clients = rng.gen_range(2..=4);
        let keys = rng.gen_range(1..=3);
        let mut nemesis_ppm = rng.gen_range(20_000..80_000);
        let protocol = P::options(&mut rng);
        let client_think = *[4, 4, 12, 40].choose(&mut rng).unwrap_or(&4);
        let client_bursts = rng.gen_bool(0.4);
        let leader_churn = rng.gen_bool(0.4);
        if rng.gen_bool(0.3) {
            // A storm: the nemesis acts several times per election timeout.
            nemesis_ppm = rng.gen_range(150_000..250_000);
        }
        SimConfig {
            seed,
            nodes,
            fault_ticks: 600,
            liveness_ticks: 400,
            clients,
            keys,
            network,
            nemesis_ppm,
            client_think,
            client_bursts,
            leader_churn,
            trace_window: 40,
            keep_full_trace: false,
            protocol,
            #[cfg(feature = "planted-bugs")]
            harness_bug: None,
        }
    }

    /// The leader-churn profile for `seed`: three nodes, every new leader cut off a few ticks after
    /// it appears (the previous victim rejoining), clients in bursts, and the protocol's knobs set
    /// for fast elections. Short-lived leaders then leave competing uncommitted tails.
    pub fn churn_from_seed<P: SimProtocol<Options = O>>(seed: u64) -> Self {
        let mut config = Self::from_seed::<P>(seed, Some(3));
        config.leader_churn = true;
        config.client_bursts = true;
        // Busy clients: short-lived leaders must receive proposals to leave tails behind.
        config.client_think = 4;
        config.clients = 4;
        P::churn_options(&mut config.protocol);
        config
    }
}
