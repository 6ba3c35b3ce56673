//! Devices that go quiet during a rollout are shown for what they are (`stale`, then
//! `offline`; never healthy) and handled by the rollout's `offline` policy: `skip` moves on
//! without them, `fail` rolls back. A real agent is frozen with SIGSTOP (its connection stays
//! open, it just stops reporting), with short liveness thresholds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nix::sys::signal::Signal;
use outpost_tests::fleet::{Coordinator, ok, push, release_key, start_agent, validate, wait_serving};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_device_is_shown_stale_and_skipped_or_failed_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[
            ("OUTPOST_COORDINATOR_FLEET__STALE_AFTER_SECS", "3"),
            ("OUTPOST_COORDINATOR_FLEET__OFFLINE_AFTER_SECS", "600"),
        ],
    );
    let key = release_key(&c);
    let (a, id_a) = start_agent(&c, &dir.path().join("a"), "site=a", &[&key], "");
    let (b, id_b) = start_agent(&c, &dir.path().join("b"), "site=b", &[&key], "");
    for v in ["1.0.0", "1.1.0"] {
        ok(push(&c, &format!("breast_cancer-{v}"), v), "push");
        assert_eq!(validate(&c, v).0, 0);
    }
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy");
    wait_serving(&a, "1.0.0").await;
    wait_serving(&b, "1.0.0").await;

    // b goes quiet.
    b.signal(Signal::SIGSTOP);
    c.wait_device(&id_b, Duration::from_secs(30), |v| v["status"] == "stale").await;

    // skip: the wave runs on a; b is shown stale and skipped, never as running the version.
    let v: Value = serde_json::from_str(&ok(
        c.ctl(&[
            "--json",
            "rollout",
            "start",
            "bc@1.1.0",
            "--waves",
            "100",
            "--bake",
            "2s",
            "--max-extensions",
            "0",
            "--offline",
            "skip",
        ]),
        "start skip",
    ))
    .unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    let v = c.wait_rollout(&id, Duration::from_secs(60), "paused", |v| v["phase"] == "paused").await;
    let device = |v: &Value, id: &str| {
        v["devices"].as_array().unwrap().iter().find(|d| d["device"] == id).cloned().unwrap()
    };
    let quiet = device(&v, &id_b);
    // Stale by age; offline once the broker fires its last will (keep-alive): never online.
    assert!(matches!(quiet["liveness"].as_str(), Some("stale" | "offline")), "{v:#}");
    assert_eq!(quiet["skipped"].as_bool(), Some(true), "{v:#}");
    assert_ne!(quiet["actual"], "1.1.0", "{v:#}");
    let live = device(&v, &id_a);
    assert_eq!(
        (live["liveness"].as_str(), live["actual"].as_str()),
        (Some("online"), Some("1.1.0")),
        "{v:#}"
    );
    let timeline: Vec<&str> =
        v["timeline"].as_array().unwrap().iter().map(|t| t["message"].as_str().unwrap()).collect();
    assert!(timeline.iter().any(|t| t.contains(&format!("skipping {id_b} (stale)"))), "{timeline:#?}");
    let table = ok(c.ctl(&["rollout", "status", &id]), "status table");
    assert!(
        table.lines().any(|l| l.contains(&id_b)
            && (l.contains("stale") || l.contains("offline"))
            && l.contains("skipped")),
        "{table}"
    );
    ok(c.ctl(&["rollout", "abort", &id, "--revert"]), "abort");
    wait_serving(&a, "1.0.0").await;

    // fail: a quiet device in the wave rolls the rollout back.
    let v: Value = serde_json::from_str(&ok(
        c.ctl(&[
            "--json",
            "rollout",
            "start",
            "bc@1.1.0",
            "--waves",
            "100",
            "--bake",
            "2s",
            "--offline",
            "fail",
        ]),
        "start fail",
    ))
    .unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    let v =
        c.wait_rollout(&id, Duration::from_secs(60), "rolled back", |v| v["phase"] == "rolled_back").await;
    let incident: Value = serde_json::from_str(&ok(
        c.ctl(&["--json", "incident", "show", v["incident"].as_str().unwrap()]),
        "incident",
    ))
    .unwrap();
    let reason = incident["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("device {id_b} is "))
            && reason.contains("during wave 1/1 (100%) (policy: fail)"),
        "{incident:#}"
    );
    b.signal(Signal::SIGCONT);
    wait_serving(&a, "1.0.0").await;
    c.wait_device(&id_b, Duration::from_secs(30), |v| v["status"] == "online").await;
}
