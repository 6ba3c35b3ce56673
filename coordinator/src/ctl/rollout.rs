//! `outpostctl rollout …` and `outpostctl incident …`: start a staged rollout, watch it, steer it,
//! and read the incidents automatic rollbacks leave.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};

use super::{Api, Cli, Failure, Table, ago, parse_age, parse_labels, render, split_target};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout of a validated version: waves of the targets, each baked and gated
    /// against the baseline version; a breached gate rolls every touched device back.
    #[command(
        after_help = "Examples:\n  outpostctl rollout start bc@1.1.0 --waves 10,50,100 --bake 5m --wait\n  outpostctl rollout start bc@1.1.0 --strategy canary --steps 5,25,50 --selector site=a\n  outpostctl rollout start bc@1.1.0 --selector tier=prod --promote"
    )]
    Start(Box<StartArgs>),
    /// Estimate, from the targets' traffic of the last ten minutes, how long each step's gates
    /// need for an unchanged version to pass and for a regression to be caught; warn where that
    /// is longer than the bake and its extensions. Takes the same flags as `start`; starts nothing.
    Plan(Box<SpecArgs>),
    /// The live view of a rollout (the newest when no id is given): wave, gates with their
    /// evidence and verdicts, devices, timeline.
    #[command(
        after_help = "Examples:\n  outpostctl rollout status\n  outpostctl rollout status 3 --watch\n  outpostctl rollout status 3 -o yaml"
    )]
    Status {
        id: Option<String>,
        /// Keep printing until the rollout ends.
        #[arg(long)]
        watch: bool,
    },
    /// Every rollout, oldest first.
    #[command(
        after_help = "Examples:\n  outpostctl rollout list\n  outpostctl rollout list -l site=a\n  outpostctl rollout list -l model=bc,phase=succeeded -o wide"
    )]
    List {
        /// Only rollouts whose device selector has every `key=value` (`-l site=a`); the keys
        /// `model`, `phase` and `strategy` select by those fields instead.
        #[arg(short = 'l', long, value_delimiter = ',')]
        selector: Vec<String>,
    },
    /// Hold the rollout where it is (gates stop being judged).
    Pause { id: String },
    /// Continue a paused rollout: the current wave bakes again from now.
    Resume { id: String },
    /// Skip the remaining waves: every target gets the version now, without further gates.
    Promote { id: String },
    /// Stop the rollout, keeping moved devices on the new version (--keep) or sending them
    /// back to the baseline (--revert).
    #[command(group(clap::ArgGroup::new("how").required(true).args(["keep", "revert"])))]
    Abort {
        id: String,
        /// Moved devices keep the new version.
        #[arg(long)]
        keep: bool,
        /// Moved devices go back to what they ran before.
        #[arg(long)]
        revert: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Follow the rollout until it ends; exit 0 if it succeeded, 1 otherwise.
    #[arg(long)]
    wait: bool,
}

