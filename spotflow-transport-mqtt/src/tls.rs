//! TLS client configuration shared by the MQTT transport and the HTTPS platform API.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use spotflow_core::{Error, Result};
use tracing::warn;

/// Which certificate authorities to trust.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust the platform's (operating system's) root certificates. Default `true`.
    pub platform_roots: bool,
    /// Extra CA certificates (PEM), e.g. the local emulator's CA or a private deployment's.
    pub extra_ca_pem: Vec<String>,
}

impl TlsOptions {
    /// Platform roots only.
    pub fn platform() -> Self {
        TlsOptions { platform_roots: true, extra_ca_pem: Vec::new() }
    }

    /// Adds a CA certificate (PEM text).
    pub fn with_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.extra_ca_pem.push(pem.into());
        self
    }

    /// Adds the CA certificates of a PEM file.
    pub fn with_ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("CA file", format!("cannot read {}: {e}", path.display())))?;
        Ok(self.with_ca_pem(pem))
    }

    /// Builds the rustls client configuration (certificate and host name verification on).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        if self.platform_roots {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                warn!(error = %e, "could not load some platform root certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                warn!("no platform root certificates found");
            }
        }
        for pem in &self.extra_ca_pem {
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| Error::invalid("CA certificate", format!("{e:?}")))?;
                roots.add(cert).map_err(|e| Error::invalid("CA certificate", e))?;
                any = true;
            }
            if !any {
                return Err(Error::invalid("CA certificate", "no certificate found in the PEM text"));
            }
        }
        if roots.is_empty() {
            return Err(Error::invalid("TLS configuration", "no trusted certificate authority"));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid("TLS configuration", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// A configuration with the platform roots only (possibly none). Used where no TLS configuration
/// was given (uploads next to a plain-TCP broker). Built once per process: reading and parsing
/// the system's root store costs milliseconds, too much for every reconnection.
pub(crate) fn platform_only() -> Result<Arc<rustls::ClientConfig>> {
    static PLATFORM_ONLY: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(config) = PLATFORM_ONLY.get() {
        return Ok(config.clone());
    }
    let config = match TlsOptions::platform().client_config() {
        Ok(config) => config,
        Err(_) => Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::invalid("TLS configuration", e))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    };
    Ok(PLATFORM_ONLY.get_or_init(|| config).clone())
}
