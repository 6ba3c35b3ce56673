//! The device's trust root: which keys may sign its desired states and acks (the `online`
//! role) and its model bundles (the `release` role, with a threshold), as the coordinator's
//! signed root statements say ([`outpost_shared::protocol::root`]).
//!
//! The root arrives at enrolment and is kept in `<data_dir>/identity/root.json` (a `.bak` copy
//! beside it, so one damaged file on a worn card is not the end). Newer statements ride inside
//! desired states (and so inside air-gap folders); each is applied only if it is the next
//! version and is signed by a threshold of the root keys of the version the device holds and
//! of its own — never because of the envelope that carried it. A refusal names the rule and
//! the device keeps the root it had.
//!
//! A device enrolled before the coordinator issued roots holds none: it trusts the key from
//! its enrolment for control messages, and adopts the first chain that arrives only if that
//! chain starts at a well-signed version 1 naming its enrolment key (as online or release key)
//! — the key it already trusted vouches for the root.
//!
//! Bundles: a device whose configuration lists `registry.trusted_keys` trusts those (any one
//! suffices) — its owner's word over the fleet's, e.g. a device that takes only bundles signed
//! with an offline key; a device that lists none follows the root's release role, threshold
//! and rotations included.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use outpost_shared::bundle::ReleaseKeys;
use outpost_shared::keysource::SourcedKey;
use outpost_shared::protocol::PublicKey;
use outpost_shared::protocol::root::{self, RootError, SignedRoot};

/// Why a root cannot be read or adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error(
        "trust root {path} is not usable: {detail}; its copy {path}.bak is not either — enrol again to get a root"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("trust root refused: {0}")]
    Refused(#[from] RootError),
    #[error("trust root refused: {0}")]
    Rule(String),
    #[error("cannot keep the trust root in {path}: {detail}")]
    Write { path: PathBuf, detail: String },
}

/// The root this device holds (if any) and what it trusts without one.
#[derive(Debug)]
pub struct Trust {
    path: PathBuf,
    enrolled: Option<PublicKey>,
    configured: Vec<PublicKey>,
    current: RwLock<Option<SignedRoot>>,
    /// Keys that open bundles encrypted to a bundle key (`registry.bundle_keys`).
    bundle_keys: Vec<SourcedKey>,
}

/// Where the root is kept, in the identity folder (`<data_dir>/identity`).
pub fn path(identity_dir: &Path) -> PathBuf {
    identity_dir.join("root.json")
}

fn bak(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".bak");
    PathBuf::from(name)
}

fn read(path: &Path) -> Result<Option<SignedRoot>, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let root = SignedRoot::parse(&bytes).map_err(|e| e.to_string())?;
            // A held root was verified when adopted; its own signatures still must hold (a flipped
            // bit on disk is caught here, not trusted).
            root.verify_initial().map_err(|e| e.to_string())?;
            Ok(Some(root))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

impl Trust {
    /// Loads the held root from `<identity_dir>/root.json` (or its `.bak`). `enrolled` is the
    /// key from enrolment; `configured` is `registry.trusted_keys`.
    pub fn open(
        identity_dir: &Path,
        enrolled: Option<PublicKey>,
        configured: Vec<PublicKey>,
    ) -> Result<Trust, TrustError> {
        let path = path(identity_dir);
        let current = match read(&path) {
            Ok(Some(root)) => Some(root),
            // No file: a first write cut short may have left only the copy (written first).
            Ok(None) => read(&bak(&path)).ok().flatten(),
            Err(detail) => match read(&bak(&path)) {
                Ok(Some(root)) => {
                    tracing::error!(path = %path.display(), %detail, version = root.version(), "trust root damaged: using its copy");
                    Some(root)
                }
                _ => return Err(TrustError::Corrupt { path, detail }),
            },
        };
        Ok(Trust { path, enrolled, configured, current: RwLock::new(current), bundle_keys: Vec::new() })
    }

    /// Trust holding no root, whatever is on disk (enrolment replaces a root, even a damaged one).
    pub fn empty(identity_dir: &Path, enrolled: Option<PublicKey>, configured: Vec<PublicKey>) -> Trust {
        Trust {
            path: path(identity_dir),
            enrolled,
            configured,
            current: RwLock::new(None),
            bundle_keys: Vec::new(),
        }
    }

    /// With keys that open encrypted bundles (`registry.bundle_keys`).
    pub fn with_bundle_keys(mut self, keys: Vec<SourcedKey>) -> Trust {
        self.bundle_keys = keys;
        self
    }

