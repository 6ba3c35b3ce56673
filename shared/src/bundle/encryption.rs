//! Bundles encrypted to a fleet (or device-group) key, for a model that must not be usable from
//! a copy: the registry's store, an artifact cache, a USB stick for an air-gapped site.
//!
//! The model bytes are sealed with ChaCha20-Poly1305 under a 32-byte key
//! ([`crate::keysource`]: `file:`, `env:` or `credential:`), with the bundle's `name@version` as
//! associated data (a sealed model cannot be passed off as another version). The manifest stays
//! readable — name, version, schema, card — and says which key (`encryption.key_id`, a
//! fingerprint, never the key) and what the clear model's hash is; `manifest.model` then
//! describes the ciphertext, so signatures and hashes check without the key, and the registry
//! stores, lists and deploys it without ever holding the plaintext. Only where a key is — a
//! device listing it in `registry.bundle_keys`, a coordinator that validates with
//! `[registry] bundle_keys` — is the model opened, in memory, straight into the runtime.

use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{Bundle, BundleError, ModelFile, sha256_hex};
use crate::keysource::SourcedKey;

/// The one cipher written.
pub const CIPHER: &str = "chacha20-poly1305";

/// How a bundle's model is encrypted (absent: in the clear).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEncryption {
    /// `chacha20-poly1305`.
    pub cipher: String,
    /// The key's id ([`bundle_key_id`]): which key a holder needs.
    pub key_id: String,
    /// 12 bytes, hex.
    pub nonce: String,
    /// The model in the clear: what decryption must give back.
    pub plain: ModelFile,
}

/// A bundle key's public id: 16 hex digits of SHA-256 over a label and the key.
pub fn bundle_key_id(key: &SourcedKey) -> String {
    key.fingerprint(b"outpost/bundle-key\0")
}

fn aad(name: &str, version: &str) -> Vec<u8> {
    format!("outpost/bundle-model\0{name}@{version}").into_bytes()
}

impl Bundle {
    /// Whether the model is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.manifest.encryption.is_some()
    }

    /// The bundle with its model encrypted to `key`. Signatures covered the old manifest, so
    /// none are kept: sign the result.
    pub fn encrypt(self, key: &SourcedKey) -> Result<Bundle, BundleError> {
        if let Some(e) = &self.manifest.encryption {
            return Err(BundleError::Encryption(format!("already encrypted to key {}", e.key_id)));
        }
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| BundleError::Encryption("no random numbers from the system".into()))?;
        let mut manifest = self.manifest;
        let mut sealed = self.model;
        key.cipher()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&manifest.name, &manifest.version)),
                &mut sealed,
            )
            .map_err(|_| BundleError::Encryption("the model could not be sealed".into()))?;
        manifest.encryption = Some(ModelEncryption {
            cipher: CIPHER.into(),
            key_id: bundle_key_id(key),
            nonce: super::hex(&nonce),
            plain: manifest.model.clone(),
        });
        Bundle::build(manifest, sealed)
    }

    /// Opens the model in memory with the key among `keys` the manifest names (a no-op for a
    /// clear bundle). Check the signature and hash first ([`Bundle::open`]). What stays is for
    /// loading only: its model no longer matches `manifest.model` (the ciphertext's hash), so
    /// its bytes would be refused anywhere.
    pub fn decrypt(&mut self, keys: &[SourcedKey]) -> Result<(), BundleError> {
        let Some(encryption) = &self.manifest.encryption else { return Ok(()) };
        let id = self.manifest.id();
        if encryption.cipher != CIPHER {
            return Err(BundleError::Encryption(format!(
                "{id}: cipher `{}` is not supported",
                encryption.cipher
            )));
        }
        let Some(key) = keys.iter().find(|k| bundle_key_id(k) == encryption.key_id) else {
            return Err(BundleError::NoBundleKey {
                id,
                key_id: encryption.key_id.clone(),
                held: if keys.is_empty() {
                    "none".into()
                } else {
                    keys.iter().map(bundle_key_id).collect::<Vec<_>>().join(", ")
                },
            });
        };
        let nonce = (0..encryption.nonce.len())
            .step_by(2)
            .map(|i| encryption.nonce.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .and_then(|n| Nonce::try_assume_unique_for_key(&n).ok())
            .ok_or_else(|| BundleError::Encryption(format!("{id}: the nonce is not 12 bytes of hex")))?;
        let mut model = std::mem::take(&mut self.model);
        let aad = aad(&self.manifest.name, &self.manifest.version);
        let clear = key.cipher().open_in_place(nonce, Aad::from(aad), &mut model).map_err(|_| {
            BundleError::Encryption(format!("{id}: the model does not open with key {}", encryption.key_id))
        })?;
        let found = sha256_hex(clear);
        if found != encryption.plain.sha256 {
            return Err(BundleError::ModelHash { expected: encryption.plain.sha256.clone(), found });
        }
        let len = clear.len();
        model.truncate(len);
        self.model = model;
        Ok(())
    }
}
