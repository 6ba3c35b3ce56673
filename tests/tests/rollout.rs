//! Staged rollouts end to end: a real coordinator (embedded MQTT broker over mutual TLS) and five
//! real agent processes answering labelled traffic, driven with `outpostctl rollout` as an
//! operator would.
//!
//! - A wave rollout of 1.1.0 completes — through a SIGKILL of the coordinator in the middle,
//!   after which it resumes where it was — and 1.1.0 becomes production; `outpostctl rollback`
//!   then puts the last good version back on every device.
//! - `2.0.0-bad`, let through validation by a lax policy, is rolled back automatically by the
//!   accuracy gate during its first wave, with an incident naming the gate and its numbers, and
//!   an alert until the incident is closed.
//! - A version made slow by a test-only agent setting is caught by the p99 gate; with too little
//!   traffic a rollout says "inconclusive", extends its bake, then pauses — never passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use outpost_tests::fleet::{
    Coordinator, ok, push, release_key, start_agent, validate, validate_lax, wait_serving,
};
use outpost_tests::{Agent, LabelledTraffic};
use serde_json::Value;

const AGENTS: usize = 5;

/// Five agents trusting the coordinator's key, labelled `tier=prod` (plus `extra` config).
fn fleet(c: &Coordinator, dir: &std::path::Path, extra: &str) -> Vec<(Agent, String)> {
    let key = release_key(c);
    let agents: Vec<(Agent, String)> = (0..AGENTS)
        .map(|i| {
            start_agent(c, &dir.join(format!("agent-{i}")), &format!("tier=prod,site=s{i}"), &[&key], extra)
        })
        .collect();
    agents
}

/// Pushes and validates `versions`; `lax` ones pass a policy that waives accuracy.
fn register(c: &Coordinator, versions: &[&str], lax: &[&str]) {
    for v in versions {
        ok(push(c, &format!("breast_cancer-{v}"), v), "push");
        if lax.contains(v) {
            validate_lax(c, v);
        } else {
            assert_eq!(validate(c, v).0, 0, "validate {v}");
        }
    }
}

