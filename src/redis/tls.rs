//! TLS for `rediss://` connections, over rustls (feature `redis-tls`).
//!
//! A `rediss://` URL alone verifies the server against the system's root
//! certificates. [`RedisTls`] adds a private CA and an optional client
//! certificate (mutual TLS); the ordinary connection and the blocking-read
//! connections use the same settings.
//!
//! A certificate the client rejects (unknown CA, a host name the certificate
//! does not name, an expired one) or a handshake the server rejects (a
//! missing client certificate) is an [`ErrorKind::Tls`](crate::ErrorKind::Tls)
//! error, which is not temporary: retrying with the same settings cannot
//! succeed, so the backend is not marked unavailable and no call waits for it.

use crate::error::{Error, Result};
use redis::RedisError;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::path::Path;

/// TLS settings: a CA to trust instead of the system's roots, and an
/// optional client certificate. Set with
/// [`RedisBackendBuilder::tls`](super::RedisBackendBuilder::tls).
///
/// ```no_run
/// # fn demo() -> fleetwire::Result<()> {
/// use fleetwire::redis::{RedisBackend, RedisTls};
/// let tls = RedisTls::new()
///     .ca_file("/etc/redis/ca.crt")?
///     .client_cert_files("/etc/redis/client.crt", "/etc/redis/client.key")?;
/// let redis = RedisBackend::builder().url("rediss://redis.internal:6380").tls(tls).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct RedisTls {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("custom_ca", &self.ca.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// No custom CA (the system's roots) and no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust the CA certificate(s) in `pem` instead of the system's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Present this client certificate chain and its private key (both PEM).
    pub fn client_cert_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((cert.into(), key.into()));
        self
    }

    /// [`ca_pem`](Self::ca_pem) from a file; an unreadable file is an
    /// `InvalidInput` error naming it.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self> {
        Ok(self.ca_pem(read(path.as_ref(), "CA certificate")?))
    }

    /// [`client_cert_pem`](Self::client_cert_pem) from two files.
    pub fn client_cert_files(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let cert = read(cert.as_ref(), "client certificate")?;
        let key = read(key.as_ref(), "client key")?;
        Ok(self.client_cert_pem(cert, key))
    }

    /// The certificates as redis-rs takes them, each checked to be PEM of
    /// the right kind first (so a bad file is an error at build time).
    pub(crate) fn certificates(&self) -> Result<redis::TlsCertificates> {
        install_crypto_provider();
        if let Some(ca) = &self.ca {
            let certs = CertificateDer::pem_slice_iter(ca)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::invalid(format!("TLS CA certificate: not valid PEM ({e})")))?;
            if certs.is_empty() {
                return Err(Error::invalid("TLS CA certificate: no certificate in the PEM"));
            }
        }
        if let Some((cert, key)) = &self.client {
            let certs = CertificateDer::pem_slice_iter(cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::invalid(format!("TLS client certificate: not valid PEM ({e})")))?;
            if certs.is_empty() {
                return Err(Error::invalid(
                    "TLS client certificate: no certificate in the PEM",
                ));
            }
            PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| Error::invalid(format!("TLS client key: no private key in the PEM ({e})")))?;
        }
        Ok(redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca.clone(),
        })
    }

    /// A client for `url` (`rediss://`) with these settings.
    pub(crate) fn client(&self, url: &str, shown_url: &str) -> Result<redis::Client> {
        redis::Client::build_with_tls(url, self.certificates()?).map_err(|e| {
            Error::invalid(format!(
                "Redis TLS settings for `{shown_url}` rejected: {}",
                e.detail().unwrap_or(&e.to_string())
            ))
        })
    }
}

impl super::RedisBackendBuilder {
    /// TLS settings for a `rediss://` URL: a custom CA, a client certificate
    /// (default: none, so `rediss://` trusts the system's roots).
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::invalid(format!("cannot read the TLS {what} `{}`: {e}", path.display())))
}

/// rustls needs a process-wide crypto provider; install ring's unless the
/// application chose one (two providers compiled in would make rustls panic).
/// ring, not aws-lc-rs, because it builds without cmake; rustls marks it
/// deprecated for lacking post-quantum key exchange only.
#[allow(deprecated)]
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The rustls error behind `e`, if a TLS handshake or record failed.
///
/// redis-rs keeps the I/O error in an `Arc`, and `io::Error::source` skips
/// the error it wraps, so the chain has to be opened by hand.
pub(crate) fn tls_failure(e: &RedisError) -> Option<&rustls::Error> {
    std::error::Error::source(e).and_then(find_rustls)
}

fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    if let Some(r) = err.downcast_ref::<rustls::Error>() {
        Some(r)
    } else if let Some(shared) = err.downcast_ref::<Shared>() {
        find_rustls(&**shared)
    } else if let Some(io) = err.downcast_ref::<std::io::Error>() {
        io.get_ref().and_then(|inner| find_rustls(inner))
    } else {
        err.source().and_then(find_rustls)
    }
}
