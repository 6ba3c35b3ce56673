//! The rollouts' repository: rollouts and incidents, and their ids. The engine and the alert
//! engine reach stored rollouts only through [`RolloutStore`].
//!
//! On sled: trees `rollouts`, `incidents` (id → JSON) and `rollouts_active`, the ids of the
//! rollouts still active (written in the transaction that writes the rollout, rebuilt from every
//! rollout at open): what each engine tick reads, so a tick does not decode every finished
//! rollout — each holds its targets, 10,000 of them on a large fleet. On PostgreSQL ([`pg`](self::pg),
//! migration 12): tables `outpost_rollouts` (with `active` and `revision` columns beside the
//! record), `outpost_incidents` and `outpost_counters`.
//!
//! Every write of a rollout names the [`Rollout::revision`] it read: a rollout that changed
//! meanwhile is not overwritten ([`StoreError::Stale`]) — on PostgreSQL the API of one replica
//! and the engine of another write the same rollouts. The engine's writes also pass its
//! lease's [`Fence`] there, so a replica that lost the `rollouts` lease cannot write a step.

use sled::Transactional;

use super::{Incident, Rollout};
use crate::base::pg::store::{Fence, PgStore};
use crate::base::store::{Store, StoreError, encode};

/// The lease the rollout engine runs under.
pub const ENGINE: &str = "rollouts";

/// Stored rollouts and incidents.
#[derive(Clone)]
pub struct RolloutStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled { tree: sled::Tree, active: sled::Tree, incidents: sled::Tree, counters: sled::Tree, store: Store },
    Postgres { store: PgStore, fence: Fence },
}

/// Who writes: an operator's request (any replica) or the engine (the lease holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Operator,
    Engine,
}

impl std::fmt::Debug for RolloutStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutStore").finish_non_exhaustive()
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { key: key.to_owned(), detail: e.to_string() })
}

impl RolloutStore {
    pub fn open(store: &Store) -> Result<RolloutStore, StoreError> {
        let (tree, active) = (store.tree("rollouts")?, store.tree("rollouts_active")?);
        let (incidents, counters) = (store.tree("incidents")?, store.tree("counters")?);
        // From the rollouts themselves: a data directory from before the index, a restore.
        let err = |e| store.storage_error(e);
        let mut batch = sled::Batch::default();
        for k in active.iter().keys() {
            batch.remove(k.map_err(err)?);
        }
        for item in tree.iter() {
            let (k, v) = item.map_err(err)?;
            let r: Rollout = decode(&format!("rollouts/{}", String::from_utf8_lossy(&k)), &v)?;
            if r.phase.active() {
                batch.insert(r.id.as_bytes(), &[]);
            }
        }
        active.apply_batch(batch).map_err(err)?;
        Ok(RolloutStore {
            backend: Backend::Sled { tree, active, incidents, counters, store: store.clone() },
        })
    }

    /// The rollouts on PostgreSQL; the engine's writes pass `fence` (the `rollouts` lease as
    /// this replica holds it).
    pub fn open_postgres(store: &PgStore, fence: Fence) -> RolloutStore {
        RolloutStore { backend: Backend::Postgres { store: store.clone(), fence } }
    }

    /// Stores `r` if nobody stored it since it was read at `r.revision` (a new rollout: at 0),
    /// then counts the write in `r.revision`. Durable when it returns: a step is on disk
    /// before it is acted on.
    pub fn put(&self, r: &mut Rollout, writer: Writer) -> Result<(), StoreError> {
        let key = format!("rollouts/{}", r.id);
        let read = r.revision;
        let mut next = r.clone();
        next.revision = read + 1;
        let encoded = encode(&key, &next)?;
        match &self.backend {
            Backend::Sled { tree, active, store, .. } => {
                let is_active = next.phase.active();
                let outcome = (tree, active).transaction(|(tree, index)| {
                    let found = match tree.get(next.id.as_bytes())? {
                        Some(v) => decode::<Rollout>(&key, &v).map(|s| s.revision).unwrap_or(u64::MAX),
                        None => 0,
                    };
                    if found != read {
                        return sled::transaction::abort(found);
                    }
                    tree.insert(next.id.as_bytes(), encoded.as_slice())?;
                    if is_active {
                        index.insert(next.id.as_bytes(), &[])?;
                    } else {
                        index.remove(next.id.as_bytes())?;
                    }
                    Ok(())
                });
                match outcome {
                    Ok(()) => store.flush()?,
                    Err(sled::transaction::TransactionError::Storage(e)) => {
                        return Err(store.storage_error(e));
                    }
                    Err(sled::transaction::TransactionError::Abort(found)) => {
                        return Err(StoreError::Stale { key, read, found });
                    }
                }
            }
            Backend::Postgres { store, fence } => {
                let fence = (writer == Writer::Engine).then_some(fence);
                pg::put(store, fence, &next, read, &encoded)?;
            }
        }
        r.revision = read + 1;
        Ok(())
    }

