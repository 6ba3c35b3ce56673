//! The keys the registry trusts and holds. Signers: besides the release key, a pushed bundle may
//! carry signatures by `[registry] trusted_keys` and by the current trust root's release keys
//! (a root update replaces those, so a release key it drops is refused from then on). Bundle keys:
//! encrypted bundles ([`outpost_shared::bundle::ModelEncryption`]) are stored, listed and deployed
//! as they are, and opened only with a key from `[registry] bundle_keys`, to check at push that
//! the model serves and to run the validation gate here; without the key, validation runs where
//! the key is.

use std::sync::Arc;

use outpost_shared::bundle::{Bundle, BundleError};
use outpost_shared::keysource::{KeySource, SourcedKey};
use outpost_shared::protocol::PublicKey;

use super::{Registry, RegistryConfig, RegistryError};

impl RegistryConfig {
    /// `bundle_keys`, loaded; the error names the entry and why.
    pub fn load_bundle_keys(&self) -> Result<Vec<SourcedKey>, (String, String)> {
        self.bundle_keys
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let entry = || format!("registry.bundle_keys[{i}]");
                let source =
                    KeySource::parse(spec, "OUTPOST_COORDINATOR_").map_err(|e| (entry(), e.to_string()))?;
                SourcedKey::load(&source, false).map_err(|e| (entry(), e.to_string()))
            })
            .collect()
    }
}

impl Registry {
    /// Also trusts signatures by `keys` on pushed bundles (the release key is always trusted).
    pub fn trusting(mut self, keys: Vec<PublicKey>) -> Registry {
        self.trusted = Arc::new(keys);
        self
    }

    /// The current trust root's release keys (replacing the last root's).
    pub fn follow_root_release(&self, keys: &[PublicKey]) {
        *self.root_release.write().unwrap_or_else(|p| p.into_inner()) = keys.to_vec();
    }

    /// Every key besides the release key whose signature a pushed bundle may carry.
    pub(super) fn signers(&self) -> Vec<PublicKey> {
        let mut keys = self.trusted.as_ref().clone();
        for key in self.root_release.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if !keys.contains(key) {
                keys.push(*key);
            }
        }
        keys
    }

    /// Bundle keys (`[registry] bundle_keys`): encrypted bundles are opened with them to be
    /// checked and validated here; without the key they are stored and deployed as they are.
    pub fn with_bundle_keys(mut self, keys: Vec<SourcedKey>) -> Registry {
        self.bundle_keys = Arc::new(keys);
        self
    }

    /// `bundle` with its model in the clear, opened with a bundle key held here.
    pub(super) fn opened(&self, bundle: &Bundle) -> Result<Bundle, BundleError> {
        let mut clear = bundle.clone();
        clear.decrypt(&self.bundle_keys)?;
        Ok(clear)
    }

    /// Whether a pushed bundle's model loads and reproduces its references, as evidence; an
    /// encrypted one without its key here is taken as it is (it is checked where the key is).
    pub(super) fn check_serves(&self, bundle: &Bundle) -> Result<String, RegistryError> {
        let id = bundle.manifest.id();
        let encrypted = bundle.manifest.encryption.as_ref().map(|e| e.key_id.clone());
        let clear = match self.opened(bundle) {
            Ok(clear) => clear,
            Err(BundleError::NoBundleKey { key_id, .. }) => {
                return Ok(format!(
                    "encrypted to bundle key {key_id}; not opened here (it loads where the key is)"
                ));
            }
            Err(e) => return Err(RegistryError::Invalid(format!("{id}: {e}"))),
        };
        let (_, evidence) = clear
            .load_model()
            .map_err(|reason| RegistryError::Invalid(format!("{id} cannot serve: {reason}")))?;
        Ok(match encrypted {
            Some(key_id) => format!("{evidence}; encrypted to bundle key {key_id}"),
            None => evidence,
        })
    }
}
