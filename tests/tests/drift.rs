//! Drift windows end to end with the real binaries: a bundle built with the held-out data as
//! its baseline serves on an agent enrolled at a coordinator; held-out traffic shows no drift,
//! the same traffic with two features moved shows drift on exactly those two (in `/metrics`, in
//! the device's reports at the coordinator, as one alert per feature in a real Alertmanager and
//! one firing notification at a webhook), and normal traffic clears it all again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use outpost_tests::alerting::{Alertmanager, WebhookReceiver};
use outpost_tests::fleet::{Coordinator, enrol_with_config, reporting_agent, run};
use outpost_tests::{Agent, model, models_dir, run_agent};
use serde_json::{Value, json};

/// Rows of the breast-cancer hold-out set (30 features, label dropped), and the feature names.
fn holdout() -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(models_dir().join("breast_cancer_holdout.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_owned).collect();
    let label = header.iter().position(|h| h == "label").unwrap();
    let rows = lines
        .map(|l| {
            l.split(',').enumerate().filter(|(i, _)| *i != label).map(|(_, v)| v.parse().unwrap()).collect()
        })
        .collect();
    let names = header.into_iter().enumerate().filter(|(i, _)| *i != label).map(|(_, h)| h).collect();
    (names, rows)
}

/// Sends `count` rows cycling through `rows`, 15 per request.
async fn send(agent: &Agent, rows: &[Vec<f64>], count: usize) {
    let cycle: Vec<&Vec<f64>> = rows.iter().cycle().take(count).collect();
    for chunk in cycle.chunks(15) {
        let data: Vec<f64> = chunk.iter().flat_map(|r| r.iter().copied()).collect();
        let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [chunk.len(), 30], "data": data}]});
        let (status, answer) = agent.post_json("/v2/models/bc/infer", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
}

