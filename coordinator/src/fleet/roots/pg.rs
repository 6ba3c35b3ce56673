//! The trust root chain on PostgreSQL: table `outpost_roots` (migration 10), one row per
//! version, shared by every replica.

use crate::base::pg::store::{PgStore, to_sql};
use crate::base::store::StoreError;

pub(super) fn all(store: &PgStore) -> Result<Vec<Vec<u8>>, StoreError> {
    store.with(|c| {
        c.query("SELECT statement FROM outpost_roots ORDER BY version", &[])?
            .into_iter()
            .map(|row| row.try_get(0))
            .collect()
    })
}

pub(super) fn last(store: &PgStore) -> Result<Option<Vec<u8>>, StoreError> {
    store.with(|c| {
        c.query_opt("SELECT statement FROM outpost_roots ORDER BY version DESC LIMIT 1", &[])?
            .map(|row| row.try_get(0))
            .transpose()
    })
}

pub(super) fn insert_new(store: &PgStore, version: u64, bytes: &[u8]) -> Result<bool, StoreError> {
    store.with(|c| {
        let stored = c.execute(
            "INSERT INTO outpost_roots (version, statement) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
            &[&to_sql(version), &bytes],
        )?;
        Ok(stored == 1)
    })
}
