//! The alerts on PostgreSQL: table `outpost_alerts`, one row per alert by its fingerprint,
//! every write fenced by the `alerts` lease.

use crate::base::pg::store::{Fence, PgStore};
use crate::base::store::StoreError;
use crate::ops::alerts::AlertRecord;

pub(super) fn all(store: &PgStore) -> Result<Vec<AlertRecord>, StoreError> {
    let texts: Vec<String> = store.with(|c| {
        c.query("SELECT record::text FROM outpost_alerts", &[])?
            .into_iter()
            .map(|row| row.try_get(0))
            .collect()
    })?;
    // An unreadable record is skipped, as on sled.
    Ok(texts.iter().filter_map(|t| serde_json::from_str(t).ok()).collect())
}

pub(super) fn put(store: &PgStore, fence: &Fence, key: &str, value: &[u8]) -> Result<(), StoreError> {
    let text = std::str::from_utf8(value)
        .map_err(|e| StoreError::Corrupt { key: format!("alerts/{key}"), detail: e.to_string() })?;
    store.fenced(Some(fence), |tx| {
        tx.execute(
            "INSERT INTO outpost_alerts (fingerprint, record) VALUES ($1, $2::text::json)
             ON CONFLICT (fingerprint) DO UPDATE SET record = excluded.record",
            &[&key, &text],
        )?;
        Ok(Ok(()))
    })?
}

pub(super) fn remove(store: &PgStore, fence: &Fence, key: &str) -> Result<(), StoreError> {
    store.fenced(Some(fence), |tx| {
        tx.execute("DELETE FROM outpost_alerts WHERE fingerprint = $1", &[&key])?;
        Ok(Ok(()))
    })?
}
