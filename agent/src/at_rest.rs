//! Encryption at rest: the prediction log, the outbox and installed model bundles are sealed
//! with ChaCha20-Poly1305 (ring) under a data key, so their bytes on disk carry no input value
//! and no model.
//!
//! # Keys
//! - The **key-encryption key** (KEK, 32 bytes, 64 hex digits) comes from a source the
//!   operator chooses ([`KeySource`]): `file:PATH` (0600; a Kubernetes Secret mounted as a
//!   file), `env:NAME` (a Secret as an environment variable), or `credential:NAME` — a systemd
//!   credential (`LoadCredentialEncrypted=`, which systemd can seal to the TPM2) read from
//!   `$CREDENTIALS_DIRECTORY/NAME`. Without a configured source the agent makes
//!   `<data_dir>/identity/storage.key` (0600) at first start: that protects stores copied off
//!   without the identity directory, not a stolen disk.
//! - **Data keys** (32 random bytes each) live in `<data_dir>/keyring.json` (0600, with a
//!   `.bak` copy), each wrapped (sealed) by the KEK. The keyring names the KEK by fingerprint, so
//!   a wrong key is told apart from a damaged keyring. `outpost-agent keys rotate` adds a new
//!   data key for new records; older keys stay, so every record stays readable until it is
//!   evicted. `keys rewrap --to SOURCE` re-wraps every data key under a new KEK; neither
//!   rewrites a record.
//!
//! # Sealed bytes
//! `[0xE5][1][key id: u32 BE][nonce: 12][ciphertext ‖ tag: 16]`. The associated data is the
//! store's label and the record's place (prediction id, outbox seq, `name@version`), so a
//! record moved to another id or store fails authentication. Nonces are a random 64-bit
//! per-process base plus a counter: unique within a process by construction, and across
//! processes unless two random bases land within 2^32 × the counter's epochs of each other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The first byte of sealed bytes (never the first byte of a plaintext record, envelope or
/// gzip stream).
pub const SEALED: u8 = 0xE5;
const SEALED_VERSION: u8 = 1;
const HEADER: usize = 2 + 4 + NONCE_LEN;
const TAG: usize = 16;
/// Bytes sealing adds.
pub const OVERHEAD: usize = HEADER + TAG;
/// The name the cipher goes by in reports and `/metrics`.
pub const CIPHER: &str = "chacha20-poly1305";

/// Where sealed bytes live (part of what they are authenticated with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    PredictionLog,
    Outbox,
    Bundle,
    Download,
}

impl Store {
    fn label(self) -> &'static [u8] {
        match self {
            Store::PredictionLog => b"outpost/at-rest/predictions\0",
            Store::Outbox => b"outpost/at-rest/outbox\0",
            Store::Bundle => b"outpost/at-rest/bundle\0",
            Store::Download => b"outpost/at-rest/download\0",
        }
    }

    /// The store's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Store::PredictionLog => "prediction_log",
            Store::Outbox => "outbox",
            Store::Bundle => "model_store",
            Store::Download => "downloads",
        }
    }
}

/// Whether the stores are encrypted (`[encryption] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    On,
    Off,
}

/// Encryption at rest (`[encryption]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// `on` (default): the prediction log, outbox and installed bundles are encrypted; `off`:
    /// they are written in the clear (said in `/metrics`, the device's reports and the
    /// dashboard).
    pub mode: Mode,
    /// Where the key-encryption key comes from: `file:PATH`, `env:NAME` or `credential:NAME`
    /// (a systemd credential). Unset: `<data_dir>/identity/storage.key`, made at first start.
    pub key: Option<String>,
}

impl EncryptionConfig {
    /// The key source in force for `data_dir`.
    pub fn source(&self, data_dir: &Path) -> Result<KeySource, AtRestError> {
        match &self.key {
            Some(spec) => parse_source(spec),
            None => Ok(default_source(data_dir)),
        }
    }
}

pub use outpost_shared::keysource::KeySource;
use outpost_shared::keysource::{KeySourceError, SourcedKey};

/// `<data_dir>/identity/storage.key`: the source when none is configured.
pub fn default_source(data_dir: &Path) -> KeySource {
    KeySource::File(data_dir.join("identity").join("storage.key"))
}

