//! The repositories' handle on PostgreSQL: a pool of blocking connections, entered from
//! synchronous code wherever it runs, and transactions retried whole when PostgreSQL cancels
//! them for a conflict.
//!
//! The repositories stay synchronous (`docs/design/store-backends.md`, decision 1): they take a
//! connection from an r2d2 pool of the blocking `postgres` client, which drives each call on a
//! runtime of its own. That runtime cannot be entered from a tokio worker, so [`PgStore::run`]
//! steps aside first: `block_in_place` on a multi-threaded runtime, a scoped thread on a
//! current-thread one, nothing on a plain thread (ingest's `spawn_blocking`, tests, the CLI).
//!
//! A transaction that fails with a serialization failure (`40001`), a deadlock (`40P01`) or a
//! unique violation (`23505`: two replicas inserted the same new row at once; the retry sees
//! the winner's row and decides again) is run again from the start, a few times.

use std::sync::Arc;
use std::time::Duration;

use super::tls::PgTls;
use postgres::error::SqlState;
use r2d2_postgres::PostgresConnectionManager;

use super::PgUrl;
use crate::base::feed::Feed;
use crate::base::store::StoreError;

/// Connections a coordinator process keeps to PostgreSQL at most.
const POOL_SIZE: u32 = 16;

/// How long a call waits for a free connection (or a new one) before it fails: what an API
/// request waits before its 503 when PostgreSQL is gone.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a transaction cancelled for a conflict is run again before the error is returned.
const ATTEMPTS: usize = 8;

/// What a PostgreSQL call failed with, as [`StoreError::Postgres`] carries it.
#[derive(Debug, thiserror::Error)]
pub enum PgFailure {
    #[error("{}", super::cause(.0))]
    Query(#[from] postgres::Error),
    #[error("no connection within {CHECKOUT_TIMEOUT:?}: {0}")]
    Pool(#[from] r2d2::Error),
}

impl PgFailure {
    /// Whether PostgreSQL could not be reached or its connection broke (no connection from
    /// the pool, a closed or failed connection, a server shutting down or refusing
    /// connections: SQLSTATE classes 08 and 57), rather than a statement refused.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgFailure::Pool(_) => true,
            PgFailure::Query(e) => {
                e.is_closed()
                    || e.code().is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57"))
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
        }
    }
}

/// The pool every repository on PostgreSQL shares, and the feed of changes published by this
/// process's writes.
#[derive(Clone)]
pub struct PgStore {
    /// The URL as every message shows it (password masked).
    masked: Arc<str>,
    pool: r2d2::Pool<PostgresConnectionManager<PgTls>>,
    /// Declared after `pool`: dropped after it, so the last handle's closer holds the last
    /// reference to the pool.
    _closer: Arc<Closer>,
    feed: Arc<Feed>,
    /// This replica's shard of the roll-up rows (one of [`SHARDS`], picked at random when the
    /// pool is opened): replicas adding into one bucket each add into their own row.
    shard: i16,
}

/// Closes the pool's connections off the async runtime when the last [`PgStore`] goes: the
/// blocking client closes a connection by entering a runtime of its own, which panics inside
/// another (a `serve` that fails after opening the pool returns through async code).
struct Closer(Option<r2d2::Pool<PostgresConnectionManager<PgTls>>>);

impl Drop for Closer {
    fn drop(&mut self) {
        if let Some(last) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::spawn(move || drop(last)).join();
        }
    }
}

/// How many shards roll-up rows are spread over.
pub const SHARDS: u8 = 16;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.masked).finish_non_exhaustive()
    }
}

/// A connection taken from the pool for one call.
pub type Conn = r2d2::PooledConnection<PostgresConnectionManager<PgTls>>;

