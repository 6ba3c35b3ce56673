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
use outpost_tests::fleet::{
    Coordinator, Mosquitto, enroll, metric, observer_identity, publish, publish_retained, run, subscribe,
};
use outpost_tests::{Agent, model, reference, rows};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Mosquitto,
    Embedded,
}

enum Broker {
    Mosquitto(Mosquitto),
    Embedded { port: u16 },
}

/// A coordinator and a broker sharing the coordinator's CA, in one temporary folder.
struct Fleet {
    dir: tempfile::TempDir,
    broker: Broker,
    coordinator: Coordinator,
}

fn fleet(kind: Kind) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    match kind {
        Kind::Mosquitto => {
            Coordinator::init(&data);
            let broker = Mosquitto::start(dir.path(), &data);
            let coordinator = Coordinator::start(&data, &broker.url());
            Fleet { dir, broker: Broker::Mosquitto(broker), coordinator }
        }
        Kind::Embedded => {
            let (coordinator, port) = Coordinator::start_embedded(&data);
            Fleet { dir, broker: Broker::Embedded { port }, coordinator }
        }
    }
}

impl Fleet {
    fn broker_port(&self) -> u16 {
        match &self.broker {
            Broker::Mosquitto(m) => m.port,
            Broker::Embedded { port } => *port,
        }
    }

    /// Takes the broker away (for the embedded broker: its coordinator with it).
    fn stop_broker(&mut self) {
        match &mut self.broker {
            Broker::Mosquitto(m) => m.stop(),
            Broker::Embedded { .. } => self.coordinator.stop(Signal::SIGTERM),
        }
    }

    fn resume_broker(&mut self) {
        match &mut self.broker {
            Broker::Mosquitto(m) => m.resume(),
            Broker::Embedded { .. } => self.coordinator.resume(),
        }
    }

    fn publish(&self, topic: &str, payload: &Path, client: Option<(&Path, &Path)>, ca: &Path) -> bool {
        publish(self.broker_port(), topic, payload, client, ca)
    }

    /// Enrols a fresh agent data dir; returns (data dir, device id).
    fn enrolled_agent_dir(&self, name: &str) -> (std::path::PathBuf, String) {
        let dir = self.dir.path().join(name);
        let token = self.coordinator.token("site=test,hw=ci");
        let device = enroll(&dir, &self.coordinator, &token).unwrap();
        (dir, device)
    }
}

/// An enrolled, ready agent whose first telemetry already reached the coordinator.
async fn connected_agent(fleet: &Fleet) -> (std::path::PathBuf, String, Agent) {
    let (dir, device) = fleet.enrolled_agent_dir("agent");
    let agent = start_agent(&dir, &[]);
    agent.wait_ready(Duration::from_secs(30)).await;
    fleet
        .coordinator
        .wait_device(&device, Duration::from_secs(20), |v| v["counts"]["envelopes"].as_u64() > Some(0))
        .await;
    (dir, device, agent)
}

fn start_agent(dir: &Path, extra: &[(&str, &str)]) -> Agent {
    let mut builder = Agent::builder()
        .model("bc", &model("breast_cancer-1.0.0"))
        .data_dir(dir)
        .env("OUTPOST_TELEMETRY__INTERVAL_SECS", "1")
        .env("OUTPOST_TELEMETRY__ACK_TIMEOUT_SECS", "3");
    for (k, v) in extra {
        builder = builder.env(k, v);
    }
    builder.start()
}

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
    assert_exactly_once(&view);
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

/// Runs each scenario against both brokers.
macro_rules! against_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod mosquitto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Mosquitto).await
                }
            )*
        }
        mod embedded_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Embedded).await
                }
            )*
        }
    };
}

