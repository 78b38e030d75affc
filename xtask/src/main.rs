//! Project tooling for Quorate, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! Developer tooling that is not the product lives here, in Rust, rather than in shell scripts.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Quorate project tooling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a benchmark and print a table with ratios against a same-run baseline.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { what } => match what {},
    }
}
