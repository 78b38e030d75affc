//! `cargo xtask` command module: certs (not yet written).

/// Arguments of this command.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("certs is not written yet")
}
