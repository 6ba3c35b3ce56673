//! Unit tests of the PostgreSQL store's URL, schema and leases. All but the URL tests run
//! against a real PostgreSQL (`TEST_POSTGRES_URL`, default the machine's
//! `postgres://postgres@127.0.0.1:5432/postgres`), each in a database of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use super::lease::{self, Fenced};
use super::store::testing::{admin_url, database_name, url_of};
use super::*;

/// A database made for one test, dropped by [`TestDb::finish`] (a failed test leaves it;
/// `.ci/run` drops leftovers named `outpost_test_*` before it starts).
struct TestDb {
    admin: PgUrl,
    name: String,
    url: PgUrl,
}

async fn fresh_db() -> TestDb {
    let admin = PgUrl::parse(&admin_url()).expect("TEST_POSTGRES_URL");
    let name = database_name();
    let client = admin.connect("outpost-test").await.expect("the test PostgreSQL must be running");
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    TestDb { admin, url: url_of(&name), name }
}

impl TestDb {
    async fn finish(self) {
        let client = self.admin.connect("outpost-test").await.unwrap();
        client.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name)).await.unwrap();
    }
}

#[test]
fn mask_hides_the_password_in_the_user_part_and_in_parameters() {
    assert_eq!(
        mask("postgres://outpost:s3cr%40t@db.local:5432/outpost"),
        "postgres://outpost:***@db.local:5432/outpost"
    );
    assert_eq!(
        mask("postgresql://u@127.0.0.1/o?sslmode=disable&password=hunter2"),
        "postgresql://u@127.0.0.1/o?sslmode=disable&password=***"
    );
    assert_eq!(mask("postgres://u@h/d"), "postgres://u@h/d");
    // An '@' inside the password: everything up to the last one is the user part.
    assert_eq!(mask("postgres://u:p@ss@h/d"), "postgres://u:***@h/d");
}

#[test]
fn parse_refuses_what_is_not_a_local_postgres_url_and_never_shows_the_password() {
    let refused = |url: &str| {
        let e = PgUrl::parse(url).expect_err(url);
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(e.is_configuration(), "{text}");
        text
    };
    assert!(refused("mysql://u:hunter2@127.0.0.1/o").contains("must start with postgres://"));
    assert!(refused("postgres://u:hunter2@127.0.0.1").contains("names no database"));
    assert!(refused("postgres://u:hunter2@127.0.0.1:notaport/o").contains("port"));
    let remote = refused("postgres://u:hunter2@db.example.com/o");
    assert!(
        remote.contains("`db.example.com` is not on this machine") && remote.contains("u:***@"),
        "{remote}"
    );
    assert!(refused("postgres://u:hunter2@10.1.2.3/o").contains("not on this machine"));
    assert!(refused("postgres://u:hunter2@localhost/o?hostaddr=10.1.2.3").contains("hostaddr"));
    assert!(refused("postgres://u:hunter2@127.0.0.1/o?sslmode=require").contains("store.ca_file"));
    for ok in [
        "postgres://u:hunter2@127.0.0.1:5432/o",
        "postgresql://u@localhost/o",
        "postgres://u@[::1]:5433/o",
        "postgres://u@%2Fvar%2Frun%2Fpostgresql/o",
    ] {
        let url = PgUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert!(!format!("{url} {url:?}").contains("hunter2"));
    }
}

/// The certificate the machine's PostgreSQL presents (Debian's `ssl = on` with the snakeoil
/// certificate) and the host name it carries, or `None` where its TLS is off.
fn server_certificate() -> Option<(Vec<u8>, String)> {
    let admin = admin_url();
    let shown = |setting: &str| {
        let out = std::process::Command::new("psql")
            .args([admin.as_str(), "-Atc", &format!("SHOW {setting}")])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    if shown("ssl")? != "on" {
        assert!(std::env::var_os("CI").is_none(), "CI: the machine's PostgreSQL must have ssl = on");
        eprintln!("skipped: the machine's PostgreSQL has ssl = off");
        return None;
    }
    let pem = std::fs::read(shown("ssl_cert_file")?).ok()?;
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&pem)?;
            child.wait_with_output()
        })
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let name = text.split("DNS:").nth(1)?.split([',', '\n']).next()?.trim().to_owned();
    Some((pem, name))
}

