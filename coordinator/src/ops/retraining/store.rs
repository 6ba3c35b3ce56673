//! Retraining's repository: every run's record in the `retraining_runs` tree, keyed
//! `model ‖ 0x00 ‖ start time (20 digits)` so a model's runs sort oldest first — or on
//! PostgreSQL in table `outpost_retraining_runs` (migration 4), by (model, start time). The
//! engine and the alert rules read runs only through [`RunStore`].
//!
//! Runs are written by whichever replica runs them (an operator starts one through any replica's
//! API), so these writes are not fenced by a lease.

use std::collections::BTreeMap;

use crate::base::pg::store::PgStore;
use crate::base::store::{Store, StoreError, encode};
use crate::ops::retraining::RunRecord;

const RUNS_TREE: &str = "retraining_runs";

#[derive(Clone)]
pub struct RunStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled { tree: sled::Tree, store: Store },
    Postgres(PgStore),
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStore").finish_non_exhaustive()
    }
}

impl RunStore {
    pub fn open(store: &Store) -> Result<RunStore, StoreError> {
        Ok(RunStore { backend: Backend::Sled { tree: store.tree(RUNS_TREE)?, store: store.clone() } })
    }

    /// The runs on PostgreSQL.
    pub fn open_postgres(store: &PgStore) -> RunStore {
        RunStore { backend: Backend::Postgres(store.clone()) }
    }

    /// Stores `run` (a later call for the same run replaces it).
    pub fn put(&self, run: &RunRecord) -> Result<(), StoreError> {
        let key = format!("{}\0{:020}", run.model, run.started_ms);
        let value = encode(&key, run)?;
        match &self.backend {
            Backend::Sled { tree, store } => {
                tree.insert(key.as_bytes(), value).map(|_| ()).map_err(|e| store.storage_error(e))
            }
            Backend::Postgres(store) => pg::put(store, run, &value),
        }
    }

    /// The runs of `model`, oldest first.
    pub fn runs(&self, model: &str) -> Result<Vec<RunRecord>, StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => {
                let mut prefix = model.as_bytes().to_vec();
                prefix.push(0);
                let mut out = Vec::new();
                for item in tree.scan_prefix(prefix) {
                    let (_, v) = item.map_err(|e| store.storage_error(e))?;
                    if let Ok(run) = serde_json::from_slice::<RunRecord>(&v) {
                        out.push(run);
                    }
                }
                Ok(out)
            }
            Backend::Postgres(store) => pg::runs(store, model),
        }
    }

    /// Every model's newest run.
    pub fn latest(&self) -> Result<Vec<RunRecord>, StoreError> {
        match &self.backend {
            // Keys sort by model, then start time, so the last one wins.
            Backend::Sled { tree, store } => {
                let mut by_model: BTreeMap<String, RunRecord> = BTreeMap::new();
                for item in tree.iter() {
                    let (_, v) = item.map_err(|e| store.storage_error(e))?;
                    if let Ok(run) = serde_json::from_slice::<RunRecord>(&v) {
                        by_model.insert(run.model.clone(), run);
                    }
                }
                Ok(by_model.into_values().collect())
            }
            Backend::Postgres(store) => pg::latest(store),
        }
    }
}

mod pg;

#[cfg(test)]
mod tests;