/// A key source as the configuration writes it (`OUTPOST_…` variables are refused: they are
/// configuration keys).
pub fn parse_source(spec: &str) -> Result<KeySource, AtRestError> {
    Ok(KeySource::parse(spec, crate::ENV_PREFIX)?)
}

/// Why the stores' keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    #[error(transparent)]
    Key(#[from] KeySourceError),
    #[error(
        "the key from {source_name} (fingerprint {found}) is not the key that wrapped {keyring} (fingerprint {expected}): \
         refusing to start; nothing was changed — configure the key this device was set up with"
    )]
    WrongKey { source_name: String, found: String, expected: String, keyring: PathBuf },
    #[error("keyring {path} is not usable: {problem}")]
    Keyring { path: PathBuf, problem: String },
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no random numbers from the system")]
    Random,
}

/// Why sealed bytes could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("sealed bytes are too short ({0} bytes)")]
    Short(usize),
    #[error("sealed with format {0}, this build reads 1")]
    Format(u8),
    #[error("sealed with data key {0:08x}, which this keyring does not hold")]
    UnknownKey(u32),
    #[error("failed authentication (damaged on disk, or moved from elsewhere)")]
    Authentication,
    #[error("encrypted, and encryption is off in this agent's configuration")]
    NoKeys,
}

/// A key-encryption key and where it came from (the bytes never reach a log).
pub struct Kek(SourcedKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("source", self.source())
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl Kek {
    /// Reads the key from its source; `create` makes a missing key file (the default source).
    pub fn load(source: &KeySource, create: bool) -> Result<Kek, AtRestError> {
        Ok(Kek(SourcedKey::load(source, create)?))
    }

    fn generate(source: KeySource) -> Result<Kek, AtRestError> {
        Ok(Kek(SourcedKey::generate(source)?))
    }

    /// A short public name for the key: the first 8 bytes of SHA-256 over a label and the key.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(b"outpost/at-rest/kek-fingerprint\0")
    }

    pub fn source(&self) -> &KeySource {
        self.0.source()
    }

    fn cipher(&self) -> LessSafeKey {
        self.0.cipher()
    }
}

use outpost_shared::keysource::cipher;

mod keyring;

pub use keyring::{
    DataKeyInfo, KeyringStatus, Opened, for_config, made_key_file_note, open, rewrap, rotate, status,
};

/// Seals and opens the stores' bytes. Shared by every store behind an `Arc`.
pub struct Sealer {
    keys: BTreeMap<u32, LessSafeKey>,
    current: u32,
    nonce_base: u64,
    counter: AtomicU64,
    source: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("current", &self.current).field("keys", &self.keys.len()).finish()
    }
}

impl Sealer {
    fn new(keys: BTreeMap<u32, LessSafeKey>, current: u32, source: String) -> Result<Sealer, AtRestError> {
        let mut base = [0u8; 8];
        SystemRandom::new().fill(&mut base).map_err(|_| AtRestError::Random)?;
        Ok(Sealer { keys, current, nonce_base: u64::from_be_bytes(base), counter: AtomicU64::new(0), source })
    }

    /// A sealer with one random key (tests, benchmarks).
    pub fn ephemeral() -> Result<Sealer, AtRestError> {
        let kek = Kek::generate(KeySource::Env("EPHEMERAL".into()))?;
        Sealer::new(BTreeMap::from([(1, kek.cipher())]), 1, "ephemeral".into())
    }

    /// Where the key-encryption key came from (for logs and reports; never the key).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The data key new records are sealed with.
    pub fn current_key(&self) -> u32 {
        self.current
    }

