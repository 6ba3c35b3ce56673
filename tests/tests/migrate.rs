//! `outpost-coordinator migrate --from sled://… --to postgres://…`: a single-node coordinator on
//! sled — enrolled agents behind a real Mosquitto over mutual TLS, a registry, a finished
//! rollout, labelled traffic, SLOs, drift — is stopped and its state moved into the machine's
//! real PostgreSQL (a database of this test's own). Started again on PostgreSQL with the same
//! data directory (its keys) and broker, it shows the same registry, rollouts, devices, SLO
//! counts and quality; `audit verify` passes with the migration's own entry last; the agents
//! carry on without enrolling again, and a new deployment reaches them. Refused by name: a
//! coordinator still serving from the directory, a `--from` that is not `sled://`, and a target
//! that already holds records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use outpost_tests::fleet::{Coordinator, agents_carry_on, ok, run, with_a_finished_rollout};
use outpost_tests::mosquitto::Mosquitto;
use outpost_tests::postgres::Database;
use serde_json::Value;

/// Every device's id and its stored envelope count.
fn envelopes(c: &Coordinator) -> Vec<(String, u64)> {
    let devices = c.ctl_json(&["devices"]);
    let mut out: Vec<(String, u64)> = devices
        .as_array()
        .unwrap_or_else(|| panic!("{devices}"))
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_owned(), d["counts"]["envelopes"].as_u64().unwrap()))
        .collect();
    out.sort();
    out
}

/// The drift report of `bc` without the time it was asked at.
fn drift(c: &Coordinator) -> Value {
    let mut report = c.ctl_json(&["report", "drift", "--model", "bc", "--format", "json"]);
    report.as_object_mut().unwrap().remove("since_ms");
    report
}

fn migrate(from: &str, to: &str) -> (i32, String, String) {
    run("outpost-coordinator", &["migrate", "--from", from, "--to", to])
}

fn sled_url(data: &Path) -> String {
    format!("sled://{}", data.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sled_coordinator_moved_to_postgresql_keeps_its_state_and_its_agents_carry_on() {
    let db = Database::new("migrate");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    Coordinator::init(&data);
    let broker = Mosquitto::start_for_replicas(dir.path(), &data);
    let mut c = Coordinator::start_replica(&data, &broker.replicas_url(), &broker.url(), "sled", &[]);
    let (agents, _) = with_a_finished_rollout(&c, dir.path()).await;
    // Every agent's last report with traffic in it is stored before the counts are taken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let slo = ["slo", "set", "bc", "--availability", "99%", "--latency", "p95<200ms", "--accuracy", "50%"];
    ok(c.ctl(&[&slo[..], &["--window", "1d"]].concat()), "slo set");
    ok(c.ctl(&["token", "create", "dashboard-viewer", "--role", "viewer"]), "token create");

    // Refused while the coordinator serves from the directory: nothing is copied.
    let (code, _, err) = migrate(&sled_url(&data), &db.url);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("a coordinator is serving from"), "{err}");
    assert_eq!(
        db.query("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'outpost%'"),
        "0",
        "the target untouched"
    );

    // The agents frozen (a busy device), so what is stored stops moving; then the coordinator
    // stopped.
    for (agent, _) in &agents {
        agent.signal(Signal::SIGSTOP);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = c.slo_events("bc");
    assert!(events.len() == 3 && events.iter().all(|n| *n > 0), "requests and labels counted: {events:?}");
    let quality = c.ctl_json(&["model", "quality", "bc"]);
    let drift_before = drift(&c);
    assert!(drift_before["windows"].as_u64() > Some(0), "{drift_before:#}");
    let models = c.ctl_json(&["model", "list"]);
    let rollouts = c.ctl_json(&["rollout", "list"]);
    let tokens = c.ctl_json(&["token", "list"]);
    let audited = c.audit_entries();
    let stored = envelopes(&c);
    assert!(stored.len() == 2 && stored.iter().all(|(_, n)| *n > 0), "{stored:?}");
    c.stop(Signal::SIGTERM);

    let (code, _, err) = migrate(&data.display().to_string(), &db.url);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a sled://<data_dir> store"), "{err}");

    let (code, out, err) = migrate(&sled_url(&data), &db.url);
    assert_eq!(code, 0, "migrate: {out}{err}");
    assert!(out.contains("audit chain verified on PostgreSQL"), "{out}");
    assert!(!format!("{out}{err}").contains(&db.password), "the password is shown: {out}{err}");
    assert!(err.contains("→ outpost_envelopes") && err.contains("→ outpost_traffic_rollups"), "{err}");
    // Again: the target holds records now, and says which.
    let (code, _, err) = migrate(&sled_url(&data), &db.url);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already holds records") && err.contains("outpost_devices: 2"), "{err}");

    // The same data directory (its keys), the same broker, the store on PostgreSQL.
    let mut p = Coordinator::start_replica(&data, &broker.replicas_url(), &broker.url(), &db.url, &[]);
    let restarted_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!(p.ctl_json(&["model", "list"]), models, "the registry is intact");
    assert_eq!(p.ctl_json(&["rollout", "list"]), rollouts, "the rollouts are intact");
    assert_eq!(p.ctl_json(&["token", "list"]), tokens, "the API tokens are intact");
    assert_eq!(p.ctl_json(&["model", "quality", "bc"]), quality, "the labels and their roll-ups are intact");
    assert_eq!(envelopes(&p), stored, "every device's counts are there");
    let rows: u64 = db.query("SELECT count(*) FROM outpost_envelopes").parse().unwrap();
    assert_eq!(rows, stored.iter().map(|(_, n)| n).sum::<u64>(), "every stored envelope is there");
    assert_eq!(p.slo_events("bc"), events, "the traffic windows and their roll-ups are intact");
    assert_eq!(drift(&p), drift_before, "the drift history and its roll-ups are intact");
    // The chain verifies on PostgreSQL: what sled held, then the migration's entry.
    assert!(p.audit_entries() > audited);
    let tail = ok(p.ctl(&["audit", "list", "--limit", "200"]), "audit list");
    assert!(tail.contains("store.migrate"), "{tail}");

    // The agents carry on without enrolling again: they report, and a deployment reaches them.
    for (agent, _) in &agents {
        agent.signal(Signal::SIGCONT);
    }
    agents_carry_on(&p, &agents, restarted_ms).await;
    p.stop(Signal::SIGTERM);
}
