//! The retraining loop end to end: agents serve and log predictions, labels arrive, the
//! coordinator's hook (`tests/fixtures/retrain_logreg.py`, standard-library Python) retrains on
//! the exported data; the result is registered as the next patch version with its lineage,
//! passes the validation gate, and goes to the canary selector the policy names — and a run
//! that takes over 10× longer than the previous one raises an alert.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use outpost_tests::fleet::{Coordinator, enrol_with_config, ok, reporting_agent};
use outpost_tests::{model, models_dir, validation_rows};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retraining_hook_registers_validates_and_canaries_the_next_version() {
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/retrain_logreg.py");
    let sleep_file = dir.path().join("sleep-secs");
    std::fs::write(&sleep_file, "0").unwrap();
    let validation = models_dir().join("breast_cancer_validation.csv");
    let config = dir.path().join("coordinator.toml");
    let command = format!(
        "exec python3 {} --data \"$OUTPOST_DATA\" --out \"$OUTPOST_OUTPUT\" --version \"$OUTPOST_VERSION\" --name bc --sleep-secs $(cat {})",
        script.display(),
        sleep_file.display()
    );
    std::fs::write(
        &config,
        format!(
            "[alerts]\nevaluate_secs = 1\n\n[retraining]\ncheck_secs = 1\n\n[retraining.models.bc]\ncommand = [\"sh\", \"-c\", {}]\ntimeout_secs = 120\nmin_rows = 50\nvalidation_dataset = \"{}\"\nlabel = \"label\"\ncanary_selector = {{ site = \"a\" }}\n",
            serde_json::to_string(&command).unwrap(),
            validation.display()
        ),
    )
    .unwrap();
    let (c, _) = Coordinator::start_embedded_configured(&dir.path().join("coordinator"), &config);

    // Production is 1.0.0, validated on the validation set.
    let (path, baseline) = (model("breast_cancer-1.0.0"), models_dir().join("breast_cancer_holdout.csv"));
    ok(
        c.ctl(&[
            "model",
            "push",
            path.to_str().unwrap(),
            "--name",
            "bc",
            "--version",
            "1.0.0",
            "--baseline",
            baseline.to_str().unwrap(),
            "--label",
            "label",
        ]),
        "push",
    );
    ok(
        c.ctl(&[
            "model",
            "validate",
            "bc@1.0.0",
            "--dataset",
            validation.to_str().unwrap(),
            "--label",
            "label",
            "--p99-slack-ms",
            "10000",
        ]),
        "validate",
    );
    ok(c.ctl(&["model", "stage", "bc@1.0.0", "production"]), "stage");
    // Nothing to retrain on yet: the run is refused, saying why.
    let (code, out, _) = c.ctl(&["retrain", "run", "bc", "--wait"]);
    assert_eq!(code, 1);
    assert!(out.contains("refused") && out.contains("fewer than min_rows"), "{out}");

    // Two sites serve bc; site a's predictions get their labels.
    let mut devices = Vec::new();
    let mut agents = Vec::new();
    for site in ["a", "b"] {
        let data = dir.path().join(format!("agent-{site}"));
        let config = format!("[[models]]\nname = \"bc\"\npath = \"{}\"\n", path.display());
        let (device, agent_config) = enrol_with_config(&c, &data, &format!("site={site}"), &config);
        devices.push(device);
        let agent = reporting_agent(&data, &agent_config);
        agent.wait_ready(Duration::from_secs(60)).await;
        agents.push(agent);
    }
    let mut feedback = Vec::new();
    for (_, features, label) in validation_rows() {
        let body =
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": features}]});
        let (status, answer) = agents[0].post_json("/v2/models/bc/infer", &body).await;
        assert_eq!(status, 200, "{answer}");
        feedback.push(json!({"prediction_id": answer["parameters"]["prediction_ids"][0], "label": label}));
    }
    let (status, answer) = agents[0].post_json("/v1/feedback", &json!({ "feedback": feedback })).await;
    assert_eq!((status, answer["joined"].as_u64()), (200, Some(114)), "{answer}");
    c.wait_device(&devices[0], Duration::from_secs(30), |v| {
        v["counts"]["labels"].as_u64() == Some(114) && v["counts"]["predictions"].as_u64() == Some(114)
    })
    .await;

    // The hook runs: 1.0.1 is registered with lineage, validated, and canaried on site a only.
    let run: Value =
        serde_json::from_str(&ok(c.ctl(&["--json", "retrain", "run", "bc", "--wait"]), "retrain")).unwrap();
    assert_eq!(
        (run["status"].as_str(), run["version"].as_str()),
        (Some("succeeded"), Some("1.0.1")),
        "{run:#}"
    );
    assert_eq!((run["parent_version"].as_str(), run["data_rows"].as_u64()), (Some("1.0.0"), Some(114)));
    assert_eq!(run["validation_passed"], true, "{run:#}");
    assert_eq!(run["canary_devices"], json!([devices[0]]));
    let shown: Value =
        serde_json::from_str(&ok(c.ctl(&["--json", "model", "show", "bc@1.0.1"]), "show")).unwrap();
    assert_eq!(shown["stage"], "canary", "{shown:#}");
    assert_eq!(shown["manifest"]["training"]["parent_version"], "1.0.0", "{shown:#}");
    assert_eq!(shown["manifest"]["training"]["dataset_sha256"], run["dataset_sha256"], "{shown:#}");
    assert_eq!(shown["manifest"]["metadata"]["retraining.run"], run["id"], "{shown:#}");
    assert_eq!(shown["manifest"]["metadata"]["data.rows"], "114");
    let a = c.device(&devices[0]).await;
    let b = c.device(&devices[1]).await;
    assert_eq!(a["desired"]["models"]["bc"]["version"], "1.0.1", "{a:#}");
    assert!(b["desired"].is_null(), "site b is not in the canary: {b:#}");
    // Their model cards: the new one's lineage, and the fleet's quality of the parent per site.
    let card = ok(c.ctl(&["model", "card", "bc@1.0.1"]), "card");
    assert!(card.contains("- derived from: 1.0.0") && card.contains(run["id"].as_str().unwrap()), "{card}");
    let parent = ok(c.ctl(&["model", "card", "bc@1.0.0"]), "card");
    let fleet = &parent[parent.find("## In the fleet: quality").unwrap()..];
    assert!(fleet.contains("| all devices | 114 |") && fleet.contains("| site=a | 114 |"), "{fleet}");
    let (_, audit, _) = c.ctl(&["audit", "list"]);
    assert!(audit.contains("retraining") && audit.contains("bc@1.0.1"), "{audit}");

    // A run 10x slower than the previous one raises an alert (and still yields 1.0.2).
    let first_ms = run["command_ms"].as_u64().unwrap();
    let sleep = (first_ms * 11 / 1000 + 1).max(3);
    std::fs::write(&sleep_file, sleep.to_string()).unwrap();
    let slow: Value =
        serde_json::from_str(&ok(c.ctl(&["--json", "retrain", "run", "bc", "--wait"]), "slow run")).unwrap();
    assert_eq!((slow["version"].as_str(), slow["slow"].as_bool()), (Some("1.0.2"), Some(true)), "{slow:#}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = c.ctl(&["alerts"]);
        if out.lines().any(|l| {
            l.starts_with("OutpostRetrainingSlow") && l.contains(" FIRING ") && l.contains("model=bc")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no slow-retraining alert: {out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, history, _) = c.ctl(&["retrain", "history", "bc"]);
    assert_eq!(history.lines().filter(|l| l.starts_with("bc-")).count(), 3, "{history}");
}
