//! The drift report an ML team reads weekly: per-feature drift over time, the features that
//! moved most, how the predictions' distribution changed, and the model versions serving at
//! the time — so drift can be told apart from a rollout.
//!
//! History: every drift verdict devices report is kept in sled tree `drift_history`, key
//! `model \0 at_ms (u64 BE) \0 device \0 version` (a canary's verdicts in the same report as the
//! primary's are kept beside them; keys written before had no version), value JSON `ModelDrift`
//! (the first arrival; a resend changes nothing) — what retention prunes and the roll-ups are
//! rebuilt from. In the same
//! transaction a new verdict is counted into its version's minute and hour buckets (`drift_1m`,
//! `drift_1h`, keys as in [`rollup`], value postcard [`DriftBucket`]: per feature the verdicts,
//! the drifted ones and the worst score; the devices that came to the version from another one)
//! and what the device reported is kept (`drift_devices`, key `model \0 device`, value postcard
//! [`DeviceDrift`]). A device *changed* version when its newest report has a version its
//! previous one had not, in place of one that is gone (1.0.0 → 1.1.0, or back); a canary
//! starting beside the primary, or a version missing from one report, is no change.
//!
//! [`DriftHistory::build`] reads the buckets, not the verdicts: the minutes for a report that
//! spans up to a day (at most 1,440 per version), else the hours and the minutes at both ends —
//! so a report costs the same at 10 devices as at 10,000. It folds them into at most
//! [`MAX_BUCKETS`] buckets spanning the verdicts present (whole minutes, or whole hours past a
//! day), and [`render_markdown`] / [`render_html`] write it out; the HTML is self-contained
//! (inline SVG, no scripts, no CDN). A data directory from before the roll-ups (no `meta` key
//! [`rollup::DRIFT_MARKER`]) is rolled up from its verdicts once, when it is opened.

use std::collections::{BTreeMap, BTreeSet};

use outpost_shared::protocol::messages::ModelDrift;
use serde::{Deserialize, Serialize};

use crate::base::store::StoreError;
use crate::monitoring::slo::rollup::{self, HOUR_MS, MINUTE_MS, Width};

mod history;
mod render;

use history::count_verdict;
pub use history::{DeviceDrift, DriftBucket, FeatureCell, History, newest_verdict};
pub use render::{escape, render_html, render_markdown};

/// Most time buckets in a report.
pub const MAX_BUCKETS: usize = 24;

const DAY_MS: u64 = 24 * HOUR_MS;

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

/// Devices that changed from one version to another within a bucket of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionChange {
    /// The start of the report's bucket (unix ms).
    pub at_ms: u64,
    pub from: String,
    pub to: String,
    pub devices: u64,
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
    /// Devices that changed version, per bucket and change.
    pub version_changes: Vec<VersionChange>,
}

/// What a report folds, bucket by bucket, before it is sorted out.
struct Fold {
    first: u64,
    bucket_ms: u64,
    count: usize,
    windows: u64,
    series: BTreeMap<String, (FeatureSeries, FeatureCell)>,
    versions: Vec<BTreeSet<String>>,
    changes: BTreeMap<(usize, String, String), u64>,
}

impl Fold {
    fn new(first: u64, bucket_ms: u64, count: usize) -> Fold {
        Fold {
            first,
            bucket_ms,
            count,
            windows: 0,
            series: BTreeMap::new(),
            versions: vec![BTreeSet::new(); count],
            changes: BTreeMap::new(),
        }
    }

    /// The report's buckets from the minute starting at `first` to the one starting at `last`
    /// (at most [`MAX_BUCKETS`]), and the roll-up width they are read from: whole minutes for up
    /// to a day, whole hours past it.
    fn spanning(first: u64, last: u64) -> (Fold, u64) {
        let span = last + MINUTE_MS - first;
        let unit = if span <= DAY_MS { MINUTE_MS } else { HOUR_MS };
        let bucket_ms = span.div_ceil(MAX_BUCKETS as u64).div_ceil(unit).max(1) * unit;
        (Fold::new(first, bucket_ms, ((last - first) / bucket_ms) as usize + 1), unit)
    }

    /// Adds `bucket` of `version` at `at_ms` into the report's bucket holding it.
    fn add(&mut self, at_ms: u64, version: &str, bucket: &DriftBucket) {
        let b = (((at_ms - self.first) / self.bucket_ms) as usize).min(self.count - 1);
        if bucket.windows > 0 {
            self.versions[b].insert(version.to_owned());
        }
        self.windows += bucket.windows;
        for (feature, cell) in &bucket.features {
            let count = self.count;
            let (s, worst) = self.series.entry(feature.clone()).or_insert_with(|| {
                let series = FeatureSeries {
                    feature: feature.clone(),
                    buckets: vec![None; count],
                    windows: 0,
                    drifted: 0,
                    worst_score: 0.0,
                    test: String::new(),
                };
                (series, FeatureCell::default())
            });
            let c = s.buckets[b].get_or_insert((0, 0));
            c.0 += cell.windows;
            c.1 += cell.drifted;
            s.windows += cell.windows;
            s.drifted += cell.drifted;
            worst.add(cell);
        }
        for (from, n) in &bucket.arrived_from {
            *self.changes.entry((b, from.clone(), version.to_owned())).or_default() += n;
        }
    }

