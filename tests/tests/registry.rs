//! The registry and signed delivery end to end: a real coordinator with its embedded broker
//! (MQTT over mutual TLS), real agents enrolled with labels, `outpostctl` as an operator uses
//! it. Push → validate (numbers checked against scikit-learn's) → deploy to a label selector →
//! the targeted agents download, verify and serve the version, the others don't; a failed
//! validation blocks deployment; roles and the audit chain hold; an agent that does not trust
//! the coordinator's key refuses its bundles and takes an offline-signed one by import; a
//! replayed or forged desired state is refused; a download cut by SIGKILL resumes with Range.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use outpost_shared::protocol::messages::{self, CoordinatorMessage, DesiredModel, DesiredState};
use outpost_shared::protocol::{self, SigningKey};
use outpost_tests::fleet::{
    Coordinator, Mosquitto, bundle_create, metric, observer_identity, ok, publish_retained, push,
    release_key, run, served, start_agent, subscribe, validate, wait_serving,
};
use outpost_tests::{Agent, models_dir, run_agent};
use serde_json::{Value, json};

fn hex_sha256(bytes: &[u8]) -> String {
    outpost_shared::bundle::sha256_hex(bytes)
}

fn close(found: &Value, expected: &Value, what: &str) {
    let (f, e) = (found.as_f64().unwrap_or(f64::NAN), expected.as_f64().unwrap());
    assert!((f - e).abs() <= 1e-6, "{what}: gate {f}, scikit-learn {e}");
}

/// Compares the gate's metrics (overall or one segment) with the fixture script's.
fn same_metrics(found: &Value, expected: &Value, what: &str) {
    assert_eq!(found["rows"], expected["rows"], "{what}: rows");
    for key in ["accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"] {
        close(&found[key], &expected[key], &format!("{what} {key}"));
    }
    let classes = expected["classes"].as_object().unwrap();
    assert_eq!(found["classes"].as_object().unwrap().len(), classes.len(), "{what}: classes");
    for (class, m) in classes {
        for key in ["precision", "recall", "f1"] {
            close(&found["classes"][class][key], &m[key], &format!("{what} class {class} {key}"));
        }
        assert_eq!(found["classes"][class]["support"], m["support"], "{what} class {class} support");
    }
}

/// The model card lists scikit-learn's per-class metrics, overall and for every segment.
fn card_shows_validation_per_class_and_segment(c: &Coordinator, version: &str, expected: &Value) {
    let card = ok(c.ctl(&["model", "card", &format!("bc@{version}")]), "model card");
    assert!(card.starts_with(&format!("# Model card: bc@{version}")), "{card}");
    assert!(card.contains("The gate **passed**"), "{card}");
    // The card rounds for people (four significant digits, `97.37%`): each shown number is
    // scikit-learn's, to the digits shown.
    let cells = |table: &str, first: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {first} |")))
            .unwrap_or_else(|| panic!("no row `{first}` in\n{table}"));
        line.trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect()
    };
    let near = |shown: &str, expected: f64, what: &str| {
        let value: f64 = shown.trim_end_matches('%').parse().unwrap_or_else(|_| panic!("{what}: `{shown}`"));
        let expected = if shown.ends_with('%') { 100.0 * expected } else { expected };
        assert!(
            (value - expected).abs() <= 1e-4 * expected.abs().max(1.0),
            "{what}: shown {shown}, expected {expected}"
        );
    };
    let check_classes = |table: &str, m: &Value, what: &str| {
        for (class, c) in m["classes"].as_object().unwrap() {
            let row = cells(table, class);
            for (i, key) in ["precision", "recall", "f1"].into_iter().enumerate() {
                near(&row[i + 1], c[key].as_f64().unwrap(), &format!("{what} class {class} {key}"));
            }
            assert_eq!(row[4], c["support"].to_string(), "{what} class {class} support");
        }
    };
    let section = |title: &str| -> String {
        let start = card.find(title).unwrap_or_else(|| panic!("no `{title}` in the card:\n{card}"));
        card[start..].split("\n\n").take(2).collect::<Vec<_>>().join("\n")
    };
    check_classes(&section("Per class (all rows):"), expected, "all rows");
    for (segment, m) in expected["segments"].as_object().unwrap() {
        check_classes(&section(&format!("Per class, site={segment}:")), m, &format!("site={segment}"));
        let row = cells(&card, &format!("site={segment}"));
        assert_eq!(row[1], m["rows"].to_string(), "site={segment} rows");
        near(&row[2], m["accuracy"].as_f64().unwrap(), &format!("site={segment} accuracy"));
    }
    let html = ok(c.ctl(&["model", "card", &format!("bc@{version}"), "--format", "html"]), "model card html");
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<table>") && html.contains("site=b"),
        "{html}"
    );
}

