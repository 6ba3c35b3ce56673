//! The models list and a model's page: versions, objectives, charts over time, drift, quality.

use outpost_shared::histogram::LogHistogram;

#[allow(unused_imports)]
use super::*;
use crate::base::store::StoreError;
use crate::monitoring::quality::{LabelCounts, Labels, NO_VALUE, Tally};
use crate::monitoring::slo::{Slos, rollup};

pub struct ModelList {
    versions: Vec<VersionRecord>,
}

impl ModelList {
    pub fn gather(app: &AppState) -> Result<ModelList, ApiError> {
        Ok(ModelList { versions: app.registry.list()? })
    }

    pub fn render(&self) -> String {
        let mut by_model: BTreeMap<&str, Vec<&VersionRecord>> = BTreeMap::new();
        for v in &self.versions {
            by_model.entry(&v.name).or_default().push(v);
        }
        if by_model.is_empty() {
            return "<p class=\"empty\">The registry is empty: <code>outpostctl model push</code>.</p>"
                .into();
        }
        let mut out = String::from(
            "<table data-table=\"models\"><tr><th>model</th><th>production</th><th>versions</th><th>newest</th></tr>",
        );
        for (name, versions) in by_model {
            let production = versions
                .iter()
                .find(|v| v.stage == crate::models::registry::Stage::Production)
                .map_or("—".to_owned(), |v| e(&v.version));
            let newest = versions.iter().max_by_key(|v| v.pushed_at_ms);
            let _ = write!(
                out,
                "<tr data-model=\"{}\"><td>{}</td><td>{production}</td><td>{}</td><td>{}</td></tr>",
                e(name),
                link(&format!("/ui/models/{}", seg(name)), name),
                versions.len(),
                newest.map_or(String::new(), |v| format!(
                    "{} {}",
                    e(&v.version),
                    badge("info", v.stage.as_str())
                ))
            );
        }
        out.push_str("</table>");
        out
    }
}

pub struct ModelPage {
    pub name: String,
    versions: Vec<VersionRecord>,
    slo: Option<SloStatus>,
    starts: Vec<u64>,
    traffic: Vec<BTreeMap<String, TrafficWindow>>,
    accuracy: Vec<crate::monitoring::quality::Correct>,
    drift: DriftHistory,
    quality: QualityReport,
    bucket_ms: u64,
    /// Rollouts and incidents of this model: markers on the charts.
    markers: Vec<Marker>,
    /// Error rate, latency and accuracy per value of a device label (site first).
    breakdowns: Vec<Breakdown>,
}

/// One device label's values and how the model does at each.
struct Breakdown {
    label: String,
    rows: Vec<BreakdownRow>,
}

struct BreakdownRow {
    value: String,
    devices: usize,
    requests: u64,
    errors: u64,
    p95_ms: Option<f64>,
    /// Accuracy and labelled predictions, over every version.
    accuracy: Option<(f64, u64)>,
}

/// A model's roll-ups over a range, as breakdowns by device label read them.
struct LabelSums {
    total: TrafficWindow,
    traffic: BTreeMap<(String, String), TrafficWindow>,
    labelled_total: Tally,
    labelled: BTreeMap<(String, String, String), LabelCounts>,
}

