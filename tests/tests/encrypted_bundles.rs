//! Bundles encrypted to a fleet key, with the real binaries: `outpostctl model push
//! --encrypt-with` builds and checks the model on the operator's machine and pushes it sealed;
//! the registry stores, exports and deploys it without the plaintext (no window of the ONNX file
//! is in what it holds or hands out) and validates it only where a key is; a device holding the
//! key serves it, one without refuses it naming the key, and the coordinator hears why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use outpost_tests::fleet::{Coordinator, ok, push_with, served, start_agent, validate, wait_serving};
use outpost_tests::{model, models_dir};
use serde_json::Value;

const FLEET_KEY: &str = "f1ee7f1ee7f1ee7f1ee7f1ee7f1ee7f1ee7f1ee7f1ee7f1ee7f1ee7f1ee7f1ee";

/// Whether any 32-byte window of `secret` appears in `haystack`.
fn leaks(haystack: &[u8], secret: &[u8]) -> bool {
    secret.chunks(32).filter(|c| c.len() == 32).any(|c| haystack.windows(32).any(|w| w == c))
}

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.extend(std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    out
}

fn push_encrypted(c: &Coordinator, key_spec: &str) -> (i32, String, String) {
    push_with(c, "breast_cancer-1.0.0", "1.0.0", &["--encrypt-with", key_spec])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_bundle_is_stored_and_shipped_sealed_and_serves_only_where_the_key_is() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("fleet.key");
    std::fs::write(&key_file, FLEET_KEY).unwrap();
    let key_spec = format!("file:{}", key_file.display());
    let onnx = std::fs::read(model("breast_cancer-1.0.0")).unwrap();

    // A coordinator without the key stores it, but cannot validate it: the gate runs where the key is.
    let (keyless, _) = Coordinator::start_embedded(&dir.path().join("keyless"));
    let out = ok(push_encrypted(&keyless, &key_spec), "push to the keyless coordinator");
    assert!(out.contains("bc@1.0.0 registered"), "{out}");
    let (code, _, err) = keyless.ctl(&[
        "model",
        "validate",
        "bc@1.0.0",
        "--dataset",
        models_dir().join("breast_cancer_validation.csv").to_str().unwrap(),
        "--label",
        "label",
    ]);
    assert_ne!(code, 0, "validated without the key");
    assert!(err.contains("is encrypted to bundle key") && err.contains("[registry] bundle_keys"), "{err}");
    drop(keyless);

    // A coordinator with the key (a configured validator key) validates and deploys it.
    let config = dir.path().join("coordinator.toml");
    std::fs::write(&config, format!("[registry]\nbundle_keys = [\"{key_spec}\"]\n")).unwrap();
    let (c, _) = Coordinator::start_embedded_configured(&dir.path().join("coordinator"), &config);
    let out = ok(push_encrypted(&c, &key_spec), "push");
    assert!(out.contains("registered"), "{out}");
    let shown: Value =
        serde_json::from_str(&ok(c.ctl(&["model", "show", "bc@1.0.0", "-o", "json"]), "show")).unwrap();
    let key_id = shown["manifest"]["encrypted_to"].as_str().unwrap().to_owned();
    assert_eq!(key_id.len(), 16, "{shown}");
    assert!(shown["evidence"].as_str().unwrap().contains("encrypted to bundle key"), "{shown}");
    let exported = dir.path().join("bc.bundle");
    ok(c.ctl(&["bundle", "export", "bc@1.0.0", exported.to_str().unwrap()]), "export");
    let exported_bytes = std::fs::read(&exported).unwrap();
    assert!(!leaks(&exported_bytes, &onnx), "the exported bundle holds the plaintext");
    let inspect = ok(c.ctl(&["bundle", "inspect", exported.to_str().unwrap()]), "inspect");
    assert!(inspect.contains(&format!("to bundle key {key_id}")), "{inspect}");
    assert_eq!(validate(&c, "1.0.0").0, 0);

    // Two devices: one holds the key (with encryption at rest off, so what its store holds is
    // what it was sent), one does not.
    let extra = format!("bundle_keys = [\"{key_spec}\"]\n[encryption]\nmode = \"off\"\n");
    let (holder, holder_id) = start_agent(&c, &dir.path().join("holder"), "site=a", &[], &extra);
    let (stranger, stranger_id) = start_agent(&c, &dir.path().join("stranger"), "site=a", &[], "");
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy");
    wait_serving(&holder, "1.0.0").await;
    let (status, body) = holder.post_json("/v2/models/bc/infer", &outpost_tests::breast_cancer_row()).await;
    assert_eq!(status, 200, "{body}");
    let needle = format!("is encrypted to bundle key {key_id}, which this device does not hold");
    let deadline = Instant::now() + Duration::from_secs(45);
    while !stranger.log().contains(&needle) {
        assert!(Instant::now() < deadline, "the stranger never refused it:\n{}", stranger.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served(&stranger).await, None);
    c.wait_device(&stranger_id, Duration::from_secs(45), |d| {
        d["recent_events"].to_string().contains(&needle)
    })
    .await;
    // The device's store and an air-gap folder for it hold the model sealed, never in the clear.
    let bundles = all_bytes(&dir.path().join("holder/models"));
    assert!(bundles.windows(17).any(|w| w == b"chacha20-poly1305"), "no encrypted bundle in the store");
    assert!(!leaks(&bundles, &onnx), "the device's store holds the plaintext model");
    let folder = dir.path().join("usb");
    ok(c.ctl(&["device", "export-desired", &holder_id, folder.to_str().unwrap()]), "export-desired");
    assert!(!leaks(&all_bytes(&folder), &onnx), "the air-gap folder holds the plaintext model");
}
