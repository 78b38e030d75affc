//! `quorate`: the replicated key-value server and its CLI. Not yet implemented (see issue "node").

fn main() {
    eprintln!(
        "quorate: the server is not built yet; see `cargo xtask --help` for what works today"
    );
    std::process::exit(2);
}