/// TLS to PostgreSQL: the URL names the host the certificate carries and dials the loopback
/// address (`hostaddr`), which counts as off this host without the CA; with the CA every
/// connection is TLS (the server says so), and a CA that did not sign the server's certificate
/// fails the handshake, naming the cause.
#[tokio::test]
async fn connects_over_tls_verifying_the_server_certificate_and_refuses_another_ca() {
    let Some((pem, name)) = server_certificate() else { return };
    let admin = admin_url();
    let (scheme_user, rest) = admin.split_once('@').unwrap();
    let db = &rest[rest.rfind('/').unwrap()..];
    let port = rest.split(['/', ':']).nth(1).filter(|p| p.parse::<u16>().is_ok()).unwrap_or("5432");
    let url = format!("{scheme_user}@{name}:{port}{db}?hostaddr=10.255.255.1");
    let refused = PgUrl::parse(&url).expect_err("a server off this host without a CA").to_string();
    assert!(refused.contains("store.ca_file"), "{refused}");
    let url = format!("{scheme_user}@{name}:{port}{db}?hostaddr=127.0.0.1");
    let tls = PgUrl::parse_with_ca(&url, Some(&pem)).unwrap();
    assert!(tls.is_tls());
    let client = tls.connect("outpost-test").await.unwrap();
    let ssl: bool = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the connection is TLS");
    // The blocking pool too.
    let store = tokio::task::spawn_blocking({
        let tls = tls.clone();
        move || {
            let store = store::PgStore::open(&tls, "outpost-test").unwrap();
            store.ping().unwrap();
        }
    });
    store.await.unwrap();
    let other = rcgen::generate_simple_self_signed(vec![name.clone()]).unwrap().cert.pem();
    let wrong = PgUrl::parse_with_ca(&url, Some(other.as_bytes())).unwrap();
    let e = wrong.connect("outpost-test").await.expect_err("another CA");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert!(PgUrl::parse_with_ca(&url, Some(b"not a certificate")).is_err());
}

