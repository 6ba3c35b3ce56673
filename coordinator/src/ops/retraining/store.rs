//! Retraining's repository: every run's record in the `retraining_runs` tree, keyed
//! `model ‖ 0x00 ‖ start time (20 digits)` so a model's runs sort oldest first. The engine
//! and the alert rules read runs only through [`RunStore`].

use std::collections::BTreeMap;

use crate::base::store::{Store, StoreError, encode};
use crate::ops::retraining::RunRecord;

const RUNS_TREE: &str = "retraining_runs";

#[derive(Clone)]
pub struct RunStore {
    tree: sled::Tree,
    store: Store,
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStore").finish_non_exhaustive()
    }
}

impl RunStore {
    pub fn open(store: &Store) -> Result<RunStore, StoreError> {
        Ok(RunStore { tree: store.tree(RUNS_TREE)?, store: store.clone() })
    }

    /// Stores `run` (a later call for the same run replaces it).
    pub fn put(&self, run: &RunRecord) -> Result<(), StoreError> {
        let key = format!("{}\0{:020}", run.model, run.started_ms);
        let value = encode(&key, run)?;
        self.tree.insert(key.as_bytes(), value).map(|_| ()).map_err(|e| self.store.storage_error(e))
    }

    /// The runs of `model`, oldest first.
    pub fn runs(&self, model: &str) -> Result<Vec<RunRecord>, StoreError> {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (_, v) = item.map_err(|e| self.store.storage_error(e))?;
            if let Ok(run) = serde_json::from_slice::<RunRecord>(&v) {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// Every model's newest run (keys sort by model, then start time, so the last one wins).
    pub fn latest(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut by_model: BTreeMap<String, RunRecord> = BTreeMap::new();
        for item in self.tree.iter() {
            let (_, v) = item.map_err(|e| self.store.storage_error(e))?;
            if let Ok(run) = serde_json::from_slice::<RunRecord>(&v) {
                by_model.insert(run.model.clone(), run);
            }
        }
        Ok(by_model.into_values().collect())
    }
}
