//! What `serve` opens before it serves: PostgreSQL checked and its schema brought up to date
//! (before anything is written to the data directory), then every repository on the backing
//! `[store] url` names — the one place that picks a backend per repository.

use std::path::Path;
use std::sync::Arc;

use super::ServeError;
use crate::base::audit::AuditLog;
use crate::base::backing::Backing;
use crate::base::metrics::Metrics;
use crate::base::pg::{self, PgUrl, store::PgStore};
use crate::fleet::ca::Authority;
use crate::fleet::desired::Desired;
use crate::fleet::devices::Devices;
use crate::fleet::ingest::Ingest;
use crate::fleet::roots::RootChain;
use crate::http::auth::Auth;
use crate::http::dashboard::sessions::Sessions;
use crate::models::registry::Registry;

/// Connects to PostgreSQL at `url` as `replica`, migrates its schema under the migration lock
/// (replicas starting together migrate once; a newer schema than this binary knows is refused,
/// naming both) and opens the pool. Every error names the URL with its password masked.
pub(super) async fn open_postgres(url: &PgUrl, replica: &str) -> Result<PgStore, ServeError> {
    let mut client = url.connect(&format!("outpost-coordinator {replica}")).await?;
    let migrated = pg::migrate(url, &mut client, replica).await?;
    tracing::info!(url = url.masked(), replica, from = migrated.from, applied = ?migrated.applied, "PostgreSQL schema checked");
    drop(client);
    let (url, replica) = (url.clone(), replica.to_owned());
    // The pool's first connection blocks: off the runtime's workers.
    let opened =
        tokio::task::spawn_blocking(move || PgStore::open(&url, &format!("outpost-coordinator {replica}")));
    Ok(opened.await.map_err(|e| ServeError::Server(std::io::Error::other(e)))??)
}

/// The repositories `serve` hands out, each on the same backing.
pub(super) struct Records {
    pub devices: Devices,
    pub desired: Desired,
    pub chain: RootChain,
    /// Not yet told which keys it trusts or how it signs.
    pub registry: Registry,
    pub auth: Auth,
    pub sessions: Sessions,
    pub audit: AuditLog,
    pub ingest: Ingest,
}

/// Opens every repository on `backing` (`data_dir` holds sled's registry artifacts).
pub(super) fn open(
    backing: &Backing,
    data_dir: &Path,
    authority: &Arc<Authority>,
    admin_token: &str,
    config: &crate::config::Config,
    metrics: &Metrics,
) -> Result<Records, ServeError> {
    let (rate, burst) = (config.api.rate_limit_per_sec, config.api.rate_limit_burst);
    let audit_error = |e: crate::base::audit::AuditError| ServeError::Audit(e.to_string());
    let records = match backing {
        Backing::Sled(store) => Records {
            devices: Devices::open(store)?,
            desired: Desired::open(store)?,
            chain: RootChain::open(store)?,
            registry: Registry::open(store, data_dir).map_err(|e| ServeError::Audit(e.to_string()))?,
            auth: Auth::open(store, admin_token, rate, burst)?,
            sessions: Sessions::open(store)?,
            audit: AuditLog::open(data_dir, store).map_err(audit_error)?,
            ingest: Ingest::new(store.clone(), Arc::clone(authority), metrics.ingest.clone())?,
        },
        Backing::Postgres(shared) => {
            let pg = &shared.store;
            Records {
                devices: Devices::open_postgres(pg),
                desired: Desired::open_postgres(pg),
                chain: RootChain::open_postgres(pg),
                registry: Registry::open_postgres(pg),
                auth: Auth::open_postgres(pg, admin_token, rate, burst),
                sessions: Sessions::open_postgres(pg),
                audit: AuditLog::open_postgres(pg).map_err(audit_error)?,
                ingest: Ingest::with_postgres(pg, Arc::clone(authority), metrics.ingest.clone()),
            }
        }
    };
    Ok(Records {
        desired: records.desired.with_ttl(config.fleet.desired_ttl_secs),
        ingest: records.ingest.with_drift_hysteresis(crate::fleet::ingest::DriftHysteresis {
            windows: config.alerts.drift_windows,
            clear_windows: config.alerts.drift_clear_windows,
        }),
        ..records
    })
}
