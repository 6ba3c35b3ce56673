//! Where the coordinator's records live: the one handle `serve` opens and hands to every
//! repository and engine it builds — the embedded sled store (one process), or PostgreSQL
//! shared by any number of replicas, with the fences on the engines' leases.
//!
//! On PostgreSQL an engine (rollouts, alerts, retention, retraining triggers, desired-state
//! renewal) asks [`Shared::fence`] for its fence; the lease keeper `serve` starts afterwards
//! keeps every fence asked for ([`Shared::fences`]), and the engine acts only while
//! [`leads`] says its fence is held. On sled there is one process and it always leads.

use std::sync::{Arc, Mutex, PoisonError};

use crate::base::pg::store::{Fence, PgStore};
use crate::base::store::{Store, StoreError};

/// The coordinator's store: sled, or PostgreSQL shared with other replicas.
#[derive(Clone, Debug)]
pub enum Backing {
    Sled(Store),
    Postgres(Shared),
}

/// PostgreSQL as one replica sees it: the pool, and the fences on the leases of the engines
/// this process runs.
#[derive(Clone, Debug)]
pub struct Shared {
    pub store: PgStore,
    /// This process's replica id (what the leases and `cluster status` name).
    pub replica: String,
    fences: Arc<Mutex<Vec<Fence>>>,
}

impl Shared {
    pub fn new(store: PgStore, replica: &str) -> Shared {
        Shared::with_fences(store, replica, Vec::new())
    }

    /// `store` with `fences` already made (a test gives each simulated replica its own).
    pub fn with_fences(store: PgStore, replica: &str, fences: Vec<Fence>) -> Shared {
        Shared { store, replica: replica.to_owned(), fences: Arc::new(Mutex::new(fences)) }
    }

    /// The fence on `engine`'s lease: one per engine, whoever asks.
    pub fn fence(&self, engine: &'static str) -> Fence {
        let mut fences = self.fences.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fence) = fences.iter().find(|f| f.engine() == engine) {
            return fence.clone();
        }
        let fence = Fence::new(engine);
        fences.push(fence.clone());
        fence
    }

    /// Every fence asked for so far, for the lease keeper.
    pub fn fences(&self) -> Vec<Fence> {
        self.fences.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Backing {
    /// `engine`'s fence on PostgreSQL; `None` on sled (one process, no lease).
    pub fn fence(&self, engine: &'static str) -> Option<Fence> {
        match self {
            Backing::Sled(_) => None,
            Backing::Postgres(shared) => Some(shared.fence(engine)),
        }
    }

    /// Whether the store answers now (readiness): sled always does; PostgreSQL must answer a
    /// query within the pool's checkout timeout.
    pub fn check(&self) -> Result<(), StoreError> {
        match self {
            Backing::Sled(_) => Ok(()),
            Backing::Postgres(shared) => shared.store.ping(),
        }
    }

    /// Makes what was written durable (sled flushes; PostgreSQL committed it already).
    pub fn flush(&self) -> Result<(), StoreError> {
        match self {
            Backing::Sled(store) => store.flush(),
            Backing::Postgres(_) => Ok(()),
        }
    }
}

/// Whether an engine behind `fence` may act now: always without a fence (sled), else while
/// this replica holds the lease.
pub fn leads(fence: Option<&Fence>) -> bool {
    fence.is_none_or(|f| f.term() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fence_per_engine_whoever_asks() {
        let store = crate::base::pg::store::testing::TestDatabase::new();
        let shared = Shared::new(store.store(), "r");
        let (a, b) = (shared.fence("alerts"), shared.fence("alerts"));
        let _ = shared.fence("rollouts");
        a.hold(7, std::time::Instant::now() + std::time::Duration::from_secs(60));
        assert_eq!(b.term(), 7, "the same fence");
        assert_eq!(shared.fences().len(), 2);
        assert!(leads(Some(&b)) && leads(None));
        b.release();
        assert!(!leads(Some(&a)));
    }
}
