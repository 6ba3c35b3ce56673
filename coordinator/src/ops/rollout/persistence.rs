//! The rollouts' repository: rollouts and incidents in sled (`rollouts`, `incidents`: id →
//! JSON), and their ids. The engine and the alert engine reach stored rollouts only through
//! [`RolloutStore`], so a second backend replaces this file, not the engine.
//!
//! `rollouts_active` holds the ids of the rollouts still active (written in the transaction
//! that writes the rollout, rebuilt from every rollout at open): what each engine tick reads, so
//! a tick does not decode every finished rollout — each holds its targets, 10,000 of them on a
//! large fleet.

use sled::Transactional;

use super::{Incident, Rollout};
use crate::base::store::{Store, StoreError, encode};

/// Stored rollouts and incidents.
#[derive(Clone)]
pub struct RolloutStore {
    tree: sled::Tree,
    active: sled::Tree,
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
        let repo = RolloutStore {
            tree: store.tree("rollouts")?,
            active: store.tree("rollouts_active")?,
            incidents: store.tree("incidents")?,
            counters: store.tree("counters")?,
            store: store.clone(),
        };
        // From the rollouts themselves: a data directory from before the index, a restore.
        let err = |e| store.storage_error(e);
        let mut batch = sled::Batch::default();
        for k in repo.active.iter().keys() {
            batch.remove(k.map_err(err)?);
        }
        for r in repo.list()?.into_iter().filter(|r| r.phase.active()) {
            batch.insert(r.id.as_bytes(), &[]);
        }
        repo.active.apply_batch(batch).map_err(err)?;
        Ok(repo)
    }

    /// Writes `r` (and whether it is active) and flushes: a step is on disk before it is acted on.
    pub fn put(&self, r: &Rollout) -> Result<(), StoreError> {
        let encoded = encode(&format!("rollouts/{}", r.id), r)?;
        let active = r.phase.active();
        (&self.tree, &self.active)
            .transaction(|(tree, index)| {
                tree.insert(r.id.as_bytes(), encoded.as_slice())?;
                if active {
                    index.insert(r.id.as_bytes(), &[])?;
                } else {
                    index.remove(r.id.as_bytes())?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => self.store.storage_error(e),
                sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt {
                    key: format!("rollouts/{}", r.id),
                    detail: "transaction aborted".into(),
                },
            })?;
        self.store.flush()
    }

    /// The active rollouts (not succeeded, rolled back or aborted), oldest first.
    pub fn active(&self) -> Result<Vec<Rollout>, StoreError> {
        let mut out = Vec::new();
        for id in self.active.iter().keys() {
            let id = id.map_err(|e| self.store.storage_error(e))?;
            if let Some(r) = self.get(&String::from_utf8_lossy(&id))?.filter(|r| r.phase.active()) {
                out.push(r);
            }
        }
        Ok(out)
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
