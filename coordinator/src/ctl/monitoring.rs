//! `outpostctl report …`, `slo …`, `data export`, `alerts`: what the fleet's numbers say.

#[allow(unused_imports)]
use super::*;

/// Runs one `monitoring` command against the coordinator.
pub(super) fn run(cli: &Cli, api: &Api) -> Result<(), Failure> {
    match &cli.command {
        Command::Report(ReportCommand::Drift { model, since, format, out }) => {
            let since_ms = outpost_shared::endpoints::now_ms().saturating_sub(*since);
            let bytes = api.get_bytes(&format!(
                "/api/v1/models/{model}/drift-report?format={format}&since_ms={since_ms}"
            ))?;
            match out {
                Some(path) => {
                    outpost_shared::files::write_atomic(path, &bytes)
                        .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))?;
                    eprintln!("drift report for {model} written to {}", path.display());
                }
                None => say_raw!("{}", String::from_utf8_lossy(&bytes)),
            }
        }
        Command::Slo(SloCommand::Set { name, availability, latency, accuracy, window }) => {
            let spec = serde_json::json!({
                "availability": availability,
                "latency": latency.map(|(p, ms)| serde_json::json!({"percentile": p, "threshold_ms": ms})),
                "accuracy": accuracy,
                "window_secs": window / 1000,
            });
            let saved: serde_json::Value = api.put_json(&format!("/api/v1/models/{name}/slo"), &spec)?;
            say!("{}", render(cli, &saved));
        }
        Command::Slo(SloCommand::Status { name }) => {
            let statuses: Vec<serde_json::Value> = match name {
                Some(name) => vec![api.get(&format!("/api/v1/models/{name}/slo"))?],
                None => {
                    let all: BTreeMap<String, serde_json::Value> = api.get("/api/v1/slo")?;
                    all.into_values().collect()
                }
            };
            if cli.structured() {
                say!("{}", render(cli, &statuses));
                return Ok(());
            }
            if statuses.is_empty() {
                say!("no objectives set (outpostctl slo set NAME --availability 99% --latency 'p95<200ms')");
            }
            statuses.iter().for_each(print_slo);
        }
        Command::Data(DataCommand::Export { model, since, labelled_only, out }) => {
            let since_ms = since.map_or(0, |age| outpost_shared::endpoints::now_ms().saturating_sub(age));
            let path =
                format!("/api/v1/models/{model}/data?since_ms={since_ms}&labelled_only={labelled_only}");
            let bytes = api.get_bytes(&path)?;
            outpost_shared::files::write_atomic(out, &bytes)
                .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", out.display())))?;
            let text = String::from_utf8_lossy(&bytes);
            let rows = text.lines().skip(1).count();
            let labelled = text.lines().skip(1).filter(|l| !l.ends_with(',')).count();
            say!("{rows} predictions ({labelled} labelled) of {model} written to {}", out.display());
        }
        Command::Alerts { selector } => {
            let selector = parse_labels(selector)?;
            let mut alerts: Vec<serde_json::Value> = api.get("/api/v1/alerts")?;
            alerts.retain(|a| selector.iter().all(|(k, v)| a["labels"][k].as_str() == Some(v.as_str())));
            if cli.structured() {
                say!("{}", render(cli, &alerts));
                return Ok(());
            }
            if alerts.is_empty() {
                eprintln!("{}", if selector.is_empty() { "no alerts" } else { "no alerts match" });
            }
            let mut table = Table::new()
                .col("ALERT")
                .col("STATE")
                .col("SINCE")
                .num("DEVICES")
                .col("LABELS")
                .wide("SUMMARY")
                .wide("DEVICE IDS");
            for a in &alerts {
                let state = if a["ends_at_ms"].is_null() { "FIRING" } else { "resolved" };
                let labels: Vec<String> = a["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| *k != "alertname")
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                let devices: Vec<&str> =
                    a["devices"].as_array().into_iter().flatten().filter_map(|d| d.as_str()).collect();
                table.row(vec![
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    state.to_owned(),
                    ago(a["starts_at_ms"].as_u64()),
                    devices.len().to_string(),
                    labels.join(" "),
                    a["summary"].as_str().unwrap_or("-").to_owned(),
                    if devices.is_empty() { "-".into() } else { devices.join(",") },
                ]);
            }
            table.print(cli.wide());
        }
        _ => return Err(Failure::Usage(format!("not a monitoring command: {:?}", cli.command))),
    }
    Ok(())
}

/// The human view of `slo status`: targets and actuals in their units (percent, ms).
pub(super) fn print_slo(status: &serde_json::Value) {
    use crate::base::numbers;
    let status: crate::monitoring::slo::SloStatus = match serde_json::from_value(status.clone()) {
        Ok(s) => s,
        Err(e) => {
            say!("the coordinator sent an SLO status this outpostctl cannot read ({e}); try -o json");
            return;
        }
    };
    say!("{} (window {})", status.model, numbers::ms(status.spec.window_secs as f64 * 1000.0));
    let mut table = Table::new()
        .col("OBJECTIVE")
        .col("TARGET")
        .col("ACTUAL")
        .num("EVENTS")
        .num("BAD")
        .num("BURN")
        .num("BUDGET LEFT")
        .col("STATUS");
    for o in &status.objectives {
        table.row(vec![
            o.objective.clone(),
            o.target_text(),
            o.actual_text(),
            o.events.to_string(),
            o.bad_events.to_string(),
            numbers::decimal(o.burn_rate),
            numbers::percent(o.budget_remaining),
            if o.compliant { "ok".into() } else { "BREACHED".into() },
        ]);
    }
    for line in table.lines(false) {
        say!("  {line}");
    }
}

/// The human view of `model quality`.
pub(super) fn print_quality(report: &serde_json::Value) {
    use crate::base::numbers;
    let versions = report["versions"].as_object().cloned().unwrap_or_default();
    if versions.is_empty() {
        say!("no labelled predictions yet (agents take labels at POST /v1/feedback)");
    }
    let line = |scope: &str, m: &serde_json::Value| {
        say!(
            "  {:<16} {:>7} {:>9} {:>9} {:>9}",
            scope,
            m["rows"].as_u64().unwrap_or(0),
            numbers::percent(m["accuracy"].as_f64().unwrap_or(0.0)),
            numbers::decimal(m["macro_f1"].as_f64().unwrap_or(0.0)),
            numbers::decimal(m["weighted_f1"].as_f64().unwrap_or(0.0))
        );
    };
    for (version, q) in versions {
        say!(
            "{}@{version}: {} labels ({} without a predicted label)",
            report["model"].as_str().unwrap_or(""),
            q["labelled"],
            q["without_prediction"]
        );
        say!("  {:<16} {:>7} {:>9} {:>9} {:>9}", "SCOPE", "ROWS", "ACCURACY", "MACRO F1", "WEIGHT F1");
        line("all", &q["metrics"]);
        for (segment, m) in q["segments"].as_object().into_iter().flatten() {
            line(&format!("{}={segment}", report["by"].as_str().unwrap_or("")), m);
        }
        for (class, c) in q["metrics"]["classes"].as_object().into_iter().flatten() {
            say!(
                "  class {:<10} precision {} recall {} f1 {} support {}",
                class,
                numbers::decimal(c["precision"].as_f64().unwrap_or(0.0)),
                numbers::decimal(c["recall"].as_f64().unwrap_or(0.0)),
                numbers::decimal(c["f1"].as_f64().unwrap_or(0.0)),
                c["support"]
            );
        }
    }
}