impl PgStore {
    /// Opens a pool on `url` (its schema must already be up to date: [`super::migrate`]); fails
    /// when the first connection cannot be made within the checkout timeout.
    pub fn open(url: &PgUrl, application: &str) -> Result<PgStore, StoreError> {
        let mut config = url.config.clone();
        config.application_name(application).connect_timeout(super::CONNECT_TIMEOUT);
        let manager = PostgresConnectionManager::new(postgres::Config::from(config), url.tls.clone());
        let pool = run(|| {
            r2d2::Pool::builder()
                .max_size(POOL_SIZE)
                .min_idle(Some(1))
                .connection_timeout(CHECKOUT_TIMEOUT)
                .build(manager)
        })
        .map_err(|e| StoreError::Postgres { url: url.masked.clone(), source: e.into() })?;
        let mut byte = [0u8; 1];
        // A shard is a spread, not a secret: a failing system RNG just means shard 0.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
        let shard = i16::from(byte[0] % SHARDS);
        Ok(PgStore {
            masked: url.masked.as_str().into(),
            _closer: Arc::new(Closer(Some(pool.clone()))),
            pool,
            feed: Default::default(),
            shard,
        })
    }

    /// The URL, its password masked (for messages).
    pub fn masked_url(&self) -> &str {
        &self.masked
    }

    /// Answers whether PostgreSQL answers a query now (within the pool's checkout timeout).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.simple_query("SELECT 1").map(|_| ()))
    }

    /// This replica's shard of the roll-up rows.
    pub fn shard(&self) -> i16 {
        self.shard
    }

    /// The feed of changes this process commits (every clone shares it).
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// `failure` as a [`StoreError`] naming this store's (masked) URL.
    pub fn error(&self, failure: impl Into<PgFailure>) -> StoreError {
        StoreError::Postgres { url: self.masked.to_string(), source: failure.into() }
    }

    /// Runs `call` on a pooled connection (see the module header for how it steps aside from
    /// an async runtime).
    pub fn with<T>(
        &self,
        call: impl FnOnce(&mut Conn) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, StoreError>
    where
        T: Send,
    {
        run(|| {
            let mut conn = self.pool.get().map_err(|e| self.error(e))?;
            call(&mut conn).map_err(|e| self.error(e))
        })
    }

    /// The text of the one column `sql` selects with its one parameter `key`, if a row matches
    /// (a record by its key).
    pub fn text_by_key(&self, sql: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| c.query_opt(sql, &[&key])?.map(|row| row.try_get(0)).transpose())
    }

    /// The `(key, text)` pairs of the two columns `sql` selects with `params` (records with
    /// their keys).
    pub fn keyed_texts(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|c| {
            c.query(sql, params)?.into_iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
        })
    }

    /// Runs `body` in a transaction and commits it; a transaction PostgreSQL cancelled for a
    /// conflict runs again (module header). `body`'s own outcome `Err(E)` rolls back and is
    /// returned as `Ok(Err(E))`.
    pub fn transaction<T, E>(
        &self,
        body: impl Fn(&mut postgres::Transaction<'_>) -> Result<Result<T, E>, postgres::Error> + Send + Sync,
    ) -> Result<Result<T, E>, StoreError>
    where
        T: Send,
        E: Send,
    {
        run(|| {
            let mut conn = self.pool.get().map_err(|e| self.error(e))?;
            let mut attempt = 1;
            loop {
                let outcome = conn.transaction().and_then(|mut tx| match body(&mut tx)? {
                    Ok(value) => tx.commit().map(|()| Ok(value)),
                    Err(refused) => tx.rollback().map(|()| Err(refused)),
                });
                match outcome {
                    Err(e) if attempt < ATTEMPTS && is_conflict(&e) => {
                        tracing::debug!(attempt, error = %super::cause(&e), "PostgreSQL transaction conflicted: again");
                        std::thread::sleep(Duration::from_millis(2 << attempt));
                        attempt += 1;
                    }
                    other => return other.map_err(|e| self.error(e)),
                }
            }
        })
    }

    /// [`PgStore::transaction`] for a write an engine may make only under its lease: `fence`'s
    /// check ([`Fence::check`]) runs first in the same transaction, and a refusal rolls back as
    /// `Ok(Err(StoreError::Fenced))`. `None`: an operator's write, not fenced.
    pub fn fenced<T, E>(
        &self,
        fence: Option<&Fence>,
        body: impl Fn(&mut postgres::Transaction<'_>) -> Result<Result<T, E>, postgres::Error> + Send + Sync,
    ) -> Result<Result<T, E>, StoreError>
    where
        T: Send,
        E: From<StoreError> + Send,
    {
        self.transaction(|tx| {
            if let Some(fence) = fence
                && let Err(refused) = fence.check(tx)?
            {
                return Ok(Err(refused.into()));
            }
            body(tx)
        })
    }

    /// Runs `sql` (statements separated by `;`) as is: for tests that shape a database as an
    /// older coordinator left it.
    #[cfg(test)]
    pub fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        self.with(|c| c.batch_execute(sql))
    }
}

