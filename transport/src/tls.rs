//! Mutual TLS against the cluster CA.
//!
//! Every node certificate carries the DNS name [`CLUSTER_SERVER_NAME`], which is
//! what a connecting side verifies, so addresses can change without reissuing
//! certificates. The holder's role and name are written as a second DNS name,
//! `<name>.node.tstore` or `<name>.client.tstore`, and read back by
//! [`identity_of`] when a connection is accepted.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::TransportError;

/// The name every node certificate holds and every connecting side checks.
pub const CLUSTER_SERVER_NAME: &str = "node.tstore";

/// What a certificate's holder is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A cluster node: may speak the peer protocol and serve.
    Node,
    /// A client or operator: may open client/admin sessions only.
    Client,
}

impl Role {
    pub(crate) fn domain(self) -> &'static str {
        match self {
            Role::Node => "node.tstore",
            Role::Client => "client.tstore",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
        }
    }
}

/// A loaded certificate chain + key + the cluster CA: enough to serve and to
/// connect.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|cause| TransportError::ReadFile {
        path: path.to_owned(),
        cause,
    })
}

fn bad(path: &Path, reason: impl ToString) -> TransportError {
    TransportError::BadCertificate {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "no certificate found"));
    }
    Ok(certs)
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    /// Loads the CA certificate and this holder's certificate and key (PEM).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TransportError> {
        let mut roots = RootCertStore::empty();
        for c in load_certs(ca)? {
            roots.add(c).map_err(|e| bad(ca, e))?;
        }
        let chain = load_certs(cert)?;
        let key_pem = read_pem(key)?;
        let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| bad(key, e))?
            .ok_or_else(|| bad(key, "no private key found"))?;
        Ok(Self {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key_der),
        })
    }

    /// The role and name written in our own certificate.
    pub fn own_identity(&self) -> Option<(Role, String)> {
        identity_of(&self.chain[0])
    }

    pub(crate) fn server_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<rustls::ServerConfig, TransportError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }

    pub(crate) fn client_config(
        &self,
        alpn: &[u8],
    ) -> Result<rustls::ClientConfig, TransportError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }
}

/// Reads the holder's role and name from a certificate made by `tstore cert`
/// (its `<name>.node.tstore` or `<name>.client.tstore` DNS name).
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<(Role, String)> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    for name in &san.value.general_names {
        if let GeneralName::DNSName(dns) = name {
            for role in [Role::Node, Role::Client] {
                if let Some(holder) = dns.strip_suffix(&format!(".{}", role.domain())) {
                    if !holder.is_empty() && !holder.contains('.') {
                        return Some((role, holder.to_owned()));
                    }
                }
            }
        }
    }
    None
}
