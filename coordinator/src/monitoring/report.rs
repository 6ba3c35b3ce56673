//! The drift report an ML team reads weekly: per-feature drift over time, the features that
//! moved most, how the predictions' distribution changed, and the model versions serving at
//! the time — so drift can be told apart from a rollout.
//!
//! History: every drift verdict devices report is kept in sled tree `drift_history`, key
//! `model \0 at_ms (u64 BE) \0 device`, value JSON `ModelDrift` (upserted, so a resent
//! envelope adds nothing). [`DriftHistory::build`] folds a time range into buckets (at most
//! [`MAX_BUCKETS`], spanning the verdicts actually present), and [`render_markdown`] /
//! [`render_html`] write it out; the HTML is self-contained (inline SVG, no scripts, no CDN).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use outpost_shared::protocol::messages::{DriftReport, ModelDrift};
use serde::{Deserialize, Serialize};

use crate::base::store::{Store, StoreError};
use crate::models::packaging::utc;

/// Most time buckets in a report.
pub const MAX_BUCKETS: usize = 24;

/// The drift-history store.
#[derive(Debug, Clone)]
pub struct History {
    tree: sled::Tree,
    store: Store,
}

fn key(model: &str, at_ms: u64, device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + device.len() + 10);
    k.extend_from_slice(model.as_bytes());
    k.push(0);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.push(0);
    k.extend_from_slice(device.as_bytes());
    k
}

impl History {
    pub fn open(store: &Store) -> Result<History, StoreError> {
        Ok(History { tree: store.tree("drift_history")?, store: store.clone() })
    }

    /// Keeps one device's drift report.
    pub fn put(&self, device: &str, report: &DriftReport) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for m in &report.models {
            batch
                .insert(key(&m.model, report.at_ms, device), crate::base::store::encode("drift verdict", m)?);
        }
        self.tree.apply_batch(batch).map_err(|e| self.store.storage_error(e))
    }

    /// Every verdict of `model` from `since_ms` on: (at_ms, device, verdicts), in time order.
    fn scan(&self, model: &str, since_ms: u64) -> Result<Vec<(u64, String, ModelDrift)>, StoreError> {
        let mut start = model.as_bytes().to_vec();
        start.push(0);
        let skip = start.len();
        let mut end = start.clone();
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        end.push(1);
        start.extend_from_slice(&since_ms.to_be_bytes());
        let mut out = Vec::new();
        for item in self.tree.range(start..end) {
            let (k, v) = item.map_err(|e| self.store.storage_error(e))?;
            let Some(at) = k.get(skip..skip + 8) else { continue };
            let at_ms = u64::from_be_bytes(at.try_into().unwrap_or([0; 8]));
            let device = String::from_utf8_lossy(k.get(skip + 9..).unwrap_or_default()).into_owned();
            if let Ok(m) = serde_json::from_slice::<ModelDrift>(&v) {
                out.push((at_ms, device, m));
            }
        }
        Ok(out)
    }
}

/// One feature's drift over the report's buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSeries {
    pub feature: String,
    /// Per bucket: (windows with a verdict, windows that drifted); `None` = no verdict.
    pub buckets: Vec<Option<(u64, u64)>>,
    pub windows: u64,
    pub drifted: u64,
    /// The largest distance / smallest p-value seen, with the test that produced it.
    pub worst_score: f64,
    pub test: String,
}

impl FeatureSeries {
    /// Share of windows that drifted.
    pub fn drift_share(&self) -> f64 {
        if self.windows == 0 { 0.0 } else { self.drifted as f64 / self.windows as f64 }
    }
}

/// The data behind a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftHistory {
    pub model: String,
    pub since_ms: u64,
    /// Bucket start times (unix ms) and the bucket width.
    pub bucket_starts_ms: Vec<u64>,
    pub bucket_ms: u64,
    pub devices: usize,
    pub windows: u64,
    /// Input features, most drifted first.
    pub features: Vec<FeatureSeries>,
    pub prediction: Option<FeatureSeries>,
    /// Per bucket, the versions that reported.
    pub versions: Vec<BTreeSet<String>>,
    /// (time, device, from, to): a device's version changed between two reports.
    pub version_changes: Vec<(u64, String, String, String)>,
}

impl DriftHistory {
    pub fn build(history: &History, model: &str, since_ms: u64) -> Result<DriftHistory, StoreError> {
        DriftHistory::build_for(history, model, since_ms, None)
    }

