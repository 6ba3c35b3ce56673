//! Rollouts and incidents in sled (`rollouts`, `incidents`: id → JSON), and their ids.

use super::{Incident, Rollout, RolloutError, Rollouts, TimelineEntry};
use crate::store::{StoreError, now_ms};

impl Rollouts {
    pub(super) fn put(&self, r: &Rollout) -> Result<(), StoreError> {
        self.tree
            .insert(r.id.as_bytes(), serde_json::to_vec(r).unwrap_or_default())
            .map_err(|e| self.store.storage_error(e))?;
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

    pub(super) fn put_incident(&self, i: &Incident) -> Result<(), StoreError> {
        self.incidents
            .insert(i.id.as_bytes(), serde_json::to_vec(i).unwrap_or_default())
            .map_err(|e| self.store.storage_error(e))?;
        self.store.flush()
    }

    /// Marks an incident handled (its alert resolves).
    pub fn close_incident(&self, id: &str, by: &str) -> Result<Incident, RolloutError> {
        let _g = self.guard();
        let mut i =
            self.incident(id)?.ok_or_else(|| RolloutError::NotFound(format!("no incident `{id}`")))?;
        if i.closed_ms.is_none() {
            i.closed_ms = Some(now_ms());
            i.closed_by = Some(by.to_owned());
            i.timeline.push(TimelineEntry { at_ms: now_ms(), message: format!("closed by {by}") });
            self.put_incident(&i)?;
        }
        Ok(i)
    }

    pub(super) fn next_id(&self, prefix: &str) -> Result<String, StoreError> {
        let n = self.store.tree("counters")?.update_and_fetch(prefix.as_bytes(), |old| {
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
