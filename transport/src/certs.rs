//! `tstore cert`: the cluster CA and the node and client certificates it signs.
//!
//! Layout of a certificate directory:
//! ```text
//! ca.crt  ca.key                 the cluster CA (keep ca.key off the nodes if you can)
//! node-<name>.crt  .key          one per node; DNS names node.tstore + <name>.node.tstore
//! client-<name>.crt  .key        one per client/operator; DNS name <name>.client.tstore
//! ```
//! Keys are written with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::tls::{Role, CLUSTER_SERVER_NAME};
use crate::TransportError;

/// How long certificates made here are valid, in years.
const VALID_YEARS: i32 = 10;

/// A directory of cluster certificates.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
}

/// Checks a node or client name: it becomes a DNS label in certificates.
pub fn validate_name(name: &str) -> Result<(), TransportError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(TransportError::BadName {
            name: name.to_owned(),
        })
    }
}

fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn validity(params: &mut CertificateParams) {
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + VALID_YEARS, 1, 1);
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// The certificate and key paths of a node or client.
    pub fn leaf(&self, role: Role, name: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{}-{name}", role.as_str());
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }

    /// Loads the TLS identity of a node or client from this directory.
    pub fn identity(&self, role: Role, name: &str) -> Result<crate::TlsIdentity, TransportError> {
        let (cert, key) = self.leaf(role, name);
        crate::TlsIdentity::load(&self.ca_cert(), &cert, &key)
    }

    /// Creates a new cluster CA. Refuses to overwrite one unless `force`.
    pub fn create_ca(&self, force: bool) -> Result<PathBuf, TransportError> {
        let (cert_path, key_path) = (self.ca_cert(), self.ca_key());
        self.ensure_absent(&[&cert_path, &key_path], force)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tstore cluster CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        self.write(&cert_path, cert.pem().as_bytes(), false)?;
        self.write(&key_path, key.serialize_pem().as_bytes(), true)?;
        Ok(cert_path)
    }

    /// Creates a certificate for a node or client, signed by this directory's CA.
    pub fn create_leaf(
        &self,
        role: Role,
        name: &str,
        force: bool,
    ) -> Result<(PathBuf, PathBuf), TransportError> {
        validate_name(name)?;
        let (cert_path, key_path) = self.leaf(role, name);
        self.ensure_absent(&[&cert_path, &key_path], force)?;

        let ca_pem = read(&self.ca_cert())?;
        let ca_key_pem = read(&self.ca_key())?;
        let ca_key =
            KeyPair::from_pem(&ca_key_pem).map_err(|e| TransportError::BadCertificate {
                path: self.ca_key(),
                reason: e.to_string(),
            })?;
        let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem).map_err(|e| {
            TransportError::BadCertificate {
                path: self.ca_cert(),
                reason: e.to_string(),
            }
        })?;
        let ca = ca_params.self_signed(&ca_key)?;

        let mut names = vec![format!("{name}.{}", role.domain())];
        let mut usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if role == Role::Node {
            names.push(CLUSTER_SERVER_NAME.to_owned());
            usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("tstore {} {name}", role.as_str()),
        );
        params.extended_key_usages = usages;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        self.write(&cert_path, cert.pem().as_bytes(), false)?;
        self.write(&key_path, key.serialize_pem().as_bytes(), true)?;
        Ok((cert_path, key_path))
    }

    fn ensure_absent(&self, paths: &[&Path], force: bool) -> Result<(), TransportError> {
        if !force {
            if let Some(p) = paths.iter().find(|p| p.exists()) {
                return Err(TransportError::Exists {
                    path: p.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    fn write(&self, path: &Path, bytes: &[u8], secret: bool) -> Result<(), TransportError> {
        let err = |cause| TransportError::WriteFile {
            path: path.to_owned(),
            cause,
        };
        std::fs::create_dir_all(&self.dir).map_err(|cause| TransportError::WriteFile {
            path: self.dir.clone(),
            cause,
        })?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut f = opts.open(path).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)
    }
}

fn read(path: &Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path).map_err(|cause| TransportError::ReadFile {
        path: path.to_owned(),
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity_of;

    #[test]
    fn node_and_client_certs_carry_role_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path());
        certs.create_ca(false).unwrap();
        certs.create_leaf(Role::Node, "n1", false).unwrap();
        certs.create_leaf(Role::Client, "ops", false).unwrap();
        let node = certs.identity(Role::Node, "n1").unwrap();
        assert_eq!(node.own_identity(), Some((Role::Node, "n1".into())));
        let client = certs.identity(Role::Client, "ops").unwrap();
        assert_eq!(client.own_identity(), Some((Role::Client, "ops".into())));
        // identity_of on a CA cert finds nothing.
        let ca = std::fs::read(certs.ca_cert()).unwrap();
        let der = rustls_pemfile::certs(&mut ca.as_slice())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(identity_of(&der), None);
    }

    #[test]
    fn refuses_to_overwrite_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path());
        certs.create_ca(false).unwrap();
        let err = certs.create_ca(false).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        certs.create_ca(true).unwrap();
        let err = certs.create_leaf(Role::Node, "a.b", false).unwrap_err();
        assert!(err.to_string().contains("invalid name"), "{err}");
    }

    #[test]
    fn leaf_without_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = CertDir::new(dir.path())
            .create_leaf(Role::Node, "n1", false)
            .unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}