/// The features whose last verdict in `/metrics` was drift, and how many have a verdict.
fn drifted(metrics: &str) -> (BTreeSet<String>, usize) {
    let mut found = BTreeSet::new();
    let mut verdicts = 0;
    for line in metrics.lines().filter(|l| l.starts_with("outpost_agent_drift_detected{")) {
        let feature = line.split("feature=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
        verdicts += 1;
        if line.ends_with(" 1") {
            found.insert(feature);
        }
    }
    (found, verdicts)
}

fn window_rows(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("outpost_agent_drift_window_rows{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the agent's drift verdicts satisfy `check`; panics with the metrics otherwise.
async fn wait_metrics(agent: &Agent, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = agent.metrics_text().await;
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened; drift metrics:\n{}\nlog:\n{}",
            text.lines().filter(|l| l.contains("drift")).collect::<Vec<_>>().join("\n"),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn coordinator_drifted(view: &Value) -> Option<BTreeSet<String>> {
    let model = view["drift"].as_array()?.iter().find(|m| m["model"] == "bc")?;
    Some(
        model["features"]
            .as_array()?
            .iter()
            .filter(|f| f["drifted"] == true)
            .map(|f| f["feature"].as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reported_on_exactly_the_shifted_features_and_clears() {
    let dir = tempfile::tempdir().unwrap();
    let Some(alertmanager) = Alertmanager::start(&dir.path().join("alertmanager")) else { return };
    let webhook = WebhookReceiver::start().await;
    let (c, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[
            ("OUTPOST_COORDINATOR_ALERTS__ALERTMANAGER_URL", &alertmanager.url),
            ("OUTPOST_COORDINATOR_ALERTS__WEBHOOK_URL", &webhook.url),
            ("OUTPOST_COORDINATOR_ALERTS__EVALUATE_SECS", "1"),
            ("OUTPOST_COORDINATOR_ALERTS__DRIFT_WINDOWS", "2"),
            ("OUTPOST_COORDINATOR_ALERTS__DRIFT_CLEAR_WINDOWS", "2"),
        ],
    );

    // A release key of our own and a bundle whose baseline is the hold-out set.
    let key = dir.path().join("release.pk8");
    let (code, public_key, err) = run("outpostctl", &["key", "generate", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let bundle = dir.path().join("bc.bundle");
    let (stem, baseline) = (model("breast_cancer-1.0.0"), models_dir().join("breast_cancer_holdout.csv"));
    let (code, _, err) = run(
        "outpostctl",
        &[
            "bundle",
            "create",
            stem.to_str().unwrap(),
            "--name",
            "bc",
            "--version",
            "1.0.0",
            "--baseline",
            baseline.to_str().unwrap(),
            "--label",
            "label",
            "--key",
            key.to_str().unwrap(),
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");

    // Enrol, install the bundle offline, serve with a small window evaluated every second.
    let data = dir.path().join("agent");
    let config = format!(
        "[registry]\ntrusted_keys = [\"{}\"]\n[drift]\nwindow_rows = 150\nmin_rows = 100\ninterval_secs = 1\n",
        public_key.trim()
    );
    let (device, config) = enrol_with_config(&c, &data, "site=a", &config);
    let (code, _, err) = run_agent(&[
        "import",
        bundle.to_str().unwrap(),
        "--activate",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let agent = reporting_agent(&data, &config);
    agent.wait_ready(Duration::from_secs(60)).await;

    let (names, rows) = holdout();
    let (radius, texture) = (
        names.iter().position(|n| n == "mean_radius").unwrap(),
        names.iter().position(|n| n == "mean_texture").unwrap(),
    );

    // 1. Traffic like the baseline: a verdict for all 30 features and the predictions, no drift.
    send(&agent, &rows, 150).await;
    let text =
        wait_metrics(&agent, "a full window of verdicts", |t| window_rows(t) == 150.0 && drifted(t).1 == 31)
            .await;
    assert_eq!(drifted(&text).0, BTreeSet::new(), "drift on unchanged traffic");

    // 2. mean_radius scaled by 1.3 and mean_texture moved by 8 (about two standard deviations).
    let shifted: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r[radius] *= 1.3;
            r[texture] += 8.0;
            r
        })
        .collect();
    // Several windows of it: sustained drift needs two drifted windows in a row.
    for _ in 0..3 {
        send(&agent, &shifted, 150).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let text = wait_metrics(&agent, "drift on the moved features", |t| {
        let d = drifted(t).0;
        d.contains("mean_radius") && d.contains("mean_texture")
    })
    .await;
    let inputs: BTreeSet<String> = drifted(&text).0.into_iter().filter(|f| f != "_prediction").collect();
    assert_eq!(inputs, BTreeSet::from(["mean_radius".to_owned(), "mean_texture".to_owned()]));
    assert!(
        text.contains(
            "outpost_agent_drift_score{feature=\"mean_radius\",model=\"bc\",test=\"ks\",version=\"1.0.0\"}"
        ),
        "{text}"
    );
    assert_eq!(window_rows(&text), 150.0, "the window holds only the most recent rows");

    // The device's drift verdicts reached the coordinator in its reports.
    let view = c
        .wait_device(&device, Duration::from_secs(30), |v| {
            coordinator_drifted(v).is_some_and(|d| d.contains("mean_radius") && d.contains("mean_texture"))
        })
        .await;
    let at_coordinator: BTreeSet<String> =
        coordinator_drifted(&view).unwrap().into_iter().filter(|f| f != "_prediction").collect();
    assert_eq!(at_coordinator, inputs, "{view:#}");
    assert!(view["counts"]["drift_reports"].as_u64().unwrap() >= 2, "{view:#}");
    let (code, shown, err) = c.ctl(&["device", "show", &device]);
    assert_eq!(code, 0, "{err}");
    let drift_lines: Vec<&str> = shown.lines().filter(|l| l.ends_with("DRIFT")).collect();
    assert!(drift_lines.iter().any(|l| l.trim_start().starts_with("mean_radius ")), "{shown}");
    assert!(drift_lines.iter().any(|l| l.trim_start().starts_with("mean_texture ")), "{shown}");

    // One alert per moved feature reached Alertmanager (whatever the number of windows and
    // evaluations), and the webhook heard of each once.
    let alerts = wait_drift_alerts(&alertmanager, |features| features.len() >= 2).await;
    let inputs: Vec<String> = alerts.into_iter().filter(|f| f != "_prediction").collect();
    assert_eq!(inputs, ["mean_radius", "mean_texture"]);
    let (firing, _) = webhook_features(&webhook);
    assert_eq!(firing.iter().filter(|f| f.as_str() == "mean_radius").count(), 1, "{:?}", webhook.documents());
    let (code, listed, err) = c.ctl(&["alerts"]);
    assert_eq!(code, 0, "{err}");
    assert!(listed.lines().any(|l| l.contains(" FIRING ") && l.contains("feature=mean_radius")), "{listed}");
    let (code, selected, err) = c.ctl(&["alerts", "-l", "feature=mean_texture"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        selected.contains("feature=mean_texture") && !selected.contains("feature=mean_radius"),
        "{selected}"
    );

    // 3. Normal traffic again: the window refills with it, the drift clears, the alerts resolve.
    for _ in 0..3 {
        send(&agent, &rows, 150).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    wait_metrics(&agent, "drift to clear", |t| drifted(t).0.is_empty() && drifted(t).1 == 31).await;
    c.wait_device(&device, Duration::from_secs(30), |v| coordinator_drifted(v).is_some_and(|d| d.is_empty()))
        .await;
    wait_drift_alerts(&alertmanager, |features| features.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !webhook_features(&webhook).1.contains(&"mean_radius".to_owned()) {
        assert!(Instant::now() < deadline, "no resolved notification: {:?}", webhook.documents());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (firing, resolved) = webhook_features(&webhook);
    assert_eq!(firing.iter().filter(|f| f.as_str() == "mean_texture").count(), 1, "{firing:?}");
    assert_eq!(resolved.iter().filter(|f| f.as_str() == "mean_texture").count(), 1, "{resolved:?}");

    // The weekly report tells the episode: the two moved features lead, the rest never drifted.
    let (code, md, err) = c.ctl(&["report", "drift", "--model", "bc", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    let ranked: Vec<&str> = md
        .lines()
        .skip_while(|l| !l.starts_with("## Features that moved most"))
        .filter_map(|l| l.strip_prefix("| ").and_then(|r| r.split(' ').next()))
        .filter(|f| !["feature", "---|---:|---:|---:|---|"].contains(f))
        .take_while(|f| !f.starts_with("---"))
        .collect();
    assert_eq!(
        &ranked[..2].iter().copied().collect::<BTreeSet<_>>(),
        &BTreeSet::from(["mean_radius", "mean_texture"]),
        "{md}"
    );
    assert!(md.contains("28 other feature(s) never drifted"), "{md}");
    assert!(md.contains("No device changed version"), "{md}");
    let html = dir.path().join("drift.html");
    let (code, _, err) =
        c.ctl(&["report", "drift", "--model", "bc", "--format", "html", "--out", html.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(html).unwrap();
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<svg") && html.contains("mean_texture"),
        "{html}"
    );
}

/// The features of the drift alerts Alertmanager holds as active, once `check` accepts them.
async fn wait_drift_alerts(am: &Alertmanager, check: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = am.active_alerts().await;
        let mut features: Vec<String> = alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == "OutpostDriftSustained")
            .map(|a| a["labels"]["feature"].as_str().unwrap_or_default().to_owned())
            .collect();
        features.sort();
        let unique = features.windows(2).all(|w| w[0] != w[1]);
        assert!(unique, "Alertmanager holds an alert twice: {alerts:#?}");
        if check(&features) {
            return features;
        }
        assert!(Instant::now() < deadline, "Alertmanager's drift alerts: {features:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Features named in the webhook's firing and resolved documents (one entry per mention).
fn webhook_features(webhook: &WebhookReceiver) -> (Vec<String>, Vec<String>) {
    let (mut firing, mut resolved) = (Vec::new(), Vec::new());
    for doc in webhook.documents() {
        let target = if doc["status"] == "firing" { &mut firing } else { &mut resolved };
        for alert in doc["alerts"].as_array().into_iter().flatten() {
            if alert["labels"]["alertname"] == "OutpostDriftSustained" {
                target.push(alert["labels"]["feature"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    (firing, resolved)
}
