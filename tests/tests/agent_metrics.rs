//! `/metrics` is valid Prometheus text (checked by a parser and, where installed, by
//! `promtool check metrics`) and its counters move with traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use outpost_tests::{Agent, model, reference, rows};
use serde_json::json;

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

/// Runs `promtool check metrics`; in CI (where `.ci/run` installs it) it must be present.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not installed: skipping its lint (CI installs it and requires it)");
            return;
        }
        Err(e) => panic!("promtool is required in CI: {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let report =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_and_counters_move_with_traffic() {
    let agent = Agent::builder().model("bc", &model("breast_cancer-1.0.0")).start();
    agent.wait_ready(Duration::from_secs(30)).await;

    let before_text = agent.metrics_text().await;
    promtool_check(&before_text);
    let before = parse(&before_text);
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "outpost_agent_system_memory_total_bytes",
        "outpost_agent_system_cpu_usage_ratio",
        "outpost_agent_queue_capacity",
        "outpost_agent_workers",
    ] {
        assert!(before.samples.iter().any(|s| s.metric == name), "{name} missing");
    }
    assert!(
        before.samples.iter().any(|s| s.metric == "outpost_agent_system_disk_available_bytes"),
        "disk figures missing"
    );
    assert_eq!(sample(&before, "outpost_agent_model_state", &[("model", "bc"), ("state", "ready")]), 1.0);
    assert!(sample(&before, "process_resident_memory_bytes", &[]) > 0.0);

    let r = reference("breast_cancer-1.0.0");
    let (data, len) = rows(&r["inputs"][0]);
    let good =
        json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": data[..len]}]});
    let bad =
        json!({"inputs": [{"name": "input", "shape": [1, 31], "datatype": "FP32", "data": data[..len]}]});
    for _ in 0..7 {
        assert_eq!(agent.post_json("/v2/models/bc/infer", &good).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(agent.post_json("/v2/models/bc/infer", &bad).await.0, 400);
    }
    assert_eq!(agent.post_json("/v2/models/zzz/infer", &good).await.0, 404);

    let after_text = agent.metrics_text().await;
    promtool_check(&after_text);
    let after = parse(&after_text);
    let ok = [("model", "bc"), ("version", "1.0.0"), ("outcome", "ok")];
    let bad_request = [("model", "bc"), ("version", "1.0.0"), ("outcome", "bad_request")];
    let requests = "outpost_agent_requests_total";
    assert_eq!(sample(&after, requests, &ok) - sample(&before, requests, &ok), 7.0);
    assert_eq!(sample(&after, requests, &bad_request) - sample(&before, requests, &bad_request), 2.0);
    assert_eq!(sample(&after, requests, &[("model", "_unknown"), ("outcome", "not_found")]), 1.0);
    let bc = [("model", "bc"), ("version", "1.0.0")];
    assert_eq!(
        sample(&after, "outpost_agent_request_duration_seconds", &bc),
        9.0,
        "every request to bc is timed"
    );
    assert_eq!(sample(&after, "outpost_agent_inference_duration_seconds", &bc), 7.0, "only tract runs are");
    assert_eq!(sample(&after, "outpost_agent_in_flight_requests", &[]), 0.0);
}
