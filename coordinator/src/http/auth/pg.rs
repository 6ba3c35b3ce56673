//! The issued API tokens on PostgreSQL (table `outpost_api_tokens` of migration 3): one row per
//! token, by the sha256 of the token (never the token), its name unique.

use postgres::error::SqlState;

use super::ApiToken;
use crate::base::pg::store::PgStore;
use crate::base::store::StoreError;

/// The token whose sha256 is `hash`; a record that does not decode lets nobody in.
pub(super) fn get(store: &PgStore, hash: &str) -> Result<Option<ApiToken>, StoreError> {
    let text = store.text_by_key("SELECT record::text FROM outpost_api_tokens WHERE hash = $1", hash)?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Stores a new token; `false` when its name is taken.
pub(super) fn insert(store: &PgStore, hash: &str, record: &ApiToken) -> Result<bool, StoreError> {
    let text = serde_json::to_string(record).map_err(|e| StoreError::Corrupt {
        key: format!("tokens/{}", record.name),
        detail: format!("cannot encode: {e}"),
    })?;
    let outcome = store.with(|c| {
        match c.execute(
            "INSERT INTO outpost_api_tokens (hash, name, record) VALUES ($1, $2, $3::text::json)",
            &[&hash, &record.name, &text],
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(false),
            Err(e) => Err(e),
        }
    })?;
    Ok(outcome)
}

/// Every issued token (one that does not decode is left out).
pub(super) fn list(store: &PgStore) -> Result<Vec<ApiToken>, StoreError> {
    let texts: Vec<String> = store.with(|c| {
        c.query("SELECT record::text FROM outpost_api_tokens ORDER BY name", &[])?
            .into_iter()
            .map(|row| row.try_get(0))
            .collect()
    })?;
    Ok(texts.iter().filter_map(|t| serde_json::from_str(t).ok()).collect())
}

/// Removes the token named `name`; `false` when there is none.
pub(super) fn remove(store: &PgStore, name: &str) -> Result<bool, StoreError> {
    store.with(|c| Ok(c.execute("DELETE FROM outpost_api_tokens WHERE name = $1", &[&name])? > 0))
}
