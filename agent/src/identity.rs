//! The device's identity and its enrolment with a coordinator.
//!
//! # Files (`<data_dir>/identity/`)
//! - `device.key` (0600): the Ed25519 key (PKCS#8) every envelope is signed with; created at
//!   first start, never leaves the device. The device id defaults to `dev-<key id>`.
//! - `tls.key` (0600): the ECDSA P-256 key for mutual TLS to the broker; only a CSR for it is
//!   sent at enrolment.
//! - after `outpost-agent enroll`: `client.pem` (the certificate the coordinator's CA signed),
//!   `broker-ca.pem` (the CA the broker's certificate must chain to) and `enrolment.json`
//!   (device id, labels, broker URL, the coordinator's public key), and `root.json` (+ `.bak`):
//!   the coordinator's signed trust root ([`crate::trust_root`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outpost_shared::files::{write_atomic, write_private};
use outpost_shared::protocol::{PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not usable: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("enrolment failed: {0}")]
    Enrol(String),
    #[error("this device is not enrolled (run `outpost-agent enroll --coordinator URL --token T`)")]
    NotEnrolled,
}

/// The device's keys and id.
pub struct Identity {
    pub dir: PathBuf,
    pub device_id: String,
    pub signing: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

/// What enrolment gave the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolment {
    pub device_id: String,
    pub labels: BTreeMap<String, String>,
    pub broker_url: String,
    /// The coordinator's Ed25519 public key, hex.
    pub coordinator_public_key: String,
    pub api_url: String,
    pub enrolled_at_ms: u64,
}

impl Enrolment {
    pub fn coordinator_key(&self) -> Result<PublicKey, IdentityError> {
        hex::decode(&self.coordinator_public_key)
            .ok()
            .and_then(|b| PublicKey::from_bytes(&b).ok())
            .ok_or_else(|| IdentityError::Corrupt {
                path: PathBuf::from("identity/enrolment.json"),
                detail: "coordinator_public_key is not an Ed25519 public key".into(),
            })
    }
}

/// The identity folder of a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

/// The coordinator key from this data directory's enrolment, if it is enrolled (creates nothing).
pub fn enrolled_key(data_dir: &Path) -> Result<Option<PublicKey>, IdentityError> {
    let path = dir(data_dir).join("enrolment.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Io { path, source }),
    };
    let enrolment: Enrolment =
        serde_json::from_slice(&bytes).map_err(|e| IdentityError::Corrupt { path, detail: e.to_string() })?;
    enrolment.coordinator_key().map(Some)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.to_owned(), source }
}

