//! `[store] url = "postgres://…"` at start: the real coordinator binary against the machine's
//! real PostgreSQL (`TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`;
//! each test makes a database of its own with `psql`). A URL that is malformed, off this host or
//! unreachable stops the start with its password masked and the cause; replicas starting
//! together apply the schema once; a newer schema is refused naming both versions; and a
//! coordinator on PostgreSQL without an external broker (its replicas could not share the
//! devices) refuses to serve, saying so, before it writes anything to its data directory.
//! Replicas serving together: `tests/replicas.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use outpost_tests::postgres::{Database, psql};
use outpost_tests::{bin_dir, refused_exit};

/// Starts `outpost-coordinator serve` on `store_url` with a data directory under `dir` that must
/// not exist yet.
fn start(dir: &std::path::Path, store_url: &str) -> std::process::Child {
    Command::new(bin_dir().join("outpost-coordinator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--broker-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("OUTPOST_COORDINATOR_STORE__URL", store_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn refused(store_url: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, err) =
        refused_exit(start(&data, store_url), Duration::from_secs(30), "the start must be refused");
    assert!(!data.exists(), "a refused start wrote its data directory: {err}");
    assert!(!err.contains("hunter2"), "the password is shown: {err}");
    (code, err)
}

#[test]
fn a_store_url_that_is_malformed_off_this_host_or_unreachable_stops_the_start_with_its_password_masked() {
    let (code, err) = refused("mysql://outpost:hunter2@127.0.0.1/outpost");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("store.url") && err.contains("mysql://outpost:***@127.0.0.1/outpost"), "{err}");

    let (code, err) = refused("postgres://outpost:hunter2@127.0.0.1:5432");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("names no database"), "{err}");

    let (code, err) = refused("postgres://outpost:hunter2@db.example.com/outpost");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("postgres://outpost:***@db.example.com/outpost") && err.contains("TLS"), "{err}");

    // Nothing listens on this port: the server is down, not the configuration wrong (exit 1).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, err) = refused(&format!("postgres://outpost:hunter2@127.0.0.1:{port}/outpost"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach PostgreSQL at `postgres://outpost:***@127.0.0.1:{port}/outpost`"
        )),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connection refused"), "the cause is named: {err}");
}

#[test]
fn three_coordinators_starting_together_apply_the_schema_once_and_refuse_the_embedded_broker() {
    let db = Database::new("three");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let children: Vec<_> = dirs.iter().map(|d| start(&d.path().join("data"), &db.url)).collect();
    let mut migrating = 0;
    for (child, dir) in children.into_iter().zip(&dirs) {
        let (code, err) = refused_exit(child, Duration::from_secs(30), "a PostgreSQL start must be refused");
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("the records are in PostgreSQL") && err.contains("set broker.url"), "{err}");
        assert!(!dir.path().join("data").exists(), "nothing written: {err}");
        assert!(!err.contains(&db.password), "the password is shown: {err}");
        assert!(err.contains(":***@"), "the URL is shown masked: {err}");
        let applied = err.matches("applied a schema migration").count();
        if applied > 0 {
            assert_eq!(applied, 13, "migrations 1 to 13: {err}");
            migrating += 1;
        }
    }
    assert_eq!(migrating, 1, "one replica applied the migrations");
    assert_eq!(
        psql(&db.url, "SELECT string_agg(version || '|' || name, ',' ORDER BY version) FROM outpost_schema"),
        "1|cluster,2|devices,3|api_tokens,4|engines,5|traffic,6|labels,7|monitoring,8|sessions,9|audit,10|fleet_state,11|registry,12|rollouts,13|follow"
    );
    // The tables of both are there.
    assert_eq!(psql(&db.url, "SELECT count(*) FROM outpost_leases"), "0");
    assert_eq!(psql(&db.url, "SELECT count(*) FROM outpost_envelopes"), "0");
}

#[test]
fn a_database_with_a_newer_schema_is_refused_naming_both_versions_and_left_as_it_was() {
    let db = Database::new("newer");
    psql(
        &db.url,
        "CREATE TABLE outpost_schema (version integer PRIMARY KEY, name text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL); \
         INSERT INTO outpost_schema (version, name, applied_by) VALUES (9999, 'from-the-future', 'a newer coordinator')",
    );
    let (code, err) = refused(&db.url);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains(&db.password), "the password is shown: {err}");
    let known = outpost_coordinator::base::pg::latest_schema();
    assert!(
        err.contains(&format!("holds schema version 9999, newer than this coordinator knows ({known})")),
        "{err}"
    );
    assert_eq!(psql(&db.url, "SELECT string_agg(version::text, ',') FROM outpost_schema"), "9999");
    assert_eq!(psql(&db.url, "SELECT count(*) FROM pg_tables WHERE tablename = 'outpost_leases'"), "0");
}
