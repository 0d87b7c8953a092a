//! The emulator's local certificate authority and server certificate.

use crate::error::EmulatorError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spotflow_core::private_fs::{tighten_public_file, write_private_file, write_public_file};
use tracing::info;

/// TLS material of a running emulator.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The local CA certificate (PEM) that clients must trust.
    pub ca_pem: String,
    /// Where the CA certificate is stored, when the emulator has a data directory.
    pub ca_path: Option<PathBuf>,
    /// Server configuration for every TLS listener.
    pub server_config: Arc<rustls::ServerConfig>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Spotflow Emulator Local CA");
    dn.push(DnType::OrganizationName, "spotflow-emulator");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    params
}

/// The crypto provider used by every TLS endpoint of the emulator.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::error::Error + Send + Sync + 'static) -> EmulatorError {
    EmulatorError::Tls(Box::new(e))
}

/// Loads the CA from `dir` (creating it on first start) and issues a server certificate for
/// `hosts` (plus `localhost`, `127.0.0.1`, `::1`).
pub fn load_or_create(dir: Option<&Path>, hosts: &[String]) -> Result<TlsMaterial, EmulatorError> {
    let (ca_key, ca_pem, ca_path) = match dir {
        Some(dir) => {
            let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
            if cert_path.exists() && key_path.exists() {
                // Written with the umask's mode by earlier versions: not writable by others.
                tighten_public_file(&cert_path).map_err(tls_err)?;
                spotflow_core::private_fs::tighten_if_exists(&key_path).map_err(tls_err)?;
                let key_pem = std::fs::read_to_string(&key_path).map_err(tls_err)?;
                let ca_pem = std::fs::read_to_string(&cert_path).map_err(tls_err)?;
                (KeyPair::from_pem(&key_pem).map_err(tls_err)?, ca_pem, Some(cert_path))
            } else {
                let key = KeyPair::generate().map_err(tls_err)?;
                let cert = ca_params().self_signed(&key).map_err(tls_err)?;
                write_private_file(&key_path, key.serialize_pem().as_bytes()).map_err(tls_err)?;
                write_public_file(&cert_path, cert.pem().as_bytes()).map_err(tls_err)?;
                info!(path = %cert_path.display(), "created the emulator's local CA");
                (key, cert.pem(), Some(cert_path))
            }
        }
        None => {
            let key = KeyPair::generate().map_err(tls_err)?;
            let cert = ca_params().self_signed(&key).map_err(tls_err)?;
            (key, cert.pem(), None)
        }
    };
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let mut params = CertificateParams::new(names).map_err(tls_err)?;
    params.distinguished_name.push(DnType::CommonName, "spotflow-emulator");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Strict verifiers (Python 3.13's default `VERIFY_X509_STRICT`) require it.
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(tls_err)?;
    if let Some(dir) = dir {
        let _ = write_public_file(&dir.join("server.pem"), cert.pem().as_bytes());
        let key_path = dir.join("server-key.pem");
        let _ = write_private_file(&key_path, key.serialize_pem().as_bytes());
    }
    let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| EmulatorError::InvalidCaCertificate(format!("{e:?}")))?;
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_der];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(tls_err)?;
    Ok(TlsMaterial { ca_pem, ca_path, server_config: Arc::new(config) })
}

/// A client configuration that trusts only the given CA (PEM), for tools and tests talking to the
/// emulator.
pub fn client_config(ca_pem: &str) -> Result<rustls::ClientConfig, EmulatorError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in <CertificateDer<'static> as rustls::pki_types::pem::PemObject>::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| EmulatorError::InvalidCaCertificate(format!("{e:?}")))?;
        roots.add(cert).map_err(|e| EmulatorError::InvalidCaCertificate(e.to_string()))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