impl Identity {
    /// Loads the identity from `<data_dir>/identity`, creating keys at first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Identity, IdentityError> {
        let dir = dir(data_dir);
        let key_path = dir.join("device.key");
        if !key_path.exists() {
            let (_, pkcs8) = SigningKey::generate()
                .map_err(|e| IdentityError::Corrupt { path: key_path.clone(), detail: e.to_string() })?;
            write_private(&key_path, &pkcs8).map_err(io(&key_path))?;
            tracing::info!(path = %key_path.display(), "created the device key");
        }
        let pkcs8 = std::fs::read(&key_path).map_err(io(&key_path))?;
        let signing = SigningKey::from_pkcs8(&pkcs8)
            .map_err(|e| IdentityError::Corrupt { path: key_path.clone(), detail: e.to_string() })?;
        let tls_path = dir.join("tls.key");
        if !tls_path.exists() {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| IdentityError::Corrupt { path: tls_path.clone(), detail: e.to_string() })?;
            write_private(&tls_path, key.serialize_pem().as_bytes()).map_err(io(&tls_path))?;
        }
        let device_id = outpost_shared::protocol::keys::device_id_of(signing.public_key().as_bytes());
        Ok(Identity { dir, device_id, signing })
    }

    pub fn enrolment(&self) -> Result<Option<Enrolment>, IdentityError> {
        let path = self.dir.join("enrolment.json");
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IdentityError::Corrupt { path, detail: e.to_string() })
    }

    /// This start's presence session: larger than every earlier start's (kept in
    /// `identity/presence.session`), and at least the wall clock in ms, so the coordinator can
    /// refuse a replayed `offline` from an earlier run. If the file cannot be written (a full
    /// disk) the clock alone is used.
    pub fn next_session(&self) -> u64 {
        let path = self.dir.join("presence.session");
        let last = std::fs::read(&path)
            .ok()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let session = outpost_shared::endpoints::now_ms().max(last.saturating_add(1));
        if let Err(e) = write_atomic(&path, &session.to_be_bytes()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the presence session; using the clock");
        }
        session
    }

    /// The broker TLS settings (client certificate + broker CA) from enrolment.
    pub fn broker_tls(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, IdentityError> {
        let read = |name: &str| {
            let path = self.dir.join(name);
            std::fs::read(&path).map_err(|source| IdentityError::Io { path, source })
        };
        let (ca, cert, key) = (read("broker-ca.pem")?, read("client.pem")?, read("tls.key")?);
        outpost_shared::tls::client_config(&ca, &cert, &key)
            .map_err(|e| IdentityError::Corrupt { path: self.dir.clone(), detail: e.to_string() })
    }

    /// The device's client certificate and TLS key (PEM), once enrolled: presented to the
    /// broker and to the API's artifact endpoint.
    pub fn client_tls(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            std::fs::read(self.dir.join("client.pem")).ok()?,
            std::fs::read(self.dir.join("tls.key")).ok()?,
        ))
    }

    /// The CA that signed the coordinator API's certificate (from enrolment), if the API is HTTPS.
    pub fn api_ca(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join("api-ca.pem")).ok()
    }

    /// Registers with a coordinator using a one-time token; `ca_pem` is the CA that signed the
    /// API's certificate (needed for `https://`; the enrolment answer may name another one for
    /// later calls).
    ///
    /// The answer's trust root is adopted (its own signatures must hold, and it must name the
    /// online key the answer gives) before anything is written.
    pub fn enrol(
        &self,
        coordinator: &str,
        token: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Enrolment, IdentityError> {
        let url = coordinator.trim_end_matches('/');
        let agent = outpost_shared::tls::api_client(url, ca_pem, std::time::Duration::from_secs(60))
            .map_err(|e| IdentityError::Enrol(e.to_string()))?;
        let tls_path = self.dir.join("tls.key");
        let tls_pem = std::fs::read_to_string(&tls_path).map_err(io(&tls_path))?;
        let key = rcgen::KeyPair::from_pem(&tls_pem)
            .map_err(|e| IdentityError::Corrupt { path: tls_path.clone(), detail: e.to_string() })?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, self.device_id.clone());
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| IdentityError::Enrol(format!("cannot make a certificate request: {e}")))?;
        let body = serde_json::json!({
            "token": token.trim(),
            "device_id": self.device_id,
            "public_key": hex::encode(self.signing.public_key().as_bytes()),
            "csr": csr,
        });
        let mut response = agent
            .post(format!("{url}/api/v1/enrol"))
            .send_json(&body)
            .map_err(|e| IdentityError::Enrol(format!("cannot reach the coordinator at {url}: {e}")))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| IdentityError::Enrol(format!("cannot read the coordinator's answer: {e}")))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            return Err(IdentityError::Enrol(format!("coordinator refused ({status}): {message}")));
        }
        #[derive(Deserialize)]
        struct Answer {
            device_id: String,
            labels: BTreeMap<String, String>,
            client_certificate: String,
            broker_ca: String,
            broker_url: String,
            coordinator_public_key: String,
            api_url: String,
            #[serde(default)]
            api_ca: Option<String>,
            /// The coordinator's current trust root (absent from coordinators before roots).
            #[serde(default)]
            root: Option<outpost_shared::protocol::root::SignedRoot>,
        }
        let answer: Answer = serde_json::from_str(&text)
            .map_err(|e| IdentityError::Enrol(format!("unexpected answer from the coordinator: {e}")))?;
        let enrolment = Enrolment {
            device_id: answer.device_id,
            labels: answer.labels,
            broker_url: answer.broker_url,
            coordinator_public_key: answer.coordinator_public_key,
            api_url: answer.api_url,
            enrolled_at_ms: outpost_shared::endpoints::now_ms(),
        };
        enrolment.coordinator_key()?;
        // The certificate must fit our key before anything is written.
        outpost_shared::tls::client_config(
            answer.broker_ca.as_bytes(),
            answer.client_certificate.as_bytes(),
            tls_pem.as_bytes(),
        )
        .map_err(|e| IdentityError::Enrol(format!("coordinator sent unusable certificates: {e}")))?;
        if let Some(root) = answer.root {
            let key = enrolment.coordinator_key()?;
            if !root.signed.online.holds(&key) {
                return Err(IdentityError::Enrol(format!(
                    "the coordinator's trust root (version {}) does not name its own online key {}",
                    root.version(),
                    key.key_id()
                )));
            }
            crate::trust_root::Trust::empty(&self.dir, Some(key), Vec::new())
                .adopt_initial(root)
                .map_err(|e| IdentityError::Enrol(e.to_string()))?;
        }
        let write = |name: &str, bytes: &[u8]| {
            let path = self.dir.join(name);
            write_atomic(&path, bytes).map_err(|source| IdentityError::Io { path, source })
        };
        write("client.pem", answer.client_certificate.as_bytes())?;
        write("broker-ca.pem", answer.broker_ca.as_bytes())?;
        match (&answer.api_ca, ca_pem) {
            (Some(pem), _) => write("api-ca.pem", pem.as_bytes())?,
            (None, Some(pem)) => write("api-ca.pem", pem)?,
            (None, None) => {}
        }
        write("enrolment.json", &serde_json::to_vec_pretty(&enrolment).unwrap_or_default())?;
        Ok(enrolment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.device_id, b.device_id);
        assert!(a.device_id.starts_with("dev-"));
        for name in ["device.key", "tls.key"] {
            let mode =
                std::fs::metadata(dir.path().join("identity").join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert!(a.enrolment().unwrap().is_none());
    }
}