impl LabelSums {
    fn read(
        slos: &Slos,
        labels: &Labels,
        model: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<LabelSums, StoreError> {
        Ok(LabelSums {
            total: slos.rolled_up(model, from_ms, to_ms)?,
            traffic: slos.rolled_up_by_label(model, from_ms, to_ms)?,
            labelled_total: labels.rolled_up(model, from_ms, to_ms)?,
            labelled: labels.rolled_up_by_label(model, from_ms, to_ms, None)?,
        })
    }

    /// The rows by device label `key`: one per value, and [`NO_VALUE`] for devices without
    /// the label (the totals less every value's); `reporting` (the labels of each device to
    /// count) gives the devices column.
    fn breakdown(&self, key: &str, reporting: &[&BTreeMap<String, String>]) -> Vec<BreakdownRow> {
        // Per value of the label: its traffic and its labelled predictions.
        let mut sums: BTreeMap<&str, (TrafficWindow, Tally)> = BTreeMap::new();
        for ((_, value), w) in self.traffic.iter().filter(|((label, _), _)| label == key) {
            rollup::add(&mut sums.entry(value).or_default().0, w);
        }
        for ((_, value, _), counts) in self.labelled.iter().filter(|((label, ..), _)| label == key) {
            let (t, sum) = (counts.tally(), &mut sums.entry(value).or_default().1);
            sum.labelled += t.labelled;
            sum.correct += t.correct;
        }
        let (mut rest, mut rest_labelled) = (self.total.clone(), self.labelled_total);
        let mut rows: BTreeMap<String, BreakdownRow> = BTreeMap::new();
        for (value, (w, t)) in &sums {
            rest.requests = rest.requests.saturating_sub(w.requests);
            rest.errors = rest.errors.saturating_sub(w.errors);
            if rest.latency_us.subtract(&w.latency_us).is_err() {
                rest.latency_us = LogHistogram::default();
            }
            rest_labelled.labelled = rest_labelled.labelled.saturating_sub(t.labelled);
            rest_labelled.correct = rest_labelled.correct.saturating_sub(t.correct);
            rows.insert((*value).to_owned(), breakdown_row(value, w, *t));
        }
        if rest.requests > 0 || rest_labelled.labelled > 0 {
            rows.insert(NO_VALUE.to_owned(), breakdown_row(NO_VALUE, &rest, rest_labelled));
        }
        for labels in reporting {
            let value = labels.get(key).map_or(NO_VALUE, String::as_str);
            let empty = || breakdown_row(value, &TrafficWindow::default(), Tally::default());
            rows.entry(value.to_owned()).or_insert_with(empty).devices += 1;
        }
        rows.into_values().collect()
    }
}

/// A breakdown's row for `value`, with no devices counted yet.
fn breakdown_row(value: &str, w: &TrafficWindow, t: Tally) -> BreakdownRow {
    BreakdownRow {
        value: value.to_owned(),
        devices: 0,
        requests: w.requests,
        errors: w.errors,
        p95_ms: w.latency_us.quantile(0.95).map(|us| us / 1000.0),
        accuracy: (t.labelled > 0).then(|| (t.correct as f64 / t.labelled as f64, t.labelled)),
    }
}

/// Label keys a breakdown is shown for, at most.
const BREAKDOWN_LABELS: usize = 3;

impl ModelPage {
    /// The page over `range_ms` up to `to_ms`, or over the model's life when `None`.
    pub fn gather(
        app: &AppState,
        name: &str,
        range_ms: Option<u64>,
        to_ms: u64,
    ) -> Result<ModelPage, ApiError> {
        let mut versions = app.registry.versions(name)?;
        if versions.is_empty() {
            return Err(ApiError(StatusCode::NOT_FOUND, format!("no model `{name}` in the registry")));
        }
        let first = versions.iter().map(|v| v.pushed_at_ms).min().unwrap_or(to_ms);
        let range_ms = range_ms.unwrap_or_else(|| to_ms.saturating_sub(first).clamp(60_000, MAX_RANGE_MS));
        let from_ms = to_ms.saturating_sub(range_ms);
        versions.sort_by_key(|v| std::cmp::Reverse(v.pushed_at_ms));
        let slos = app.ingest.slos();
        let labels = app.ingest.labels();
        let slo = match slos.get(name).map_err(ApiError::from)? {
            Some(spec) => Some(slos.status(labels, name, &spec, to_ms).map_err(ApiError::from)?),
            None => None,
        };
        let grid = TimeBuckets::new(from_ms, to_ms, ((range_ms / MIN_BUCKET_MS) as usize).clamp(1, BUCKETS));
        let mut markers = Vec::new();
        for r in app.rollouts.list().map_err(ApiError::from)?.iter().filter(|r| r.spec.model == name) {
            markers.push(Marker {
                at_ms: r.created_ms,
                kind: "rollout",
                label: format!("rollout {} → {}", r.id, r.spec.version),
            });
            if let Some(end) = r.finished_ms {
                markers.push(Marker {
                    at_ms: end,
                    kind: "rollout",
                    label: format!("{} {}", r.id, r.phase.as_str()),
                });
            }
        }
        for i in app.rollouts.incidents().map_err(ApiError::from)?.iter().filter(|i| i.model == name) {
            markers.push(Marker {
                at_ms: i.opened_ms,
                kind: "incident",
                label: format!("incident {}", i.id),
            });
        }
        markers.retain(|m| m.at_ms >= from_ms && m.at_ms <= to_ms);
        Ok(ModelPage {
            name: name.to_owned(),
            versions,
            slo,
            starts: grid.starts(),
            traffic: slos.timeline(name, &grid).map_err(ApiError::from)?,
            accuracy: labels.timeline(name, &grid).map_err(ApiError::from)?,
            drift: DriftHistory::build(app.ingest.drift_history(), name, from_ms).map_err(ApiError::from)?,
            quality: labels.quality(name, Some(from_ms), None).map_err(ApiError::from)?,
            bucket_ms: grid.width_ms,
            markers,
            breakdowns: Self::breakdowns(app, name, from_ms, to_ms)?,
        })
    }

