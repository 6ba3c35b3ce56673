//! Signed bundles end to end with the real binaries: `outpostctl key generate` and
//! `bundle create` build them from the committed fixture models, `outpost-agent import` installs
//! them with no network at all, and a serving agent swaps versions under load without failing a
//! request — and refuses every bundle that is tampered with, truncated, unsigned or signed by a
//! key it does not trust, serving on and saying why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outpost_tests::fleet::run;
use outpost_tests::{Agent, Load, breast_cancer_row, model, models_dir, run_agent};
use serde_json::{Value, json};

/// A signing key and a folder of bundles built with it.
struct Kit {
    dir: tempfile::TempDir,
    public_key: String,
}

impl Kit {
    fn new() -> Kit {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("release.pk8");
        let (code, out, err) = run("outpostctl", &["key", "generate", key.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        Kit { dir, public_key: out.trim().to_owned() }
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("release.pk8")
    }

    /// Builds `name@version` from fixture `stem`, signed by `key` (or unsigned).
    fn bundle_signed_by(&self, stem: &str, name: &str, version: &str, key: Option<&Path>) -> PathBuf {
        let signer =
            key.and_then(|k| k.file_stem()).map_or("unsigned".into(), |s| s.to_string_lossy().into_owned());
        let out = self.dir.path().join(format!("{name}-{version}-{signer}.bundle"));
        let baseline = models_dir().join("breast_cancer_holdout.csv");
        let model_path = model(stem);
        let mut args = vec![
            "bundle",
            "create",
            model_path.to_str().unwrap(),
            "--name",
            name,
            "--version",
            version,
            "--baseline",
            baseline.to_str().unwrap(),
            "--label",
            "label",
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(key) = key {
            args.extend(["--key", key.to_str().unwrap()]);
        }
        let (code, _, err) = run("outpostctl", &args);
        assert_eq!(code, 0, "bundle create failed: {err}");
        out
    }

    fn bundle(&self, stem: &str, name: &str, version: &str) -> PathBuf {
        self.bundle_signed_by(stem, name, version, Some(&self.key()))
    }

    /// An agent config trusting this kit's key.
    fn agent_config(&self) -> PathBuf {
        let path = self.dir.path().join("agent.toml");
        std::fs::write(&path, format!("[registry]\ntrusted_keys = [\"{}\"]\n", self.public_key)).unwrap();
        path
    }
}

fn import(kit: &Kit, data_dir: &Path, bundle: &Path, activate: bool) -> (i32, String, String) {
    let config = kit.agent_config();
    let mut args = vec![
        "import",
        bundle.to_str().unwrap(),
        "-c",
        config.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    if activate {
        args.push("--activate");
    }
    run_agent(&args)
}

fn start_agent(kit: &Kit, data_dir: &Path) -> Agent {
    let config = kit.agent_config();
    Agent::builder()
        .data_dir(data_dir)
        .args(&["-c", config.to_str().unwrap()])
        .env("OUTPOST_TELEMETRY__ENABLED", "false")
        .start()
}

async fn serving_version(agent: &Agent) -> Value {
    let (status, body) = agent.get("/v2/models/bc").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn wait_for_version(agent: &Agent, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = serving_version(agent).await;
        if body["versions"] == json!([version]) && body["state"] == "ready" {
            return;
        }
        assert!(Instant::now() < deadline, "bc never served {version}: {body}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_fails_no_request_and_rollback_works_offline() {
    let kit = Kit::new();
    let v1 = kit.bundle("breast_cancer-1.0.0", "bc", "1.0.0");
    let v2 = kit.bundle("breast_cancer-1.1.0", "bc", "1.1.0");
    let data = tempfile::tempdir().unwrap();

    // Air-gapped: installed from a file before the agent ever ran, no network involved.
    let (code, out, err) = import(&kit, data.path(), &v1, true);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("installed bc@1.0.0") && out.contains("activated bc@1.0.0"), "{out}");

    let mut agent = start_agent(&kit, data.path());
    agent.wait_ready(Duration::from_secs(60)).await;
    wait_for_version(&agent, "1.0.0").await;

    let load = Load::start(&agent, "bc", &breast_cancer_row(), 4);
    load.wait_seen("1.0.0").await;
    let (code, out, err) = import(&kit, data.path(), &v2, true);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("activated bc@1.1.0 (was 1.0.0)"), "{out}");
    load.wait_seen("1.1.0").await;
    let (code, out, err) = run_agent(&["rollback", "--data-dir", data.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "model bc: 1.1.0 -> 1.0.0");
    load.wait_seen("1.0.0").await;
    let ok = load.finish_expecting(&["1.0.0", "1.1.0", "1.0.0"]).await;
    assert!(ok >= 600, "only {ok} requests went through");
    assert!(agent.log().contains("model version swapped in"), "{}", agent.log());

    // Offline rollback: the agent is down, the store goes back, the restart serves that.
    let (code, _, err) = import(&kit, data.path(), &v2, true);
    assert_eq!(code, 0, "{err}");
    wait_for_version(&agent, "1.1.0").await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
    let (code, out, err) =
        run_agent(&["rollback", "--model", "bc", "--data-dir", data.path().to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "model bc: 1.1.0 -> 1.0.0"), "{err}");
    let agent = start_agent(&kit, data.path());
    agent.wait_ready(Duration::from_secs(60)).await;
    wait_for_version(&agent, "1.0.0").await;
    let (code, _, err) = run_agent(&["rollback", "--data-dir", data.path().to_str().unwrap()]);
    assert_eq!(code, 1, "rolled back with no earlier version on disk");
    assert!(err.contains("cannot go back 1 version(s)"), "{err}");
}

#[test]
fn an_old_bundle_file_cannot_take_a_device_back_but_an_explicit_rollback_can() {
    let kit = Kit::new();
    let v1 = kit.bundle("breast_cancer-1.0.0", "bc", "1.0.0");
    let v2 = kit.bundle("breast_cancer-1.1.0", "bc", "1.1.0");
    let data = tempfile::tempdir().unwrap();
    let active = || -> String {
        let state: Value =
            serde_json::from_slice(&std::fs::read(data.path().join("models/state.json")).unwrap()).unwrap();
        state["models"]["bc"]["active"].as_str().unwrap().to_owned()
    };
    for bundle in [&v1, &v2] {
        let (code, _, err) = import(&kit, data.path(), bundle, true);
        assert_eq!(code, 0, "{err}");
    }
    // The old USB stick: a validly signed 1.0.0, replayed after 1.1.0 was made current.
    let (code, _, err) = import(&kit, data.path(), &v1, true);
    assert_eq!(code, 3, "an older bundle was activated: {err}");
    assert!(err.contains("bc@1.0.0 is older than 1.1.0") && err.contains("outpost-agent rollback"), "{err}");
    assert_eq!(active(), "1.1.0");
    // Stored without activating is fine; the explicit local rollback goes back.
    assert_eq!(import(&kit, data.path(), &v1, false).0, 0);
    let (code, out, err) =
        run_agent(&["rollback", "--model", "bc", "--data-dir", data.path().to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "model bc: 1.1.0 -> 1.0.0"), "{err}");
    assert_eq!(active(), "1.0.0");
}

/// Flips the byte at `offset` of a copy of `bundle`.
fn flipped(bundle: &Path, offset: usize, out: &Path) -> PathBuf {
    let mut bytes = std::fs::read(bundle).unwrap();
    bytes[offset] ^= 0x01;
    std::fs::write(out, bytes).unwrap();
    out.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_tampered_truncated_unsigned_and_untrusted_bundles_and_serves_on() {
    let kit = Kit::new();
    let v1 = kit.bundle("breast_cancer-1.0.0", "bc", "1.0.0");
    let v2 = kit.bundle("breast_cancer-1.1.0", "bc", "1.1.0");
    let data = tempfile::tempdir().unwrap();
    assert_eq!(import(&kit, data.path(), &v1, true).0, 0);
    let agent = start_agent(&kit, data.path());
    agent.wait_ready(Duration::from_secs(60)).await;
    wait_for_version(&agent, "1.0.0").await;

    let bytes = std::fs::read(&v2).unwrap();
    let scratch = kit.dir.path();
    // The manifest's version text: "1.1.0" → "1.1.1" keeps the JSON valid; only the signature can tell.
    let at = bytes.windows(18).position(|w| w == b"\"version\": \"1.1.0\"").unwrap() + 16;
    let stranger = scratch.join("stranger.pk8");
    assert_eq!(run("outpostctl", &["key", "generate", stranger.to_str().unwrap()]).0, 0);
    let untrusted = kit.bundle_signed_by("breast_cancer-1.1.0", "bc", "1.1.0", Some(&stranger));
    let stranger_id = run("outpostctl", &["key", "show", stranger.to_str().unwrap()]).2;
    let stranger_id = stranger_id.trim().trim_start_matches("key id ").to_owned();
    let truncated = scratch.join("truncated.bundle");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let cases: Vec<(&str, PathBuf, String)> = vec![
        (
            "flipped model byte",
            flipped(&v2, bytes.len() - 10, &scratch.join("model.bundle")),
            "the model was altered".into(),
        ),
        (
            "flipped manifest byte",
            flipped(&v2, at, &scratch.join("manifest.bundle")),
            "does not verify".into(),
        ),
        ("truncated download", truncated, "truncated".into()),
        ("unsigned", kit.bundle_signed_by("breast_cancer-1.1.0", "bc", "1.1.0", None), "unsigned".into()),
        ("untrusted key", untrusted, format!("untrusted key(s) {stranger_id}")),
    ];
    for (what, file, expected) in &cases {
        let (code, _, err) = import(&kit, data.path(), file, true);
        assert_eq!(code, 3, "{what}: import did not refuse: {err}");
        assert!(err.contains(expected.as_str()), "{what}: error does not say `{expected}`: {err}");
    }
    assert_eq!(serving_version(&agent).await["versions"], json!(["1.0.0"]));

    // Tampering on disk, after a valid install: the agent verifies again before swapping.
    assert_eq!(import(&kit, data.path(), &v2, false).0, 0);
    let stored = data.path().join("models/bundles/bc/1.1.0.bundle");
    let mut on_disk = std::fs::read(&stored).unwrap();
    let last = on_disk.len() - 10;
    on_disk[last] ^= 0x01;
    std::fs::write(&stored, on_disk).unwrap();
    let state_path = data.path().join("models/state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["generation"] = json!(state["generation"].as_u64().unwrap() + 1);
    state["models"]["bc"]["active"] = json!("1.1.0");
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = serving_version(&agent).await;
        if body.get("refused").is_some() {
            break body;
        }
        assert!(Instant::now() < deadline, "agent never reported the refusal: {body}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((&body["versions"], body["state"].as_str()), (&json!(["1.0.0"]), Some("ready")), "{body}");
    // Encrypted at rest (the default), the flipped byte fails authentication before the bundle's
    // own hashes are even reached.
    assert!(body["refused"].as_str().unwrap().contains("1.1.0: installed bundle"), "{body}");
    assert!(body["refused"].as_str().unwrap().contains("failed authentication"), "{body}");
    let (status, _) = agent.post_json("/v2/models/bc/infer", &breast_cancer_row()).await;
    assert_eq!(status, 200, "the old version stopped serving");
    assert!(agent.log().contains("version refused; the last good version serves"), "{}", agent.log());
    assert!(agent.metrics_text().await.contains("outpost_agent_model_refusals_total{model=\"bc\"} 1"));
    // The store points at what serves again, so a restart serves 1.0.0 too.
    let state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    assert_eq!(state["models"]["bc"]["active"], "1.0.0", "{state}");

    // Killed, and the active bundle broken on disk meanwhile: the restart quarantines it and
    // serves the newest earlier version that verifies.
    let mut agent = agent;
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.wait_exit(Duration::from_secs(10));
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["generation"] = json!(state["generation"].as_u64().unwrap() + 1);
    state["models"]["bc"]["active"] = json!("1.1.0");
    state["models"]["bc"]["history"] = json!(["1.0.0"]);
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let agent = start_agent(&kit, data.path());
    agent.wait_ready(Duration::from_secs(60)).await;
    wait_for_version(&agent, "1.0.0").await;
    // The start-up repair found it first: the damaged bundle is quarantined, 1.0.0 active.
    assert!(agent.log().contains("bc: active 1.1.0 was quarantined; serving 1.0.0"), "{}", agent.log());
}

/// The finding: `..` as a model name was accepted by `bundle create`, the registry and
/// `outpost-agent import --activate`, which stored the bundle one directory above its own and
/// served it as `/v2/models/..`. One name grammar now refuses it at each of them, naming the
/// rule, and nothing is written.
#[test]
fn model_names_that_could_leave_their_directory_are_refused_everywhere() {
    use outpost_shared::bundle::Bundle;
    use outpost_shared::protocol::keys::SigningKey;
    let kit = Kit::new();
    let rule = "must start with a letter or digit";
    for name in ["..", ".", ".hidden", "a/b", "a\u{1b}b"] {
        let out = kit.dir.path().join("refused.bundle");
        let (code, _, err) =
            outpost_tests::fleet::bundle_create("breast_cancer-1.0.0", name, "1.0.0", None, &out);
        assert_ne!(code, 0, "bundle create accepted {name:?}");
        assert!(err.contains(rule) && !err.contains('\u{1b}'), "{name:?}: {err}");
        assert!(!out.exists());
    }

    // A bundle crafted past the CLI: a good one with its manifest's name rewritten, re-signed.
    let good = kit.bundle("breast_cancer-1.0.0", "bc", "1.0.0");
    let mut crafted = Bundle::parse(&std::fs::read(good).unwrap()).unwrap();
    let manifest = String::from_utf8(crafted.manifest_bytes.clone()).unwrap();
    let renamed = manifest.replacen("\"name\": \"bc\"", "\"name\": \"..\"", 1);
    assert_ne!(renamed, manifest, "the manifest names the model as expected");
    crafted.manifest_bytes = renamed.into_bytes();
    crafted.signatures.clear();
    crafted.sign(&SigningKey::from_pkcs8(&std::fs::read(kit.key()).unwrap()).unwrap()).unwrap();
    let crafted_path = kit.dir.path().join("crafted.bundle");
    std::fs::write(&crafted_path, crafted.to_bytes()).unwrap();

    // The agent's import refuses it and writes nothing (the escape would have been
    // `models/bundles/../1.0.0.bundle`).
    let data = tempfile::tempdir().unwrap();
    let (code, _, err) = import(&kit, data.path(), &crafted_path, true);
    assert_ne!(code, 0, "import accepted a bundle named `..`");
    assert!(err.contains("model name `..`") && err.contains(rule), "{err}");
    assert!(!data.path().join("models/1.0.0.bundle").exists());

    // The registry refuses the same bytes (400, the rule named).
    let coordinator_dir = kit.dir.path().join("coordinator");
    let (c, _) = outpost_tests::fleet::Coordinator::start_embedded(&coordinator_dir);
    let refused = c
        .client()
        .put_bytes::<Value>(
            "/api/v1/models/%2E%2E/versions/1.0.0",
            "application/octet-stream",
            &crafted.to_bytes(),
            &mut |_, _| {},
        )
        .unwrap_err();
    assert_eq!(refused.status(), Some(400), "{refused}");
    assert!(refused.to_string().contains(rule), "{refused}");
    assert!(!std::fs::read_dir(coordinator_dir.join("artifacts")).is_ok_and(|mut d| d.next().is_some()));
}

/// Flips a byte every 97 in the second half of the file at `path`, in place (a worn card).
fn wear(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let half = bytes.len() / 2;
    for i in (half..bytes.len()).step_by(97) {
        bytes[i] ^= 0xA5;
    }
    std::fs::write(path, bytes).unwrap();
}

/// The finding: a damaged model store stopped the agent serving its models. Now, with the
/// agent down, a worn card damages the active bundle and `state.json`: at start the agent
/// restores the state from its copy, moves the damaged bundle to `models/quarantine/`, serves
/// the newest earlier version that verifies, and counts and logs what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_model_store_is_repaired_at_start_and_a_good_version_serves() {
    let kit = Kit::new();
    let data = tempfile::tempdir().unwrap();
    for (stem, version) in [("breast_cancer-1.0.0", "1.0.0"), ("breast_cancer-1.1.0", "1.1.0")] {
        let (code, _, err) = import(&kit, data.path(), &kit.bundle(stem, "bc", version), true);
        assert_eq!(code, 0, "{err}");
    }
    let models = data.path().join("models");
    wear(&models.join("bundles/bc/1.1.0.bundle"));
    wear(&models.join("state.json"));

    let mut agent = start_agent(&kit, data.path());
    agent.wait_ready(Duration::from_secs(60)).await;
    wait_for_version(&agent, "1.0.0").await;
    let (status, body) = agent.post_json("/v2/models/bc/infer", &breast_cancer_row()).await;
    assert_eq!(status, 200, "{body}");
    let log = agent.log();
    assert!(log.contains("restored from state.json.bak"), "{log}");
    assert!(log.contains("bundle bc@1.1.0 no longer verifies"), "{log}");
    assert!(log.contains("serving 1.0.0"), "{log}");
    let text = agent.metrics_text().await;
    assert_eq!(
        outpost_tests::fleet::metric(&text, "outpost_agent_storage_quarantined_total{store=\"model_store\"}"),
        2.0,
        "state.json and the bundle: {text}"
    );
    let quarantined: Vec<String> = std::fs::read_dir(models.join("quarantine/bc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(quarantined.iter().any(|n| n.starts_with("1.1.0.bundle-")), "{quarantined:?}");
    // Healthy now: a second start repairs nothing.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
    let agent = start_agent(&kit, data.path());
    agent.wait_ready(Duration::from_secs(60)).await;
    wait_for_version(&agent, "1.0.0").await;
    assert!(!agent.log().contains("model store damaged"), "{}", agent.log());
}
