//! Disaster recovery: a coordinator with enrolled agents and a finished rollout is backed up while
//! it serves, its data directory is destroyed, and `restore` rebuilds it — the agents reconnect
//! without enrolling again, the registry, the rollout and the audit chain are intact, and a new
//! deployment (signed with the restored keys) reaches the devices; the SLO history is rolled up
//! again from the restored windows and labels. A wrong key, a damaged file and a directory that
//! is not empty are refused by name.
//!
//! The same on PostgreSQL: a replica's keys are backed up with the same command and the records
//! with `pg_dump`; the data directory destroyed and the database dropped, `pg_restore` and
//! `restore` bring them back, and the agents carry on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use outpost_tests::fleet::{Coordinator, agents_carry_on, ok, run, with_a_finished_rollout};
use outpost_tests::mosquitto::Mosquitto;
use outpost_tests::postgres::{Database, admin_url, psql};
use serde_json::Value;

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destroyed_coordinator_is_restored_from_its_backup_and_its_agents_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    let (mut c, _) = Coordinator::start_embedded(&data);
    let (agents, finished) = with_a_finished_rollout(&c, dir.path()).await;
    let id = finished["id"].as_str().unwrap().to_owned();
    let slo = ["slo", "set", "bc", "--availability", "99%", "--latency", "p95<200ms", "--accuracy", "50%"];
    ok(c.ctl(&[&slo[..], &["--window", "1d"]].concat()), "slo set");
    let events = c.slo_events("bc");
    assert!(events.len() == 3 && events.iter().all(|n| *n > 0), "requests and labels counted: {events:?}");

    // The backup, taken while the coordinator serves (it holds the database: the command asks
    // it over the API). The key file is made on the way, owner-only.
    let backup = dir.path().join("outpost.opbackup");
    let key_file = dir.path().join("backup.key");
    let key_arg = format!("file:{}", key_file.display());
    let (code, out, err) = backup_over_api(&backup, &key_arg, &data, &c.url(), &[]);
    assert_eq!(code, 0, "backup: {out}{err}");
    assert!(err.contains("a coordinator serves from"), "{err}");
    assert!(out.contains("backup written to"), "{out}");
    assert_eq!((mode(&backup), mode(&key_file)), (0o600, 0o600));
    let ca_key = std::fs::read(data.join("pki/ca.key")).unwrap();
    let raw = std::fs::read(&backup).unwrap();
    assert!(!raw.windows(ca_key.len()).any(|w| w == ca_key), "the CA key is in the backup in clear");
    let models = c.ctl_json(&["model", "list"]);
    let rollouts = c.ctl_json(&["rollout", "list"]);
    let audited = c.audit_entries();

    // The disk is lost.
    c.stop(Signal::SIGTERM);
    std::fs::remove_dir_all(&data).unwrap();

    // Refusals first: a wrong key (named), a damaged file, a directory that is not empty.
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, "ab".repeat(32)).unwrap();
    let restore = |file: &std::path::Path, key: &str, into: &std::path::Path| {
        run(
            "outpost-coordinator",
            &[
                "restore",
                "--from",
                file.to_str().unwrap(),
                "--key",
                key,
                "--data-dir",
                into.to_str().unwrap(),
            ],
        )
    };
    let (code, _, err) = restore(&backup, &format!("file:{}", other_key.display()), &data);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the backup was made with key"), "{err}");
    let mut damaged = raw.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    let damaged_file = dir.path().join("damaged.opbackup");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let (code, _, err) = restore(&damaged_file, &key_arg, &data);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not authenticate"), "{err}");
    assert!(!data.exists(), "a failed restore left {}", data.display());
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("something"), "x").unwrap();
    let (code, _, err) = restore(&backup, &key_arg, &busy);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not empty"), "{err}");

    let (code, out, err) = restore(&backup, &key_arg, &data);
    assert_eq!(code, 0, "restore: {out}{err}");
    assert!(out.contains("chain verified"), "{out}");

    // The coordinator starts on the restored directory, same ports: the agents reconnect with
    // the certificates they have, and report again.
    let restarted_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    c.resume();
    assert_eq!(c.ctl_json(&["model", "list"]), models, "the registry is intact");
    let after: Value = c.ctl_json(&["rollout", "list"]);
    assert_eq!(after, rollouts, "the rollouts are intact");
    assert_eq!(c.rollout_status(&id)["phase"], finished["phase"]);
    // The restored chain verifies, with at least what it held at the backup (and the restart's
    // own entries after it).
    assert!(c.audit_entries() >= audited);
    // The backup leaves the roll-ups' completeness out: the restored coordinator rolls up the
    // windows and labels it restored, and its SLO counts at least what it counted before.
    let log = c.log();
    assert!(log.contains("rolled up the stored traffic windows"), "{log}");
    assert!(log.contains("rolled up the stored labels"), "{log}");
    let restored = c.slo_events("bc");
    assert!(
        restored.iter().zip(&events).all(|(after, before)| after >= before),
        "{restored:?} vs {events:?}"
    );
    // The agents report again, and desired states signed with the restored keys are accepted.
    agents_carry_on(&c, &agents, restarted_ms).await;
}