/// What a rollout is: the spec's fields as flags.
#[derive(Debug, clap::Args)]
pub struct SpecArgs {
    /// NAME@VERSION (or give everything in --spec).
    target: Option<String>,
    /// A rollout spec file (JSON or TOML, the API's fields); flags given here override it.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Devices whose labels match, e.g. `tier=prod,site=a` (default: every device).
    #[arg(long, value_delimiter = ',')]
    selector: Vec<String>,
    /// waves (default: device by device), canary (a share of every target's requests, step by
    /// step), or blue-green (a standby on every target, then one switch).
    #[arg(long, value_parser = ["waves", "canary", "blue-green", "shadow"])]
    strategy: Option<String>,
    /// Cumulative percent of the targets per wave, ending at 100 (default 10,50,100).
    #[arg(long, value_delimiter = ',')]
    waves: Vec<f64>,
    /// canary: percent of requests per step, ending at 100 = switch (default 5,25,50,100).
    #[arg(long, value_delimiter = ',')]
    steps: Vec<f64>,
    /// How long each wave runs before its gates decide, e.g. 10m, 90s (default 10m).
    #[arg(long, value_parser = parse_age)]
    bake: Option<u64>,
    /// A gate, repeatable: `error_rate<=1.5x+0.2%`, `error_rate<=+0.5%`, `p99<=1.2x`,
    /// `p95<=40ms`, `accuracy>=-2%` (default: error_rate<=1.5x+0.2%, p99<=1.2x, accuracy>=-2%).
    #[arg(long = "gate")]
    gates: Vec<String>,
    /// The rollout's error budget: the chance of any wrong gate verdict over the whole rollout
    /// (0.01).
    #[arg(long)]
    alpha: Option<f64>,
    /// Requests each side needs before an error-rate or latency gate may pass or fail (200).
    #[arg(long)]
    min_requests: Option<u64>,
    /// Labelled predictions each side needs before an accuracy gate may pass or fail (50).
    #[arg(long)]
    min_labels: Option<u64>,
    /// Bake extensions while gates are inconclusive, before pausing (2).
    #[arg(long)]
    max_extensions: Option<u32>,
    /// Devices that go quiet during a wave: wait, skip, or fail (roll back). Default wait.
    #[arg(long, value_parser = ["wait", "skip", "fail"])]
    offline: Option<String>,
    /// How long a wave may take to run the version on its devices, e.g. 5m (default 5m).
    #[arg(long, value_parser = parse_age)]
    apply_timeout: Option<u64>,
    /// Added to latency ratio limits, in ms (1).
    #[arg(long)]
    latency_slack_ms: Option<f64>,
    /// Roll out a version the registry has archived (a later one replaced it as production).
    #[arg(long)]
    allow_archived: bool,
    /// Make the version production when the rollout succeeds, even if the selector leaves
    /// devices that run the model out (without it such a partial rollout changes no stage).
    #[arg(long)]
    promote: bool,
}

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Every incident, newest last.
    List,
    /// One incident: the gate and its numbers, the devices rolled back, the timeline.
    Show { id: String },
    /// Mark an incident handled (its alert resolves).
    Close { id: String },
}

fn spec_from(args: &SpecArgs) -> Result<Value, Failure> {
    let mut spec = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
            let value: Value = if path.extension().is_some_and(|e| e == "toml") {
                toml_to_json(&text).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?
            } else {
                serde_json::from_str(&text).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?
            };
            if !value.is_object() {
                return Err(Failure::Usage(format!(
                    "{}: a rollout spec is a table of fields",
                    path.display()
                )));
            }
            value
        }
        None => json!({}),
    };
    if let Some(target) = &args.target {
        let (name, version) = split_target(target)?;
        spec["model"] = json!(name);
        spec["version"] = json!(version);
    }
    if spec.get("model").is_none() || spec.get("version").is_none() {
        return Err(Failure::Usage("give NAME@VERSION, or `model` and `version` in --spec".into()));
    }
    if !args.selector.is_empty() {
        spec["selector"] = json!(parse_labels(&args.selector)?);
    }
    let mut set = |key: &str, v: Option<Value>| {
        if let Some(v) = v {
            spec[key] = v;
        }
    };
    set("strategy", args.strategy.as_ref().map(|s| json!(s)));
    set("waves", (!args.waves.is_empty()).then(|| json!(args.waves)));
    set("steps", (!args.steps.is_empty()).then(|| json!(args.steps)));
    set("bake_secs", args.bake.map(|ms| json!(ms / 1000)));
    set("gates", (!args.gates.is_empty()).then(|| json!(args.gates)));
    set("min_requests", args.min_requests.map(|v| json!(v)));
    set("min_labels", args.min_labels.map(|v| json!(v)));
    set("max_extensions", args.max_extensions.map(|v| json!(v)));
    set("offline", args.offline.as_ref().map(|v| json!(v)));
    set("apply_timeout_secs", args.apply_timeout.map(|ms| json!(ms / 1000)));
    set("latency_slack_ms", args.latency_slack_ms.map(|v| json!(v)));
    set("alpha", args.alpha.map(|v| json!(v)));
    set("allow_archived", args.allow_archived.then_some(json!(true)));
    set("promote", args.promote.then_some(json!(true)));
    Ok(spec)
}

/// A TOML spec file as JSON (the API takes JSON).
fn toml_to_json(text: &str) -> Result<Value, String> {
    use figment::providers::Format as _;
    figment::Figment::from(figment::providers::Toml::string(text))
        .extract::<Value>()
        .map_err(|e| e.to_string())
}