fn start(c: &Coordinator, args: &[&str]) -> String {
    let mut all = vec!["--json", "rollout", "start"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&ok(c.ctl(&all), "rollout start")).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn stage(c: &Coordinator, version: &str) -> String {
    let v: Value =
        serde_json::from_str(&ok(c.ctl(&["--json", "model", "show", &format!("bc@{version}")]), "show"))
            .unwrap();
    v["stage"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waves_promote_1_1_0_across_a_coordinator_kill_and_the_accuracy_gate_rolls_back_2_0_0_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[("OUTPOST_COORDINATOR_ALERTS__EVALUATE_SECS", "1")],
    );
    let agents = fleet(&c, dir.path(), "");
    register(&c, &["1.0.0", "1.1.0"], &[]);
    register(&c, &["2.0.0-bad"], &["2.0.0-bad"]);
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy 1.0.0");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }
    let all: Vec<&Agent> = agents.iter().map(|(a, _)| a).collect();
    let traffic = LabelledTraffic::start(&all, "bc", Duration::from_millis(15));
    // The last wave's baseline is the window before the rollout: let it fill.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Bad input is refused by name before anything moves.
    let (code, _, err) = c.ctl(&["rollout", "start", "bc@1.1.0", "--gate", "p99<2x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no `<=`"), "{err}");
    let (code, _, err) =
        c.ctl(&["rollout", "start", "bc@1.1.0", "--strategy", "shadow", "--gate", "accuracy>=-1%"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no labels come back"), "{err}");

    // Gates this traffic (about 50 requests/s per agent) can decide within a few bakes: a pass
    // needs the confidence bound inside the limit, so ~300 requests for `+5%` with no errors.
    let gates = ["--gate", "error_rate<=+5%", "--gate", "p95<=2x", "--gate", "accuracy>=-5%"];
    let mut args = vec![
        "bc@1.1.0",
        "--selector",
        "tier=prod",
        "--waves",
        "20,60,100",
        "--bake",
        "4s",
        "--max-extensions",
        "10",
    ];
    args.extend(gates);
    args.extend(["--min-requests", "30", "--min-labels", "30", "--latency-slack-ms", "50"]);
    let id = start(&c, &args);
    // A second rollout of the same model is refused while this one runs.
    let (code, _, err) = c.ctl(&["rollout", "start", "bc@2.0.0-bad"]);
    assert_eq!(code, 1);
    assert!(err.contains("still"), "{err}");

    // Kill the coordinator with SIGKILL while the second wave bakes, and start it again.
    let v = c
        .wait_rollout(&id, Duration::from_secs(120), "baked wave 2", |v| {
            v["wave"] == 1 && v["phase"] == "baking"
        })
        .await;
    assert_eq!(
        v["devices"].as_array().unwrap().iter().filter(|d| d["desired"] == "1.1.0").count(),
        3,
        "{v:#}"
    );
    c.stop(Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.resume();
    let v = c
        .wait_rollout(&id, Duration::from_secs(180), "succeeded", |v| {
            v["phase"] != "baking" && v["phase"] != "applying"
        })
        .await;
    assert_eq!(v["phase"], "succeeded", "{v:#}\n{}", c.log());
    let timeline: Vec<&str> =
        v["timeline"].as_array().unwrap().iter().map(|t| t["message"].as_str().unwrap()).collect();
    for wave in ["wave 1/3 (20%)", "wave 2/3 (60%)", "wave 3/3 (100%)"] {
        assert!(timeline.iter().any(|t| t.starts_with(&format!("{wave}: gates passed"))), "{timeline:#?}");
    }
    // Every gate passed on real evidence from both sides.
    for g in v["gates"].as_array().unwrap() {
        assert_eq!(g["verdict"], "pass", "{g}");
        assert!(
            g["candidate_samples"].as_u64().unwrap() >= 30 && g["baseline_samples"].as_u64().unwrap() >= 30,
            "{g}"
        );
    }
    assert_eq!(stage(&c, "1.1.0"), "production");
    assert_eq!(stage(&c, "1.0.0"), "archived");
    for (agent, _) in &agents {
        wait_serving(agent, "1.1.0").await;
    }
    // For people: the same view as a table.
    let table = ok(c.ctl(&["rollout", "status", &id]), "status");
    assert!(
        table.contains("SUCCEEDED") && table.contains("accuracy>=-5%") && table.contains("PASS"),
        "{table}"
    );

    // Plan before rolling: on this traffic every gate decides within the bakes, and the plan
    // shows it per step; a gate that needs far more evidence than a bake gives is warned about.
    let mut plan_args =
        vec!["--json", "rollout", "plan", "bc@2.0.0-bad", "--waves", "40,100", "--bake", "8s"];
    plan_args.extend(["--max-extensions", "10"]);
    plan_args.extend(gates);
    let plan: Value = serde_json::from_str(&ok(c.ctl(&plan_args), "plan")).unwrap();
    assert_eq!(plan["targets"], 5, "{plan:#}");
    assert!(plan["requests_per_s_per_device"].as_f64().unwrap() > 2.0, "{plan:#}");
    assert!(plan["labels_per_s_per_device"].as_f64().unwrap() > 2.0, "{plan:#}");
    let steps = plan["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{plan:#}");
    assert_eq!(steps[0]["devices"], 2, "{plan:#}");
    // An unchanged version passes every gate within the 88 s of bake and extensions (a CI
    // machine busy with other work labels fewer predictions a second, so the margin is wide);
    // each gate's planned regression is caught in finite time (how soon depends on the traffic).
    for g in steps[0]["gates"].as_array().unwrap() {
        assert!(g["pass_after_secs"].as_u64().is_some_and(|s| s <= 88), "{g}");
        assert!(g["catch_after_secs"].as_u64().is_some(), "{g}");
    }
    let warnings = plan["warnings"].as_array().unwrap();
    assert!(warnings.iter().all(|w| !w.as_str().unwrap().contains("unchanged version")), "{plan:#}");
    let table = ok(
        c.ctl(&[
            "rollout",
            "plan",
            "bc@2.0.0-bad",
            "--bake",
            "4s",
            "--max-extensions",
            "0",
            "--gate",
            "error_rate<=+0.1%",
        ]),
        "plan table",
    );
    assert!(
        table.contains("STEP") && table.contains("PASS AFTER") && table.contains("wave 1/3 (10%)"),
        "{table}"
    );
    assert!(
        table.contains("warning: wave 1/3 (10%), `error_rate<=+0.1%`: an unchanged version needs"),
        "{table}"
    );
    let (code, _, err) = c.ctl(&["rollout", "plan", "bc@2.0.0-bad", "--gate", "p99<2x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("gate `p99<2x`: no `<=`"), "{err}");
    let (code, _, err) = c.ctl(&["rollout", "plan", "bc@9.9.9"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("9.9.9"), "{err}");

    // 2.0.0-bad: the accuracy gate stops it during its first wave, long before the bake ends.
    let mut args = vec!["bc@2.0.0-bad", "--waves", "40,100", "--bake", "10m", "--wait"];
    args.extend(gates);
    args.extend(["--min-requests", "30", "--min-labels", "30", "--latency-slack-ms", "50"]);
    let mut full = vec!["rollout", "start"];
    full.extend_from_slice(&args);
    let started = Instant::now();
    let (code, out, err) = c.ctl(&full);
    assert_eq!(code, 1, "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
    assert!(out.contains("ROLLED_BACK") && err.contains("ended rolled_back"), "{out}{err}");
    let incidents: Vec<Value> =
        serde_json::from_str(&ok(c.ctl(&["--json", "incident", "list"]), "incidents")).unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let incident = &incidents[0];
    let gate = &incident["gate"];
    assert_eq!(gate["gate"], "accuracy>=-5%", "{incident:#}");
    assert_eq!(gate["verdict"], "fail");
    let (cand, base) = (gate["candidate"].as_f64().unwrap(), gate["baseline"].as_f64().unwrap());
    assert!(cand < 0.8 && base > 0.9, "{incident:#}");
    assert!((gate["limit"].as_f64().unwrap() - (base - 0.05)).abs() < 1e-9, "{incident:#}");
    assert_eq!(incident["version"], "2.0.0-bad");
    assert_eq!(incident["baseline"], "1.1.0");
    let rolled: Vec<&str> =
        incident["devices_rolled_back"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(rolled.len(), 2, "40% of 5 devices: {incident:#}");
    assert!(incident["reason"].as_str().unwrap().contains("accuracy>=-5%"), "{incident:#}");
    let shown = ok(c.ctl(&["incident", "show", incident["id"].as_str().unwrap()]), "incident show");
    assert!(shown.contains("gate    accuracy>=-5%") && shown.contains("ROLLED BACK"), "{shown}");
    // Every agent serves 1.1.0 again; the bad version is not production.
    for (agent, _) in &agents {
        wait_serving(agent, "1.1.0").await;
    }
    assert_eq!(stage(&c, "2.0.0-bad"), "validated");
    // An alert fires until the incident is closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = ok(c.ctl(&["alerts"]), "alerts");
        if firing(&alerts, "OutpostRolloutRolledBack") {
            break;
        }
        assert!(Instant::now() < deadline, "no rollback alert:\n{alerts}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ok(c.ctl(&["incident", "close", incident["id"].as_str().unwrap()]), "close");
    let deadline = Instant::now() + Duration::from_secs(30);
    while firing(&ok(c.ctl(&["alerts"]), "alerts"), "OutpostRolloutRolledBack") {
        assert!(Instant::now() < deadline, "the rollback alert did not resolve");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    traffic.stop().await;

    // One command back to the last good production version everywhere.
    let out = ok(c.ctl(&["rollback", "bc"]), "rollback");
    assert!(out.contains("from 1.1.0 to 1.0.0 on 5 device(s)"), "{out}");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }
    let metrics = c.metrics().await;
    assert!(metrics.contains("outpost_coordinator_rollout_rollbacks_total{model=\"bc\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_p99_gate_catches_a_slow_version_and_thin_traffic_is_inconclusive_not_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    // Test-only: every agent answers bc@1.1.0 150 ms late.
    let agents = fleet(&c, dir.path(), "[runtime.test_delay_ms]\n\"bc@1.1.0\" = 150\n");
    register(&c, &["1.0.0", "1.1.0"], &[]);
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy 1.0.0");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }
    let all: Vec<&Agent> = agents.iter().map(|(a, _)| a).collect();
    let traffic = LabelledTraffic::start(&all, "bc", Duration::from_millis(10));
    let id = start(
        &c,
        &[
            "bc@1.1.0",
            "--waves",
            "20,100",
            "--bake",
            "10m",
            "--gate",
            "p99<=1.5x",
            "--gate",
            "error_rate<=+5%",
            "--min-requests",
            "20",
        ],
    );
    let v = c.wait_rollout(&id, Duration::from_secs(120), "ended", |v| v["phase"] == "rolled_back").await;
    let incident: Value = serde_json::from_str(&ok(
        c.ctl(&["--json", "incident", "show", v["incident"].as_str().unwrap()]),
        "incident",
    ))
    .unwrap();
    assert_eq!(incident["gate"]["gate"], "p99<=1.5x", "{incident:#}");
    assert!(incident["gate"]["excess_low"].as_f64().unwrap() > 0.0, "{incident:#}");
    assert!(incident["gate"]["candidate"].as_f64().unwrap() >= 150.0, "{incident:#}");
    assert_eq!(incident["devices_rolled_back"].as_array().unwrap().len(), 1, "{incident:#}");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }
    traffic.stop().await;

    // A trickle of traffic: the gates cannot decide. The bake is extended once, then the
    // rollout pauses and says why; nothing passes, no device beyond the first wave moves.
    let trickle = LabelledTraffic::start(&all, "bc", Duration::from_secs(2));
    let id = start(
        &c,
        &[
            "bc@1.1.0",
            "--waves",
            "20,100",
            "--bake",
            "3s",
            "--max-extensions",
            "1",
            "--gate",
            "error_rate<=+1%",
            "--gate",
            "accuracy>=-2%",
        ],
    );
    let v = c.wait_rollout(&id, Duration::from_secs(120), "paused", |v| v["phase"] == "paused").await;
    trickle.stop().await;
    let reason = v["paused_reason"].as_str().unwrap();
    assert!(reason.contains("inconclusive after 1 extension(s)") && reason.contains("needs 200"), "{v:#}");
    for g in v["gates"].as_array().unwrap() {
        assert_eq!(g["verdict"], "inconclusive", "{g}");
    }
    assert_eq!(v["wave"], 0, "{v:#}");
    let timeline: Vec<&str> =
        v["timeline"].as_array().unwrap().iter().map(|t| t["message"].as_str().unwrap()).collect();
    assert!(
        timeline.iter().any(|t| t.contains("INCONCLUSIVE") && t.contains("bake extended 1/1")),
        "{timeline:#?}"
    );
    let table = ok(c.ctl(&["rollout", "status", &id]), "status");
    assert!(table.contains("PAUSED") && table.contains("INCONCLUSIVE"), "{table}");
    // Operator verbs: resume (the bake starts again), pause by hand, then send the moved
    // device back.
    let v: Value = serde_json::from_str(&ok(c.ctl(&["--json", "rollout", "resume", &id]), "resume")).unwrap();
    assert!(v["phase"] == "applying" || v["phase"] == "baking", "{v:#}");
    let v: Value = serde_json::from_str(&ok(c.ctl(&["--json", "rollout", "pause", &id]), "pause")).unwrap();
    assert_eq!(
        (v["phase"].as_str(), v["paused_reason"].as_str()),
        (Some("paused"), Some("paused by admin")),
        "{v:#}"
    );
    let v: Value =
        serde_json::from_str(&ok(c.ctl(&["--json", "rollout", "abort", &id, "--revert"]), "abort")).unwrap();
    assert_eq!(v["phase"], "aborted");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }
    let (code, _, err) = c.ctl(&["rollout", "resume", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("has ended"), "{err}");

    // Promote skips the remaining waves (and their gates): every target gets the version.
    let id = start(&c, &["bc@1.1.0", "--waves", "20,100", "--bake", "10m"]);
    ok(c.ctl(&["rollout", "promote", &id]), "promote");
    let v = c.wait_rollout(&id, Duration::from_secs(120), "succeeded", |v| v["phase"] == "succeeded").await;
    assert!(
        v["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["message"].as_str().unwrap().starts_with("promoted by admin")),
        "{v:#}"
    );
    assert_eq!(stage(&c, "1.1.0"), "production");
    for (agent, _) in &agents {
        wait_serving(agent, "1.1.0").await;
    }
}

/// Whether `outpostctl alerts` printed `alert` as firing (one row: ALERT, STATE, …).
fn firing(table: &str, alert: &str) -> bool {
    table.lines().any(|l| l.split_whitespace().take(2).eq([alert, "FIRING"]))
}
