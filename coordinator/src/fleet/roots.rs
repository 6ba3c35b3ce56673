//! The fleet's trust root: the signed statement of which keys hold the `root`, `release` and
//! `online` roles ([`outpost_shared::protocol::root`]), as devices verify it.
//!
//! At first start the coordinator makes `pki/root.pk8` (0600) and root version 1: root key
//! `root.pk8`, release keys `signing.pk8` (unless `registry.sign_on_push = false`) and
//! `registry.trusted_keys`, online key `online.pk8`. Devices get the current root at enrolment,
//! and every desired state carries the chain from version 1, so a device at any version
//! catches up (and air-gap folders carry it too).
//!
//! A change — a new online key, release keys added or removed, a release threshold (2 of 3),
//! new root keys — is the next version, signed by a threshold of the current root keys and of
//! its own. `outpostctl root draft` writes it, `outpostctl root sign --key` adds a signature
//! where a root key is kept (offline), `outpostctl root push` hands it here; the coordinator
//! adds `root.pk8`'s signature when it holds that key and the statement needs it, verifies the
//! result exactly as a device will, stores it, and gives every enrolled device a new desired
//! revision carrying it. Moving `root.pk8` off this host makes every change need a signature
//! from elsewhere: whoever takes the coordinator then cannot name their own keys.
//!
//! Online key rotation: `POST /api/v1/root/online-key` makes `pki/online.next.pk8` and returns
//! its public half for the draft; when a root naming it is accepted, it becomes `online.pk8`
//! (the old one kept as `online.<key id>.retired.pk8`) and signs from then on. A start that
//! finds the root naming `online.next.pk8` but not `online.pk8` (a crash in between) finishes
//! the swap; a root naming neither stops the start with both key ids.
//!
//! State ([`RootChain`]): sled tree `roots`, version (u64, big-endian) → statement (file form);
//! or, on PostgreSQL, table `outpost_roots` (migration 10, [`pg`](self::pg)), where every replica
//! reads the same chain. A version is stored only if none is stored under its number: two
//! replicas accepting different statements as the same version, one is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_shared::protocol::root::{Role, Root, RootError, SignedRoot};
use outpost_shared::protocol::{PublicKey, SigningKey};

use crate::base::pg::store::PgStore;
use crate::base::secrets::{Secrets, SecretsError};
use crate::base::store::{Store, StoreError, now_ms};
use crate::fleet::ca::Authority;

/// Why a root statement was refused or the roots cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("root statement refused: {0}")]
    Root(#[from] RootError),
    #[error("root statement refused: {0}")]
    Refused(String),
    #[error("cannot use {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error(transparent)]
    Secret(#[from] SecretsError),
}

/// The stored chain of root statements.
#[derive(Clone)]
pub struct TrustRoots {
    chain: RootChain,
    pki: PathBuf,
    authority: Arc<Authority>,
    secrets: Arc<Secrets>,
}

impl std::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoots").field("pki", &self.pki).finish_non_exhaustive()
    }
}

/// The repository of root statements, by version.
#[derive(Clone)]
pub struct RootChain {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled { tree: sled::Tree, store: Store },
    Postgres(PgStore),
}

impl RootChain {
    pub fn open(store: &Store) -> Result<RootChain, StoreError> {
        Ok(RootChain { backend: Backend::Sled { tree: store.tree("roots")?, store: store.clone() } })
    }

    /// The chain on PostgreSQL, shared by every replica on `store`.
    pub fn open_postgres(store: &PgStore) -> RootChain {
        RootChain { backend: Backend::Postgres(store.clone()) }
    }

    /// Every stored statement in file form, oldest first (what a desired state carries).
    pub fn bytes(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => tree
                .iter()
                .values()
                .map(|v| v.map(|v| v.to_vec()).map_err(|e| store.storage_error(e)))
                .collect(),
            Backend::Postgres(store) => pg::all(store),
        }
    }

    /// The newest statement in file form, if any.
    pub fn last(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => {
                Ok(tree.last().map_err(|e| store.storage_error(e))?.map(|(_, v)| v.to_vec()))
            }
            Backend::Postgres(store) => pg::last(store),
        }
    }

    /// Stores `bytes` as `version` unless a statement of that version is stored already
    /// (`false`: another writer got there first). Durable when it returns.
    pub fn insert_new(&self, version: u64, bytes: &[u8]) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => {
                let swapped = tree
                    .compare_and_swap(version.to_be_bytes(), None::<&[u8]>, Some(bytes))
                    .map_err(|e| store.storage_error(e))?;
                store.flush()?;
                Ok(swapped.is_ok())
            }
            Backend::Postgres(store) => pg::insert_new(store, version, bytes),
        }
    }
}