    /// Per device label (site first, then the others by name, at most [`BREAKDOWN_LABELS`]):
    /// requests, error rate, p95 latency and accuracy at each value over the range, from the
    /// roll-ups by device label; `(none)` is devices without the label (the model's totals less
    /// every value's). Devices: those with the value whose newest report ended in the range and
    /// included the model.
    fn breakdowns(app: &AppState, name: &str, from_ms: u64, to_ms: u64) -> Result<Vec<Breakdown>, ApiError> {
        let glances: Vec<_> = app
            .devices
            .label_glances()
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|g| !g.is_revoked())
            .collect();
        let mut keys: Vec<String> = glances
            .iter()
            .flat_map(|d| d.labels.keys().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        keys.sort_by_key(|k| (k != "site", k.clone()));
        keys.truncate(BREAKDOWN_LABELS);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sums = LabelSums::read(app.ingest.slos(), app.ingest.labels(), name, from_ms, to_ms)
            .map_err(ApiError::from)?;
        let reporting: Vec<_> = glances
            .iter()
            .filter(|g| {
                g.last_windows.iter().any(|w| w.model == name && (from_ms..=to_ms).contains(&w.at_ms))
            })
            .map(|g| &g.labels)
            .collect();
        Ok(keys
            .into_iter()
            .map(|key| Breakdown { rows: sums.breakdown(&key, &reporting), label: key })
            .filter(|b| !b.rows.is_empty())
            .collect())
    }

    fn versions_seen(&self) -> BTreeSet<String> {
        self.traffic.iter().flat_map(|b| b.keys().cloned()).collect()
    }

