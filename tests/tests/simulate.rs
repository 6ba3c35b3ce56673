//! `outpost-agent simulate`, end to end (correctness, not speed — `cargo bench -p outpost
//! --bench fleet` measures): simulated devices enrol with one-time tokens, connect over mutual
//! TLS, report signed windows, verify and apply the coordinator's desired states and report
//! them back, and stop cleanly on Ctrl-C.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_tests::agent_bin;
use outpost_tests::fleet::{Coordinator, ok, push, validate};
use serde_json::Value;

fn running(metrics: &str, version: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("outpost_coordinator_model_devices{"))
        .filter(|l| l.contains(&format!("version=\"{version}\"")) && l.contains("slot=\"primary\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_enrol_report_and_apply_desired_states() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let mut sim = Command::new(agent_bin())
        .args(["simulate", "--coordinator", &c.url(), "--token-file"])
        .arg(c.token_file())
        .args(["--devices", "25", "--interval-secs", "1", "--labels", "tier=sim"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every simulated device is a fleet member: enrolled with its labels, online, reporting.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let devices: Vec<Value> =
            serde_json::from_str(&ok(c.ctl(&["--json", "devices"]), "devices")).unwrap();
        let reporting = devices
            .iter()
            .filter(|d| {
                d["labels"]["tier"] == "sim"
                    && d["status"] == "online"
                    && d["counts"]["reports"].as_u64() >= Some(2)
            })
            .count();
        if reporting == 25 {
            break;
        }
        assert!(Instant::now() < deadline, "{reporting} of 25 simulated devices report");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A deployment reaches every one, and each reports it back as its actual state.
    ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "push");
    assert_eq!(validate(&c, "1.0.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.0.0", "--selector", "tier=sim"]), "deploy");
    let deadline = Instant::now() + Duration::from_secs(60);
    while running(&c.metrics().await, "1.0.0") != 25 {
        assert!(
            Instant::now() < deadline,
            "not every simulated device reported bc@1.0.0:\n{}",
            c.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sim.id() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = sim.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the simulator did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}
