//! TLS settings built from PEM files: the MQTT link's client (mutual TLS), the coordinator
//! API's server, and (feature `client`) the HTTPS client the CLIs and agents use for the API.
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

/// A server config presenting `cert_pem` (chain) and `key_pem`. With `client_ca_pem`, clients
/// may present a certificate from that CA (devices do); clients without one are let through
/// and authenticate otherwise (bearer tokens).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(cert_pem, "server certificate")?;
    let key = private_key(key_pem, "server key")?;
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca, "client CA certificate")? {
                roots.add(cert)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server config presenting `cert_pem`/`key_pem` that **requires** every client to present a
/// certificate from `client_ca_pem` (the embedded MQTT broker's front: no certificate, no
/// connection).
pub fn mutual_server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(cert_pem, "server certificate")?;
    let key = private_key(key_pem, "server key")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(client_ca_pem, "client CA certificate")? {
        roots.add(cert)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A blocking HTTP client for the coordinator API at `url`: `https://` trusts only `ca_pem`
/// (the coordinator's CA, or the operator's), `http://` is refused unless the host is
/// loopback ([`crate::endpoints::check_api_url`]). Builds the client; does no I/O itself.
#[cfg(feature = "client")]
pub fn api_client(
    url: &str,
    ca_pem: Option<&[u8]>,
    timeout: std::time::Duration,
) -> Result<ureq::Agent, ClientError> {
    api_client_as(url, ca_pem, None, timeout)
}

/// Why an API client could not be built.
#[cfg(feature = "client")]
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Url(#[from] crate::endpoints::UrlError),
    #[error("`{0}` is HTTPS: give the CA certificate that signed its certificate")]
    NoCa(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("client key: {0}")]
    Key(String),
}

/// [`api_client`] presenting a client certificate over HTTPS (a device: `(cert_pem, key_pem)`).
#[cfg(feature = "client")]
pub fn api_client_as(
    url: &str,
    ca_pem: Option<&[u8]>,
    client: Option<(&[u8], &[u8])>,
    timeout: std::time::Duration,
) -> Result<ureq::Agent, ClientError> {
    let tls = crate::endpoints::check_api_url(url)?;
    let mut config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout));
    if tls {
        let pem = ca_pem.ok_or_else(|| ClientError::NoCa(url.to_owned()))?;
        let roots = certificates(pem, "CA certificate")?
            .into_iter()
            .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        let mut tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(provider());
        if let Some((cert_pem, key_pem)) = client {
            let chain: Vec<ureq::tls::Certificate<'static>> = certificates(cert_pem, "client certificate")?
                .into_iter()
                .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
                .collect();
            let key =
                ureq::tls::PrivateKey::from_pem(key_pem).map_err(|e| ClientError::Key(e.to_string()))?;
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
        }
        config = config.tls_config(tls.build());
    }
    Ok(config.build().into())
}

/// Container health probe (both binaries' `probe` subcommand): `GET url` must answer 200.
#[cfg(feature = "client")]
#[derive(Debug)]
pub struct ProbeTarget {
    pub url: String,
    pub ca_file: Option<std::path::PathBuf>,
    pub timeout_secs: u64,
}

#[cfg(feature = "client")]
impl ProbeTarget {
    /// Runs the probe; prints `ok`, or the reason on stderr. Exit code 0 healthy, 1 for anything
    /// else — unreadable CA file and refused URL included, because Docker reserves exit code 2
    /// of a HEALTHCHECK.
    pub fn run(&self) -> std::process::ExitCode {
        let ca = match &self.ca_file {
            Some(path) => match std::fs::read(path) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    eprintln!("error: cannot read --ca-file {}: {e}", path.display());
                    return std::process::ExitCode::from(1);
                }
            },
            None => None,
        };
        // Same URL rules as every client: HTTPS needs the CA, plain HTTP only to loopback.
        let timeout = std::time::Duration::from_secs(self.timeout_secs.max(1));
        let agent = match api_client(&self.url, ca.as_deref(), timeout) {
            Ok(agent) => agent,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(1);
            }
        };
        let unhealthy = |why: String| {
            eprintln!("unhealthy: {why}");
            std::process::ExitCode::from(1)
        };
        match agent.get(&self.url).call() {
            Ok(response) if response.status() == 200 => {
                println!("ok");
                std::process::ExitCode::SUCCESS
            }
            Ok(response) => unhealthy(format!("{} answered {}", self.url, response.status())),
            Err(e) => unhealthy(format!("{}: {e}", self.url)),
        }
    }
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
