//! `cargo xtask bench peer`: how many bytes Merkle anti-entropy exchanges between two replicas
//! of 1,000,000 keys as the number of divergent keys grows, against the data size and against
//! the baseline measured in the same run: the (key, digest) list an exchange without a tree
//! would have to send. Messages are counted as their postcard encoding (what the node frames).
//!
//! The replicas are real `replication_peer::Peer`s recovered from the same objects, one of them
//! with `D` keys rewritten; one anti-entropy round of every shared partition runs to quiescence
//! and the divergent keys are checked to have converged.

use std::time::Instant;

use replication_peer::{
    Config, Dot, Dvv, Key, Object, Peer, Policy, PolicyTable, Recovered, Timestamp, Versioned,
};

/// Arguments of this command.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keys each replica holds.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: usize,
    /// Bytes per value (keys are 16 bytes), as in `bench cluster`.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Divergent-key counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "0,1,10,100,1000,10000")]
    pub divergent: Vec<usize>,
}

fn config(id: u64) -> Config {
    let mut c = Config::new(id, vec![1, 2]);
    c.replication = 2;
    c.vnodes = 8;
    c.merkle_fanout = 16;
    c.merkle_depth = 3;
    c.policies = PolicyTable::new(Policy::Siblings);
    // Only the exchange this bench starts runs.
    c.anti_entropy_interval_ms = u64::MAX / 4;
    c.gc_interval_ms = u64::MAX / 4;
    c.hint_retry_ms = u64::MAX / 4;
    c
}

fn key(i: usize) -> Key {
    format!("key-{i:012}").into_bytes()
}

fn object(counter: u64, value: Vec<u8>, previous: Option<&Object>) -> Object {
    let mut d = match previous {
        Some(Object::Causal(d)) => d.clone(),
        _ => Dvv::new(),
    };
    let context = d.context().clone();
    d.write(
        &context,
        Dot { node: 1, counter },
        Versioned {
            value: Some(value),
            at: Timestamp {
                wall: counter,
                logical: 0,
                node: 1,
            },
        },
    );
    Object::Causal(d)
}

fn value(i: usize, len: usize, round: u8) -> Vec<u8> {
    (0..len)
        .map(|j| (i.wrapping_mul(31) ^ j) as u8 ^ round)
        .collect()
}

struct Exchange {
    messages: usize,
    bytes: usize,
    objects: usize,
    elapsed_ms: f64,
}

fn exchange(a: &mut Peer, b: &mut Peer) -> anyhow::Result<Exchange> {
    let started = Instant::now();
    a.start_anti_entropy_with(b.id());
    let mut x = Exchange {
        messages: 0,
        bytes: 0,
        objects: 0,
        elapsed_ms: 0.0,
    };
    while pump(a, b, &mut x)? | pump(b, a, &mut x)? {}
    x.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(x)
}

/// Delivers everything `from` has for `to`; whether anything moved.
fn pump(from: &mut Peer, to: &mut Peer, x: &mut Exchange) -> anyhow::Result<bool> {
    let out = from.take_output();
    if let Some(last) = out.persists.last() {
        from.persisted(last.token)?;
    }
    let moved = !out.messages.is_empty();
    for (_, m) in out.messages {
        x.messages += 1;
        x.bytes += postcard::to_allocvec(&m)?.len();
        if let replication_peer::Message::AeObjects { objects, .. } = &m {
            x.objects += objects.len();
        }
        to.step(from.id(), m)?;
    }
    Ok(moved)
}
/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.keys > 0, "--keys must be positive");
    let build = Instant::now();
    let base: Vec<(Key, Object)> = (0..args.keys)
        .map(|i| {
            (
                key(i),
                object(i as u64 + 1, value(i, args.value_bytes, 0), None),
            )
        })
        .collect();
    let data_bytes: usize = args.keys * (key(0).len() + args.value_bytes);
    // Baseline: the (key, digest) list of every key, which a tree-less exchange sends one way.
    let list: Vec<(&Key, u64)> = base.iter().map(|(k, o)| (k, o.digest())).collect();
    let list_bytes = postcard::to_allocvec(&list)?.len();
    drop(list);
    println!(
        "{} keys × ({} B key + {} B value) = {:.1} MB of data per replica; (key, digest) list {:.1} MB; built in {:.1} s",
        args.keys,
        key(0).len(),
        args.value_bytes,
        data_bytes as f64 / 1e6,
        list_bytes as f64 / 1e6,
        build.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "{:>10} {:>9} {:>12} {:>9} {:>12} {:>14} {:>10}",
        "divergent", "messages", "bytes", "objects", "% of data", "vs key list", "ms"
    );
    let mut headline = None;
    for &d in &args.divergent {
        let d = d.min(args.keys);
        let stride = args.keys.checked_div(d).unwrap_or(1);
        let changed: Vec<usize> = (0..d).map(|j| j * stride).collect();
        let mut mine = base.clone();
        for (n, &i) in changed.iter().enumerate() {
            let o = object(
                (args.keys + n + 1) as u64,
                value(i, args.value_bytes, 1),
                Some(&mine[i].1),
            );
            mine[i].1 = o;
        }
        let mut a = Peer::recover(
            config(1),
            Recovered {
                dot_ceiling: 0,
                objects: mine,
            },
        )?;
        let mut b = Peer::recover(
            config(2),
            Recovered {
                dot_ceiling: 0,
                objects: base.clone(),
            },
        )?;
        let x = exchange(&mut a, &mut b)?;
        for &i in &changed {
            anyhow::ensure!(
                a.local_object(&key(i)) == b.local_object(&key(i)),
                "key {i} did not converge"
            );
        }
        let pct = 100.0 * x.bytes as f64 / data_bytes as f64;
        let vs_list = x.bytes as f64 / list_bytes as f64;
        println!(
            "{:>10} {:>9} {:>12} {:>9} {:>11.4}% {:>14.5} {:>10.1}",
            d, x.messages, x.bytes, x.objects, pct, vs_list, x.elapsed_ms
        );
        if d == 100 {
            headline = Some((pct, vs_list));
        }
    }
    println!();
    if let Some((pct, vs_list)) = headline {
        println!(
            "target: anti-entropy bytes for 100 divergent keys < 1 % of the data: {pct:.4} % — {}",
            if pct < 1.0 { "met" } else { "NOT met" }
        );
        println!("peer-anti-entropy-vs-key-list bytes@100: {vs_list:.5}");
    }
    Ok(())
}
