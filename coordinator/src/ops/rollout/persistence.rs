//! The rollouts' repository: rollouts and incidents in sled (`rollouts`, `incidents`: id →
//! JSON), and their ids. The engine and the alert engine reach stored rollouts only through
//! [`RolloutStore`], so a second backend replaces this file, not the engine.

use super::{Incident, Rollout};
use crate::base::store::{Store, StoreError, encode};

/// Stored rollouts and incidents.
#[derive(Clone)]
pub struct RolloutStore {
    tree: sled::Tree,
    incidents: sled::Tree,
    counters: sled::Tree,
    store: Store,
}

impl std::fmt::Debug for RolloutStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutStore").finish_non_exhaustive()
    }
}

impl RolloutStore {
    pub fn open(store: &Store) -> Result<RolloutStore, StoreError> {
        Ok(RolloutStore {
            tree: store.tree("rollouts")?,
            incidents: store.tree("incidents")?,
            counters: store.tree("counters")?,
            store: store.clone(),
        })
    }

    /// Writes `r` and flushes: a step is on disk before it is acted on.
    pub fn put(&self, r: &Rollout) -> Result<(), StoreError> {
        let key = format!("rollouts/{}", r.id);
        self.tree.insert(r.id.as_bytes(), encode(&key, r)?).map_err(|e| self.store.storage_error(e))?;
        self.store.flush()
    }

    pub fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let v = self.tree.get(id.as_bytes()).map_err(|e| self.store.storage_error(e))?;
        v.map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt { key: format!("rollouts/{id}"), detail: e.to_string() })
        })
        .transpose()
    }

    /// Every rollout, oldest first.
    pub fn list(&self) -> Result<Vec<Rollout>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item.map_err(|e| self.store.storage_error(e))?;
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: format!("rollouts/{}", String::from_utf8_lossy(&k)),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let v = self.incidents.get(id.as_bytes()).map_err(|e| self.store.storage_error(e))?;
        Ok(v.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every incident, oldest first.
    pub fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let mut out = Vec::new();
        for item in self.incidents.iter() {
            let (_, v) = item.map_err(|e| self.store.storage_error(e))?;
            if let Ok(i) = serde_json::from_slice(&v) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Incidents no operator has closed yet (each keeps an alert firing).
    pub fn open_incidents(&self) -> Result<Vec<Incident>, StoreError> {
        Ok(self.incidents()?.into_iter().filter(|i| i.closed_ms.is_none()).collect())
    }

    pub fn put_incident(&self, i: &Incident) -> Result<(), StoreError> {
        let key = format!("incidents/{}", i.id);
        self.incidents.insert(i.id.as_bytes(), encode(&key, i)?).map_err(|e| self.store.storage_error(e))?;
        self.store.flush()
    }

    /// The next id with `prefix` (`r-000001`, `inc-000001`, …).
    pub fn next_id(&self, prefix: &str) -> Result<String, StoreError> {
        let n = self.counters.update_and_fetch(prefix.as_bytes(), |old| {
            let n = old.and_then(|o| <[u8; 8]>::try_from(o).ok()).map_or(0, u64::from_be_bytes) + 1;
            Some(n.to_be_bytes().to_vec())
        });
        let n = n
            .map_err(|e| self.store.storage_error(e))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(1, u64::from_be_bytes);
        // Zero-padded so the trees list in creation order.
        Ok(format!("{prefix}-{n:06}"))
    }
}
