//! `outpostctl model …`, `retrain …`, `bundle export`: the registry and the retraining loop.

#[allow(unused_imports)]
use super::*;

/// Runs one `models` command against the coordinator.
pub(super) fn run(cli: &Cli, api: &Api) -> Result<(), Failure> {
    match &cli.command {
        Command::Retrain(RetrainCommand::Run { name, wait }) => {
            let started: serde_json::Value =
                api.post_json(&format!("/api/v1/models/{name}/retrain"), &serde_json::json!({}))?;
            let id = started["id"].as_str().unwrap_or_default().to_owned();
            eprintln!("retraining run {id} started");
            if !wait {
                say!("{id}");
                return Ok(());
            }
            let run = loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                let runs: Vec<serde_json::Value> = api.get(&format!("/api/v1/models/{name}/retraining"))?;
                let Some(run) = runs.into_iter().find(|r| r["id"] == id.as_str()) else { continue };
                if !run["finished_ms"].is_null() {
                    break run;
                }
            };
            if cli.json() {
                say!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
            } else {
                print_run(&run);
            }
            if run["validation_passed"] != true {
                return Err(Failure::Refused(format!("retraining run {id} produced no validated version")));
            }
        }
        Command::Retrain(RetrainCommand::History { name }) => {
            let runs: Vec<serde_json::Value> = api.get(&format!("/api/v1/models/{name}/retraining"))?;
            if cli.json() {
                say!("{}", serde_json::to_string_pretty(&runs).unwrap_or_default());
                return Ok(());
            }
            if runs.is_empty() {
                say!("no retraining runs of {name} yet (`outpostctl retrain run {name}` starts one)");
            }
            runs.iter().for_each(print_run);
        }
        Command::Bundle(BundleCommand::Export { target, file }) => {
            let (name, version) = split_target(target)?;
            let bytes = api.get_bytes(&format!("/api/v1/models/{name}/versions/{version}/bundle"))?;
            outpost_shared::files::write_atomic(file, &bytes)
                .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", file.display())))?;
            say!("{name}@{version} exported to {} ({} bytes)", file.display(), bytes.len());
        }
        Command::Bundle(_) | Command::Key(_) => {}
        Command::Model(command) => model_command(cli, api, command)?,
        _ => return Err(Failure::Usage(format!("not a models command: {:?}", cli.command))),
    }
    Ok(())
}

