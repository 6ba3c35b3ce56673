//! The drift report written out: Markdown, and a self-contained HTML page (inline SVG, no
//! scripts, no CDN).

use std::fmt::Write as _;

use super::{DriftHistory, FeatureSeries, VersionChange};
use crate::models::packaging::utc;

fn cell_text(cell: Option<(u64, u64)>) -> String {
    match cell {
        None => "·".into(),
        Some((n, d)) => format!("{}%", (100 * d).checked_div(n).unwrap_or(0)),
    }
}

fn bucket_label(h: &DriftHistory, i: usize) -> String {
    let at = h.bucket_starts_ms[i] / 1000;
    utc(at).replace('T', " ").trim_end_matches('Z').to_owned()
}

/// When a change happened: within its bucket of the report.
fn change_time(h: &DriftHistory, c: &VersionChange) -> String {
    let shown = |ms: u64| utc(ms / 1000).replace('T', " ").trim_end_matches('Z').to_owned();
    format!("{} – {}", shown(c.at_ms), shown(c.at_ms + h.bucket_ms))
}

/// The report as Markdown.
pub fn render_markdown(h: &DriftHistory) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Drift report: {}\n", h.model);
    if h.windows == 0 {
        let _ = writeln!(
            out,
            "No drift verdicts since {} (bundles with a baseline report them once traffic flows).",
            utc(h.since_ms / 1000)
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{} drift windows from {} devices, {} to {} (buckets of {} s).\n",
        h.windows,
        h.devices,
        bucket_label(h, 0),
        bucket_label(h, h.bucket_starts_ms.len() - 1),
        h.bucket_ms / 1000
    );
    let _ = writeln!(out, "## Features that moved most\n");
    let _ = writeln!(out, "| feature | windows drifted | share | worst score | test |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    for f in h.features.iter().filter(|f| f.drifted > 0) {
        let _ = writeln!(
            out,
            "| {} | {} of {} | {:.0}% | {} | {} |",
            f.feature,
            f.drifted,
            f.windows,
            100.0 * f.drift_share(),
            crate::base::numbers::p_value(f.worst_score),
            f.test
        );
    }
    let stable = h.features.iter().filter(|f| f.drifted == 0).count();
    let _ = writeln!(out, "\n{stable} other feature(s) never drifted.\n");
    let _ = writeln!(out, "## Drift over time (share of windows that drifted)\n");
    let shown: Vec<&FeatureSeries> =
        h.features.iter().filter(|f| f.drifted > 0).chain(&h.prediction).collect();
    let _ = write!(out, "| bucket |");
    for f in &shown {
        let _ = write!(out, " {} |", f.feature);
    }
    let _ = writeln!(out, " versions |");
    let _ = writeln!(out, "|---|{}---|", "---:|".repeat(shown.len()));
    for i in 0..h.bucket_starts_ms.len() {
        let _ = write!(out, "| {} |", bucket_label(h, i));
        for f in &shown {
            let _ = write!(out, " {} |", cell_text(f.buckets[i]));
        }
        let versions: Vec<&str> = h.versions[i].iter().map(String::as_str).collect();
        let _ = writeln!(out, " {} |", versions.join(", "));
    }
    let _ = writeln!(out, "\n## Predictions\n");
    match &h.prediction {
        Some(p) => {
            let _ = writeln!(
                out,
                "The prediction distribution drifted in {} of {} windows ({:.0}%; worst {} score {}).",
                p.drifted,
                p.windows,
                100.0 * p.drift_share(),
                p.test,
                crate::base::numbers::p_value(p.worst_score)
            );
        }
        None => {
            let _ = writeln!(out, "No prediction drift verdicts (the model has no label or score output).");
        }
    }
    let _ = writeln!(out, "\n## Version changes\n");
    if h.version_changes.is_empty() {
        let _ = writeln!(out, "No device changed version in this period: drift here is not a rollout.");
    }
    for c in &h.version_changes {
        let _ = writeln!(out, "- {}: {} → {} on {} device(s)", change_time(h, c), c.from, c.to, c.devices);
    }
    out
}

/// Text made safe for HTML content and double-quoted attributes (the reports, the model card,
/// the dashboard).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One row of heat cells as inline SVG (darker = more windows drifted).
fn heat_row(f: &FeatureSeries) -> String {
    let (w, h) = (16, 16);
    let mut svg = format!(
        "<svg width=\"{}\" height=\"{h}\" role=\"img\" aria-label=\"drift of {}\">",
        w * f.buckets.len(),
        escape(&f.feature)
    );
    for (i, cell) in f.buckets.iter().enumerate() {
        let (fill, title) = match cell {
            None => ("#eeeeee".to_owned(), "no verdict".to_owned()),
            Some((n, d)) => {
                let share = *d as f64 / (*n).max(1) as f64;
                let shade = (235.0 - 200.0 * share) as u8;
                (format!("rgb(235,{shade},{shade})"), format!("{d} of {n} windows drifted"))
            }
        };
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"0\" width=\"{}\" height=\"{h}\" fill=\"{fill}\"><title>{title}</title></rect>",
            i * w,
            w - 1
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The report as a self-contained HTML page.
pub fn render_html(h: &DriftHistory) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Drift report: {m}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{padding:2px 8px;text-align:left}}</style></head><body><h1>Drift report: {m}</h1>",
        m = escape(&h.model)
    );
    if h.windows == 0 {
        out.push_str("<p>No drift verdicts in this period.</p></body></html>");
        return out;
    }
    let _ = write!(
        out,
        "<p>{} drift windows from {} devices, {} to {}.</p><h2>Drift over time</h2><table>\
         <tr><th>feature</th><th>drifted</th><th>over time (each cell {} s)</th></tr>",
        h.windows,
        h.devices,
        escape(&bucket_label(h, 0)),
        escape(&bucket_label(h, h.bucket_starts_ms.len() - 1)),
        h.bucket_ms / 1000
    );
    for f in h.features.iter().chain(&h.prediction) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.0}% of {}</td><td>{}</td></tr>",
            escape(&f.feature),
            100.0 * f.drift_share(),
            f.windows,
            heat_row(f)
        );
    }
    out.push_str("</table><h2>Version changes</h2><ul>");
    if h.version_changes.is_empty() {
        out.push_str("<li>No device changed version in this period.</li>");
    }
    for c in &h.version_changes {
        let _ = write!(
            out,
            "<li>{}: {} → {} on {} device(s)</li>",
            escape(&change_time(h, c)),
            escape(&c.from),
            escape(&c.to),
            c.devices
        );
    }
    out.push_str("</ul></body></html>");
    out
}
