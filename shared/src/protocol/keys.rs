//! Ed25519 keys (ring) for signing envelopes, and the key ids that name them.
//!
//! A device key never leaves its device: it is generated there and stored as PKCS#8 (the
//! agent writes that file with mode 0600). Receivers know senders only by public key and
//! [`key_id_of`]: the first 8 bytes of the SHA-256 of the public key, in hex.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Why a key cannot be made, read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate a key: the system random source failed")]
    Random,
    #[error("not a valid Ed25519 PKCS#8 private key")]
    InvalidPrivateKey,
    #[error("an Ed25519 public key is 32 bytes, got {0}")]
    PublicKeyLength(usize),
    #[error("not hex: {0}")]
    NotHex(String),
    #[error("signature does not verify")]
    BadSignature,
}

/// The id receivers use to find a sender's public key.
pub fn key_id_of(public: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A device's id: `dev-` and its signing key's id. The coordinator assigns it at enrolment from
/// the public key — a device never names itself — so no device can take the coordinator's
/// identity (`outpost-coordinator`) or another device's.
pub fn device_id_of(public: &[u8; 32]) -> String {
    format!("dev-{}", key_id_of(public))
}

/// A private signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a key; returns it with its PKCS#8 encoding, which is what to store.
    pub fn generate() -> Result<(SigningKey, Vec<u8>), KeyError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
        let key = SigningKey::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Reads a PKCS#8-encoded Ed25519 key.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes).map_err(|_| KeyError::InvalidPrivateKey)?;
        let public = PublicKey::from_bytes(pair.public_key().as_ref())?;
        Ok(SigningKey { key_id: public.key_id(), pair })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> PublicKey {
        // ring's Ed25519 public keys are always 32 bytes.
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(bytes)
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        signature
    }
}

/// A public key that verifies signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| KeyError::PublicKeyLength(bytes.len()))?;
        Ok(PublicKey(array))
    }

    /// A key as `outpostctl key show` prints it: 64 hex digits (surrounding space ignored).
    pub fn from_hex(text: &str) -> Result<PublicKey, KeyError> {
        let text = text.trim();
        if !text.len().is_multiple_of(2) {
            return Err(KeyError::NotHex(format!("odd number of digits ({})", text.len())));
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| KeyError::NotHex(format!("invalid digits at position {i}")))
            })
            .collect::<Result<Vec<u8>, KeyError>>()?;
        PublicKey::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn key_id(&self) -> String {
        key_id_of(&self.0)
    }

    /// Checks `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .map_err(|_| KeyError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_keys_reload_with_the_same_id_and_signatures_verify() {
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(key.key_id(), again.key_id());
        assert_eq!(key.key_id().len(), 16);
        let signature = again.sign(b"hello");
        key.public_key().verify(b"hello", &signature).unwrap();
        assert_eq!(key.public_key().verify(b"hellO", &signature), Err(KeyError::BadSignature));
        assert!(!format!("{key:?}").contains(&format!("{:?}", &pkcs8[..8])), "Debug leaks key bytes");
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(SigningKey::from_pkcs8(b"nope").unwrap_err(), KeyError::InvalidPrivateKey);
        assert_eq!(PublicKey::from_bytes(&[0; 31]).unwrap_err(), KeyError::PublicKeyLength(31));
    }
}