fn num(v: Option<f64>, share: bool) -> String {
    match v {
        None => "-".into(),
        Some(x) if share => crate::base::numbers::percent(x),
        Some(x) => crate::base::numbers::ms(x),
    }
}

/// Prints a rollout view for people.
pub fn print_rollout(v: &Value) {
    let spec = &v["spec"];
    let wave = v["wave"].as_u64().unwrap_or(0) as usize;
    let strategy = spec["strategy"].as_str().unwrap_or("waves");
    let step = match strategy {
        "canary" => {
            let n = spec["steps"].as_array().map_or(0, Vec::len);
            format!("step {}/{n} (canary {}%)", wave + 1, spec["steps"][wave])
        }
        "blue-green" => format!("step {}/2 ({})", wave + 1, if wave == 0 { "standby" } else { "switch" }),
        _ => {
            let n = spec["waves"].as_array().map_or(0, Vec::len);
            format!("wave {}/{n} ({}%)", wave + 1, spec["waves"][wave])
        }
    };
    say!(
        "rollout {}  {}@{} (baseline {})  {strategy}  {}  {step}",
        v["id"].as_str().unwrap_or("?"),
        spec["model"].as_str().unwrap_or("?"),
        spec["version"].as_str().unwrap_or("?"),
        baseline_mix(v),
        v["phase"].as_str().unwrap_or("?").to_uppercase(),
    );
    if let Some(reason) = v["paused_reason"].as_str() {
        say!("paused: {reason}");
    }
    if let Some(until) = v["bake_until_ms"].as_u64().filter(|_| v["phase"] == "baking") {
        let left = until.saturating_sub(outpost_shared::endpoints::now_ms()) / 1000;
        say!("bake: {left} s left (extension {}/{})", v["extensions"], spec["max_extensions"]);
    }
    if let Some(incident) = v["incident"].as_str() {
        say!("incident: {incident} (`outpostctl incident show {incident}`)");
    }
    if let Some(gates) = v["gates"].as_array().filter(|g| !g.is_empty()) {
        say!("gates (baseline: {}):", v["baseline_scope"].as_str().unwrap_or(""));
        say!(
            "  {:<20} {:<13} {:>11} {:>11} {:>11} {:>15}",
            "GATE",
            "VERDICT",
            "CANDIDATE",
            "BASELINE",
            "LIMIT",
            "SAMPLES"
        );
        for g in gates {
            let share = !g["gate"].as_str().unwrap_or("").starts_with('p');
            say!(
                "  {:<20} {:<13} {:>11} {:>11} {:>11} {:>15}",
                g["gate"].as_str().unwrap_or(""),
                g["verdict"].as_str().unwrap_or("").to_uppercase(),
                num(g["candidate"].as_f64(), share),
                num(g["baseline"].as_f64(), share),
                num(g["limit"].as_f64(), share),
                format!("{}/{} (min {})", g["candidate_samples"], g["baseline_samples"], g["min_samples"])
            );
            say!("  {:<20} {}", "", g["detail"].as_str().unwrap_or(""));
        }
    }
    if let Some(devices) = v["devices"].as_array() {
        say!("devices:");
        say!(
            "  {:<24} {:>4} {:<14} {:<22} {:<10} {}",
            "DEVICE",
            "WAVE",
            "DESIRED",
            "ACTUAL",
            "LIVENESS",
            "CANDIDATE"
        );
        for d in devices {
            let actual = match (d["actual"].as_str(), d["actual_state"].as_str()) {
                (Some(a), Some(s)) => format!("{a} ({s})"),
                _ => "-".into(),
            };
            say!(
                "  {:<24} {:>4} {:<14} {:<22} {:<10} {}{}",
                d["device"].as_str().unwrap_or(""),
                d["wave"],
                d["desired"].as_str().unwrap_or("-"),
                actual,
                d["liveness"].as_str().unwrap_or(""),
                d["candidate"].as_str().unwrap_or("-"),
                if d["skipped"] == true { " skipped" } else { "" }
            );
        }
    }
    say!("timeline:");
    for t in v["timeline"].as_array().into_iter().flatten() {
        say!("  {:>9}  {}", ago(t["at_ms"].as_u64()), t["message"].as_str().unwrap_or(""));
    }
}