    /// Whether the engine may step rollouts now: on PostgreSQL, this replica still holds the
    /// `rollouts` lease in its term ([`StoreError::Fenced`] if not); on sled, always.
    pub fn check_lease(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled { .. } => Ok(()),
            Backend::Postgres { store, fence } => store.transaction(|tx| fence.check(tx))?,
        }
    }

    /// The active rollouts (not succeeded, rolled back or aborted), oldest first.
    pub fn active(&self) -> Result<Vec<Rollout>, StoreError> {
        match &self.backend {
            Backend::Sled { active, store, .. } => {
                let mut out = Vec::new();
                for id in active.iter().keys() {
                    let id = id.map_err(|e| store.storage_error(e))?;
                    if let Some(r) = self.get(&String::from_utf8_lossy(&id))?.filter(|r| r.phase.active()) {
                        out.push(r);
                    }
                }
                Ok(out)
            }
            Backend::Postgres { store, .. } => pg::rollouts(store, true),
        }
    }

    pub fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let key = format!("rollouts/{id}");
        match &self.backend {
            Backend::Sled { tree, store, .. } => {
                let v = tree.get(id.as_bytes()).map_err(|e| store.storage_error(e))?;
                v.map(|v| decode(&key, &v)).transpose()
            }
            Backend::Postgres { store, .. } => {
                let text =
                    store.text_by_key("SELECT record::text FROM outpost_rollouts WHERE id = $1", id)?;
                text.map(|t| decode(&key, t.as_bytes())).transpose()
            }
        }
    }

    /// Every rollout, oldest first.
    pub fn list(&self) -> Result<Vec<Rollout>, StoreError> {
        match &self.backend {
            Backend::Sled { tree, store, .. } => {
                let mut out = Vec::new();
                for item in tree.iter() {
                    let (k, v) = item.map_err(|e| store.storage_error(e))?;
                    out.push(decode(&format!("rollouts/{}", String::from_utf8_lossy(&k)), &v)?);
                }
                Ok(out)
            }
            Backend::Postgres { store, .. } => pg::rollouts(store, false),
        }
    }

    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let raw = match &self.backend {
            Backend::Sled { incidents, store, .. } => {
                incidents.get(id.as_bytes()).map_err(|e| store.storage_error(e))?.map(|v| v.to_vec())
            }
            Backend::Postgres { store, .. } => store
                .text_by_key("SELECT record::text FROM outpost_incidents WHERE id = $1", id)?
                .map(String::into_bytes),
        };
        Ok(raw.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every incident, oldest first.
    pub fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let raw: Vec<Vec<u8>> = match &self.backend {
            Backend::Sled { incidents, store, .. } => incidents
                .iter()
                .values()
                .map(|v| v.map(|v| v.to_vec()).map_err(|e| store.storage_error(e)))
                .collect::<Result<_, _>>()?,
            Backend::Postgres { store, .. } => store
                .keyed_texts("SELECT id, record::text FROM outpost_incidents ORDER BY id", &[])?
                .into_iter()
                .map(|(_, t)| t.into_bytes())
                .collect(),
        };
        Ok(raw.iter().filter_map(|v| serde_json::from_slice(v).ok()).collect())
    }

    /// Incidents no operator has closed yet (each keeps an alert firing).
    pub fn open_incidents(&self) -> Result<Vec<Incident>, StoreError> {
        Ok(self.incidents()?.into_iter().filter(|i| i.closed_ms.is_none()).collect())
    }

    /// Stores an incident (the engine opens it, an operator closes it).
    pub fn put_incident(&self, i: &Incident, writer: Writer) -> Result<(), StoreError> {
        let key = format!("incidents/{}", i.id);
        let encoded = encode(&key, i)?;
        match &self.backend {
            Backend::Sled { incidents, store, .. } => {
                incidents.insert(i.id.as_bytes(), encoded).map_err(|e| store.storage_error(e))?;
                store.flush()
            }
            Backend::Postgres { store, fence } => {
                pg::put_incident(store, (writer == Writer::Engine).then_some(fence), &i.id, &encoded)
            }
        }
    }

    /// The next id with `prefix` (`r-000001`, `inc-000001`, …).
    pub fn next_id(&self, prefix: &str) -> Result<String, StoreError> {
        let n = match &self.backend {
            Backend::Sled { counters, store, .. } => {
                let n = counters.update_and_fetch(prefix.as_bytes(), |old| {
                    let n = old.and_then(|o| <[u8; 8]>::try_from(o).ok()).map_or(0, u64::from_be_bytes) + 1;
                    Some(n.to_be_bytes().to_vec())
                });
                n.map_err(|e| store.storage_error(e))?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map_or(1, u64::from_be_bytes)
            }
            Backend::Postgres { store, .. } => pg::next_number(store, prefix)?,
        };
        // Zero-padded so the trees list in creation order.
        Ok(format!("{prefix}-{n:06}"))
    }
}

mod pg;

#[cfg(test)]
mod tests;
