//! TLS client settings for the MQTT link (mutual TLS), built from PEM files.
//!
//! rustls with **ring as the only crypto provider**, passed explicitly: with two providers
//! compiled in and none chosen, rustls panics (see the team's runtime notes). Only the CA
//! given here is trusted — never the system's roots — because brokers of an Outpost fleet
//! carry certificates from the fleet's own CA (or the operator's broker CA).

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS settings cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("{0} holds no certificate")]
    NoCertificate(&'static str),
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every Outpost TLS config uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM file.
pub fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

/// Parses a private key (PKCS#8, SEC1 or PKCS#1) from PEM.
pub fn private_key(pem: &[u8], what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem { what, detail: e.to_string() })
}

/// A client config that trusts only `ca_pem` and presents `cert_pem`/`key_pem`.
pub fn client_config(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca_pem, "CA certificate")? {
        roots.add(cert)?;
    }
    let chain = certificates(cert_pem, "client certificate")?;
    let key = private_key(key_pem, "client key")?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_is_refused_with_its_name() {
        let err = client_config(b"not pem", b"", b"").unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
    }
}