mod pg;

fn key_error(path: &Path, detail: impl std::fmt::Display) -> RootsError {
    RootsError::Key { path: path.to_owned(), detail: detail.to_string() }
}

impl TrustRoots {
    /// Opens the chain, making root version 1 at first start. `release` are the release keys
    /// version 1 names (the release key and/or `registry.trusted_keys`).
    pub fn open(
        chain: RootChain,
        data_dir: &Path,
        authority: Arc<Authority>,
        release: &[PublicKey],
        secrets: Arc<Secrets>,
    ) -> Result<TrustRoots, RootsError> {
        let roots = TrustRoots { chain, pki: Authority::pki_dir(data_dir), authority, secrets };
        if roots.chain.last()?.is_none() {
            roots.create_first(release)?;
        }
        let current = roots.current()?;
        roots.finish_online_swap(&current)?;
        Ok(roots)
    }

    /// A private key kept as a secret (`None`: no such file).
    fn load_key(&self, path: &Path) -> Result<Option<SigningKey>, RootsError> {
        match self.secrets.read(path)? {
            Some(pkcs8) => SigningKey::from_pkcs8(&pkcs8).map(Some).map_err(|e| key_error(path, e)),
            None => Ok(None),
        }
    }

    fn make_key(&self, path: &Path) -> Result<SigningKey, RootsError> {
        let (key, pkcs8) = SigningKey::generate().map_err(|e| key_error(path, e))?;
        self.secrets.write(path, &pkcs8)?;
        Ok(key)
    }

    fn root_key_path(&self) -> PathBuf {
        self.pki.join("root.pk8")
    }

    fn next_online_path(&self) -> PathBuf {
        self.pki.join("online.next.pk8")
    }

    fn create_first(&self, release: &[PublicKey]) -> Result<(), RootsError> {
        let path = self.root_key_path();
        let key = match self.load_key(&path)? {
            Some(key) => key,
            None => self.make_key(&path)?,
        };
        let mut keys: Vec<PublicKey> = Vec::new();
        for k in release {
            if !keys.contains(k) {
                keys.push(*k);
            }
        }
        let mut first = SignedRoot::unsigned(Root {
            version: 1,
            issued_at_ms: now_ms(),
            root: Role::of(&[key.public_key()], 1),
            release: Role::of(&keys, 1),
            online: Role::of(&[self.authority.online_key().public_key()], 1),
        });
        first.sign(&key);
        first.verify_initial()?;
        if !self.chain.insert_new(1, &first.to_bytes())? {
            // Another replica sharing the store made it first: theirs stands.
            tracing::info!("trust root version 1 was created by another replica");
            return Ok(());
        }
        tracing::info!(
            root_key = key.key_id(),
            release_keys = keys.len(),
            online_key = self.authority.online_key().key_id(),
            path = %path.display(),
            "created trust root version 1 (move pki/root.pk8 off this host to make root changes need an offline signature)"
        );
        Ok(())
    }

    /// Every statement, oldest first.
    pub fn chain(&self) -> Result<Vec<SignedRoot>, RootsError> {
        self.chain.bytes()?.iter().map(|b| SignedRoot::parse(b).map_err(RootsError::from)).collect()
    }

    /// The current statement.
    pub fn current(&self) -> Result<SignedRoot, RootsError> {
        let last = self.chain.last()?.ok_or_else(|| RootsError::Refused("no trust root stored".into()))?;
        Ok(SignedRoot::parse(&last)?)
    }

    /// The current root's release keys and threshold.
    pub fn release(&self) -> Result<(Vec<PublicKey>, u32), RootsError> {
        let current = self.current()?;
        Ok((current.signed.release.public_keys(), current.signed.release.threshold))
    }

    /// The next online key (made now if there is none yet): name it in a draft to rotate.
    pub fn next_online_key(&self) -> Result<PublicKey, RootsError> {
        let path = self.next_online_path();
        if let Some(key) = self.load_key(&path)? {
            return Ok(key.public_key());
        }
        let key = self.make_key(&path)?;
        tracing::info!(key_id = key.key_id(), "next online key made: name it in a root statement to rotate");
        Ok(key.public_key())
    }

