//! The coordinator's secrets at rest: the CA key, the root, release and online keys
//! (`pki/*.pk8`) and the admin token — optionally sealed under a key from a source the operator
//! chooses (`[secrets] key = "file:…" | "env:…" | "credential:…"`, the agent's kinds:
//! [`outpost_shared::keysource`]).
//!
//! A sealed file is `outpost-sealed-secret-v1\n` ‖ the key's fingerprint (16 hex digits) ‖ a random
//! nonce (12) ‖ ChaCha20-Poly1305 ciphertext and tag. With a key configured, every secret is
//! written sealed, and one found in the clear at start is sealed in place (logged per file), so a
//! copied disk or backup holds none of them usable. Without one, a sealed file stops the start
//! naming the file and the fingerprint of the key that sealed it; a wrong key is named the same way.
//! Every secret file is 0600 either way.

use std::path::{Path, PathBuf};

use outpost_shared::keysource::{KeySource, KeySourceError, SourcedKey};
use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};

const MAGIC: &[u8] = b"outpost-sealed-secret-v1\n";
const AAD: &[u8] = b"outpost/coordinator/secret";
const FINGERPRINT_LABEL: &[u8] = b"outpost/coordinator/secrets-key\0";
const FINGERPRINT_LEN: usize = 16;

/// The environment prefix the coordinator reads configuration from (refused as a key variable).
const ENV_PREFIX: &str = "OUTPOST_COORDINATOR_";

/// Why a secret cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Key(#[from] KeySourceError),
    #[error(
        "{path} is sealed (key fingerprint {fingerprint}) and no key is configured: set [secrets] key \
         (OUTPOST_COORDINATOR_SECRETS__KEY) to the key that sealed it"
    )]
    Sealed { path: PathBuf, fingerprint: String },
    #[error(
        "{path} was sealed with key {expected}, not the configured key {found} ({source_name}): refusing to start; \
         nothing was changed"
    )]
    WrongKey { path: PathBuf, expected: String, found: String, source_name: String },
    #[error("{path} is sealed but does not open: damaged on disk")]
    Damaged { path: PathBuf },
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// How secrets are kept: sealed under a key, or in the clear (0600).
#[derive(Debug, Default)]
pub struct Secrets {
    key: Option<SourcedKey>,
}

/// Whether `bytes` are a sealed secret.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

impl Secrets {
    /// Secrets in the clear.
    pub fn clear() -> Secrets {
        Secrets { key: None }
    }

    /// `[secrets] key`: None keeps secrets in the clear.
    pub fn from_spec(spec: Option<&str>) -> Result<Secrets, SecretsError> {
        let Some(spec) = spec else { return Ok(Secrets::clear()) };
        let source = KeySource::parse(spec, ENV_PREFIX)?;
        Ok(Secrets { key: Some(SourcedKey::load(&source, false)?) })
    }

    pub fn is_on(&self) -> bool {
        self.key.is_some()
    }

    fn fingerprint(key: &SourcedKey) -> String {
        key.fingerprint(FINGERPRINT_LABEL)
    }

    /// What `[secrets]` is, for a log line: `sealed under …` or `in the clear`.
    pub fn describe(&self) -> String {
        match &self.key {
            Some(key) => format!("sealed under {} (fingerprint {})", key.source(), Secrets::fingerprint(key)),
            None => "in the clear (0600)".into(),
        }
    }

