//! The coordinator's database: one sled database under `<data_dir>/state/`, opened once.
//!
//! Each floor keeps its records in its own trees behind its own repository type (the fleet's
//! [`Devices`](crate::fleet::devices::Devices), the registry, the SLO store, the rollout store…);
//! this module owns only the database handle, its error type and the JSON [`encode`] helper
//! every repository uses. Nothing above a repository sees a sled type.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state storage error in {path}: {source}")]
    Storage { path: PathBuf, source: sled::Error },
    #[error("state storage error in PostgreSQL at `{url}`: {source}")]
    Postgres { url: String, source: crate::base::pg::store::PgFailure },
    /// An engine's write refused because its lease passed to another replica.
    #[error(transparent)]
    Fenced(crate::base::pg::lease::Fenced),
    #[error("stored record `{key}` is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
    /// A write of a record that changed since it was read (by another replica or request).
    #[error("`{key}` changed meanwhile (revision {found}, this change was made on {read}): read it again")]
    Stale { key: String, read: u64, found: u64 },
    /// What a repository on PostgreSQL cannot do yet (the store backends are being built
    /// piece by piece: `docs/design/store-backends.md`).
    #[error("{0} is not available on the PostgreSQL store yet")]
    NotOnPostgres(&'static str),
}

impl StoreError {
    /// Whether the store cannot be reached now (PostgreSQL down, cut off, or out of
    /// connections) rather than refusing or failing this one request: the API answers 503 and
    /// the caller may try again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Postgres { source, .. } if source.is_unavailable())
    }
}

/// `value` as the JSON bytes stored under `key`; a value that cannot be encoded is a storage
/// error naming the key, never an empty record.
pub fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Corrupt { key: key.to_owned(), detail: format!("cannot encode: {e}") })
}

/// `meta` keys that say a derived tree is complete (the monitoring roll-ups: traffic, labels,
/// both again by device label, drift verdicts).
/// [`Store::dump`] leaves them out: a backup reads trees one after the other while the
/// coordinator writes, so a derived tree may not match what it sums; the restored coordinator
/// rebuilds it from the records at its first start.
pub const DERIVED_MARKERS: [&[u8]; 5] = [
    b"traffic_rollups",
    b"label_rollups",
    b"traffic_by_label_rollups",
    b"labels_by_label_rollups",
    b"drift_rollups",
];

#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    /// Committed changes of the trees whose repositories publish them (monitoring records).
    feed: std::sync::Arc<crate::base::feed::Feed>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

pub use outpost_shared::endpoints::now_ms;

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join("state");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(32 * 1024 * 1024)
            .open()
            .map_err(|source| StoreError::Storage { path: path.clone(), source })?;
        Ok(Store { path, db, feed: Default::default() })
    }

    /// The feed of this database's published changes (every clone shares it).
    pub fn feed(&self) -> &crate::base::feed::Feed {
        &self.feed
    }

    /// A storage error of this database (for repositories' trees).
    pub fn storage_error(&self, source: sled::Error) -> StoreError {
        StoreError::Storage { path: self.path.clone(), source }
    }

    /// A tree of this database, for a repository to keep its records in.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|e| self.storage_error(e))
    }

    /// Writes everything to disk; returns once it is there.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.storage_error(e))
    }

    /// Hands every record of every tree to `each(tree, key, value)` for a backup, tree `meta`
    /// (the audit head) first. Each tree is read while the coordinator goes on writing: a
    /// record is whole, but trees are read one after the other, not at one instant (so the
    /// [`DERIVED_MARKERS`] are left out).
    pub fn dump(&self, each: &mut DumpSink<'_>) -> Result<(), DumpError> {
        let mut names = self.db.tree_names();
        names.sort_by_key(|name| name.as_ref() != b"meta");
        for name in names {
            let tree = self.db.open_tree(&name).map_err(|e| DumpError::Store(self.storage_error(e)))?;
            for item in tree.iter() {
                let (key, value) = item.map_err(|e| DumpError::Store(self.storage_error(e)))?;
                if name.as_ref() == b"meta" && DERIVED_MARKERS.contains(&key.as_ref()) {
                    continue;
                }
                each(&name, &key, &value).map_err(DumpError::Write)?;
            }
        }
        Ok(())
    }

    /// Puts back one record a backup held (into an empty database being restored).
    pub fn load(&self, tree: &[u8], key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let tree = self.db.open_tree(tree).map_err(|e| self.storage_error(e))?;
        tree.insert(key, value).map(|_| ()).map_err(|e| self.storage_error(e))
    }

    /// How many records each tree holds, by name (trees with none are left out).
    pub fn counts(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let mut counts = std::collections::BTreeMap::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name).map_err(|e| self.storage_error(e))?;
            let n = tree.len() as u64;
            if n > 0 {
                counts.insert(String::from_utf8_lossy(&name).into_owned(), n);
            }
        }
        Ok(counts)
    }

    /// Whether another process holds this database open (a coordinator serving from it).
    pub fn is_locked(error: &StoreError) -> bool {
        matches!(error, StoreError::Storage { source: sled::Error::Io(e), .. }
            if e.to_string().contains("could not acquire lock"))
    }
}

/// What a [`Store::dump`] hands each record to: `(tree, key, value)`.
pub type DumpSink<'a> = dyn FnMut(&[u8], &[u8], &[u8]) -> std::io::Result<()> + 'a;

/// Why a [`Store::dump`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Store(StoreError),
    #[error("writing the dump: {0}")]
    Write(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_leaves_out_the_markers_of_derived_trees() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let meta = store.tree("meta").unwrap();
        for key in DERIVED_MARKERS {
            meta.insert(key, &b"1"[..]).unwrap();
        }
        meta.insert(b"audit_head", &b"7"[..]).unwrap();
        store.tree("traffic_1h").unwrap().insert(b"k", &b"v"[..]).unwrap();
        let mut seen = Vec::new();
        store
            .dump(&mut |tree, key, _| {
                seen.push((
                    String::from_utf8_lossy(tree).into_owned(),
                    String::from_utf8_lossy(key).into_owned(),
                ));
                Ok(())
            })
            .unwrap();
        assert!(seen.contains(&("meta".into(), "audit_head".into())), "{seen:?}");
        assert!(seen.contains(&("traffic_1h".into(), "k".into())), "{seen:?}");
        assert!(!seen.iter().any(|(_, k)| k.ends_with("_rollups")), "{seen:?}");
    }
}