#[tokio::test]
async fn an_unreachable_server_is_named_with_its_password_masked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = PgUrl::parse(&format!("postgres://u:hunter2@127.0.0.1:{port}/o")).unwrap();
    let e = url.connect("outpost-test").await.expect_err("nothing listens there");
    let text = e.to_string();
    assert!(matches!(e, PgError::Unreachable { .. }) && !e.is_configuration(), "{text}");
    assert!(text.contains(&format!("u:***@127.0.0.1:{port}/o")) && !text.contains("hunter2"), "{text}");
    assert!(text.to_lowercase().contains("refused"), "the cause is named: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let db = fresh_db().await;
    let mut runs = Vec::new();
    for i in 0..5 {
        let url = db.url.clone();
        runs.push(tokio::spawn(async move {
            let mut client = url.connect("outpost-test").await.unwrap();
            migrate(&url, &mut client, &format!("replica-{i}")).await.unwrap()
        }));
    }
    let mut applied = Vec::new();
    for run in runs {
        let migrated = run.await.unwrap();
        if !migrated.applied.is_empty() {
            applied.push(migrated.applied);
        }
    }
    let every: Vec<i32> = MIGRATIONS.iter().map(|(v, _, _)| *v).collect();
    assert_eq!(applied, [every], "exactly one replica applied the migrations, all of them");
    let client = db.url.connect("outpost-test").await.unwrap();
    let rows = client.query("SELECT version FROM outpost_schema", &[]).await.unwrap();
    assert_eq!(rows.len(), MIGRATIONS.len());
    // The schema it made is there and usable.
    lease::heartbeat(&client, "r", "0.0.0", 1).await.unwrap();
    drop(client);
    db.finish().await;
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused_naming_both_versions_and_left_alone() {
    let db = fresh_db().await;
    let mut client = db.url.connect("outpost-test").await.unwrap();
    migrate(&db.url, &mut client, "old").await.unwrap();
    client
        .execute("INSERT INTO outpost_schema (version, name, applied_by) VALUES (999, 'future', 'new')", &[])
        .await
        .unwrap();
    let e = migrate(&db.url, &mut client, "me").await.expect_err("newer schema");
    let binary = latest_schema();
    assert!(matches!(e, PgError::SchemaNewer { database: 999, binary: b, .. } if b == binary), "{e}");
    assert!(
        e.to_string().contains("schema version 999") && e.to_string().contains(&format!("({binary})")),
        "{e}"
    );
    let n: i64 = client.query_one("SELECT count(*) FROM outpost_schema", &[]).await.unwrap().get(0);
    assert_eq!(n, MIGRATIONS.len() as i64 + 1, "nothing applied or removed");
    // The lock was released: another migrate gets the same answer instead of hanging.
    let e = tokio::time::timeout(Duration::from_secs(10), migrate(&db.url, &mut client, "me")).await.unwrap();
    assert!(e.is_err());
    drop(client);
    db.finish().await;
}

#[tokio::test]
async fn a_migration_waits_for_no_one_but_refuses_while_an_older_replica_runs() {
    let db = fresh_db().await;
    let mut client = db.url.connect("outpost-test").await.unwrap();
    migrate_to(&db.url, &mut client, "v1", &MIGRATIONS[..1]).await.unwrap();
    let next: [(i32, &str, &str); 2] = [MIGRATIONS[0], (2, "next", "CREATE TABLE outpost_next (id int)")];
    // A replica of the version that knows schema 1 is running (fresh heartbeat).
    lease::heartbeat(&client, "old-replica", "0.1.0", 1).await.unwrap();
    let e = migrate_to(&db.url, &mut client, "v2", &next).await.expect_err("an older replica runs");
    assert!(
        matches!(&e, PgError::OlderReplicaRunning { replica, known: 1, database: 1, binary: 2, .. } if replica == "old-replica"),
        "{e}"
    );
    // Once its heartbeat is older than the TTL, it counts as stopped and the migration runs.
    client
        .execute("UPDATE outpost_replicas SET heartbeat_at = now() - interval '1 minute'", &[])
        .await
        .unwrap();
    let migrated = migrate_to(&db.url, &mut client, "v2", &next).await.unwrap();
    assert_eq!(migrated, Migrated { from: 1, applied: vec![2] });
    client.execute("INSERT INTO outpost_next VALUES (1)", &[]).await.unwrap();
    drop(client);
    db.finish().await;
}

async fn migrated(db: &TestDb) -> Client {
    let mut client = db.url.connect("outpost-test").await.unwrap();
    migrate(&db.url, &mut client, "test").await.unwrap();
    client
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_new_term_at_each_takeover() {
    let db = fresh_db().await;
    let mut a = migrated(&db).await;
    let b = db.url.connect("outpost-test").await.unwrap();
    let ttl = Duration::from_millis(400);
    assert_eq!(lease::try_acquire(&a, "rollouts", "a", ttl).await.unwrap(), Some(1));
    assert_eq!(lease::try_acquire(&b, "rollouts", "b", ttl).await.unwrap(), None, "a's lease runs");
    assert!(lease::renew(&a, "rollouts", "a", 1, ttl).await.unwrap());
    assert_eq!(lease::try_acquire(&a, "rollouts", "a", ttl).await.unwrap(), Some(1), "still a's: same term");
    // Other engines have leases of their own.
    assert_eq!(lease::try_acquire(&b, "alerts", "b", ttl).await.unwrap(), Some(1));
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(lease::try_acquire(&b, "rollouts", "b", ttl).await.unwrap(), Some(2), "expired: b takes it");
    assert!(!lease::renew(&a, "rollouts", "a", 1, ttl).await.unwrap(), "a's term is over");
    let tx = a.transaction().await.unwrap();
    let e = lease::fence(&tx, "rollouts", 1).await.expect_err("deposed");
    assert!(matches!(e, Fenced::Deposed { mine: 1, current: Some(2), .. }), "{e}");
    drop(tx);
    // b gives it up at shutdown: a takes it at once, in term 3.
    assert!(lease::release(&b, "rollouts", "b", 2).await.unwrap());
    assert_eq!(lease::try_acquire(&a, "rollouts", "a", ttl).await.unwrap(), Some(3));
    drop((a, b));
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_for_a_free_lease_elect_one() {
    let db = fresh_db().await;
    drop(migrated(&db).await);
    let mut racers = Vec::new();
    for i in 0..10 {
        let url = db.url.clone();
        racers.push(tokio::spawn(async move {
            let client = url.connect("outpost-test").await.unwrap();
            lease::try_acquire(&client, "retention", &format!("r{i}"), lease::DEFAULT_TTL).await.unwrap()
        }));
    }
    let mut won = Vec::new();
    for racer in racers {
        won.extend(racer.await.unwrap());
    }
    assert_eq!(won, [1], "one winner, in term 1");
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_deposed_holders_fenced_write_and_its_next_write_fails() {
    let db = fresh_db().await;
    let mut a = migrated(&db).await;
    a.batch_execute("CREATE TABLE waves (wave int, term bigint)").await.unwrap();
    let ttl = Duration::from_millis(300);
    assert_eq!(lease::try_acquire(&a, "rollouts", "a", ttl).await.unwrap(), Some(1));
    // a fences a write, then stalls past its lease (a GC pause, a stopped VM) before it commits.
    let tx = a.transaction().await.unwrap();
    lease::fence(&tx, "rollouts", 1).await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let takeover = {
        let (url, order) = (db.url.clone(), Arc::clone(&order));
        tokio::spawn(async move {
            let b = url.connect("outpost-test").await.unwrap();
            let term = lease::try_acquire(&b, "rollouts", "b", Duration::from_secs(15)).await.unwrap();
            order.lock().unwrap().push("b took the lease");
            term
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.execute("INSERT INTO waves VALUES (1, 1)", &[]).await.unwrap();
    order.lock().unwrap().push("a committed wave 1");
    tx.commit().await.unwrap();
    assert_eq!(takeover.await.unwrap(), Some(2));
    assert_eq!(*order.lock().unwrap(), ["a committed wave 1", "b took the lease"], "the takeover waited");
    // a's next write, still believing in term 1, is refused and writes nothing.
    let tx = a.transaction().await.unwrap();
    assert!(matches!(lease::fence(&tx, "rollouts", 1).await, Err(Fenced::Deposed { current: Some(2), .. })));
    drop(tx);
    let n: i64 = a.query_one("SELECT count(*) FROM waves", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    drop(a);
    db.finish().await;
}

proptest::proptest! {
    /// Whatever the operator writes, masking and parsing never panic, and a password in the
    /// user part never survives masking.
    #[test]
    fn masking_and_parsing_any_url_never_panic_nor_show_the_password(
        junk in ".{0,80}",
        user in "[a-z][a-z0-9_]{0,8}",
        password in "PW_[A-Za-z0-9%!~*:]{1,16}",
        host in "(127\\.0\\.0\\.1|localhost|db\\.example\\.com|\\[::1\\])(:[0-9]{1,5})?",
        query in "(\\?[a-z_]{1,10}=[a-z0-9]{0,6}(&[a-z_]{1,10}=[a-z0-9]{0,6}){0,2})?",
    ) {
        let _ = mask(&junk);
        let _ = PgUrl::parse(&junk);
        let url = format!("postgres://{user}:{password}@{host}/outpost{query}");
        proptest::prop_assert!(!mask(&url).contains(&password), "{}", mask(&url));
        if let Err(e) = PgUrl::parse(&url) {
            proptest::prop_assert!(!e.to_string().contains(&password), "{e}");
        }
    }
}
