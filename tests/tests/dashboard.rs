//! The dashboard in a real browser: `outpost demo` runs (five agents, a successful and a
//! rolled-back rollout, an incident, then one site's inputs drifting); Debian's Chromium,
//! driven by playwright-core (`tests/browser/dashboard.mjs`), signs in with the demo's viewer
//! token and reads the fleet, the rolled-back rollout with its gates, the incident, the
//! monitoring charts (drift included) and a model card; every figure is compared here with
//! what the API says. A viewer is offered no button and forged posts are refused; an operator
//! closes the incident from the page. Screenshots land in the checkout's
//! `target/dashboard-screenshots/`.
//!
//! Needs `chromium` (Debian package) and `npm ci` in `tests/browser` — `.ci/run` does both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_tests::demo::Demo;
use serde_json::{Value, json};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        path.exists(),
        "{} is missing: `apt-get install chromium` (or set CHROMIUM); .ci/run installs it",
        path.display()
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: `npm ci --prefix tests/browser`; .ci/run installs it"
    );
    path
}

fn api(demo: &Demo, method: &str, path: &str, body: Option<Value>) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{}{path}", demo.url);
        let request = match method {
            "POST" => client.post(url).json(&body.unwrap_or(Value::Null)),
            _ => client.get(url),
        };
        let response = request.bearer_auth(&demo.admin_token).send().await.unwrap();
        assert!(response.status().is_success(), "{method} {path}: {}", response.status());
        response.json::<Value>().await.unwrap()
    })
}

fn drift_counts(report: &Value) -> BTreeMap<String, (u64, u64)> {
    report["features"]
        .as_array()
        .unwrap()
        .iter()
        .chain(report["prediction"].as_object().map(|_| &report["prediction"]))
        .map(|f| {
            (
                f["feature"].as_str().unwrap().to_owned(),
                (f["windows"].as_u64().unwrap(), f["drifted"].as_u64().unwrap()),
            )
        })
        .collect()
}

