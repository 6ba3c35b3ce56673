//! The fleet's certificate authority and the coordinator's signing key, created at first
//! start under `<data_dir>/pki/`.
//!
//! - `ca.pem` / `ca.key` (0600): an ECDSA P-256 CA. It signs device client certificates (from
//!   the CSR a device sends at enrolment — the device's TLS key never leaves it), the
//!   coordinator's own client certificate for the broker, and server certificates for brokers
//!   (`outpost-coordinator cert server`).
//! - `signing.pk8` (0600): the **release** key (Ed25519). It signs bundles — the registry adds
//!   its signature on push — and agents list its public half in `registry.trusted_keys`.
//! - `online.pk8` (0600): the **online** (control) key. It signs desired states and acks, and
//!   devices learn its public half at enrolment. A device trusts each key for its role only: a
//!   desired state signed by the release key, or a bundle signed only by the online key, is
//!   refused. Devices enrolled before the two were split (when one key did both) keep getting
//!   control messages from the release key until they adopt a trust root ([`Authority::control_key`]).
//! - `root.pk8` (0600): the **root** key, which signs trust-root statements naming the keys of
//!   each role; rotating the online key or changing the release keys is a new statement it
//!   signs ([`crate::fleet::roots`]). It may be moved off this host once version 1 exists.
//!
//! Device certificates carry the device id as their common name and no organisation field
//! (an `O=` turns into a tenant in some brokers and rewrites client ids). Each has a random
//! serial number, kept with the device, so a revoked device's certificate can be listed in the
//! CA's revocation list ([`Authority::revocation_list`]) that an external broker checks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::base::secrets::Secrets;

/// The secret files under `pki/` (sealed in place at start when `[secrets] key` is set); retired
/// online keys (`online.<id>.retired.pk8`) are written sealed when they are retired.
pub const SECRET_FILES: [&str; 5] = ["ca.key", "signing.pk8", "online.pk8", "online.next.pk8", "root.pk8"];

use outpost_shared::protocol::SigningKey;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a usable key or certificate: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error(transparent)]
    Secret(#[from] crate::base::secrets::SecretsError),
}

/// The CA plus the coordinator's release and online keys.
pub struct Authority {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    signing: Arc<SigningKey>,
    /// Swapped when a trust root names a new online key ([`crate::fleet::roots`]).
    online: RwLock<Arc<SigningKey>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("release_key_id", &self.signing.key_id())
            .field("online_key_id", &self.online_key().key_id())
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_owned(), source }
}

fn gen_err(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails if the OS has no entropy source at all.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// How far back every certificate the CA issues is valid from: a device whose clock is up to
/// this much behind (no real-time clock, no NTP at an air-gapped site) still accepts the broker's
/// and the API's certificates, and is accepted with its own.
pub const CLOCK_MARGIN_SECS: u64 = 48 * 3600;

fn validity(params: &mut CertificateParams, days: u32) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    params.not_before = now - std::time::Duration::from_secs(CLOCK_MARGIN_SECS);
    params.not_after = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
}

/// The subject CN of a DER certificate (a device's id, or the coordinator's name), as the
/// API's TLS front and the embedded broker's front read it from a verified client certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

impl Authority {
    /// Loads the CA and signing key from `<data_dir>/pki`, creating them on first start;
    /// `secrets` seals them (and opens them sealed).
    pub fn load_or_create(data_dir: &Path, secrets: &Secrets) -> Result<Authority, CaError> {
        let dir = data_dir.join("pki");
        let (ca_cert, ca_key, signing) = (dir.join("ca.pem"), dir.join("ca.key"), dir.join("signing.pk8"));
        let online = dir.join("online.pk8");
        if !ca_key.exists() {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
            let mut params = CertificateParams::default();
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, "Outpost fleet CA");
            params.distinguished_name = name;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.serial_number = Some(serial());
            validity(&mut params, 3650);
            let cert = params.self_signed(&key).map_err(gen_err)?;
            secrets.write(&ca_key, key.serialize_pem().as_bytes())?;
            outpost_shared::files::write_atomic(&ca_cert, cert.pem().as_bytes()).map_err(io(&ca_cert))?;
            tracing::info!(path = %ca_cert.display(), "created the fleet CA");
        }
        for path in [&signing, &online] {
            if !path.exists() {
                let (_, pkcs8) =
                    SigningKey::generate().map_err(|e| CaError::Generate(format!("signing key: {e}")))?;
                secrets.write(path, &pkcs8)?;
            }
        }
        for name in SECRET_FILES {
            secrets.seal_in_place(&dir.join(name))?;
        }
        let corrupt = |path: &Path, detail: String| CaError::Corrupt { path: path.to_owned(), detail };
        let ca_pem = std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
        let missing = |path: &Path| CaError::Corrupt { path: path.to_owned(), detail: "missing".into() };
        let key_pem = secrets.read(&ca_key)?.ok_or_else(|| missing(&ca_key))?;
        let key_pem = String::from_utf8(key_pem).map_err(|e| corrupt(&ca_key, e.to_string()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&ca_key, e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| corrupt(&ca_cert, e.to_string()))?;
        let load = |path: &Path| -> Result<SigningKey, CaError> {
            let pkcs8 = secrets.read(path)?.ok_or_else(|| missing(path))?;
            SigningKey::from_pkcs8(&pkcs8).map_err(|e| corrupt(path, e.to_string()))
        };
        let (signing, online) = (load(&signing)?, load(&online)?);
        if signing.key_id() == online.key_id() {
            return Err(corrupt(
                &dir.join("online.pk8"),
                "it is the release key: the roles need two keys".into(),
            ));
        }
        Ok(Authority { ca_pem, issuer, signing: Arc::new(signing), online: RwLock::new(Arc::new(online)) })
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The release key: signs bundles (agents trust it in `registry.trusted_keys`).
    pub fn release_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The online key: signs desired states and acks (devices learn it at enrolment).
    pub fn online_key(&self) -> Arc<SigningKey> {
        Arc::clone(&self.online.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// From now on `key` signs control messages (a trust root named it).
    pub fn set_online_key(&self, key: SigningKey) {
        *self.online.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    }

    /// The key that signs a device's control messages: the online key, or — for a device
    /// enrolled when one key held both roles (`legacy`) — the release key it was given then.
    pub fn control_key(&self, legacy: bool) -> Arc<SigningKey> {
        if legacy { Arc::clone(&self.signing) } else { self.online_key() }
    }

    /// The `pki` folder of a data directory.
    pub fn pki_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("pki")
    }

    fn leaf_params(common_name: &str, days: u32, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        params
    }

    /// Signs a device's CSR. Only the public key is taken from the request: the subject is
    /// always `CN=<device_id>` and the certificate is good for client authentication only.
    /// Returns the certificate (PEM) and its serial number (hex), for revocation.
    pub fn issue_device_certificate(
        &self,
        csr_pem: &str,
        device_id: &str,
        days: u32,
    ) -> Result<(String, String), CaError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let params = Self::leaf_params(device_id, days, ExtendedKeyUsagePurpose::ClientAuth);
        let serial = params.serial_number.as_ref().map(|s| hex::encode(s.to_bytes())).unwrap_or_default();
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(gen_err)?;
        Ok((cert.pem(), serial))
    }

    /// The CA's certificate revocation list (PEM) naming `revoked` (serial hex, revoked at unix
    /// ms), numbered `number` (it must grow with every list issued). Valid for a year: the
    /// coordinator writes a fresh one at every start and every revocation.
    pub fn revocation_list(&self, revoked: &[(String, u64)], number: u64) -> Result<String, CaError> {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let now =
            epoch + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at_ms)| {
                let bytes = hex::decode(serial)
                    .map_err(|_| CaError::Generate(format!("serial `{serial}` is not hex")))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: epoch + std::time::Duration::from_millis(*at_ms),
                    reason_code: Some(rcgen::RevocationReason::CessationOfOperation),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - std::time::Duration::from_secs(3600),
            next_update: now + std::time::Duration::from_secs(365 * 86_400),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).map_err(gen_err)?.pem().map_err(gen_err)
    }

