//! Freeze protection with a real coordinator, embedded broker and agent: desired states expire,
//! the coordinator renews them while it runs, and an agent whose state expires with nothing newer
//! arriving (the coordinator gone, or someone holding its messages back) says `stale-control` —
//! by the coordinator's signed time, not its own clock — and serves on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use outpost_tests::fleet::{
    Coordinator, metric, ok, push, release_key, served, start_agent, validate, wait_serving,
};

async fn wait_metric(
    agent: &outpost_tests::Agent,
    name: &str,
    check: impl Fn(f64) -> bool,
    what: &str,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let value = metric(&agent.metrics_text().await, name);
        if check(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: {name} is {value}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenewed_desired_state_expires_into_stale_control_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[("OUTPOST_COORDINATOR_FLEET__DESIRED_TTL_SECS", "8")],
    );
    let key = release_key(&c);
    let (agent, device) = start_agent(&c, &dir.path().join("agent"), "site=a", &[&key], "");
    // Enrolment made the storage key with the identity (a Kubernetes Secret of the folder carries it).
    assert!(dir.path().join("agent/identity/storage.key").is_file());
    ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "push");
    assert_eq!(validate(&c, "1.0.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy");
    wait_serving(&agent, "1.0.0").await;
    let deployed = metric(&agent.metrics_text().await, "outpost_agent_desired_revision");

    // While the coordinator runs, it renews the state before it expires: new revisions, same model.
    let renewed =
        wait_metric(&agent, "outpost_agent_desired_revision", |r| r >= deployed + 2.0, "no renewal arrived")
            .await;
    assert_eq!(metric(&agent.metrics_text().await, "outpost_agent_control_stale"), 0.0);
    assert_eq!(served(&agent).await.as_deref(), Some("1.0.0"));

    // The coordinator goes away: within a TTL the agent says its control channel is stale.
    c.stop(nix::sys::signal::Signal::SIGKILL);
    let stopped_at = Instant::now();
    wait_metric(&agent, "outpost_agent_control_stale", |v| v == 1.0, "no stale-control").await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(20),
        "stale-control came late: {:?}",
        stopped_at.elapsed()
    );
    let log = agent.log();
    assert!(
        log.contains("stale-control: desired state revision") && log.contains("serving what is installed"),
        "{log}"
    );
    // It serves on, the same version.
    assert_eq!(served(&agent).await.as_deref(), Some("1.0.0"));
    let (status, body) = agent.post_json("/v2/models/bc/infer", &outpost_tests::breast_cancer_row()).await;
    assert_eq!(status, 200, "{body}");
    // Nothing older was taken up meanwhile: the revision in force is still the last renewal's.
    assert!(metric(&agent.metrics_text().await, "outpost_agent_desired_revision") >= renewed);

    // Back: the coordinator renews at once, the agent is fresh again, and the coordinator heard both.
    c.resume();
    wait_metric(&agent, "outpost_agent_control_stale", |v| v == 0.0, "never fresh again").await;
    let view = c
        .wait_device(&device, Duration::from_secs(45), |d| {
            let events = d["recent_events"].to_string();
            events.contains("\"stale\":true") && events.contains("\"stale\":false")
        })
        .await;
    assert!(view["control_stale"].is_null(), "the device still shows stale control: {view}");
}
