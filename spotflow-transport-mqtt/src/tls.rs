//! TLS client configuration shared by the MQTT transport and the HTTPS platform API.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use spotflow_core::{Error, Result};
use tracing::warn;

/// Which certificate authorities to trust.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

    /// The rustls client configuration (certificate and host name verification on). Clients
    /// that trust the same authorities share one while any of them lives: the parsed root store
    /// of the operating system's certificates alone is ≈ 100 KiB, too much to repeat for each of
    /// thousands of devices in one process (and reading it takes milliseconds).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        type Built = Vec<(TlsOptions, std::sync::Weak<rustls::ClientConfig>)>;
        static BUILT: std::sync::Mutex<Built> = std::sync::Mutex::new(Vec::new());
        let mut built = spotflow_core::lock(&BUILT);
        built.retain(|(_, config)| config.strong_count() > 0);
        if let Some(config) = built.iter().find(|(options, _)| options == self).and_then(|(_, c)| c.upgrade()) {
            return Ok(config);
        }
        let config = self.build()?;
        built.push((self.clone(), Arc::downgrade(&config)));
        Ok(config)
    }

    fn build(&self) -> Result<Arc<rustls::ClientConfig>> {
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
    let config = match TlsOptions::platform().build() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clients_trusting_the_same_authorities_share_one_configuration() {
        let emulator = spotflow_emulator::Emulator::builder().start().await.unwrap();
        let options = TlsOptions { platform_roots: false, extra_ca_pem: vec![emulator.ca_pem().to_owned()] };
        let a = options.client_config().unwrap();
        let b = options.clone().client_config().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same trust: one configuration");
        let other = TlsOptions {
            platform_roots: false,
            extra_ca_pem: vec![emulator.ca_pem().to_owned(), emulator.ca_pem().to_owned()],
        };
        assert!(!Arc::ptr_eq(&a, &other.client_config().unwrap()), "other trust: another configuration");
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "not kept once its clients are gone");
        assert!(options.client_config().is_ok());
        assert!(TlsOptions { platform_roots: false, extra_ca_pem: vec!["not PEM".into()] }.client_config().is_err());
    }
}