/// Finding 8 of the trust-boundaries review: a device could not be revoked or removed. Now
/// `device revoke` refuses everything it sends (counted), lists its certificate in the CA's
/// revocation list — Mosquitto then refuses it at the TLS handshake — keeps it from enrolling
/// again, and `device delete` removes it from the fleet with the revocation kept.
async fn a_revoked_device_is_refused_counted_and_audited(kind: Kind) {
    let mut fleet = fleet(kind);
    let (dir, device, mut agent) = connected_agent(&fleet).await;
    let (other_dir, other) = fleet.enrolled_agent_dir("other");
    let c = &fleet.coordinator;
    let out = c.ctl(&["device", "revoke", &device]);
    assert_eq!(out.0, 0, "{}", out.2);
    assert!(out.1.contains(&format!("device {device} revoked; certificate ")), "{}", out.1);
    let revoked = |text: &str| metric(text, "outpost_coordinator_ingest_total{result=\"revoked\"}");

    // The agent keeps reporting every second; from now on each report is refused and counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    while revoked(&c.metrics().await) < 2.0 {
        assert!(Instant::now() < deadline, "{}", c.metrics().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let view = c.device(&device).await;
    assert_eq!(view["status"], "revoked", "{view:#}");
    assert_eq!(view["revoked"]["by"], "admin", "{view:#}");
    let stored = view["counts"]["envelopes"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.device(&device).await["counts"]["envelopes"].as_u64(),
        Some(stored),
        "nothing more is stored"
    );
    let (_, table, _) = c.ctl(&["devices"]);
    assert!(table.lines().any(|l| l.starts_with(&device) && l.contains("revoked")), "{table}");

    // It cannot enrol again, with its key, whatever token it holds.
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    let again = enroll(&dir, c, &c.token("site=test")).unwrap_err();
    assert!(again.contains("was revoked"), "{again}");

    // The CA's revocation list names its certificate: Mosquitto, given the list, refuses it
    // at the handshake and still takes the other device.
    let payload = fleet.dir.path().join("payload");
    std::fs::write(&payload, b"\x01garbage").unwrap();
    let (code, crl, err) = c.ctl(&["device", "crl"]);
    assert_eq!(code, 0, "{err}");
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
    // Both the served list and the one written for a local broker name the certificate.
    let serial = out.1.split("certificate ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    let serial = serial.trim_start_matches("00").to_uppercase();
    let served = fleet.dir.path().join("served.crl.pem");
    std::fs::write(&served, &crl).unwrap();
    for list in [served, fleet.dir.path().join("coordinator/pki/devices.crl.pem")] {
        let text = std::process::Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&list)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout).to_uppercase();
        assert!(
            text.contains(&format!("SERIAL NUMBER: {serial}")),
            "{serial} not in {}:\n{text}",
            list.display()
        );
    }
    let cert = |d: &Path| (d.join("identity/client.pem"), d.join("identity/tls.key"));
    let ca = dir.join("identity/broker-ca.pem");
    if let Broker::Mosquitto(m) = &mut fleet.broker {
        let crl_file = fleet.dir.path().join("devices.crl.pem");
        std::fs::write(&crl_file, &crl).unwrap();
        m.use_crl(&crl_file);
        let (mine, key) = cert(&dir);
        let topic = format!("outpost/v1/{device}/report");
        assert!(
            !publish(m.port, &topic, &payload, Some((&mine, &key)), &ca),
            "a revoked certificate connected"
        );
        let (theirs, key) = cert(&other_dir);
        let topic = format!("outpost/v1/{other}/report");
        assert!(
            publish(m.port, &topic, &payload, Some((&theirs, &key)), &ca),
            "the other device was refused"
        );
    }

    // Deleted: gone from the fleet, still refused, and every step audited.
    let out = fleet.coordinator.ctl(&["device", "delete", &device]);
    assert_eq!(out.0, 0, "{}", out.2);
    let (_, table, _) = fleet.coordinator.ctl(&["devices"]);
    assert!(!table.contains(&device), "{table}");
    let (code, _, err) = fleet.coordinator.ctl(&["device", "revoke", "dev-0000000000000000"]);
    assert_eq!(code, 1);
    assert!(err.contains("no device `dev-0000000000000000`"), "{err}");
    let (_, audit, _) = fleet.coordinator.ctl(&["audit", "list", "--limit", "100"]);
    for action in ["device.revoke", "device.delete"] {
        assert!(
            audit.lines().any(|l| l.contains(action) && l.contains(&device) && l.contains(" ok ")),
            "{audit}"
        );
    }
    assert!(
        audit.lines().any(|l| l.contains("device.enrol") && l.contains(&device) && l.contains("refused")),
        "{audit}"
    );
}

