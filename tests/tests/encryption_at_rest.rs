//! Encryption at rest, end to end with the real binaries: what a stolen or imaged card holds.
//!
//! - The prediction log, the outbox and installed bundles hold no input value and no model byte
//!   on disk (grepped for the request's values and the bundle's gzip stream) — and the same run
//!   with `encryption = "off"` does hold them, so the grep can fail.
//! - A wrong or missing key stops the start with exit 2 naming the key source, and changes no
//!   file; the same key from a systemd credential opens the same stores.
//! - `outpost-agent keys rotate` beside a serving agent: serving goes on, and every prediction
//!   from before and after the rotation (and after a restart) still joins its feedback;
//!   `keys rewrap` moves the keyring to a new key and the old one stops working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use outpost_tests::fleet::run;
use outpost_tests::{Agent, agent_bin, model, models_dir, run_agent};
use serde_json::{Value, json};

/// The request's input values: 30 × 1234.5678, easy to find as bytes on disk.
const MARKER: f32 = 1234.5678;

fn marker_bytes() -> Vec<u8> {
    MARKER.to_le_bytes().repeat(4)
}

fn marked_row() -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": vec![MARKER; 30]}]})
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// All bytes of the files under `dir`, concatenated.
fn bytes_under(dir: &Path) -> Vec<u8> {
    files_under(dir).iter().flat_map(|p| std::fs::read(p).unwrap()).collect()
}

/// A content hash of every file under `dir` (to show nothing was written).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let digest = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&p).unwrap());
            (p, hex::encode(digest.as_ref()))
        })
        .collect()
}

async fn predict(agent: &Agent, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let (status, body) = agent.post_json("/v2/models/bc/infer", &marked_row()).await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["parameters"]["prediction_ids"][0].as_u64().expect("a prediction id"));
    }
    ids
}

/// Feedback for every id; the outcome of each.
async fn feedback(agent: &Agent, ids: &[u64]) -> Vec<String> {
    let items: Vec<Value> = ids.iter().map(|id| json!({"prediction_id": id, "label": 1})).collect();
    let (status, body) = agent.post_json("/v1/feedback", &json!({"feedback": items})).await;
    assert_eq!(status, 200, "{body}");
    body["results"]
        .as_array()
        .or_else(|| body["items"].as_array())
        .unwrap_or_else(|| panic!("feedback answer without results: {body}"))
        .iter()
        .map(|r| r["result"].as_str().or_else(|| r.as_str()).unwrap_or("?").to_owned())
        .collect()
}

