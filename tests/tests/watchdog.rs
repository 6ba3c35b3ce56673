//! The agent's watchdog, end to end: a version rolled out by the coordinator crashes the agent
//! on every request (a test-only agent setting, `runtime.test_crash`). With the coordinator —
//! and so the broker — gone, the agent is restarted after each crash (as systemd or Kubernetes
//! would); after the crashes its policy allows it starts on the previous version by itself and
//! serves. When the coordinator is back, the agent's report of it rolls the rollout back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use outpost_tests::fleet::{
    Coordinator, enrol_with_config, metric, ok, push, release_key, reporting_agent, validate, wait_serving,
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_broker_switches_back_from_a_crash_looping_version() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let key = release_key(&c);
    let data = dir.path().join("agent");
    let config = format!("[registry]\ntrusted_keys = [\"{key}\"]\n[runtime]\ntest_crash = [\"bc@1.1.0\"]\n");
    let (device, config) = enrol_with_config(&c, &data, "site=a", &config);
    let mut agent = reporting_agent(&data, &config);
    for v in ["1.0.0", "1.1.0"] {
        ok(push(&c, &format!("breast_cancer-{v}"), v), "push");
        assert_eq!(validate(&c, v).0, 0);
    }
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy");
    wait_serving(&agent, "1.0.0").await;
    let rollout: Value = serde_json::from_str(&ok(
        c.ctl(&["--json", "rollout", "start", "bc@1.1.0", "--waves", "100", "--bake", "10m"]),
        "start",
    ))
    .unwrap();
    let id = rollout["id"].as_str().unwrap().to_owned();
    wait_serving(&agent, "1.1.0").await;

    // Cut off: the coordinator and its embedded broker are gone.
    c.stop(Signal::SIGKILL);
    let row =
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": vec![0.0; 30]}]});
    // The default policy tolerates 2 crashes; the third start is on the previous version.
    for crash in 1..=3 {
        let sent = reqwest::Client::new().post(agent.url("/v2/models/bc/infer")).json(&row).send().await;
        assert!(sent.is_err(), "crash {crash}: the agent answered {sent:?}");
        let exit = agent.wait_exit(Duration::from_secs(30));
        assert!(!exit.success(), "crash {crash}: {exit:?}");
        agent = reporting_agent(&data, &config);
        let version = if crash < 3 { "1.1.0" } else { "1.0.0" };
        wait_serving(&agent, version).await;
    }
    let (status, answer) = agent.post_json("/v2/models/bc/infer", &row).await;
    assert_eq!((status, answer["model_version"].as_str()), (200, Some("1.0.0")), "{answer}");
    assert!(agent.log().contains("watchdog: switched back to the previous version"), "{}", agent.log());
    let metrics = agent.metrics_text().await;
    assert_eq!(metric(&metrics, "outpost_agent_watchdog_rollbacks_total{model=\"bc\"}"), 1.0, "{metrics}");

    // The coordinator returns: the event arrives, the rollout rolls back (the agent stays on
    // 1.0.0 although the retained desired state it had applied still says 1.1.0).
    c.resume();
    c.wait_device(&device, Duration::from_secs(60), |v| {
        v["recent_events"].as_array().is_some_and(|events| {
            events.iter().any(|e| {
                let what = &e["kind"]["WatchdogReverted"];
                what["model"] == "bc"
                    && what["from"] == "1.1.0"
                    && what["to"] == "1.0.0"
                    && what["reason"].as_str().unwrap_or("").contains("the agent crashed 3 times")
            })
        })
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let v = loop {
        let v: Value =
            serde_json::from_str(&ok(c.ctl(&["--json", "rollout", "status", &id]), "status")).unwrap();
        if v["phase"] == "rolled_back" {
            break v;
        }
        assert!(Instant::now() < deadline, "the rollout was not rolled back:\n{v:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let incident: Value = serde_json::from_str(&ok(
        c.ctl(&["--json", "incident", "show", v["incident"].as_str().unwrap()]),
        "incident",
    ))
    .unwrap();
    assert!(
        incident["reason"].as_str().unwrap().contains("watchdog switched 1.1.0 back on its own"),
        "{incident:#}"
    );
    wait_serving(&agent, "1.0.0").await;
    let (status, answer) = agent.post_json("/v2/models/bc/infer", &row).await;
    assert_eq!((status, answer["model_version"].as_str()), (200, Some("1.0.0")), "{answer}");
}
