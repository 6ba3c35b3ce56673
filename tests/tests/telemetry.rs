//! Signed telemetry end to end: real coordinator, real agents, and a real broker that
//! requires client certificates — every test runs twice, against Mosquitto (with the topic
//! ACL from `deploy/`) and against the coordinator's embedded broker. Outages are real
//! (processes stopped and killed with signals); counts are checked exactly at the coordinator.
//!
//! The embedded broker lives in the coordinator's process, so for it "the broker is down"
//! means the coordinator is down too (stopped with SIGTERM; the coordinator-outage test uses
//! SIGKILL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use outpost_shared::protocol::messages::{self, AgentMessage, Event, EventKind};
use outpost_shared::protocol::{self, SigningKey};
use outpost_tests::against_both_brokers;
use outpost_tests::brokers::{Fleet, Kind, connected_agent, fleet, start_agent};
use outpost_tests::fleet::{enroll, metric, run};
use outpost_tests::{Agent, libfaketime, reference, rows};
use serde_json::{Value, json};

fn batch(n: usize) -> Value {
    let r = reference("breast_cancer-1.0.0");
    let (data, len) = rows(&r["inputs"][0]);
    let data: Vec<Value> = data.iter().cycle().take(n * len).cloned().collect();
    json!({"inputs": [{"name": "input", "shape": [n, 30], "datatype": "FP32", "data": data}]})
}

