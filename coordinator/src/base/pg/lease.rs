//! Leases: which replica runs an engine (rollouts, alerts, retention…), until when, and in
//! which **term** — the fencing token, raised at every change of holder.
//!
//! A holder renews well inside the TTL and stops acting the moment its own deadline passes
//! without a renewal. That alone is not enough (a paused process wakes up believing it still
//! leads), so every write an engine makes runs [`fence`] in the same transaction: it takes a
//! share lock on the lease row and fails unless the term is still the writer's. A takeover has
//! to update that row, so it waits for the writer's commit, and every write after it carries the
//! new term: a deposed holder's late write fails instead of interleaving with the new leader's.
//! Expiry is judged by the database's clock (`now()`), so replicas' clocks may be off by a day.

use std::time::Duration;

use tokio_postgres::{GenericClient, Transaction};

/// How long a lease lasts unless renewed; a failed holder is replaced within it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// How long a replica's heartbeat counts it as running.
pub const REPLICA_TTL: Duration = Duration::from_secs(15);

/// A write refused by [`fence`].
#[derive(Debug, thiserror::Error)]
pub enum Fenced {
    #[error(
        "engine `{engine}`: this replica's term {mine} is over (the lease is in term {current:?}); write refused"
    )]
    Deposed { engine: String, mine: i64, current: Option<i64> },
    #[error("engine `{engine}`: checking the lease: {cause}")]
    Query { engine: String, cause: String },
}

fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

/// Takes `engine`'s lease for `holder` if it is free, expired, or already `holder`'s, for `ttl`
/// from now. `Some(term)`: `holder` holds it, in a new term unless it held it unexpired;
/// `None`: another holder's lease runs.
pub async fn try_acquire(
    client: &impl GenericClient,
    engine: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "INSERT INTO outpost_leases AS l (engine, holder, term, expires_at)
             VALUES ($1, $2, 1, now() + interval '1 millisecond' * $3)
             ON CONFLICT (engine) DO UPDATE SET
                 term = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now()
                             THEN l.term ELSE l.term + 1 END,
                 acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now()
                                    THEN l.acquired_at ELSE now() END,
                 holder = EXCLUDED.holder,
                 expires_at = EXCLUDED.expires_at
             WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now()
             RETURNING term",
            &[&engine, &holder, &millis(ttl)],
        )
        .await?;
    row.map(|row| row.try_get(0)).transpose()
}

/// Extends `holder`'s unexpired lease of `engine` in `term` to `ttl` from now; false when it has
/// expired or another holder has it (then the caller stops acting and may [`try_acquire`] again,
/// in a new term).
pub async fn renew(
    client: &impl GenericClient,
    engine: &str,
    holder: &str,
    term: i64,
    ttl: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "UPDATE outpost_leases SET expires_at = now() + interval '1 millisecond' * $4
             WHERE engine = $1 AND holder = $2 AND term = $3 AND expires_at > now()",
            &[&engine, &holder, &term, &millis(ttl)],
        )
        .await?;
    Ok(n == 1)
}

/// Gives up `holder`'s lease of `engine` in `term` now (at shutdown), so another replica need
/// not wait for it to expire.
pub async fn release(
    client: &impl GenericClient,
    engine: &str,
    holder: &str,
    term: i64,
) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "UPDATE outpost_leases SET expires_at = now()
             WHERE engine = $1 AND holder = $2 AND term = $3 AND expires_at > now()",
            &[&engine, &holder, &term],
        )
        .await?;
    Ok(n == 1)
}

/// Checks, inside the transaction that writes an engine's state, that `engine`'s lease is still
/// in term `mine`, and holds the lease row (share lock) until that transaction ends, so no
/// takeover commits in between. Call it before the writes; on `Err` roll back.
pub async fn fence(tx: &Transaction<'_>, engine: &str, mine: i64) -> Result<(), Fenced> {
    let row = tx
        .query_opt("SELECT term FROM outpost_leases WHERE engine = $1 FOR SHARE", &[&engine])
        .await
        .map_err(|e| Fenced::Query { engine: engine.to_owned(), cause: super::cause(&e) })?;
    let current: Option<i64> = row
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(|e| Fenced::Query { engine: engine.to_owned(), cause: super::cause(&e) })?;
    if current == Some(mine) {
        Ok(())
    } else {
        Err(Fenced::Deposed { engine: engine.to_owned(), mine, current })
    }
}

/// Records that replica `id` (coordinator `version`, knowing schema `schema`) is alive now.
pub async fn heartbeat(
    client: &impl GenericClient,
    id: &str,
    version: &str,
    schema: i32,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO outpost_replicas (id, version, schema) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, schema = EXCLUDED.schema,
                 heartbeat_at = now()",
            &[&id, &version, &schema],
        )
        .await?;
    // A replica id is a process's: rows of processes gone a day are history, not replicas.
    client.execute("DELETE FROM outpost_replicas WHERE heartbeat_at < now() - interval '1 day'", &[]).await?;
    Ok(())
}

/// The cluster as the database sees it: every replica heard from in the last day and every
/// engine's lease, ages and expiries by the database's clock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterView {
    pub replicas: Vec<ReplicaRow>,
    pub leases: Vec<LeaseRow>,
}

/// One coordinator process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaRow {
    pub id: String,
    pub version: String,
    /// The newest schema version it knows.
    pub schema: i32,
    pub started_at_ms: i64,
    /// How long ago its last heartbeat was recorded.
    pub heartbeat_age_ms: i64,
}

/// One engine's lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseRow {
    pub engine: String,
    pub holder: String,
    pub term: i64,
    /// Until the lease expires unless renewed (negative: it expired that long ago).
    pub expires_in_ms: i64,
    pub acquired_at_ms: i64,
}

/// Reads the [`ClusterView`] (one snapshot).
pub fn view(store: &super::store::PgStore) -> Result<ClusterView, crate::base::store::StoreError> {
    const MS: &str = "(extract(epoch from";
    let replicas = format!(
        "SELECT id, version, schema, {MS} started_at) * 1000)::bigint,
                {MS} now() - heartbeat_at) * 1000)::bigint
         FROM outpost_replicas WHERE heartbeat_at > now() - interval '1 day' ORDER BY id"
    );
    let leases = format!(
        "SELECT engine, holder, term, {MS} expires_at - now()) * 1000)::bigint,
                {MS} acquired_at) * 1000)::bigint
         FROM outpost_leases ORDER BY engine"
    );
    store.with(|c| {
        let mut tx =
            c.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start()?;
        let replicas = tx
            .query(&replicas, &[])?
            .iter()
            .map(|r| {
                Ok(ReplicaRow {
                    id: r.try_get(0)?,
                    version: r.try_get(1)?,
                    schema: r.try_get(2)?,
                    started_at_ms: r.try_get(3)?,
                    heartbeat_age_ms: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        let leases = tx
            .query(&leases, &[])?
            .iter()
            .map(|r| {
                Ok(LeaseRow {
                    engine: r.try_get(0)?,
                    holder: r.try_get(1)?,
                    term: r.try_get(2)?,
                    expires_in_ms: r.try_get(3)?,
                    acquired_at_ms: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        tx.commit()?;
        Ok(ClusterView { replicas, leases })
    })
}
