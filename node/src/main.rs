//! `quorate`: the replicated key-value server and its command-line client.
//!
//! `quorate serve --config node.toml` runs one node; `quorate kv ...` and `quorate cluster ...`
//! talk to a running cluster. `quorate --help` lists the commands and the exit codes.

fn main() -> std::process::ExitCode {
    node::cli::main()
}