pub(super) fn model_command(cli: &Cli, api: &Api, command: &ModelCommand) -> Result<(), Failure> {
    use outpost_coordinator::models::packaging::{self, utc};
    let print_json = |v: &serde_json::Value| say!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match command {
        ModelCommand::Push(args) => {
            let spec = args.spec()?;
            eprintln!("building {}@{} from {}…", args.name, args.version, args.model.display());
            let (bundle, evidence) =
                packaging::build(&spec, now_secs()).map_err(|e| Failure::Refused(e.to_string()))?;
            eprintln!("model {evidence}");
            let bytes = bundle.to_bytes();
            let (status, response) = api.put_with_progress(
                &format!("/api/v1/models/{}/versions/{}", args.name, args.version),
                &bytes,
            )?;
            if cli.json() {
                print_json(&response);
            } else if status == 201 {
                say!(
                    "{}@{} registered (bundle sha256 {}, signed by {})",
                    args.name,
                    args.version,
                    response["record"]["bundle_sha256"].as_str().unwrap_or("?"),
                    response["record"]["signed_by"]
                );
            } else {
                say!(
                    "{}@{} was already registered with this model; nothing changed",
                    args.name,
                    args.version
                );
            }
        }
        ModelCommand::List => {
            let versions: Vec<serde_json::Value> = api.get("/api/v1/models")?;
            if cli.json() {
                print_json(&serde_json::Value::Array(versions));
                return Ok(());
            }
            say!(
                "{:<20} {:<12} {:<11} {:<10} {:<20} PUSHED BY",
                "MODEL",
                "VERSION",
                "STAGE",
                "VALIDATED",
                "PUSHED"
            );
            for v in versions {
                let validated = match v["validation_passed"].as_bool() {
                    Some(true) => "passed",
                    Some(false) => "FAILED",
                    None => "-",
                };
                say!(
                    "{:<20} {:<12} {:<11} {:<10} {:<20} {}",
                    v["name"].as_str().unwrap_or(""),
                    v["version"].as_str().unwrap_or(""),
                    v["stage"].as_str().unwrap_or(""),
                    validated,
                    utc(v["pushed_at_ms"].as_u64().unwrap_or(0) / 1000),
                    v["pushed_by"].as_str().unwrap_or("")
                );
            }
        }
        ModelCommand::Show { target } => {
            let (name, version) = split_target(target)?;
            let v: serde_json::Value = api.get(&format!("/api/v1/models/{name}/versions/{version}"))?;
            print_json(&v);
        }
        ModelCommand::History { name } => {
            let versions: Vec<serde_json::Value> = api.get(&format!("/api/v1/models/{name}"))?;
            let mut rows: Vec<(u64, String)> = Vec::new();
            for v in &versions {
                for t in v["transitions"].as_array().into_iter().flatten() {
                    let at = t["at_ms"].as_u64().unwrap_or(0);
                    rows.push((
                        at,
                        format!(
                            "{}  {:<12} {:>10} -> {:<10} by {:<12} {}",
                            utc(at / 1000),
                            v["version"].as_str().unwrap_or(""),
                            t["from"].as_str().unwrap_or("-"),
                            t["to"].as_str().unwrap_or(""),
                            t["by"].as_str().unwrap_or(""),
                            t["note"].as_str().unwrap_or("")
                        ),
                    ));
                }
            }
            rows.sort_by_key(|r| r.0);
            for (_, line) in rows {
                say!("{line}");
            }
        }
        ModelCommand::Diff { a, b } => {
            let (na, va) = split_target(a)?;
            let (nb, vb) = split_target(b)?;
            let x: serde_json::Value = api.get(&format!("/api/v1/models/{na}/versions/{va}"))?;
            let y: serde_json::Value = api.get(&format!("/api/v1/models/{nb}/versions/{vb}"))?;
            let mut lines = Vec::new();
            diff_values("", &x, &y, &mut lines);
            if lines.is_empty() {
                say!("{a} and {b} do not differ");
            }
            for line in lines {
                say!("{line}");
            }
        }
        ModelCommand::Validate { target, dataset, label, segment, thresholds } => {
            let (name, version) = split_target(target)?;
            let bytes = std::fs::read(dataset)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", dataset.display())))?;
            let mut query = vec![("label", label.clone())];
            if let Some(s) = segment {
                query.push(("segment", s.clone()));
            }
            query.extend(thresholds.given().into_iter().map(|(k, v)| (k, v.to_string())));
            eprintln!("validating {name}@{version} on {} ({} bytes)…", dataset.display(), bytes.len());
            let report: serde_json::Value = api.post_bytes_query(
                &format!("/api/v1/models/{name}/versions/{version}/validate"),
                &query,
                &bytes,
            )?;
            if cli.json() {
                print_json(&report);
            } else {
                print_report(&report);
            }
            if report["passed"].as_bool() != Some(true) {
                return Err(Failure::Refused(format!("{name}@{version} failed validation")));
            }
        }
        ModelCommand::Stage { target, stage, note } => {
            let (name, version) = split_target(target)?;
            let v: serde_json::Value = api.post_json(
                &format!("/api/v1/models/{name}/versions/{version}/stage"),
                &serde_json::json!({"stage": stage, "note": note}),
            )?;
            say!("{name}@{version} is now {}", v["stage"].as_str().unwrap_or("?"));
        }
        ModelCommand::Quality { name, by, since } => {
            let mut path = format!("/api/v1/models/{name}/quality?");
            if let Some(by) = by {
                path.push_str(&format!("by={by}&"));
            }
            if let Some(age_ms) = since {
                path.push_str(&format!(
                    "since_ms={}",
                    outpost_shared::endpoints::now_ms().saturating_sub(*age_ms)
                ));
            }
            let report: serde_json::Value = api.get(path.trim_end_matches(['?', '&']))?;
            if cli.json() {
                print_json(&report);
                return Ok(());
            }
            monitoring::print_quality(&report);
        }
        ModelCommand::Card { target, format, out } => {
            let (name, version) = split_target(target)?;
            let bytes =
                api.get_bytes(&format!("/api/v1/models/{name}/versions/{version}/card?format={format}"))?;
            match out {
                Some(path) => {
                    outpost_shared::files::write_atomic(path, &bytes)
                        .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))?;
                    eprintln!("model card of {name}@{version} written to {}", path.display());
                }
                None => say_raw!("{}", String::from_utf8_lossy(&bytes)),
            }
        }
        ModelCommand::Policy { name, thresholds } => {
            let path = format!("/api/v1/models/{name}/policy");
            let mut policy: serde_json::Value = api.get(&path)?;
            let changes = thresholds.given();
            if !changes.is_empty() {
                for (k, v) in changes {
                    policy[k] = serde_json::json!(v);
                }
                policy = api.put_json(&path, &policy)?;
            }
            print_json(&policy);
        }
        ModelCommand::Purge { target } => {
            let (name, version) = split_target(target)?;
            let _: serde_json::Value = api.delete(&format!("/api/v1/models/{name}/versions/{version}"))?;
            say!("{name}@{version} purged");
        }
    }
    Ok(())
}

