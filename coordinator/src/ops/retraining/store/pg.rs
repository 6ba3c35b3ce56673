//! Retraining runs on PostgreSQL: table `outpost_retraining_runs`, by (model, start time).

use crate::base::pg::store::{PgStore, to_sql};
use crate::base::store::StoreError;
use crate::ops::retraining::RunRecord;

pub(super) fn put(store: &PgStore, run: &RunRecord, value: &[u8]) -> Result<(), StoreError> {
    let text = std::str::from_utf8(value).map_err(|e| StoreError::Corrupt {
        key: format!("retraining_runs/{}", run.model),
        detail: e.to_string(),
    })?;
    let started = to_sql(run.started_ms);
    store.with(|c| {
        c.execute(
            "INSERT INTO outpost_retraining_runs (model, started_ms, record) VALUES ($1, $2, $3::text::json)
             ON CONFLICT (model, started_ms) DO UPDATE SET record = excluded.record",
            &[&run.model, &started, &text],
        )
        .map(drop)
    })
}

/// Decodes the records `sql` selects with `params` (an unreadable one is skipped, as on sled).
fn decoded(store: &PgStore, sql: &str, model: Option<&str>) -> Result<Vec<RunRecord>, StoreError> {
    let texts: Vec<String> = store.with(|c| {
        let rows = match model {
            Some(model) => c.query(sql, &[&model])?,
            None => c.query(sql, &[])?,
        };
        rows.into_iter().map(|row| row.try_get(0)).collect()
    })?;
    Ok(texts.iter().filter_map(|t| serde_json::from_str(t).ok()).collect())
}

pub(super) fn runs(store: &PgStore, model: &str) -> Result<Vec<RunRecord>, StoreError> {
    decoded(
        store,
        "SELECT record::text FROM outpost_retraining_runs WHERE model = $1 ORDER BY started_ms",
        Some(model),
    )
}

pub(super) fn latest(store: &PgStore) -> Result<Vec<RunRecord>, StoreError> {
    decoded(
        store,
        "SELECT DISTINCT ON (model) record::text FROM outpost_retraining_runs ORDER BY model, started_ms DESC",
        None,
    )
}
