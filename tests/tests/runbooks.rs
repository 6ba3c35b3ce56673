//! Every command in `docs/runbooks/` works against the demo: `outpost demo` runs (five agents,
//! two rollouts, an incident) and stays up for exploration; each line of every `sh` block in
//! the runbooks then runs in bash (`pipefail`) with the variables the runbooks name set the way
//! an operator sets them, and must exit 0. Then Ctrl-C (SIGINT) stops the demo cleanly.
//! (`export` lines point the shell at a coordinator; the demo prints its own, which is what
//! the test uses.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use outpost_tests::bin_dir;
use outpost_tests::demo::Demo;

const PAGES: [&str; 6] = [
    "README.md",
    "latency-spike.md",
    "accuracy-drop.md",
    "error-surge.md",
    "drift-alert.md",
    "fleet-offline.md",
];

/// The command lines of a page's `sh` blocks.
fn commands(page: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/runbooks").join(page);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            inside = !inside && trimmed == "```sh";
            continue;
        }
        if inside && !trimmed.is_empty() && !trimmed.starts_with('#') {
            out.push(trimmed.to_owned());
        }
    }
    assert!(!out.is_empty(), "{page} has no commands");
    out
}

#[test]
fn every_runbook_command_works_against_the_demo_and_ctrl_c_stops_it() {
    let mut demo = Demo::start();
    let state = demo.state_dir();
    let printed = &demo.printed;
    let all = demo.output();
    let (url, token) = (demo.url.clone(), demo.admin_token.clone());
    let dir = tempfile::tempdir().unwrap();
    // `agent dev-… (site-a) enrolled, serving on http://…`
    let agent_line = printed.iter().find(|l| l.contains(" enrolled, serving on ")).expect(&all);
    let device = agent_line.split("agent ").nth(1).unwrap().split(' ').next().unwrap();
    let agent = agent_line.rsplit(' ').next().unwrap();
    assert!(all.contains("rollout r-000001 SUCCEEDED") && all.contains("incident inc-000001:"), "{all}");

    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut failures = Vec::new();
    let mut ran = 0;
    for page in PAGES {
        for line in commands(page) {
            if line.starts_with("export ") {
                continue;
            }
            let out = Command::new("bash")
                .args(["-o", "pipefail", "-c", &line])
                .current_dir(dir.path())
                .env("PATH", &path)
                .env("OUTPOSTCTL_URL", &url)
                .env("OUTPOSTCTL_TOKEN", token.trim())
                .env("DEVICE", device)
                .env("AGENT", agent)
                .env("ROLLOUT", "r-000002")
                .env("INCIDENT", "inc-000001")
                .output()
                .unwrap();
            ran += 1;
            if !out.status.success() || out.stdout.is_empty() {
                failures.push(format!(
                    "{page}: `{line}` exited {:?}\nstdout: {}\nstderr: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(ran >= 30, "only {ran} commands");

    // Ctrl-C: every process stops, the demo exits 0.
    let status = demo.interrupt();
    assert!(
        failures.is_empty(),
        "{} of {ran} runbook commands failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(status.success(), "demo exit {status:?}");
    let coordinator = std::fs::read_to_string(state.join("coordinator.log")).unwrap();
    assert!(coordinator.contains("state flushed; stopped"), "{coordinator}");
    for i in 0..5 {
        let log = std::fs::read_to_string(state.join(format!("agent-{i}.log"))).unwrap();
        assert!(log.lines().last().is_some_and(|l| l.contains("\"stopped\"")), "agent {i}:\n{log}");
    }
}
