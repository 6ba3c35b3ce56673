//! Model cards: what a version is for and how it behaves, generated from its bundle (purpose,
//! training data, date, hyper-parameters, lineage, the card text its authors wrote: intended
//! use, known limitations) plus measured facts — validation metrics per class and per segment,
//! quality per device label from ground-truth feedback, and drift seen in the fleet.
//!
//! Rendered as Markdown (`outpostctl model card NAME@VERSION`) and as HTML (the dashboard).

use std::fmt::Write as _;

use crate::base::numbers;
use crate::models::registry::VersionRecord;
use crate::models::validation::{Metrics, Report};
use crate::monitoring::quality::QualityReport;
use crate::monitoring::report::DriftHistory;

/// Everything a card shows.
#[derive(Debug)]
pub struct CardData<'a> {
    pub record: &'a VersionRecord,
    pub validation: Option<Report>,
    /// Fleet quality per device label (one report per label key), this version only.
    pub quality: Vec<QualityReport>,
    pub drift: Option<DriftHistory>,
}

fn pct(v: f64) -> String {
    numbers::percent(v)
}

fn d(v: f64) -> String {
    numbers::decimal(v)
}

fn metrics_row(out: &mut String, scope: &str, m: &Metrics) {
    let _ = writeln!(
        out,
        "| {scope} | {} | {} | {} | {} | {} | {} |",
        m.rows,
        pct(m.accuracy),
        d(m.macro_precision),
        d(m.macro_recall),
        d(m.macro_f1),
        d(m.weighted_f1)
    );
}

const METRICS_HEADER: &str = "| scope | rows | accuracy | macro precision | macro recall | macro F1 | weighted F1 |\n|---|---:|---:|---:|---:|---:|---:|";

fn class_table(out: &mut String, m: &Metrics) {
    let _ = writeln!(out, "| class | precision | recall | F1 | support |\n|---|---:|---:|---:|---:|");
    for (class, c) in &m.classes {
        let _ =
            writeln!(out, "| {class} | {} | {} | {} | {} |", d(c.precision), d(c.recall), d(c.f1), c.support);
    }
}

