//! PostgreSQL as the coordinator's store (`[store] url = "postgres://…"`): the URL and how it
//! is shown (password masked in every message), the connection, and the schema — numbered
//! migrations (`coordinator/migrations/NNNN_name.sql`) applied at start under an advisory lock,
//! so replicas starting together migrate once, and refused when the database is newer than
//! this binary or an older replica is still running on it. [`lease`] holds the engines' leases
//! and their terms, the fencing tokens every engine write is checked against.
//!
//! [`store`] is the pool every repository's PostgreSQL side uses (`docs/design/store-backends.md`).
//! Only this module and its children may name `tokio_postgres` (the architecture test keeps it
//! so).
//!
//! A server off this host is reached over TLS only ([`tls`]), its certificate checked against
//! the CA `[store] ca_file` names: a password or a record never crosses a network in the clear.
//! A server on this host (loopback or a Unix socket) needs no CA.

pub mod keeper;
pub mod lease;
pub mod store;
pub mod tls;

use std::net::IpAddr;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::config::Host;

use tls::PgTls;

/// How long a connection attempt may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock key migrations run under (any replica of any version takes the same one).
const MIGRATION_LOCK: i64 = 0x6f75_7470_6f73_7401; // "outpost" + 1

/// The schema this binary knows: (version, name, SQL), in order, without gaps.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "cluster", include_str!("../../migrations/0001_cluster.sql")),
    (2, "devices", include_str!("../../migrations/0002_devices.sql")),
    (3, "api_tokens", include_str!("../../migrations/0003_api_tokens.sql")),
    (4, "engines", include_str!("../../migrations/0004_engines.sql")),
    (5, "traffic", include_str!("../../migrations/0005_traffic.sql")),
    (6, "labels", include_str!("../../migrations/0006_labels.sql")),
    (7, "monitoring", include_str!("../../migrations/0007_monitoring.sql")),
    (8, "sessions", include_str!("../../migrations/0008_sessions.sql")),
    (9, "audit", include_str!("../../migrations/0009_audit.sql")),
    (10, "fleet_state", include_str!("../../migrations/0010_fleet_state.sql")),
    (11, "registry", include_str!("../../migrations/0011_registry.sql")),
    (12, "rollouts", include_str!("../../migrations/0012_rollouts.sql")),
    (13, "follow", include_str!("../../migrations/0013_follow.sql")),
];

/// The newest schema version this binary knows.
pub fn latest_schema() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _, _)| *version)
}

/// Why the PostgreSQL store cannot be used. Every message shows the URL with its password
/// masked; none carries the password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("store.url `{url}` is not a usable PostgreSQL URL: {problem}")]
    Malformed { url: String, problem: String },
    #[error("store.url `{url}`: {problem}")]
    Refused { url: String, problem: String },
    #[error("cannot reach PostgreSQL at `{url}`: {cause}")]
    Unreachable { url: String, cause: String },
    #[error(
        "PostgreSQL at `{url}` holds schema version {database}, newer than this coordinator knows ({binary}): \
         run a coordinator of the newer version, or point this one at a database of version {binary} or older"
    )]
    SchemaNewer { url: String, database: i32, binary: i32 },
    #[error(
        "PostgreSQL at `{url}`: replica `{replica}` (schema version {known}, heartbeat {age_secs} s ago) still runs on \
         schema {database}; this coordinator would migrate it to {binary} under it — stop the older replicas first"
    )]
    OlderReplicaRunning {
        url: String,
        replica: String,
        known: i32,
        age_secs: i64,
        database: i32,
        binary: i32,
    },
    #[error("PostgreSQL at `{url}`: {what}: {cause}")]
    Query { url: String, what: String, cause: String },
}

impl PgError {
    /// Whether this is the operator's to fix in the configuration or the deployment (exit 2),
    /// rather than a server that is down or failing (exit 1).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            PgError::Malformed { .. }
                | PgError::Refused { .. }
                | PgError::SchemaNewer { .. }
                | PgError::OlderReplicaRunning { .. }
        )
    }
}

/// A parsed `postgres://` (or `postgresql://`) URL and how it is shown.
#[derive(Clone)]
pub struct PgUrl {
    masked: String,
    config: tokio_postgres::Config,
    tls: PgTls,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked)
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked)
    }
}