fn secs(v: &Value) -> String {
    match v.as_u64() {
        None => "> 7 days".into(),
        Some(s) if s >= 3600 => format!("{:.1} h", s as f64 / 3600.0),
        Some(s) if s >= 120 => format!("{} min", s / 60),
        Some(s) => format!("{s} s"),
    }
}

/// Prints a rollout plan for people.
fn print_plan(p: &Value) {
    say!(
        "{} target(s); last {} s: {:.2} requests/s and {:.2} labels/s per device; baseline error rate {:.2}%{}",
        p["targets"],
        p["window_secs"],
        p["requests_per_s_per_device"].as_f64().unwrap_or(0.0),
        p["labels_per_s_per_device"].as_f64().unwrap_or(0.0),
        p["baseline_error_rate"].as_f64().unwrap_or(0.0) * 100.0,
        p["baseline_accuracy"].as_f64().map_or(String::new(), |a| format!(", accuracy {:.2}%", a * 100.0))
    );
    say!(
        "{:<26} {:>7} {:>10} {:>9}  {:<24} {:>12} {:>12}  {}",
        "STEP",
        "DEVICES",
        "REQUESTS/S",
        "LABELS/S",
        "GATE",
        "PASS AFTER",
        "CATCH AFTER",
        "REGRESSION PLANNED FOR"
    );
    for step in p["steps"].as_array().into_iter().flatten() {
        for (i, g) in step["gates"].as_array().into_iter().flatten().enumerate() {
            let first = i == 0;
            say!(
                "{:<26} {:>7} {:>10} {:>9}  {:<24} {:>12} {:>12}  {}",
                if first { step["step"].as_str().unwrap_or("") } else { "" },
                if first { step["devices"].to_string() } else { String::new() },
                if first {
                    format!("{:.1}", step["candidate_requests_per_s"].as_f64().unwrap_or(0.0))
                } else {
                    String::new()
                },
                if first {
                    format!("{:.2}", step["candidate_labels_per_s"].as_f64().unwrap_or(0.0))
                } else {
                    String::new()
                },
                g["gate"].as_str().unwrap_or(""),
                secs(&g["pass_after_secs"]),
                secs(&g["catch_after_secs"]),
                g["regression"].as_str().unwrap_or("")
            );
        }
    }
    say!("(times are into each step, for 95 % of rollouts, with evidence carried from earlier steps)");
    let warnings: Vec<&str> =
        p["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if warnings.is_empty() {
        say!("no warnings: every gate can decide within the bake and its extensions");
    }
    for w in warnings {
        say!("warning: {w}");
    }
}