    pub fn render(&self, range: &str) -> String {
        let mut out = String::new();
        let name = seg(&self.name);
        out.push_str("<nav class=\"ranges\">Range: ");
        for r in RANGES {
            let _ = write!(
                out,
                "<a href=\"/ui/models/{name}?range={r}\"{}>{r}</a> ",
                if r == range { " class=\"here\"" } else { "" }
            );
        }
        out.push_str("</nav>");

        // Versions, stages, validation, lineage, cards.
        out.push_str(
            "<section><h2>Versions</h2><table data-table=\"model-versions\"><tr><th>version</th><th>stage</th>\
             <th>validation</th><th>derived from</th><th>trained</th><th>pushed</th><th>signed by</th><th>card</th></tr>",
        );
        for v in &self.versions {
            let validation = match v.validation_passed {
                Some(true) => badge("good", "passed"),
                Some(false) => badge("bad", "failed"),
                None => badge("info", "not run"),
            };
            let accuracy = v
                .validation
                .as_ref()
                .and_then(|r| r["metrics"]["accuracy"].as_f64())
                .map(|a| format!(" <small>accuracy {}</small>", pct(a)))
                .unwrap_or_default();
            let card = format!("/ui/models/{name}/versions/{}/card", seg(&v.version));
            let _ = write!(
                out,
                "<tr data-version=\"{ver}\" data-stage=\"{stage}\"><td>{ver}</td><td>{}</td><td>{validation}{accuracy}</td>\
                 <td>{}</td><td>{}</td><td>{} by {}</td><td>{}</td><td>{} · {}</td></tr>",
                badge(if v.stage.as_str() == "production" { "good" } else { "info" }, v.stage.as_str()),
                e(v.manifest.training.parent_version.as_deref().unwrap_or("—")),
                e(v.manifest.training.date.as_deref().unwrap_or("—")),
                when(v.pushed_at_ms),
                e(&v.pushed_by),
                e(&v.signed_by.join(", ")),
                link(&card, "HTML"),
                link(&format!("{card}?format=md"), "Markdown"),
                ver = e(&v.version),
                stage = v.stage.as_str(),
            );
        }
        out.push_str("</table></section>");

        // SLOs.
        out.push_str("<section><h2>Service level objectives</h2>");
        match &self.slo {
            None => out.push_str(&format!(
                "<p class=\"empty\">No objectives set: <code>outpostctl slo set {} --availability 99.5% --latency 'p95&lt;50ms'</code>.</p>",
                e(&self.name)
            )),
            Some(s) => {
                let _ = write!(
                    out,
                    "<p>Window: {} to {}.</p><table data-table=\"slo\"><tr><th>objective</th><th>target</th>\
                     <th>actual</th><th>events</th><th>bad</th><th>status</th><th>burn rate</th><th>budget left</th></tr>",
                    when(s.from_ms),
                    when(s.to_ms)
                );
                for o in &s.objectives {
                    let (target, actual) = (e(&o.target_text()), e(&o.actual_text()));
                    let _ = write!(
                        out,
                        "<tr data-objective=\"{}\" data-compliant=\"{}\"><td>{}</td><td>{target}</td><td>{actual}</td>\
                         <td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                         <td><meter min=\"0\" max=\"1\" low=\"0.25\" optimum=\"1\" value=\"{}\"></meter> {}</td></tr>",
                        e(&o.objective),
                        o.compliant,
                        e(&o.objective),
                        o.events,
                        o.bad_events,
                        if o.compliant { badge("good", "met") } else { badge("bad", "BREACHED") },
                        numbers::decimal(o.burn_rate),
                        o.budget_remaining,
                        pct(o.budget_remaining)
                    );
                }
                out.push_str("</table>");
            }
        }
        out.push_str("</section>");

        // Monitoring charts.
        out.push_str("<section><h2>Monitoring</h2><div class=\"charts\">");
        let versions = self.versions_seen();
        let merged: Vec<LogHistogram> = self
            .traffic
            .iter()
            .map(|b| {
                let mut h = LogHistogram::default();
                for cell in b.values() {
                    let _ = h.merge(&cell.latency_us);
                }
                h
            })
            .collect();
        let latency = ["p50", "p95", "p99"]
            .iter()
            .zip([0.5, 0.95, 0.99])
            .map(|(n, q)| Series {
                name: (*n).to_owned(),
                points: merged.iter().map(|h| h.quantile(q).map(|us| us / 1000.0)).collect(),
            })
            .collect();
        out.push_str(&line_chart(&Chart {
            id: "latency",
            title: "Latency percentiles, all versions (ms)",
            unit: "",
            starts_ms: &self.starts,
            series: latency,
            markers: self.markers.clone(),
            ..Chart::default()
        }));
        let per_version = |f: &dyn Fn(&TrafficWindow) -> Option<f64>| {
            versions
                .iter()
                .map(|v| Series {
                    name: v.clone(),
                    points: self.traffic.iter().map(|b| b.get(v).and_then(f)).collect(),
                })
                .collect::<Vec<_>>()
        };
        out.push_str(&line_chart(&Chart {
            id: "latency_by_version",
            title: "Latency p95, by version (ms)",
            starts_ms: &self.starts,
            series: per_version(&|c| c.latency_us.quantile(0.95).map(|us| us / 1000.0)),
            markers: self.markers.clone(),
            ..Chart::default()
        }));
        let secs = self.bucket_ms as f64 / 1000.0;
        out.push_str(&line_chart(&Chart {
            id: "traffic",
            title: "Requests per second, by version",
            unit: "",
            starts_ms: &self.starts,
            series: per_version(&|c| Some(c.requests as f64 / secs)),
            markers: self.markers.clone(),
            ..Chart::default()
        }));
        out.push_str(&line_chart(&Chart {
            id: "errors",
            title: "Error rate, by version",
            unit: "%",
            starts_ms: &self.starts,
            series: per_version(&|c| (c.requests > 0).then(|| 100.0 * c.errors as f64 / c.requests as f64)),
            y_max: Some(1.0),
            markers: self.markers.clone(),
            ..Chart::default()
        }));
        let labelled: BTreeSet<&String> = self.accuracy.iter().flat_map(|b| b.keys()).collect();
        let accuracy = labelled
            .iter()
            .map(|v| Series {
                name: (*v).clone(),
                points: self
                    .accuracy
                    .iter()
                    .map(|b| b.get(*v).filter(|c| c.0 > 0).map(|c| 100.0 * c.1 as f64 / c.0 as f64))
                    .collect(),
            })
            .collect();
        out.push_str(&line_chart(&Chart {
            id: "accuracy",
            title: "Accuracy on labelled predictions, by version",
            unit: "%",
            starts_ms: &self.starts,
            series: accuracy,
            y_max: Some(100.0),
            markers: self.markers.clone(),
            ..Chart::default()
        }));
        // Drift: share of device windows that drifted, per feature (the most drifted first).
        let mut drift_series: Vec<Series> = self
            .drift
            .features
            .iter()
            .take(5)
            .chain(&self.drift.prediction)
            .map(|f| Series {
                name: f.feature.clone(),
                points: f
                    .buckets
                    .iter()
                    .map(|c| c.map(|(n, d)| 100.0 * d as f64 / n.max(1) as f64))
                    .collect(),
            })
            .collect();
        drift_series.retain(|s| s.points.iter().any(Option::is_some));
        out.push_str(&line_chart(&Chart {
            id: "drift",
            title: "Drift: share of device windows flagged, by feature (most drifted five + predictions)",
            unit: "%",
            starts_ms: &self.drift.bucket_starts_ms,
            series: drift_series,
            y_max: Some(100.0),
            markers: self.markers.clone(),
            // Devices report drift verdicts less often than the buckets: one line per feature.
            connect_gaps: true,
        }));
        out.push_str("</div>");

        // Per device label: where the model does worse.
        for b in &self.breakdowns {
            let _ = write!(
                out,
                "<h3>By {0}</h3><table data-breakdown=\"{0}\"><tr><th>{0}</th><th>devices</th><th>requests</th>\
                 <th>error rate</th><th>latency p95</th><th>accuracy</th></tr>",
                e(&b.label)
            );
            for r in &b.rows {
                let error_rate =
                    if r.requests == 0 { "—".into() } else { pct(r.errors as f64 / r.requests as f64) };
                let _ = write!(
                    out,
                    "<tr data-group=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{error_rate}</td><td>{}</td><td>{}</td></tr>",
                    e(&r.value),
                    e(&r.value),
                    r.devices,
                    r.requests,
                    r.p95_ms.map_or("—".into(), numbers::ms),
                    r.accuracy.map_or("—".into(), |(a, n)| format!("{} <small>of {n}</small>", pct(a)))
                );
            }
            out.push_str("</table>");
        }

        // Drift table for every feature.
        if !self.drift.features.is_empty() {
            let _ = write!(
                out,
                "<h3>Drift by feature</h3><p>{} windows from {} device(s).</p><table data-table=\"drift\"><tr><th>feature</th>\
                 <th>windows</th><th>drifted</th><th>share</th><th>worst score</th><th>test</th></tr>",
                self.drift.windows, self.drift.devices
            );
            for f in self.drift.features.iter().chain(&self.drift.prediction) {
                let _ = write!(
                    out,
                    "<tr data-feature=\"{}\" data-drifted=\"{}\" data-windows=\"{}\"{}><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td>{}</td></tr>",
                    e(&f.feature),
                    f.drifted,
                    f.windows,
                    if f.drifted > 0 { " class=\"hot\"" } else { "" },
                    e(&f.feature),
                    f.windows,
                    f.drifted,
                    pct(f.drift_share()),
                    numbers::p_value(f.worst_score),
                    e(&f.test)
                );
            }
            out.push_str("</table>");
        }

        // Quality per version in the range.
        if !self.quality.versions.is_empty() {
            out.push_str(
                "<h3>Quality on labelled predictions in this range</h3><table data-table=\"quality\"><tr><th>version</th>\
                 <th>labelled</th><th>accuracy</th><th>macro F1</th><th>weighted F1</th></tr>",
            );
            for (v, q) in &self.quality.versions {
                let _ = write!(
                    out,
                    "<tr data-version=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    e(v),
                    e(v),
                    q.labelled,
                    pct(q.metrics.accuracy),
                    numbers::decimal(q.metrics.macro_f1),
                    numbers::decimal(q.metrics.weighted_f1)
                );
            }
            out.push_str("</table>");
        }
        out.push_str("</section>");
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Rollouts and incidents

#[cfg(test)]
mod tests {
    use outpost_shared::protocol::messages::{
        FeedbackBatch, LabelledPrediction, LogWindow, ModelWindow, OutboxStats, Report, SystemStats,
    };
    use outpost_shared::protocol::vocab::Slot;

    use super::*;
    use crate::base::store::Store;

    /// Device `d`'s labels: two sites, a tier on some, and a quarter of the fleet unlabelled.
    fn labels_of(d: u64) -> BTreeMap<String, String> {
        let pairs: &[(&str, &str)] = match d % 4 {
            0 => &[("site", "berlin"), ("tier", "edge")],
            1 => &[("site", "oslo")],
            2 => &[("site", "berlin")],
            _ => &[],
        };
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn number(device: &str) -> u64 {
        device.trim_start_matches("dev-").parse().unwrap()
    }

    fn report(end_ms: u64, d: u64, requests: u64) -> Report {
        let mut latency_us = LogHistogram::default();
        for j in 0..requests {
            latency_us.record(800.0 + d as f64 * 350.0 + (j % 9) as f64 * 120.0);
        }
        Report {
            window_start_ms: end_ms - 10_000,
            window_end_ms: end_ms,
            models: vec![ModelWindow {
                model: "bc".into(),
                version: if d.is_multiple_of(3) { "1.1.0" } else { "1.0.0" }.into(),
                slot: Slot::Primary,
                requests,
                errors: requests / 5,
                rows: requests,
                latency_us,
                top_score: LogHistogram::default(),
                label_counts: BTreeMap::new(),
            }],
            system: SystemStats::default(),
            prediction_log: LogWindow::default(),
            outbox: OutboxStats::default(),
        }
    }

    #[test]
    fn a_breakdown_by_device_label_from_the_rollups_shows_what_a_scan_of_every_window_shows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (slos, labels) = (Slos::open(&store).unwrap(), Labels::open(&store).unwrap());
        // Eight devices report every 10 s from 00:59:30 to 01:39:50; every third window of each
        // brings a label, wrong one time in four.
        for (i, end) in (3_570_000..=5_990_000u64).step_by(10_000).enumerate() {
            let i = i as u64;
            for d in 0..8 {
                let device = format!("dev-{d}");
                slos.put_report(&device, &labels_of(d), &report(end + d, d, 3 + (i * 5 + d) % 17)).unwrap();
                if i % 3 == d % 3 {
                    let label = LabelledPrediction {
                        prediction_id: i,
                        model: "bc".into(),
                        version: "1.0.0".into(),
                        slot: Slot::Primary,
                        predicted_at_ms: end - 2_000,
                        labelled_at_ms: end,
                        predicted: Some(1),
                        label: i64::from(!(i + d).is_multiple_of(4)),
                    };
                    let batch = FeedbackBatch { labels: vec![label], unknown: 0, evicted: 0 };
                    labels.put(&device, &labels_of(d), &batch).unwrap();
                }
            }
        }
        let (from, to) = (3_600_000, 5_999_999);
        let sums = LabelSums::read(&slos, &labels, "bc", from, to).unwrap();
        // Device 7 (unlabelled) has not reported in the range as far as its record says.
        let reporting: Vec<BTreeMap<String, String>> = (0..7).map(labels_of).collect();
        let reporting: Vec<&BTreeMap<String, String>> = reporting.iter().collect();
        let per_device = slos.traffic_by_device("bc", from, to).unwrap();
        for key in ["site", "tier"] {
            let value_of = |device: &str| labels_of(number(device)).get(key).cloned();
            let quality = labels.scan_quality("bc", Some(from), key, |d| Ok(value_of(d))).unwrap();
            let rows = sums.breakdown(key, &reporting);
            let values: Vec<&str> = rows.iter().map(|r| r.value.as_str()).collect();
            let want: &[&str] =
                if key == "site" { &["(none)", "berlin", "oslo"] } else { &["(none)", "edge"] };
            assert_eq!(values, want, "by {key}");
            for row in &rows {
                let what = format!("{key}={}", row.value);
                // The scan: every window of every device with this value.
                let mut latency = LogHistogram::default();
                let (mut requests, mut errors) = (0, 0);
                for (device, w) in &per_device {
                    if value_of(device).as_deref().unwrap_or(NO_VALUE) == row.value {
                        requests += w.requests;
                        errors += w.errors;
                        latency.merge(&w.latency_us).unwrap();
                    }
                }
                assert!(requests > 0, "{what}");
                assert_eq!((row.requests, row.errors), (requests, errors), "{what}");
                let (p95, scanned) = (row.p95_ms.unwrap(), latency.quantile(0.95).unwrap() / 1000.0);
                // `(none)` is the total less the values: its histogram keeps the total's bounds.
                assert!((p95 - scanned).abs() <= scanned * 0.021, "{what}: p95 {p95} vs {scanned}");
                if row.value != NO_VALUE {
                    assert_eq!(p95, scanned, "{what}");
                }
                let segment = &quality.versions["1.0.0"].segments[&row.value];
                let (accuracy, labelled) = row.accuracy.unwrap();
                assert_eq!(labelled, segment.rows, "{what}");
                assert!(
                    (accuracy - segment.accuracy).abs() < 1e-12,
                    "{what}: {accuracy} vs {}",
                    segment.accuracy
                );
                let devices =
                    reporting.iter().filter(|l| l.get(key).map_or(NO_VALUE, String::as_str) == row.value);
                assert_eq!(row.devices, devices.count(), "{what}");
            }
        }
    }
}
