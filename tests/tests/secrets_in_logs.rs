//! Nothing secret reaches a log: a coordinator (HTTPS API, embedded broker) and an agent run
//! through enrolment, push, validate, deploy, serving, feedback and key rotation at `debug`
//! level, and then both logs — and everything `outpostctl` and `outpost-agent` printed — are
//! searched for every secret they handled: the admin and enrolment tokens, the CA key, the release
//! and online keys (before and after a trust-root rotation), the root key, the device's signing
//! and TLS keys, and the storage key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use outpost_tests::fleet::{Coordinator, enroll, ok, push, release_key, run, validate, wait_serving};
use outpost_tests::{Agent, breast_cancer_row};

/// The ways a key file's secret could be written out: its text lines (PEM bodies, hex), and the
/// hex and base64 of its raw bytes.
fn forms(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    if let Ok(text) = std::str::from_utf8(&bytes) {
        out.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
                .map(str::to_owned),
        );
    }
    out.push(hex::encode(&bytes));
    out.push(base64_of(&bytes));
    out
}

fn base64_of(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_reaches_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[("OUTPOST_COORDINATOR_LOG__LEVEL", "debug,rumqttd=warn,hyper=info,h2=info")],
    );
    let mut printed = String::new();
    let token = c.token("site=a");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let device = enroll(&agent_dir, &c, &token).unwrap();
    let config = agent_dir.join("agent.toml");
    std::fs::write(&config, format!("[registry]\ntrusted_keys = [\"{}\"]\n", release_key(&c))).unwrap();
    let mut agent = Agent::builder()
        .data_dir(&agent_dir)
        .args(&["-c", config.to_str().unwrap()])
        .env("OUTPOST_TELEMETRY__INTERVAL_SECS", "1")
        .env("OUTPOST_LOG__LEVEL", "debug,hyper=info,rustls=info")
        .start();
    for (what, result) in [
        ("push", push(&c, "breast_cancer-1.0.0", "1.0.0")),
        ("devices", c.ctl(&["devices", "-o", "wide"])),
        ("token list", c.ctl(&["token", "list"])),
        ("audit", c.ctl(&["audit", "list"])),
    ] {
        printed.push_str(&ok(result.clone(), what));
        printed.push_str(&result.2);
    }
    assert_eq!(validate(&c, "1.0.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.0.0", "--device", &device]), "deploy");
    wait_serving(&agent, "1.0.0").await;
    let (status, body) = agent.post_json("/v2/models/bc/infer", &breast_cancer_row()).await;
    assert_eq!(status, 200, "{body}");
    let id = body["parameters"]["prediction_ids"][0].as_u64().unwrap();
    let (status, _) =
        agent.post_json("/v1/feedback", &serde_json::json!({"prediction_id": id, "label": 1})).await;
    assert_eq!(status, 200);
    // A trust-root rotation of the online key (the coordinator signs with its root key).
    let online_before = std::fs::read(c.data_dir.join("pki/online.pk8")).unwrap();
    let draft = dir.path().join("root-2.json");
    printed.push_str(&ok(
        c.ctl(&["root", "draft", "--new-online-key", "--out", draft.to_str().unwrap()]),
        "draft",
    ));
    printed.push_str(&ok(c.ctl(&["root", "push", draft.to_str().unwrap()]), "root push"));
    printed.push_str(&ok(c.ctl(&["root", "show"]), "root show"));
    let retired = dir.path().join("online-retired.pk8");
    std::fs::write(&retired, online_before).unwrap();
    let (_, out, err) = run("outpost-agent", &["keys", "rotate", "--data-dir", agent_dir.to_str().unwrap()]);
    printed.push_str(&out);
    printed.push_str(&err);
    let (_, out, err) = run("outpost-agent", &["keys", "status", "--data-dir", agent_dir.to_str().unwrap()]);
    printed.push_str(&out);
    printed.push_str(&err);
    c.wait_device(&device, Duration::from_secs(30), |v| v["counts"]["labels"].as_u64() > Some(0)).await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).success());

    let logs = format!("{}\n{}\n{printed}", c.log(), agent.log());
    assert!(logs.lines().count() > 50, "too little was logged to mean anything:\n{logs}");
    assert!(logs.contains("DEBUG") || logs.contains("\"level\":\"DEBUG\""), "not at debug level:\n{logs}");
    let admin = std::fs::read_to_string(c.token_file()).unwrap();
    let mut secrets: Vec<(String, String)> =
        vec![("admin token".into(), admin.trim().to_owned()), ("enrolment token".into(), token.clone())];
    for (what, path) in [
        ("CA key", c.data_dir.join("pki/ca.key")),
        ("release key", c.data_dir.join("pki/signing.pk8")),
        ("online key", c.data_dir.join("pki/online.pk8")),
        ("retired online key", retired),
        ("root key", c.data_dir.join("pki/root.pk8")),
        ("device signing key", agent_dir.join("identity/device.key")),
        ("device TLS key", agent_dir.join("identity/tls.key")),
        ("storage key", agent_dir.join("identity/storage.key")),
    ] {
        secrets.extend(forms(&path).into_iter().map(|form| (what.to_owned(), form)));
    }
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what}: too short to search for");
        // A 16-character stretch from its start, middle or end (where a key's seed sits, after the
        // PKCS#8 header every key shares) in a log is a leak.
        let n = secret.len();
        for probe in [&secret[..16], &secret[n / 2 - 8..n / 2 + 8], &secret[n - 16..]] {
            assert!(!logs.contains(probe), "the {what} reached a log or the CLI output ({probe})");
        }
    }
}