fn is_conflict(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// An engine's right to write: the engine's lease, the term this replica holds it in and until
/// when (this process's clock), shared with the replica's lease keeper, which sets them at each
/// acquisition and renewal. The engine acts only while [`Fence::term`] is above 0 — it turns 0 by
/// itself at the deadline, whether or not the keeper has run since — and every write its
/// repository makes on PostgreSQL runs [`Fence::check`] first, in the same transaction.
#[derive(Debug, Clone)]
pub struct Fence {
    engine: &'static str,
    held: Arc<std::sync::Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    term: i64,
    until: Option<std::time::Instant>,
}

impl Fence {
    /// A fence on `engine`'s lease, not held yet.
    pub fn new(engine: &'static str) -> Fence {
        Fence { engine, held: Default::default() }
    }

    /// The engine whose lease this is.
    pub fn engine(&self) -> &'static str {
        self.engine
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This replica holds the lease in `term` until `until`.
    pub fn hold(&self, term: i64, until: std::time::Instant) {
        *self.held() = Held { term, until: Some(until) };
    }

    /// This replica no longer holds the lease.
    pub fn release(&self) {
        *self.held() = Held::default();
    }

    /// The term this replica holds the lease in; 0 when it does not, or its deadline passed.
    pub fn term(&self) -> i64 {
        let held = self.held();
        match held.until {
            Some(until) if std::time::Instant::now() < until => held.term,
            _ => 0,
        }
    }

    /// The term last held, deadline or not (what a release names).
    pub fn last_term(&self) -> i64 {
        self.held().term
    }

    /// Inside `tx`, before its writes: the lease row is read `FOR SHARE` (a takeover, which must
    /// update it, waits for this transaction) and must still be in this replica's term;
    /// otherwise the write is refused, [`StoreError::Fenced`] — roll back.
    pub fn check(
        &self,
        tx: &mut postgres::Transaction<'_>,
    ) -> Result<Result<(), StoreError>, postgres::Error> {
        let mine = self.term();
        let current: Option<i64> = tx
            .query_opt("SELECT term FROM outpost_leases WHERE engine = $1 FOR SHARE", &[&self.engine])?
            .map(|row| row.try_get(0))
            .transpose()?;
        if mine > 0 && current == Some(mine) {
            return Ok(Ok(()));
        }
        tracing::warn!(
            engine = self.engine,
            mine,
            ?current,
            "an engine write of a term that is over was refused"
        );
        Ok(Err(StoreError::Fenced(super::lease::Fenced::Deposed {
            engine: self.engine.to_owned(),
            mine,
            current,
        })))
    }
}

/// Runs blocking `f` where the blocking client may enter its own runtime (module header).
pub(crate) fn run<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        Ok(_) => {
            std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }
        Err(_) => f(),
    }
}

/// A device's seq (any `u64`) as a `bigint` that sorts the same: `seq − 2⁶³`. SQL reading the
/// table adds `9223372036854775808::numeric` back.
pub fn seq_to_sql(seq: u64) -> i64 {
    (seq ^ (1 << 63)) as i64
}

/// The inverse of [`seq_to_sql`].
pub fn seq_from_sql(stored: i64) -> u64 {
    (stored as u64) ^ (1 << 63)
}

/// A time in ms since the epoch (or any other count a `bigint` holds) as one; a value past
/// `i64::MAX` (not a time anyone sends) is held at it.
pub fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Databases of their own for unit tests, on the PostgreSQL `TEST_POSTGRES_URL` names
/// (default the machine's `postgres://postgres@127.0.0.1:5432/postgres`).
#[cfg(test)]
pub mod testing {
    use std::sync::atomic::{AtomicU32, Ordering};

    use postgres::NoTls;

    use super::*;

