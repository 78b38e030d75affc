//! `cargo xtask certs`: a development CA plus node and client certificates, written into one folder
//! by `net_quic::certs::write_dev_certs` (the same helpers the node and `cargo xtask cluster` use).

use std::path::PathBuf;

use anyhow::Context;
use net_quic::{certs, Credentials, NodeId};

/// The folder layout, shown in `--help`.
const LAYOUT: &str = "\
Files written (PEM; keys are PKCS#8 with mode 0600):
  ca.pem                   cluster CA certificate: every node and client trusts it
  ca.key                   CA private key (dev only; reused when the command runs again)
  node-<id>.pem / .key     node <id>: DNS SAN node-<id>.<cluster>, server + client auth
  client-<name>.pem / .key client <name>: DNS SAN client-<name>.<cluster>, client auth only

A node's id is read from its certificate's SAN, never from anything it sends. Running the command
again on the same folder keeps the CA, so new nodes and clients join the existing cluster. Load the
files with net_quic::Credentials::load_node(dir, id) / load_client(dir, name).";

/// Arguments of `cargo xtask certs`.
#[derive(clap::Args, Debug)]
#[command(after_help = LAYOUT)]
pub struct Args {
    /// Folder to write into (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Node certificates for ids 1..=N.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Client certificate names, comma-separated (lowercase letters, digits, '-').
    #[arg(long, value_delimiter = ',', default_value = "admin")]
    pub clients: Vec<String>,
    /// Cluster name: the DNS suffix of every identity in the certificates.
    #[arg(long, default_value = "quorate")]
    pub cluster: String,
}

/// Writes the certificates and prints each file written.
pub fn run(args: Args) -> anyhow::Result<()> {
    let nodes: Vec<NodeId> = (1..=args.nodes).map(NodeId).collect();
    let clients: Vec<String> = args
        .clients
        .iter()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let ca_existed = certs::ca_cert_path(&args.dir).exists() && args.dir.join("ca.key").exists();
    let written = certs::write_dev_certs(&args.dir, &args.cluster, &nodes, &clients)
        .with_context(|| format!("writing certificates into {}", args.dir.display()))?;
    if ca_existed {
        println!(
            "reused the CA in {} (cluster {:?})",
            args.dir.display(),
            args.cluster
        );
    }
    for path in &written {
        println!("wrote {}", path.display());
    }
    // Read every identity back through the loader the transport uses, so a bad folder fails here.
    for &id in &nodes {
        let identity = Credentials::load_node(&args.dir, id)?.identity(&args.cluster)?;
        anyhow::ensure!(
            identity == net_quic::Identity::Node(id),
            "node {id} reads back as {identity}"
        );
    }
    for name in &clients {
        Credentials::load_client(&args.dir, name)?.identity(&args.cluster)?;
    }
    println!(
        "{} files: cluster {:?}, nodes 1..={}, clients [{}]",
        written.len(),
        args.cluster,
        args.nodes,
        clients.join(", ")
    );
    Ok(())
}
