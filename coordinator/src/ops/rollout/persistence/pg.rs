//! Rollouts and incidents on PostgreSQL (migration 12): `outpost_rollouts` (the record with its
//! `active` flag and `revision` beside it), `outpost_incidents`, `outpost_counters`.

use super::Rollout;
use crate::base::pg::store::{Fence, PgStore, to_sql};
use crate::base::store::StoreError;

/// Stores `next` if the stored revision is still `read` (none stored: 0), after `fence`'s check
/// when the engine writes; in one transaction.
pub(super) fn put(
    store: &PgStore,
    fence: Option<&Fence>,
    next: &Rollout,
    read: u64,
    encoded: &[u8],
) -> Result<(), StoreError> {
    let text = String::from_utf8_lossy(encoded).into_owned();
    let (read_sql, next_sql) = (to_sql(read), to_sql(next.revision));
    let key = format!("rollouts/{}", next.id);
    store.fenced(fence, |tx| {
        let written = if read == 0 {
            tx.execute(
                "INSERT INTO outpost_rollouts (id, model, active, revision, record)
                 VALUES ($1, $2, $3, $4, $5::text::json) ON CONFLICT (id) DO NOTHING",
                &[&next.id, &next.spec.model, &next.phase.active(), &next_sql, &text],
            )?
        } else {
            tx.execute(
                "UPDATE outpost_rollouts SET active = $2, revision = $3, record = $4::text::json
                 WHERE id = $1 AND revision = $5",
                &[&next.id, &next.phase.active(), &next_sql, &text, &read_sql],
            )?
        };
        if written == 1 {
            return Ok(Ok(()));
        }
        let found: Option<i64> = tx
            .query_opt("SELECT revision FROM outpost_rollouts WHERE id = $1", &[&next.id])?
            .map(|row| row.try_get(0))
            .transpose()?;
        let found = found.map_or(0, |f| u64::try_from(f).unwrap_or(0));
        Ok(Err(StoreError::Stale { key: key.clone(), read, found }))
    })?
}

/// Every rollout (or only the active ones), oldest first.
pub(super) fn rollouts(store: &PgStore, only_active: bool) -> Result<Vec<Rollout>, StoreError> {
    let rows = store.keyed_texts(
        "SELECT id, record::text FROM outpost_rollouts WHERE active OR NOT $1 ORDER BY id",
        &[&only_active],
    )?;
    rows.into_iter().map(|(id, text)| super::decode(&format!("rollouts/{id}"), text.as_bytes())).collect()
}

pub(super) fn put_incident(
    store: &PgStore,
    fence: Option<&Fence>,
    id: &str,
    encoded: &[u8],
) -> Result<(), StoreError> {
    let text = String::from_utf8_lossy(encoded).into_owned();
    store.fenced(fence, |tx| {
        tx.execute(
            "INSERT INTO outpost_incidents (id, record) VALUES ($1, $2::text::json)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            &[&id, &text],
        )?;
        Ok(Ok(()))
    })?
}

/// The next number of `prefix`'s counter (1 first), shared by every replica.
pub(super) fn next_number(store: &PgStore, prefix: &str) -> Result<u64, StoreError> {
    store.with(|c| {
        let n: i64 = c
            .query_one(
                "INSERT INTO outpost_counters (prefix, n) VALUES ($1, 1)
                 ON CONFLICT (prefix) DO UPDATE SET n = outpost_counters.n + 1 RETURNING n",
                &[&prefix],
            )?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    })
}
