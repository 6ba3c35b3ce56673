//! The dashboard's sessions on PostgreSQL: table `outpost_dashboard_sessions` (migration 8), one
//! row per session by the sha256 of its id, shared by every replica.

use super::{MAX_SESSIONS, Session};
use crate::base::pg::store::{PgStore, to_sql};
use crate::base::store::StoreError;

/// Sweeps the expired sessions (and the ones closest to expiry beyond the cap) and stores
/// `session` under `key`, in one transaction.
pub(super) fn start(store: &PgStore, key: &str, session: &Session, now_ms: u64) -> Result<(), StoreError> {
    let (now, created, expires) =
        (to_sql(now_ms), to_sql(session.created_at_ms), to_sql(session.expires_at_ms));
    let keep = to_sql(MAX_SESSIONS as u64 - 1);
    store.transaction(|tx| {
        tx.execute("DELETE FROM outpost_dashboard_sessions WHERE expires_at_ms <= $1", &[&now])?;
        tx.execute(
            "DELETE FROM outpost_dashboard_sessions WHERE id_hash IN (
                 SELECT id_hash FROM outpost_dashboard_sessions
                 ORDER BY expires_at_ms DESC, id_hash OFFSET $1)",
            &[&keep],
        )?;
        tx.execute(
            "INSERT INTO outpost_dashboard_sessions (id_hash, token_hash, csrf, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
            &[&key, &session.token_hash, &session.csrf, &created, &expires],
        )?;
        Ok(Ok(()))
    })?
}

pub(super) fn get(store: &PgStore, key: &str) -> Result<Option<Session>, StoreError> {
    store.with(|c| {
        c.query_opt(
            "SELECT token_hash, csrf, created_at_ms, expires_at_ms
             FROM outpost_dashboard_sessions WHERE id_hash = $1",
            &[&key],
        )?
        .map(|row| {
            let (created, expires): (i64, i64) = (row.try_get(2)?, row.try_get(3)?);
            Ok(Session {
                token_hash: row.try_get(0)?,
                csrf: row.try_get(1)?,
                created_at_ms: u64::try_from(created).unwrap_or(0),
                expires_at_ms: u64::try_from(expires).unwrap_or(0),
            })
        })
        .transpose()
    })
}

pub(super) fn close(store: &PgStore, key: &str) -> Result<(), StoreError> {
    store
        .with(|c| c.execute("DELETE FROM outpost_dashboard_sessions WHERE id_hash = $1", &[&key]).map(|_| ()))
}

pub(super) fn len(store: &PgStore) -> Result<usize, StoreError> {
    store.with(|c| {
        let n: i64 = c.query_one("SELECT count(*) FROM outpost_dashboard_sessions", &[])?.try_get(0)?;
        Ok(usize::try_from(n).unwrap_or(0))
    })
}
