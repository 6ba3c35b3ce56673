//! Bad input at the coordinator's and the agent's new interfaces gets a clear error with the
//! right status or exit code, and changes nothing: the enrolment API, admin endpoints,
//! telemetry import, `outpostctl`, the agent's `enroll` / `import-ack` / `export-telemetry`,
//! and configuration keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outpost_tests::fleet::{Coordinator, enroll, run};
use serde_json::{Value, json};

async fn post(client: &reqwest::Client, url: String, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = client.post(url).header("content-type", "application/json").body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_api_refuses_bad_input_with_a_named_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let admin = std::fs::read_to_string(coordinator.token_file()).unwrap();
    let admin = admin.trim();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", coordinator.url());

    // Admin endpoints: no token or one nobody issued 401, a viewer's 403.
    let (status, body) = post(&http, url("/api/v1/enrolment-tokens"), None, b"{}".to_vec()).await;
    assert_eq!(status, 401, "{body}");
    assert!(error_of(&body).contains("Authorization"));
    let (status, _) = post(&http, url("/api/v1/enrolment-tokens"), Some("opa_wrong"), b"{}".to_vec()).await;
    assert_eq!(status, 401);
    let (status, body) =
        post(&http, url("/api/v1/tokens"), Some(admin), br#"{"name": "eve", "role": "viewer"}"#.to_vec())
            .await;
    assert_eq!(status, 200, "{body}");
    let viewer = body["token"].as_str().unwrap().to_owned();
    let (status, body) = post(&http, url("/api/v1/enrolment-tokens"), Some(&viewer), b"{}".to_vec()).await;
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("role `viewer`"), "{body}");
    let devices = http.get(url("/api/v1/devices")).send().await.unwrap();
    assert_eq!(devices.status(), 401);

    // Token requests: unknown fields, bad labels, absurd lifetimes.
    for (body, needle) in [
        (json!({"labels": {"site": "a"}, "colour": "red"}), "unknown field"),
        (json!({"labels": {"site": "a b"}}), "label `site=a b`"),
        (json!({"ttl_secs": 0}), "ttl_secs"),
    ] {
        let (status, answer) =
            post(&http, url("/api/v1/enrolment-tokens"), Some(admin), serde_json::to_vec(&body).unwrap())
                .await;
        assert!((400..500).contains(&status), "{body} → {status}");
        assert!(error_of(&answer).contains(needle), "{body} → {answer}");
    }

    // Enrolment: garbage, bad ids, bad keys, bad CSRs, and a token that does not exist.
    let token = coordinator.token("site=a");
    let key = "ab".repeat(32);
    for (body, status_expected, needle) in [
        (b"{not json".to_vec(), 400, "invalid request body"),
        (
            serde_json::to_vec(&json!({"token": token, "device_id": "a/b", "public_key": key, "csr": "x"}))
                .unwrap(),
            400,
            "the coordinator assigns device ids from the public key",
        ),
        (
            serde_json::to_vec(&json!({"token": token, "public_key": "zz", "csr": "x"})).unwrap(),
            400,
            "public_key",
        ),
        (
            serde_json::to_vec(&json!({"token": token, "public_key": key, "csr": "garbage"})).unwrap(),
            400,
            "certificate signing request",
        ),
        (
            serde_json::to_vec(&json!({"token": "opt_nope", "public_key": key, "csr": csr()})).unwrap(),
            403,
            "not known",
        ),
    ] {
        let (status, answer) = post(&http, url("/api/v1/enrol"), None, body.clone()).await;
        assert_eq!(status, status_expected, "{} → {answer}", String::from_utf8_lossy(&body));
        assert!(error_of(&answer).contains(needle), "{answer}");
    }
    // None of that burnt the real token.
    let device = enroll(&dir.path().join("agent"), &coordinator, &token).unwrap();
    assert!(device.starts_with("dev-"));

    // Telemetry import: not a telemetry file.
    let (status, answer) =
        post(&http, url("/api/v1/telemetry/import"), Some(admin), b"OPACKS01junk".to_vec()).await;
    assert_eq!(status, 400);
    assert!(error_of(&answer).contains("not an Outpost telemetry file"), "{answer}");
    let view: Value = http
        .get(url(&format!("/api/v1/devices/{device}")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["counts"]["envelopes"], 0, "{view}");
    let missing = http.get(url("/api/v1/devices/nope")).bearer_auth(admin).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// A valid CSR for a throwaway key (so the request fails for another reason).
fn csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn the_command_lines_refuse_bad_input_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let data = data.to_str().unwrap();

    // outpostctl: labels must be key=value.
    let (code, _, err) =
        run("outpostctl", &["--token", "x", "device", "token", "create", "--labels", "site"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("key=value"), "{err}");

    // The agent: an ack file that is not one, and enrolment over plain HTTP off loopback.
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"definitely not acks").unwrap();
    let (code, _, err) = run("outpost-agent", &["import-ack", garbage.to_str().unwrap(), "--data-dir", data]);
    assert_ne!(code, 0);
    assert!(err.contains("not enrolled") || err.contains("not an Outpost ack file"), "{err}");
    let (code, _, err) = run(
        "outpost-agent",
        &["enroll", "--coordinator", "http://10.9.8.7:7400", "--token", "t", "--data-dir", data],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("non-loopback"), "{err}");
    let (code, _, err) = run(
        "outpost-agent",
        &["enroll", "--coordinator", "https://10.9.8.7:7400", "--token", "t", "--data-dir", data],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("give the CA certificate"), "{err}");

    // Configuration: telemetry keys are checked and named.
    let out = std::process::Command::new(outpost_tests::agent_bin())
        .args(["serve", "--model", &format!("bc={}", outpost_tests::model("breast_cancer-1.0.0").display())])
        .env("OUTPOST_DATA_DIR", data)
        .env("OUTPOST_TELEMETRY__INTERVAL_SECS", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("telemetry.interval_secs"), "{err}");
    let out = std::process::Command::new(outpost_tests::bin_dir().join("outpost-coordinator"))
        .args(["serve", "--data-dir", data])
        .env("OUTPOST_COORDINATOR_BROKER__NOPE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_ack_file_frees_nothing() {
    use outpost_shared::protocol::messages::{self, Ack, CoordinatorMessage};
    use outpost_shared::protocol::transfer::{TransferFile, encode_acks};
    use outpost_shared::protocol::{SigningKey, seal};

    let dir = tempfile::tempdir().unwrap();
    let (coordinator, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let agent = dir.path().join("agent");
    let device = enroll(&agent, &coordinator, &coordinator.token("site=a")).unwrap();
    // Something to free: the agent's start and stop events wait in its outbox.
    let mut a = outpost_tests::Agent::builder()
        .model("bc", &outpost_tests::model("breast_cancer-1.0.0"))
        .data_dir(&agent)
        .env("OUTPOST_TELEMETRY__BROKER_URL", "mqtts://127.0.0.1:1")
        .start();
    a.wait_ready(Duration::from_secs(30)).await;
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(20)).success());
    let agent_dir = agent.to_str().unwrap();

    // An ack for every seq, for this device, signed by a key that is not the coordinator's.
    let (mallory, _) = SigningKey::generate().unwrap();
    let body = messages::encode(&CoordinatorMessage::Ack(Ack {
        device: device.clone(),
        ranges: vec![(0, u64::MAX)],
    }));
    let file =
        TransferFile { device, created_at_ms: 0, envelopes: vec![seal(&mallory, 1, 0, &body).unwrap()] };
    let forged = dir.path().join("forged.bin");
    std::fs::write(&forged, encode_acks(&file)).unwrap();
    let (code, out, err) =
        run("outpost-agent", &["import-ack", forged.to_str().unwrap(), "--data-dir", agent_dir]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("freed 0 messages") && out.contains("1 acks refused"), "{out}");
    assert!(err.contains("does not verify"), "{err}");

    let export = dir.path().join("t.bin");
    let (code, out, err) =
        run("outpost-agent", &["export-telemetry", export.to_str().unwrap(), "--data-dir", agent_dir]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("exported 0 "), "the forged ack freed messages: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_openapi_document_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let admin = std::fs::read_to_string(coordinator.token_file()).unwrap();
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{}/api/v1/openapi.json", coordinator.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, methods) in paths {
        // Fill path parameters with values that reach the handler (which may then say 404).
        let concrete = path
            .replace("{name}", "nomodel")
            .replace("{version}", "1.0.0")
            .replace("{id}", "nodevice")
            .replace("{sha256}", &"0".repeat(64));
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let url = format!("{}{concrete}", coordinator.url());
            let request = match method.as_str() {
                "get" => http.get(&url),
                "post" => http.post(&url),
                "put" => http.put(&url),
                "delete" => http.delete(&url),
                other => panic!("unexpected method {other} for {path}"),
            };
            let response = request.bearer_auth(admin.trim()).body(Vec::<u8>::new()).send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            // The router's own 404/405 carry no body; every handler answers JSON.
            assert!(
                status != 405 && !(status == 404 && body.is_empty()),
                "{method} {path} is documented but not routed ({status})"
            );
            assert!(op["x-outpost-role"].is_string(), "{method} {path} names no role");
        }
    }
    assert!(operations >= 23, "only {operations} operations documented");
    // And an undocumented path is not served.
    let status =
        http.get(format!("{}/api/v1/undocumented", coordinator.url())).send().await.unwrap().status();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_and_deployment_endpoints_refuse_bad_input_with_a_named_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let admin = std::fs::read_to_string(coordinator.token_file()).unwrap();
    let admin = admin.trim().to_owned();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", coordinator.url());
    let send = |request: reqwest::RequestBuilder| {
        let admin = admin.clone();
        async move {
            let response = request.bearer_auth(admin).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // A bundle that is not one, and a real one pushed under another name.
    let (status, body) = send(http.put(url("/api/v1/models/bc/versions/1.0.0")).body(b"junk".to_vec())).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("not an Outpost bundle"), "{body}");
    let bundle = dir.path().join("bc.bundle");
    let (code, _, err) =
        outpost_tests::fleet::bundle_create("breast_cancer-1.0.0", "bc", "1.0.0", None, &bundle);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&bundle).unwrap();
    let (status, body) = send(http.put(url("/api/v1/models/other/versions/1.0.0")).body(bytes.clone())).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("the bundle is bc@1.0.0, not other@1.0.0"), "{body}");
    let (status, body) = send(http.put(url("/api/v1/models/bc/versions/1.0.0")).body(bytes)).await;
    assert_eq!(status, 201, "{body}");

    // The gate: no label, a label column that is not there, a body that is not CSV, bad thresholds.
    let csv = std::fs::read(outpost_tests::models_dir().join("breast_cancer_validation.csv")).unwrap();
    for (query, body, needle) in [
        ("", csv.clone(), "label"),
        ("?label=nope", csv.clone(), "no column `nope`"),
        ("?label=label", b"\xff\xfe not csv".to_vec(), "the dataset"),
        ("?label=label&max_accuracy_drop=-1", csv.clone(), "max_accuracy_drop must be a finite number"),
        ("?label=label&colour=red", csv.clone(), "colour"),
    ] {
        let path = format!("/api/v1/models/bc/versions/1.0.0/validate{query}");
        let (status, answer) = send(http.post(url(&path)).body(body)).await;
        assert_eq!(status, 400, "{query} → {answer}");
        assert!(error_of(&answer).contains(needle), "{query} → {answer}");
    }

    // Stages, policies, deployments, tokens, artifacts.
    for (method, path, body, status_expected, needle) in [
        (
            "post",
            "/api/v1/models/bc/versions/1.0.0/stage",
            json!({"stage": "golden"}),
            400,
            "unknown stage `golden`",
        ),
        (
            "post",
            "/api/v1/models/bc/versions/1.0.0/stage",
            json!({"stage": "production"}),
            409,
            "has not passed validation",
        ),
        (
            "post",
            "/api/v1/models/bc/versions/9.9.9/stage",
            json!({"stage": "archived"}),
            404,
            "no version bc@9.9.9",
        ),
        (
            "put",
            "/api/v1/models/bc/policy",
            json!({"max_p99_ratio": -2.0}),
            400,
            "max_p99_ratio must be a finite number",
        ),
        // A well-formed JSON body of the wrong shape is 422 (axum's Json rejection).
        (
            "put",
            "/api/v1/models/bc/policy",
            json!({"max_p99_ratio": 2.0, "speed": 1}),
            422,
            "unknown field `speed`",
        ),
        (
            "post",
            "/api/v1/deployments",
            json!({"model": "bc", "version": "1.0.0", "colour": 1}),
            422,
            "unknown field `colour`",
        ),
        (
            "post",
            "/api/v1/deployments",
            json!({"model": "bc", "version": "1.0.0"}),
            409,
            "has not been validated",
        ),
        (
            "post",
            "/api/v1/deployments",
            json!({"model": "nope", "version": "1.0.0"}),
            404,
            "no version nope@1.0.0",
        ),
        ("post", "/api/v1/tokens", json!({"name": "ann", "role": "root"}), 400, "unknown role `root`"),
        ("post", "/api/v1/tokens", json!({"name": "a b", "role": "viewer"}), 400, "token name `a b`"),
        ("delete", "/api/v1/tokens/nobody", Value::Null, 404, "no token named `nobody`"),
        ("get", "/api/v1/artifacts/not-a-sha", Value::Null, 400, "is not a sha256"),
        // Monitoring: objectives, quality, reports, retraining.
        (
            "put",
            "/api/v1/models/bc/slo",
            json!({"availability": 99.0, "window_secs": 3600}),
            400,
            "`availability` must be a share in (0, 1)",
        ),
        ("put", "/api/v1/models/bc/slo", json!({"window_secs": 3600}), 400, "at least one objective"),
        ("get", "/api/v1/models/bc/slo", Value::Null, 404, "has no objectives"),
        ("get", "/api/v1/models/nosuch/quality", Value::Null, 404, "no model `nosuch`"),
        ("get", "/api/v1/models/bc/quality?by=", Value::Null, 400, "must name a device label"),
        ("get", "/api/v1/models/bc/quality?colour=red", Value::Null, 400, "colour"),
        ("get", "/api/v1/models/bc/drift-report?format=pdf", Value::Null, 400, "use md, html or json"),
        ("get", "/api/v1/models/bc/data?labelled_only=maybe", Value::Null, 400, "labelled_only"),
        ("post", "/api/v1/models/bc/retrain", Value::Null, 409, "has no retraining configured"),
        ("get", &format!("/api/v1/artifacts/{}", "0".repeat(64)), Value::Null, 404, "no version artifact"),
        // Rollouts and incidents.
        (
            "post",
            "/api/v1/rollouts",
            json!({"model": "bc", "version": "1.0.0", "waves": [50, 10, 100]}),
            400,
            "must increase",
        ),
        (
            "post",
            "/api/v1/rollouts",
            json!({"model": "bc", "version": "1.0.0", "gates": ["p99<2x"]}),
            400,
            "no `<=`",
        ),
        (
            "post",
            "/api/v1/rollouts",
            json!({"model": "bc", "version": "1.0.0", "wave": [1]}),
            422,
            "unknown field `wave`",
        ),
        ("post", "/api/v1/rollouts", json!({"model": "nope", "version": "9.9.9"}), 404, "nope"),
        ("get", "/api/v1/rollouts/r-404", Value::Null, 404, "no rollout `r-404`"),
        ("post", "/api/v1/rollouts/r-404/pause", Value::Null, 404, "no rollout `r-404`"),
        ("post", "/api/v1/rollouts/r-404/explode", Value::Null, 404, "unknown rollout action `explode`"),
        ("get", "/api/v1/incidents/inc-404", Value::Null, 404, "no incident `inc-404`"),
        ("post", "/api/v1/incidents/inc-404/close", Value::Null, 404, "no incident `inc-404`"),
    ] {
        let request = match method {
            "post" => http.post(url(path)).json(&body),
            "put" => http.put(url(path)).json(&body),
            "delete" => http.delete(url(path)),
            _ => http.get(url(path)),
        };
        let (status, answer) = send(request).await;
        assert_eq!(status, status_expected, "{method} {path} {body} → {answer}");
        assert!(error_of(&answer).contains(needle), "{method} {path} {body} → {answer}");
    }

    // outpostctl: a target that is not NAME@VERSION; a file that is not a bundle.
    let (code, _, err) = coordinator.ctl(&["deploy", "bc"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`bc` is not NAME@VERSION"), "{err}");
    let garbage = dir.path().join("garbage.bundle");
    std::fs::write(&garbage, b"OPBUNDLE\x01\x00\x00\x00\x0a\x00\x00\x00abc").unwrap();
    let (code, _, err) = run("outpostctl", &["bundle", "inspect", garbage.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("truncated"), "{err}");
}

/// The finding: authentication and role denials, enrolments and refused enrolments were not
/// audited, and a control character in a model name reached `audit list` raw (a crafted name
/// drew a fake line). Now refusals are audited — a flood sampled at 30 a minute per action and
/// the rest counted — every enrolment is, and `audit list` escapes control characters.
#[test]
fn refusals_and_enrolments_are_audited_and_control_characters_cannot_forge_lines() {
    let dir = tempfile::tempdir().unwrap();
    // Room for 40 failures from one address (the throttle has its own test).
    let (c, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[("OUTPOST_COORDINATOR_API__FAILED_AUTH_PER_MINUTE", "1000")],
    );
    let wrong =
        outpost_client::Client::new(&c.url(), "opa_not-a-token", None, Duration::from_secs(10)).unwrap();
    for _ in 0..40 {
        assert_eq!(wrong.get::<Value>("/api/v1/devices").unwrap_err().status(), Some(401));
    }
    // A refused enrolment (an unknown token) and a real one.
    let refused = wrong
        .post_json::<Value>(
            "/api/v1/enrol",
            &json!({"device_id": "intruder", "public_key": "ab".repeat(32), "csr": csr(), "token": "nope"}),
        )
        .unwrap_err();
    assert!(matches!(refused.status(), Some(400 | 403)), "{refused}");
    let device = enroll(&dir.path().join("agent"), &c, &c.token("site=a")).unwrap();
    // A model name carrying an escape sequence, in the URL of a refused push.
    let crafted = c.client().put_bytes::<Value>(
        "/api/v1/models/a%1B%5B2Jb/versions/1.0.0",
        "application/octet-stream",
        b"junk",
        &mut |_, _| {},
    );
    assert_eq!(crafted.unwrap_err().status(), Some(400));

    let (code, audit, err) = c.ctl(&["audit", "list", "--limit", "500"]);
    assert_eq!(code, 0, "{err}");
    let denied =
        audit.lines().filter(|l| l.contains("auth.denied") && l.contains("GET /api/v1/devices")).count();
    assert_eq!(denied, 30, "a flood of denials is sampled:\n{audit}");
    let suppressed = String::from_utf8(c.client().get_bytes("/metrics").unwrap()).unwrap();
    assert!(
        suppressed.contains("outpost_coordinator_audit_suppressed_total{action=\"auth.denied\"} 10"),
        "{suppressed}"
    );
    assert!(audit.lines().any(|l| l.contains("device.enrol") && l.contains("intruder")), "{audit}");
    assert!(
        audit.lines().any(|l| l.contains("device.enrol") && l.contains(&device) && l.contains(" ok ")),
        "{audit}"
    );
    assert!(!audit.contains('\u{1b}') && audit.contains("a\\u{1b}[2Jb"), "{audit}");
    assert_eq!(c.ctl(&["audit", "verify"]).0, 0, "the chain still verifies");
}

/// The finding: a device chose its own id at enrolment, and `device_id: "outpost-coordinator"`
/// got a certificate with the coordinator's name — under Mosquitto's ACL, the coordinator's
/// rights. Now the coordinator assigns the id from the device's key: the request may only
/// repeat it, the certificate carries it whatever the CSR asked for, and each try is audited.
#[test]
fn a_device_cannot_choose_its_id_or_take_the_coordinators() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let anyone = outpost_client::Client::new(&c.url(), "-", None, Duration::from_secs(10)).unwrap();
    let token = c.token("site=a");
    let (signing, _) = outpost_shared::protocol::keys::SigningKey::generate().unwrap();
    let public = hex_of(signing.public_key().as_bytes());
    let assigned = format!("dev-{}", signing.key_id());
    // The CSR asks for the coordinator's name too.
    let tls = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "outpost-coordinator");
    let csr = params.serialize_request(&tls).unwrap().pem().unwrap();

    // Another identity than the key's: refused, naming the one it would get; the token survives.
    for asked in ["outpost-coordinator", "dev-0000000000000000", "a\u{1b}[2Jb"] {
        let refused = anyone
            .post_json::<Value>(
                "/api/v1/enrol",
                &json!({"token": token, "device_id": asked, "public_key": public, "csr": csr}),
            )
            .unwrap_err();
        assert_eq!(refused.status(), Some(400), "{asked}: {refused}");
        let message = refused.to_string();
        assert!(
            message.contains("the coordinator assigns device ids from the public key")
                && message.contains(&assigned)
                && !message.contains('\u{1b}'),
            "{message}"
        );
    }
    // Without an id (or with the right one) it enrols as `dev-<key id>`.
    let enrolled: Value = anyone
        .post_json("/api/v1/enrol", &json!({"token": token, "public_key": public, "csr": csr}))
        .unwrap();
    assert_eq!(enrolled["device_id"], assigned.as_str(), "{enrolled:#}");
    // The certificate names the assigned id, not what the CSR asked for (read by openssl).
    let pem = dir.path().join("device.pem");
    std::fs::write(&pem, enrolled["client_certificate"].as_str().unwrap()).unwrap();
    let subject = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout).into_owned();
    assert!(
        subject.contains(&format!("CN = {assigned}")) || subject.contains(&format!("CN={assigned}")),
        "{subject}"
    );
    assert!(!subject.contains("outpost-coordinator"), "{subject}");
    // A second device cannot claim the first one's id either.
    let (other, _) = outpost_shared::protocol::keys::SigningKey::generate().unwrap();
    let stolen = anyone
        .post_json::<Value>(
            "/api/v1/enrol",
            &json!({"token": c.token("site=a"), "device_id": assigned, "public_key": hex_of(other.public_key().as_bytes()), "csr": csr}),
        )
        .unwrap_err();
    assert_eq!(stolen.status(), Some(400), "{stolen}");

    // Every try is in the audit log, refused ones under the id the key would have had.
    let (code, audit, err) = c.ctl(&["audit", "list", "--limit", "100"]);
    assert_eq!(code, 0, "{err}");
    let enrols: Vec<&str> = audit.lines().filter(|l| l.contains("device.enrol")).collect();
    assert_eq!(enrols.len(), 5, "{audit}");
    assert!(
        enrols
            .iter()
            .any(|l| l.contains(&assigned) && l.contains("outpost-coordinator") && l.contains("invalid")),
        "{audit}"
    );
    assert!(enrols.iter().any(|l| l.contains(&assigned) && l.contains(" ok ")), "{audit}");
    let (_, devices, _) = c.ctl(&["--json", "devices"]);
    assert!(!devices.contains("outpost-coordinator"), "{devices}");
}

