//! The registry's repository: version records, each model's validation thresholds and the
//! artifacts (signed bundle files, gzip-compressed, by the sha256 of the signed file).
//!
//! On sled: tree `registry` (`name ‖ 0x00 ‖ version` → [`VersionRecord`] JSON), tree
//! `registry_policies` and files `<data_dir>/artifacts/<sha256>.bundle.gz`, written atomically
//! and never overwritten. On PostgreSQL ([`pg`](self::pg), migration 11) tables
//! `outpost_registry`, `outpost_registry_policies` and `outpost_blobs`, the artifact in 1 MiB
//! `bytea` chunks: every replica reads the same registry and serves the same bytes.
//!
//! A change to a model's versions ([`RegistryStore::change_model`]) sees every version of the
//! model and writes what it changed at once: on PostgreSQL under the rows' locks, on sled under
//! a lock of this process — so a validation and a promotion racing on one model (through two
//! replicas, or two requests) do not overwrite each other's stage history.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{RegistryError, VersionRecord};
use crate::base::pg::store::PgStore;
use crate::base::store::{Store, StoreError, encode};
use crate::models::validation::Policy;

/// What a change does to a model's versions (oldest first): the indices it changed, or why it
/// refuses (nothing is written then).
pub type ModelChange<'a> = &'a (dyn Fn(&mut [VersionRecord]) -> Result<Vec<usize>, RegistryError> + Sync);

#[derive(Clone)]
pub struct RegistryStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled {
        records: sled::Tree,
        policies: sled::Tree,
        artifacts: PathBuf,
        store: Store,
        changing: Arc<Mutex<()>>,
    },
    Postgres(PgStore),
}

fn key(name: &str, version: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

fn decode(id: &str, bytes: &[u8]) -> Result<VersionRecord, RegistryError> {
    serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::Store(StoreError::Corrupt { key: id.to_owned(), detail: e.to_string() }))
}

impl RegistryStore {
    pub fn open(store: &Store, data_dir: &std::path::Path) -> Result<RegistryStore, StoreError> {
        Ok(RegistryStore {
            backend: Backend::Sled {
                records: store.tree("registry")?,
                policies: store.tree("registry_policies")?,
                artifacts: data_dir.join("artifacts"),
                store: store.clone(),
                changing: Arc::default(),
            },
        })
    }

    /// The registry on PostgreSQL, shared by every replica on `store`.
    pub fn open_postgres(store: &PgStore) -> RegistryStore {
        RegistryStore { backend: Backend::Postgres(store.clone()) }
    }

