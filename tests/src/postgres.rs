//! The machine's real PostgreSQL for end-to-end tests (`TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`): a database of each test's own, made and
//! dropped with `psql`.

use std::process::Command;

pub fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Runs SQL through `psql` against `url`; returns its unaligned output.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql").args([url, "-v", "ON_ERROR_STOP=1", "-Atc", sql]).output().expect("psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A database of this test's own, dropped at the end (`.ci/run` drops what a failed run left).
pub struct Database {
    pub name: String,
    /// With a password in it: the server's (when it asks for one) or `hunter2` (trust
    /// authentication ignores it), so the tests see that it is never shown.
    pub url: String,
    pub password: String,
}

impl Database {
    pub fn new(tag: &str) -> Database {
        let name = format!("outpost_test_{tag}_{}", std::process::id());
        psql(&admin_url(), &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&admin_url(), &format!("CREATE DATABASE {name}"));
        let base = admin_url();
        let (scheme, rest) = base.split_once("://").unwrap();
        let (user, host) = rest.split_once('@').expect("TEST_POSTGRES_URL names a user");
        let (user, password) = user.split_once(':').unwrap_or((user, "hunter2"));
        let host = &host[..host.find('/').unwrap_or(host.len())];
        let url = format!("{scheme}://{user}:{password}@{host}/{name}");
        Database { name, url, password: password.to_owned() }
    }

    /// The answer to `sql` in this database.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&admin_url(), "-qc", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .output();
    }
}
