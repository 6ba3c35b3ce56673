//! The alert engine's repository: one record per alert (by the fingerprint of its labels) in
//! the `alerts` tree. The engine reads and writes alerts only through [`AlertStore`].

use crate::base::store::{Store, StoreError, encode};
use crate::ops::alerts::{AlertRecord, fingerprint};

#[derive(Clone)]
pub struct AlertStore {
    tree: sled::Tree,
    store: Store,
}

impl std::fmt::Debug for AlertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertStore").finish_non_exhaustive()
    }
}

impl AlertStore {
    pub fn open(store: &Store) -> Result<AlertStore, StoreError> {
        Ok(AlertStore { tree: store.tree("alerts")?, store: store.clone() })
    }

    /// Every stored alert, in no particular order (an unreadable record is skipped).
    pub fn all(&self) -> Result<Vec<AlertRecord>, StoreError> {
        let mut all = Vec::new();
        for item in self.tree.iter() {
            let (_, v) = item.map_err(|e| self.store.storage_error(e))?;
            if let Ok(record) = serde_json::from_slice::<AlertRecord>(&v) {
                all.push(record);
            }
        }
        Ok(all)
    }

    /// Stores `record` under its labels' fingerprint (replacing what was there).
    pub fn put(&self, record: &AlertRecord) -> Result<(), StoreError> {
        let key = fingerprint(&record.labels);
        let value = encode(&format!("alerts/{key}"), record)?;
        self.tree.insert(key.as_bytes(), value).map(|_| ()).map_err(|e| self.store.storage_error(e))
    }

    /// Forgets the alert with fingerprint `key`.
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.tree.remove(key.as_bytes()).map(|_| ()).map_err(|e| self.store.storage_error(e))
    }
}