    /// The keys that open encrypted bundles here.
    pub fn bundle_keys(&self) -> &[SourcedKey] {
        &self.bundle_keys
    }

    /// The held root's version (0: none).
    pub fn version(&self) -> u64 {
        self.held().map_or(0, |r| r.version())
    }

    /// The held root, if any.
    pub fn held(&self) -> Option<SignedRoot> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key that may sign a control message (desired state, ack) with this id: an online
    /// key of the held root, or — with no root — the key from enrolment.
    pub fn control_key(&self, key_id: &str) -> Option<PublicKey> {
        match self.held() {
            Some(root) => root.signed.online.find(key_id),
            None => self.enrolled.filter(|k| k.key_id() == key_id),
        }
    }

    /// The key from enrolment, if it has this id.
    pub fn enrolled_key(&self, key_id: &str) -> Option<PublicKey> {
        self.enrolled.filter(|k| k.key_id() == key_id)
    }

    /// Who may sign a bundle: any configured key (`registry.trusted_keys`) if there are any,
    /// else the held root's release role with its threshold.
    pub fn release(&self) -> ReleaseKeys {
        match self.held() {
            Some(root) if self.configured.is_empty() => ReleaseKeys {
                keys: root.signed.release.public_keys(),
                threshold: root.signed.release.threshold as usize,
            },
            _ => ReleaseKeys::any(self.configured.clone()),
        }
    }

    /// Whether the configured keys, not the root, decide who signs bundles.
    pub fn release_configured(&self) -> bool {
        !self.configured.is_empty()
    }

    /// Whether signed bundles can be trusted at all (a root, or configured keys).
    pub fn has_release_keys(&self) -> bool {
        !self.release().is_empty()
    }

    /// A first root, from enrolment (which authenticated the coordinator): its own signatures
    /// must hold.
    pub fn adopt_initial(&self, root: SignedRoot) -> Result<(), TrustError> {
        root.verify_initial()?;
        self.keep(&root)
    }

    /// Applies the statements of a chain (file form) that are newer than the held root, one
    /// version at a time. Returns the new version when the root moved; what was accepted before
    /// a refused statement stays accepted.
    pub fn update(&self, chain: &[Vec<u8>]) -> Result<Option<u64>, TrustError> {
        if chain.is_empty() {
            return Ok(None);
        }
        let parsed = chain.iter().map(|b| SignedRoot::parse(b)).collect::<Result<Vec<_>, _>>()?;
        let (base, rest, mut moved) = match self.held() {
            Some(root) => (root, parsed, false),
            None => {
                let mut sorted = parsed;
                sorted.sort_by_key(SignedRoot::version);
                let first = sorted.remove(0);
                self.bootstrap(&first)?;
                self.keep(&first)?;
                tracing::info!(
                    version = first.version(),
                    "trust root adopted (vouched for by the enrolment key)"
                );
                (first, sorted, true)
            }
        };
        let walked = root::advance(&base, &rest);
        if let Some(newest) = walked.accepted.last() {
            self.keep(newest)?;
            moved = true;
            tracing::info!(from = base.version(), to = newest.version(), "trust root updated");
        }
        match walked.refused {
            Some(refused) => Err(refused.into()),
            None => Ok(moved.then(|| self.version())),
        }
    }

    fn bootstrap(&self, first: &SignedRoot) -> Result<(), TrustError> {
        if first.version() != 1 {
            return Err(TrustError::Rule(format!(
                "this device holds no trust root and the chain starts at version {}, not 1",
                first.version()
            )));
        }
        first.verify_initial()?;
        let Some(enrolled) = self.enrolled else {
            return Err(TrustError::Rule(
                "this device is not enrolled: no key to vouch for a first trust root".into(),
            ));
        };
        if !first.signed.online.holds(&enrolled) && !first.signed.release.holds(&enrolled) {
            return Err(TrustError::Rule(format!(
                "root version 1 does not name the coordinator key this device was enrolled with ({}): not its coordinator's root",
                enrolled.key_id()
            )));
        }
        Ok(())
    }

    fn keep(&self, root: &SignedRoot) -> Result<(), TrustError> {
        let bytes = root.to_bytes();
        for path in [bak(&self.path), self.path.clone()] {
            outpost_shared::files::write_atomic(&path, &bytes)
                .map_err(|e| TrustError::Write { path: path.clone(), detail: e.to_string() })?;
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(root.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