/// Follows a rollout, printing each new timeline line, until it ends; returns its final view.
fn follow(api: &Api, id: &str) -> Result<Value, Failure> {
    let mut shown = 0;
    loop {
        let v: Value = api.get(&format!("/api/v1/rollouts/{id}"))?;
        let timeline = v["timeline"].as_array().cloned().unwrap_or_default();
        for t in timeline.iter().skip(shown) {
            eprintln!("[{id}] {}", t["message"].as_str().unwrap_or(""));
        }
        shown = timeline.len();
        if !matches!(v["phase"].as_str(), Some("applying" | "baking")) {
            return Ok(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

pub fn rollout(cli: &Cli, api: &Api, command: &RolloutCommand) -> Result<(), Failure> {
    let show = |v: &Value| {
        if cli.structured() {
            say!("{}", render(cli, v));
        } else {
            print_rollout(v);
        }
    };
    match command {
        RolloutCommand::Plan(args) => {
            let spec = spec_from(args)?;
            let plan: Value = api.post_json("/api/v1/rollouts/plan", &spec)?;
            if cli.structured() {
                say!("{}", render(cli, &plan));
            } else {
                print_plan(&plan);
            }
            Ok(())
        }
        RolloutCommand::Start(args) => {
            let spec = spec_from(&args.spec)?;
            // The plan's warnings first: a rollout that cannot decide in its bake should not
            // surprise anyone by pausing. A plan that cannot be made does not stop the start.
            if let Ok(plan) = api.post_json::<Value>("/api/v1/rollouts/plan", &spec) {
                for w in plan["warnings"].as_array().into_iter().flatten() {
                    eprintln!("plan: {}", w.as_str().unwrap_or(""));
                }
            }
            let v: Value = api.post_json("/api/v1/rollouts", &spec)?;
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            eprintln!("rollout {id} started");
            if !args.wait {
                show(&v);
                return Ok(());
            }
            let end = follow(api, &id)?;
            show(&end);
            match end["phase"].as_str() {
                Some("succeeded") => Ok(()),
                Some(phase) => Err(Failure::Refused(format!("rollout {id} ended {phase}"))),
                None => Err(Failure::Refused(format!("rollout {id}: no phase in the answer"))),
            }
        }
        RolloutCommand::Status { id, watch } => {
            let id = match id {
                Some(id) => id.clone(),
                None => {
                    let all: Vec<Value> = api.get("/api/v1/rollouts")?;
                    let newest = all.last().ok_or_else(|| Failure::Refused("no rollouts yet".into()))?;
                    newest["id"].as_str().unwrap_or_default().to_owned()
                }
            };
            let v = if *watch { follow(api, &id)? } else { api.get(&format!("/api/v1/rollouts/{id}"))? };
            show(&v);
            Ok(())
        }
        RolloutCommand::List { selector } => {
            let selector = parse_labels(selector)?;
            let mut all: Vec<Value> = api.get("/api/v1/rollouts")?;
            all.retain(|r| selector.iter().all(|(k, v)| rollout_field(r, k) == Some(v.as_str())));
            if cli.structured() {
                say!("{}", render(cli, &all));
                return Ok(());
            }
            if all.is_empty() {
                eprintln!("{}", if selector.is_empty() { "no rollouts yet" } else { "no rollouts match" });
            }
            let mut table = Table::new()
                .col("ID")
                .col("TARGET")
                .col("STRATEGY")
                .col("PHASE")
                .num("STEP")
                .num("DEVICES")
                .col("STARTED")
                .col("INCIDENT")
                .wide("SELECTOR")
                .wide("BASELINE")
                .wide("GATES");
            for r in &all {
                let spec = &r["spec"];
                let steps = match spec["strategy"].as_str() {
                    Some("canary") => spec["steps"].as_array().map_or(0, Vec::len),
                    _ => spec["waves"].as_array().map_or(0, Vec::len),
                };
                let selector: Vec<String> = spec["selector"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                let gates: Vec<&str> =
                    spec["gates"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
                table.row(vec![
                    text(&r["id"]),
                    format!("{}@{}", text(&spec["model"]), text(&spec["version"])),
                    text(&spec["strategy"]),
                    text(&r["phase"]),
                    if steps == 0 {
                        "-".into()
                    } else {
                        format!("{}/{steps}", r["wave"].as_u64().unwrap_or(0) + 1)
                    },
                    r["targets"].as_array().map_or(0, Vec::len).to_string(),
                    ago(r["created_ms"].as_u64()),
                    text(&r["incident"]),
                    if selector.is_empty() { "(every device)".into() } else { selector.join(",") },
                    text(&r["baseline"]),
                    if gates.is_empty() { "-".into() } else { gates.join(" ") },
                ]);
            }
            table.print(cli.wide());
            Ok(())
        }
        RolloutCommand::Pause { id } | RolloutCommand::Resume { id } | RolloutCommand::Promote { id } => {
            let verb = match command {
                RolloutCommand::Pause { .. } => "pause",
                RolloutCommand::Resume { .. } => "resume",
                _ => "promote",
            };
            let v: Value = api.post_json(&format!("/api/v1/rollouts/{id}/{verb}"), &json!({}))?;
            show(&v);
            Ok(())
        }
        RolloutCommand::Abort { id, keep, .. } => {
            let verb = if *keep { "abort-keep" } else { "abort-revert" };
            let v: Value = api.post_json(&format!("/api/v1/rollouts/{id}/{verb}"), &json!({}))?;
            show(&v);
            Ok(())
        }
    }
}

/// Prints an incident for people.
pub fn print_incident(i: &Value) {
    say!(
        "incident {}  {}  rollout {} of {}@{} rolled back to {}",
        i["id"].as_str().unwrap_or(""),
        if i["closed_ms"].is_null() {
            "OPEN".to_owned()
        } else {
            format!("closed by {}", i["closed_by"].as_str().unwrap_or("?"))
        },
        i["rollout"].as_str().unwrap_or(""),
        i["model"].as_str().unwrap_or(""),
        i["version"].as_str().unwrap_or(""),
        i["baseline"].as_str().unwrap_or("")
    );
    say!("opened  {}", ago(i["opened_ms"].as_u64()));
    say!("reason  {}", i["reason"].as_str().unwrap_or(""));
    if let Some(g) = i["gate"].as_object() {
        let share = !g["gate"].as_str().unwrap_or("").starts_with('p');
        say!(
            "gate    {}: candidate {} vs baseline {} (limit {}), samples {}/{}",
            g["gate"].as_str().unwrap_or(""),
            num(g["candidate"].as_f64(), share),
            num(g["baseline"].as_f64(), share),
            num(g["limit"].as_f64(), share),
            g["candidate_samples"],
            g["baseline_samples"]
        );
    }
    say!("baseline side: {}", i["baseline_scope"].as_str().unwrap_or(""));
    let devices: Vec<&str> =
        i["devices_rolled_back"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    say!("devices rolled back ({}): {}", devices.len(), devices.join(", "));
    say!("timeline:");
    for t in i["timeline"].as_array().into_iter().flatten() {
        say!("  {:>9}  {}", ago(t["at_ms"].as_u64()), t["message"].as_str().unwrap_or(""));
    }
}

pub fn incident(cli: &Cli, api: &Api, command: &IncidentCommand) -> Result<(), Failure> {
    let v: Value = match command {
        IncidentCommand::List => api.get("/api/v1/incidents")?,
        IncidentCommand::Show { id } => api.get(&format!("/api/v1/incidents/{id}"))?,
        IncidentCommand::Close { id } => {
            api.post_json(&format!("/api/v1/incidents/{id}/close"), &json!({}))?
        }
    };
    if cli.structured() {
        say!("{}", render(cli, &v));
        return Ok(());
    }
    match command {
        IncidentCommand::List => {
            let all = v.as_array().cloned().unwrap_or_default();
            if all.is_empty() {
                eprintln!("no incidents");
            }
            let mut table = Table::new()
                .col("ID")
                .col("STATE")
                .col("TARGET")
                .col("OPENED")
                .col("REASON")
                .wide("ROLLOUT")
                .wide("BACK TO")
                .wide("CLOSED BY");
            for i in &all {
                let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
                table.row(vec![
                    text(&i["id"]),
                    if i["closed_ms"].is_null() { "OPEN".into() } else { "closed".into() },
                    format!("{}@{}", text(&i["model"]), text(&i["version"])),
                    ago(i["opened_ms"].as_u64()),
                    text(&i["reason"]),
                    text(&i["rollout"]),
                    text(&i["baseline"]),
                    text(&i["closed_by"]),
                ]);
            }
            table.print(cli.wide());
        }
        _ => print_incident(&v),
    }
    Ok(())
}

/// What `rollout list -l KEY=VALUE` compares: `model`, `phase`, `strategy`, or the device
/// selector's value for KEY.
fn rollout_field<'a>(rollout: &'a Value, key: &str) -> Option<&'a str> {
    match key {
        "model" | "strategy" => rollout["spec"][key].as_str(),
        "phase" => rollout["phase"].as_str(),
        _ => rollout["spec"]["selector"][key].as_str(),
    }
}

/// The baseline of a rollout view: its version, or the mix of versions its targets ran
/// (`1.1.0 ×4, 1.0.0 ×1`).
fn baseline_mix(v: &Value) -> String {
    let mix: Vec<(String, u64)> = v["baseline_mix"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(version, n)| (version.clone(), n.as_u64().unwrap_or(0)))
        .collect();
    if mix.len() <= 1 {
        return v["baseline"].as_str().unwrap_or("?").to_owned();
    }
    let mut mix = mix;
    mix.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    mix.iter().map(|(version, n)| format!("{version} ×{n}")).collect::<Vec<_>>().join(", ")
}