/// The finding: API tokens never expired. Now a viewer's or operator's token lives 90 days
/// unless its creator says otherwise, an admin's until revoked; an expired token is refused
/// (401, naming when it expired), `token list` shows every expiry, and a bad `--expires` is
/// refused and audited.
#[test]
fn api_tokens_expire_and_token_list_shows_when() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let create = |name: &str, role: &str, expires: Option<&str>| {
        let mut args = vec!["token", "create", name, "--role", role];
        args.extend(expires.map(|e| ["--expires", e]).into_iter().flatten());
        c.ctl(&args)
    };
    let (code, _, err) = create("ops", "operator", None);
    assert_eq!(code, 0, "{err}");
    let in_90_days = outpost_coordinator_utc_day(90);
    assert!(err.contains(&format!("expires: {in_90_days}")), "{err}");
    let (code, _, err) = create("root2", "admin", None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("expires: never"), "{err}");
    let (code, short, err) = create("brief", "viewer", Some("1s"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = create("odd", "viewer", Some("soon"));
    assert_eq!(code, 1);
    assert!(err.contains("expires: `soon` is not a span like 7d, 12h, 30m or 45s (or `never`)"), "{err}");

    let brief = outpost_client::Client::new(&c.url(), short.trim(), None, Duration::from_secs(10)).unwrap();
    brief.get::<Value>("/api/v1/devices").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let refused = brief.get::<Value>("/api/v1/devices").unwrap_err();
    assert_eq!(refused.status(), Some(401), "{refused}");
    assert!(refused.to_string().contains("token `brief` expired at 20"), "{refused}");

    let (code, list, err) = c.ctl(&["token", "list"]);
    assert_eq!(code, 0, "{err}");
    let line = |name: &str| {
        list.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{list}")).to_owned()
    };
    assert!(list.starts_with("NAME") && list.lines().next().unwrap().contains("EXPIRES"), "{list}");
    assert!(line("ops").contains(&in_90_days), "{list}");
    assert!(line("root2").contains("never"), "{list}");
    assert!(line("brief").contains("(expired)"), "{list}");
    assert!(!list.contains("odd"), "{list}");
    let (_, audit, _) = c.ctl(&["audit", "list", "--limit", "100"]);
    assert!(
        audit.lines().any(|l| l.contains("token.create") && l.contains("odd") && l.contains("not a span")),
        "{audit}"
    );
    assert!(
        audit.lines().any(|l| l.contains("token.create") && l.contains("ops") && l.contains("expires 20")),
        "{audit}"
    );
}

/// The UTC date (`YYYY-MM-DD`) `days` from now, as the coordinator prints it.
fn outpost_coordinator_utc_day(days: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let date = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{}", now + days * 86_400), "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&date.stdout).trim().to_owned()
}