    /// Takes the next version: adds this host's root-key signature if the statement needs it,
    /// verifies it as a device will, checks the coordinator holds one of its online keys, then
    /// stores it (and swaps the online key if it changed). Returns the stored statement.
    pub fn accept(&self, mut next: SignedRoot) -> Result<SignedRoot, RootsError> {
        let current = self.current()?;
        if next.version() != current.version() + 1 {
            return Err(RootError::Version { found: next.version(), current: current.version() }.into());
        }
        next.signed.validate()?;
        if let Some(key) = self.load_key(&self.root_key_path())? {
            let public = key.public_key();
            if current.signed.root.holds(&public) || next.signed.root.holds(&public) {
                next.sign(&key);
            }
        }
        current.verify_successor(&next)?;
        let online_now = self.authority.online_key();
        let swap = if next.signed.online.holds(&online_now.public_key()) {
            None
        } else {
            let candidate = self.load_key(&self.next_online_path())?;
            match candidate {
                Some(key) if next.signed.online.holds(&key.public_key()) => Some(key),
                _ => {
                    return Err(RootsError::Refused(format!(
                        "version {} names online key(s) {} but this coordinator holds the private half of none of them \
                         (it signs with {}): make the next online key with `outpostctl root draft --new-online-key` and \
                         name that one",
                        next.version(),
                        next.signed
                            .online
                            .public_keys()
                            .iter()
                            .map(PublicKey::key_id)
                            .collect::<Vec<_>>()
                            .join(", "),
                        online_now.key_id()
                    )));
                }
            }
        };
        if !self.chain.insert_new(next.version(), &next.to_bytes())? {
            return Err(RootsError::Refused(format!(
                "version {} was accepted meanwhile (through another replica): draft the next one from it",
                next.version()
            )));
        }
        if let Some(key) = swap {
            self.promote(key)?;
        }
        tracing::info!(
            version = next.version(),
            online = ?next.signed.online.public_keys().iter().map(PublicKey::key_id).collect::<Vec<_>>(),
            release = ?next.signed.release.public_keys().iter().map(PublicKey::key_id).collect::<Vec<_>>(),
            release_threshold = next.signed.release.threshold,
            "trust root updated"
        );
        Ok(next)
    }

    /// `online.next.pk8` becomes `online.pk8`; the old one is kept aside.
    fn promote(&self, key: SigningKey) -> Result<(), RootsError> {
        let (online, next) = (self.pki.join("online.pk8"), self.next_online_path());
        let old = self.authority.online_key();
        let retired = self.pki.join(format!("online.{}.retired.pk8", old.key_id()));
        std::fs::rename(&online, &retired).map_err(|e| key_error(&online, e))?;
        std::fs::rename(&next, &online).map_err(|e| key_error(&next, e))?;
        tracing::info!(from = old.key_id(), to = key.key_id(), "online key rotated");
        self.authority.set_online_key(key);
        Ok(())
    }