fn expected_metrics() -> Value {
    serde_json::from_slice(
        &std::fs::read(models_dir().join("breast_cancer_validation.expected.json")).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_validate_deploy_to_a_selector_and_only_those_devices_switch() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let key = release_key(&c);
    let offline_dir = dir.path().join("offline");
    std::fs::create_dir_all(&offline_dir).unwrap();
    let offline_key = offline_dir.join("offline.pk8");
    let offline_public =
        ok(run("outpostctl", &["key", "generate", offline_key.to_str().unwrap()]), "key generate");
    let offline_public = offline_public.trim();

    let (a1, id_a1) = start_agent(&c, &dir.path().join("a1"), "site=a", &[&key], "");
    let (a2, id_a2) = start_agent(&c, &dir.path().join("a2"), "site=a", &[&key], "");
    let (b1, id_b1) = start_agent(&c, &dir.path().join("b1"), "site=b", &[&key], "");
    // Trusts only a key kept offline: coordinator-signed bundles are refused.
    let (d1, id_d1) = start_agent(&c, &dir.path().join("d1"), "site=d", &[offline_public], "");

    // Push and validate 1.0.0: the gate's numbers are scikit-learn's.
    let out = ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "push 1.0.0");
    assert!(out.contains("bc@1.0.0 registered"), "{out}");
    let expected = expected_metrics();
    let (code, report) = validate(&c, "1.0.0");
    assert_eq!(code, 0, "{report:#}");
    same_metrics(&report["metrics"], &expected["versions"]["1.0.0"], "1.0.0");
    for (segment, m) in expected["versions"]["1.0.0"]["segments"].as_object().unwrap() {
        same_metrics(&report["segments"][segment], m, &format!("1.0.0 segment {segment}"));
    }
    assert_eq!(report["edge_cases"].as_array().unwrap().len(), 4, "{report:#}");
    card_shows_validation_per_class_and_segment(&c, "1.0.0", &expected["versions"]["1.0.0"]);

    // The whole fleet gets 1.0.0; the agent that trusts another key refuses it and says why.
    let out = ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy 1.0.0");
    assert!(out.contains("deployed to 4 device(s)") && out.contains("stage production"), "{out}");
    for agent in [&a1, &a2, &b1] {
        wait_serving(agent, "1.0.0").await;
    }
    let release_id = c.ctl(&["model", "show", "bc@1.0.0", "-o", "json"]).1;
    let release_id: Value = serde_json::from_str(&release_id).unwrap();
    let release_id = release_id["signed_by"][0].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d1.log().contains(&format!("untrusted key(s) {release_id}")) {
        assert!(Instant::now() < deadline, "d1 never refused the bundle; log:\n{}", d1.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served(&d1).await, None);
    // …and the coordinator hears why.
    let refusal = format!("untrusted key(s) {release_id}");
    c.wait_device(&id_d1, Duration::from_secs(30), |v| {
        v["recent_events"].as_array().is_some_and(|events| {
            events.iter().any(|e| {
                e["kind"] == "ModelRefused" && e["message"].as_str().unwrap_or("").contains(&refusal)
            })
        })
    })
    .await;

    // 1.1.0 to site=a only.
    ok(push(&c, "breast_cancer-1.1.0", "1.1.0"), "push 1.1.0");
    let (code, report) = validate(&c, "1.1.0");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["baseline_version"], "1.0.0", "no regression check against production");
    same_metrics(&report["metrics"], &expected["versions"]["1.1.0"], "1.1.0");
    let out = ok(c.ctl(&["deploy", "bc@1.1.0", "--selector", "site=a"]), "deploy 1.1.0");
    assert!(out.contains("deployed to 2 device(s)") && out.contains("stage canary"), "{out}");
    wait_serving(&a1, "1.1.0").await;
    wait_serving(&a2, "1.1.0").await;
    // `devices` shows who runs what (from the agents' own reports).
    for (id, version) in [(&id_a1, "1.1.0"), (&id_a2, "1.1.0"), (&id_b1, "1.0.0")] {
        let view = c
            .wait_device(id, Duration::from_secs(30), |v| {
                v["models"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["version"] == version && m["state"] == "ready"))
            })
            .await;
        assert_eq!(view["desired"]["models"]["bc"]["version"], version, "{view:#}");
    }
    // The coordinator never asked site=b to move (its desired state above), and it did not.
    assert_eq!(served(&b1).await.as_deref(), Some("1.0.0"), "site=b was not targeted");
    let table = ok(c.ctl(&["devices"]), "devices");
    assert!(table.lines().any(|l| l.contains(&id_a1) && l.contains("bc@1.1.0(ready)")), "{table}");
    assert!(table.lines().any(|l| l.contains(&id_b1) && l.contains("bc@1.0.0(ready)")), "{table}");

    // 1.1.0 everywhere; then one command takes the whole fleet back to 1.0.0.
    let out = ok(c.ctl(&["deploy", "bc@1.1.0"]), "deploy 1.1.0 everywhere");
    assert!(out.contains("stage production"), "{out}");
    wait_serving(&b1, "1.1.0").await;
    let out = ok(c.ctl(&["rollback", "bc"]), "rollback");
    assert!(out.starts_with("bc rolled back from 1.1.0 to 1.0.0 on "), "{out}");
    for agent in [&a1, &a2, &b1] {
        wait_serving(agent, "1.0.0").await;
    }
    let shown: Value =
        serde_json::from_str(&ok(c.ctl(&["--json", "model", "show", "bc@1.1.0"]), "show")).unwrap();
    assert_eq!(shown["stage"], "archived", "{shown:#}");
    let (code, _, err) = c.ctl(&["rollback", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("has no production version"), "{err}");

    // The model's own thresholds are stored and apply to every later validation.
    let policy = ok(c.ctl(&["model", "policy", "bc", "--min-accuracy", "0.9"]), "policy");
    assert!(policy.contains("\"min_accuracy\": 0.9"), "{policy}");

    // 2.0.0-bad fails the gate (the numbers still scikit-learn's) and cannot be deployed.
    ok(push(&c, "breast_cancer-2.0.0-bad", "2.0.0-bad"), "push 2.0.0-bad");
    let (code, report) = validate(&c, "2.0.0-bad");
    assert_eq!(code, 1, "a failed validation must exit 1: {report:#}");
    same_metrics(&report["metrics"], &expected["versions"]["2.0.0-bad"], "2.0.0-bad");
    assert_eq!(report["policy"]["min_accuracy"], 0.9, "{report:#}");
    let failures: Vec<&str> =
        report["failures"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    assert!(failures.iter().any(|f| f.contains("below the floor 0.9000")), "{failures:?}");
    assert!(failures.iter().any(|f| f.starts_with("accuracy 0.5965 vs production 1.0.0")), "{failures:?}");
    let (code, _, err) = c.ctl(&["deploy", "bc@2.0.0-bad"]);
    assert_eq!(code, 1);
    assert!(err.contains("409") && err.contains("its validation failed"), "{err}");

    // Same version, other bytes: 409. Same bytes again: fine.
    let (code, _, err) = push(&c, "breast_cancer-1.1.0", "1.0.0");
    assert_eq!(code, 1);
    assert!(err.contains("409 Conflict") && err.contains("versions are immutable"), "{err}");
    assert!(ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "re-push").contains("already registered"));

    // Roles: no token 401, a viewer may look but not deploy (403).
    let viewer = ok(c.ctl(&["token", "create", "ann", "--role", "viewer"]), "token create");
    let viewer = viewer.trim();
    let url = c.url();
    let as_viewer = |args: &[&str]| {
        let mut all = vec!["--url", url.as_str(), "--token", viewer];
        all.extend_from_slice(args);
        run("outpostctl", &all)
    };
    assert_eq!(as_viewer(&["model", "list"]).0, 0);
    let (code, _, err) = as_viewer(&["deploy", "bc@1.1.0"]);
    assert_eq!(code, 1);
    assert!(err.contains("403") && err.contains("role `viewer`"), "{err}");
    let http = reqwest::Client::new();
    let status =
        http.post(format!("{}/api/v1/deployments", c.url())).json(&json!({})).send().await.unwrap().status();
    assert_eq!(status, 401);

    // Air-gapped: export, sign with the offline key, import on the agent that trusts only it.
    let exported = offline_dir.join("bc-1.1.0.bundle");
    ok(c.ctl(&["bundle", "export", "bc@1.1.0", exported.to_str().unwrap()]), "export");
    ok(
        run(
            "outpostctl",
            &["bundle", "sign", exported.to_str().unwrap(), "--key", offline_key.to_str().unwrap()],
        ),
        "sign",
    );
    let d1_config = dir.path().join("d1/agent.toml");
    let out = ok(
        run_agent(&[
            "import",
            exported.to_str().unwrap(),
            "--activate",
            "-c",
            d1_config.to_str().unwrap(),
            "--data-dir",
            d1.data_dir.to_str().unwrap(),
        ]),
        "import",
    );
    assert!(out.contains("activated bc@1.1.0"), "{out}");
    wait_serving(&d1, "1.1.0").await;

    // Every mutation is in the audit log; editing one entry breaks `audit verify`.
    let audit = ok(c.ctl(&["audit", "list", "--limit", "100"]), "audit list");
    for action in ["model.push", "model.validate", "deploy", "token.create"] {
        assert!(audit.contains(action), "no {action} in the audit log:\n{audit}");
    }
    assert!(audit.lines().any(|l| l.contains("deploy") && l.contains("refused")), "{audit}");
    assert!(ok(c.ctl(&["audit", "verify"]), "audit verify").contains("intact"));
    let log_path = c.data_dir.join("audit.log");
    let text = std::fs::read_to_string(&log_path).unwrap();
    std::fs::write(&log_path, text.replacen("\"actor\":\"admin\"", "\"actor\":\"mallory\"", 1)).unwrap();
    let (code, _, err) = c.ctl(&["audit", "verify"]);
    assert_eq!(code, 1, "an edited audit log verified");
    assert!(err.contains("entry 1 was edited"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_forged_desired_states_are_refused_and_a_cut_download_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // Mosquitto, where an observer holding broker credentials with the coordinator's rights
    // can replay and forge: the embedded broker lets no one but the coordinator's own
    // certificate publish a desired state (see broker_isolation.rs).
    let data = dir.path().join("coordinator");
    Coordinator::init(&data);
    let broker = Mosquitto::start(dir.path(), &data);
    let broker_port = broker.port;
    let c = Coordinator::start(&data, &broker.url());
    let key = release_key(&c);
    // Small pieces and a bandwidth cap make the download slow enough to cut in the middle.
    let throttle = "download_chunk_bytes = 8192\ndownload_max_bytes_per_sec = 60000\n";
    let agent_dir = dir.path().join("agent");
    let (mut agent, device) = start_agent(&c, &agent_dir, "site=a", &[&key], throttle);
    ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "push");
    assert_eq!(validate(&c, "1.0.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy");

    // Kill the agent (SIGKILL) once part of the bundle is on disk.
    let size: u64 = {
        let show: Value =
            serde_json::from_str(&ok(c.ctl(&["model", "show", "bc@1.0.0", "-o", "json"]), "show")).unwrap();
        show["bundle_size"].as_u64().unwrap()
    };
    let downloads = agent_dir.join("models/downloads");
    let part_len = || -> u64 {
        std::fs::read_dir(&downloads)
            .map(|d| d.filter_map(Result::ok).map(|e| e.metadata().map_or(0, |m| m.len())).sum())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while part_len() < size / 3 {
        assert!(Instant::now() < deadline, "download never got going; log:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.wait_exit(Duration::from_secs(10));
    let cut_at = part_len();
    assert!(cut_at < size, "the download finished before the kill ({cut_at} of {size} bytes)");

    let config = agent_dir.join("agent.toml");
    let agent = Agent::builder()
        .data_dir(&agent_dir)
        .args(&["-c", config.to_str().unwrap()])
        .env("OUTPOST_TELEMETRY__INTERVAL_SECS", "1")
        .start();
    wait_serving(&agent, "1.0.0").await;
    assert!(agent.log().contains("resuming download"), "{}", agent.log());
    let served_bytes = metric(&c.metrics().await, "outpost_coordinator_artifact_bytes_total") as u64;
    assert!(
        served_bytes >= size && served_bytes <= size + 2 * 8192,
        "coordinator served {served_bytes} bytes for a {size}-byte bundle cut at {cut_at}: the download restarted instead of resuming"
    );

    // Capture the retained desired state (revision 1), then move on to revision 2.
    let (cert, key) = observer_identity(&c.data_dir, &dir.path().join("certs"));
    let ca = c.data_dir.join("pki/ca.pem");
    let topic = format!("outpost/v1/{device}/desired");
    let out =
        subscribe(broker_port, &topic, (&cert, &key), &ca, 1, 10, &["-N"]).output().expect("mosquitto_sub");
    assert!(out.status.success(), "mosquitto_sub: {}", String::from_utf8_lossy(&out.stderr));
    let revision_1 = out.stdout;
    assert!(!revision_1.is_empty());
    ok(push(&c, "breast_cancer-1.1.0", "1.1.0"), "push 1.1.0");
    assert_eq!(validate(&c, "1.1.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.1.0"]), "deploy 1.1.0");
    wait_serving(&agent, "1.1.0").await;

    // A replay of revision 1: refused, 1.1.0 serves on.
    let replay = dir.path().join("replay.bin");
    std::fs::write(&replay, &revision_1).unwrap();
    publish_retained(broker_port, &topic, &replay, (&cert, &key), &ca);
    // A forged one: the signature no longer verifies.
    let mut forged = revision_1.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let forged_path = dir.path().join("forged.bin");
    std::fs::write(&forged_path, &forged).unwrap();
    publish_retained(broker_port, &topic, &forged_path, (&cert, &key), &ca);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = agent.log();
        if log.contains("revision 1 is not newer than the applied revision 2")
            && log.contains("does not verify")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not refuse both; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Key roles: the release key signs bundles, never control messages. A desired state it
    // signs (a high revision, naming 1.0.0 again) is refused like a forgery; the device was
    // given the separate online key at enrolment.
    let enrolment: Value =
        serde_json::from_slice(&std::fs::read(agent_dir.join("identity/enrolment.json")).unwrap()).unwrap();
    assert_ne!(
        enrolment["coordinator_public_key"].as_str(),
        Some(release_key(&c).as_str()),
        "one key for two roles"
    );
    let release =
        SigningKey::from_pkcs8(&std::fs::read(c.data_dir.join("pki/signing.pk8")).unwrap()).unwrap();
    let sha = hex_sha256(b"any bundle: the signature is checked first");
    let state = DesiredState {
        device: device.clone(),
        revision: 1000,
        models: vec![DesiredModel {
            name: "bc".into(),
            version: "1.0.0".into(),
            bundle_sha256: sha,
            watchdog: None,
            candidate: None,
        }],
        expires_at_ms: 0,
        roots: Vec::new(),
    };
    let body = messages::encode(&CoordinatorMessage::Desired(state));
    let by_release = protocol::seal(&release, 1_000_000, 1, &body).unwrap();
    let release_path = dir.path().join("release-signed.bin");
    std::fs::write(&release_path, &by_release).unwrap();
    let refusals = metric(&agent.metrics_text().await, "outpost_agent_desired_refusals_total");
    publish_retained(broker_port, &topic, &release_path, (&cert, &key), &ca);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&agent.metrics_text().await, "outpost_agent_desired_refusals_total") <= refusals {
        assert!(
            Instant::now() < deadline,
            "a desired state signed by the release key was not refused\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&agent.metrics_text().await, "outpost_agent_desired_revision"), 2.0);
    // Refused at the signature, not later: revision 1000 was never recorded as applied.
    let applied: Value =
        serde_json::from_slice(&std::fs::read(agent_dir.join("models/desired.json")).unwrap()).unwrap();
    assert_eq!(applied["revision"], 2, "{applied}");
    // And a bundle signed only by the online key is not a release.
    let online_only = dir.path().join("bc-9.9.9-online.bundle");
    let online_key = c.data_dir.join("pki/online.pk8");
    ok(bundle_create("breast_cancer-1.1.0", "bc", "9.9.9", Some(&online_key), &online_only), "bundle create");
    let config = agent_dir.join("agent.toml");
    let (code, _, err) = run_agent(&[
        "import",
        online_only.to_str().unwrap(),
        "-c",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().join("elsewhere").to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "a bundle signed by the online key was imported: {err}");
    assert!(err.contains("untrusted key"), "{err}");
    assert_eq!(served(&agent).await.as_deref(), Some("1.1.0"));
    let metrics = agent.metrics_text().await;
    assert!(metric(&metrics, "outpost_agent_desired_refusals_total") >= 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "outpost_agent_desired_revision"), 2.0, "{metrics}");
    assert!(metric(&metrics, "outpost_agent_bundle_download_bytes_total") > 0.0, "{metrics}");
    // This process loaded 1.0.0 (resumed download), then switched to 1.1.0.
    assert!(metrics.contains("outpost_agent_model_swaps_total{model=\"bc\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_https_and_agents_download_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded_tls(&dir.path().join("coordinator"));
    assert!(c.url().starts_with("https://"));

    // Plain HTTP to the HTTPS port gets nothing; clients refuse HTTPS without a CA, and plain
    // HTTP to anything but loopback.
    let plain = reqwest::Client::new().get(format!("http://{}/healthz", c.addr)).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "the API answered plain HTTP");
    let token = c.token_file();
    let (code, _, err) =
        run("outpostctl", &["--url", &c.url(), "--token-file", token.to_str().unwrap(), "model", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("give the CA certificate"), "{err}");
    let (code, _, err) =
        run("outpostctl", &["--url", "http://10.1.2.3:7400", "--token", "x", "model", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("non-loopback"), "{err}");
    // The container HEALTHCHECK's probe: healthy with the CA, refused without one.
    let healthz = format!("{}/healthz", c.url());
    let ca = c.ca_file();
    let (code, out, err) =
        run("outpost-coordinator", &["probe", "--url", &healthz, "--ca-file", ca.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "ok"), "{err}");
    let (code, _, err) = run("outpost-coordinator", &["probe", "--url", &healthz]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("give the CA certificate"), "{err}");

    // Enrol over HTTPS, then push → validate → deploy; the agent fetches the bundle over HTTPS.
    let key = release_key(&c);
    let (agent, device) = start_agent(&c, &dir.path().join("agent"), "site=a", &[&key], "");
    let enrolment: Value =
        serde_json::from_slice(&std::fs::read(agent.data_dir.join("identity/enrolment.json")).unwrap())
            .unwrap();
    assert!(enrolment["api_url"].as_str().unwrap().starts_with("https://"), "{enrolment}");
    assert!(agent.data_dir.join("identity/api-ca.pem").is_file());
    ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "push over https");
    assert_eq!(validate(&c, "1.0.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.0.0", "--device", &device]), "deploy over https");
    wait_serving(&agent, "1.0.0").await;
    assert!(agent.log().contains("artifact downloaded and verified"), "{}", agent.log());

    // Over HTTPS the artifact endpoint wants an enrolled device's certificate (the agent
    // above presented its own) or an operator token; an anonymous caller gets 401.
    let show: Value =
        serde_json::from_str(&ok(c.ctl(&["model", "show", "bc@1.0.0", "-o", "json"]), "show")).unwrap();
    let url = format!("{}/api/v1/artifacts/{}", c.url(), show["bundle_sha256"].as_str().unwrap());
    let ca = c.ca_file();
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca.to_str().unwrap()])
            .args(extra)
            .arg(&url)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), "401");
    let admin = std::fs::read_to_string(c.token_file()).unwrap();
    let bearer = format!("Authorization: Bearer {}", admin.trim());
    assert_eq!(curl(&["-H", &bearer]), "200");
    let identity = agent.data_dir.join("identity");
    let (cert, key) = (identity.join("client.pem"), identity.join("tls.key"));
    assert_eq!(curl(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]), "200");
    // Revoked, the same certificate is refused its downloads (403), and deleted too.
    ok(c.ctl(&["device", "revoke", &device]), "revoke");
    assert_eq!(curl(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]), "403");
    ok(c.ctl(&["device", "delete", &device]), "delete");
    assert_eq!(curl(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]), "403");
    // …and a deployment no longer targets it.
    let (code, _, err) = c.ctl(&["deploy", "bc@1.0.0", "--device", &device]);
    assert_eq!(code, 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployments_swap_versions_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let key = release_key(&c);
    let (agent, _) = start_agent(&c, &dir.path().join("agent"), "site=a", &[&key], "");
    for (stem, version) in [("breast_cancer-1.0.0", "1.0.0"), ("breast_cancer-1.1.0", "1.1.0")] {
        ok(push(&c, stem, version), "push");
        assert_eq!(validate(&c, version).0, 0);
    }
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy 1.0.0");
    wait_serving(&agent, "1.0.0").await;

    let load = outpost_tests::Load::start(&agent, "bc", &outpost_tests::breast_cancer_row(), 4);
    load.wait_seen("1.0.0").await;
    ok(c.ctl(&["deploy", "bc@1.1.0"]), "deploy 1.1.0");
    load.wait_seen("1.1.0").await;
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy 1.0.0 again");
    load.wait_seen("1.0.0").await;
    load.finish_expecting(&["1.0.0", "1.1.0", "1.0.0"]).await;
}

