//! Credentials and the rustls / quinn configurations built from them (ring provider, TLS 1.3 only).

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs;
use crate::identity::{identity_from_cert, Identity, IdentityError, NodeId};

/// ALPN of node-to-node traffic.
pub const PEER_ALPN: &[u8] = b"quorate-peer/1";
/// ALPN of client request/response traffic. Version 2: requests pipelined on long-lived streams
/// with request ids (version 1, one stream per request, is no longer spoken: an old client fails
/// the handshake rather than being misread).
pub const CLIENT_ALPN: &[u8] = b"quorate-client/2";

/// Why credentials could not be loaded or a TLS configuration built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no item of the expected kind.
    #[error("{0}: no {1} found in PEM file")]
    MissingPem(std::path::PathBuf, &'static str),
    /// rustls refused the certificates or keys.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificates could not be used as trust anchors.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the TLS configuration.
    #[error("QUIC crypto configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// Our own certificate does not carry a valid identity.
    #[error("own certificate: {0}")]
    Identity(#[from] IdentityError),
}

/// A party's TLS credentials: its certificate chain and key, and the cluster CA it trusts.
#[derive(Debug)]
pub struct Credentials {
    /// The party's certificate chain (end-entity first).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The party's private key.
    pub key: PrivateKeyDer<'static>,
    /// The cluster CA certificates trusted to issue peers' certificates.
    pub ca: Vec<CertificateDer<'static>>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let data = std::fs::read(path).map_err(io)?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    if certs.is_empty() {
        return Err(TlsError::MissingPem(path.to_path_buf(), "certificate"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let data = std::fs::read(path).map_err(io)?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(io)?
        .ok_or_else(|| TlsError::MissingPem(path.to_path_buf(), "private key"))
}

impl Credentials {
    /// Loads credentials from PEM files: certificate chain, private key, CA certificate(s).
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        Ok(Credentials {
            cert_chain: read_certs(cert)?,
            key: read_key(key)?,
            ca: read_certs(ca)?,
        })
    }

    /// Builds credentials from PEM text (certificate chain, private key, CA certificate(s)).
    pub fn from_pem(cert: &str, key: &str, ca: &str) -> Result<Self, TlsError> {
        let bad = |what| TlsError::MissingPem("<memory>".into(), what);
        let cert_chain = rustls_pemfile::certs(&mut cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("certificate"))?;
        let ca_certs = rustls_pemfile::certs(&mut ca.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("CA certificate"))?;
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .ok()
            .flatten()
            .ok_or_else(|| bad("private key"))?;
        if cert_chain.is_empty() {
            return Err(bad("certificate"));
        }
        if ca_certs.is_empty() {
            return Err(bad("CA certificate"));
        }
        Ok(Credentials {
            cert_chain,
            key,
            ca: ca_certs,
        })
    }

    /// Loads node `id`'s credentials from a folder written by [`certs::write_dev_certs`].
    pub fn load_node(dir: &Path, id: NodeId) -> Result<Self, TlsError> {
        let (cert, key) = certs::node_paths(dir, id);
        Self::from_pem_files(&cert, &key, &certs::ca_cert_path(dir))
    }

    /// Loads client `name`'s credentials from a folder written by [`certs::write_dev_certs`].
    pub fn load_client(dir: &Path, name: &str) -> Result<Self, TlsError> {
        let (cert, key) = certs::client_paths(dir, name);
        Self::from_pem_files(&cert, &key, &certs::ca_cert_path(dir))
    }

    /// The identity our own certificate carries in `cluster`.
    pub fn identity(&self, cluster: &str) -> Result<Identity, TlsError> {
        let leaf = self
            .cert_chain
            .first()
            .ok_or(IdentityError::NoCertificate)?;
        Ok(identity_from_cert(leaf, cluster)?)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.ca {
            roots.add(ca.clone())?;
        }
        Ok(Arc::new(roots))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Credentials {
    /// A rustls server configuration: TLS 1.3, mandatory client certificates signed by the CA,
    /// both ALPNs offered. (Also usable over TCP, as the benchmark baseline does.)
    pub fn rustls_server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider()).build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![PEER_ALPN.to_vec(), CLIENT_ALPN.to_vec()];
        Ok(config)
    }

    /// A rustls client configuration presenting our certificate and offering `alpn`; the server
    /// must present a CA-signed certificate for the name dialled.
    pub fn rustls_client_config(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    /// A quinn client configuration (for raw connections: tests, tools) offering `alpn`.
    pub fn quinn_client_config(&self, alpn: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
        Ok(quinn::ClientConfig::new(client_crypto(self, alpn)?))
    }
}

pub(crate) fn server_crypto(creds: &Credentials) -> Result<Arc<QuicServerConfig>, TlsError> {
    Ok(Arc::new(QuicServerConfig::try_from(
        creds.rustls_server_config()?,
    )?))
}

pub(crate) fn client_crypto(
    creds: &Credentials,
    alpn: &[u8],
) -> Result<Arc<QuicClientConfig>, TlsError> {
    Ok(Arc::new(QuicClientConfig::try_from(
        creds.rustls_client_config(alpn)?,
    )?))
}

/// A stateless-reset key derived from the private key, so that a restarted node can reset the
/// connections its previous incarnation held and peers notice the restart at once (instead of at
/// the idle timeout).
pub(crate) fn reset_key(creds: &Credentials) -> ring::hmac::Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"quorate net-quic stateless reset key v1");
    ctx.update(creds.key.secret_der());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ctx.finish().as_ref())
}

/// Random 8-byte connection ids that any incarnation of the node accepts as its own.
///
/// quinn's default generator signs its ids with a key chosen per process, and drops packets whose
/// id fails that check. A restarted node then silently drops its peers' packets on the connections
/// of its previous incarnation instead of answering with a stateless reset (which [`reset_key`]
/// makes verifiable), so the peers kept those dead connections until their idle timeout. These ids
/// carry no signature: an unknown id is answered with a stateless reset (rate-limited by quinn).
pub(crate) struct RestartableCids {
    rng: ring::rand::SystemRandom,
    /// Fallback entropy if the system generator fails (it should not).
    fallback: std::collections::hash_map::RandomState,
    counter: u64,
}

/// Bytes in a connection id (as quinn's default generator uses).
const CID_LEN: usize = 8;

impl RestartableCids {
    pub(crate) fn new() -> Self {
        RestartableCids {
            rng: ring::rand::SystemRandom::new(),
            fallback: std::collections::hash_map::RandomState::new(),
            counter: 0,
        }
    }
}

impl quinn::ConnectionIdGenerator for RestartableCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        use std::hash::BuildHasher;
        let mut bytes = [0u8; CID_LEN];
        if self.rng.fill(&mut bytes).is_err() {
            self.counter += 1;
            bytes = self.fallback.hash_one(self.counter).to_le_bytes();
        }
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Reads the authenticated identity of a connection's peer.
pub(crate) fn peer_identity(
    conn: &quinn::Connection,
    cluster: &str,
) -> Result<Identity, IdentityError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoCertificate)?;
    identity_from_cert(leaf, cluster)
}

/// The ALPN a connection negotiated.
pub(crate) fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|any| any.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
}
