//! The alert engine's repository: one record per alert (by the fingerprint of its labels) in
//! the `alerts` tree, or on PostgreSQL in table `outpost_alerts` (migration 4). The engine reads
//! and writes alerts only through [`AlertStore`].
//!
//! On PostgreSQL only the replica holding the `alerts` lease evaluates alerts, and every write
//! checks its term in the same transaction ([`Fence`]): a replica that lost the lease (paused,
//! cut off) cannot overwrite what the new holder decided.

use crate::base::pg::store::{Fence, PgStore};
use crate::base::store::{Store, StoreError, encode};
use crate::ops::alerts::{AlertRecord, fingerprint};

/// The lease the alert engine runs under.
pub const ENGINE: &str = "alerts";

#[derive(Clone)]
pub struct AlertStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled { tree: sled::Tree, store: Store },
    Postgres { store: PgStore, fence: Fence },
}

impl std::fmt::Debug for AlertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertStore").finish_non_exhaustive()
    }
}

impl AlertStore {
    pub fn open(store: &Store) -> Result<AlertStore, StoreError> {
        Ok(AlertStore { backend: Backend::Sled { tree: store.tree("alerts")?, store: store.clone() } })
    }

    /// The alerts on PostgreSQL, written under `fence` (the `alerts` lease as this replica holds it).
    pub fn open_postgres(store: &PgStore, fence: Fence) -> AlertStore {
        AlertStore { backend: Backend::Postgres { store: store.clone(), fence } }
    }

    /// Every stored alert, in no particular order (an unreadable record is skipped).
    pub fn all(&self) -> Result<Vec<AlertRecord>, StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => {
                let mut all = Vec::new();
                for item in tree.iter() {
                    let (_, v) = item.map_err(|e| store.storage_error(e))?;
                    if let Ok(record) = serde_json::from_slice::<AlertRecord>(&v) {
                        all.push(record);
                    }
                }
                Ok(all)
            }
            Backend::Postgres { store, .. } => pg::all(store),
        }
    }

    /// Stores `record` under its labels' fingerprint (replacing what was there).
    pub fn put(&self, record: &AlertRecord) -> Result<(), StoreError> {
        let key = fingerprint(&record.labels);
        let value = encode(&format!("alerts/{key}"), record)?;
        match &self.backend {
            Backend::Sled { tree, store } => {
                tree.insert(key.as_bytes(), value).map(|_| ()).map_err(|e| store.storage_error(e))
            }
            Backend::Postgres { store, fence } => pg::put(store, fence, &key, &value),
        }
    }

    /// Forgets the alert with fingerprint `key`.
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => {
                tree.remove(key.as_bytes()).map(|_| ()).map_err(|e| store.storage_error(e))
            }
            Backend::Postgres { store, fence } => pg::remove(store, fence, key),
        }
    }
}

mod pg;

#[cfg(test)]
mod tests;