/// A device far behind on telemetry still tells the coordinator at once that it runs what was
/// deployed: its actual state goes ahead of its backlog. It used to wait behind every older
/// message, so on a busy machine a rollout waited minutes for devices that had long switched
/// (the demo timed out so). The agent builds its backlog cut off from the broker (one
/// prediction per message, on tmpfs so it builds fast), comes back, and drains it one message
/// in flight at a time; the coordinator must show 1.1.0 before that backlog is through — in
/// the same snapshot of its device view — and still get every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_device_reports_a_deployed_version_ahead_of_its_backlog() {
    const PREDICTIONS: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let key = release_key(&c);
    let slow = "[telemetry]\nmax_in_flight = 1\nbatch_max_records = 1\n";
    let data = shm.path().join("agent");
    let (mut agent, device) = start_agent(&c, &data, "site=a", &[&key], slow);
    for (stem, version) in [("breast_cancer-1.0.0", "1.0.0"), ("breast_cancer-1.1.0", "1.1.0")] {
        ok(push(&c, stem, version), "push");
        assert_eq!(validate(&c, version).0, 0);
    }
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy 1.0.0");
    wait_serving(&agent, "1.0.0").await;
    let runs = |v: &Value, version: &str| {
        v["models"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["version"] == version && m["state"] == "ready"))
    };
    c.wait_device(&device, Duration::from_secs(30), |v| runs(v, "1.0.0")).await;

    // Cut off (a broker address nothing answers on): the backlog builds up.
    let restart = |agent: &mut Agent, env: &[(&str, &str)]| {
        agent.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(agent.wait_exit(Duration::from_secs(30)).success(), "{}", agent.log());
        let mut builder = Agent::builder()
            .data_dir(&data)
            .args(&["-c", data.join("agent.toml").to_str().unwrap()])
            .env("OUTPOST_TELEMETRY__INTERVAL_SECS", "1");
        for (k, v) in env {
            builder = builder.env(k, v);
        }
        builder.start()
    };
    let nowhere = format!("mqtts://127.0.0.1:{}", outpost_tests::fleet::free_port());
    agent = restart(&mut agent, &[("OUTPOST_TELEMETRY__BROKER_URL", &nowhere)]);
    wait_serving(&agent, "1.0.0").await;
    let row = outpost_tests::breast_cancer_row();
    let batch: Vec<Value> =
        row["inputs"][0]["data"].as_array().unwrap().iter().cycle().take(50 * 30).cloned().collect();
    let body = json!({"inputs": [{"name": "input", "shape": [50, 30], "datatype": "FP32", "data": batch}]});
    for _ in 0..PREDICTIONS / 50 {
        let (status, answer) = agent.post_json("/v2/models/bc/infer", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&agent.metrics_text().await, "outpost_agent_outbox_messages") < PREDICTIONS as f64 {
        assert!(Instant::now() < deadline, "the backlog did not build up:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Back on the broker, and a deploy at once.
    agent = restart(&mut agent, &[]);
    wait_serving(&agent, "1.0.0").await;
    let deployed = Instant::now();
    ok(c.ctl(&["deploy", "bc@1.1.0"]), "deploy 1.1.0");
    let view = c.wait_device(&device, Duration::from_secs(60), |v| runs(v, "1.1.0")).await;
    let stored = view["counts"]["predictions"].as_u64().unwrap();
    eprintln!(
        "1.1.0 seen {:?} after the deploy, {stored} of {PREDICTIONS} predictions stored",
        deployed.elapsed()
    );
    assert!(stored < PREDICTIONS, "the new version was seen only after the backlog: {view:#}");
    // The backlog still drains whole, each message once, and no older state replaces the new.
    // (Every seq up to the highest stored: none skipped for the one sent ahead.)
    let view = c
        .wait_device(&device, Duration::from_secs(180), |v| {
            v["counts"]["predictions"].as_u64() == Some(PREDICTIONS)
                && v["counts"]["envelopes"] == v["highest_seq"]
        })
        .await;
    eprintln!("backlog drained {:?} after the deploy", deployed.elapsed());
    assert!(runs(&view, "1.1.0"), "an older state replaced the newer one: {view:#}");
}

/// The registry checks every signature on a pushed bundle before it stores it: the release
/// key's id over 64 bytes of `A`, or a key it does not trust, is refused (400, naming the key)
/// and audited, and nothing is stored; a bundle an offline key listed in `[registry]
/// trusted_keys` signed is accepted, and `signed_by` lists that key beside the registry's own.
#[test]
fn rejects_forged_and_untrusted_signatures_on_push() {
    use outpost_shared::bundle::{Bundle, BundleSignature};
    use outpost_shared::protocol::keys::PublicKey;
    let dir = tempfile::tempdir().unwrap();
    let key_file = |name: &str| {
        let path = dir.path().join(name);
        let public = ok(run("outpostctl", &["key", "generate", path.to_str().unwrap()]), "key generate");
        (path, PublicKey::from_hex(&public).unwrap())
    };
    let (offline, offline_public) = key_file("offline.pk8");
    let (stranger, stranger_public) = key_file("stranger.pk8");
    let config = dir.path().join("coordinator.toml");
    std::fs::write(&config, format!("[registry]\ntrusted_keys = [\"{}\"]\n", hex(offline_public.as_bytes())))
        .unwrap();
    let (c, _) = Coordinator::start_embedded_configured(&dir.path().join("coordinator"), &config);
    let release = PublicKey::from_hex(&release_key(&c)).unwrap();

    let create = |version: &str, key: &Path| {
        let out = dir.path().join(format!("bc-{version}.bundle"));
        ok(bundle_create("breast_cancer-1.0.0", "bc", version, Some(key), &out), "bundle create");
        Bundle::parse(&std::fs::read(out).unwrap()).unwrap()
    };
    let push_bytes = |version: &str, bytes: Vec<u8>| {
        let (client, path) = (c.client(), format!("/api/v1/models/bc/versions/{version}"));
        client.put_bytes::<Value>(&path, "application/octet-stream", &bytes, &mut |_, _| {})
    };

    // The release key's id with a forged signature.
    let mut forged = create("1.0.0", &stranger);
    let release_id: [u8; 8] =
        std::array::from_fn(|i| u8::from_str_radix(&release.key_id()[2 * i..2 * i + 2], 16).unwrap());
    forged.signatures = vec![BundleSignature { key_id: release_id, signature: [b'A'; 64] }];
    let refused = push_bytes("1.0.0", forged.to_bytes()).unwrap_err();
    assert_eq!(refused.status(), Some(400), "{refused}");
    assert!(
        refused.to_string().contains(&release.key_id()) && refused.to_string().contains("does not verify"),
        "{refused}"
    );

    // A key the registry does not trust.
    let refused = push_bytes("1.0.0", create("1.0.0", &stranger).to_bytes()).unwrap_err();
    assert_eq!(refused.status(), Some(400), "{refused}");
    assert!(refused.to_string().contains(&stranger_public.key_id()), "{refused}");
    let listed = ok(c.ctl(&["--json", "model", "list"]), "model list");
    assert!(!listed.contains("\"bc\""), "a refused bundle must not be stored: {listed}");

    // The trusted offline key: stored, both signatures listed.
    let (status, pushed) = push_bytes("1.0.0", create("1.0.0", &offline).to_bytes()).unwrap();
    assert_eq!(status, 201, "{pushed:#}");
    assert_eq!(
        pushed["record"]["signed_by"],
        json!([offline_public.key_id(), release.key_id()]),
        "{pushed:#}"
    );

    let audit = ok(c.ctl(&["audit", "list", "--limit", "20"]), "audit list");
    let refusals = audit.lines().filter(|l| l.contains("model.push") && l.contains("refused")).count();
    assert_eq!(refusals, 2, "both refused pushes are audited:\n{audit}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