    /// At start: the online key must be one the current root names.
    fn finish_online_swap(&self, current: &SignedRoot) -> Result<(), RootsError> {
        let online = self.authority.online_key();
        if current.signed.online.holds(&online.public_key()) {
            return Ok(());
        }
        if let Some(next) = self.load_key(&self.next_online_path())?
            && current.signed.online.holds(&next.public_key())
        {
            tracing::warn!("finishing an online key rotation cut short by a stop");
            return self.promote(next);
        }
        Err(RootsError::Refused(format!(
            "pki/online.pk8 (key {}) is not an online key of trust root version {} (online keys: {}): devices would \
             refuse every desired state and ack — restore the online key the root names",
            online.key_id(),
            current.version(),
            current.signed.online.public_keys().iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (TrustRoots, Arc<Authority>) {
        // Reopened in the same process ("a restart"): sled's background I/O can hold the file
        // lock a moment after the last handle is dropped (CI saw "could not acquire lock" once).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(&dir.join("state")) {
                Err(e) if Store::is_locked(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        let authority = Arc::new(Authority::load_or_create(dir, &Secrets::clear()).unwrap());
        let release = [authority.release_key().public_key()];
        let chain = RootChain::open(&store).unwrap();
        let roots = TrustRoots::open(chain, dir, Arc::clone(&authority), &release, Arc::default()).unwrap();
        (roots, authority)
    }

    #[test]
    fn version_one_names_the_coordinators_keys_and_is_signed_by_a_private_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let (roots, authority) = open(dir.path());
        let v1 = roots.current().unwrap();
        v1.verify_initial().unwrap();
        assert_eq!(v1.version(), 1);
        assert!(v1.signed.online.holds(&authority.online_key().public_key()));
        assert!(v1.signed.release.holds(&authority.release_key().public_key()));
        assert!(!v1.signed.root.holds(&authority.online_key().public_key()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pki/root.pk8")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_online_rotation_swaps_the_signing_key_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (roots, authority) = open(dir.path());
        let before = authority.online_key().key_id().to_owned();
        let next_key = roots.next_online_key().unwrap();
        assert_eq!(roots.next_online_key().unwrap(), next_key, "made once");
        let mut draft = roots.current().unwrap().signed.next(now_ms());
        draft.online = Role::of(&[next_key], 1);
        // Unsigned: the coordinator adds its root key's signature.
        let accepted = roots.accept(SignedRoot::unsigned(draft.clone())).unwrap();
        assert_eq!(accepted.version(), 2);
        assert_eq!(authority.online_key().public_key(), next_key);
        assert!(dir.path().join(format!("pki/online.{before}.retired.pk8")).exists());
        drop(roots);
        let (again, authority) = open(dir.path());
        assert_eq!(again.current().unwrap().version(), 2);
        assert_eq!(authority.online_key().public_key(), next_key);
        // A version out of turn, or naming an online key nobody here holds, is refused.
        let err = again.accept(SignedRoot::unsigned(draft)).unwrap_err().to_string();
        assert!(err.contains("does not follow version 2"), "{err}");
        let mut stray = again.current().unwrap().signed.next(now_ms());
        stray.online = Role::of(&[SigningKey::generate().unwrap().0.public_key()], 1);
        let err = again.accept(SignedRoot::unsigned(stray)).unwrap_err().to_string();
        assert!(err.contains("holds the private half of none"), "{err}");
    }

    #[test]
    fn without_the_root_key_on_the_host_a_change_needs_a_signature_from_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let (roots, _) = open(dir.path());
        let offline = dir.path().join("root-offline.pk8");
        std::fs::rename(dir.path().join("pki/root.pk8"), &offline).unwrap();
        let mut draft = roots.current().unwrap().signed.next(now_ms());
        draft.release.threshold = 1;
        draft.release.keys.push(hex::encode(SigningKey::generate().unwrap().0.public_key().as_bytes()));
        let err = roots.accept(SignedRoot::unsigned(draft.clone())).unwrap_err().to_string();
        assert!(err.contains("signed by 0 of the 1 required version 1's"), "{err}");
        let mut signed = SignedRoot::unsigned(draft);
        signed.sign(&SigningKey::from_pkcs8(&std::fs::read(&offline).unwrap()).unwrap());
        assert_eq!(roots.accept(signed).unwrap().signed.release.keys.len(), 2);
    }

    #[test]
    fn replicas_read_one_chain_and_a_version_is_stored_once() {
        use crate::base::pg::store::testing::TestDatabase;
        let db = TestDatabase::new();
        let dir = tempfile::tempdir().unwrap();
        let authority = Arc::new(Authority::load_or_create(dir.path(), &Secrets::clear()).unwrap());
        let release = [authority.release_key().public_key()];
        let open = |dir: &Path, authority: &Arc<Authority>| {
            let chain = RootChain::open_postgres(&db.store());
            TrustRoots::open(chain, dir, Arc::clone(authority), &release, Arc::default())
        };
        let one = open(dir.path(), &authority).unwrap();
        let two = open(dir.path(), &authority).unwrap();
        assert_eq!(one.chain().unwrap().len(), 1, "version 1 made once");
        assert_eq!(one.current().unwrap().to_bytes(), two.current().unwrap().to_bytes());

        // A change accepted through one replica is the other's current root at once.
        let mut draft = two.current().unwrap().signed.next(now_ms());
        draft.release.keys.push(hex::encode(SigningKey::generate().unwrap().0.public_key().as_bytes()));
        assert_eq!(one.accept(SignedRoot::unsigned(draft.clone())).unwrap().version(), 2);
        assert_eq!(two.current().unwrap().version(), 2);
        let err = two.accept(SignedRoot::unsigned(draft)).unwrap_err().to_string();
        assert!(err.contains("does not follow version 2"), "{err}");

        // Two statements racing for one version: the first stored stands.
        let chain = RootChain::open_postgres(&db.store());
        assert!(chain.insert_new(3, b"first").unwrap());
        assert!(!chain.insert_new(3, b"second").unwrap());
        assert_eq!(chain.last().unwrap().unwrap(), b"first");

        // A replica whose keys are not the ones the shared root names cannot start: replicas
        // share their keys (one Secret per role), they do not each make their own.
        let stranger = tempfile::tempdir().unwrap();
        let own = Arc::new(Authority::load_or_create(stranger.path(), &Secrets::clear()).unwrap());
        let fresh = TestDatabase::new();
        let chain = RootChain::open_postgres(&fresh.store());
        TrustRoots::open(chain, dir.path(), Arc::clone(&authority), &release, Arc::default()).unwrap();
        let chain = RootChain::open_postgres(&fresh.store());
        let err =
            TrustRoots::open(chain, stranger.path(), own, &release, Arc::default()).unwrap_err().to_string();
        assert!(err.contains("is not an online key of trust root version 1"), "{err}");
    }
}
