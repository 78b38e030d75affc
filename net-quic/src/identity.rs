//! Who is on the other end: identities are read from certificates, never from what a peer sends.
//!
//! The rule: a certificate issued by the cluster CA carries exactly one DNS subject alternative name
//! under the cluster's domain, either `node-<id>.<cluster>` (a node, `id` a decimal `u64`) or
//! `client-<name>.<cluster>` (a client, `name` of lowercase letters, digits and `-`). Anything else,
//! or more than one such name, is refused. Node certificates also carry the server-auth extended key
//! usage; client certificates carry client-auth only, so a client certificate cannot serve as a node.

use std::fmt;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// A node's identifier within the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An authenticated identity, as read from a verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A cluster node.
    Node(NodeId),
    /// A client, by the name in its certificate.
    Client(String),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Client(name) => write!(f, "client {name}"),
        }
    }
}

/// Why no identity could be read from a certificate (or a name is not valid for one).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The certificate is not parseable X.509.
    #[error("certificate does not parse as X.509: {0}")]
    Parse(String),
    /// No subject alternative name under the cluster domain names a node or a client.
    #[error("certificate names no node or client of cluster {cluster:?} (expected a DNS SAN like node-1.{cluster} or client-NAME.{cluster})")]
    Missing {
        /// The cluster name looked for.
        cluster: String,
    },
    /// More than one identity name: refused rather than picking one.
    #[error("certificate names {0} identities in the cluster; exactly one is allowed")]
    Ambiguous(usize),
    /// The peer presented no certificate (cannot happen with mandatory client auth).
    #[error("peer presented no certificate")]
    NoCertificate,
    /// A cluster or client name is not a valid DNS label.
    #[error("invalid name {0:?}: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'")]
    InvalidName(String),
}

/// Checks that `name` is a DNS label usable as a cluster or client name.
pub fn validate_label(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidName(name.to_string()))
    }
}

/// The DNS name in a node's certificate (also the TLS server name used to connect to it).
pub fn node_dns_name(cluster: &str, id: NodeId) -> String {
    format!("node-{}.{cluster}", id.0)
}

/// The DNS name in a client's certificate.
pub fn client_dns_name(cluster: &str, name: &str) -> String {
    format!("client-{name}.{cluster}")
}

/// Reads the identity from one DNS name, if it is an identity name of `cluster`.
fn identity_from_dns_name(name: &str, cluster: &str) -> Option<Identity> {
    let label = name.strip_suffix(cluster)?.strip_suffix('.')?;
    if let Some(id) = label.strip_prefix("node-") {
        // Canonical decimal only: "node-03" or "node-+3" would be a second spelling of a node.
        if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if id.len() > 1 && id.starts_with('0') {
            return None;
        }
        return id.parse().ok().map(|id| Identity::Node(NodeId(id)));
    }
    let client = label.strip_prefix("client-")?;
    validate_label(client).ok()?;
    Some(Identity::Client(client.to_string()))
}

/// Reads the identity out of a (verified) end-entity certificate for `cluster`.
pub fn identity_from_cert(
    cert: &CertificateDer<'_>,
    cluster: &str,
) -> Result<Identity, IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut found = Vec::new();
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                if let Some(identity) = identity_from_dns_name(dns, cluster) {
                    found.push(identity);
                }
            }
        }
    }
    match found.len() {
        0 => Err(IdentityError::Missing {
            cluster: cluster.to_string(),
        }),
        1 => Ok(found.remove(0)),
        n => Err(IdentityError::Ambiguous(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_map_to_identities_only_under_the_cluster() {
        let c = "quorate";
        assert_eq!(
            identity_from_dns_name("node-3.quorate", c),
            Some(Identity::Node(NodeId(3)))
        );
        assert_eq!(
            identity_from_dns_name("client-alice.quorate", c),
            Some(Identity::Client("alice".into()))
        );
        assert_eq!(identity_from_dns_name("node-3.other", c), None);
        assert_eq!(identity_from_dns_name("node-3.xquorate", c), None);
        assert_eq!(identity_from_dns_name("node-03.quorate", c), None);
        assert_eq!(identity_from_dns_name("node-.quorate", c), None);
        assert_eq!(
            identity_from_dns_name("node-99999999999999999999.quorate", c),
            None
        );
        assert_eq!(identity_from_dns_name("client-Bob.quorate", c), None);
        assert_eq!(identity_from_dns_name("quorate", c), None);
    }

    #[test]
    fn labels_are_validated() {
        assert!(validate_label("alice-2").is_ok());
        assert!(validate_label("").is_err());
        assert!(validate_label("-a").is_err());
        assert!(validate_label("a.b").is_err());
        assert!(validate_label("Alice").is_err());
    }
}