fn mean(values: &[Value]) -> f64 {
    let v: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
    assert!(!v.is_empty(), "no values");
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn a_viewer_sees_fleet_rollout_gates_drift_and_incident_in_chromium_and_cannot_change_them() {
    let chromium = chromium();
    let mut demo = Demo::start();
    let all = demo.output();
    assert!(all.contains("rollout r-000001 SUCCEEDED") && all.contains("incident inc-000001:"), "{all}");
    let operator =
        api(&demo, "POST", "/api/v1/tokens", Some(json!({"name": "night-shift", "role": "operator"})));
    let operator_token = operator["token"].as_str().unwrap().to_owned();

    // Wait for the drifting site's verdicts to reach the coordinator, until mean_radius is
    // among the five most drifted features the drift chart draws (other features drift now and
    // then by chance: with a single drifted window of its own, mean_radius could rank sixth).
    let since = "/api/v1/models/bc/drift-report?format=json&since_ms=0";
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let counts = drift_counts(&api(&demo, "GET", since, None));
        if let Some(&(_, radius)) = counts.get("mean_radius")
            && radius > 0
            && counts.iter().filter(|(f, c)| *f != "mean_radius" && c.1 >= radius).count() < 5
        {
            break;
        }
        assert!(Instant::now() < deadline, "mean_radius not among the most drifted within 180 s: {counts:?}");
        std::thread::sleep(Duration::from_secs(2));
    }

    let devices_before = api(&demo, "GET", "/api/v1/devices", None);
    let drift_before = drift_counts(&api(&demo, "GET", since, None));
    let rollouts = api(&demo, "GET", "/api/v1/rollouts", None);
    let rolled_back =
        rollouts.as_array().unwrap().iter().find(|r| r["phase"] == "rolled_back").unwrap().clone();
    let incident_id = rolled_back["incident"].as_str().unwrap().to_owned();
    let incident = api(&demo, "GET", &format!("/api/v1/incidents/{incident_id}"), None);
    assert!(incident["closed_ms"].is_null());

    // The checkout's target/ (CI builds elsewhere, but collects artifacts from here).
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    let run = Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .env("DASHBOARD_URL", &demo.url)
        .env("VIEWER_TOKEN", &demo.viewer_token)
        .env("OPERATOR_TOKEN", &operator_token)
        .env("SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node (Debian's nodejs)");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "the browser run failed ({:?}):\n{stderr}", run.status);
    let seen: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!("browser output is not JSON ({e}):\n{}\n{stderr}", String::from_utf8_lossy(&run.stdout))
    });
    let drift_after = drift_counts(&api(&demo, "GET", since, None));
    let devices_after = api(&demo, "GET", "/api/v1/devices", None);
    eprintln!("screenshots in {}", screenshots.display());

    // Sign-in: the dashboard sent the browser to its sign-in page; the viewer is who it says.
    assert!(seen["login"]["url"].as_str().unwrap().contains("/ui/login"), "{}", seen["login"]);
    assert_eq!(seen["login"]["has_form"], 1);
    assert_eq!(seen["who"], json!({"user": "demo-viewer", "role": "viewer"}));
    assert_eq!(seen["outside_requests"], json!([]), "the dashboard must not reach beyond the coordinator");
    assert_eq!(seen["failed_requests"], json!([]));
    // CSP violations and script errors show up here; the refusals this test provokes on purpose
    // (403/401 below) are the only failed loads allowed.
    let errors: Vec<&Value> = seen["console_errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            let m = m.as_str().unwrap();
            !(m.starts_with("Failed to load resource")
                && (m.contains("status of 403") || m.contains("status of 401")))
        })
        .collect();
    assert!(errors.is_empty(), "{errors:?}");

    // Fleet: every device, with its status and what it runs, as the API has it.
    let api_devices: BTreeMap<String, (&Value, &Value)> = devices_before
        .as_array()
        .unwrap()
        .iter()
        .zip(devices_after.as_array().unwrap())
        .map(|(b, a)| (b["id"].as_str().unwrap().to_owned(), (b, a)))
        .collect();
    let shown = seen["fleet"]["devices"].as_array().unwrap();
    assert_eq!(shown.len(), 5, "{shown:?}");
    assert_eq!(seen["fleet"]["tiles"]["devices"], "5");
    for d in shown {
        let (before, after) = api_devices[d["id"].as_str().unwrap()];
        let status = d["status"].as_str().unwrap();
        assert!(status == before["status"] || status == after["status"], "{d} vs {before}");
        assert_eq!(status, "online");
        let running: Vec<&str> =
            d["running"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(running, ["bc@1.1.0 primary ready"], "{d}");
    }
    let sites: BTreeSet<&str> =
        seen["fleet"]["by_site"].as_array().unwrap().iter().map(|g| g["group"].as_str().unwrap()).collect();
    assert_eq!(sites, BTreeSet::from(["site-a", "site-b", "site-c", "site-d", "site-e"]));
    let site_c: Vec<&str> = devices_before
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["labels"]["site"] == "site-c")
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen["fleet"]["site_c"], json!(site_c), "the site filter lists exactly site-c's devices");
    let drifting: Vec<&Value> =
        shown.iter().filter(|d| d["drifting"].as_str().unwrap().contains("mean_radius")).collect();
    assert!(!drifting.is_empty(), "the drifting site shows its drift in the fleet table: {shown:?}");

    // Live updates: the page re-rendered itself.
    assert_ne!(seen["live"]["before"], seen["live"]["after"], "{}", seen["live"]);
    assert_eq!(seen["live"]["transport"], "sse", "live updates come as Server-Sent Events");

    // Rollouts and the rolled-back one's gates, number for number.
    let phases: Vec<(String, String)> = seen["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rollout"].as_str().unwrap().to_owned(), r["phase"].as_str().unwrap().to_owned()))
        .collect();
    let mut expected: Vec<(String, String)> = rollouts
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r["phase"].as_str().unwrap().to_owned()))
        .collect();
    expected.reverse();
    assert_eq!(phases, expected);
    let r = &seen["rollout"];
    assert_eq!(r["id"], rolled_back["id"]);
    assert_eq!(r["phase"], "rolled_back");
    let gates = r["gates"].as_array().unwrap();
    let api_gates = rolled_back["gates"].as_array().unwrap();
    assert_eq!(gates.len(), api_gates.len());
    assert!(gates.len() >= 3);
    for (g, a) in gates.iter().zip(api_gates) {
        assert_eq!(g["gate"], a["gate"]);
        assert_eq!(g["verdict"], a["verdict"]);
        for side in ["candidate", "baseline", "limit"] {
            let shown: Option<f64> = g[side].as_str().filter(|s| !s.is_empty()).map(|s| s.parse().unwrap());
            assert_eq!(shown, a[side].as_f64(), "{side} of {}", a["gate"]);
        }
    }
    assert!(gates.iter().any(|g| g["gate"] == "accuracy>=-5%" && g["verdict"] == "fail"), "{gates:?}");
    let steps: Vec<&str> =
        r["steps"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    // Done up to the wave whose gate failed, that one stopped, the rest never started.
    let stopped = steps.iter().position(|s| *s == "stopped").expect("a stopped step");
    assert!(
        steps[..stopped].iter().all(|s| *s == "done") && steps[stopped + 1..].iter().all(|s| *s == "pending")
    );
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert_eq!(r["forms"], 0, "a viewer is offered no rollout buttons");
    // The analysis over time: one chart per gate, candidate against baseline and the limit, the
    // last point the API's final evaluation, every step's start marked, and the failed gate's
    // verdict change marked.
    let analysis = r["analysis"].as_array().unwrap();
    assert_eq!(analysis.len(), api_gates.len(), "{analysis:?}");
    let history = rolled_back["history"].as_array().unwrap();
    assert!(!history.is_empty());
    for (chart, api) in analysis.iter().zip(api_gates) {
        let gate = api["gate"].as_str().unwrap();
        assert_eq!(chart["id"], format!("gate-{gate}"));
        let series = chart["series"].as_array().unwrap();
        assert_eq!(series.len(), 3, "{chart}");
        let candidate = series[0]["values"].as_array().unwrap();
        assert_eq!(candidate.len(), history.len(), "a point per kept evaluation");
        let scale = if gate.starts_with("p9") { 1.0 } else { 100.0 };
        let last_api =
            history.last().unwrap()["gates"].as_array().unwrap().iter().find(|g| g["gate"] == gate).unwrap()
                ["candidate"]
                .as_f64();
        let last_shown = candidate.last().unwrap().as_f64();
        assert_eq!(last_shown.is_some(), last_api.is_some(), "{gate}");
        if let (Some(shown), Some(api)) = (last_shown, last_api) {
            assert!((shown - api * scale).abs() < 1e-9, "{gate}: {shown} vs {api}");
        }
        assert!(series[0]["hovers"].as_array().unwrap().iter().all(|t| t.as_str().unwrap().contains(" at ")));
        let markers: Vec<&str> =
            chart["markers"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
        assert!(markers.contains(&"step"), "{gate}: {markers:?}");
        if gate == "accuracy>=-5%" {
            assert!(markers.contains(&"verdict"), "the failing verdict is marked: {markers:?}");
        }
    }

    // The incident.
    let i = &seen["incident"];
    assert_eq!(i["id"], incident_id.as_str());
    assert_eq!(i["status"], "open");
    assert_eq!(i["failed_gate"], incident["gate"]["gate"]);
    assert_eq!(i["devices"], incident["devices_rolled_back"]);
    assert_eq!(i["timeline"].as_u64().unwrap() as usize, incident["timeline"].as_array().unwrap().len());
    let text = i["failed_text"].as_str().unwrap();
    // The page rounds for people (`53.8%`): the number it shows is the API's, to its last digit.
    let candidate = incident["gate"]["candidate"].as_f64().unwrap() * 100.0;
    let shown: f64 = text
        .split("candidate ")
        .nth(1)
        .and_then(|rest| rest.split('%').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no candidate percentage in {text}"));
    assert!((shown - candidate).abs() <= 0.05, "{text} should name {candidate:.2}%");
    assert_eq!(i["forms"], 0, "a viewer is offered no close button");

    // Monitoring charts: drawn, with data, and the drift chart shows the drifting feature.
    let charts: BTreeMap<&str, &Value> =
        seen["model"]["charts"].as_array().unwrap().iter().map(|c| (c["id"].as_str().unwrap(), c)).collect();
    for id in ["latency", "traffic", "errors", "accuracy", "drift"] {
        let c = charts.get(id).unwrap_or_else(|| panic!("no {id} chart"));
        assert_eq!(c["svg"], true, "{id} has no data: {c}");
        assert!(c["series"].as_array().unwrap().iter().all(|s| s["drawn"] == true), "{c}");
    }
    let series = |chart: &str, name: &str| -> Vec<Value> {
        charts[chart]["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no series {name} in {chart}: {}", charts[chart]))["values"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(mean(&series("accuracy", "2.0.0-bad")) < mean(&series("accuracy", "1.1.0")) - 10.0);
    let radius = series("drift", "mean_radius");
    assert!(radius.iter().filter_map(Value::as_f64).any(|v| v > 0.0), "{radius:?}");
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        assert!(
            series("latency", name).iter().filter_map(Value::as_f64).all(|v| v > 0.0 && v < 5000.0),
            "{name} {p}"
        );
    }
    // The drift table: each feature's counts lie between the API's before and after the visit.
    let table = seen["model"]["drift"].as_array().unwrap();
    assert!(table.len() >= 30, "{table:?}");
    for row in table {
        let f = row["feature"].as_str().unwrap();
        let shown: (u64, u64) = (
            row["windows"].as_str().unwrap().parse().unwrap(),
            row["drifted"].as_str().unwrap().parse().unwrap(),
        );
        let (lo, hi) = (drift_before[f], drift_after[f]);
        assert!(
            lo.0 <= shown.0 && shown.0 <= hi.0 && lo.1 <= shown.1 && shown.1 <= hi.1,
            "{f}: {shown:?} not within {lo:?}..{hi:?}"
        );
        if hi.1 == 0 {
            assert_eq!(shown.1, 0, "{f}");
        }
    }
    assert_eq!(seen["model"]["slo"].as_array().unwrap().len(), 3, "{}", seen["model"]["slo"]);
    let stages: BTreeMap<&str, &str> = seen["model"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_str().unwrap(), v["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(stages["1.1.0"], "production");
    // Rollouts and the incident marked on the monitoring charts; the model per site.
    let markers: Vec<&str> =
        seen["model"]["markers"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(markers.contains(&"rollout") && markers.contains(&"incident"), "{markers:?}");
    assert!(charts.contains_key("latency_by_version"), "{:?}", charts.keys());
    let sites: Vec<&str> =
        seen["model"]["by_site"].as_array().unwrap().iter().map(|r| r["site"].as_str().unwrap()).collect();
    assert!(sites.len() >= 2 && sites.contains(&"site-c"), "{sites:?}");

    // The model card, with validation metrics per class and per segment.
    let card = seen["card"]["text"].as_str().unwrap();
    assert!(card.contains("1.0.0") && card.contains("Per class") && card.contains("site=site-a"), "{card}");
    // Rendered Markdown: tables and headings, no Markdown syntax left in the text.
    assert!(seen["card"]["tables"].as_u64().unwrap() >= 2, "{}", seen["card"]);
    assert!(seen["card"]["headings"].as_u64().unwrap() >= 2, "{}", seen["card"]);
    assert!(!card.contains('`') && !card.contains("|---") && !card.contains("**"), "Markdown left: {card}");

    // A viewer cannot change anything; an operator can.
    let statuses: Vec<u64> =
        seen["viewer_mutations"].as_array().unwrap().iter().map(|m| m["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [403, 403, 403, 401, 401], "{}", seen["viewer_mutations"]);
    assert_eq!(seen["incident_status_after_viewer"], "open");
    assert_eq!(seen["operator"]["forms_before"], 1);
    assert_eq!(seen["operator"]["status_after"], "closed");
    let closed = api(&demo, "GET", &format!("/api/v1/incidents/{incident_id}"), None);
    assert_eq!(closed["closed_by"], "night-shift");
    let after = api(&demo, "GET", "/api/v1/rollouts", None);
    for (a, b) in after.as_array().unwrap().iter().zip(rollouts.as_array().unwrap()) {
        assert_eq!(a["phase"], b["phase"], "a rollout changed phase");
    }
    assert!(seen["after_logout"].as_str().unwrap().contains("/ui/login"));

    for shot in ["fleet", "rollout", "incident", "model", "card", "incident-closed-by-operator"] {
        let path = screenshots.join(format!("{shot}.png"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{}", path.display());
    }
    assert!(demo.interrupt().success());
}
