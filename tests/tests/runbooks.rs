//! Every command in `docs/runbooks/`, and every `sh` block in `docs/` marked
//! `<!-- against the demo -->`, works against the demo: `outpost demo` runs (five agents, two
//! rollouts, an incident) and stays up for exploration; each line then runs in bash
//! (`pipefail`; `target/release/` standing for the binaries under test) with the variables the runbooks name set the way an
//! operator sets them, and must exit 0 and print something. Then Ctrl-C (SIGINT) stops the
//! demo cleanly.
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

/// The mark before an `sh` block outside the runbooks whose commands run against the demo.
const MARK: &str = "<!-- against the demo -->";

/// The command lines of a page's `sh` blocks (only the marked ones when `marked_only`).
fn commands(path: &std::path::Path, marked_only: bool) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut inside = false;
    let mut previous = "";
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            inside = !inside && trimmed == "```sh" && (!marked_only || previous == MARK);
            previous = trimmed;
            continue;
        }
        if !trimmed.is_empty() {
            previous = trimmed;
        }
        if inside && !trimmed.is_empty() && !trimmed.starts_with('#') {
            out.push(trimmed.to_owned());
        }
    }
    out
}

/// Every page and its commands: the runbooks' every `sh` block, the other docs' marked ones.
fn pages() -> Vec<(String, Vec<String>)> {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut out = Vec::new();
    for page in PAGES {
        let lines = commands(&docs.join("runbooks").join(page), false);
        assert!(!lines.is_empty(), "{page} has no commands");
        out.push((format!("runbooks/{page}"), lines));
    }
    let mut marked = 0;
    for entry in std::fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let lines = commands(&path, true);
            marked += lines.len();
            if !lines.is_empty() {
                out.push((path.file_name().unwrap().to_string_lossy().into_owned(), lines));
            }
        }
    }
    assert!(marked >= 5, "only {marked} marked commands in docs/: has the mark changed?");
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
    // The docs show the release build's path; the test runs the binaries it was built with.
    let built = format!("{}/", bin_dir().display());
    for (page, lines) in pages() {
        for line in lines {
            let line = line.replace("target/release/", &built);
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