    /// [`DriftHistory::build`] over one version's verdicts only, when `version` is given.
    pub fn build_for(
        history: &History,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<DriftHistory, StoreError> {
        let mut rows = history.scan(model, since_ms)?;
        if let Some(version) = version {
            rows.retain(|r| r.2.version == version);
        }
        let first = rows.first().map_or(since_ms, |r| r.0);
        let last = rows.last().map_or(since_ms, |r| r.0);
        let bucket_ms = ((last - first) / MAX_BUCKETS as u64 + 1).max(1000);
        let buckets = (((last - first) / bucket_ms) as usize + 1).min(MAX_BUCKETS);
        let bucket_of = |at: u64| (((at - first) / bucket_ms) as usize).min(buckets - 1);
        let mut series: BTreeMap<String, FeatureSeries> = BTreeMap::new();
        let mut versions = vec![BTreeSet::new(); buckets];
        let mut last_version: BTreeMap<String, String> = BTreeMap::new();
        let mut version_changes = Vec::new();
        let mut devices = BTreeSet::new();
        for (at, device, m) in &rows {
            let b = bucket_of(*at);
            versions[b].insert(m.version.clone());
            if let Some(previous) = last_version.insert(device.clone(), m.version.clone())
                && previous != m.version
            {
                version_changes.push((*at, device.clone(), previous, m.version.clone()));
            }
            devices.insert(device.clone());
            for f in m.features.iter().chain(&m.prediction) {
                let s = series.entry(f.feature.clone()).or_insert_with(|| FeatureSeries {
                    feature: f.feature.clone(),
                    buckets: vec![None; buckets],
                    windows: 0,
                    drifted: 0,
                    worst_score: f.score,
                    test: String::new(),
                });
                let cell = s.buckets[b].get_or_insert((0, 0));
                cell.0 += 1;
                s.windows += 1;
                if f.drifted {
                    cell.1 += 1;
                    s.drifted += 1;
                }
                let p_value = f.test.is_p_value();
                let worse = if p_value { f.score <= s.worst_score } else { f.score >= s.worst_score };
                if worse || s.test.is_empty() {
                    s.worst_score = f.score;
                    s.test = f.test.as_str().to_owned();
                }
            }
        }
        let prediction = series.remove(PREDICTION);
        let mut features: Vec<FeatureSeries> = series.into_values().collect();
        features.sort_by(|a, b| b.drift_share().total_cmp(&a.drift_share()).then(a.feature.cmp(&b.feature)));
        Ok(DriftHistory {
            model: model.to_owned(),
            since_ms,
            bucket_starts_ms: (0..buckets).map(|i| first + i as u64 * bucket_ms).collect(),
            bucket_ms,
            devices: devices.len(),
            windows: rows.len() as u64,
            features,
            prediction,
            versions,
            version_changes,
        })
    }
}

/// The name agents report prediction drift under.
pub const PREDICTION: &str = "_prediction";

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
    for (at, device, from, to) in &h.version_changes {
        let _ = writeln!(out, "- {} {device}: {from} → {to}", utc(at / 1000));
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
    for (at, device, from, to) in &h.version_changes {
        let _ =
            write!(out, "<li>{} {}: {} → {}</li>", utc(at / 1000), escape(device), escape(from), escape(to));
    }
    out.push_str("</ul></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_shared::drift::DriftTest;
    use outpost_shared::protocol::messages::FeatureDrift;

    fn verdict(feature: &str, drifted: bool) -> FeatureDrift {
        FeatureDrift {
            feature: feature.into(),
            test: DriftTest::Ks,
            score: if drifted { 1e-6 } else { 0.6 },
            threshold: 0.05,
            drifted,
            reference_rows: 100,
            current_rows: 150,
            missing: 0,
        }
    }

    #[test]
    fn a_drift_episode_and_a_version_change_show_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let history = History::open(&store).unwrap();
        for i in 0..30u64 {
            let drifted = (10..20).contains(&i);
            let report = DriftReport {
                at_ms: 1_000_000 + i * 60_000,
                models: vec![ModelDrift {
                    model: "bc".into(),
                    version: if i < 25 { "1.0.0".into() } else { "1.1.0".into() },
                    window_rows: 150,
                    rows_seen: 150 * (i + 1),
                    features: vec![verdict("mean_radius", drifted), verdict("mean_area", false)],
                    prediction: Some(verdict(PREDICTION, drifted && i % 2 == 0)),
                }],
            };
            history.put("dev-1", &report).unwrap();
        }
        let h = DriftHistory::build(&history, "bc", 0).unwrap();
        assert_eq!((h.windows, h.devices), (30, 1));
        assert_eq!(h.features[0].feature, "mean_radius", "most drifted first");
        assert_eq!(h.features[0].drifted, 10);
        assert_eq!(h.version_changes.len(), 1);
        let md = render_markdown(&h);
        assert!(md.contains("| mean_radius | 10 of 30 | 33% |"), "{md}");
        assert!(md.contains("1 other feature(s) never drifted"), "{md}");
        assert!(md.contains("dev-1: 1.0.0 → 1.1.0"), "{md}");
        let html = render_html(&h);
        assert!(html.contains("<svg") && html.contains("mean_radius") && !html.contains("<script"), "{html}");
        let later = DriftHistory::build(&history, "bc", 1_000_000 + 29 * 60_000 + 1).unwrap();
        assert_eq!(later.windows, 0);
        assert!(render_markdown(&later).contains("No drift verdicts"));
    }
}
