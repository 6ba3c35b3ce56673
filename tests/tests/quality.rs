//! Ground truth end to end with the real binaries: three agents (sites a, b, c) serve two
//! versions of a classifier, answer the validation set's rows of their site, and post the true
//! labels to `POST /v1/feedback`; the coordinator's quality view per version and per site must
//! equal scikit-learn's metrics on the same rows (`breast_cancer_validation.expected.json`),
//! and labels for predictions an agent never made are counted, not lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nix::sys::signal::Signal;

use outpost_tests::fleet::{Coordinator, enrol_with_config, reporting_agent};
use outpost_tests::{model, models_dir, validation_rows};
use serde_json::{Value, json};

const VERSIONS: [&str; 2] = ["1.0.0", "2.0.0-bad"];

fn assert_metrics_equal(found: &Value, expected: &Value, what: &str) {
    for key in ["rows", "accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"] {
        let (f, e) = (found[key].as_f64().unwrap(), expected[key].as_f64().unwrap());
        assert!((f - e).abs() < 1e-12, "{what} {key}: coordinator {f}, scikit-learn {e}");
    }
    let classes = expected["classes"].as_object().unwrap();
    assert_eq!(found["classes"].as_object().unwrap().len(), classes.len(), "{what}: classes");
    for (class, e) in classes {
        for key in ["precision", "recall", "f1", "support"] {
            let (f, e) = (found["classes"][class][key].as_f64().unwrap(), e[key].as_f64().unwrap());
            assert!((f - e).abs() < 1e-12, "{what} class {class} {key}: coordinator {f}, scikit-learn {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_traffic_gives_the_offline_metrics_per_version_and_site() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let rows = validation_rows();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(models_dir().join("breast_cancer_validation.expected.json")).unwrap(),
    )
    .unwrap();

    let mut agents = Vec::new();
    for site in ["a", "b", "c"] {
        let data = dir.path().join(format!("agent-{site}"));
        let models: String = VERSIONS
            .iter()
            .map(|v| {
                format!(
                    "[[models]]\nname = \"bc\"\npath = \"{}\"\n",
                    model(&format!("breast_cancer-{v}")).display()
                )
            })
            .collect();
        let (device, config) = enrol_with_config(&c, &data, &format!("site={site}"), &models);
        let agent = reporting_agent(&data, &config);
        agents.push((site, device, agent));
    }

    for (site, _, agent) in &agents {
        agent.wait_ready(Duration::from_secs(60)).await;
        let mine: Vec<&(String, Vec<f64>, i64)> = rows.iter().filter(|r| r.0 == *site).collect();
        let mut feedback = Vec::new();
        for version in VERSIONS {
            // One request per row, as a client would send them.
            for (_, features, label) in &mine {
                let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": features}]});
                let (status, answer) =
                    agent.post_json(&format!("/v2/models/bc/versions/{version}/infer"), &body).await;
                assert_eq!(status, 200, "{answer}");
                let id = answer["parameters"]["prediction_ids"][0].as_u64().unwrap();
                feedback.push(json!({"prediction_id": id, "label": label}));
            }
        }
        // The labels arrive later, in one batch, with one for an id this agent never issued.
        feedback.push(json!({"prediction_id": 9_999_999, "label": 1}));
        let (status, answer) = agent.post_json("/v1/feedback", &json!({ "feedback": feedback })).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            (answer["joined"].as_u64(), answer["unknown"].as_u64()),
            (Some(2 * mine.len() as u64), Some(1))
        );
        assert_eq!(answer["results"].as_array().unwrap().last().unwrap(), "unknown");
        // Bad feedback is refused by name.
        let (status, answer) =
            agent.post_json("/v1/feedback", &json!({"prediction_id": 1, "label": "cat"})).await;
        assert_eq!(status, 400);
        assert!(answer["error"].as_str().unwrap().contains("integer class id"), "{answer}");
        let metrics = agent.metrics_text().await;
        assert!(metrics.contains("outpost_agent_feedback_total{result=\"unknown\"} 1"), "{metrics}");
    }

    // Every label reached the coordinator.
    for (_, device, _) in &agents {
        c.wait_device(device, Duration::from_secs(30), |v| {
            v["counts"]["labels"].as_u64() == Some(76) && v["counts"]["labels_unknown"].as_u64() == Some(1)
        })
        .await;
    }
    let (code, out, err) = c.ctl(&["--json", "model", "quality", "bc", "--by", "site"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    for version in VERSIONS {
        let found = &report["versions"][version];
        let wanted = &expected["versions"][version];
        assert_eq!(found["labelled"].as_u64(), Some(114), "{found}");
        assert_metrics_equal(&found["metrics"], wanted, version);
        for site in ["a", "b", "c"] {
            assert_metrics_equal(
                &found["segments"][site],
                &wanted["segments"][site],
                &format!("{version} site {site}"),
            );
        }
    }
    // The same rows, exported for retraining: features as the agents logged them, with labels.
    for (_, device, _) in &agents {
        c.wait_device(device, Duration::from_secs(30), |v| v["counts"]["predictions"].as_u64() == Some(76))
            .await;
    }
    let csv_path = dir.path().join("export.csv");
    let (code, out, err) =
        c.ctl(&["data", "export", "--model", "bc", "--labelled-only", "--out", csv_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("228 predictions (228 labelled)"), "{out}");
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.len(), 4 + 30 + 2, "{header:?}");
    assert_eq!((header[4], header[33], header[35]), ("f0", "f29", "label"));
    let mut exported: Vec<(Vec<f32>, i64)> = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[4..34].iter().map(|v| v.parse().unwrap()).collect(), cells[35].parse().unwrap())
        })
        .collect();
    let mut sent: Vec<(Vec<f32>, i64)> = VERSIONS
        .iter()
        .flat_map(|_| rows.iter().map(|(_, f, l)| (f.iter().map(|v| *v as f32).collect(), *l)))
        .collect();
    let order = |a: &(Vec<f32>, i64), b: &(Vec<f32>, i64)| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1));
    exported.sort_by(order);
    sent.sort_by(order);
    assert!(exported == sent, "the export holds other rows than the agents served");

    // The same, for people.
    let (code, out, err) = c.ctl(&["model", "quality", "bc", "--by", "site", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bc@2.0.0-bad: 114 labels"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("site=b ")), "{out}");
}

/// Feedback envelopes the coordinator stored for `view`'s device (what no other kind explains).
fn feedback_envelopes(view: &Value) -> u64 {
    let c = &view["counts"];
    let other: u64 = ["reports", "prediction_batches", "events", "states", "drift_reports"]
        .iter()
        .map(|k| c[k].as_u64().unwrap())
        .sum();
    c["envelopes"].as_u64().unwrap() - other
}

/// Serves `n` single-row predictions and posts each one's label in a request of its own, as
/// a client labelling as it goes does; returns when every answer said `joined`.
async fn label_one_by_one(agent: &outpost_tests::Agent, n: usize) {
    let rows = validation_rows();
    for (_, features, label) in rows.iter().cycle().take(n) {
        let body =
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": features}]});
        let (status, answer) = agent.post_json("/v2/models/bc/infer", &body).await;
        assert_eq!(status, 200, "{answer}");
        let id = answer["parameters"]["prediction_ids"][0].as_u64().unwrap();
        let (status, answer) =
            agent.post_json("/v1/feedback", &json!({"prediction_id": id, "label": label})).await;
        assert_eq!((status, answer["joined"].as_u64()), (200, Some(1)), "{answer}");
    }
}

/// One label per request used to cost one signed envelope each: the demo's traffic sent the
/// coordinator more than it could ingest on a busy machine, and the backlog grew for good.
/// Labels now leave together, one message a linger — and a stop (SIGTERM) sends what still
/// waits; with `durability = "sync"` an answered label survives a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_posted_one_per_request_travel_together_and_survive_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let served =
        format!("[[models]]\nname = \"bc\"\npath = \"{}\"\n", model("breast_cancer-1.0.0").display());

    // Default durability: 80 labels, one request each, then SIGTERM before the linger is over.
    let data = dir.path().join("batched");
    let (device, config) = enrol_with_config(&c, &data, "site=a", &served);
    let mut agent = reporting_agent(&data, &config);
    agent.wait_ready(Duration::from_secs(60)).await;
    label_one_by_one(&agent, 80).await;
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).success(), "{}", agent.log());
    let agent = reporting_agent(&data, &config);
    let view =
        c.wait_device(&device, Duration::from_secs(60), |v| v["counts"]["labels"].as_u64() == Some(80)).await;
    let envelopes = feedback_envelopes(&view);
    assert!((1..=10).contains(&envelopes), "80 labels took {envelopes} feedback envelopes: {view:#}");
    drop(agent);

    // `sync`: every label answered is in the outbox; SIGKILL right after the last answer.
    let data = dir.path().join("sync");
    let config = format!("{served}\n[prediction_log]\ndurability = \"sync\"\n");
    let (device, config) = enrol_with_config(&c, &data, "site=b", &config);
    let mut agent = reporting_agent(&data, &config);
    agent.wait_ready(Duration::from_secs(60)).await;
    label_one_by_one(&agent, 40).await;
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(10));
    let _agent = reporting_agent(&data, &config);
    c.wait_device(&device, Duration::from_secs(60), |v| v["counts"]["labels"].as_u64() == Some(40)).await;
}
