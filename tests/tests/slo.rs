//! Service-level objectives end to end: an agent serves two versions of a model, one slowed
//! down on purpose (`runtime.test_delay_ms`), some requests fail and some answers are labelled
//! wrong; the coordinator's `slo status` must show availability, latency and accuracy breached
//! with exactly the burn rates the traffic implies — computed fleet-wide from summed counts,
//! merged histograms and labels — and alert on them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use outpost_tests::fleet::{Coordinator, enrol_with_config, reporting_agent};
use outpost_tests::{breast_cancer_row, model};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_latency_breach_shows_with_the_right_burn_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[
            ("OUTPOST_COORDINATOR_ALERTS__EVALUATE_SECS", "1"),
            ("OUTPOST_COORDINATOR_ALERTS__SLO_BURN_RATE", "3"),
        ],
    );
    let data = dir.path().join("agent");
    let config = format!(
        "[runtime.test_delay_ms]\n\"bc@2.0.0-bad\" = 150\n\n[[models]]\nname = \"bc\"\npath = \"{}\"\n\n[[models]]\nname = \"bc\"\npath = \"{}\"\n",
        model("breast_cancer-1.0.0").display(),
        model("breast_cancer-2.0.0-bad").display()
    );
    let (device, config) = enrol_with_config(&c, &data, "site=a", &config);
    let agent = reporting_agent(&data, &config);
    agent.wait_ready(Duration::from_secs(60)).await;
    assert!(agent.log().contains("slowed down ON PURPOSE"), "the test-only delay is announced");

    let (code, _, err) = c.ctl(&[
        "slo",
        "set",
        "bc",
        "--availability",
        "99%",
        "--latency",
        "p95<40ms",
        "--accuracy",
        "90%",
        "--window",
        "1h",
    ]);
    assert_eq!(code, 0, "{err}");
    // Bad objectives are refused by name.
    let (code, _, err) = c.ctl(&["slo", "set", "bc", "--latency", "p95 under 40"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("p95<200ms"), "{err}");

    // 30 fast answers, 10 slow ones (150 ms), 4 refused inputs.
    let row = breast_cancer_row();
    let mut feedback = Vec::new();
    for (version, n) in [("1.0.0", 30), ("2.0.0-bad", 10)] {
        for _ in 0..n {
            let (status, body) =
                agent.post_json(&format!("/v2/models/bc/versions/{version}/infer"), &row).await;
            assert_eq!(status, 200, "{body}");
            // Ground truth: the fast answers were right, the slow ones wrong.
            let predicted =
                body["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "label").unwrap()["data"][0]
                    .as_i64()
                    .unwrap();
            let label = if version == "1.0.0" { predicted } else { 1 - predicted };
            feedback.push(json!({"prediction_id": body["parameters"]["prediction_ids"][0], "label": label}));
        }
    }
    let (status, answer) = agent.post_json("/v1/feedback", &json!({ "feedback": feedback })).await;
    assert_eq!((status, answer["joined"].as_u64()), (200, Some(40)), "{answer}");
    let bad =
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]});
    for _ in 0..4 {
        assert_eq!(agent.post_json("/v2/models/bc/versions/1.0.0/infer", &bad).await.0, 400);
    }

    // Once every window reached the coordinator: 44 events, 4 failed, 10 slower than 40 ms.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (code, out, err) = c.ctl(&["--json", "slo", "status", "bc"]);
        assert_eq!(code, 0, "{err}");
        let status: Value = serde_json::from_str::<Vec<Value>>(&out).unwrap().remove(0);
        let events: Vec<u64> =
            status["objectives"].as_array().unwrap().iter().map(|o| o["events"].as_u64().unwrap()).collect();
        if events == [44, 44, 40] {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "traffic never fully arrived: {status:#}\n{:#}",
            c.device(&device).await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (availability, latency) = (&status["objectives"][0], &status["objectives"][1]);
    assert_eq!(
        (availability["objective"].as_str(), availability["bad_events"].as_u64()),
        (Some("availability"), Some(4))
    );
    let burn = availability["burn_rate"].as_f64().unwrap();
    assert!((burn - (4.0 / 44.0) / 0.01).abs() < 1e-9, "availability burn rate {burn}");
    assert_eq!(availability["compliant"], false);
    assert_eq!(latency["bad_events"].as_u64(), Some(10), "{latency}");
    let burn = latency["burn_rate"].as_f64().unwrap();
    assert!((burn - (10.0 / 44.0) / 0.05).abs() < 1e-9, "latency burn rate {burn}");
    assert_eq!(latency["compliant"], false, "p95 is a slow request: {latency}");
    assert!(latency["actual"].as_f64().unwrap() >= 150.0 * 0.99, "{latency}");
    // Accuracy from the labels: 30 of 40 right against a 90 % floor.
    let accuracy = &status["objectives"][2];
    assert_eq!(
        (accuracy["objective"].as_str(), accuracy["bad_events"].as_u64()),
        (Some("accuracy"), Some(10))
    );
    assert!((accuracy["actual"].as_f64().unwrap() - 0.75).abs() < 1e-12, "{accuracy}");
    let burn = accuracy["burn_rate"].as_f64().unwrap();
    assert!((burn - (10.0 / 40.0) / 0.1).abs() < 1e-9, "accuracy burn rate {burn}");
    assert_eq!(accuracy["compliant"], false);

    // People see it, and it pages.
    let (code, out, err) = c.ctl(&["slo", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("latency p95 < 40 ms") && l.contains("4.55") && l.ends_with("BREACHED")),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = c.ctl(&["--json", "alerts"]);
        let alerts: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
        let burning: Vec<&str> = alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == "OutpostSloBurn" && a["ends_at_ms"].is_null())
            .filter_map(|a| a["labels"]["objective"].as_str())
            .collect();
        if burning.contains(&"availability") && burning.contains(&"latency") {
            break;
        }
        assert!(Instant::now() < deadline, "no SLO burn alerts: {out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
