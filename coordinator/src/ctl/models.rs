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
            if cli.structured() {
                say!("{}", render(cli, &run));
            } else {
                print_run(&run);
            }
            if run["validation_passed"] != true {
                return Err(Failure::Refused(format!("retraining run {id} produced no validated version")));
            }
        }
        Command::Retrain(RetrainCommand::History { name }) => {
            let runs: Vec<serde_json::Value> = api.get(&format!("/api/v1/models/{name}/retraining"))?;
            if cli.structured() {
                say!("{}", render(cli, &runs));
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
    use crate::models::packaging::utc;
    let print_json = |v: &serde_json::Value| say!("{}", render(cli, v));
    match command {
        ModelCommand::Push(args) => {
            eprintln!("building {}@{} from {}…", args.name, args.version, args.model.display());
            let (bundle, evidence) = args.bundle()?;
            eprintln!("model {evidence}");
            let bytes = bundle.to_bytes();
            let (status, response) = api.put_with_progress(
                &format!("/api/v1/models/{}/versions/{}", args.name, args.version),
                &bytes,
            )?;
            if cli.structured() {
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
            if cli.structured() {
                print_json(&serde_json::Value::Array(versions));
                return Ok(());
            }
            print_versions(cli, &versions);
        }
        ModelCommand::Show { target } => {
            let Some((name, version)) = target.split_once('@') else {
                // A name alone: its versions, newest last (`model list` for one model).
                let versions: Vec<serde_json::Value> = api.get(&format!("/api/v1/models/{target}"))?;
                if cli.structured() {
                    print_json(&serde_json::Value::Array(versions));
                } else {
                    print_versions(cli, &versions);
                }
                return Ok(());
            };
            let (name, version) = split_target(&format!("{name}@{version}"))?;
            let v: serde_json::Value = api.get(&format!("/api/v1/models/{name}/versions/{version}"))?;
            if cli.structured() {
                print_json(&v);
            } else {
                print_version(&v);
            }
        }
        ModelCommand::History { name } => {
            let versions: Vec<serde_json::Value> = api.get(&format!("/api/v1/models/{name}"))?;
            if cli.structured() {
                print_json(&serde_json::Value::Array(versions));
                return Ok(());
            }
            let mut rows: Vec<(u64, Vec<String>)> = Vec::new();
            for v in &versions {
                for t in v["transitions"].as_array().into_iter().flatten() {
                    let at = t["at_ms"].as_u64().unwrap_or(0);
                    let cell = |key: &str, none: &str| t[key].as_str().unwrap_or(none).to_owned();
                    rows.push((
                        at,
                        vec![
                            v["version"].as_str().unwrap_or("").to_owned(),
                            utc(at / 1000),
                            cell("from", "-"),
                            cell("to", ""),
                            cell("by", ""),
                            cell("note", ""),
                        ],
                    ));
                }
            }
            rows.sort_by_key(|r| r.0);
            let mut table = Table::new().col("VERSION").col("AT").col("FROM").col("TO").col("BY").col("NOTE");
            for (_, row) in rows {
                table.row(row);
            }
            table.print(cli.wide());
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
            if cli.structured() {
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
            if cli.structured() {
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
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".into(), crate::base::numbers::decimal);
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
                let s = match v.as_f64() {
                    Some(x) if v.is_f64() => crate::base::numbers::decimal(x),
                    _ => v.to_string(),
                };
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

/// The table of `model list` and `model show NAME`.
fn print_versions(cli: &Cli, versions: &[serde_json::Value]) {
    use crate::models::packaging::utc;
    let mut table = Table::new()
        .col("MODEL")
        .col("VERSION")
        .col("STAGE")
        .col("VALIDATED")
        .col("PUSHED")
        .col("PUSHED BY")
        .wide("BUNDLE SHA256")
        .wide("SIGNED BY");
    for v in versions {
        let validated = match v["validation_passed"].as_bool() {
            Some(true) => "passed",
            Some(false) => "FAILED",
            None => "-",
        };
        let signers: Vec<&str> =
            v["signed_by"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect();
        table.row(vec![
            v["name"].as_str().unwrap_or("").to_owned(),
            v["version"].as_str().unwrap_or("").to_owned(),
            v["stage"].as_str().unwrap_or("").to_owned(),
            validated.to_owned(),
            utc(v["pushed_at_ms"].as_u64().unwrap_or(0) / 1000),
            v["pushed_by"].as_str().unwrap_or("").to_owned(),
            v["bundle_sha256"].as_str().unwrap_or("-").to_owned(),
            if signers.is_empty() { "-".into() } else { signers.join(",") },
        ]);
    }
    table.print(cli.wide());
}

/// The human view of `model show NAME@VERSION`: what people look for first, then where the
/// rest is (`-o yaml` prints the whole record).
fn print_version(v: &serde_json::Value) {
    use crate::models::packaging::utc;
    let text = |x: &serde_json::Value| x.as_str().unwrap_or("-").to_owned();
    let manifest = &v["manifest"];
    say!("model      {}@{}", text(&v["name"]), text(&v["version"]));
    say!("stage      {}", text(&v["stage"]));
    say!("pushed     {} by {}", utc(v["pushed_at_ms"].as_u64().unwrap_or(0) / 1000), text(&v["pushed_by"]));
    say!("bundle     sha256 {} ({} bytes)", text(&v["bundle_sha256"]), v["bundle_size"]);
    say!("onnx       sha256 {}", text(&v["model_sha256"]));
    let signers: Vec<&str> =
        v["signed_by"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect();
    say!("signed by  {}", if signers.is_empty() { "-".into() } else { signers.join(", ") });
    if let Some(inputs) = manifest["inputs"].as_array() {
        for i in inputs {
            say!("input      {} {} {}", text(&i["name"]), text(&i["datatype"]), i["shape"]);
        }
    }
    if let Some(outputs) = manifest["outputs"].as_array() {
        for o in outputs {
            say!("output     {} {} {}", text(&o["name"]), text(&o["datatype"]), o["shape"]);
        }
    }
    if let Some(key_id) = manifest["encrypted_to"].as_str() {
        say!("encrypted  to bundle key {key_id} (stored and deployed as it is; loads where the key is)");
    }
    match manifest["baseline_rows"].as_u64() {
        Some(rows) => say!(
            "baseline   {} features over {rows} rows",
            manifest["baseline_features"].as_array().map_or(0, Vec::len)
        ),
        None => say!("baseline   none (no drift verdicts for this version)"),
    }
    match v["validation"].as_object() {
        Some(_) => {
            let r = &v["validation"];
            let f = |x: &serde_json::Value| x.as_f64().map_or("-".into(), crate::base::numbers::decimal);
            say!(
                "validation {} on {} rows: accuracy {}, macro F1 {}",
                if r["passed"].as_bool() == Some(true) { "passed" } else { "FAILED" },
                r["metrics"]["rows"],
                f(&r["metrics"]["accuracy"]),
                f(&r["metrics"]["macro_f1"])
            );
        }
        None => say!("validation not run yet (`outpostctl model validate`)"),
    }
    let transitions = v["transitions"].as_array().map_or(0, Vec::len);
    say!("history    {transitions} stage transition(s) (`outpostctl model history {}`)", text(&v["name"]));
    say!("more       `-o yaml` or `-o json` prints the whole record; `model card` the card");
}
