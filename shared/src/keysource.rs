//! Keys from a source the operator chooses, for what is encrypted at rest: the agent's stores
//! (`outpost_agent::at_rest`) and the coordinator's secrets (its `base::secrets`).
//!
//! A source is written `file:PATH` (a file holding the key, 0600), `env:NAME` (an environment
//! variable — a Kubernetes Secret mapped into one) or `credential:NAME` (a systemd credential,
//! `$CREDENTIALS_DIRECTORY/NAME`, which `LoadCredentialEncrypted=` can seal to a TPM2). A key is
//! 32 bytes, given as 64 hex digits or raw. Its bytes never reach a log: a key prints as its
//! source and a fingerprint.

use std::path::{Path, PathBuf};

use ring::aead::{CHACHA20_POLY1305, LessSafeKey, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Where a key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`.
    Credential(String),
}

/// Why a key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error("encryption key source `{spec}`: {problem}")]
    Source { spec: String, problem: String },
    #[error("encryption key from {source_name} is missing: {problem}")]
    Missing { source_name: String, problem: String },
    #[error(
        "encryption key from {source_name} is not usable: {problem} (expected 64 hex digits or 32 bytes)"
    )]
    Invalid { source_name: String, problem: String },
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no random numbers from the system")]
    Random,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "file:{}", path.display()),
            KeySource::Env(name) => write!(f, "env:{name}"),
            KeySource::Credential(name) => write!(f, "credential:{name}"),
        }
    }
}

impl KeySource {
    /// Reads `file:PATH`, `env:NAME` or `credential:NAME`. Variables starting with
    /// `reserved_prefix` are refused: the program reads those as configuration keys.
    pub fn parse(spec: &str, reserved_prefix: &str) -> Result<KeySource, KeySourceError> {
        let bad =
            |problem: &str| KeySourceError::Source { spec: spec.to_owned(), problem: problem.to_owned() };
        let (kind, rest) =
            spec.split_once(':').ok_or_else(|| bad("expected file:PATH, env:NAME or credential:NAME"))?;
        if rest.is_empty() {
            return Err(bad("nothing after the colon"));
        }
        match kind {
            "file" => Ok(KeySource::File(PathBuf::from(rest))),
            "env" if rest.starts_with(reserved_prefix) => Err(bad(&format!(
                "a variable named {reserved_prefix}… is read as a configuration key; give the key a name outside that prefix"
            ))),
            "env" if rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Ok(KeySource::Env(rest.into()))
            }
            "env" => Err(bad("an environment variable name is letters, digits and `_`")),
            "credential" if !rest.contains('/') && rest != "." && rest != ".." => {
                Ok(KeySource::Credential(rest.into()))
            }
            "credential" => Err(bad("a credential name has no `/`")),
            _ => Err(bad("expected file:PATH, env:NAME or credential:NAME")),
        }
    }
}

/// A 32-byte key and where it came from (the bytes never reach a log).
pub struct SourcedKey {
    bytes: [u8; 32],
    source: KeySource,
}

impl std::fmt::Debug for SourcedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourcedKey").field("source", &self.source).finish_non_exhaustive()
    }
}

impl SourcedKey {
    /// Reads the key from its source; `create` makes a missing key file (0600).
    pub fn load(source: &KeySource, create: bool) -> Result<SourcedKey, KeySourceError> {
        let name = source.to_string();
        let missing = |problem: String| KeySourceError::Missing { source_name: name.clone(), problem };
        let raw: Vec<u8> = match source {
            KeySource::File(path) => match std::fs::read(path) {
                Ok(raw) => raw,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    let key = SourcedKey::generate(source.clone())?;
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|source| KeySourceError::Io { path: dir.to_owned(), source })?;
                    }
                    crate::files::write_private(path, hex(&key.bytes).as_bytes())
                        .map_err(|source| KeySourceError::Io { path: path.clone(), source })?;
                    return Ok(key);
                }
                Err(e) => return Err(missing(e.to_string())),
            },
            KeySource::Env(var) => match std::env::var(var) {
                Ok(value) => value.into_bytes(),
                Err(e) => return Err(missing(e.to_string())),
            },
            KeySource::Credential(cred) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    missing(
                        "CREDENTIALS_DIRECTORY is not set (run under systemd with LoadCredential= or LoadCredentialEncrypted=)"
                            .into(),
                    )
                })?;
                let path = Path::new(&dir).join(cred);
                std::fs::read(&path).map_err(|e| missing(format!("{}: {e}", path.display())))?
            }
        };
        let bytes =
            parse_key(&raw).map_err(|problem| KeySourceError::Invalid { source_name: name, problem })?;
        Ok(SourcedKey { bytes, source: source.clone() })
    }

    /// A new random key, said to come from `source`.
    pub fn generate(source: KeySource) -> Result<SourcedKey, KeySourceError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| KeySourceError::Random)?;
        Ok(SourcedKey { bytes, source })
    }

    /// A short public name for the key: the first 8 bytes of SHA-256 over `label` and the key.
    pub fn fingerprint(&self, label: &[u8]) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(label);
        ctx.update(&self.bytes);
        hex(&ctx.finish().as_ref()[..8])
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The key as a ChaCha20-Poly1305 key.
    pub fn cipher(&self) -> LessSafeKey {
        cipher(&self.bytes)
    }
}

/// A 32-byte ChaCha20-Poly1305 key.
pub fn cipher(bytes: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always a valid ChaCha20-Poly1305 key.
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, bytes).unwrap_or_else(|_| unreachable!("32-byte key")),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_key(raw: &[u8]) -> Result<[u8; 32], String> {
    let text = std::str::from_utf8(raw).ok().map(str::trim);
    if let Some(text) = text.filter(|t| t.len() == 64) {
        let bytes: Option<Vec<u8>> =
            (0..64).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect();
        if let Some(key) = bytes.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()) {
            return Ok(key);
        }
    }
    if let Ok(key) = <[u8; 32]>::try_from(raw) {
        return Ok(key);
    }
    Err(format!("it holds {} bytes", raw.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_refuse_with_a_reason() {
        assert_eq!(KeySource::parse("file:/k", "X_").unwrap(), KeySource::File("/k".into()));
        assert_eq!(KeySource::parse("env:KEY_1", "X_").unwrap(), KeySource::Env("KEY_1".into()));
        assert_eq!(KeySource::parse("credential:k", "X_").unwrap(), KeySource::Credential("k".into()));
        for (spec, problem) in [
            ("nope", "expected file:PATH"),
            ("file:", "nothing after the colon"),
            ("env:X_KEY", "configuration key"),
            ("env:A-B", "letters, digits"),
            ("credential:a/b", "no `/`"),
        ] {
            let err = KeySource::parse(spec, "X_").unwrap_err().to_string();
            assert!(err.contains(problem), "{spec}: {err}");
        }
    }

    #[test]
    fn keys_load_from_hex_or_raw_and_a_made_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/k");
        let made = SourcedKey::load(&KeySource::File(path.clone()), true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = SourcedKey::load(&KeySource::File(path.clone()), false).unwrap();
        assert_eq!(made.fingerprint(b"l"), again.fingerprint(b"l"));
        assert_ne!(made.fingerprint(b"l"), made.fingerprint(b"m"));
        std::fs::write(&path, [7u8; 32]).unwrap();
        SourcedKey::load(&KeySource::File(path.clone()), false).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let err = SourcedKey::load(&KeySource::File(path), false).unwrap_err().to_string();
        assert!(err.contains("is not usable") && err.contains("it holds 5 bytes"), "{err}");
        assert!(!format!("{made:?}").contains(&hex(&made.bytes)[..16]), "Debug leaks the key");
    }
}