/// `pg_dump`/`pg_restore` (`-Fc`) of `url`, as an operator would; fails the test unless it worked.
fn pg_tool(tool: &str, args: &[&str]) {
    let out = std::process::Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_on_postgresql_is_restored_from_its_keys_backup_and_a_database_dump() {
    let db = Database::new("restore");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("replica");
    Coordinator::init(&data);
    let broker = Mosquitto::start_for_replicas(dir.path(), &data);
    let mut c = Coordinator::start_replica(&data, &broker.replicas_url(), &broker.url(), &db.url, &[]);
    let (agents, finished) = with_a_finished_rollout(&c, dir.path()).await;
    let id = finished["id"].as_str().unwrap().to_owned();

    // The keys with the same command (the replica keeps no state database here), while it
    // serves; the records with pg_dump.
    let backup = dir.path().join("keys.opbackup");
    let key_arg = format!("file:{}", dir.path().join("backup.key").display());
    let (code, out, err) = backup_over_api(&backup, &key_arg, &data, &c.url(), &[]);
    assert_eq!(code, 0, "backup: {out}{err}");
    assert!(err.contains("the records are in PostgreSQL: back them up with pg_dump"), "{err}");
    let dump = dir.path().join("outpost.pgdump");
    pg_tool("pg_dump", &["--format=custom", "--file", dump.to_str().unwrap(), &db.url]);
    let models = c.ctl_json(&["model", "list"]);
    let rollouts = c.ctl_json(&["rollout", "list"]);
    let audited = c.audit_entries();

    // The host and the database are lost.
    c.stop(Signal::SIGTERM);
    std::fs::remove_dir_all(&data).unwrap();
    psql(&admin_url(), &format!("DROP DATABASE {} WITH (FORCE)", db.name));
    psql(&admin_url(), &format!("CREATE DATABASE {}", db.name));

    pg_tool("pg_restore", &["--dbname", &db.url, dump.to_str().unwrap()]);
    let (code, out, err) = run(
        "outpost-coordinator",
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--key",
            &key_arg,
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "restore: {out}{err}");
    assert!(!data.join("state").exists(), "the replica's directory got a state database");

    let restarted_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    c.resume();
    assert_eq!(c.ctl_json(&["model", "list"]), models, "the registry is intact");
    assert_eq!(c.ctl_json(&["rollout", "list"]), rollouts, "the rollouts are intact");
    assert_eq!(c.rollout_status(&id)["phase"], finished["phase"]);
    assert!(c.audit_entries() >= audited, "the chain verifies with what it held");
    // The agents reconnect with the certificates they hold (no enrolment), report, and take a
    // deployment signed with the restored keys.
    agents_carry_on(&c, &agents, restarted_ms).await;
    c.stop(Signal::SIGTERM);
}

/// This machine's address on its network (not loopback), if it has one: where another host
/// would reach the coordinator. No packet is sent to find it.
fn outside_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// The snapshot holds the fleet's keys, so even an admin token takes it only from the
/// coordinator's own host: the same admin, calling over the machine's network address, is
/// refused by name (403, audited, no file written), while the loopback call succeeds.
#[test]
fn a_backup_is_refused_to_an_admin_calling_from_another_address() {
    let Some(outside) = outside_address() else {
        assert!(std::env::var_os("CI").is_none(), "CI is set but this machine has no non-loopback address");
        eprintln!("SKIPPED: no non-loopback address on this machine");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    let (mut c, _) = Coordinator::start_embedded_tls(&data);
    // Serve on every interface (HTTPS, with the machine's address in the certificate).
    c.stop(Signal::SIGTERM);
    c.addr = std::net::SocketAddr::from(([0, 0, 0, 0], outpost_tests::fleet::free_port()));
    c.env.push(("OUTPOST_COORDINATOR_API__TLS_NAMES".into(), format!("[\"{outside}\"]")));
    c.env.push((
        "OUTPOST_COORDINATOR_API__ADVERTISED_URL".into(),
        format!("https://{outside}:{}", c.addr.port()),
    ));
    c.resume();
    let port = c.addr.port();
    let ca = c.ca_file();
    let key_arg = format!("file:{}", dir.path().join("backup.key").display());
    let backup = |url: &str, to: &std::path::Path| {
        backup_over_api(to, &key_arg, &data, url, &["--ca-file", ca.to_str().unwrap()])
    };

    let refused_file = dir.path().join("from-outside.opbackup");
    let (code, out, err) = backup(&format!("https://{outside}:{port}"), &refused_file);
    assert_ne!(code, 0, "a backup over the network address was served: {out}{err}");
    assert!(
        err.contains(&format!(
            "a backup is taken from the coordinator's own host (loopback), not from {outside}"
        )),
        "{err}"
    );
    assert!(!refused_file.exists(), "a refused backup left a file");
    let audit = ok(c.ctl(&["audit", "list"]), "audit list");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("backup.take") && l.contains("refused") && l.contains(&outside.to_string())),
        "the refusal is not audited:\n{audit}"
    );

    let taken = dir.path().join("from-loopback.opbackup");
    let (code, out, err) = backup(&format!("https://127.0.0.1:{port}"), &taken);
    assert_eq!(code, 0, "the loopback backup: {out}{err}");
    assert!(taken.is_file());
    c.audit_entries();
}

/// `outpost-coordinator backup --to TO --key KEY --data-dir DATA --coordinator URL [EXTRA…]`:
/// (exit code, stdout, stderr).
fn backup_over_api(
    to: &std::path::Path,
    key: &str,
    data: &std::path::Path,
    url: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let mut args = vec![
        "backup",
        "--to",
        to.to_str().unwrap(),
        "--key",
        key,
        "--data-dir",
        data.to_str().unwrap(),
        "--coordinator",
        url,
    ];
    args.extend_from_slice(extra);
    run("outpost-coordinator", &args)
}