    /// A fresh key and client certificate (for the coordinator's own broker connection).
    pub fn issue_client(&self, common_name: &str, days: u32) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let params = Self::leaf_params(common_name, days, ExtendedKeyUsagePurpose::ClientAuth);
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A fresh key and server certificate for `names` (DNS names or IP addresses), for a
    /// broker that devices should trust through this CA.
    pub fn issue_server(&self, names: &[String], days: u32) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let first = names.first().map(String::as_str).unwrap_or("localhost");
        let mut params = Self::leaf_params(first, days, ExtendedKeyUsagePurpose::ServerAuth);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(gen_err),
            })
            .collect::<Result<_, _>>()?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_once_keeps_keys_private_and_signs_device_csrs() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::load_or_create(dir.path(), &Secrets::clear()).unwrap();
        let b = Authority::load_or_create(dir.path(), &Secrets::clear()).unwrap();
        assert_eq!(a.ca_pem(), b.ca_pem(), "second start must reuse the CA");
        assert_eq!(a.release_key().key_id(), b.release_key().key_id());
        assert_eq!(a.online_key().key_id(), b.online_key().key_id());
        assert_ne!(a.release_key().key_id(), a.online_key().key_id(), "one key for two roles");
        assert_eq!(a.control_key(false).key_id(), a.online_key().key_id());
        assert_eq!(a.control_key(true).key_id(), a.release_key().key_id());
        for secret in ["pki/ca.key", "pki/signing.pk8", "pki/online.pk8"] {
            let mode = std::fs::metadata(dir.path().join(secret)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }

        let device_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut request = CertificateParams::default();
        request.distinguished_name.push(DnType::OrganizationName, "tenant-x");
        let csr = request.serialize_request(&device_key).unwrap().pem().unwrap();
        let (cert, serial) = a.issue_device_certificate(&csr, "dev-1", 30).unwrap();
        // The TLS stack accepts the pair, and the device could not choose its own subject.
        outpost_shared::tls::client_config(
            a.ca_pem().as_bytes(),
            cert.as_bytes(),
            device_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let (_, parsed) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let parsed = parsed.parse_x509().unwrap();
        assert_eq!(parsed.subject().to_string(), "CN=dev-1");

        assert!(matches!(a.issue_device_certificate("garbage", "dev-1", 30), Err(CaError::BadCsr(_))));

        // The revocation list names the serial, is signed by the CA, and says it is the CA's.
        let crl = a.revocation_list(&[(serial.clone(), 1_700_000_000_000)], 7).unwrap();
        let der = x509_parser::pem::parse_x509_pem(crl.as_bytes()).unwrap().1.contents;
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
        let listed: Vec<_> = parsed.iter_revoked_certificates().map(|r| r.serial().clone()).collect();
        assert_eq!(
            listed,
            vec![x509_parser::num_bigint::BigUint::parse_bytes(serial.as_bytes(), 16).unwrap()]
        );
        assert_eq!(parsed.crl_number().map(|n| n.to_string()), Some("7".into()));
        let (_, ca) = x509_parser::pem::parse_x509_pem(a.ca_pem().as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        parsed.verify_signature(ca.public_key()).unwrap();
    }
}