    /// Where the artifacts are, for people.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sled { artifacts, .. } => artifacts.display().to_string(),
            Backend::Postgres(store) => store.masked_url().to_owned(),
        }
    }

    pub fn get(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, RegistryError> {
        let id = format!("{name}@{version}");
        match &self.backend {
            Backend::Sled { records, store, .. } => {
                let raw = records.get(key(name, version)).map_err(|e| store.storage_error(e))?;
                raw.map(|v| decode(&id, &v)).transpose()
            }
            Backend::Postgres(store) => {
                pg::get(store, name, version)?.map(|t| decode(&id, t.as_bytes())).transpose()
            }
        }
    }

    /// Every version, in no particular order.
    pub fn list(&self) -> Result<Vec<VersionRecord>, RegistryError> {
        match &self.backend {
            Backend::Sled { records, store, .. } => {
                let mut all = Vec::new();
                for item in records.iter() {
                    let (k, v) = item.map_err(|e| store.storage_error(e))?;
                    all.push(decode(&String::from_utf8_lossy(&k).replace('\0', "@"), &v)?);
                }
                Ok(all)
            }
            Backend::Postgres(store) => {
                pg::list(store)?.into_iter().map(|(id, text)| decode(&id, text.as_bytes())).collect()
            }
        }
    }

    /// Stores a new version; when one of that name and version is stored already (another push
    /// got there first), stores nothing and returns that one.
    pub fn insert_new(&self, record: &VersionRecord) -> Result<Option<VersionRecord>, RegistryError> {
        let value = encode(&format!("registry/{}", record.id()), record)?;
        let inserted = match &self.backend {
            Backend::Sled { records, store, .. } => {
                let swapped = records
                    .compare_and_swap(key(&record.name, &record.version), None::<&[u8]>, Some(value))
                    .map_err(|e| store.storage_error(e))?;
                store.flush()?;
                swapped.is_ok()
            }
            Backend::Postgres(store) => pg::insert_new(store, record, &value)?,
        };
        if inserted {
            return Ok(None);
        }
        self.get(&record.name, &record.version)?.map(Some).ok_or_else(|| RegistryError::NotFound(record.id()))
    }

    /// Runs `change` on every version of `name` and stores the ones it changed, at once (see
    /// the module header); returns the versions as they are after.
    pub fn change_model(
        &self,
        name: &str,
        change: ModelChange<'_>,
    ) -> Result<Vec<VersionRecord>, RegistryError> {
        let (records, store, changing) = match &self.backend {
            Backend::Sled { records, store, changing, .. } => (records, store, changing),
            Backend::Postgres(store) => return pg::change_model(store, name, change),
        };
        let _turn = changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut versions: Vec<VersionRecord> = self.list()?.into_iter().filter(|r| r.name == name).collect();
        versions.sort_by(|a, b| super::semver_cmp(&a.version, &b.version));
        let changed = change(&mut versions)?;
        let mut batch = sled::Batch::default();
        for &i in &changed {
            let r = &versions[i];
            batch.insert(key(&r.name, &r.version), encode(&format!("registry/{}", r.id()), r)?);
        }
        records.apply_batch(batch).map_err(|e| store.storage_error(e))?;
        store.flush()?;
        Ok(versions)
    }

    pub fn remove(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Sled { records, store, .. } => {
                records.remove(key(name, version)).map_err(|e| store.storage_error(e))?;
                store.flush()?;
            }
            Backend::Postgres(store) => pg::remove(store, name, version)?,
        }
        Ok(())
    }

    /// A model's stored validation thresholds, if an operator set them.
    pub fn policy(&self, name: &str) -> Result<Option<Policy>, RegistryError> {
        let text = match &self.backend {
            Backend::Sled { policies, store, .. } => policies
                .get(format!("policy\0{name}").as_bytes())
                .map_err(|e| store.storage_error(e))?
                .map(|v| v.to_vec()),
            Backend::Postgres(store) => pg::policy(store, name)?.map(String::into_bytes),
        };
        text.map(|t| {
            serde_json::from_slice(&t).map_err(|e| {
                RegistryError::Store(StoreError::Corrupt {
                    key: format!("policy of {name}"),
                    detail: e.to_string(),
                })
            })
        })
        .transpose()
    }

    pub fn set_policy(&self, name: &str, policy: &Policy) -> Result<(), RegistryError> {
        let value = encode(&format!("registry_policies/{name}"), policy)?;
        match &self.backend {
            Backend::Sled { policies, store, .. } => {
                policies
                    .insert(format!("policy\0{name}").as_bytes(), value)
                    .map_err(|e| store.storage_error(e))?;
                store.flush()?;
            }
            Backend::Postgres(store) => pg::set_policy(store, name, &value)?,
        }
        Ok(())
    }

    fn artifact_path(artifacts: &std::path::Path, sha256: &str) -> PathBuf {
        artifacts.join(format!("{sha256}.bundle.gz"))
    }

    /// Stores an artifact's compressed bytes under the sha256 of the signed file (nothing when
    /// it is stored already: the address is the content).
    pub fn put_blob(&self, sha256: &str, compressed: &[u8]) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Sled { artifacts, .. } => {
                let path = Self::artifact_path(artifacts, sha256);
                if !path.exists() {
                    outpost_shared::files::write_atomic(&path, compressed)
                        .map_err(|source| RegistryError::Io { path, source })?;
                }
            }
            Backend::Postgres(store) => pg::put_blob(store, sha256, compressed)?,
        }
        Ok(())
    }

    /// An artifact's compressed bytes, if stored.
    pub fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        match &self.backend {
            Backend::Sled { artifacts, .. } => {
                let path = Self::artifact_path(artifacts, sha256);
                match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(RegistryError::Io { path, source }),
                }
            }
            Backend::Postgres(store) => Ok(pg::blob(store, sha256)?),
        }
    }

    /// Deletes an artifact no stored version names any more; `false` when one still does.
    pub fn remove_unused_blob(&self, sha256: &str) -> Result<bool, RegistryError> {
        match &self.backend {
            Backend::Sled { artifacts, .. } => {
                if self.list()?.iter().any(|r| r.bundle_sha256 == sha256) {
                    return Ok(false);
                }
                let path = Self::artifact_path(artifacts, sha256);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
                    Err(source) => Err(RegistryError::Io { path, source }),
                }
            }
            Backend::Postgres(store) => Ok(pg::remove_unused_blob(store, sha256)?),
        }
    }
}

/// The size of the chunks an artifact is stored in on PostgreSQL.
pub(crate) const BLOB_CHUNK: usize = pg::CHUNK;

mod pg;
