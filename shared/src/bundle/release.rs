//! Who must sign a bundle: a threshold of release keys ([`ReleaseKeys`]) — the trust root's
//! release role ([`crate::protocol::root`], e.g. 2 of 3), or a configured list of which any one
//! suffices.

use super::{Bundle, BundleError, key_id_bytes, signed_message};
use crate::protocol::PublicKey;

/// The keys a bundle must be signed by: `threshold` distinct ones of `keys` (the trust root's
/// release role, [`crate::protocol::root`]; or a configured list, any one of which suffices).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseKeys {
    pub keys: Vec<PublicKey>,
    pub threshold: usize,
}

impl ReleaseKeys {
    /// Any one of `keys` suffices.
    pub fn any(keys: Vec<PublicKey>) -> ReleaseKeys {
        ReleaseKeys { keys, threshold: 1 }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Bundle {
    /// [`Bundle::open`] with a threshold: signed by `release.threshold` distinct release keys.
    pub fn open_release(bytes: &[u8], release: &ReleaseKeys) -> Result<Bundle, BundleError> {
        let bundle = Bundle::parse(bytes)?;
        bundle.verify_release(release)?;
        bundle.verify_model()?;
        Ok(bundle)
    }

    /// Requires valid signatures by `release.threshold` distinct keys of `release.keys`; returns
    /// their ids (hex). A signature by a release key that does not verify is an error naming it.
    pub fn verify_release(&self, release: &ReleaseKeys) -> Result<Vec<String>, BundleError> {
        if release.threshold <= 1 {
            return self.verify_signature(&release.keys).map(|id| vec![id]);
        }
        if self.signatures.is_empty() {
            return Err(BundleError::Unsigned);
        }
        let message = signed_message(&self.manifest_bytes);
        let mut signers: Vec<String> = Vec::new();
        for s in &self.signatures {
            if let Some(key) = release.keys.iter().find(|k| key_id_bytes(k) == s.key_id) {
                key.verify(&message, &s.signature).map_err(|_| BundleError::BadSignature(s.key_id_hex()))?;
                if !signers.contains(&s.key_id_hex()) {
                    signers.push(s.key_id_hex());
                }
            }
        }
        if signers.len() < release.threshold {
            return Err(BundleError::BelowThreshold {
                valid: signers.len(),
                threshold: release.threshold,
                signers: if signers.is_empty() { "none".into() } else { signers.join(", ") },
                trusted: release.keys.iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", "),
            });
        }
        Ok(signers)
    }
}