/// Mosquitto with the shipped ACL (`deploy/mosquitto/acl`) keeps a device to its own topics:
/// the finding was device A subscribing to `outpost/v1/<B>/#` and reading B's reports, and
/// writing on B's topics. Here A reads nothing of B's while B reports every second (an
/// observer with the coordinator's rights sees B's reports in the same window), and a
/// retained message A writes on B's desired-state topic never lands. (The embedded broker
/// cannot do this; see the README's security section.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_keeps_each_device_to_its_own_topics() {
    let fleet = fleet(Kind::Mosquitto);
    let (dir_b, device_b, _agent_b) = connected_agent(&fleet).await;
    let (dir_a, _) = fleet.enrolled_agent_dir("neighbour");
    let c = &fleet.coordinator;
    let (observer_cert, observer_key) = observer_identity(&c.data_dir, &fleet.dir.path().join("observer"));
    let ca = dir_b.join("identity/broker-ca.pem");
    let port = fleet.broker_port();
    let listen = |topic: String, cert: std::path::PathBuf, key: std::path::PathBuf| {
        let ca = ca.clone();
        std::thread::spawn(move || {
            let out =
                subscribe(port, &topic, (&cert, &key), &ca, 1, 4, &["-v"]).output().expect("mosquitto_sub");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let everything_of_b = format!("outpost/v1/{device_b}/#");
    let neighbour =
        listen(everything_of_b.clone(), dir_a.join("identity/client.pem"), dir_a.join("identity/tls.key"));
    let coordinator =
        listen(format!("outpost/v1/{device_b}/report"), observer_cert.clone(), observer_key.clone());
    let seen_by_coordinator = tokio::task::spawn_blocking(move || coordinator.join().unwrap()).await.unwrap();
    let seen_by_neighbour = tokio::task::spawn_blocking(move || neighbour.join().unwrap()).await.unwrap();
    assert!(
        seen_by_coordinator.starts_with(&format!("outpost/v1/{device_b}/report")),
        "{seen_by_coordinator:?}"
    );
    assert!(seen_by_neighbour.is_empty(), "the neighbour read B's topics: {seen_by_neighbour:?}");

    // A writes a retained message on B's desired-state topic: it never lands.
    let payload = fleet.dir.path().join("payload");
    std::fs::write(&payload, b"not from the coordinator").unwrap();
    let desired = format!("outpost/v1/{device_b}/desired");
    // Mosquitto acknowledges a denied publish and drops it.
    let (cert_a, key_a) = (dir_a.join("identity/client.pem"), dir_a.join("identity/tls.key"));
    publish_retained(port, &desired, &payload, (&cert_a, &key_a), &ca);
    let retained = listen(desired, observer_cert, observer_key);
    let retained = tokio::task::spawn_blocking(move || retained.join().unwrap()).await.unwrap();
    assert!(!retained.contains("not from the coordinator"), "{retained:?}");
}

/// Finding: a neighbour published a retained `offline` on another device's presence topic and
/// the coordinator showed it offline while it kept reporting. Presence is now a signed envelope
/// from the agent's current session: a bare word or another key's signature is refused, and so
/// is a replay of the device's own last will from an earlier run — each counted, the device
/// staying online.
async fn presence_cannot_be_forged_or_replayed(kind: Kind) {
    let fleet = fleet(kind);
    let (dir_b, device_b, mut agent_b) = connected_agent(&fleet).await;
    let (dir_a, _) = fleet.enrolled_agent_dir("attacker");
    let c = &fleet.coordinator;
    let online = |v: &Value| v["status"] == "online" && v["presence"] == "online";
    c.wait_device(&device_b, Duration::from_secs(20), online).await;
    let refused = |text: &str| metric(text, "outpost_coordinator_ingest_total{result=\"presence_refused\"}");
    let topic = format!("outpost/v1/{device_b}/presence");
    let ca = dir_b.join("identity/broker-ca.pem");
    let cert_of = |d: &Path| (d.join("identity/client.pem"), d.join("identity/tls.key"));
    let retained = |payload: &Path, (cert, key): &(std::path::PathBuf, std::path::PathBuf)| {
        publish_retained(fleet.broker_port(), &topic, payload, (cert, key), &ca);
    };

    // A bare `offline` and one signed with another key, from the neighbour's certificate.
    let plain = fleet.dir.path().join("plain");
    std::fs::write(&plain, b"offline").unwrap();
    retained(&plain, &cert_of(&dir_a));
    let (stranger, _) = SigningKey::generate().unwrap();
    let foreign = fleet.dir.path().join("foreign");
    std::fs::write(
        &foreign,
        protocol::presence::seal(&stranger, u64::MAX, protocol::presence::Presence::Offline, 0).unwrap(),
    )
    .unwrap();
    retained(&foreign, &cert_of(&dir_a));
    if let Kind::Embedded = kind {
        // No topic ACL on the embedded broker: both reach the coordinator, which refuses them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while refused(&c.metrics().await) < 2.0 {
            assert!(Instant::now() < deadline, "{}", c.metrics().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(online(&c.device(&device_b).await), "{:#}", c.device(&device_b).await);

    // Record the device's real last will as it dies, then bring it back (a new session).
    let (observer_cert, observer_key) = observer_identity(&c.data_dir, &fleet.dir.path().join("observer"));
    let capture =
        subscribe(fleet.broker_port(), &topic, (&observer_cert, &observer_key), &ca, 1, 30, &["-R", "-N"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent_b.signal(Signal::SIGKILL);
    agent_b.wait_exit(Duration::from_secs(10));
    let last_will =
        tokio::task::spawn_blocking(move || capture.wait_with_output().unwrap().stdout).await.unwrap();
    assert!(!last_will.is_empty(), "no last will was published");
    c.wait_device(&device_b, Duration::from_secs(20), |v| v["status"] == "offline").await;
    let _agent_b = start_agent(&dir_b, &[]);
    c.wait_device(&device_b, Duration::from_secs(30), online).await;

    // The recorded last will, replayed: the embedded broker lets the neighbour publish it;
    // Mosquitto's ACL lets only the device itself, so the replay goes out under its own
    // certificate. Either way the coordinator refuses an older session.
    let before = refused(&c.metrics().await);
    let replay = fleet.dir.path().join("replay");
    std::fs::write(&replay, &last_will).unwrap();
    let publisher = match kind {
        Kind::Embedded => cert_of(&dir_a),
        Kind::Mosquitto => cert_of(&dir_b),
    };
    retained(&replay, &publisher);
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused(&c.metrics().await) < before + 1.0 {
        assert!(Instant::now() < deadline, "the replay was not refused: {}", c.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(online(&c.device(&device_b).await), "{:#}", c.device(&device_b).await);
}

against_both_brokers!(
    presence_cannot_be_forged_or_replayed,
    a_revoked_device_is_refused_counted_and_audited,
    enrolment_works_once_and_strangers_cannot_connect,
    broker_outage_loses_nothing_and_duplicates_nothing,
    agent_killed_while_draining_restarts_without_loss,
    coordinator_outage_loses_nothing,
    tiny_log_bound_keeps_serving_and_reports_evictions,
    forged_and_replayed_envelopes_are_rejected_and_counted,
    air_gapped_agent_exports_and_the_coordinator_imports_once,
);