/// `url` with any password replaced by `***`: in the user part (`user:secret@host`) and in a
/// `password=` parameter. What every message and log line shows.
pub fn mask(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let end = out[start..].find(['/', '?']).map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(query) = out.find('?') {
        let (head, params) = out.split_at(query + 1);
        let params: Vec<String> = params
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out = format!("{head}{}", params.join("&"));
    }
    out
}

impl PgUrl {
    /// Parses `url` for a server on this host (no CA: no TLS); see [`PgUrl::parse_with_ca`].
    pub fn parse(url: &str) -> Result<PgUrl, PgError> {
        PgUrl::parse_with_ca(url, None)
    }

    /// Parses `url`; refuses what is not a `postgres://` URL or names no database. With
    /// `ca_pem` (the CA that signed the server's certificate) every connection is TLS,
    /// verified, unless the URL says `sslmode=disable` for a server on this host; without it,
    /// only a server on this host is accepted.
    pub fn parse_with_ca(url: &str, ca_pem: Option<&[u8]>) -> Result<PgUrl, PgError> {
        use tokio_postgres::config::SslMode;
        let masked = mask(url);
        let malformed = |problem: String| PgError::Malformed { url: masked.clone(), problem };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(malformed("it must start with postgres:// or postgresql://".into()));
        }
        // The parser's messages name the option, never its value.
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| malformed(format!("{e}")))?;
        if config.get_hosts().is_empty() {
            return Err(malformed("it names no host".into()));
        }
        if config.get_user().is_none() {
            return Err(malformed("it names no user (postgres://USER@HOST/DATABASE)".into()));
        }
        if config.get_dbname().is_none_or(str::is_empty) {
            return Err(malformed("it names no database (postgres://USER@HOST/DATABASE)".into()));
        }
        let refused = |problem: String| PgError::Refused { url: masked.clone(), problem };
        let tls = match ca_pem {
            Some(_) if config.get_ssl_mode() == SslMode::Disable => PgTls::none(),
            Some(pem) => PgTls::trusting(pem).map_err(|e| refused(format!("store.ca_file: {e}")))?,
            None if config.get_ssl_mode() == SslMode::Require => {
                return Err(refused(
                    "sslmode=require: give store.ca_file, the CA that signed PostgreSQL's certificate, so the \
                     server can be verified"
                        .into(),
                ));
            }
            None => PgTls::none(),
        };
        config.ssl_mode(if tls.is_on() { SslMode::Require } else { SslMode::Disable });
        if !tls.is_on() {
            for host in config.get_hosts() {
                if let Host::Tcp(name) = host
                    && !is_loopback(name)
                {
                    return Err(refused(format!(
                        "host `{name}` is not on this machine: the password and every record would cross \
                         the network in the clear. Give store.ca_file (the CA that signed PostgreSQL's \
                         certificate) to connect over TLS, or use 127.0.0.1, ::1, localhost or a Unix socket"
                    )));
                }
            }
            if let Some(ip) = config.get_hostaddrs().iter().find(|ip| !ip.is_loopback()) {
                return Err(refused(format!(
                    "hostaddr `{ip}` is not on this machine: give store.ca_file to connect over TLS"
                )));
            }
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        // A partition leaves a connection open and silent: the kernel gives up on it once sent
        // data stays unacknowledged this long, or after a few unanswered keepalives.
        config.keepalives_idle(Duration::from_secs(10)).tcp_user_timeout(Duration::from_secs(20));
        // A replica cut off mid-transaction must not hold its row locks for ever: the server
        // ends a transaction left idle this long (ours are short), so the others go on.
        let idle = "-c idle_in_transaction_session_timeout=10s";
        let options = match config.get_options() {
            Some(given) => format!("{given} {idle}"),
            None => idle.to_owned(),
        };
        config.options(&options);
        Ok(PgUrl { masked, config, tls })
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_on()
    }

    /// The URL as shown: its password masked.
    pub fn masked(&self) -> &str {
        &self.masked
    }

    /// The database it names.
    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    /// Connects as `application` (what `pg_stat_activity` shows); the connection is driven by a
    /// task on the current runtime until the client is dropped.
    pub async fn connect(&self, application: &str) -> Result<Client, PgError> {
        let mut config = self.config.clone();
        config.application_name(application);
        let (client, connection) = config
            .connect(self.tls.clone())
            .await
            .map_err(|e| PgError::Unreachable { url: self.masked.clone(), cause: cause(&e) })?;
        let url = self.masked.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(url, error = %cause(&e), "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    fn query_error(&self, what: &str, e: &tokio_postgres::Error) -> PgError {
        PgError::Query { url: self.masked.clone(), what: what.to_owned(), cause: cause(e) }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error with its causes, one line: what tokio-postgres says and what the server said.
fn cause(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The schema version before.
    pub from: i32,
    /// The versions this call applied (none when another replica already had).
    pub applied: Vec<i32>,
}

/// Brings the database's schema up to [`latest_schema`], as `replica`, under the migration
/// lock: replicas starting together wait for the first, which applies each missing migration in
/// its own transaction, and find nothing left to do. Refuses a database whose schema is newer
/// than this binary knows, and — before changing a schema — one on which a replica that knows
/// only an older schema has a live heartbeat.
pub async fn migrate(url: &PgUrl, client: &mut Client, replica: &str) -> Result<Migrated, PgError> {
    migrate_to(url, client, replica, MIGRATIONS).await
}

/// [`migrate`] with the migrations given (tests bring a later one of their own).
async fn migrate_to(
    url: &PgUrl,
    client: &mut Client,
    replica: &str,
    migrations: &[(i32, &str, &str)],
) -> Result<Migrated, PgError> {
    client
        .query("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| url.query_error("taking the migration lock", &e))?;
    let result = migrate_locked(url, client, replica, migrations).await;
    // Released here, or with the session if this connection is gone.
    if let Err(e) = client.query("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await {
        tracing::warn!(url = url.masked(), error = %cause(&e), "cannot release the migration lock");
    }
    result
}

async fn migrate_locked(
    url: &PgUrl,
    client: &mut Client,
    replica: &str,
    migrations: &[(i32, &str, &str)],
) -> Result<Migrated, PgError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS outpost_schema (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                applied_by text NOT NULL
            )",
        )
        .await
        .map_err(|e| url.query_error("creating the schema table", &e))?;
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM outpost_schema", &[])
        .await
        .map_err(|e| url.query_error("reading the schema version", &e))?;
    let from: i32 = row.try_get(0).map_err(|e| url.query_error("reading the schema version", &e))?;
    let binary = migrations.last().map_or(0, |(version, _, _)| *version);
    if from > binary {
        return Err(PgError::SchemaNewer { url: url.masked.clone(), database: from, binary });
    }
    if from == binary {
        return Ok(Migrated { from, applied: Vec::new() });
    }
    if from >= 1 {
        // The replicas table exists from version 1 on.
        let ttl = lease::REPLICA_TTL.as_millis() as f64;
        let older = client
            .query_opt(
                "SELECT id, schema, extract(epoch FROM now() - heartbeat_at)::bigint
                 FROM outpost_replicas
                 WHERE schema < $1 AND heartbeat_at > now() - interval '1 millisecond' * $2
                 ORDER BY heartbeat_at DESC LIMIT 1",
                &[&binary, &ttl],
            )
            .await
            .map_err(|e| url.query_error("reading the running replicas", &e))?;
        if let Some(row) = older {
            let read = |e| url.query_error("reading the running replicas", &e);
            return Err(PgError::OlderReplicaRunning {
                url: url.masked.clone(),
                replica: row.try_get(0).map_err(read)?,
                known: row.try_get(1).map_err(read)?,
                age_secs: row.try_get(2).map_err(read)?,
                database: from,
                binary,
            });
        }
    }
    let mut applied = Vec::new();
    for (version, name, sql) in migrations.iter().filter(|(v, _, _)| *v > from) {
        let what = format!("applying migration {version:04}_{name}");
        let tx = client.transaction().await.map_err(|e| url.query_error(&what, &e))?;
        tx.batch_execute(sql).await.map_err(|e| url.query_error(&what, &e))?;
        tx.execute(
            "INSERT INTO outpost_schema (version, name, applied_by) VALUES ($1, $2, $3)",
            &[version, name, &replica],
        )
        .await
        .map_err(|e| url.query_error(&what, &e))?;
        tx.commit().await.map_err(|e| url.query_error(&what, &e))?;
        tracing::info!(url = url.masked(), version, name, "applied a schema migration");
        applied.push(*version);
    }
    Ok(Migrated { from, applied })
}

#[cfg(test)]
mod tests;