/// The finding: no connection cap, no header-read or idle timeout, a body trickled a byte at a
/// time outlived every timeout, and 400 wrong tokens went through in 0.03 s. Now (with small
/// limits so the test is quick): connections past the cap are closed on arrival, idle and
/// half-sent requests are dropped after the header-read timeout, a trickled body gets 408 at
/// the request timeout, and an address that keeps failing authentication gets 429 — each
/// counted in `/metrics`.
#[test]
fn the_front_door_caps_connections_drops_slow_clients_and_throttles_guessing() {
    use std::io::Write;

    use outpost_tests::front::{closed_within, trickle};
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[
            ("OUTPOST_COORDINATOR_API__MAX_CONNECTIONS", "6"),
            ("OUTPOST_COORDINATOR_API__HEADER_READ_TIMEOUT_SECS", "2"),
            ("OUTPOST_COORDINATOR_API__REQUEST_TIMEOUT_SECS", "3"),
            ("OUTPOST_COORDINATOR_API__FAILED_AUTH_PER_MINUTE", "5"),
        ],
    );
    let connect = || outpost_tests::front::connect(c.addr);
    // Six idle connections fill the cap; a seventh is closed on arrival.
    let mut idle: Vec<_> = (0..6).map(|_| connect()).collect();
    let mut half = connect();
    half.write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_within(&mut half) < Duration::from_secs(1), "the seventh connection was kept");
    // Idle ones go after the header-read timeout (2 s), and a half-sent request head too.
    for s in &mut idle {
        let waited = closed_within(s);
        assert!(waited < Duration::from_secs(5), "an idle connection stayed {waited:?}");
    }
    let mut half = connect();
    half.write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\n").unwrap();
    let waited = closed_within(&mut half);
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5), "{waited:?}");

    // A body trickled a byte a second, with a valid token: 408 at the request timeout (3 s),
    // although every byte arrived within the per-read timeouts.
    let admin = std::fs::read_to_string(c.token_file()).unwrap();
    let head = format!(
        "POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        admin.trim()
    );
    let (answer, took) = trickle(c.addr, &head);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(6), "{took:?}");

    let metrics = String::from_utf8(c.client().get_bytes("/metrics").unwrap()).unwrap();
    let metric = outpost_tests::fleet::metric;
    assert!(metric(&metrics, "outpost_coordinator_api_connections_refused_total") >= 1.0, "{metrics}");
    assert!(metric(&metrics, "outpost_coordinator_api_request_timeouts_total") >= 1.0, "{metrics}");

    // Guessing tokens: five 401s, then 429 for everything from this address — the right token
    // included — while /healthz and /metrics still answer.
    let wrong = outpost_client::Client::new(&c.url(), "opa_guess", None, Duration::from_secs(10)).unwrap();
    for _ in 0..5 {
        assert_eq!(wrong.get::<Value>("/api/v1/devices").unwrap_err().status(), Some(401));
    }
    let throttled = wrong.get::<Value>("/api/v1/devices").unwrap_err();
    assert_eq!(throttled.status(), Some(429), "{throttled}");
    assert!(throttled.to_string().contains("too many failed authentications from 127.0.0.1"), "{throttled}");
    assert_eq!(c.client().get::<Value>("/api/v1/devices").unwrap_err().status(), Some(429));
    let metrics = String::from_utf8(c.client().get_bytes("/metrics").unwrap()).unwrap();
    assert!(
        outpost_tests::fleet::metric(
            &metrics,
            "outpost_coordinator_api_throttled_total{reason=\"failed_auth\"}"
        ) >= 2.0,
        "{metrics}"
    );
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The finding: the API read the whole body before it checked the token (three unauthenticated
/// 400 MB POSTs took the coordinator from 34 MB to 1.69 GB RSS), and every route, enrolment
/// included, took 512 MiB. Now a body is read only after its token checks out, and only
/// uploads may be large: each refusal below comes back at once, with 10 of the declared bytes
/// sent.
#[test]
fn the_api_checks_the_token_before_it_reads_a_body_and_only_uploads_are_large() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let admin = std::fs::read_to_string(c.token_file()).unwrap();
    let ask = |method_path: &str, token: Option<&str>, declared: u64| {
        let mut stream = std::net::TcpStream::connect(c.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {}\r\n", t.trim())).unwrap_or_default();
        let head = format!(
            "{method_path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(b"0123456789").unwrap();
        let mut answer = [0u8; 256];
        let n = stream
            .read(&mut answer)
            .unwrap_or_else(|e| panic!("{method_path}: no answer before the body was sent: {e}"));
        String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or_default().to_owned()
    };
    let big = 400_000_000;
    assert_eq!(ask("PUT /api/v1/models/bc/versions/1.0.0", None, big), "HTTP/1.1 401 Unauthorized");
    assert_eq!(ask("POST /api/v1/deployments", Some("opa_wrong"), big), "HTTP/1.1 401 Unauthorized");
    // Enrolment carries its token in the body: its body is capped small instead.
    assert_eq!(ask("POST /api/v1/enrol", None, big), "HTTP/1.1 413 Payload Too Large");
    // A valid token may send a JSON body up to 1 MiB, and a large one only to an upload route.
    assert_eq!(ask("POST /api/v1/deployments", Some(&admin), 2_000_000), "HTTP/1.1 413 Payload Too Large");
    let metrics = String::from_utf8(c.client().get_bytes("/metrics").unwrap()).unwrap();
    assert!(metrics.contains("outpost_coordinator_api_denied_total{status=\"401\"} 2"), "{metrics}");
}