    /// A secret's bytes (opened when sealed); `Ok(None)` when the file does not exist.
    pub fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, SecretsError> {
        let stored = match std::fs::read(path) {
            Ok(stored) => stored,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SecretsError::Io { path: path.to_owned(), source }),
        };
        if !is_sealed(&stored) {
            return Ok(Some(stored));
        }
        let rest = &stored[MAGIC.len()..];
        let damaged = || SecretsError::Damaged { path: path.to_owned() };
        let (fingerprint, rest) =
            (rest.get(..FINGERPRINT_LEN).ok_or_else(damaged)?, &rest[FINGERPRINT_LEN..]);
        let expected = String::from_utf8_lossy(fingerprint).into_owned();
        let Some(key) = &self.key else {
            return Err(SecretsError::Sealed { path: path.to_owned(), fingerprint: expected });
        };
        let found = Secrets::fingerprint(key);
        if found != expected {
            return Err(SecretsError::WrongKey {
                path: path.to_owned(),
                expected,
                found,
                source_name: key.source().to_string(),
            });
        }
        let nonce = rest.get(..NONCE_LEN).ok_or_else(damaged)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
        let mut sealed = rest[NONCE_LEN..].to_vec();
        let clear = key.cipher().open_in_place(nonce, Aad::from(AAD), &mut sealed).map_err(|_| damaged())?;
        Ok(Some(clear.to_vec()))
    }

    /// Writes a secret (0600), sealed when a key is configured.
    pub fn write(&self, path: &Path, clear: &[u8]) -> Result<(), SecretsError> {
        let bytes = match &self.key {
            None => clear.to_vec(),
            Some(key) => {
                let mut nonce = [0u8; NONCE_LEN];
                SystemRandom::new().fill(&mut nonce).map_err(|_| KeySourceError::Random)?;
                let mut sealed = clear.to_vec();
                key.cipher()
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(AAD),
                        &mut sealed,
                    )
                    .map_err(|_| KeySourceError::Random)?;
                let fingerprint = Secrets::fingerprint(key);
                [MAGIC, fingerprint.as_bytes(), &nonce, &sealed].concat()
            }
        };
        outpost_shared::files::write_private(path, &bytes)
            .map_err(|source| SecretsError::Io { path: path.to_owned(), source })
    }

    /// With a key configured, seals `path` in place if it is in the clear; true when it did.
    pub fn seal_in_place(&self, path: &Path) -> Result<bool, SecretsError> {
        if !self.is_on() {
            return Ok(false);
        }
        let stored = match std::fs::read(path) {
            Ok(stored) => stored,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(SecretsError::Io { path: path.to_owned(), source }),
        };
        if is_sealed(&stored) {
            return Ok(false);
        }
        self.write(path, &stored)?;
        tracing::info!(path = %path.display(), "secret sealed in place");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(dir: &Path, name: &str) -> Secrets {
        let path = dir.join(name);
        SourcedKey::load(&KeySource::File(path.clone()), true).unwrap();
        Secrets::from_spec(Some(&format!("file:{}", path.display()))).unwrap()
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_say_which_key_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = keyed(dir.path(), "k1");
        let path = dir.path().join("ca.key");
        secrets.write(&path, b"-----BEGIN PRIVATE KEY----- hidden-value").unwrap();
        let stored = std::fs::read(&path).unwrap();
        assert!(is_sealed(&stored) && !stored.windows(12).any(|w| w == b"hidden-value"));
        assert_eq!(secrets.read(&path).unwrap().unwrap(), b"-----BEGIN PRIVATE KEY----- hidden-value");
        let err = Secrets::clear().read(&path).unwrap_err().to_string();
        assert!(err.contains("ca.key is sealed") && err.contains("[secrets] key"), "{err}");
        let err = keyed(dir.path(), "k2").read(&path).unwrap_err().to_string();
        assert!(err.contains("was sealed with key") && err.contains("k2"), "{err}");
        let mut flipped = stored.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&path, flipped).unwrap();
        assert!(matches!(secrets.read(&path), Err(SecretsError::Damaged { .. })));
        assert!(secrets.read(&dir.path().join("absent")).unwrap().is_none());
    }

    #[test]
    fn a_clear_secret_is_sealed_in_place_once_a_key_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        Secrets::clear().write(&path, b"opa_token").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"opa_token");
        let secrets = keyed(dir.path(), "k");
        assert!(secrets.seal_in_place(&path).unwrap());
        assert!(!secrets.seal_in_place(&path).unwrap(), "sealed once");
        assert!(is_sealed(&std::fs::read(&path).unwrap()));
        assert_eq!(secrets.read(&path).unwrap().unwrap(), b"opa_token");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