    /// Seals `plaintext` for `store` at `place`.
    pub fn seal(&self, store: Store, place: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.nonce_base.wrapping_add(n >> 32).to_be_bytes());
        nonce[8..].copy_from_slice(&(n as u32).to_be_bytes());
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.extend_from_slice(&[SEALED, SEALED_VERSION]);
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let key = &self.keys[&self.current];
        // ring refuses only inputs over 256 GiB (ChaCha20's block counter): not one record.
        let tag = with_aad(store, place, |aad| {
            key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), aad, &mut out[HEADER..])
        })
        .unwrap_or_else(|_| unreachable!("a record below 256 GiB"));
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens bytes [`Sealer::seal`] made for `store` at `place`.
    pub fn open(&self, store: Store, place: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unreadable> {
        let (id, nonce, body) = split(sealed)?;
        let key = self.keys.get(&id).ok_or(Unreadable::UnknownKey(id))?;
        let mut body = body.to_vec();
        let n = with_aad(store, place, |aad| {
            key.open_in_place(Nonce::assume_unique_for_key(nonce), aad, &mut body).map(|clear| clear.len())
        })
        .map_err(|_| Unreadable::Authentication)?;
        body.truncate(n);
        Ok(body)
    }
}

/// Runs `f` with the associated data for `place` in `store`: on the stack for the short places
/// every record has (ids, seqs), on the heap only for long ones.
fn with_aad<R>(store: Store, place: &[u8], f: impl FnOnce(Aad<&[u8]>) -> R) -> R {
    let label = store.label();
    let len = label.len() + place.len();
    let mut stack = [0u8; 64];
    if len <= stack.len() {
        stack[..label.len()].copy_from_slice(label);
        stack[label.len()..len].copy_from_slice(place);
        f(Aad::from(&stack[..len]))
    } else {
        f(Aad::from(&[label, place].concat()[..]))
    }
}

fn split(sealed: &[u8]) -> Result<(u32, [u8; NONCE_LEN], &[u8]), Unreadable> {
    if sealed.len() < OVERHEAD {
        return Err(Unreadable::Short(sealed.len()));
    }
    if sealed[0] != SEALED || sealed[1] != SEALED_VERSION {
        return Err(Unreadable::Format(sealed[1]));
    }
    let id = u32::from_be_bytes([sealed[2], sealed[3], sealed[4], sealed[5]]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[6..HEADER]);
    Ok((id, nonce, &sealed[HEADER..]))
}

/// Whether `bytes` are sealed (as opposed to a plaintext record written with encryption off).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.first() == Some(&SEALED)
}

/// How a store reads and writes its values: sealed under a [`Sealer`], or in the clear.
/// Values written in the clear (encryption off, or before it was on) stay readable; sealed
/// values need the keys — which an agent with encryption switched off still uses to read
/// what it sealed before ([`AtRest::reading`]).
#[derive(Debug, Clone, Default)]
pub struct AtRest {
    sealer: Option<std::sync::Arc<Sealer>>,
    seal_new: bool,
}

impl AtRest {
    /// Encryption on: new values sealed.
    pub fn sealed(sealer: std::sync::Arc<Sealer>) -> AtRest {
        AtRest { sealer: Some(sealer), seal_new: true }
    }

    /// Encryption off, with the keys kept for reading values sealed before.
    pub fn reading(sealer: std::sync::Arc<Sealer>) -> AtRest {
        AtRest { sealer: Some(sealer), seal_new: false }
    }

    /// Encryption off, no keys.
    pub fn clear() -> AtRest {
        AtRest { sealer: None, seal_new: false }
    }

    /// Whether new values are sealed.
    pub fn is_on(&self) -> bool {
        self.seal_new
    }

    /// `plaintext` as it goes to disk.
    pub fn write(&self, store: Store, place: &[u8], plaintext: Vec<u8>) -> Vec<u8> {
        match &self.sealer {
            Some(sealer) if self.seal_new => sealer.seal(store, place, &plaintext),
            _ => plaintext,
        }
    }

    /// What was written at `place`, in the clear.
    pub fn read(&self, store: Store, place: &[u8], stored: &[u8]) -> Result<Vec<u8>, Unreadable> {
        if !is_sealed(stored) {
            return Ok(stored.to_vec());
        }
        match &self.sealer {
            Some(sealer) => sealer.open(store, place, stored),
            None => Err(Unreadable::NoKeys),
        }
    }

    /// How the stores are kept, for reports, `/metrics` and the start-up log.
    pub fn describe(&self) -> String {
        match &self.sealer {
            Some(sealer) if self.seal_new => format!("on ({CIPHER}, key from {})", sealer.source()),
            Some(_) => "off (records sealed earlier still read)".into(),
            None => "off".into(),
        }
    }
}

#[cfg(test)]
mod tests;
