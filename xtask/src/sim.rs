//! `cargo xtask` command module: sim (not yet written).

/// Arguments of this command.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("sim is not written yet")
}