    fn finish(self, model: &str, since_ms: u64, devices: usize) -> DriftHistory {
        let mut series: BTreeMap<String, FeatureSeries> = self
            .series
            .into_iter()
            .map(|(feature, (mut s, worst))| {
                s.worst_score = worst.worst_score;
                s.test = worst.test.map(|t| t.as_str().to_owned()).unwrap_or_default();
                (feature, s)
            })
            .collect();
        let prediction = series.remove(PREDICTION);
        let mut features: Vec<FeatureSeries> = series.into_values().collect();
        features.sort_by(|a, b| b.drift_share().total_cmp(&a.drift_share()).then(a.feature.cmp(&b.feature)));
        let (first, width) = (self.first, self.bucket_ms);
        DriftHistory {
            model: model.to_owned(),
            since_ms,
            bucket_starts_ms: (0..self.count).map(|i| first + i as u64 * width).collect(),
            bucket_ms: width,
            devices,
            windows: self.windows,
            features,
            prediction,
            versions: self.versions,
            version_changes: self
                .changes
                .into_iter()
                .map(|((b, from, to), devices)| VersionChange {
                    at_ms: first + b as u64 * width,
                    from,
                    to,
                    devices,
                })
                .collect(),
        }
    }
}

impl DriftHistory {
    pub fn build(history: &History, model: &str, since_ms: u64) -> Result<DriftHistory, StoreError> {
        DriftHistory::build_for(history, model, since_ms, None)
    }

    /// [`DriftHistory::build`] over one version's verdicts only, when `version` is given. From
    /// the roll-ups: verdicts count from the minute holding `since_ms`.
    pub fn build_for(
        history: &History,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<DriftHistory, StoreError> {
        let since = since_ms - since_ms % MINUTE_MS;
        let devices = history.devices_since(model, since, version)?;
        let Some((first, last)) = history.extent(model, since, version)? else {
            return Ok(Fold::new(since, MINUTE_MS, 1).finish(model, since_ms, devices));
        };
        // Up to a day: minutes; past it, whole hours (the hours between, minutes at both ends).
        let (mut fold, unit) = Fold::spanning(first, last);
        let reads = if unit == MINUTE_MS {
            vec![(Width::Minute, first, last + 1)]
        } else {
            rollup::spans(first, last)
        };
        for (width, from, until) in reads {
            history.buckets(width, model, from, until, |at, v, bucket| {
                if version.is_none_or(|want| want == v) {
                    fold.add(at, v, &bucket);
                }
            })?;
        }
        Ok(fold.finish(model, since_ms, devices))
    }

    /// The same report from every stored verdict, into the same buckets: the check on the
    /// roll-ups (tests) and `--bench slo`'s baseline — what the report cost before them.
    pub fn from_verdicts(
        history: &History,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<DriftHistory, StoreError> {
        let since = since_ms - since_ms % MINUTE_MS;
        // Every verdict, those before the range too: whether a device changed version depends
        // on them.
        let rows = history.scan(model, 0)?;
        let counted =
            |r: &&(u64, String, ModelDrift)| r.0 >= since && version.is_none_or(|want| want == r.2.version);
        let (Some(first), Some(last)) = (rows.iter().find(counted), rows.iter().rev().find(counted)) else {
            return Ok(Fold::new(since, MINUTE_MS, 1).finish(model, since_ms, 0));
        };
        let (first, last) = (first.0 - first.0 % MINUTE_MS, last.0 - last.0 % MINUTE_MS);
        let (mut fold, unit) = Fold::spanning(first, last);
        // Past a day an hour goes to the report's bucket holding its start, as the roll-ups'
        // hours do (the minutes at both ends go by their own start).
        let (first_hour, last_hour) = (first.div_ceil(HOUR_MS) * HOUR_MS, last - last % HOUR_MS);
        // The versions of each report, each device's view of them, then every verdict in turn.
        let mut reports: BTreeMap<(u64, &str), BTreeSet<String>> = BTreeMap::new();
        for (at, device, m) in &rows {
            reports.entry((*at, device.as_str())).or_default().insert(m.version.clone());
        }
        let mut seen: BTreeMap<&str, DeviceDrift> = BTreeMap::new();
        for row in &rows {
            let (at, device, m) = row;
            let report = &reports[&(*at, device.as_str())];
            let one = count_verdict(seen.entry(device.as_str()).or_default(), *at, m, report);
            if counted(&row) {
                let hour = unit == HOUR_MS && (first_hour..last_hour).contains(at);
                fold.add(if hour { at - at % HOUR_MS } else { at - at % MINUTE_MS }, &m.version, &one);
            }
        }
        let devices = seen
            .values()
            .filter(|d| match version {
                Some(version) => d.newest.get(version).is_some_and(|at| *at >= since),
                None => d.newest.values().any(|at| *at >= since),
            })
            .count();
        Ok(fold.finish(model, since_ms, devices))
    }
}

/// The name agents report prediction drift under.
pub const PREDICTION: &str = "_prediction";

#[cfg(test)]
mod tests;
