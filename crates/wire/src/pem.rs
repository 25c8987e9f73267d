//! PEM files for rustls, for both binaries: certificate chains, private
//! keys and CA bundles, and the rustls configurations built from them
//! (the relay's listener, the agent's clients with or without a client
//! certificate). One loader, so both binaries refuse the same files with
//! the same words.
//!
//! Every error names the file it is about and says what is wrong with it
//! ([`PemError`]); none carries the file's content.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file (or the certificate and key pair in two of them) could
/// not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no certificate: it is empty, or holds only other
    /// PEM sections (a private key given as a certificate).
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no private key (PKCS#8, PKCS#1 or SEC1): it is
    /// empty, or holds only other PEM sections (a certificate given as a
    /// key).
    #[error("{}: no PEM private key found", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A PEM section is broken (bad base64, no end line).
    #[error("{}: malformed PEM: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// A CA certificate is not usable as a trust anchor.
    #[error("{}: CA certificate not usable: {reason}", path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The private key is not the key of the certificate.
    #[error("{}: the private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate and key for another reason (an
    /// unsupported key type, say).
    #[error("{}: {reason}", cert.display())]
    Refused {
        /// The certificate file.
        cert: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

impl PemError {
    fn of(path: &Path, error: pem::Error, missing: fn(PathBuf) -> Self) -> Self {
        let path = path.to_owned();
        match error {
            pem::Error::Io(source) => Self::Read { path, source },
            pem::Error::NoItemsFound => missing(path),
            other => Self::Malformed {
                path,
                reason: other.to_string(),
            },
        }
    }

    fn pair(cert: &Path, key: &Path, error: rustls::Error) -> Self {
        match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                Self::KeyMismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                }
            }
            other => Self::Refused {
                cert: cert.to_owned(),
                reason: other.to_string(),
            },
        }
    }
}

/// The certificates in `path`, in order (a chain: leaf first). At least
/// one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let no_certificate = |path| PemError::NoCertificate { path };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| PemError::of(path, e, no_certificate))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::of(path, e, no_certificate))?;
    if certs.is_empty() {
        return Err(no_certificate(path.to_owned()));
    }
    Ok(certs)
}

/// The first private key in `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| PemError::of(path, e, |path| PemError::NoKey { path }))
}

/// Adds every certificate of the CA bundle `path` to `roots`.
pub fn add_ca_bundle(roots: &mut RootCertStore, path: &Path) -> Result<(), PemError> {
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| PemError::BadCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration (ring, safe default protocol versions) with the
/// certificate chain in `cert` and the private key in `key`, offering
/// `alpn`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, PemError> {
    let chain = certificates(cert)?;
    let private = private_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PemError::pair(cert, key, e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| PemError::pair(cert, key, e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration (ring, safe default protocol versions) trusting
/// `roots`, presenting the certificate chain and key of `client_cert`
/// (certificate file, key file) to servers that ask for one (mTLS).
pub fn client_config(
    roots: RootCertStore,
    client_cert: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, PemError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PemError::Refused {
            cert: PathBuf::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let private = private_key(key)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| PemError::pair(cert, key, e))
        }
    }
}

#[cfg(test)]
mod tests;