fn stop(agent: &mut Agent) {
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).success(), "{}", agent.log());
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// `outpost-agent serve` that is expected to stop at start: its exit code and stderr.
fn serve_once(config: &Path, data_dir: &Path, env: &[(&str, &str)], unset: &[&str]) -> (i32, String) {
    let mut command = Command::new(agent_bin());
    command
        .args(["serve", "-c", config.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--model", &format!("bc={}", model("breast_cancer-1.0.0").display())])
        .env("OUTPOST_DATA_DIR", data_dir)
        .env("OUTPOST_TELEMETRY__ENABLED", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    for k in unset {
        command.env_remove(k);
    }
    outpost_tests::refused_exit(
        command.spawn().unwrap(),
        Duration::from_secs(20),
        "the agent started although its key is wrong or missing",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_on_disk_hold_no_input_value_nor_model_byte() {
    let kit = tempfile::tempdir().unwrap();
    let key = kit.path().join("release.pk8");
    let (code, public_key, err) = run("outpostctl", &["key", "generate", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let bundle = kit.path().join("bc-1.0.0.bundle");
    let (code, _, err) = run(
        "outpostctl",
        &[
            "bundle",
            "create",
            model("breast_cancer-1.0.0").to_str().unwrap(),
            "--name",
            "bc",
            "--version",
            "1.0.0",
            "--baseline",
            models_dir().join("breast_cancer_holdout.csv").to_str().unwrap(),
            "--label",
            "label",
            "--key",
            key.to_str().unwrap(),
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let bundle_bytes = std::fs::read(&bundle).unwrap();
    // A stretch from the middle of the bundle's gzip stream: the model, as it travels.
    let model_stretch = bundle_bytes[bundle_bytes.len() / 2..bundle_bytes.len() / 2 + 64].to_vec();

    for mode in ["on", "off"] {
        let data = tempfile::tempdir().unwrap();
        let config = write_config(
            kit.path(),
            &format!(
                "[registry]\ntrusted_keys = [\"{}\"]\n[telemetry]\ninterval_secs = 1\n[encryption]\nmode = \"{mode}\"\n",
                public_key.trim()
            ),
        );
        let (code, out, err) = run_agent(&[
            "import",
            bundle.to_str().unwrap(),
            "--activate",
            "-c",
            config.to_str().unwrap(),
            "--data-dir",
            data.path().to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        if mode == "on" {
            // The first command to need the key makes it, and says what it protects.
            assert!(err.contains("made a key file") && err.contains("credential"), "{err}");
        }
        let mut agent =
            Agent::builder().data_dir(data.path()).args(&["-c", config.to_str().unwrap()]).start();
        agent.wait_ready(Duration::from_secs(60)).await;
        predict(&agent, 40).await;
        // Reports and prediction batches reach the outbox (not enrolled: they stay there).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = agent.metrics_text().await;
            let batched = metrics.lines().any(|l| {
                l.starts_with("outpost_agent_outbox_messages ")
                    && l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 3.0)
            });
            if batched {
                let want = if mode == "on" {
                    "outpost_agent_encryption_at_rest 1"
                } else {
                    "outpost_agent_encryption_at_rest 0"
                };
                assert!(metrics.contains(want), "{mode}: {want} missing from /metrics");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no telemetry in the outbox\n{}", agent.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop(&mut agent);

        let log = bytes_under(&data.path().join("predictions"));
        let outbox = bytes_under(&data.path().join("outbox"));
        let bundles = bytes_under(&data.path().join("models"));
        let found = (
            contains(&log, &marker_bytes()),
            contains(&outbox, &marker_bytes()),
            // A gzip stream in the clear starts a file with its magic; three bytes anywhere in
            // ciphertext would match by chance (about once in 16 MB).
            contains(&bundles, &model_stretch)
                || files_under(&data.path().join("models"))
                    .iter()
                    .any(|p| std::fs::read(p).unwrap().starts_with(&[0x1f, 0x8b, 0x08])),
        );
        match mode {
            "on" => {
                assert_eq!(
                    found,
                    (false, false, false),
                    "(log, outbox, bundles) hold plaintext with encryption on"
                );
            }
            _ => assert_eq!(
                found,
                (true, true, true),
                "the control run in the clear must show what the grep finds"
            ),
        }
        assert!(!files_under(data.path()).iter().any(|p| p.extension().is_some_and(|e| e == "part")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_key_stops_the_start_naming_its_source_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let key_a = hex::encode([0xA1u8; 32]);
    let key_b = hex::encode([0xB2u8; 32]);
    let config = write_config(conf.path(), "[encryption]\nkey = \"env:STORAGE_KEY_FOR_TEST\"\n");
    let mut agent = Agent::builder()
        .data_dir(data.path())
        .args(&["-c", config.to_str().unwrap()])
        .model("bc", &model("breast_cancer-1.0.0"))
        .env("STORAGE_KEY_FOR_TEST", &key_a)
        .env("OUTPOST_TELEMETRY__ENABLED", "false")
        .start();
    agent.wait_ready(Duration::from_secs(60)).await;
    let ids = predict(&agent, 10).await;
    stop(&mut agent);
    assert!(!agent.log().contains(&key_a), "the key reached the log");
    let before = snapshot(data.path());

    let (code, err) = serve_once(&config, data.path(), &[("STORAGE_KEY_FOR_TEST", &key_b)], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("env:STORAGE_KEY_FOR_TEST") && err.contains("is not the key that wrapped"),
        "the refusal names the source and the rule: {err}"
    );
    assert!(!err.contains(&key_b), "the key reached the log");
    let (code, err) = serve_once(&config, data.path(), &[], &["STORAGE_KEY_FOR_TEST"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("env:STORAGE_KEY_FOR_TEST") && err.contains("missing"), "{err}");
    assert_eq!(snapshot(data.path()), before, "a refused start changed files");

    // The same key as a systemd credential (what LoadCredentialEncrypted= hands the service).
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(credentials.path().join("outpost-storage-key"), format!("{key_a}\n")).unwrap();
    let config = write_config(conf.path(), "[encryption]\nkey = \"credential:outpost-storage-key\"\n");
    let mut agent = Agent::builder()
        .data_dir(data.path())
        .args(&["-c", config.to_str().unwrap()])
        .model("bc", &model("breast_cancer-1.0.0"))
        .env("CREDENTIALS_DIRECTORY", credentials.path().to_str().unwrap())
        .env("OUTPOST_TELEMETRY__ENABLED", "false")
        .start();
    agent.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(feedback(&agent, &ids).await, vec!["joined"; ids.len()], "{}", agent.log());
    stop(&mut agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_key_keeps_serving_and_every_record_readable() {
    let data = tempfile::tempdir().unwrap();
    let start = |data: &Path, extra: &[&str]| {
        let mut args = vec![];
        args.extend_from_slice(extra);
        Agent::builder()
            .data_dir(data)
            .args(&args)
            .model("bc", &model("breast_cancer-1.0.0"))
            .env("OUTPOST_TELEMETRY__ENABLED", "false")
            .start()
    };
    let mut agent = start(data.path(), &[]);
    agent.wait_ready(Duration::from_secs(60)).await;
    let before = predict(&agent, 20).await;

    let dir = data.path().to_str().unwrap();
    let (code, out, err) = run_agent(&["keys", "rotate", "--data-dir", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("new data key"), "{out}");
    // Serving goes on beside the rotation, and what was logged before still joins.
    let during = predict(&agent, 20).await;
    assert_eq!(feedback(&agent, &before).await, vec!["joined"; before.len()]);
    stop(&mut agent);

    let (code, out, err) = run_agent(&["keys", "status", "--data-dir", dir]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().filter(|l| l.ends_with("yes")).count(), 1, "{out}");
    assert_eq!(out.lines().skip_while(|l| !l.starts_with("DATA KEY")).skip(1).count(), 2, "{out}");

    let mut agent = start(data.path(), &[]);
    agent.wait_ready(Duration::from_secs(60)).await;
    let after = predict(&agent, 20).await;
    let all: Vec<u64> = before.iter().chain(&during).chain(&after).copied().collect();
    assert_eq!(feedback(&agent, &all).await, vec!["joined"; all.len()], "{}", agent.log());
    stop(&mut agent);

    // A new key-encryption key: every data key re-wrapped; the old key no longer opens them.
    let conf = tempfile::tempdir().unwrap();
    let new_key = conf.path().join("new.key");
    std::fs::write(&new_key, hex::encode([0x5Au8; 32])).unwrap();
    let to = format!("file:{}", new_key.display());
    let (code, out, err) = run_agent(&["keys", "rewrap", "--to", &to, "--data-dir", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&to), "{out}");
    let old_config = write_config(conf.path(), "");
    let (code, err) = serve_once(&old_config, data.path(), &[], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("storage.key") && err.contains("is not the key that wrapped"), "{err}");
    let config = write_config(conf.path(), &format!("[encryption]\nkey = \"{to}\"\n"));
    let mut agent = start(data.path(), &["-c", config.to_str().unwrap()]);
    agent.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(feedback(&agent, &all).await, vec!["joined"; all.len()], "{}", agent.log());
    stop(&mut agent);
}
