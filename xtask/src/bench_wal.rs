//! `cargo xtask` command module: bench_wal (not yet written).

/// Arguments of this command.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("bench_wal is not written yet")
}
