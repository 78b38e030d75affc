//! Development certificates (rcgen): a cluster CA, node certificates and client certificates.
//!
//! [`write_dev_certs`] writes PEM files into one folder, with these names:
//!
//! | file                  | content                                              |
//! |-----------------------|------------------------------------------------------|
//! | `ca.pem`              | the cluster CA certificate (every party trusts it)   |
//! | `ca.key`              | the CA private key (dev only: reused to add members) |
//! | `node-<id>.pem/.key`  | node `<id>`: SAN `node-<id>.<cluster>`, server+client auth |
//! | `client-<name>.pem/.key` | client `<name>`: SAN `client-<name>.<cluster>`, client auth only |
//!
//! Private keys are written with mode 0600 on Unix. If `ca.pem` and `ca.key` already exist in the
//! folder they are reused, so more nodes or clients can be added to an existing dev cluster.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::identity::{client_dns_name, node_dns_name, validate_label, IdentityError, NodeId};

/// Why certificates could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A name is not usable in a certificate.
    #[error(transparent)]
    Name(#[from] IdentityError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

/// A certificate authority able to issue node and client certificates for one cluster.
pub struct DevCa {
    cluster: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{cluster} cluster CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl DevCa {
    /// A fresh CA for `cluster` (a DNS label, e.g. `quorate`).
    pub fn generate(cluster: &str) -> Result<Self, CertError> {
        validate_label(cluster)?;
        let key = KeyPair::generate()?;
        let cert = ca_params(cluster).self_signed(&key)?;
        Ok(DevCa {
            cluster: cluster.to_string(),
            cert,
            key,
        })
    }

    /// Reloads a CA from its PEM certificate and key (as written by [`write_dev_certs`]).
    pub fn from_pem(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        validate_label(cluster)?;
        let key = KeyPair::from_pem(key_pem)?;
        // Re-signing the parsed parameters with the same key yields an issuer with the same
        // subject and key, which is all that issuing needs.
        let cert = CertificateParams::from_ca_cert_pem(cert_pem)?.self_signed(&key)?;
        Ok(DevCa {
            cluster: cluster.to_string(),
            cert,
            key,
        })
    }

    /// The cluster this CA issues for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> PemPair {
        PemPair {
            cert_pem: self.cert.pem(),
            key_pem: self.key.serialize_pem(),
        }
    }

    fn issue(
        &self,
        dns_name: String,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<PemPair, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![dns_name.clone()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the certificate of node `id` (server and client authentication).
    pub fn issue_node(&self, id: NodeId) -> Result<PemPair, CertError> {
        self.issue(
            node_dns_name(&self.cluster, id),
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// Issues the certificate of client `name` (client authentication only).
    pub fn issue_client(&self, name: &str) -> Result<PemPair, CertError> {
        validate_label(name)?;
        self.issue(
            client_dns_name(&self.cluster, name),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )
    }
}

/// The path of the CA certificate in a certificate folder.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The paths (certificate, key) of node `id`'s files in a certificate folder.
pub fn node_paths(dir: &Path, id: NodeId) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("node-{}.pem", id.0)),
        dir.join(format!("node-{}.key", id.0)),
    )
}

/// The paths (certificate, key) of client `name`'s files in a certificate folder.
pub fn client_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("client-{name}.pem")),
        dir.join(format!("client-{name}.key")),
    )
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

fn write_pair(pair: &PemPair, (cert, key): (PathBuf, PathBuf)) -> Result<Vec<PathBuf>, CertError> {
    write_file(&key, &pair.key_pem, true)?;
    write_file(&cert, &pair.cert_pem, false)?;
    Ok(vec![cert, key])
}

/// Writes (or reuses) the CA of `cluster` in `dir`, then node and client certificates; returns the
/// files written. Creates `dir` if needed.
pub fn write_dev_certs(
    dir: &Path,
    cluster: &str,
    nodes: &[NodeId],
    clients: &[String],
) -> Result<Vec<PathBuf>, CertError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_cert = ca_cert_path(dir);
    let ca_key = dir.join("ca.key");
    let mut written = Vec::new();
    let ca = if ca_cert.exists() && ca_key.exists() {
        let cert_pem = std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
        let key_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        DevCa::from_pem(cluster, &cert_pem, &key_pem)?
    } else {
        let ca = DevCa::generate(cluster)?;
        written.extend(write_pair(&ca.pem(), (ca_cert, ca_key))?);
        ca
    };
    for &id in nodes {
        written.extend(write_pair(&ca.issue_node(id)?, node_paths(dir, id))?);
    }
    for name in clients {
        written.extend(write_pair(
            &ca.issue_client(name)?,
            client_paths(dir, name),
        )?);
    }
    Ok(written)
}