pub(super) fn print_report(r: &serde_json::Value) {
    let m = &r["metrics"];
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |x| format!("{x:.4}"));
    say!(
        "{}@{}: {} rows, accuracy {}, macro precision {}, recall {}, F1 {}, weighted F1 {}",
        r["model"].as_str().unwrap_or(""),
        r["version"].as_str().unwrap_or(""),
        m["rows"],
        f(&m["accuracy"]),
        f(&m["macro_precision"]),
        f(&m["macro_recall"]),
        f(&m["macro_f1"]),
        f(&m["weighted_f1"])
    );
    for (class, c) in m["classes"].as_object().into_iter().flatten() {
        say!(
            "  class {class:<6} precision {} recall {} F1 {} support {}",
            f(&c["precision"]),
            f(&c["recall"]),
            f(&c["f1"]),
            c["support"]
        );
    }
    for (segment, s) in r["segments"].as_object().into_iter().flatten() {
        say!(
            "  segment {segment:<8} rows {} accuracy {} macro F1 {}",
            s["rows"],
            f(&s["accuracy"]),
            f(&s["macro_f1"])
        );
    }
    let l = &r["latency"];
    say!(
        "  latency (1 row, this CPU): p50 {} ms, p95 {} ms, p99 {} ms over {} runs",
        f(&l["p50_ms"]),
        f(&l["p95_ms"]),
        f(&l["p99_ms"]),
        l["runs"]
    );
    if let Some(b) = r["baseline_latency"].as_object() {
        say!(
            "  production {} timed in the same run: p50 {} ms, p99 {} ms",
            r["baseline_version"].as_str().unwrap_or("?"),
            f(&b["p50_ms"]),
            f(&b["p99_ms"])
        );
    }
    for e in r["edge_cases"].as_array().into_iter().flatten() {
        say!(
            "  edge case {:<26} {} — {}",
            e["case"].as_str().unwrap_or(""),
            if e["passed"].as_bool() == Some(true) { "ok  " } else { "FAIL" },
            e["outcome"].as_str().unwrap_or("")
        );
    }
    for c in r["regression"].as_array().into_iter().flatten() {
        say!(
            "  vs production {}: {:<9} {} (production {}, limit {}) {}",
            r["baseline_version"].as_str().unwrap_or("?"),
            c["check"].as_str().unwrap_or(""),
            f(&c["candidate"]),
            f(&c["production"]),
            f(&c["limit"]),
            if c["passed"].as_bool() == Some(true) { "ok" } else { "FAIL" }
        );
    }
    if r["passed"].as_bool() == Some(true) {
        say!("PASSED");
    } else {
        for failure in r["failures"].as_array().into_iter().flatten() {
            say!("  failure: {}", failure.as_str().unwrap_or(""));
        }
        say!("FAILED");
    }
}

/// Leaf-by-leaf differences between two JSON values (arrays compared whole).
pub(super) fn diff_values(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    const SKIP: [&str; 3] = ["transitions", "validated_at_ms", "pushed_at_ms"];
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if SKIP.contains(&k.as_str()) {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff_values(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => {
            let show = |v: &Value| {
                let s = v.to_string();
                if s.len() > 80 { format!("{}…", &s[..s.floor_char_boundary(80)]) } else { s }
            };
            out.push(format!("{path}: {} -> {}", show(a), show(b)));
        }
        _ => {}
    }
}

/// The human view of one retraining run.
pub(super) fn print_run(run: &serde_json::Value) {
    let s = |k: &str| run[k].as_str().unwrap_or("-").to_owned();
    say!(
        "{} {} ({}) {} -> {}: {} rows, command {:.1} s{}",
        s("id"),
        s("status"),
        s("trigger"),
        s("parent_version"),
        s("version"),
        run["data_rows"],
        run["command_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        if run["slow"] == true { " (SLOW: over 10x the previous run)" } else { "" }
    );
    match run["validation_passed"].as_bool() {
        Some(true) => say!("  validation passed"),
        Some(false) => say!("  validation FAILED: {}", run["validation_failures"]),
        None => {}
    }
    if let Some(devices) = run["canary_devices"].as_array().filter(|d| !d.is_empty()) {
        say!("  canary on {} device(s)", devices.len());
    }
    if let Some(error) = run["error"].as_str() {
        say!("  error: {error}");
    }
}
