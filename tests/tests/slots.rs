//! Model slots end to end: real agents get a second version beside their primary through the
//! coordinator's signed desired state.
//! - A canary (`deploy --canary 10`) answers 10 % of the requests that name no version (within
//!   ±3 points over 2,000 requests; exactly, by counting, when requests carry no id), the same
//!   side every time for one request id, and every request that names its version.
//! - A standby (`deploy --standby`) is loaded and validated on every device but answers only
//!   requests that name it; a plain `deploy` of it then switches every device at once (one
//!   pointer swap, no failed request under load), and `rollback` switches every device back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use outpost_tests::fleet::{Coordinator, ok, push, release_key, start_agent, validate, wait_serving};
use outpost_tests::{Agent, Load, breast_cancer_row};
use serde_json::{Value, json};

/// Waits until the agent reports `version` in slot `slot` beside its primary.
async fn wait_candidate(agent: &Agent, version: &str, slot: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = agent.get("/v2/models/bc").await;
        if body["candidate"]["version"] == version && body["candidate"]["slot"] == slot {
            return;
        }
        assert!(Instant::now() < deadline, "no {slot} {version}: {body}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn answered_by(agent: &Agent, path: &str, body: &Value) -> String {
    let (status, answer) = agent.post_json(path, body).await;
    assert_eq!(status, 200, "{answer}");
    answer["model_version"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_takes_its_share_and_a_standby_switches_every_device_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let key = release_key(&c);
    let agents: Vec<(Agent, String)> = (0..5)
        .map(|i| start_agent(&c, &dir.path().join(format!("agent-{i}")), &format!("site=s{i}"), &[&key], ""))
        .collect();
    for v in ["1.0.0", "1.1.0"] {
        ok(push(&c, &format!("breast_cancer-{v}"), v), "push");
        assert_eq!(validate(&c, v).0, 0);
    }
    // A candidate needs a primary beside it.
    let (code, _, err) = c.ctl(&["deploy", "bc@1.1.0", "--canary", "10"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("deploy a primary version first"), "{err}");
    let (code, _, err) = c.ctl(&["deploy", "bc@1.1.0", "--canary", "100"]);
    assert_eq!(code, 2, "{err}");
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy 1.0.0");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }

    // Canary: 10 % of the requests that name no version.
    ok(c.ctl(&["deploy", "bc@1.1.0", "--canary", "10"]), "deploy canary");
    let (a, device_a) = &agents[0];
    wait_candidate(a, "1.1.0", "canary").await;
    let row = breast_cancer_row();
    let mut canary = 0;
    for _ in 0..2000 {
        if answered_by(a, "/v2/models/bc/infer", &row).await == "1.1.0" {
            canary += 1;
        }
    }
    let share = f64::from(canary) / 2000.0;
    assert!((share - 0.10).abs() <= 0.03, "canary answered {canary} of 2000 ({:.1}%)", share * 100.0);
    // Requests with ids: each id always lands on the same side; over many ids, about 10 %.
    let mut by_id = 0;
    for i in 0..2000 {
        let mut body = row.clone();
        body["id"] = json!(format!("user-{i}"));
        let first = answered_by(a, "/v2/models/bc/infer", &body).await;
        if i < 20 {
            for _ in 0..3 {
                assert_eq!(
                    answered_by(a, "/v2/models/bc/infer", &body).await,
                    first,
                    "id user-{i} changed sides"
                );
            }
        }
        by_id += u32::from(first == "1.1.0");
    }
    let share = f64::from(by_id) / 2000.0;
    assert!((share - 0.10).abs() <= 0.03, "by id: canary answered {by_id} of 2000 ({:.1}%)", share * 100.0);
    // Naming a version picks its slot.
    assert_eq!(answered_by(a, "/v2/models/bc/versions/1.1.0/infer", &row).await, "1.1.0");
    assert_eq!(answered_by(a, "/v2/models/bc/versions/1.0.0/infer", &row).await, "1.0.0");
    // The coordinator sees both slots.
    c.wait_device(device_a, Duration::from_secs(30), |v| {
        let models = v["models"].as_array().cloned().unwrap_or_default();
        models.iter().any(|m| m["version"] == "1.1.0" && m["slot"] == "canary" && m["state"] == "ready")
            && models.iter().any(|m| m["version"] == "1.0.0" && m["slot"] == "primary")
    })
    .await;

    // Blue-green: the standby replaces the canary; requests naming no version get the primary.
    ok(c.ctl(&["deploy", "bc@1.1.0", "--standby"]), "deploy standby");
    for (agent, _) in &agents {
        wait_candidate(agent, "1.1.0", "standby").await;
        for _ in 0..50 {
            assert_eq!(answered_by(agent, "/v2/models/bc/infer", &row).await, "1.0.0");
        }
        assert_eq!(answered_by(agent, "/v2/models/bc/versions/1.1.0/infer", &row).await, "1.1.0");
    }
    // One switch for every device, under load: no request fails, each client sees 1.0.0 then
    // 1.1.0.
    let loads: Vec<Load> = agents.iter().map(|(agent, _)| Load::start(agent, "bc", &row, 2)).collect();
    for load in &loads {
        load.wait_seen("1.0.0").await;
    }
    ok(c.ctl(&["deploy", "bc@1.1.0"]), "switch");
    for load in &loads {
        load.wait_seen("1.1.0").await;
    }
    for load in loads {
        load.finish_expecting(&["1.0.0", "1.1.0"]).await;
    }
    for (agent, _) in &agents {
        let (_, body) = agent.get("/v2/models/bc").await;
        assert!(body["candidate"].is_null(), "the standby became the primary: {body}");
    }
    // And back, everywhere.
    let out = ok(c.ctl(&["rollback", "bc"]), "rollback");
    assert!(out.contains("from 1.1.0 to 1.0.0 on 5 device(s)"), "{out}");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }
}
