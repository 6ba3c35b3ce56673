//! Rollout strategies that use the agents' candidate slot, end to end with five real agents
//! and labelled traffic:
//! - `canary`: every target answers a growing share of its requests with the candidate; each
//!   step's gates compare the candidate with the primary **on the same devices in the same
//!   window**; after the last step every device switches and the version becomes production.
//! - `blue-green`: a standby is loaded and validated on every target, then every target switches
//!   at once; when a gate fails after the switch (`2.0.0-bad`'s accuracy), every device switches
//!   back.
//! - `shadow`: every target runs the candidate on copies of the requests it answers; the
//!   answers never change, the agreement with the primary is measured and gated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outpost_tests::fleet::{
    Coordinator, metric, ok, push, release_key, start_agent, validate, validate_lax, wait_serving,
};
use outpost_tests::{Agent, LabelledTraffic, validation_rows};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_steps_gate_on_the_same_devices_and_blue_green_switches_every_device_back() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let key = release_key(&c);
    let agents: Vec<(Agent, String)> = (0..5)
        .map(|i| {
            start_agent(
                &c,
                &dir.path().join(format!("agent-{i}")),
                &format!("tier=prod,site=s{i}"),
                &[&key],
                "",
            )
        })
        .collect();
    for v in ["1.0.0", "1.1.0"] {
        ok(push(&c, &format!("breast_cancer-{v}"), v), "push");
        assert_eq!(validate(&c, v).0, 0);
    }
    ok(push(&c, "breast_cancer-2.0.0-bad", "2.0.0-bad"), "push");
    validate_lax(&c, "2.0.0-bad");
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }
    let all: Vec<&Agent> = agents.iter().map(|(a, _)| a).collect();
    let traffic = LabelledTraffic::start(&all, "bc", Duration::from_millis(10));
    let common = [
        "--selector",
        "tier=prod",
        "--gate",
        "error_rate<=+5%",
        "--gate",
        "accuracy>=-5%",
        "--gate",
        "p95<=2x",
        "--max-extensions",
        "10",
        "--latency-slack-ms",
        "50",
        "--min-requests",
        "20",
        "--min-labels",
        "20",
    ];

    // Canary in steps: 20 % → 50 % → switch.
    let mut args = vec![
        "--json",
        "rollout",
        "start",
        "bc@1.1.0",
        "--strategy",
        "canary",
        "--steps",
        "20,50,100",
        "--bake",
        "3s",
        "--wait",
    ];
    args.extend(common);
    let (code, out, err) = c.ctl(&args);
    assert_eq!(code, 0, "{out}{err}\n{}", c.log());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["phase"], "succeeded", "{v:#}");
    let timeline: Vec<&str> =
        v["timeline"].as_array().unwrap().iter().map(|t| t["message"].as_str().unwrap()).collect();
    for step in [
        "step 1/3 (canary 20% of requests): gates passed",
        "step 2/3 (canary 50% of requests): gates passed",
        "step 3/3 (switch every target): gates passed",
    ] {
        assert!(timeline.iter().any(|t| t.starts_with(step)), "no `{step}` in {timeline:#?}");
    }
    assert!(
        timeline.iter().any(|t| t.contains("as a canary answering 20% of requests to 5 device(s)")),
        "{timeline:#?}"
    );
    // The canary steps judged the candidate against the primary on the same devices, same
    // window; the switch against the same devices before it.
    let same = "gates passed against 1.0.0 as the primary on the same 5 device(s) in the same";
    assert_eq!(timeline.iter().filter(|t| t.contains(same)).count(), 2, "{timeline:#?}");
    assert!(
        timeline
            .iter()
            .any(|t| t.contains("step 3/3 (switch every target): gates passed against 1.0.0 on the 5 target(s) from 3 s before the rollout began")),
        "{timeline:#?}"
    );
    for (agent, _) in &agents {
        wait_serving(agent, "1.1.0").await;
        let (_, body) = agent.get("/v2/models/bc").await;
        assert!(body["candidate"].is_null(), "{body}");
    }
    let show: Value =
        serde_json::from_str(&ok(c.ctl(&["--json", "model", "show", "bc@1.1.0"]), "show")).unwrap();
    assert_eq!(show["stage"], "production");
    let audit = ok(c.ctl(&["audit", "list"]), "audit");
    assert!(audit.contains("rollout.start"), "{audit}");

    // Blue-green with 2.0.0-bad: standby everywhere, one switch, the accuracy gate fails, every
    // device switches back to 1.1.0.
    let mut args = vec![
        "--json",
        "rollout",
        "start",
        "bc@2.0.0-bad",
        "--strategy",
        "blue-green",
        "--bake",
        "10m",
        "--wait",
    ];
    args.extend(common);
    let (code, out, err) = c.ctl(&args);
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["phase"], "rolled_back", "{v:#}");
    let timeline: Vec<&str> =
        v["timeline"].as_array().unwrap().iter().map(|t| t["message"].as_str().unwrap()).collect();
    assert!(
        timeline.iter().any(|t| t.contains("every target runs 2.0.0-bad as a standby, validated")),
        "{timeline:#?}"
    );
    assert!(
        timeline.iter().any(|t| t.contains("sending 2.0.0-bad as the primary version to 5 device(s)")),
        "{timeline:#?}"
    );
    let incident: Value = serde_json::from_str(&ok(
        c.ctl(&["--json", "incident", "show", v["incident"].as_str().unwrap()]),
        "incident",
    ))
    .unwrap();
    assert_eq!(incident["gate"]["gate"], "accuracy>=-5%", "{incident:#}");
    assert!(
        incident["baseline_scope"].as_str().unwrap().contains("before the rollout began"),
        "{incident:#}"
    );
    assert_eq!(incident["devices_rolled_back"].as_array().unwrap().len(), 5, "{incident:#}");
    for (agent, _) in &agents {
        wait_serving(agent, "1.1.0").await;
    }

    // Shadow: 2.0.0-bad runs on copies of the requests; the answers stay 1.1.0's, byte for
    // byte apart from the prediction ids; its low agreement fails the gate.
    let rows = validation_rows();
    let a = &agents[0].0;
    let answers = |a: &Agent| {
        let rows = rows.clone();
        let url = a.url("/v2/models/bc/infer");
        async move {
            let http = reqwest::Client::new();
            let mut out = Vec::new();
            for (_, features, _) in rows.iter().take(40) {
                let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": features}]});
                let mut v: Value = http.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
                v["parameters"].take();
                out.push(v);
            }
            out
        }
    };
    let before = answers(a).await;
    assert!(before.iter().all(|v| v["model_version"] == "1.1.0"), "{before:?}");
    let started: Value = serde_json::from_str(&ok(
        c.ctl(&[
            "--json",
            "rollout",
            "start",
            "bc@2.0.0-bad",
            "--strategy",
            "shadow",
            "--bake",
            "10m",
            "--gate",
            "agreement>=95%",
            "--gate",
            "error_rate<=+1%",
            "--min-requests",
            "20",
        ]),
        "shadow start",
    ))
    .unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = a.get("/v2/models/bc").await;
        if body["candidate"]["slot"] == "shadow" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no shadow: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = answers(a).await;
    assert_eq!(during, before, "a shadow changed the answers");
    let metrics = a.metrics_text().await;
    assert!(
        metric(
            &metrics,
            "outpost_agent_shadow_requests_total{model=\"bc\",outcome=\"ok\",version=\"2.0.0-bad\"}"
        ) >= 40.0,
        "{metrics}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let v = loop {
        let v: Value =
            serde_json::from_str(&ok(c.ctl(&["--json", "rollout", "status", &id]), "status")).unwrap();
        if v["phase"] != "applying" && v["phase"] != "baking" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "shadow never ended: {v:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(v["phase"], "rolled_back", "{v:#}");
    let incident: Value = serde_json::from_str(&ok(
        c.ctl(&["--json", "incident", "show", v["incident"].as_str().unwrap()]),
        "incident",
    ))
    .unwrap();
    let gate = &incident["gate"];
    assert_eq!(gate["gate"], "agreement>=95%", "{incident:#}");
    let agreement = gate["candidate"].as_f64().unwrap();
    assert!(agreement < 0.9 && gate["candidate_samples"].as_u64().unwrap() >= 20, "{incident:#}");
    // The agent's own count of agreeing rows says the same.
    let metrics = a.metrics_text().await;
    let agreed = metric(
        &metrics,
        "outpost_agent_shadow_rows_total{model=\"bc\",result=\"agreed\",version=\"2.0.0-bad\"}",
    );
    let disagreed = metric(
        &metrics,
        "outpost_agent_shadow_rows_total{model=\"bc\",result=\"disagreed\",version=\"2.0.0-bad\"}",
    );
    assert!(disagreed > 0.0 && agreed / (agreed + disagreed) < 0.9, "{agreed} agreed, {disagreed} disagreed");
    for (agent, _) in &agents {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = agent.get("/v2/models/bc").await;
            if body["candidate"].is_null() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the shadow stayed: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_serving(agent, "1.1.0").await;
    }
    traffic.stop().await;
}