/// The card as Markdown.
pub fn render_markdown(d: &CardData<'_>) -> String {
    let r = d.record;
    let m = &r.manifest;
    let mut out = String::new();
    let _ = writeln!(out, "# Model card: {}@{}\n", r.name, r.version);
    let _ = writeln!(
        out,
        "Stage **{}** · bundle `{}` · model sha256 `{}` · registered {}\n",
        r.stage.as_str(),
        &r.bundle_sha256[..16.min(r.bundle_sha256.len())],
        &r.model_sha256[..16.min(r.model_sha256.len())],
        crate::models::packaging::utc(m.created_at)
    );
    let _ = writeln!(out, "## Purpose, intended use and limitations\n");
    match &m.card {
        Some(text) if !text.trim().is_empty() => {
            let _ = writeln!(out, "{}\n", text.trim());
        }
        _ => {
            let _ = writeln!(
                out,
                "_The bundle carries no card text (`outpostctl bundle create --card FILE`)._\n"
            );
        }
    }
    let _ = writeln!(out, "## Training\n");
    let t = &m.training;
    let _ = writeln!(out, "- date: {}", t.date.as_deref().unwrap_or("not recorded"));
    let _ = writeln!(out, "- dataset sha256: {}", t.dataset_sha256.as_deref().unwrap_or("not recorded"));
    let _ = writeln!(out, "- derived from: {}", t.parent_version.as_deref().unwrap_or("— (first version)"));
    if t.hyperparameters.is_empty() {
        let _ = writeln!(out, "- hyper-parameters: not recorded");
    }
    for (k, v) in &t.hyperparameters {
        let _ = writeln!(out, "- hyper-parameter {k} = {v}");
    }
    match m.baseline_rows {
        Some(rows) => {
            let _ = writeln!(out, "- baseline: {rows} rows, {} features", m.baseline_features.len());
        }
        None => {
            let _ = writeln!(out, "- baseline: none (no drift monitoring on devices)");
        }
    }
    for (k, v) in &m.metadata {
        let _ = writeln!(out, "- {k}: {v}");
    }
    let _ = writeln!(out, "\n## Inputs and outputs\n");
    for (kind, tensors) in [("input", &m.inputs), ("output", &m.outputs)] {
        for s in tensors {
            let dims: Vec<String> =
                s.shape.iter().map(|d| if *d < 0 { "N".into() } else { d.to_string() }).collect();
            let _ = writeln!(out, "- {kind} `{}`: {} [{}]", s.name, s.datatype, dims.join(", "));
        }
    }
    let _ = writeln!(out, "\n## Validation\n");
    match &d.validation {
        None => {
            let _ = writeln!(out, "Not validated yet (`outpostctl model validate`).");
        }
        Some(v) => {
            let verdict = if v.passed { "passed" } else { "FAILED" };
            let _ = writeln!(
                out,
                "The gate **{verdict}** on dataset `{}` ({} rows, label `{}`) at {}.\n",
                &v.dataset_sha256[..16.min(v.dataset_sha256.len())],
                v.metrics.rows,
                v.label,
                crate::models::packaging::utc(v.validated_at_ms / 1000)
            );
            let _ = writeln!(out, "{METRICS_HEADER}");
            metrics_row(&mut out, "all", &v.metrics);
            for (segment, sm) in &v.segments {
                metrics_row(
                    &mut out,
                    &format!("{}={segment}", v.segment.as_deref().unwrap_or("segment")),
                    sm,
                );
            }
            let _ = writeln!(out, "\nPer class (all rows):\n");
            class_table(&mut out, &v.metrics);
            for (segment, sm) in &v.segments {
                let _ =
                    writeln!(out, "\nPer class, {}={segment}:\n", v.segment.as_deref().unwrap_or("segment"));
                class_table(&mut out, sm);
            }
            let _ = writeln!(
                out,
                "\nSingle-row latency on the coordinator: p50 {}, p95 {}, p99 {} ({} runs).",
                numbers::ms(v.latency.p50_ms),
                numbers::ms(v.latency.p95_ms),
                numbers::ms(v.latency.p99_ms),
                v.latency.runs
            );
            for e in &v.edge_cases {
                let _ = writeln!(
                    out,
                    "- edge case {}: {} ({})",
                    e.case,
                    e.outcome,
                    if e.passed { "ok" } else { "FAILED" }
                );
            }
            for f in &v.failures {
                let _ = writeln!(out, "- failure: {f}");
            }
        }
    }
    let _ = writeln!(out, "\n## In the fleet: quality from ground truth\n");
    let mine: Vec<(&QualityReport, &crate::monitoring::quality::VersionQuality)> =
        d.quality.iter().filter_map(|q| q.versions.get(&r.version).map(|v| (q, v))).collect();
    if mine.is_empty() {
        let _ =
            writeln!(out, "No labelled predictions of this version yet (`POST /v1/feedback` on the agents).");
    } else {
        let _ = writeln!(out, "{METRICS_HEADER}");
        metrics_row(&mut out, "all devices", &mine[0].1.metrics);
        for (q, v) in &mine {
            for (segment, sm) in &v.segments {
                metrics_row(&mut out, &format!("{}={segment}", q.by.as_deref().unwrap_or("")), sm);
            }
        }
    }
    let _ = writeln!(out, "\n## In the fleet: drift\n");
    match &d.drift {
        Some(h) if h.windows > 0 => {
            let moved: Vec<String> = h
                .features
                .iter()
                .filter(|f| f.drifted > 0)
                .take(5)
                .map(|f| format!("{} ({:.0}% of windows)", f.feature, 100.0 * f.drift_share()))
                .collect();
            let _ = writeln!(
                out,
                "{} drift windows from {} devices. {}",
                h.windows,
                h.devices,
                if moved.is_empty() {
                    "No feature drifted.".to_owned()
                } else {
                    format!("Moved most: {}.", moved.join(", "))
                }
            );
        }
        _ => {
            let _ = writeln!(out, "No drift verdicts for this version yet.");
        }
    }
    out
}

/// The card as a self-contained HTML page: its Markdown rendered (CommonMark with tables), any
/// HTML in the card's text shown as text.
pub fn render_html(d: &CardData<'_>) -> String {
    let md = render_markdown(d);
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Model card</title><style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}code{background:#f4f4f4;padding:0 3px}</style></head><body>",
    );
    out.push_str(&crate::base::markdown::to_html(&md));
    out.push_str("</body></html>");
    out
}