/// Serves `rows` predictions in batches of 50.
async fn serve_predictions(agent: &Agent, rows: usize) {
    let body = batch(50);
    for _ in 0..rows / 50 {
        let (status, answer) = agent.post_json("/v2/models/bc/infer", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
}

async fn outbox_messages(agent: &Agent) -> f64 {
    metric(&agent.metrics_text().await, "outpost_agent_outbox_messages")
}

/// Every stored envelope is a distinct seq from 1 up: stored count equals the highest seq.
fn assert_exactly_once(view: &Value) {
    let envelopes = view["counts"]["envelopes"].as_u64().unwrap();
    assert_eq!(Some(envelopes), view["highest_seq"].as_u64(), "a seq is missing: {view:#}");
}

/// After a SIGKILL: at most one seq is missing — the outbox marks a seq handed out before it
/// writes the entry, so a kill between the two skips that seq for good (never reuses it).
/// What the entry would have carried was not lost: the prediction cursor had not moved, so it
/// goes out under a later seq (callers check the prediction count).
fn assert_once_but_one_seq_skipped_by_a_kill(view: &Value) {
    let envelopes = view["counts"]["envelopes"].as_u64().unwrap();
    let highest = view["highest_seq"].as_u64().unwrap();
    assert!(envelopes <= highest && highest <= envelopes + 1, "seqs missing: {view:#}");
}

async fn wait_drained(
    agent: &Agent,
    fleet: &Fleet,
    device: &str,
    predictions: u64,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    while outbox_messages(agent).await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "outbox never drained:\n{}\ncoordinator:\n{}",
            agent.log(),
            fleet.coordinator.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet
        .coordinator
        .wait_device(device, timeout, |v| v["counts"]["predictions"].as_u64() >= Some(predictions))
        .await
}

async fn enrolment_works_once_and_strangers_cannot_connect(kind: Kind) {
    let fleet = fleet(kind);
    let token = fleet.coordinator.token("site=a,hw=x");
    let device = enroll(&fleet.dir.path().join("a"), &fleet.coordinator, &token).unwrap();
    let again = enroll(&fleet.dir.path().join("b"), &fleet.coordinator, &token).unwrap_err();
    assert!(again.contains("already used"), "{again}");
    let view = fleet.coordinator.device(&device).await;
    assert_eq!(view["labels"], json!({"site": "a", "hw": "x"}));
    for secret in ["identity/device.key", "identity/tls.key"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(fleet.dir.path().join("a").join(secret)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }

    // The broker takes the enrolled device's certificate, and no one without a certificate
    // from the fleet CA.
    let payload = fleet.dir.path().join("payload");
    std::fs::write(&payload, b"\x01garbage").unwrap();
    let identity = fleet.dir.path().join("a/identity");
    let ca = identity.join("broker-ca.pem");
    let topic = format!("outpost/v1/{device}/report");
    assert!(fleet.publish(
        &topic,
        &payload,
        Some((&identity.join("client.pem"), &identity.join("tls.key"))),
        &ca
    ));
    assert!(!fleet.publish(&topic, &payload, None, &ca), "a client without a certificate connected");
    let stranger = fleet.dir.path().join("stranger");
    let (code, _, err) = run(
        "outpost-coordinator",
        &[
            "cert",
            "client",
            "--name",
            "mallory",
            "--out-dir",
            stranger.to_str().unwrap(),
            "--data-dir",
            stranger.join("ca").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !fleet.publish(
            &topic,
            &payload,
            Some((&stranger.join("client.pem"), &stranger.join("client.key"))),
            &ca
        ),
        "a certificate from another CA was accepted"
    );
    // The garbage that did get through (from the enrolled device's own certificate) was
    // rejected and counted, not stored.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&fleet.coordinator.metrics().await, "outpost_coordinator_ingest_total{result=\"malformed\"}")
        < 1.0
    {
        assert!(Instant::now() < deadline, "{}", fleet.coordinator.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn broker_outage_loses_nothing_and_duplicates_nothing(kind: Kind) {
    let mut fleet = fleet(kind);
    let (_dir, device, agent) = connected_agent(&fleet).await;

    let down = Instant::now();
    fleet.stop_broker();
    serve_predictions(&agent, 5000).await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    assert!(outbox_messages(&agent).await > 0.0, "nothing waited in the outbox while the broker was down");
    fleet.resume_broker();

    let view = wait_drained(&agent, &fleet, &device, 5000, Duration::from_secs(60)).await;
    assert_eq!(view["counts"]["predictions"], 5000, "{view:#}");
    assert_exactly_once(&view);
    assert!(view["counts"]["reports"].as_u64().unwrap() >= 30, "{view:#}");
}

/// Mosquitto restarts without its sessions and the coordinator re-subscribes only after the
/// agent has sent, and resent, its backlog into a broker with no subscriber for it. New
/// reports are then acked as they come; the lost backlog must still be resent (it once was
/// not: any ack counted as progress, so the oldest message waited forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_lost_before_the_coordinator_resubscribes_is_resent() {
    let mut fleet = fleet(Kind::Mosquitto);
    let (dir, device) = fleet.enrolled_agent_dir("agent");
    // Reports every second, ack timeout 10 s: once the coordinator is back, acks for new
    // reports always come before the next resend would.
    let agent = start_agent(&dir, &[("OUTPOST_TELEMETRY__ACK_TIMEOUT_SECS", "10")]);
    agent.wait_ready(Duration::from_secs(30)).await;
    fleet
        .coordinator
        .wait_device(&device, Duration::from_secs(20), |v| v["counts"]["envelopes"].as_u64() > Some(0))
        .await;
    fleet.coordinator.stop(Signal::SIGTERM);
    fleet.stop_broker();
    serve_predictions(&agent, 2000).await;
    fleet.resume_broker();
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.log().matches("connected to broker").count() < 2 {
        assert!(Instant::now() < deadline, "the agent never reconnected:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past the ack timeout: the backlog went out at least twice with nobody listening.
    tokio::time::sleep(Duration::from_secs(12)).await;
    fleet.coordinator.resume();
    let view = wait_drained(&agent, &fleet, &device, 2000, Duration::from_secs(60)).await;
    assert_eq!(view["counts"]["predictions"], 2000, "{view:#}");
    assert_exactly_once(&view);
}

async fn agent_killed_while_draining_restarts_without_loss(kind: Kind) {
    let mut fleet = fleet(kind);
    let (dir, device) = fleet.enrolled_agent_dir("agent");
    // Small batches, one message in flight: draining takes a while, so the kill lands in it.
    let slow = [("OUTPOST_TELEMETRY__BATCH_MAX_RECORDS", "20"), ("OUTPOST_TELEMETRY__MAX_IN_FLIGHT", "1")];
    let mut agent = start_agent(&dir, &slow);
    agent.wait_ready(Duration::from_secs(30)).await;
    fleet.stop_broker();
    serve_predictions(&agent, 5000).await;
    // The reporter seals the served predictions into the outbox within a report interval.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backlog = outbox_messages(&agent).await;
    while backlog <= 100.0 {
        assert!(
            Instant::now() < deadline,
            "backlog {backlog} after 30 s:
{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        backlog = outbox_messages(&agent).await;
    }
    fleet.resume_broker();
    fleet
        .coordinator
        .wait_device(&device, Duration::from_secs(30), |v| v["counts"]["envelopes"].as_u64() > Some(5))
        .await;
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(10));
    let during = fleet.coordinator.device(&device).await;
    assert!(during["counts"]["predictions"].as_u64() < Some(5000), "drained before the kill: {during:#}");

    let agent = start_agent(&dir, &[]);
    agent.wait_ready(Duration::from_secs(30)).await;
    let view = wait_drained(&agent, &fleet, &device, 5000, Duration::from_secs(90)).await;
    assert_eq!(view["counts"]["predictions"], 5000, "{view:#}");
    assert_once_but_one_seq_skipped_by_a_kill(&view);
}

async fn coordinator_outage_loses_nothing(kind: Kind) {
    let mut fleet = fleet(kind);
    let (_dir, device, agent) = connected_agent(&fleet).await;

    let down = Instant::now();
    fleet.coordinator.stop(Signal::SIGKILL);
    serve_predictions(&agent, 5000).await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    // The broker took the messages (PUBACK) but no coordinator stored them: nothing is freed.
    assert!(outbox_messages(&agent).await > 0.0);
    fleet.coordinator.resume();

    let view = wait_drained(&agent, &fleet, &device, 5000, Duration::from_secs(60)).await;
    assert_eq!(view["counts"]["predictions"], 5000, "{view:#}");
    assert_exactly_once(&view);
}

/// Files and directories under `dir` (itself included) that a group or other user could read.
fn readable_by_others(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.permissions().mode() & 0o077 != 0 {
            found.push(format!("{} {:o}", path.display(), meta.permissions().mode() & 0o777));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    found
}

/// The finding (trust-boundaries and at-rest reviews): the agent's prediction log and outbox
/// (raw inputs), the coordinator's state and its `audit.log` were 0644 in 0755 directories.
/// Now both data directories are 0700 and everything in them 0600 / 0700, after enrolment,
/// serving, telemetry and a deployment-free day's work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_at_rest_is_readable_by_its_owner_only() {
    let fleet = fleet(Kind::Embedded);
    let (dir, device, agent) = connected_agent(&fleet).await;
    serve_predictions(&agent, 500).await;
    wait_drained(&agent, &fleet, &device, 500, Duration::from_secs(60)).await;
    let (code, _, err) = fleet.coordinator.ctl(&["token", "create", "ops", "--role", "operator"]);
    assert_eq!(code, 0, "{err}");
    for data in [dir.as_path(), fleet.coordinator.data_dir.as_path()] {
        let open = readable_by_others(data);
        assert!(open.is_empty(), "readable by others under {}:\n{}", data.display(), open.join("\n"));
    }
    assert!(fleet.coordinator.data_dir.join("audit.log").is_file());
}

/// The finding: with its data directory gone (a card failing, a volume pulled), the agent
/// logged "final telemetry report failed … No such file or directory" on SIGTERM and never
/// exited — sled waits forever on a flush inside a tree's drop. Now a watchdog ends the
/// process after `shutdown.close_timeout_secs` with exit 1, naming why; a supervisor can then
/// restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_storage_vanished_still_exits_on_sigterm() {
    let fleet = fleet(Kind::Embedded);
    let (dir, device) = fleet.enrolled_agent_dir("agent");
    let mut agent = start_agent(&dir, &[("OUTPOST_SHUTDOWN__CLOSE_TIMEOUT_SECS", "3")]);
    agent.wait_ready(Duration::from_secs(30)).await;
    serve_predictions(&agent, 500).await;
    fleet
        .coordinator
        .wait_device(&device, Duration::from_secs(20), |v| v["counts"]["envelopes"].as_u64() > Some(0))
        .await;
    std::fs::remove_dir_all(&dir).unwrap();
    // Served on with its files gone: the final report's batch is large enough that sled
    // writes it to a new file, which cannot be created.
    serve_predictions(&agent, 5000).await;
    agent.signal(Signal::SIGTERM);
    let started = Instant::now();
    let status = agent.wait_exit(Duration::from_secs(30));
    let log = agent.log();
    if log.contains("storage did not close in time") {
        assert_eq!(status.code(), Some(1), "{log}");
    } else {
        // sled happened to close without its files: a clean exit is fine too.
        assert!(status.code().is_some(), "{log}");
    }
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}

/// A worn card ruins the outbox's files while the agent is down: it starts anyway (the damaged
/// outbox moved to `quarantine/`, counted), serves, and its telemetry goes on with seqs above
/// every seq it used before — the coordinator stores them as new, not as replays — and the
/// coordinator hears what was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruined_outbox_is_quarantined_and_telemetry_goes_on_above_the_old_seqs() {
    let fleet = fleet(Kind::Embedded);
    let (dir, device, mut agent) = connected_agent(&fleet).await;
    serve_predictions(&agent, 200).await;
    let before = fleet
        .coordinator
        .wait_device(&device, Duration::from_secs(20), |v| v["highest_seq"].as_u64() >= Some(3))
        .await;
    let highest = before["highest_seq"].as_u64().unwrap();
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));

    // Every file of the outbox's database overwritten with garbage of the same size.
    for entry in std::fs::read_dir(dir.join("outbox")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let len = std::fs::metadata(&path).unwrap().len().max(64) as usize;
            std::fs::write(&path, vec![0xA5; len]).unwrap();
        }
    }

    let agent = start_agent(&dir, &[]);
    agent.wait_ready(Duration::from_secs(30)).await;
    serve_predictions(&agent, 50).await;
    let log = agent.log();
    assert!(log.contains("the outbox is damaged (") && log.contains("): quarantined"), "{log}");
    let text = agent.metrics_text().await;
    assert_eq!(metric(&text, "outpost_agent_storage_quarantined_total{store=\"outbox\"}"), 1.0, "{text}");
    assert_eq!(std::fs::read_dir(dir.join("quarantine")).unwrap().count(), 1, "kept aside for inspection");
    let after = fleet
        .coordinator
        .wait_device(&device, Duration::from_secs(30), |v| {
            v["highest_seq"].as_u64() > Some(highest)
                && v["recent_events"].to_string().contains("StorageQuarantined")
        })
        .await;
    assert!(after["recent_events"].to_string().contains("seqs below"), "what was lost is said: {after:#}");
}

/// The finding: an agent whose clock was a day behind the coordinator never connected
/// ("certificate not valid yet … 82800 seconds"), and the log blamed its certificates. The CA
/// now backdates what it issues by 48 h, so devices a day behind or ahead connect and report;
/// each measures its skew from the coordinator's signed acks (metric and log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_clock_is_a_day_off_still_connects_and_reports() {
    let Some(lib) = libfaketime() else { return };
    let fleet = fleet(Kind::Embedded);
    for (i, offset) in ["-1d", "+1d"].into_iter().enumerate() {
        let (dir, device) = fleet.enrolled_agent_dir(&format!("agent-{i}"));
        let agent = start_agent(
            &dir,
            &[("LD_PRELOAD", lib.as_str()), ("FAKETIME", offset), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
        );
        agent.wait_ready(Duration::from_secs(30)).await;
        serve_predictions(&agent, 100).await;
        fleet
            .coordinator
            .wait_device(&device, Duration::from_secs(30), |v| v["counts"]["envelopes"].as_u64() > Some(0))
            .await;
        assert!(!agent.log().contains("not valid yet"), "{offset}: {}", agent.log());
        // The agent measures the skew from the coordinator's signed acks and says it.
        let expected = if offset == "-1d" { 86_400.0 } else { -86_400.0 };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let skew = metric(&agent.metrics_text().await, "outpost_agent_clock_skew_seconds");
            if (skew - expected).abs() < 120.0 {
                break;
            }
            assert!(Instant::now() < deadline, "{offset}: skew {skew}, expected about {expected}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let side = if offset == "-1d" { "behind" } else { "ahead of" };
        let said = format!(" s {side} the coordinator");
        assert!(
            agent.log().contains("device clock is 8640") && agent.log().contains(&said),
            "{}",
            agent.log()
        );
        // The coordinator hears it too: in the device's record and `outpostctl devices -o wide`.
        let view = fleet
            .coordinator
            .wait_device(&device, Duration::from_secs(30), |v| {
                v["clock_skew_ms"].as_i64().is_some_and(|ms| (ms as f64 / 1000.0 - expected).abs() < 120.0)
            })
            .await;
        assert!(view["recent_events"].to_string().contains("ClockSkew"), "{view}");
        let (code, out, err) = fleet.coordinator.ctl(&["devices", "-o", "wide"]);
        assert_eq!(code, 0, "{err}");
        let side = if offset == "-1d" { " s behind" } else { " s ahead" };
        assert!(out.lines().next().is_some_and(|h| h.contains("CLOCK")), "{out}");
        assert!(out.lines().any(|l| l.starts_with(&device) && l.contains(side)), "{out}");
    }
}

async fn tiny_log_bound_keeps_serving_and_reports_evictions(kind: Kind) {
    let fleet = fleet(kind);
    let (dir, device) = fleet.enrolled_agent_dir("agent");
    let bound: u64 = 2 * 256 * 1024;
    let agent = start_agent(
        &dir,
        &[
            ("OUTPOST_PREDICTION_LOG__MAX_BYTES", &bound.to_string()),
            ("OUTPOST_PREDICTION_LOG__SEGMENTS", "2"),
        ],
    );
    agent.wait_ready(Duration::from_secs(30)).await;
    serve_predictions(&agent, 20_000).await;
    let text = agent.metrics_text().await;
    assert!(metric(&text, "outpost_agent_prediction_log_evicted_records_total") > 0.0, "{text}");
    let disk = metric(&text, "outpost_agent_prediction_log_disk_bytes") as u64;
    // Stated slack: one write batch (≤ 1024 records, about twice their size on disk).
    assert!(disk <= bound + 1024 * 2 * 700, "log uses {disk} bytes on disk, bound {bound}");
    // The evictions reach the coordinator as an event, beside the agent's start event.
    fleet
        .coordinator
        .wait_device(&device, Duration::from_secs(30), |v| v["counts"]["events"].as_u64() >= Some(2))
        .await;
}

async fn forged_and_replayed_envelopes_are_rejected_and_counted(kind: Kind) {
    let fleet = fleet(kind);
    let (dir, device) = fleet.enrolled_agent_dir("agent");
    let identity = dir.join("identity");
    let client = (identity.join("client.pem"), identity.join("tls.key"));
    let ca = identity.join("broker-ca.pem");
    let topic = format!("outpost/v1/{device}/report");
    let device_key = SigningKey::from_pkcs8(&std::fs::read(identity.join("device.key")).unwrap()).unwrap();
    let body = messages::encode(&AgentMessage::Event(Event {
        at_ms: 1,
        kind: EventKind::AgentStarted,
        message: "genuine".into(),
    }));
    let genuine = protocol::seal(&device_key, 1, 1, &body).unwrap();
    let (other, _) = SigningKey::generate().unwrap();
    let wrong_key = protocol::seal(&other, 2, 1, &body).unwrap();
    let mut altered = protocol::seal(&device_key, 3, 1, &body).unwrap();
    let n = altered.len();
    altered[n - 70] ^= 0x20;
    let garbage = b"\x01\x00\xff\xff garbage".to_vec();

    let file = |name: &str, bytes: &[u8]| {
        let path = fleet.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let send = |path: &Path| assert!(fleet.publish(&topic, path, Some((&client.0, &client.1)), &ca));
    send(&file("genuine", &genuine));
    send(&file("genuine", &genuine)); // replay
    send(&file("wrong_key", &wrong_key));
    send(&file("altered", &altered));
    send(&file("garbage", &garbage));
    let mut future = genuine.clone();
    future[0] = 9;
    send(&file("future", &future));

    let expected = [
        ("stored", 1.0),
        ("duplicate", 1.0),
        ("wrong_key", 1.0),
        ("bad_signature", 1.0),
        ("malformed", 1.0),
        ("unsupported_version", 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = fleet.coordinator.metrics().await;
        let ok = expected.iter().all(|(result, n)| {
            metric(&text, &format!("outpost_coordinator_ingest_total{{result=\"{result}\"}}")) >= *n
        });
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "counters never matched:\n{text}\n{}", fleet.coordinator.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = fleet.coordinator.device(&device).await;
    assert_eq!(view["counts"]["envelopes"], 1, "only the genuine envelope is stored: {view:#}");
    assert_eq!(view["counts"]["duplicates"], 1);
    let health = reqwest::get(format!("{}/healthz", fleet.coordinator.url())).await.unwrap();
    assert_eq!(health.status(), 200, "the coordinator must keep running");
}

async fn air_gapped_agent_exports_and_the_coordinator_imports_once(kind: Kind) {
    let fleet = fleet(kind);
    let (dir, device) = fleet.enrolled_agent_dir("agent");
    // No broker reachable from this agent.
    let mut agent = start_agent(&dir, &[("OUTPOST_TELEMETRY__BROKER_URL", "mqtts://127.0.0.1:1")]);
    agent.wait_ready(Duration::from_secs(30)).await;
    serve_predictions(&agent, 1000).await;
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());

    let export = fleet.dir.path().join("telemetry.bin");
    let data = dir.to_str().unwrap();
    let (code, out, err) =
        run("outpost-agent", &["export-telemetry", export.to_str().unwrap(), "--data-dir", data]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("exported"), "{out}");

    let acks = fleet.dir.path().join("acks.bin");
    let import = |expect_stored: bool| {
        let (code, out, err) = fleet.coordinator.ctl(&[
            "--json",
            "telemetry",
            "import",
            export.to_str().unwrap(),
            "--ack-out",
            acks.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        let summary: Value = serde_json::from_str(out.trim()).unwrap();
        let envelopes = summary["envelopes"].as_u64().unwrap();
        assert!(envelopes > 0);
        if expect_stored {
            assert_eq!(summary["stored"].as_u64(), Some(envelopes), "{summary}");
        } else {
            assert_eq!(summary["stored"], 0, "a second import stored again: {summary}");
            assert_eq!(summary["duplicates"].as_u64(), Some(envelopes));
        }
    };
    import(true);
    let first = fleet.coordinator.device(&device).await;
    assert_eq!(first["counts"]["predictions"], 1000, "{first:#}");
    import(false);
    let second = fleet.coordinator.device(&device).await;
    assert_eq!(first["counts"]["envelopes"], second["counts"]["envelopes"]);
    assert_exactly_once(&second);

    let (code, out, err) = run("outpost-agent", &["import-ack", acks.to_str().unwrap(), "--data-dir", data]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" 0 still unacknowledged"), "{out}");
    let (_, out, _) =
        run("outpost-agent", &["export-telemetry", export.to_str().unwrap(), "--data-dir", data]);
    assert!(out.contains("exported 0 messages"), "{out}");
}

// Each scenario runs against both brokers.
against_both_brokers!(
    enrolment_works_once_and_strangers_cannot_connect,
    broker_outage_loses_nothing_and_duplicates_nothing,
    agent_killed_while_draining_restarts_without_loss,
    coordinator_outage_loses_nothing,
    tiny_log_bound_keeps_serving_and_reports_evictions,
    forged_and_replayed_envelopes_are_rejected_and_counted,
    air_gapped_agent_exports_and_the_coordinator_imports_once,
);