    /// Runs each named behaviour `fn(open)` once with `open` = the test module's `$sled`
    /// function and once with its `$postgres` one (`on_sled::…`, `on_postgres::…`): each opens
    /// a fresh repository on its backend.
    macro_rules! on_both_backends {
        ($sled:ident, $postgres:ident; $($name:ident),* $(,)?) => {
            mod on_sled {
                $(#[test] fn $name() { super::$name(super::$sled); })*
            }
            mod on_postgres {
                $(#[test] fn $name() { super::$name(super::$postgres); })*
            }
        };
    }
    pub(crate) use on_both_backends;

    /// What keeps a repository's store alive through a test, on either backend.
    #[allow(dead_code, clippy::large_enum_variant)]
    pub enum Backing {
        Sled(tempfile::TempDir, crate::base::store::Store),
        Postgres(TestDatabase),
    }

    /// The server the tests make their databases on.
    pub fn admin_url() -> String {
        std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// A database name no other test of this process uses (`.ci/run` drops leftovers named
    /// `outpost_test_*` that a failed run left).
    pub fn database_name() -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!("outpost_test_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
    }

    /// The URL of database `name` on the test server.
    pub fn url_of(name: &str) -> PgUrl {
        let base = admin_url();
        PgUrl::parse(&format!("{}/{name}", &base[..base.rfind('/').unwrap_or(base.len())]))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Takes `engine`'s lease for `holder` with SQL, as the lease keeper would (its term goes up
    /// by one at each taking); returns the term.
    pub fn take_lease(store: &PgStore, engine: &str, holder: &str) -> i64 {
        store
            .with(|c| {
                c.query_one(
                    "INSERT INTO outpost_leases (engine, holder, term, expires_at)
                     VALUES ($1, $2, 1, now() + interval '15 s')
                     ON CONFLICT (engine) DO UPDATE SET holder = excluded.holder,
                       term = outpost_leases.term + 1, expires_at = excluded.expires_at
                     RETURNING term",
                    &[&engine, &holder],
                )?
                .try_get(0)
            })
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A deadline far enough away for a test's fence.
    pub fn later() -> std::time::Instant {
        std::time::Instant::now() + Duration::from_secs(600)
    }

    /// A fresh database at the newest schema, dropped (connections and all) when this is.
    pub struct TestDatabase {
        pub name: String,
        pub url: PgUrl,
    }

    impl TestDatabase {
        #[allow(clippy::new_without_default)]
        pub fn new() -> TestDatabase {
            let name = database_name();
            run(|| {
                let mut admin = postgres::Client::connect(&admin_url(), NoTls)
                    .unwrap_or_else(|e| panic!("the test PostgreSQL must be running: {e}"));
                // Commits not waiting for the disk: what a test asserts is the same, each
                // transaction a few milliseconds faster (the benchmarks keep the server's default).
                for sql in [
                    format!("CREATE DATABASE {name}"),
                    format!("ALTER DATABASE {name} SET synchronous_commit = off"),
                ] {
                    admin.batch_execute(&sql).unwrap_or_else(|e| panic!("{e}"));
                }
            });
            let url = url_of(&name);
            run(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"));
                rt.block_on(async {
                    let mut client = url.connect("outpost-test").await.unwrap_or_else(|e| panic!("{e}"));
                    super::super::migrate(&url, &mut client, "test").await.unwrap_or_else(|e| panic!("{e}"));
                });
            });
            TestDatabase { name, url }
        }

        /// Drops the database now, cutting every connection to it: a store that was on it can
        /// no longer be read.
        pub fn drop_now(&self) {
            let name = self.name.clone();
            run(move || {
                let mut admin =
                    postgres::Client::connect(&admin_url(), NoTls).unwrap_or_else(|e| panic!("{e}"));
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .unwrap_or_else(|e| panic!("{e}"));
            });
        }

        /// A store on this database (each call its own pool: another replica).
        pub fn store(&self) -> PgStore {
            PgStore::open(&self.url, "outpost-test").unwrap_or_else(|e| panic!("{e}"))
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let name = self.name.clone();
            run(move || {
                if let Ok(mut admin) = postgres::Client::connect(&admin_url(), NoTls) {
                    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_keep_their_order_over_the_whole_range() {
        let seqs = [0, 1, 2, 1 << 40, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];
        for pair in seqs.windows(2) {
            assert!(seq_to_sql(pair[0]) < seq_to_sql(pair[1]), "{pair:?}");
        }
        for seq in seqs {
            assert_eq!(seq_from_sql(seq_to_sql(seq)), seq);
        }
    }
}
